//! The I/O shell around the engine: devices, sockets, netlink, signals. Thin on purpose.

pub mod batch;
pub mod control;
pub mod dataplane;
pub mod event_loop;
pub mod gro;
pub mod metrics_http;
pub mod routes;
pub mod sched;
pub mod serve;
pub mod tun;
pub mod uapi;
pub mod udp;
