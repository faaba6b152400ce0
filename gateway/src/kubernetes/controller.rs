//! The TunnelEndpoint controller (kube-runtime), run by the leader only.
//!
//! Every reconcile plans the whole peer set from the endpoints in the store (the engine applies
//! the difference live, so other peers' sessions go on), then writes this endpoint's status.
//! The finalizer makes deletion remove the peer before the object goes. Failures requeue with a
//! growing delay per endpoint; nothing here ends the process.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{finalizer, Event};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use liqonet_proto::config::GatewayConfig;
use liqonet_proto::crd::{GatewayStatus, Phase, TunnelEndpoint, TunnelEndpointStatus};

use super::plan::{plan, FINALIZER};
use super::resolver::Resolver;
use super::status::{status_of, when_to_write, Write};
use crate::engine::{PeerChanges, PeerSpec, PeerStats};

/// Where the planned peers go: the data plane (or, in tests, a sans-IO engine).
pub trait Peers: Send + Sync + 'static {
    /// Makes `peers` the engine's peers, live.
    fn apply(
        &self,
        peers: Vec<PeerSpec>,
    ) -> impl Future<Output = Result<PeerChanges, String>> + Send;
    fn stats(&self) -> Vec<PeerStats>;
}

/// A status write that takes longer is abandoned and retried (the API server may hang).
const API_CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying the peers: {0}")]
    Apply(String),
    #[error("writing the status: {0}")]
    Status(#[source] kube::Error),
    #[error("{0}: no answer within {API_CALL_TIMEOUT:?}")]
    Timeout(&'static str),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

#[derive(Default)]
struct Memory {
    /// The peer set last applied, to skip applying an unchanged one.
    applied: Option<Vec<PeerSpec>>,
    last_write: HashMap<String, Instant>,
    failures: HashMap<String, u32>,
}

pub struct Context<P> {
    pub api: Api<TunnelEndpoint>,
    pub store: Store<TunnelEndpoint>,
    pub local: GatewayConfig,
    pub peers: P,
    pub gateway: GatewayStatus,
    pub status_interval: Duration,
    resolver: Resolver,
    memory: Mutex<Memory>,
}

impl<P: Peers> Context<P> {
    pub fn new(
        api: Api<TunnelEndpoint>,
        store: Store<TunnelEndpoint>,
        local: GatewayConfig,
        peers: P,
        gateway: GatewayStatus,
        status_interval: Duration,
    ) -> Self {
        Context {
            api,
            store,
            local,
            peers,
            gateway,
            status_interval,
            resolver: Resolver::default(),
            memory: Mutex::default(),
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the plan; then writes `target`'s status when it is worth it.
    async fn sync(&self, target: Option<&TunnelEndpoint>) -> Result<Action, Error> {
        let endpoints = self.store.state();
        self.resolver
            .refresh(endpoints.iter().filter_map(|t| t.spec.endpoint.as_ref()))
            .await;
        let plan = plan(&self.local, &endpoints, &|e| self.resolver.get(e));
        let unchanged = self.memory().applied.as_ref() == Some(&plan.peers);
        if !unchanged {
            let changes = match self.peers.apply(plan.peers.clone()).await {
                Ok(ch) => ch,
                Err(e) => {
                    if let Some(te) = target {
                        self.report_pending(te, &e).await;
                    }
                    return Err(Error::Apply(e));
                }
            };
            tracing::info!(added = ?changes.added, updated = ?changes.updated, removed = ?changes.removed, "peers applied");
            self.memory().applied = Some(plan.peers);
        }
        let requeue = Action::requeue(self.status_interval);
        let Some(te) = target else {
            return Ok(requeue);
        };
        let name = te.name_any();
        let Some(outcome) = plan.outcomes.get(&name) else {
            return Ok(requeue);
        };
        let stats = self.peers.stats();
        let stats = stats.iter().find(|s| s.name == te.spec.cluster_id);
        let status = status_of(outcome, stats, &self.gateway, Timestamp::now());
        let last = self.memory().last_write.get(&name).copied();
        match when_to_write(
            te.status.as_ref(),
            &status,
            last,
            self.status_interval,
            Instant::now(),
        ) {
            Write::No => Ok(requeue),
            Write::After(d) => Ok(Action::requeue(d)),
            Write::Now => {
                let patch = Patch::Merge(serde_json::json!({ "status": status }));
                tokio::time::timeout(
                    API_CALL_TIMEOUT,
                    self.api
                        .patch_status(&name, &PatchParams::default(), &patch),
                )
                .await
                .map_err(|_| Error::Timeout("status patch"))?
                .map_err(Error::Status)?;
                self.memory().last_write.insert(name, Instant::now());
                Ok(requeue)
            }
        }
    }
}

impl<P> Context<P> {
    /// Best effort: the endpoint is planned but the data plane did not take it.
    async fn report_pending(&self, te: &TunnelEndpoint, error: &str) {
        let status = TunnelEndpointStatus {
            phase: Some(Phase::Pending),
            message: Some(format!("not applied yet: {error}")),
            gateway: Some(self.gateway.clone()),
            ..te.status.clone().unwrap_or_default()
        };
        if te.status.as_ref() == Some(&status) {
            return;
        }
        let patch = Patch::Merge(serde_json::json!({ "status": status }));
        let (name, params) = (te.name_any(), PatchParams::default());
        let call = self.api.patch_status(&name, &params, &patch);
        match tokio::time::timeout(API_CALL_TIMEOUT, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(endpoint = %te.name_any(), "cannot report Pending: {e}"),
            Err(_) => {
                tracing::debug!(endpoint = %te.name_any(), "cannot report Pending: timed out")
            }
        }
    }
}

pub async fn reconcile<P: Peers>(
    te: Arc<TunnelEndpoint>,
    ctx: Arc<Context<P>>,
) -> Result<Action, Error> {
    let name = te.name_any();
    let result = finalizer(&ctx.api, FINALIZER, te, |event| async {
        match event {
            Event::Apply(te) => ctx.sync(Some(&te)).await,
            Event::Cleanup(te) => {
                // The store shows it being deleted, so the plan leaves its peer out.
                ctx.sync(None).await?;
                tracing::info!(endpoint = %te.name_any(), "peer removed; releasing the finalizer");
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.memory().failures.remove(&name);
    }
    result
}

/// Retry after 0.5 s, doubling per consecutive failure of the same endpoint, up to a minute.
pub fn error_policy<P: Peers>(
    te: Arc<TunnelEndpoint>,
    err: &Error,
    ctx: Arc<Context<P>>,
) -> Action {
    let name = te.name_any();
    let n = {
        let mut m = ctx.memory();
        let n = m.failures.entry(name.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = Duration::from_millis(500)
        .saturating_mul(1 << (n - 1).min(7))
        .min(Duration::from_secs(60));
    tracing::warn!(endpoint = %name, attempt = n, retry_in = ?delay, "reconcile failed: {err}");
    Action::requeue(delay)
}

/// Retries of a failed watch: 250 ms doubling up to 2 s (kube's default grows to 30 s, which
/// after an API outage would leave the gateway blind for that long once the API is back).
pub fn watch_backoff() -> impl kube::runtime::utils::Backoff {
    let b = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(
        watcher::ExponentialBackoff::from(b),
        Duration::from_secs(60),
    )
}

/// Runs the controller until `stop` completes.
pub async fn run<P: Peers>(
    api: Api<TunnelEndpoint>,
    local: GatewayConfig,
    peers: P,
    gateway: GatewayStatus,
    status_interval: Duration,
    // Reconciles every TunnelEndpoint on each item (a peer went up or down).
    changes: impl futures::Stream<Item = ()> + Send + 'static,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let controller = Controller::new(api.clone(), watcher::Config::default())
        .trigger_backoff(watch_backoff())
        .reconcile_all_on(changes);
    let ctx = Arc::new(Context::new(
        api,
        controller.store(),
        local,
        peers,
        gateway,
        status_interval,
    ));
    controller
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            match r {
                // The watch itself (a relist after 410 Gone, an API server away): worth seeing.
                Err(kube::runtime::controller::Error::QueueError(e)) => {
                    tracing::warn!("watch: {e}")
                }
                Err(e) => tracing::debug!("controller: {e}"),
                Ok(_) => {}
            }
        })
        .await;
}
