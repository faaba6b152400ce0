//! Structure-aware fuzzing of liqonet on stable Rust: a seeded PRNG, generators that build
//! hostile but well-shaped inputs (packets, WireGuard messages, YAML configs, HTTP requests), and
//! a driver that runs each input under `catch_unwind` and checks what the code did with it.

pub mod checksum;
pub mod codec;
pub mod driver;
pub mod engines;
pub mod packets;
pub mod remap_check;
pub mod rng;
pub mod targets;
pub mod yaml;
