//! The TUN device that local traffic for foreign clusters is routed into.

use std::io;

use tun_rs::{DeviceBuilder, SyncDevice};

/// Creates `name` with `mtu`, brings it up, and makes it non-blocking for the event loop.
/// The device is not persistent: it disappears when the returned handle is dropped.
pub fn create(name: &str, mtu: u16) -> io::Result<SyncDevice> {
    let dev = DeviceBuilder::new()
        .name(name)
        .mtu(mtu)
        .packet_information(false)
        .enable(true)
        .build_sync()?;
    dev.set_nonblocking(true)?;
    Ok(dev)
}
