//! What the agent shows about itself: Prometheus families and the `/status` report, both updated
//! after every reconciliation pass, and the HTTP endpoint serving them with `/healthz`.
//!
//! The loop only stores numbers in the families' atomics and swaps the report under a mutex held
//! for a copy; the endpoint ([`liqonet_telemetry::http`]) runs on a thread of its own and reads
//! them, so a slow or stuck client never holds up a pass. Everything here lives as long as the
//! process: a reload or a new configuration from the cluster never resets a counter.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use liqonet_proto::agent::AgentConfig;
use liqonet_telemetry::http::{self, Reply};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::desired::Desired;
use crate::reconcile::{Outcome, Owned};
use crate::status::{Check, LastError, LastReconcile, Status};

/// The agent's metrics port: beside the gateway's 9640 (`--health-address`), never the same, so
/// both serve on a gateway node's host network.
pub const DEFAULT_PORT: u16 = 9742;

/// The families, each a handle on atomics the registry encodes.
#[derive(Clone)]
struct Families {
    routes_installed: Gauge,
    routes_desired: Gauge,
    reconciles: Counter,
    failures: Counter,
    repairs: Counter,
    last_duration: Gauge<f64, AtomicU64>,
    last_timestamp: Gauge<f64, AtomicU64>,
    duration: Histogram,
}

impl Families {
    fn register(registry: &mut Registry) -> Families {
        let f = Families {
            routes_installed: Gauge::default(),
            routes_desired: Gauge::default(),
            reconciles: Counter::default(),
            failures: Counter::default(),
            repairs: Counter::default(),
            last_duration: Gauge::default(),
            last_timestamp: Gauge::default(),
            // 0.5 ms to 4 s: a pass is a few netlink round trips, a slow kernel makes it seconds.
            duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        };
        registry.register(
            "liqonet_route_agent_routes_installed",
            "The agent's routes in its routing table, as the last pass that could list them left them",
            f.routes_installed.clone(),
        );
        registry.register(
            "liqonet_route_agent_routes_desired",
            "Routes the current configuration wants in the agent's routing table",
            f.routes_desired.clone(),
        );
        // The encoder ends each HELP with a period and gives counters their `_total` suffix.
        registry.register(
            "liqonet_route_agent_reconciles",
            "Reconciliation passes since the agent started",
            f.reconciles.clone(),
        );
        registry.register(
            "liqonet_route_agent_reconcile_failures",
            "Reconciliation passes in which at least one action failed",
            f.failures.clone(),
        );
        registry.register(
            "liqonet_route_agent_repairs",
            "Changes made to put back routes, rules, FDB entries, addresses or the overlay device that something else deleted or changed",
            f.repairs.clone(),
        );
        registry.register(
            "liqonet_route_agent_last_reconcile_duration_seconds",
            "How long the last reconciliation pass took",
            f.last_duration.clone(),
        );
        registry.register(
            "liqonet_route_agent_last_reconcile_timestamp_seconds",
            "When the last reconciliation pass ended, in seconds since the Unix epoch",
            f.last_timestamp.clone(),
        );
        registry.register(
            "liqonet_route_agent_reconcile_duration_seconds",
            "How long reconciliation passes take",
            f.duration.clone(),
        );
        f
    }
}

/// One pass as the loop saw it.
pub struct Pass<'a> {
    /// `None`: nothing to route (no gateway known yet).
    pub config: Option<&'a AgentConfig>,
    pub marks: &'a Owned,
    pub desired: &'a Desired,
    pub outcome: &'a Outcome,
    /// Changes that put back state already in place for the same configuration.
    pub repairs: usize,
    pub ended: SystemTime,
    pub took: Duration,
}

/// The families, the report, and the registry the endpoint encodes.
#[derive(Clone)]
pub struct Telemetry {
    families: Families,
    status: Arc<Mutex<Status>>,
    registry: Arc<Registry>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut registry = Registry::default();
        liqonet_telemetry::register_build_info(&mut registry, "route-agent");
        let families = Families::register(&mut registry);
        Telemetry {
            families,
            status: Arc::default(),
            registry: Arc::new(registry),
        }
    }

    /// Publishes a pass: counters and gauges, then the report.
    pub fn record(&self, pass: &Pass<'_>) {
        let f = &self.families;
        let o = pass.outcome;
        let failed = !o.failures.is_empty();
        f.reconciles.inc();
        if failed {
            f.failures.inc();
        }
        f.repairs.inc_by(pass.repairs as u64);
        f.routes_desired
            .set(i64::try_from(pass.desired.routes.len()).unwrap_or(i64::MAX));
        // Not listed this pass: the last count stands (the failure says why).
        if let Some(n) = o.in_place.routes {
            f.routes_installed.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let took = pass.took.as_secs_f64();
        f.last_duration.set(took);
        f.duration.observe(took);
        let ended = unix_seconds(pass.ended);
        f.last_timestamp.set(ended);

        let errors: Vec<String> = o.failures.iter().map(ToString::to_string).collect();
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        let c = pass.config;
        s.node = c.map(|c| c.node_name.clone());
        s.mode = c.map(|c| c.mode);
        s.gateway_node = c.map(|c| c.gateway_node.clone());
        s.is_gateway_node = c.is_some_and(AgentConfig::is_gateway_node);
        s.remote_networks = c
            .map(|c| c.remote_networks.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        s.table = pass.marks.table;
        s.rule_priority = pass.marks.priority;
        s.routes = Check {
            desired: pass.desired.routes.len(),
            installed: o.in_place.routes,
            missing: o
                .in_place
                .missing_routes
                .iter()
                .map(ToString::to_string)
                .collect(),
        };
        s.rules = Check {
            desired: pass.desired.rules.len(),
            installed: o.in_place.rules,
            missing: o
                .in_place
                .missing_rules
                .iter()
                .map(ToString::to_string)
                .collect(),
        };
        if failed {
            s.last_error = Some(LastError {
                unix_seconds: ended,
                errors: errors.clone(),
            });
        }
        s.last_reconcile = Some(LastReconcile {
            unix_seconds: ended,
            age_seconds: 0.0,
            duration_seconds: took,
            added: o.changes.added,
            removed: o.changes.removed,
            errors,
        });
        s.reconciles = f.reconciles.get();
        s.reconcile_failures = f.failures.get();
        s.repairs = f.repairs.get();
    }

    /// The report as of `now`.
    pub fn status(&self, now: SystemTime) -> Status {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(last) = &mut s.last_reconcile {
            last.age_seconds = (unix_seconds(now) - last.unix_seconds).max(0.0);
        }
        s
    }

    /// The families in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// Binds `addr` (errors name the setting, `what`) and serves `/metrics`, `/healthz` and
    /// `/status` on a thread of its own.
    pub fn serve(&self, addr: SocketAddr, what: &str) -> std::io::Result<()> {
        let me = self.clone();
        http::serve(addr, what, Arc::new(move |path: &str| me.respond(path)))?;
        tracing::info!(%addr, "serving /metrics, /healthz and /status");
        Ok(())
    }

    fn respond(&self, path: &str) -> Reply {
        match path {
            "/metrics" => match self.encode() {
                Ok(body) => Reply {
                    status: 200,
                    content_type: liqonet_telemetry::OPENMETRICS,
                    body,
                },
                Err(_) => Reply::text(500, "cannot encode the metrics\n"),
            },
            "/healthz" => Reply::text(200, "ok\n"),
            "/status" => match serde_json::to_string_pretty(&self.status(SystemTime::now())) {
                Ok(body) => Reply::json(body + "\n"),
                Err(e) => Reply::text(500, format!("cannot encode the status: {e}\n")),
            },
            _ => Reply::not_found(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_loop::owned;
    use crate::desired::desired;
    use crate::fake_kernel::{config, FakeKernel};
    use crate::reconcile::apply;

    fn record(t: &Telemetry, c: &AgentConfig, k: &FakeKernel, repairs: usize) -> Outcome {
        let d = desired(c);
        let marks = owned(c);
        let outcome = apply(k, &d, &marks);
        t.record(&Pass {
            config: Some(c),
            marks: &marks,
            desired: &d,
            outcome: &outcome,
            repairs,
            ended: SystemTime::now(),
            took: Duration::from_millis(3),
        });
        outcome
    }

    /// `name value` lines of the exposition, by sample name (labels included).
    fn samples(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
            .collect()
    }

    fn value(text: &str, name: &str) -> f64 {
        samples(text)
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
            .1
    }

    #[test]
    fn every_family_has_help_and_type() {
        let t = Telemetry::new();
        record(&t, &config("w1", "vxlan"), &FakeKernel::default(), 0);
        let text = t.encode().unwrap();
        for (family, kind) in [
            ("liqonet_route_agent_routes_installed", "gauge"),
            ("liqonet_route_agent_routes_desired", "gauge"),
            ("liqonet_route_agent_reconciles", "counter"),
            ("liqonet_route_agent_reconcile_failures", "counter"),
            ("liqonet_route_agent_repairs", "counter"),
            (
                "liqonet_route_agent_last_reconcile_duration_seconds",
                "gauge",
            ),
            (
                "liqonet_route_agent_last_reconcile_timestamp_seconds",
                "gauge",
            ),
            (
                "liqonet_route_agent_reconcile_duration_seconds",
                "histogram",
            ),
            ("liqonet_build", "info"),
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family}: no HELP in\n{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {family} {kind}\n")),
                "{family}: no TYPE {kind} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // One period, the encoder's.
        for help in text
            .lines()
            .filter(|l| l.starts_with("# HELP liqonet_route_agent"))
        {
            assert!(
                help.ends_with(|c: char| c.is_alphanumeric() || c == '.') && !help.ends_with(".."),
                "{help}"
            );
        }
        assert_eq!(value(&text, "liqonet_route_agent_reconciles_total"), 1.0);
        assert_eq!(
            value(
                &text,
                "liqonet_route_agent_reconcile_duration_seconds_count"
            ),
            1.0
        );
        assert_eq!(
            value(&text, "liqonet_route_agent_last_reconcile_duration_seconds"),
            0.003
        );
    }

    #[test]
    fn the_snapshot_says_what_is_desired_and_what_is_installed() {
        let t = Telemetry::new();
        let c = config("w1", "vxlan");
        let k = FakeKernel::default();
        record(&t, &c, &k, 0);
        let s = t.status(SystemTime::now());
        assert_eq!(s.node.as_deref(), Some("w1"));
        assert_eq!(s.gateway_node.as_deref(), Some("gw"));
        assert!(!s.is_gateway_node);
        assert_eq!((s.table, s.rule_priority), (2741, 2741));
        assert_eq!(
            s.remote_networks,
            ["10.245.0.0/16", "10.97.0.0/16", "fd10:245::/56"]
        );
        assert_eq!((s.routes.desired, s.routes.installed), (3, Some(3)));
        assert!(s.routes.missing.is_empty() && s.rules.missing.is_empty());
        assert_eq!((s.rules.desired, s.rules.installed), (3, Some(3)));
        assert!(crate::status::healthy(&s));
        let text = t.encode().unwrap();
        assert_eq!(value(&text, "liqonet_route_agent_routes_installed"), 3.0);
        assert_eq!(value(&text, "liqonet_route_agent_routes_desired"), 3.0);
        // Routes deleted behind the agent's back and put back: repairs.
        k.state().routes.pop();
        let o = record(&t, &c, &k, 1);
        assert_eq!(o.changes.added, 1);
        assert_eq!(t.status(SystemTime::now()).repairs, 1);
        assert_eq!(
            value(&t.encode().unwrap(), "liqonet_route_agent_repairs_total"),
            1.0
        );
    }

    #[test]
    fn a_failure_is_counted_and_its_route_listed_as_missing() {
        let t = Telemetry::new();
        let c = config("w1", "vxlan");
        let k = FakeKernel {
            refuse: vec!["10.97.0.0/16".parse().unwrap()],
            ..FakeKernel::default()
        };
        record(&t, &c, &k, 0);
        let s = t.status(SystemTime::now());
        assert_eq!((s.routes.desired, s.routes.installed), (3, Some(2)));
        assert_eq!(s.routes.missing, ["10.97.0.0/16 via 10.84.0.10 (overlay)"]);
        let last = s.last_reconcile.as_ref().unwrap();
        assert_eq!(last.errors.len(), 1);
        assert!(
            last.errors[0].starts_with("cannot add route 10.97.0.0/16"),
            "{last:?}"
        );
        assert_eq!(s.last_error.as_ref().map(|e| &e.errors), Some(&last.errors));
        assert_eq!((s.reconciles, s.reconcile_failures), (1, 1));
        assert!(!crate::status::healthy(&s));
        let text = t.encode().unwrap();
        assert_eq!(
            value(&text, "liqonet_route_agent_reconcile_failures_total"),
            1.0
        );
        assert_eq!(value(&text, "liqonet_route_agent_routes_installed"), 2.0);
    }

    #[test]
    fn the_endpoint_serves_metrics_health_and_status() {
        let t = Telemetry::new();
        record(&t, &config("gw", "direct"), &FakeKernel::default(), 0);
        let r = t.respond("/metrics");
        assert_eq!(
            (r.status, r.content_type),
            (200, liqonet_telemetry::OPENMETRICS)
        );
        assert_eq!(t.respond("/healthz"), Reply::text(200, "ok\n"));
        let r = t.respond("/status");
        assert_eq!((r.status, r.content_type), (200, "application/json"));
        let s: Status = serde_json::from_str(&r.body).unwrap();
        assert!(s.is_gateway_node);
        assert_eq!(s.mode, Some(liqonet_proto::agent::Mode::Direct));
        assert_eq!(t.respond("/nope").status, 404);
    }
}
