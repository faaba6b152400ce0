//! Routing on the gateway node: the peers' networks (as this cluster addresses them) go into
//! the TUN device, as the gateway installs them (`proto 201`); and the route agent's policy
//! rules and table, where it keeps any.

use liqonet_proto::Cidr;

use super::netlink::{sample, LookupError, Route, Rule};
use super::Check;

/// The gateway's route protocol (see `io::routes`), for the fix.
const GATEWAY_PROTO: u8 = crate::io::routes::ROUTE_PROTOCOL;
/// The route agent's route and rule protocol.
const AGENT_PROTO: u8 = 202;

/// The `tun-routes` line: does the kernel send each of `remote` into `tun` (`tun_index`)?
/// `route_to` is the kernel's lookup for an address.
pub fn tun_routes(
    remote: Option<&[Cidr]>,
    tun: &str,
    tun_index: Option<u32>,
    route_to: impl Fn(std::net::IpAddr) -> Result<Route, LookupError>,
    name_of: impl Fn(u32) -> Option<String>,
) -> Check {
    let subject = format!("routes to the peers' networks via {tun}");
    let Some(remote) = remote else {
        return Check::warn(
            "tun-routes",
            &subject,
            "not checked: the peers' networks are unknown",
        );
    };
    if remote.is_empty() {
        return Check::pass("tun-routes", &subject, "no peer networks to route");
    }
    let mut wrong = Vec::new();
    for net in remote {
        let addr = sample(net);
        match route_to(addr) {
            Ok(r) if r.oif.is_some() && r.oif == tun_index => {}
            Ok(r) => {
                let dev = r.oif.and_then(&name_of).unwrap_or_else(|| "nowhere".into());
                wrong.push((net, format!("{net} goes out {dev}")));
            }
            Err(e) => wrong.push((net, format!("{net}: {e}"))),
        }
    }
    let all: Vec<String> = remote.iter().map(ToString::to_string).collect();
    if wrong.is_empty() {
        return Check::pass(
            "tun-routes",
            &subject,
            &format!("{} → {tun}", all.join(", ")),
        );
    }
    let fix: Vec<String> = wrong
        .iter()
        .map(|(net, _)| format!("ip route replace {net} dev {tun} proto {GATEWAY_PROTO}"))
        .collect();
    Check::fail(
        "tun-routes",
        &subject,
        &format!(
            "{}: their traffic does not reach the tunnel",
            wrong
                .into_iter()
                .map(|(_, w)| w)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        &fix.join(" && "),
    )
}

/// Where the route agent keeps its state.
pub struct Agent<'a> {
    pub table: u32,
    pub priority: u32,
    pub device: &'a str,
    /// Whether its VXLAN device exists here (it runs in `vxlan` mode).
    pub overlay: bool,
}

/// The `route-agent` line. On the gateway node in `vxlan` mode the agent sends return traffic
/// from each remote network back over the overlay: a `from REMOTE lookup TABLE` rule for each,
/// and routes in its table. In `direct` mode it keeps nothing there (the TUN routes do it all).
pub fn agent(a: &Agent, remote: Option<&[Cidr]>, rules: &[Rule], table: &[Route]) -> Check {
    let subject = format!(
        "route agent's rules (priority {}) and table {}",
        a.priority, a.table
    );
    let mine: Vec<&Rule> = rules
        .iter()
        .filter(|r| r.priority == a.priority && r.table == a.table)
        .collect();
    let reconcile = "kill -HUP $(pidof liqonet-route-agent)";
    if !a.overlay && mine.is_empty() && table.is_empty() {
        return Check::pass(
            "route-agent",
            &subject,
            &format!(
                "no rules, table empty, no {} device: none needed here (no route agent, or one in direct mode: the routes into the TUN serve the gateway node)",
                a.device
            ),
        );
    }
    let froms: Vec<String> = mine
        .iter()
        .filter_map(|r| r.from)
        .map(|c| c.to_string())
        .collect();
    let missing: Vec<&Cidr> = match (a.overlay, remote) {
        (true, Some(remote)) => remote
            .iter()
            .filter(|n| !mine.iter().any(|r| r.from == Some(**n)))
            .collect(),
        _ => Vec::new(),
    };
    if !missing.is_empty() {
        let fix: Vec<String> = missing
            .iter()
            .map(|n| {
                let v6 = if n.is_ipv4() { "" } else { " -6" };
                format!(
                    "ip{v6} rule add from {n} lookup {} priority {} protocol {AGENT_PROTO}",
                    a.table, a.priority
                )
            })
            .collect();
        let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
        return Check::fail(
            "route-agent",
            &subject,
            &format!(
                "no rule `from {} lookup {}`: replies to pods on other nodes do not go back over {}",
                names.join("`, `from "),
                a.table,
                a.device
            ),
            &fix.join(" && "),
        );
    }
    if table.is_empty() {
        return Check::fail(
            "route-agent",
            &subject,
            &format!(
                "{} rules but table {} holds no routes: the rules lead nowhere",
                mine.len(),
                a.table
            ),
            reconcile,
        );
    }
    if mine.is_empty() {
        return Check::fail(
            "route-agent",
            &subject,
            &format!(
                "table {} holds {} routes but no rule at priority {} looks it up",
                a.table,
                table.len(),
                a.priority
            ),
            reconcile,
        );
    }
    let rules = if froms.is_empty() {
        format!("{} rules", mine.len())
    } else {
        format!("rules from {}", froms.join(", "))
    };
    Check::pass(
        "route-agent",
        &subject,
        &format!(
            "{rules} → table {}, which holds {} routes",
            a.table,
            table.len()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::Status;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn via(oif: u32) -> Route {
        Route {
            dst: None,
            oif: Some(oif),
            gateway: None,
            mtu: None,
            table: 254,
            protocol: 201,
        }
    }

    fn names(i: u32) -> Option<String> {
        Some(if i == 5 { "liqo0" } else { "eth0" }.into())
    }

    #[test]
    fn each_remote_network_must_go_into_the_tun() {
        let remote = [c("10.245.0.0/16"), c("fd10:245::/56")];
        let ok = tun_routes(Some(&remote), "liqo0", Some(5), |_| Ok(via(5)), names);
        assert_eq!(ok.status, Status::Pass, "{ok:?}");
        let bad = tun_routes(
            Some(&remote),
            "liqo0",
            Some(5),
            |a| if a.is_ipv4() { Ok(via(2)) } else { Ok(via(5)) },
            names,
        );
        assert_eq!(bad.status, Status::Fail);
        assert!(bad.found.contains("10.245.0.0/16 goes out eth0"), "{bad:?}");
        assert_eq!(
            bad.fix.as_deref(),
            Some("ip route replace 10.245.0.0/16 dev liqo0 proto 201")
        );
        let unknown = tun_routes(None, "liqo0", Some(5), |_| Ok(via(5)), names);
        assert_eq!(unknown.status, Status::Warn);
    }

    fn rule(from: &str) -> Rule {
        Rule {
            priority: 2741,
            table: 2741,
            from: Some(c(from)),
            to: None,
        }
    }

    #[test]
    fn the_agent_needs_a_from_rule_per_remote_network_and_routes_on_an_overlay() {
        let a = Agent {
            table: 2741,
            priority: 2741,
            device: "liqo.vxlan",
            overlay: true,
        };
        let remote = [c("10.245.0.0/16"), c("fd10:245::/56")];
        let table = [via(9)];
        let both = [rule("10.245.0.0/16"), rule("fd10:245::/56")];
        assert_eq!(agent(&a, Some(&remote), &both, &table).status, Status::Pass);
        let one = agent(&a, Some(&remote), &both[1..], &table);
        assert_eq!(one.status, Status::Fail);
        assert_eq!(
            one.fix.as_deref(),
            Some("ip rule add from 10.245.0.0/16 lookup 2741 priority 2741 protocol 202")
        );
        let empty = agent(&a, Some(&remote), &both, &[]);
        assert_eq!(empty.status, Status::Fail);
        assert!(empty.found.contains("holds no routes"), "{empty:?}");
        // No overlay and nothing installed: direct mode or no agent, fine on the gateway node.
        let direct = Agent {
            overlay: false,
            ..a
        };
        assert_eq!(agent(&direct, Some(&remote), &[], &[]).status, Status::Pass);
        // Routes without a rule that looks them up.
        assert_eq!(
            agent(&direct, Some(&remote), &[], &table).status,
            Status::Fail
        );
    }
}
