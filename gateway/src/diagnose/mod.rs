//! `liqonet-gateway diagnose`: checks a gateway node for what commonly breaks a peering, one
//! line per check (PASS, WARN or FAIL, what was checked, what was found, and for a failure the
//! command that fixes it). Everything is read in the network namespace it runs in; nothing is
//! changed.

pub mod link;
pub mod mtu;
pub mod netlink;
pub mod nftables;
pub mod port;
pub mod routes;
pub mod sysctl;
pub mod target;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use liqonet_proto::agent::{DEFAULT_RULE_PRIORITY, DEFAULT_TABLE, DEFAULT_VXLAN_DEVICE};
use liqonet_proto::config::{DEFAULT_INTERFACE, DEFAULT_LISTEN_PORT, DEFAULT_MTU};
use serde::Serialize;

use netlink::{sample, Netlink};
use nftables::Family;
use target::Target;

/// `liqonet-gateway diagnose`'s arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The standalone config file (interface, port, MTU, peers).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["interface", "port", "mtu"])]
    pub config: Option<PathBuf>,
    /// Kubernetes mode: the gateway's --interface.
    #[arg(long, default_value = DEFAULT_INTERFACE)]
    pub interface: String,
    /// Kubernetes mode: the gateway's --listen-port.
    #[arg(long, default_value_t = DEFAULT_LISTEN_PORT)]
    pub port: u16,
    /// Kubernetes mode: the gateway's --mtu.
    #[arg(long, default_value_t = DEFAULT_MTU)]
    pub mtu: u16,
    /// The route agent's --table.
    #[arg(long, default_value_t = DEFAULT_TABLE)]
    pub table: u32,
    /// The route agent's --rule-priority.
    #[arg(long, default_value_t = DEFAULT_RULE_PRIORITY)]
    pub rule_priority: u32,
    /// The route agent's VXLAN device.
    #[arg(long, default_value = DEFAULT_VXLAN_DEVICE)]
    pub vxlan_device: String,
    /// `text`, or `json` for scripts.
    #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub status: Status,
    /// Which check: `ip-forward`, `rp-filter`, `tun`, `tun-mtu`, `listen-port`, `firewall`,
    /// `tun-routes`, `route-agent`, `underlay-mtu` (and `config`, `peers` for what could not
    /// be learned).
    pub check: &'static str,
    /// What was looked at.
    pub subject: String,
    /// What was found there.
    pub found: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(status: Status, check: &'static str, subject: &str, found: &str) -> Check {
        Check {
            status,
            check,
            subject: subject.to_string(),
            found: found.to_string(),
            fix: None,
        }
    }

    pub fn pass(check: &'static str, subject: &str, found: &str) -> Check {
        Check::new(Status::Pass, check, subject, found)
    }

    pub fn warn(check: &'static str, subject: &str, found: &str) -> Check {
        Check::new(Status::Warn, check, subject, found)
    }

    pub fn fail(check: &'static str, subject: &str, found: &str, fix: &str) -> Check {
        Check::new(Status::Fail, check, subject, found).with_fix(fix)
    }

    pub fn with_fix(mut self, fix: &str) -> Check {
        self.fix = Some(fix.to_string());
        self
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub passed: usize,
    pub warnings: usize,
    pub failed: usize,
}

impl Report {
    fn new(checks: Vec<Check>) -> Report {
        let count = |s| checks.iter().filter(|c| c.status == s).count();
        Report {
            passed: count(Status::Pass),
            warnings: count(Status::Warn),
            failed: count(Status::Fail),
            checks,
        }
    }
}

/// The report as a person reads it: one line per check, then a summary.
pub fn render(r: &Report) -> String {
    let width = r.checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in &r.checks {
        let status = match c.status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        out += &format!("{status}  {:width$}  {}: {}", c.check, c.subject, c.found);
        if let Some(fix) = &c.fix {
            out += &format!("; fix: {fix}");
        }
        out.push('\n');
    }
    out += &format!(
        "{} passed, {} warnings, {} failed\n",
        r.passed, r.warnings, r.failed
    );
    out
}

/// Runs every check for `t` on this node.
pub fn run(t: &Target, args: &Args) -> Report {
    let sys = sysctl::Sysctls::from_env();
    let class_net = Path::new("/sys/class/net");
    let mut checks = t.notes.clone();
    checks.extend(sysctl::forwarding(&sys, t.ipv6()));

    let nl = match Netlink::new() {
        Ok(nl) => Some(nl),
        Err(e) => {
            checks.push(Check::warn(
                "netlink",
                "routes and rules",
                &format!("not checked: {e:#}"),
            ));
            None
        }
    };
    let tun_index = netlink::index_of(&t.interface);
    let overlay_index = netlink::index_of(&args.vxlan_device);
    let remote = t.remote_networks.as_deref();
    let (rules, table) = match &nl {
        Some(nl) => (
            nl.rules().unwrap_or_default(),
            nl.routes(args.table).unwrap_or_default(),
        ),
        None => (Vec::new(), Vec::new()),
    };

    if let Some(nl) = &nl {
        let arrivals = arrivals(t, tun_index, &args.vxlan_device, overlay_index, &table);
        let main = nl.routes(MAIN_TABLE).unwrap_or_default();
        checks.extend(sysctl::rp_filter(&sys, &arrivals, |iif, src, dst| {
            rp_verdict(nl, &main, iif, src, dst)
        }));
    }

    let start = t.start();
    checks.extend(link::checks(
        link::read(class_net, &t.interface),
        &t.interface,
        t.mtu,
        &start,
    ));
    checks.push(port::listening(
        Path::new("/proc/net"),
        t.listen_port,
        &start,
    ));
    let mut families: Vec<Family> = Vec::new();
    for (_, ep) in &t.endpoints {
        let f = if ep.is_ipv4() { Family::V4 } else { Family::V6 };
        if !families.contains(&f) {
            families.push(f);
        }
    }
    if families.is_empty() {
        families = vec![Family::V4, Family::V6];
    }
    checks.extend(port::firewall(t.listen_port, &families));

    if let Some(nl) = &nl {
        checks.push(routes::tun_routes(
            remote,
            &t.interface,
            tun_index,
            |a| nl.route_to(a),
            netlink::name_of,
        ));
        let agent = routes::Agent {
            table: args.table,
            priority: args.rule_priority,
            device: &args.vxlan_device,
            overlay: overlay_index.is_some(),
        };
        checks.push(routes::agent(&agent, remote, &rules, &table));
        checks.extend(mtu::underlay(
            &t.endpoints,
            t.mtu,
            |a| nl.route_to(a),
            |i| {
                let name = netlink::name_of(i)?;
                let mtu = link::read(class_net, &name).ok().flatten()?.mtu;
                Some((name, mtu))
            },
            |n| t.set_mtu(n),
        ));
    }
    Report::new(checks)
}

/// The devices tunnel traffic arrives on, with packets to ask the reverse-path filter about:
/// on the TUN, from each remote network to this node; on the route agent's overlay, from pods
/// of the other nodes (its table's routes) to each remote network.
fn arrivals(
    t: &Target,
    tun_index: Option<u32>,
    overlay: &str,
    overlay_index: Option<u32>,
    table: &[netlink::Route],
) -> Vec<sysctl::Arrival> {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    };
    let remote: Vec<Ipv4Addr> = t
        .remote_networks
        .iter()
        .flatten()
        .filter_map(|c| v4(sample(c)))
        .collect();
    let local = t
        .local_networks
        .iter()
        .find_map(|c| v4(sample(c)))
        .or_else(local_address);
    let mut out = vec![sysctl::Arrival {
        device: t.interface.clone(),
        index: tun_index,
        packets: local
            .map(|dst| remote.iter().map(|&src| (src, dst)).collect())
            .unwrap_or_default(),
        sources: "the remote networks",
    }];
    if let Some(index) = overlay_index {
        let pods: Vec<Ipv4Addr> = table
            .iter()
            .filter(|r| r.oif == Some(index))
            .filter_map(|r| v4(sample(&r.dst?)))
            .collect();
        out.push(sysctl::Arrival {
            device: overlay.to_string(),
            index: Some(index),
            packets: pods
                .iter()
                .flat_map(|&src| remote.iter().map(move |&dst| (src, dst)))
                .collect(),
            sources: "pods on other nodes",
        });
    }
    out
}

const MAIN_TABLE: u32 = 254;

/// The kernel's verdict on a packet from `src` to `dst` arriving on `iif`. Older kernels
/// refuse one that fails the reverse-path filter with EXDEV; newer ones answer EINVAL for any
/// refusal. Then a control packet tells: the same one from a source routed back through `iif`
/// (an on-link address of its routes in `main`). If that one passes, the source made the
/// difference: the filter.
fn rp_verdict(
    nl: &Netlink,
    main: &[netlink::Route],
    iif: u32,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> sysctl::Verdict {
    use sysctl::Verdict;
    let e = match nl.route_input(dst, src, iif) {
        Ok(_) => return Verdict::Accepted,
        Err(e) if e.errno == Some(nix::libc::EXDEV) => return Verdict::Refused,
        Err(e) if e.errno == Some(nix::libc::EINVAL) => e,
        Err(e) => return Verdict::Unknown(e.message),
    };
    let locals = local_addresses();
    let control = main
        .iter()
        .filter(|r| r.oif == Some(iif) && r.gateway.is_none())
        .filter_map(|r| match sample(&r.dst?) {
            IpAddr::V4(a) if a != src && !locals.contains(&a) => Some(a),
            _ => None,
        })
        .next();
    match control {
        Some(c) if nl.route_input(dst, c, iif).is_ok() => Verdict::Refused,
        Some(c) => Verdict::Unknown(format!(
            "{e}, and for {c}, whose route leads back through it, too"
        )),
        None => Verdict::Unknown(e.message),
    }
}

/// This node's IPv4 addresses.
fn local_addresses() -> Vec<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| Some(a.address?.as_sockaddr_in()?.ip()))
                .collect()
        })
        .unwrap_or_default()
}

/// An IPv4 address of this node (not loopback), to address a packet to.
fn local_address() -> Option<Ipv4Addr> {
    local_addresses().into_iter().find(|ip| !ip.is_loopback())
}

/// The subcommand: prints the report; exit status 1 when a check failed, 2 when diagnose could
/// not run (a bad config file).
pub fn main(args: &Args) -> ExitCode {
    let target = match &args.config {
        Some(path) => match Target::from_config(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("liqonet-gateway: {e:#}");
                return ExitCode::from(2);
            }
        },
        None => Target::from_flags(&args.interface, args.port, args.mtu),
    };
    let report = run(&target, args);
    if args.output == "json" {
        match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("liqonet-gateway: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", render(&report));
    }
    if report.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_is_one_line_per_check_with_the_fix_on_it() {
        let r = Report::new(vec![
            Check::pass("ip-forward", "net.ipv4.ip_forward", "1"),
            Check::fail("tun", "liqo0", "down", "ip link set dev liqo0 up"),
        ]);
        assert_eq!((r.passed, r.warnings, r.failed), (1, 0, 1));
        assert_eq!(
            render(&r),
            "PASS  ip-forward  net.ipv4.ip_forward: 1\n\
             FAIL  tun         liqo0: down; fix: ip link set dev liqo0 up\n\
             1 passed, 0 warnings, 1 failed\n"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["checks"][1]["fix"], "ip link set dev liqo0 up");
        assert!(json["checks"][0].get("fix").is_none());
    }
}
