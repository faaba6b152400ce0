//! Packet code: typed views over byte slices, checked once at construction (smoltcp's `wire`
//! style), and the in-place rewrites the gateway applies. No I/O, no allocation.

pub mod checksum;
pub mod ip;
pub mod mss;
pub mod remap;
#[cfg(test)]
pub(crate) mod testing;

pub use ip::{IpPacket, Malformed};

/// IP protocol numbers the gateway looks into.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}
