//! The tunnel's lifetime on this node: create the TUN device, its addresses and routes, bind the
//! UDP sockets, run the event loop until told to stop, and remove the device and routes whatever
//! happened. Both modes run it: standalone on the main thread, Kubernetes on the leader's
//! data-plane thread.

use anyhow::Context;
use liqonet_proto::config::GatewayConfig;
use liqonet_proto::Cidr;

use super::event_loop::{self, Exit, Signals};
use super::metrics_http::Snapshot;
use super::routes::Routes;
use super::tun;
use super::udp::Sockets;
use crate::engine::{Engine, PeerChanges, PeerSpec};

/// Runs the tunnel for `engine` with routes to `networks`. On each reload signal, `reload` may
/// change the engine's peers and the routes; then the loop resumes.
pub fn serve(
    config: &GatewayConfig,
    engine: &mut Engine,
    networks: &[Cidr],
    signals: &mut Signals,
    metrics: Option<&Snapshot>,
    mut reload: impl FnMut(&mut Engine, &mut Routes),
) -> anyhow::Result<()> {
    let (dev, tun_offload) = tun::create(&config.interface, config.mtu, config.offload)
        .with_context(|| format!("cannot create TUN device {:?}", config.interface))?;
    let mut routes = Routes::new(dev.if_index()?)?;
    let result = (|| -> anyhow::Result<()> {
        for address in &config.interface_addresses {
            routes.add_address(*address)?;
        }
        routes.sync(networks)?;
        let sockets = Sockets::bind(config.listen_port, config.offload)?;
        tracing::info!(
            interface = %config.interface,
            port = config.listen_port,
            mtu = config.mtu,
            "tunnel up"
        );
        set_ready(metrics, true);
        while event_loop::run(engine, &dev, tun_offload, &sockets, signals, metrics)?
            == Exit::Reload
        {
            reload(engine, &mut routes);
        }
        Ok(())
    })();
    set_ready(metrics, false);
    routes.remove_all();
    drop(dev);
    tracing::info!("routes and TUN device removed");
    result
}

/// Makes `peers` the engine's peers, live, and routes their networks into the TUN device: what
/// a reload does in both modes. On an inconsistent set nothing changes.
pub fn apply_peers(
    engine: &mut Engine,
    routes: &mut Routes,
    peers: Vec<PeerSpec>,
) -> Result<PeerChanges, String> {
    log_remapping(&peers);
    let wanted = routed_networks(&peers);
    let changes = engine
        .apply_peers(peers)
        .map_err(|e| format!("{e}; the running peers stay"))?;
    routes
        .sync(&wanted)
        .map_err(|e| format!("peers applied, but their routes are not: {e:#}"))?;
    Ok(changes)
}

/// The prefixes routed into the TUN device: every peer network as home pods address it.
pub fn routed_networks(peers: &[PeerSpec]) -> Vec<Cidr> {
    peers
        .iter()
        .flat_map(|p| p.networks.iter().map(|n| n.remapped))
        .collect()
}

pub fn log_remapping(peers: &[PeerSpec]) {
    for p in peers {
        for n in p.networks.iter().filter(|n| n.cidr != n.remapped) {
            tracing::info!(peer = %p.name, cidr = %n.cidr, remapped = %n.remapped, "home pods reach {} as {}", n.cidr, n.remapped);
        }
    }
}

fn set_ready(metrics: Option<&Snapshot>, ready: bool) {
    if let Some(Ok(mut m)) = metrics.map(|m| m.lock()) {
        m.ready = ready;
        if !ready {
            m.peers.clear();
        }
    }
}
