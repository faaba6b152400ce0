//! The shared vocabulary of liqonet: the types every component agrees on, with no I/O.
//!
//! - [`cidr`]: IPv4/IPv6 prefixes, parsed strictly (no host bits).
//! - [`prefix_table`]: longest-prefix match whose cost does not grow with the number of entries.
//! - [`key`]: WireGuard keys in their base64 form.
//! - [`config`]: the gateway's configuration, validated with errors that name the field.

pub mod agent;
pub mod cidr;
pub mod config;
pub mod crd;
pub mod ipam;
pub mod key;
pub mod peering;
pub mod prefix_table;
pub mod rbac;

pub use cidr::Cidr;
pub use key::Key;
pub use prefix_table::PrefixTable;
