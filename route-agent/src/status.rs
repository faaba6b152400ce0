//! `liqonet-route-agent status`: what the agent running on this node says about its last
//! reconciliation — mode, gateway node, table and rules, routes desired and installed (and which
//! are missing), when it ran, how long it took and what failed.
//!
//! The agent serves this report as JSON at `/status` beside its metrics, built from the same
//! snapshot ([`crate::metrics`]).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use liqonet_proto::agent::Mode;
use serde::{Deserialize, Serialize};

/// How long the command waits for the agent at each step.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `None` until the agent has a configuration (Kubernetes: no gateway carries a network).
    pub node: Option<String>,
    pub mode: Option<Mode>,
    pub gateway_node: Option<String>,
    pub is_gateway_node: bool,
    pub table: u32,
    pub rule_priority: u32,
    pub remote_networks: Vec<String>,
    pub routes: Check,
    pub rules: Check,
    /// `None` before the first pass.
    pub last_reconcile: Option<LastReconcile>,
    /// The most recent pass that failed, even if later ones succeeded.
    pub last_error: Option<LastError>,
    pub reconciles: u64,
    pub reconcile_failures: u64,
    pub repairs: u64,
}

/// Routes or rules: how many the configuration wants, how many of the agent's are there
/// (`None`: not listed in the last pass), and the wanted ones that are not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub desired: usize,
    pub installed: Option<usize>,
    pub missing: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastReconcile {
    /// When it ended, in seconds since the Unix epoch.
    pub unix_seconds: f64,
    /// How long ago, when the report was made.
    pub age_seconds: f64,
    pub duration_seconds: f64,
    pub added: usize,
    pub removed: usize,
    /// Each action that failed, with why (empty: the pass did everything).
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    pub unix_seconds: f64,
    pub errors: Vec<String>,
}

/// Everything wanted is in place and the last pass did all it had to (the exit status of
/// `status`: usable as a check).
pub fn healthy(s: &Status) -> bool {
    s.last_reconcile
        .as_ref()
        .is_some_and(|l| l.errors.is_empty())
        && s.routes.missing.is_empty()
        && s.rules.missing.is_empty()
}

/// Where a client reaches an agent serving on `addr`: a wildcard address is reached on loopback.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// `HOST:PORT` as the user wrote it, resolved.
pub fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    address
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("--address {address:?}: {e} (HOST:PORT)"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("--address {address:?} resolves to no address"))
}

/// Asks the agent serving on `addr` for its report.
pub fn fetch(addr: SocketAddr) -> anyhow::Result<Status> {
    let (code, body) = liqonet_telemetry::client::get(addr, "/status", TIMEOUT).map_err(|e| {
        anyhow::anyhow!(
            "no route agent answers on {addr} ({e}); is it running, with metricsAddress (standalone) or --metrics-address (Kubernetes) there?"
        )
    })?;
    if code != 200 {
        anyhow::bail!("{addr} answered {code} for /status: is it a route agent?");
    }
    serde_json::from_str(&body).map_err(|e| anyhow::anyhow!("the answer of {addr} to /status: {e}"))
}

fn ago(seconds: f64) -> String {
    match seconds {
        s if s < 120.0 => format!("{s:.0} s ago"),
        s if s < 7200.0 => format!("{:.0} min ago", s / 60.0),
        s => format!("{:.1} h ago", s / 3600.0),
    }
}

fn check(c: &Check) -> String {
    match c.installed {
        Some(n) => format!("{} desired, {n} installed", c.desired),
        None => format!("{} desired, installed unknown (not listed)", c.desired),
    }
}

/// The report as a person reads it.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let Some(node) = &s.node else {
        let _ = writeln!(
            out,
            "no configuration yet: no gateway carries a network (table {}, rule priority {})",
            s.table, s.rule_priority
        );
        render_last(&mut out, s);
        return out;
    };
    let mode = match s.mode {
        Some(Mode::Vxlan) => "vxlan",
        Some(Mode::Direct) => "direct",
        None => "-",
    };
    let gateway = s.gateway_node.as_deref().unwrap_or("-");
    let _ = writeln!(out, "node       {node}  mode {mode}");
    let _ = writeln!(
        out,
        "gateway    {gateway}{}",
        if s.is_gateway_node {
            " (this node)"
        } else {
            ""
        }
    );
    let rules = if s.rules.missing.is_empty() && s.rules.installed.is_some() {
        "present".to_string()
    } else if s.rules.installed.is_none() {
        "unknown".to_string()
    } else {
        format!("{} missing", s.rules.missing.len())
    };
    let _ = writeln!(
        out,
        "table      {}  rule priority {}  rules {rules} ({})",
        s.table,
        s.rule_priority,
        check(&s.rules)
    );
    for r in &s.rules.missing {
        let _ = writeln!(out, "  missing  rule {r}");
    }
    let networks = if s.remote_networks.is_empty() {
        "none".to_string()
    } else {
        s.remote_networks.join(", ")
    };
    let _ = writeln!(out, "remote     {networks}");
    let _ = writeln!(out, "routes     {}", check(&s.routes));
    for r in &s.routes.missing {
        let _ = writeln!(out, "  missing  {r}");
    }
    render_last(&mut out, s);
    out
}

fn render_last(out: &mut String, s: &Status) {
    match &s.last_reconcile {
        Some(l) => {
            let _ = writeln!(
                out,
                "reconciled {}, took {:.1} ms, {} added, {} removed",
                ago(l.age_seconds),
                l.duration_seconds * 1000.0,
                l.added,
                l.removed
            );
            if l.errors.is_empty() {
                let _ = writeln!(out, "last pass  ok");
            }
            for e in &l.errors {
                let _ = writeln!(out, "last pass  failed: {e}");
            }
        }
        None => {
            let _ = writeln!(out, "reconciled never yet");
        }
    }
    if let (Some(e), Some(l)) = (&s.last_error, &s.last_reconcile) {
        if l.errors.is_empty() {
            let age = (l.unix_seconds - e.unix_seconds).max(0.0) + l.age_seconds;
            let _ = writeln!(
                out,
                "last error {}: {}",
                ago(age),
                e.errors.first().map(String::as_str).unwrap_or("-")
            );
        }
    }
    let _ = writeln!(
        out,
        "counters   {} passes, {} failed, {} repairs",
        s.reconciles, s.reconcile_failures, s.repairs
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            node: Some("w1".into()),
            mode: Some(Mode::Vxlan),
            gateway_node: Some("gw".into()),
            is_gateway_node: false,
            table: 2741,
            rule_priority: 2741,
            remote_networks: vec!["10.245.0.0/16".into(), "10.97.0.0/16".into()],
            routes: Check {
                desired: 2,
                installed: Some(1),
                missing: vec!["10.97.0.0/16 via 10.84.0.10 (overlay)".into()],
            },
            rules: Check {
                desired: 2,
                installed: Some(2),
                missing: vec![],
            },
            last_reconcile: Some(LastReconcile {
                unix_seconds: 1000.0,
                age_seconds: 4.2,
                duration_seconds: 0.0021,
                added: 0,
                removed: 0,
                errors: vec!["cannot add route 10.97.0.0/16 via 10.84.0.10 (overlay) to table 2741: Network is unreachable (os error 101)".into()],
            }),
            last_error: None,
            reconciles: 7,
            reconcile_failures: 7,
            repairs: 0,
        }
    }

    #[test]
    fn the_text_names_what_is_missing_and_why() {
        let s = sample();
        let text = render(&s);
        for want in [
            "node       w1  mode vxlan\n",
            "gateway    gw\n",
            "table      2741  rule priority 2741  rules present (2 desired, 2 installed)\n",
            "remote     10.245.0.0/16, 10.97.0.0/16\n",
            "routes     2 desired, 1 installed\n",
            "  missing  10.97.0.0/16 via 10.84.0.10 (overlay)\n",
            "reconciled 4 s ago, took 2.1 ms, 0 added, 0 removed\n",
            "last pass  failed: cannot add route 10.97.0.0/16",
            "counters   7 passes, 7 failed, 0 repairs\n",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        assert!(!healthy(&s));
    }

    #[test]
    fn healthy_is_everything_in_place_and_the_last_pass_complete() {
        let mut s = sample();
        s.routes.missing.clear();
        assert!(!healthy(&s), "the last pass failed");
        if let Some(l) = &mut s.last_reconcile {
            l.errors.clear();
        }
        s.last_error = Some(LastError {
            unix_seconds: 900.0,
            errors: vec!["cannot list the routes of table 2741: EBUSY".into()],
        });
        assert!(healthy(&s), "an old error does not count");
        let text = render(&s);
        assert!(text.contains("last pass  ok\n"), "{text}");
        assert!(
            text.contains("last error 104 s ago: cannot list the routes"),
            "{text}"
        );
        s.last_reconcile = None;
        assert!(!healthy(&s), "never reconciled");
    }

    #[test]
    fn without_a_configuration_it_says_so() {
        let s = Status {
            table: 2741,
            rule_priority: 2741,
            ..Status::default()
        };
        assert!(render(&s).starts_with("no configuration yet"));
    }

    #[test]
    fn the_json_is_camel_case_and_round_trips() {
        let s = sample();
        let text = serde_json::to_string(&s).unwrap();
        for key in [
            "\"gatewayNode\"",
            "\"isGatewayNode\"",
            "\"rulePriority\"",
            "\"remoteNetworks\"",
            "\"lastReconcile\"",
            "\"durationSeconds\"",
            "\"mode\":\"vxlan\"",
        ] {
            assert!(text.contains(key), "{key} not in {text}");
        }
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), s);
    }

    #[test]
    fn wildcard_addresses_are_reached_on_loopback() {
        let r = |a: &str| reachable(a.parse().unwrap()).to_string();
        assert_eq!(r("0.0.0.0:9742"), "127.0.0.1:9742");
        assert_eq!(r("[::]:9742"), "[::1]:9742");
        assert_eq!(r("10.0.0.5:9742"), "10.0.0.5:9742");
    }

    #[test]
    fn an_agent_that_does_not_answer_is_named() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let e = fetch(addr).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("no route agent answers on {addr} (")),
            "{e}"
        );
        assert!(resolve("nonsense").is_err());
        assert_eq!(
            resolve("127.0.0.1:9742").unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 9742))
        );
    }
}
