//! The HTTP endpoint: `/metrics` (OpenMetrics text), `/healthz` (the process answers, and its
//! data-path loop, if it runs one, has turned within [`LOOP_STALL`]; in Kubernetes mode with its
//! Lease identity and readiness, which a follower checks before taking over an expired Lease, so
//! it must answer whatever else is going on) and `/readyz` (standalone: the tunnel is up; in
//! Kubernetes mode: the replica could lead, or leads with its data plane up; see
//! [`crate::snapshot::Election`]).
//!
//! Served by [`liqonet_telemetry::http`] on a thread of its own, from the [`crate::snapshot`]
//! the event loop publishes every second: requests never touch the data path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use liqonet_telemetry::http::{self, Reply};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::snapshot::{Published, Snapshot};

/// The loop publishes every second; this long without means it is stuck (liveness fails).
pub const LOOP_STALL: Duration = Duration::from_secs(3);

/// The registry's view of the snapshot: the totals are copied out, so the loop never waits on
/// an encoding.
#[derive(Debug)]
struct FromSnapshot(Snapshot);

impl Collector for FromSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let totals = match self.0.lock() {
            Ok(s) => s.totals.clone(),
            Err(_) => return Ok(()),
        };
        crate::metrics::encode(&totals, &mut encoder)
    }
}

/// Binds `addr` and serves it on a thread of its own.
pub fn spawn(addr: SocketAddr) -> std::io::Result<Snapshot> {
    let snapshot = Snapshot::default();
    let mut registry = Registry::default();
    liqonet_telemetry::register_build_info(&mut registry, "gateway");
    registry.register_collector(Box::new(FromSnapshot(snapshot.clone())));
    let shared = snapshot.clone();
    http::serve(
        addr,
        "metricsAddress",
        Arc::new(move |path: &str| respond(path, &shared, &registry)),
    )?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(snapshot)
}

fn health(s: &Published, now: Instant) -> (u16, String) {
    if let Some(stalled) = s
        .loop_turned
        .map(|t| now.saturating_duration_since(t))
        .filter(|d| *d > LOOP_STALL)
    {
        return (
            503,
            format!(
                "the data path has not turned for {:.1} s\n",
                stalled.as_secs_f64()
            ),
        );
    }
    let body = match &s.identity {
        Some(id) => format!("ok\nidentity: {id}\nready: {}\n", s.ready),
        None => "ok\n".to_string(),
    };
    (200, body)
}

fn respond(path: &str, snapshot: &Snapshot, registry: &Registry) -> Reply {
    match path {
        "/metrics" => {
            let mut text = String::with_capacity(8192);
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => Reply {
                    status: 200,
                    content_type: liqonet_telemetry::OPENMETRICS,
                    body: text,
                },
                Err(_) => Reply::text(500, "cannot encode the metrics\n"),
            }
        }
        "/healthz" => match snapshot.lock() {
            Ok(s) => {
                let (code, body) = health(&s, Instant::now());
                Reply::text(code, body)
            }
            Err(_) => Reply::text(200, "ok\n"),
        },
        "/readyz" => match snapshot
            .lock()
            .map(|s| (s.ready_to_serve(), s.identity.is_some()))
        {
            Ok((true, _)) => Reply::text(200, "ready\n"),
            Ok((false, true)) => Reply::text(503, "not ready to lead\n"),
            _ => Reply::text(503, "not carrying the tunnel\n"),
        },
        _ => Reply::not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_fails_when_the_loop_stops_turning_and_not_before() {
        let t0 = Instant::now();
        let mut p = Published {
            identity: Some("gw1_abc".into()),
            ready: true,
            loop_turned: Some(t0),
            ..Published::default()
        };
        let (code, body) = health(&p, t0 + Duration::from_secs(1));
        assert_eq!(code, 200);
        assert_eq!(body, "ok\nidentity: gw1_abc\nready: true\n");
        let (code, body) = health(&p, t0 + Duration::from_secs(4));
        assert_eq!(code, 503);
        assert!(body.contains("has not turned for 4.0 s"), "{body}");
        // A follower runs no loop: nothing to be stuck.
        p.loop_turned = None;
        assert_eq!(health(&p, t0 + Duration::from_secs(60)).0, 200);
    }

    #[test]
    fn every_healthy_replica_is_ready_the_leader_once_its_tunnel_is_up_none_when_stopping() {
        use crate::snapshot::Election;
        let mut p = Published {
            identity: Some("gw1_abc".into()),
            ..Published::default()
        };
        assert!(!p.ready_to_serve(), "before the Lease was read");
        p.election = Election {
            campaigning: true,
            ..Election::default()
        };
        assert!(p.ready_to_serve(), "a follower that could lead");
        p.election.leading = true;
        assert!(!p.ready_to_serve(), "elected, tunnel not up yet");
        p.ready = true;
        assert!(p.ready_to_serve(), "the leader, tunnel up");
        p.election.stopping = true;
        assert!(!p.ready_to_serve(), "SIGTERM");
        // Standalone: the tunnel alone.
        let standalone = Published {
            ready: true,
            ..Published::default()
        };
        assert!(standalone.ready_to_serve());
    }
}
