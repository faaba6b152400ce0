//! Kubernetes mode (`liqonet-gateway run --kubernetes`): peers are TunnelEndpoints, the key pair
//! is a Secret, and a Lease elects which replica carries the tunnel.
//!
//! - [`settings`]: local settings from flags and environment variables.
//! - [`key_secret`]: the key pair's Secret, created on first start.
//! - [`lease`]: leader election (decision logic unit-tested with controlled time).
//! - [`plan`], [`status`]: pure: endpoints → peers, and what each status says and when.
//! - [`controller`]: the kube-runtime controller that applies them, run by the leader.
//! - [`dataplane`]: the leader's tunnel thread.
//! - [`endpoint_slice`]: the gateway Service's one endpoint, the leader's, written by the leader.
//! - [`peering`]: `peering-info` and `peer add/remove` against the cluster.
//! - [`list`]: `status --kubernetes`, every TunnelEndpoint and what its gateway reported.

pub mod controller;
pub mod dataplane;
pub mod endpoint_slice;
pub mod key_secret;
pub mod lease;
pub mod list;
pub mod peering;
pub mod plan;
pub mod resolver;
pub mod settings;
pub mod status;
pub mod up_down;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use liqonet_proto::crd::{GatewayStatus, TunnelEndpoint};
use tokio::sync::watch;

use crate::io::metrics_http;
use crate::snapshot::Snapshot;
use dataplane::Dataplane;
use lease::Elector;
pub use settings::KubeSettings;

/// How long a stopping controller may take to finish its current reconcile.
const CONTROLLER_GRACE: Duration = Duration::from_secs(2);
/// How long a withdrawal of our endpoint may take (best effort: the API may be away).
const WITHDRAW_LIMIT: Duration = Duration::from_secs(1);
/// How often the leader checks that the Service's slice still names it (it may have been
/// edited or deleted by hand, or overwritten by a replica that led for a moment too).
const SLICE_RECHECK: Duration = Duration::from_secs(2);
/// Every call about the slice is abandoned after this long: the client has no read timeout.
const SLICE_CALL_LIMIT: Duration = Duration::from_secs(2);
/// Connecting to the API server gives up after this long (kube's default is 30 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A client from the in-cluster configuration or the kubeconfig, whichever is there.
pub async fn client() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await.map_err(|e| {
        anyhow::anyhow!("no Kubernetes API configuration (in-cluster or kubeconfig): {e}")
    })?;
    // Watches must stay open while nothing changes, so there is no read timeout here: every
    // call that is not a watch is bounded by its caller instead.
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    kube::Client::try_from(config).map_err(|e| anyhow::anyhow!("Kubernetes client: {e}"))
}

/// Where the other replicas reach our health endpoint: the node IP when it listens on all
/// addresses (the DaemonSet's `0.0.0.0:9640`, on the host network).
fn health_endpoint(listen: std::net::SocketAddr, node_ip: &str) -> String {
    let host = if listen.ip().is_unspecified() {
        node_ip.to_string()
    } else {
        listen.ip().to_string()
    };
    if host.contains(':') {
        format!("[{host}]:{}", listen.port())
    } else {
        format!("{host}:{}", listen.port())
    }
}

/// Updates this replica's part in the election, as `/readyz` reads it.
fn set_election(snapshot: &Snapshot, f: impl FnOnce(&mut crate::snapshot::Election)) {
    if let Ok(mut s) = snapshot.lock() {
        f(&mut s.election);
    }
}

/// Removes the Service's slice if it names this replica's node: best effort, bounded.
async fn withdraw(api: &Api<EndpointSlice>, service: &str, me: &endpoint_slice::Leader) {
    match tokio::time::timeout(
        WITHDRAW_LIMIT,
        endpoint_slice::withdraw(api, service, &me.node_ip),
    )
    .await
    {
        Ok(Ok(true)) => tracing::info!(service, "withdrew this node from the gateway Service"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::warn!(
            service,
            "cannot withdraw this node from the gateway Service: {e}"
        ),
        Err(_) => tracing::warn!(
            service,
            "cannot withdraw this node from the gateway Service: timed out"
        ),
    }
}

/// While leading: once the data plane is up (the TUN device, routes and UDP port: `ready`),
/// makes the Service's slice name this replica, retrying until it does, then checks it every
/// [`SLICE_RECHECK`]. Ends when `halt` is raised, between calls, so that no call it made lands
/// after the withdrawal that follows.
async fn publish_while_leading(
    api: Api<EndpointSlice>,
    service: String,
    me: endpoint_slice::Leader,
    snapshot: Snapshot,
    mut halt: watch::Receiver<bool>,
) {
    let up = || snapshot.lock().map(|s| s.ready).unwrap_or(false);
    while !up() {
        tokio::select! {
            _ = halt.wait_for(|h| *h) => return,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    let mut failing: Option<String> = None;
    let mut published = false;
    loop {
        if *halt.borrow() {
            return;
        }
        let call = tokio::time::timeout(
            SLICE_CALL_LIMIT,
            endpoint_slice::publish(&api, &service, &me),
        );
        let result = match call.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("timed out".to_string()),
        };
        let pause = match result {
            Ok(()) => {
                if !std::mem::replace(&mut published, true) || failing.take().is_some() {
                    tracing::info!(%service, node = %me.node_name, "the gateway Service leads to this node");
                }
                SLICE_RECHECK
            }
            Err(msg) => {
                if failing.as_deref() != Some(&msg) {
                    tracing::warn!(%service, "cannot point the gateway Service at this node: {msg}");
                }
                failing = Some(msg);
                Duration::from_millis(250)
            }
        };
        tokio::select! {
            _ = halt.wait_for(|h| *h) => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Completes once `flag` is true.
async fn raised(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

enum Why {
    Lost,
    Stop,
    Ended,
}

/// Runs the gateway in Kubernetes mode until SIGTERM or SIGINT.
pub async fn run(settings: KubeSettings) -> anyhow::Result<()> {
    // Every problem with the settings at once, each naming its flag and variable.
    let (local, identity, timings) = (
        settings.to_config(),
        settings.identity(),
        settings.timings(),
    );
    let (local, (pod, node_name, node_ip), timings) = match (local, identity, timings) {
        (Ok(l), Ok(i), Ok(t)) => (l, i, t),
        (l, i, t) => {
            let errs: Vec<String> = [l.err(), i.err(), t.err()]
                .into_iter()
                .flatten()
                .map(|e| e.to_string())
                .collect();
            anyhow::bail!("invalid settings:\n{}", errs.join("\n"));
        }
    };
    let client = client().await?;
    let ns = settings
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let snapshot = metrics_http::spawn(settings.health_address)?;
    if let Ok(mut s) = snapshot.lock() {
        s.identity = Some(pod.clone());
    }
    let key =
        key_secret::load_or_create(&Api::namespaced(client.clone(), &ns), &settings.keys_secret)
            .await?;
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), &ns);
    let me = endpoint_slice::Leader {
        node_name: node_name.clone(),
        node_ip: node_ip.clone(),
        pod_name: pod.clone(),
        namespace: ns.clone(),
        port: local.listen_port,
    };
    // An earlier run on this node (a restarted container, a node back from a crash) may have
    // left the Service pointing here; until this replica leads, it must not.
    withdraw(&slices, &settings.service, &me).await;

    let (stop_tx, stop) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let stopping = snapshot.clone();
    let signals = tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received, shutting down");
        set_election(&stopping, |e| e.stopping = true);
        let _ = stop_tx.send(true);
    });

    let (leader_tx, mut leader) = watch::channel(false);
    let (seen_tx, mut seen) = watch::channel(false);
    let campaigning = snapshot.clone();
    let seen_task = tokio::spawn(async move {
        if seen.wait_for(|s| *s).await.is_ok() {
            set_election(&campaigning, |e| e.campaigning = true);
        }
    });
    let (quit_tx, quit) = watch::channel(false);
    tracing::info!(cluster = %local.cluster_id, namespace = %ns, identity = %pod, lease = %settings.lease, "campaigning for the lease");
    let health = health_endpoint(settings.health_address, &node_ip);
    let campaign = tokio::spawn(lease::campaign(
        Api::<Lease>::namespaced(client.clone(), &ns),
        settings.lease.clone(),
        Elector::new(pod, timings),
        lease::Published {
            health: Some(health),
            node: Some(node_name.clone()),
        },
        leader_tx,
        seen_tx,
        raised(quit),
    ));
    let gateway = GatewayStatus { node_name, node_ip };
    let endpoints = Api::<TunnelEndpoint>::namespaced(client.clone(), &ns);
    let result = loop {
        tokio::select! {
            r = leader.wait_for(|l| *l) => if r.is_err() { break Ok(()) },
            () = raised(stop.clone()) => break Ok(()),
        }
        tracing::info!("leading: bringing the tunnel up");
        set_election(&snapshot, |e| e.leading = true);
        let (dp, ended) = match Dataplane::start(local.clone(), &key, snapshot.clone()) {
            Ok(d) => d,
            Err(e) => break Err(e),
        };
        let dp = Arc::new(dp);
        // Once the data plane is up, the Service leads here.
        let (unpublish_tx, unpublish) = watch::channel(false);
        let publisher = tokio::spawn(publish_while_leading(
            slices.clone(),
            settings.service.clone(),
            me.clone(),
            snapshot.clone(),
            unpublish,
        ));
        let (halt_tx, halt) = watch::channel(false);
        let controller = tokio::spawn(controller::run(
            endpoints.clone(),
            local.clone(),
            dp.clone(),
            gateway.clone(),
            settings.status_interval,
            up_down::changes(snapshot.clone()),
            raised(halt),
        ));
        let why = tokio::select! {
            _ = leader.wait_for(|l| !*l) => Why::Lost,
            () = raised(stop.clone()) => Why::Stop,
            _ = ended => Why::Ended,
        };
        // The publisher ends between calls (none of its writes may land after a withdrawal);
        // one stuck on the API is cut off.
        let _ = unpublish_tx.send(true);
        let mut publisher = publisher;
        if tokio::time::timeout(SLICE_CALL_LIMIT, &mut publisher)
            .await
            .is_err()
        {
            publisher.abort();
        }
        set_election(&snapshot, |e| e.leading = false);
        // Leaving on our own (SIGTERM, a failed data plane): the Service stops leading here
        // first. A lost Lease is another leader's: forwarding stops at once, the withdrawal
        // follows (below).
        if !matches!(why, Why::Lost) {
            withdraw(&slices, &settings.service, &me).await;
        }
        // Forwarding stops first: nothing the API does (a hung status patch) may keep a replica
        // that no longer leads carrying the tunnel. Then the controller gets a moment to finish.
        let halting = dp.clone();
        let _ = tokio::task::spawn_blocking(move || halting.halt()).await;
        let _ = halt_tx.send(true);
        let mut controller = controller;
        if tokio::time::timeout(CONTROLLER_GRACE, &mut controller)
            .await
            .is_err()
        {
            controller.abort();
        }
        if matches!(why, Why::Stop) {
            // Nothing forwards here and no status write of ours can land any more: the Lease
            // goes now, and a follower takes over while the device is still being removed.
            let _ = quit_tx.send(true);
        }
        let stopping = dp.clone();
        let stopped = tokio::task::spawn_blocking(move || stopping.stop())
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("stopping the data plane: {e}")));
        match why {
            Why::Lost => {
                tracing::warn!("lost the lease: tunnel down, following");
                if let Err(e) = stopped {
                    tracing::warn!("{e:#}");
                }
                withdraw(&slices, &settings.service, &me).await;
            }
            Why::Stop => break stopped,
            Why::Ended => {
                break Err(stopped
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("the data plane stopped")))
            }
        }
    };
    signals.abort();
    seen_task.abort();
    // The campaign releases the lease (if held) so that a follower takes over at once.
    let _ = quit_tx.send(true);
    let _ = campaign.await;
    result
}
