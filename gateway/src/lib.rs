//! liqonet's gateway: a sans-IO WireGuard [`engine`] and the thin [`io`] shell around it.

pub mod diagnose;
pub mod engine;
pub mod io;
pub mod keys;
pub mod kubernetes;
pub mod metrics;
pub mod peering;
pub mod settings;
pub mod snapshot;
pub mod status;
pub mod wire;
