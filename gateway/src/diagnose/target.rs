//! What the node should look like: interface, port, MTU, networks and peer endpoints, from the
//! standalone config file or the flags (Kubernetes mode), completed by what the gateway running
//! here says on its WireGuard userspace API socket (`get=liqonet`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use liqonet_proto::config::GatewayConfig;
use liqonet_proto::Cidr;

use super::Check;
use crate::settings;

pub struct Target {
    pub interface: String,
    pub listen_port: u16,
    pub mtu: u16,
    pub local_networks: Vec<Cidr>,
    /// The peers' networks as this cluster's pods address them (`remapped`); `None` when
    /// unknown (Kubernetes mode with no gateway answering here).
    pub remote_networks: Option<Vec<Cidr>>,
    /// (peer, endpoint)
    pub endpoints: Vec<(String, SocketAddr)>,
    pub config: Option<PathBuf>,
    /// What could not be learned, as report lines.
    pub notes: Vec<Check>,
}

impl Target {
    /// From a standalone config file. The IPAM state beside it is read, never written.
    pub fn from_config(path: &Path) -> anyhow::Result<Target> {
        let text = settings::read_text(path, settings::MAX_CONFIG_FILE)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let config = GatewayConfig::from_yaml(&text)
            .map_err(|e| anyhow::anyhow!("{}:\n{e}", path.display()))?;
        let mut notes = Vec::new();
        let state = settings::read_state(&settings::ipam_state_path(path)).unwrap_or_else(|e| {
            notes.push(Check::warn("config", "IPAM state", &e.to_string()));
            Default::default()
        });
        let remote = match config.resolve_remapped(&state) {
            Ok((remapped, _)) => remapped.into_iter().flatten().collect(),
            Err(e) => {
                notes.push(Check::warn("config", "remapped networks", &e.to_string()));
                Vec::new()
            }
        };
        let mut endpoints = Vec::new();
        for p in &config.peers {
            match p.endpoint.as_ref().map(settings::resolve_endpoint) {
                Some(Ok(ep)) => endpoints.push((p.cluster_id.clone(), ep)),
                Some(Err(e)) => notes.push(Check::warn(
                    "config",
                    &format!("endpoint of peer {}", p.cluster_id),
                    &e,
                )),
                None => {}
            }
        }
        let mut t = Target {
            interface: config.interface.clone(),
            listen_port: config.listen_port,
            mtu: config.mtu,
            local_networks: config.local_networks.clone(),
            remote_networks: Some(remote),
            endpoints,
            config: Some(path.to_owned()),
            notes,
        };
        // Endpoints of peers that only answer are known to the running gateway alone.
        if let Ok(report) = running(&t.interface) {
            t.merge(&report);
        }
        Ok(t)
    }

    /// Kubernetes mode: the gateway's flags; peers from the gateway running on this node.
    pub fn from_flags(interface: &str, listen_port: u16, mtu: u16) -> Target {
        let mut t = Target {
            interface: interface.to_string(),
            listen_port,
            mtu,
            local_networks: Vec::new(),
            remote_networks: None,
            endpoints: Vec::new(),
            config: None,
            notes: Vec::new(),
        };
        match running(interface) {
            Ok(report) => {
                t.remote_networks = Some(Vec::new());
                t.merge(&report);
            }
            Err(e) => t.notes.push(Check::warn(
                "peers",
                "the running gateway's peers",
                &format!("unknown, so routes and path MTUs are not checked: {e:#}"),
            )),
        }
        t
    }

    /// Adds the networks and endpoints the running gateway reports.
    fn merge(&mut self, report: &crate::status::Report) {
        for p in &report.peers {
            if let Some(ep) = p.endpoint.as_deref().and_then(|e| e.parse().ok()) {
                if !self.endpoints.iter().any(|(name, _)| *name == p.name) {
                    self.endpoints.push((p.name.clone(), ep));
                }
            }
            // "cidr → remapped"
            let remapped = p
                .networks
                .iter()
                .filter_map(|n| n.split(" → ").nth(1)?.parse::<Cidr>().ok());
            if let Some(nets) = self.remote_networks.as_mut() {
                for r in remapped {
                    if !nets.contains(&r) {
                        nets.push(r);
                    }
                }
            }
        }
    }

    /// Whether IPv6 is routed (then IPv6 forwarding matters too).
    pub fn ipv6(&self) -> bool {
        self.local_networks
            .iter()
            .chain(self.remote_networks.iter().flatten())
            .any(|c| !c.is_ipv4())
    }

    /// How to start the gateway, for the lines that find it missing.
    pub fn start(&self) -> String {
        match &self.config {
            Some(p) => format!("liqonet-gateway run --config {}", p.display()),
            None => {
                "start the gateway on this node (in Kubernetes: the node of the Lease's holder)"
                    .into()
            }
        }
    }

    /// How to give the tunnel MTU `n`.
    pub fn set_mtu(&self, n: u32) -> String {
        match &self.config {
            Some(p) => format!("set `mtu: {n}` in {} and restart the gateway", p.display()),
            None => format!("set the gateway's --mtu (LIQONET_MTU) to {n}"),
        }
    }
}

fn running(interface: &str) -> anyhow::Result<crate::status::Report> {
    crate::status::fetch(Path::new(crate::io::uapi::SOCKET_DIR), interface)
}
