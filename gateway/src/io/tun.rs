//! The TUN device that local traffic for foreign clusters is routed into.

use std::io;

use tun_rs::{DeviceBuilder, SyncDevice};

/// Packets the kernel may queue for us to read. The default (500) overflows while the loop is busy
/// with the other direction, and each overflow is a TCP retransmit (measured: ~45k per 5 s iperf3
/// at 500, under 200 at 2000); 2000 packets are ~11 ms at 2 Gbit/s, little added latency.
const TX_QUEUE_LEN: u32 = 2000;

/// Creates `name` with `mtu`, brings it up, and makes it non-blocking for the event loop.
/// The device is not persistent: it disappears when the returned handle is dropped.
pub fn create(name: &str, mtu: u16) -> io::Result<SyncDevice> {
    let dev = DeviceBuilder::new()
        .name(name)
        .mtu(mtu)
        .packet_information(false)
        .tx_queue_len(TX_QUEUE_LEN)
        .enable(true)
        .build_sync()?;
    dev.set_nonblocking(true)?;
    Ok(dev)
}
