//! The TUN device that local traffic for foreign clusters is routed into.

use std::io;

use tun_rs::{DeviceBuilder, SyncDevice};

/// Packets the kernel may queue for us to read. The default (500) overflows while the loop is busy
/// with the other direction, and each overflow is a TCP retransmit (measured: ~45k per 5 s iperf3
/// at 500, under 200 at 2000); 2000 packets are ~11 ms at 2 Gbit/s, little added latency.
const TX_QUEUE_LEN: u32 = 2000;

/// Creates `name` with `mtu`, up and non-blocking; the device disappears with the handle.
///
/// With `offload`, the TUN carries a virtio header: the kernel hands over TCP (and, from Linux
/// 6.2, UDP) super-packets of up to 64 KB and accepts coalesced ones, one syscall for dozens of
/// packets. If the kernel refuses, the device is created without (said once). Returns whether
/// offloads are on.
pub fn create(name: &str, mtu: u16, offload: bool) -> io::Result<(SyncDevice, bool)> {
    let build = |offload: bool| {
        DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .packet_information(false)
            .tx_queue_len(TX_QUEUE_LEN)
            .offload(offload)
            .enable(true)
            .build_sync()
    };
    let (dev, offload) = match build(offload) {
        Ok(dev) => (dev, offload),
        Err(e) if offload => {
            tracing::warn!("TUN offloads unavailable ({e}); one packet per read and write");
            (build(false)?, false)
        }
        Err(e) => return Err(e),
    };
    dev.set_nonblocking(true)?;
    if offload {
        tracing::info!(
            tcp = dev.tcp_gso(),
            udp = dev.udp_gso(),
            "TUN segmentation offloads on"
        );
    }
    Ok((dev, offload))
}
