//! The tunnel's lifetime on this node: create the TUN device, its addresses and routes, bind the
//! UDP sockets, run the event loop until told to stop, and remove the device and routes whatever
//! happened. Both modes run it: standalone on the main thread, Kubernetes on the leader's
//! data-plane thread. Peer changes come through [`Control`] from other threads.

use std::os::unix::net::UnixStream;

use anyhow::Context;
use liqonet_proto::config::GatewayConfig;
use liqonet_proto::{Cidr, Key};

use super::control::Control;
use super::event_loop;
use super::routes::Routes;
use super::tun;
use super::uapi::{self, Device};
use super::udp::Sockets;
use crate::engine::Engine;
use crate::snapshot::Snapshot;

/// Runs the tunnel for `engine` (whose private key is `key`) with routes to `networks` until a
/// byte arrives on `stop`. The loop publishes into `metrics` (its own snapshot when absent),
/// which the HTTP endpoint and the WireGuard userspace API (`wg show`) serve.
pub fn serve(
    config: &GatewayConfig,
    key: &Key,
    engine: &mut Engine,
    networks: &[Cidr],
    stop: &UnixStream,
    control: &Control,
    metrics: Option<&Snapshot>,
) -> anyhow::Result<()> {
    // The loop always publishes: the HTTP endpoint (if any) and the userspace API read it.
    let own = Snapshot::default();
    let snapshot = metrics.unwrap_or(&own);
    let (dev, tun_offload) = tun::create(&config.interface, config.mtu, config.offload)
        .with_context(|| format!("cannot create TUN device {:?}", config.interface))?;
    // Without the API the tunnel still works: say why and go on.
    let device = Device {
        interface: config.interface.clone(),
        private_key: *key,
        listen_port: config.listen_port,
    };
    let _uapi = uapi::spawn(
        std::path::Path::new(uapi::SOCKET_DIR),
        &config.interface,
        device,
        snapshot.clone(),
    )
    .map_err(|e| tracing::warn!("no WireGuard userspace API (wg show): {e}"))
    .ok();
    control.attach(Routes::new(dev.if_index()?)?);
    let result = (|| -> anyhow::Result<()> {
        control.with_routes(|routes| {
            for address in &config.interface_addresses {
                routes.add_address(*address)?;
            }
            routes.sync(networks)
        })?;
        let sockets = Sockets::bind(config.listen_port, config.offload)?;
        tracing::info!(
            interface = %config.interface,
            port = config.listen_port,
            mtu = config.mtu,
            "tunnel up"
        );
        set_ready(snapshot, true);
        let options = event_loop::Options {
            tun_offload,
            realtime_priority: config.realtime_priority,
        };
        event_loop::run(engine, &dev, options, &sockets, stop, control, snapshot)?;
        Ok(())
    })();
    set_ready(snapshot, false);
    if let Some(mut routes) = control.detach() {
        routes.remove_all();
    }
    // Down, nothing reaches the device; removing it takes tens of milliseconds (the kernel
    // waits for its users), which a replica handing over need not wait for.
    if let Err(e) = dev.enabled(false) {
        tracing::debug!("cannot set the TUN device down: {e}");
    }
    control.mark_halted();
    drop(dev);
    tracing::info!("routes and TUN device removed");
    result
}

fn set_ready(snapshot: &Snapshot, ready: bool) {
    if let Ok(mut m) = snapshot.lock() {
        m.ready = ready;
        m.loop_turned = ready.then(std::time::Instant::now);
        if !ready {
            m.peers.clear();
            m.totals.stopped();
        }
    }
}
