//! The fuzz targets, one module each, named after what they fuzz.

pub mod agent_config;
pub mod engine_from_network;
pub mod engine_from_tun;
pub mod gateway_config;
pub mod gro_writes;
pub mod http_requests;
pub mod icmp_errors;
pub mod ip_packets;

use crate::rng::Rng;

pub trait Target {
    /// Builds one input into `out` (empty on entry) from `rng`.
    fn generate(&mut self, rng: &mut Rng, out: &mut Vec<u8>);
    /// Runs one input; `Err` names the check that failed.
    fn run(&mut self, input: &[u8]) -> Result<(), String>;
    /// How deep the inputs got so far (accepted vs rejected and the like), one or two lines.
    fn coverage(&self) -> String;
    /// Rebuilds whatever state a panic may have left half-updated.
    fn reset(&mut self) {}
}

/// Every target, in the order a full run takes them.
pub const ALL: [&str; 8] = [
    "ip_packets",
    "icmp_errors",
    "engine_from_network",
    "engine_from_tun",
    "gro_writes",
    "gateway_config",
    "agent_config",
    "http_requests",
];

/// Targets that cost milliseconds per input: a full run gives them a time limit.
pub const SLOW: [&str; 1] = ["http_requests"];

pub fn make(name: &str) -> Option<Box<dyn Target>> {
    Some(match name {
        "ip_packets" => Box::new(ip_packets::IpPackets::default()),
        "icmp_errors" => Box::new(icmp_errors::IcmpErrors::default()),
        "engine_from_network" => Box::new(engine_from_network::EngineFromNetwork::new()),
        "engine_from_tun" => Box::new(engine_from_tun::EngineFromTun::new()),
        "gro_writes" => Box::new(gro_writes::GroWrites::default()),
        "gateway_config" => Box::new(gateway_config::GatewayConfigTarget::default()),
        "agent_config" => Box::new(agent_config::AgentConfigTarget::default()),
        "http_requests" => Box::new(http_requests::HttpRequests::new()),
        _ => return None,
    })
}
