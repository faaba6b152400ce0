//! The route agents: pod on a home worker ⇄ pod on a foreign worker in both modes and across a
//! routed (anti-spoofing) node network, service traffic, and reconciliation — config changes,
//! a moving gateway, restarts, SIGTERM — never touching what the agent does not own; a
//! thousand remote networks installed and re-pointed; its metrics and
//! `liqonet-route-agent status`.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use liqonet_lab::agent_scale::{expected, many_networks, AgentState};
use liqonet_lab::netns::{ns_output, ns_run, run, sh, wait_for};
use liqonet_lab::probe::{curl, iperf3, ping, wait_reachable};
use liqonet_lab::{ClusterSpec, Lab, LabSpec};
use liqonet_proto::agent::Mode;

const HANDSHAKE: Duration = Duration::from_secs(10);
const TABLE: &str = "2741";

/// Ping and curl between the pods on worker `node` of home and foreign, both ways; iperf3 once.
fn worker_to_worker(lab: &Lab, node: &str) {
    for (from, to) in [("home", "foreign"), ("foreign", "home")] {
        let src = &lab.cluster(from).node(node).pod;
        let target = &lab.cluster(to).node(node).pod;
        let dst = lab.addr_of(to, target, from, false);
        assert!(
            wait_reachable(&src.ns, &dst, HANDSHAKE),
            "{from} {node} cannot reach {to} {node} at {dst}"
        );
        assert_eq!(ping(&src.ns, &dst, 3).unwrap().received, 3);
        let body = curl(&src.ns, &format!("http://{dst}/")).unwrap();
        assert_eq!(body, format!("hello from {to} pod {}\n", target.ip));
    }
    let src = &lab.home().node(node).pod;
    let dst = lab.addr_of(
        "foreign",
        &lab.cluster("foreign").node(node).pod,
        "home",
        false,
    );
    let r = iperf3(&src.ns, &dst, 1).unwrap();
    assert!(r.bytes > 100_000, "iperf3 moved {} bytes", r.bytes);
}

/// Home and foreign built alike from `spec`, each known to the other by an alias (IPv6 too
/// when `spec` is dual-stack).
fn both(spec: ClusterSpec) -> [ClusterSpec; 2] {
    let alias6 = |a: &str| spec.pod_cidr6.as_ref().map(|_| a.to_string());
    let home = ClusterSpec {
        name: "home".into(),
        alias: Some("10.246.0.0/16".into()),
        alias6: alias6("fd10:246::/56"),
        ..spec.clone()
    };
    let foreign = ClusterSpec {
        name: "foreign".into(),
        alias: Some("10.245.0.0/16".into()),
        alias6: alias6("fd10:245::/56"),
        ..spec
    };
    [home, foreign]
}

fn table(ns: &str) -> String {
    sh(ns, &format!("ip route show table {TABLE}")).unwrap_or_default()
}

/// The agent's rules (priority 2741) on a node.
fn rules(ns: &str) -> String {
    let all = sh(ns, "ip rule show").unwrap_or_default();
    all.lines()
        .filter(|l| l.starts_with("2741:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The agent's guards: its blackholes in the main table.
fn guards(ns: &str) -> String {
    sh(ns, "ip route show table main proto 202").unwrap_or_default()
}

fn has_overlay(ns: &str) -> bool {
    ns_output(ns, &["ip", "link", "show", "liqo.vxlan"])
        .unwrap()
        .status
        .success()
}

#[test]
fn vxlan_mode_worker_to_worker() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    worker_to_worker(&lab, "w1");
    worker_to_worker(&lab, "w2");
    for n in &lab.home().nodes {
        assert!(has_overlay(&n.ns), "{} has no overlay device", n.name);
    }
    // IPv6 goes the same way, through the overlay's IPv6 addresses (derived from node IPs).
    let w1 = &lab.home().node("w1").ns;
    let t6 = sh(w1, &format!("ip -6 route show table {TABLE}")).unwrap();
    assert!(
        t6.contains("fd10:245::/56 via fdff:2741::ac14:a dev liqo.vxlan proto 202"),
        "{t6}"
    );
}

#[test]
fn direct_mode_worker_to_worker() {
    let x = ClusterSpec::new("x", "10.244.0.0/16")
        .dual_stack("fd10:244::/56")
        .agents(Mode::Direct);
    let spec = LabSpec {
        clusters: both(x).to_vec(),
        ..LabSpec::default()
    };
    let lab = Lab::start(&spec).unwrap();
    worker_to_worker(&lab, "w1");
    let w1 = &lab.home().node("w1").ns;
    assert!(
        table(w1).contains("10.245.0.0/16 via 172.20.0.10 dev eth0 proto 202"),
        "{}",
        table(w1)
    );
    assert!(!has_overlay(w1));
    // IPv6 via the gateway node's IPv6 address, worker pod to worker pod.
    let t6 = sh(w1, &format!("ip -6 route show table {TABLE}")).unwrap();
    assert!(
        t6.contains("fd10:245::/56 via fd00:172:20::10 dev eth0 proto 202"),
        "{t6}"
    );
    let dst = lab.ip_of("foreign", "home", true);
    assert!(
        wait_reachable(&lab.home().main_pod().ns, &dst, HANDSHAKE),
        "no IPv6 path to {dst}"
    );
}

#[test]
fn routed_workers_reach_the_gateway_through_the_overlay() {
    let spec = LabSpec {
        clusters: both(ClusterSpec::new("x", "10.244.0.0/16").routed()).to_vec(),
        ..LabSpec::default()
    };
    let mut lab = Lab::start(&spec).unwrap();
    worker_to_worker(&lab, "w1");

    // Direct mode cannot work there: the gateway node is not on the worker's link. The agent
    // says so once and keeps retrying quietly.
    let log = lab.agent_log(0, 1);
    assert!(lab.stop(&log).unwrap().success());
    let config = lab
        .agent_config(0, 1, "gw")
        .replace("mode: vxlan", "mode: direct");
    let path = lab.agent_config_path(0, 1);
    fs::write(&path, config).unwrap();
    let bin = lab.bin("liqonet-route-agent");
    let ns = lab.home().node("w1").ns.clone();
    let args = [
        bin.to_str().unwrap(),
        "run",
        "--config",
        path.to_str().unwrap(),
    ];
    lab.spawn("home-w1-direct-agent", &ns, &args, &[]).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let text = lab.log("home-w1-direct-agent");
    assert_eq!(text.matches("reconciliation failed").count(), 1, "{text}");
    assert!(text.contains("10.245.0.0/16 via 172.20.0.10"), "{text}");
    assert!(!table(&ns).contains("10.245.0.0/16"), "{}", table(&ns));
}

#[test]
fn service_traffic() {
    let mut spec = LabSpec::default();
    // foreign also exports its service CIDR — the same as home's — which home knows as 10.97/16.
    spec.clusters[1] = spec.clusters[1]
        .clone()
        .exports("10.96.0.0/16", "10.97.0.0/16");
    let lab = Lab::start(&spec).unwrap();
    let (home, foreign) = (lab.home(), lab.cluster("foreign"));
    let client = &home.node("w1").pod.ns;
    let remote_pod = lab.addr_of("foreign", &foreign.node("w1").pod, "home", false);
    assert!(wait_reachable(client, &remote_pod, HANDSHAKE));
    let expected = format!("hello from foreign pod {}\n", foreign.node("w1").pod.ip);

    // A home Service whose endpoint is the remote pod: kube-proxy-style DNAT on the client's node.
    let node = &home.node("w1").ns;
    sh(node, "nft add table ip kubeproxy").unwrap();
    sh(
        node,
        "nft add chain ip kubeproxy pre { type nat hook prerouting priority -100 ; }",
    )
    .unwrap();
    sh(node, &format!("nft add rule ip kubeproxy pre ip daddr 10.96.0.50 tcp dport 80 dnat to {remote_pod}:80")).unwrap();
    assert_eq!(curl(client, "http://10.96.0.50/").unwrap(), expected);

    // A foreign Service, reached through the exported service CIDR: DNAT on the foreign side.
    let fgw = foreign.gw_ns();
    let backend = &foreign.node("w1").pod.ip;
    sh(fgw, "nft add table ip kubeproxy").unwrap();
    sh(
        fgw,
        "nft add chain ip kubeproxy pre { type nat hook prerouting priority -100 ; }",
    )
    .unwrap();
    sh(
        fgw,
        &format!(
            "nft add rule ip kubeproxy pre ip daddr 10.96.0.80 tcp dport 80 dnat to {backend}:80"
        ),
    )
    .unwrap();
    assert_eq!(curl(client, "http://10.97.0.80/").unwrap(), expected);
}

/// Rewrites every home agent's config with `edit`; returns when `done` holds on every home node,
/// with the time it took (the agents look at their config file every second).
fn change_and_wait(
    lab: &Lab,
    edit: impl Fn(String) -> String,
    done: impl Fn(&str, &str) -> bool,
) -> Duration {
    let start = Instant::now();
    for n in 0..lab.home().nodes.len() {
        let path = lab.agent_config_path(0, n);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, edit(text)).unwrap();
    }
    let converged = wait_for(Duration::from_secs(10), || {
        lab.home().nodes.iter().all(|n| done(&n.name, &n.ns))
    });
    let took = start.elapsed();
    let state: Vec<String> = lab
        .home()
        .nodes
        .iter()
        .map(|n| format!("{}:\n{}\n{}", n.name, table(&n.ns), rules(&n.ns)))
        .collect();
    assert!(converged, "no convergence:\n{}", state.join("\n"));
    took
}

#[test]
fn reconcile_follows_config_changes() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    let overlay = |n: u8| format!("via 10.84.0.1{n} dev liqo.vxlan proto 202");

    // A new remote network appears on every node...
    let added = change_and_wait(
        &lab,
        |t| {
            t.replace(
                "remoteNetworks: [10.245.0.0/16,",
                "remoteNetworks: [10.245.0.0/16, 10.99.0.0/16,",
            )
        },
        |name, ns| match name {
            "gw" => rules(ns).contains("from 10.99.0.0/16 lookup 2741"),
            _ => {
                table(ns).contains(&format!("10.99.0.0/16 {}", overlay(0)))
                    && rules(ns).contains("to 10.99.0.0/16")
            }
        },
    );
    // ...and goes away again.
    let removed = change_and_wait(
        &lab,
        |t| {
            t.replace(
                "remoteNetworks: [10.245.0.0/16, 10.99.0.0/16,",
                "remoteNetworks: [10.245.0.0/16,",
            )
        },
        |_, ns| !table(ns).contains("10.99.0.0/16") && !rules(ns).contains("10.99.0.0/16"),
    );
    // The gateway moves to w2: next hops follow, the old gateway node becomes a worker.
    let moved = change_and_wait(
        &lab,
        |t| t.replace("gatewayNode: gw", "gatewayNode: w2"),
        |name, ns| match name {
            "w2" => {
                table(ns).contains(&format!("10.244.0.0/24 {}", overlay(0)))
                    && table(ns).contains(&format!("10.244.1.0/24 {}", overlay(1)))
                    && rules(ns).contains("from 10.245.0.0/16")
            }
            _ => {
                table(ns).contains(&format!("10.245.0.0/16 {}", overlay(2)))
                    && rules(ns).contains("to 10.245.0.0/16")
                    && !rules(ns).contains("from 10.")
            }
        },
    );
    eprintln!("convergence after a config change: add {added:?}, remove {removed:?}, gateway move {moved:?}");
    for (what, took) in [("add", added), ("remove", removed), ("move", moved)] {
        assert!(took < Duration::from_secs(3), "{what} took {took:?}");
    }
    // Back to the real gateway node: traffic flows again.
    change_and_wait(
        &lab,
        |t| t.replace("gatewayNode: w2", "gatewayNode: gw"),
        |name, ns| name == "gw" || table(ns).contains(&format!("10.245.0.0/16 {}", overlay(0))),
    );
    worker_to_worker(&lab, "w1");
}

#[test]
fn restarts_create_no_duplicates_and_sigterm_leaves_nothing() {
    let mut lab = Lab::start(&LabSpec::default()).unwrap();
    let w1 = lab.home().node("w1").ns.clone();
    let log = lab.agent_log(0, 1);
    let before = (table(&w1), rules(&w1));
    assert_eq!(before.0.lines().count(), 1, "{}", before.0);
    assert_eq!(before.1.lines().count(), 1, "{}", before.1);
    assert_eq!(
        guards(&w1).trim(),
        "blackhole 10.245.0.0/16 metric 4294967295"
    );

    // A hitless restart: the state stays while the agent is away, and a new agent over it
    // changes nothing and reports nothing wrong.
    let config = fs::read_to_string(lab.agent_config_path(0, 1)).unwrap();
    assert!(lab.stop(&log).unwrap().success());
    lab.start_agent(0, 1, &config, &["--keep-on-exit"]).unwrap();
    assert!(lab.stop(&log).unwrap().success());
    assert_eq!((table(&w1), rules(&w1)), before);
    assert!(has_overlay(&w1));
    lab.start_agent(0, 1, &config, &[]).unwrap();
    assert_eq!((table(&w1), rules(&w1)), before);
    let text = lab.log(&log);
    assert!(text.contains("added=0 removed=0"), "{text}");
    assert!(!text.contains("WARN") && !text.contains("ERROR"), "{text}");
    worker_to_worker(&lab, "w1");

    // SIGTERM: nothing of the agent's is left.
    assert!(lab.stop(&log).unwrap().success());
    assert_eq!(table(&w1), "");
    assert_eq!(rules(&w1), "");
    assert_eq!(guards(&w1), "");
    assert!(!has_overlay(&w1));
    assert!(lab.log(&log).contains("overlay device removed"));
}

/// A gateway node whose tunnel route is gone (between a handover's steps, say) drops the
/// remote networks' traffic: the agent's guard, never the node's default route.
#[test]
fn without_the_tunnel_route_remote_traffic_is_dropped_not_sent_in_clear() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    let gw = lab.home().gw_ns().to_string();
    let dev = lab.home().interface.clone();
    let get = || sh(&gw, "ip route get 10.245.0.5").unwrap_or_else(|e| e.to_string());
    assert!(get().contains(&format!("dev {dev}")), "{}", get());
    assert!(
        guards(&gw).contains("blackhole 10.245.0.0/16 metric 4294967295"),
        "{}",
        guards(&gw)
    );
    sh(&gw, &format!("ip route del 10.245.0.0/16 dev {dev}")).unwrap();
    let after = get();
    assert!(
        !after.contains("dev ") && !after.contains(" via "),
        "the node would send it on: {after}"
    );
    // Forwarded from a worker's pod over the overlay, too.
    let forwarded = sh(
        &gw,
        "ip route get 10.245.0.5 from 10.244.1.5 iif liqo.vxlan",
    )
    .unwrap_or_else(|e| e.to_string());
    assert!(
        !forwarded.contains(" via ") && !forwarded.contains("dev eth"),
        "{forwarded}"
    );
    println!("no tunnel route: `ip route get` says {after:?}, forwarded {forwarded:?}");
}

#[test]
fn routes_and_rules_the_agent_does_not_own_survive() {
    let mut lab = Lab::start(&LabSpec::default()).unwrap();
    let w1 = lab.home().node("w1").ns.clone();
    let planted = [
        "ip route add 10.77.0.0/16 via 172.20.0.10 table 2741 proto static",
        "ip route add 10.78.0.0/16 via 172.20.0.10 table 2742 proto 202",
        "ip rule add pref 2741 to 10.79.0.0/16 lookup 100",
        "ip rule add pref 2742 to 10.80.0.0/16 lookup 2741",
    ];
    for p in planted {
        sh(&w1, p).unwrap();
    }
    let present = |ns: &str| {
        let all = format!(
            "{}{}{}",
            table(ns),
            sh(ns, "ip route show table 2742").unwrap(),
            sh(ns, "ip rule show").unwrap()
        );
        [
            "10.77.0.0/16",
            "10.78.0.0/16",
            "10.79.0.0/16",
            "10.80.0.0/16",
        ]
        .iter()
        .all(|p| all.contains(p))
    };
    // A reload and a full reconciliation pass, then the agent's exit: all planted state remains.
    let path = lab.agent_config_path(0, 1);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, format!("{text}# touched\n")).unwrap();
    let log = lab.agent_log(0, 1);
    assert!(wait_for(Duration::from_secs(5), || lab
        .log(&log)
        .contains("configuration reloaded")));
    std::thread::sleep(Duration::from_millis(500));
    assert!(present(&w1));
    assert!(lab.stop(&log).unwrap().success());
    assert!(
        present(&w1),
        "{}\n{}",
        table(&w1),
        sh(&w1, "ip rule show").unwrap()
    );
    assert!(!table(&w1).contains("10.245.0.0/16"));
}

/// Polls the agent's state on `state`'s node until it is what the agent config `text` wants
/// (generously: this is about correctness, the benchmark times it); the most of `kept` seen
/// without a route meanwhile.
fn until_in_place(state: &mut AgentState, text: &str, kept: &[liqonet_proto::Cidr]) -> usize {
    let (routes, rules) = expected(text).unwrap();
    let (mut unrouted, mut last) = (0, Default::default());
    let done = wait_for(Duration::from_secs(30), || {
        let got: std::collections::BTreeSet<_> = state.routes().unwrap().into_iter().collect();
        let missing = kept
            .iter()
            .filter(|k| !got.iter().any(|(dst, _)| dst == *k))
            .count();
        unrouted = unrouted.max(missing);
        let in_place = got == routes
            && state
                .rules()
                .unwrap()
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                == rules;
        last = got;
        in_place
    });
    let wrong: Vec<_> = routes.symmetric_difference(&last).take(5).collect();
    assert!(
        done,
        "not in place; routes wanted or not wanted: {wrong:?}…"
    );
    unrouted
}

#[test]
fn a_thousand_networks_are_installed_and_re_pointed_in_place() {
    let mut lab = Lab::start(&LabSpec::default()).unwrap();
    let w1 = lab.home().node("w1").ns.clone();
    let log = lab.agent_log(0, 1);
    assert!(lab.stop(&log).unwrap().success());
    // The lab's remote networks and 1 000 more (100 peers × 10, a tenth IPv6).
    let many = many_networks(100, 10);
    let listed: Vec<String> = many.iter().map(ToString::to_string).collect();
    let config = lab.agent_config(0, 1, "gw").replace(
        "remoteNetworks: [",
        &format!("remoteNetworks: [{}, ", listed.join(", ")),
    );
    let (_, all) = expected(&config).unwrap();
    assert_eq!(all.len(), 1000 + lab.remote_networks(0).len());
    let all: Vec<_> = all.into_iter().collect();
    lab.start_agent(0, 1, &config, &[]).unwrap();
    let mut state = AgentState::open(&w1, 2741, 2741).unwrap();
    until_in_place(&mut state, &config, &[]);
    worker_to_worker(&lab, "w1");

    // The gateway node moves to w2 and back: every route re-pointed, each replaced in place
    // (no destination ever without a route, its traffic to the main table's).
    let path = lab.agent_config_path(0, 1);
    for gateway in ["w2", "gw"] {
        let text = config.replace("gatewayNode: gw", &format!("gatewayNode: {gateway}"));
        fs::write(&path, &text).unwrap();
        lab.signal(&log, "HUP").unwrap();
        let unrouted = until_in_place(&mut state, &text, &all);
        assert_eq!(
            unrouted, 0,
            "networks without a route while moving to {gateway}"
        );
    }
    worker_to_worker(&lab, "w1");
    let text = lab.log(&log);
    assert!(!text.contains("WARN") && !text.contains("ERROR"), "{text}");

    // SIGTERM: all of it removed.
    assert!(lab.stop(&log).unwrap().success());
    assert!(state.routes().unwrap().is_empty());
    assert!(state.rules().unwrap().is_empty());
}

/// The pids of the processes in namespace `ns` (on a worker node: its route agent alone).
fn pids_in(ns: &str) -> Vec<String> {
    run(&["ip", "netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Replaces `path` with `text` keeping its modification time, so that the agent's check of the
/// file's mtime cannot see the change: only a SIGHUP can make it read the file.
fn replace_keeping_mtime(path: &Path, text: &str) {
    let mtime = fs::metadata(path).unwrap().modified().unwrap();
    let tmp = path.with_extension("new");
    fs::write(&tmp, text).unwrap();
    fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    fs::rename(&tmp, path).unwrap();
}

#[test]
fn sighup_reloads_the_config_and_the_agent_keeps_running() {
    let mut lab = Lab::start(&LabSpec::default()).unwrap();
    let w1 = lab.home().node("w1").ns.clone();
    let log = lab.agent_log(0, 1);
    let path = lab.agent_config_path(0, 1);
    let before = pids_in(&w1);
    assert_eq!(before.len(), 1, "{before:?}");

    // A new network in the file, invisible to the mtime check: the signal applies it.
    let text = fs::read_to_string(&path).unwrap();
    let added = text.replace(
        "remoteNetworks: [10.245.0.0/16,",
        "remoteNetworks: [10.245.0.0/16, 10.99.0.0/16,",
    );
    assert_ne!(added, text);
    replace_keeping_mtime(&path, &added);
    let start = Instant::now();
    lab.signal(&log, "HUP").unwrap();
    let applied = wait_for(Duration::from_secs(3), || {
        table(&w1).contains("10.99.0.0/16") && rules(&w1).contains("to 10.99.0.0/16")
    });
    let took = start.elapsed();
    assert_eq!(
        pids_in(&w1),
        before,
        "SIGHUP ended the agent:\n{}",
        lab.log(&log)
    );
    assert!(
        applied,
        "not applied after SIGHUP:\n{}\n{}",
        table(&w1),
        lab.log(&log)
    );
    eprintln!("SIGHUP to applied route: {took:?}");
    assert!(lab.log(&log).contains("configuration reloaded"));

    // A bad file on SIGHUP: the error names the field, the running configuration stays.
    replace_keeping_mtime(&path, &format!("{added}table: 254\n"));
    lab.signal(&log, "HUP").unwrap();
    assert!(
        wait_for(Duration::from_secs(3), || lab
            .log(&log)
            .contains("table: 254 is a reserved routing table")),
        "{}",
        lab.log(&log)
    );
    assert!(lab.log(&log).contains("keeping the previous configuration"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pids_in(&w1), before);
    assert!(table(&w1).contains("10.99.0.0/16"), "{}", table(&w1));
    assert!(table(&w1).contains("10.245.0.0/16"), "{}", table(&w1));

    // It still reconciles, and exits cleanly on SIGTERM.
    replace_keeping_mtime(&path, &text);
    lab.signal(&log, "HUP").unwrap();
    assert!(wait_for(Duration::from_secs(3), || !table(&w1)
        .contains("10.99.0.0/16")));
    assert!(lab.stop(&log).unwrap().success(), "{}", lab.log(&log));
}

/// Polls (as fast as `ip` runs) until `check` holds; the time it took, or `None` after 5 s.
fn time_until(check: impl Fn() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if check() {
            return Some(start.elapsed());
        }
    }
    None
}

/// User and system CPU time a process has used, in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum()
}

#[test]
fn state_deleted_by_hand_is_back_within_a_second() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    let w1 = lab.home().node("w1").ns.clone();
    let route = "10.245.0.0/16 via 10.84.0.10 dev liqo.vxlan proto 202";
    let rule = "to 10.245.0.0/16 lookup 2741";
    assert!(table(&w1).contains(route), "{}", table(&w1));
    assert!(rules(&w1).contains(rule), "{}", rules(&w1));

    sh(&w1, "ip route del 10.245.0.0/16 table 2741").unwrap();
    let route_back = time_until(|| table(&w1).contains(route));
    sh(&w1, "ip rule del pref 2741 to 10.245.0.0/16 lookup 2741").unwrap();
    let rule_back = time_until(|| rules(&w1).contains(rule));
    // The overlay address (its routes go with the last IPv4 address) and the FDB entry.
    let addr = || sh(&w1, "ip -4 addr show dev liqo.vxlan").unwrap_or_default();
    assert!(addr().contains("10.84.0.11/12"), "{}", addr());
    sh(&w1, "ip addr del 10.84.0.11/12 dev liqo.vxlan").unwrap();
    let address_back =
        time_until(|| addr().contains("10.84.0.11/12") && table(&w1).contains(route));
    let fdb = || sh(&w1, "bridge fdb show dev liqo.vxlan").unwrap_or_default();
    let entry = "00:00:00:00:00:00 dst 172.20.0.10";
    assert!(fdb().contains(entry), "{}", fdb());
    sh(
        &w1,
        "bridge fdb del 00:00:00:00:00:00 dev liqo.vxlan dst 172.20.0.10",
    )
    .unwrap();
    let fdb_back = time_until(|| fdb().contains(entry));
    // The gateway node's overlay MAC, known without ARP: its FDB entry and ARP entry.
    let unicast = "02:4c:ac:14:00:0a dst 172.20.0.10";
    assert!(fdb().contains(unicast), "{}", fdb());
    sh(&w1, &format!("bridge fdb del {unicast} dev liqo.vxlan")).unwrap();
    let unicast_back = time_until(|| fdb().contains(unicast));
    let neigh = || sh(&w1, "ip -4 neigh show dev liqo.vxlan").unwrap_or_default();
    let arp = "10.84.0.10 lladdr 02:4c:ac:14:00:0a PERMANENT";
    assert!(neigh().contains(arp), "{}", neigh());
    sh(&w1, "ip neigh del 10.84.0.10 dev liqo.vxlan").unwrap();
    let arp_back = time_until(|| neigh().contains(arp));
    let guard = "blackhole 10.245.0.0/16 metric 4294967295";
    sh(&w1, &format!("ip route del {guard}")).unwrap();
    let guard_back = time_until(|| guards(&w1).contains(guard));
    // Its routes go with the device: everything through it has to come back.
    sh(&w1, "ip link del liqo.vxlan").unwrap();
    let device_back = time_until(|| has_overlay(&w1) && table(&w1).contains(route));
    eprintln!(
        "back after deletion by hand: route {route_back:?}, rule {rule_back:?}, address {address_back:?}, FDB entries {fdb_back:?} {unicast_back:?}, ARP entry {arp_back:?}, guard {guard_back:?}, device {device_back:?}"
    );
    for (what, took) in [
        ("route", route_back),
        ("rule", rule_back),
        ("address", address_back),
        ("FDB entry", fdb_back),
        ("unicast FDB entry", unicast_back),
        ("ARP entry", arp_back),
        ("guard", guard_back),
        ("device", device_back),
    ] {
        let took = took.unwrap_or_else(|| panic!("the {what} did not come back within 5 s"));
        assert!(took < Duration::from_secs(1), "the {what} took {took:?}");
    }
    worker_to_worker(&lab, "w1");

    // The agent's own changes do not set it off again: idle, it uses (next to) no CPU.
    let pid = pids_in(&w1).pop().unwrap();
    let before = cpu_ticks(&pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(&pid) - before;
    assert!(used < 20, "{used} ticks of CPU in 2 s of quiet");
}

#[test]
fn a_route_that_cannot_be_installed_leaves_the_others_installed() {
    let x = ClusterSpec::new("x", "10.244.0.0/16")
        .dual_stack("fd10:244::/56")
        .agents(Mode::Direct);
    let spec = LabSpec {
        clusters: both(x).to_vec(),
        ..LabSpec::default()
    };
    let mut lab = Lab::start(&spec).unwrap();
    let w1 = lab.home().node("w1").ns.clone();
    // A fresh agent on w1 is told an IPv6 address of the gateway node that no link of w1's
    // reaches: the IPv6 route cannot be installed. Everything else still must be.
    assert!(lab.stop(&lab.agent_log(0, 1)).unwrap().success());
    assert_eq!(table(&w1), "");
    let path = lab.agent_config_path(0, 1);
    let config = lab
        .agent_config(0, 1, "gw")
        .replace("ip6: 'fd00:172:20::10'", "ip6: 'fd00:99::10'");
    fs::write(&path, config).unwrap();
    let log = "home-w1-unreachable-agent";
    let bin = lab.bin("liqonet-route-agent");
    let args = [
        bin.to_str().unwrap(),
        "run",
        "--config",
        path.to_str().unwrap(),
    ];
    lab.spawn(log, &w1, &args, &[]).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || lab
            .log(log)
            .contains("fd10:245::/56 via fd00:99::10")),
        "{}",
        lab.log(log)
    );
    std::thread::sleep(Duration::from_millis(500));
    let t4 = table(&w1);
    let t6 = sh(&w1, &format!("ip -6 route show table {TABLE}")).unwrap();
    assert!(t4.contains("10.245.0.0/16 via 172.20.0.10"), "{t4}");
    assert!(!t6.contains("fd10:245::/56"), "{t6}");
    let r = rules(&w1);
    assert!(r.contains("to 10.245.0.0/16 lookup 2741"), "{r}");
    let r6 = sh(&w1, "ip -6 rule show").unwrap();
    assert!(r6.contains("to fd10:245::/56 lookup 2741"), "{r6}");
    // The failure is reported once, with what was being installed, and retried quietly.
    std::thread::sleep(Duration::from_secs(2));
    let text = lab.log(log);
    assert_eq!(
        text.matches("fd10:245::/56 via fd00:99::10").count(),
        1,
        "{text}"
    );
    worker_to_worker(&lab, "w1");
}

/// Where the status test's agent serves: the default address of `status`.
const METRICS: &str = "127.0.0.1:9742";

/// An OpenMetrics exposition read by the Prometheus project's own parser (strict: `# EOF`,
/// `_total` suffixes, cumulative buckets), as JSON: each family's type, help and samples.
const OPENMETRICS_TO_JSON: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse
print(json.dumps({f.name: {"type": f.type, "help": f.documentation,
                           "samples": [[s.name, s.labels, s.value] for s in f.samples]}
                  for f in parse(sys.stdin.read())}))
"#;

/// The agent's metrics on node namespace `ns`, parsed; and the exposition as served.
fn agent_metrics(ns: &str) -> (serde_json::Value, String) {
    let text = ns_run(ns, &["curl", "-sf", &format!("http://{METRICS}/metrics")]).unwrap();
    let json = liqonet_lab::probe::pipe(&["python3", "-c", OPENMETRICS_TO_JSON], &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    (serde_json::from_str(&json).unwrap(), text)
}

/// The value of sample `name` (unlabelled) of `family`.
fn sample(families: &serde_json::Value, family: &str, name: &str) -> f64 {
    families[family]["samples"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s[0] == name))
        .and_then(|s| s[2].as_f64())
        .unwrap_or_else(|| panic!("no sample {name} in {family}: {families}"))
}

/// `liqonet-route-agent status ARGS` run in `ns`: exit code, stdout, stderr.
fn agent_status(lab: &Lab, ns: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let bin = lab.bin("liqonet-route-agent");
    let mut argv = vec![bin.to_str().unwrap(), "status"];
    argv.extend_from_slice(args);
    let out = ns_output(ns, &argv).unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn metrics_and_status_show_routes_desired_installed_and_repaired() {
    let mut lab = Lab::start(&LabSpec::default()).unwrap();
    let w1 = lab.home().node("w1").ns.clone();
    let log = lab.agent_log(0, 1);
    assert!(lab.stop(&log).unwrap().success());
    let config = format!(
        "{}metricsAddress: {METRICS}\n",
        lab.agent_config(0, 1, "gw")
    );
    lab.start_agent(0, 1, &config, &[]).unwrap();
    let path = lab.agent_config_path(0, 1);
    let path = path.to_str().unwrap();
    let remote = lab.remote_networks(0).len();
    assert!(remote >= 2, "{:?}", lab.remote_networks(0));

    // Every family, typed and documented, through the Prometheus project's parser.
    let (m, text) = agent_metrics(&w1);
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
        assert_eq!(m[family]["type"], kind, "{family}: {text}");
        assert!(
            !m[family]["help"].as_str().unwrap_or_default().is_empty(),
            "{family} has no HELP: {text}"
        );
    }
    println!("route agent metrics (w1):\n{text}");
    let routes = |m: &serde_json::Value, which: &str| {
        let family = format!("liqonet_route_agent_routes_{which}");
        sample(m, &family, &family)
    };
    assert_eq!(routes(&m, "installed"), remote as f64, "{text}");
    assert_eq!(routes(&m, "desired"), remote as f64, "{text}");
    let counter = |m: &serde_json::Value, name: &str| {
        sample(
            m,
            &format!("liqonet_route_agent_{name}"),
            &format!("liqonet_route_agent_{name}_total"),
        )
    };
    assert!(counter(&m, "reconciles") >= 1.0, "{text}");
    assert_eq!(counter(&m, "reconcile_failures"), 0.0, "{text}");
    assert_eq!(
        m["liqonet_build"]["samples"][0][1]["component"],
        "route-agent"
    );
    let ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - sample(
            &m,
            "liqonet_route_agent_last_reconcile_timestamp_seconds",
            "liqonet_route_agent_last_reconcile_timestamp_seconds",
        );
    assert!((0.0..15.0).contains(&ago), "last pass {ago} s ago");
    // Every route-agent series the Grafana dashboard plots is exported.
    let dashboard = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/liqonet.json");
    let dashboard = fs::read_to_string(dashboard).unwrap();
    let exported: Vec<&str> = m
        .as_object()
        .unwrap()
        .values()
        .flat_map(|f| f["samples"].as_array().unwrap())
        .filter_map(|s| s[0].as_str())
        .collect();
    let plotted: Vec<&str> = dashboard
        .match_indices("liqonet_route_agent_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    assert!(
        !plotted.is_empty(),
        "the dashboard plots no route agent series"
    );
    for series in plotted {
        assert!(
            exported.contains(&series),
            "{series} is plotted, not exported"
        );
    }
    let health = ns_run(&w1, &["curl", "-sf", &format!("http://{METRICS}/healthz")]).unwrap();
    assert_eq!(health, "ok\n");

    // `status` on the node: at the default address, and at the config file's.
    let (code, out, err) = agent_status(&lab, &w1, &[]);
    println!("liqonet-route-agent status (w1):\n{out}");
    assert_eq!(code, Some(0), "{out}{err}");
    for want in [
        "node       w1  mode vxlan\n".to_string(),
        "gateway    gw\n".to_string(),
        format!("table      {TABLE}  rule priority 2741  rules present"),
        "remote     10.245.0.0/16".to_string(),
        format!("routes     {remote} desired, {remote} installed\n"),
        "last pass  ok\n".to_string(),
    ] {
        assert!(out.contains(&want), "{want:?} not in\n{out}");
    }
    let (code, by_file, err) = agent_status(&lab, &w1, &["--config", path]);
    assert_eq!(code, Some(0), "{by_file}{err}");
    assert!(by_file.contains("node       w1  mode vxlan\n"), "{by_file}");

    // A route deleted by hand: the kernel's notification brings the agent to put it back at
    // once, and that is counted as a repair.
    sh(&w1, &format!("ip route del 10.245.0.0/16 table {TABLE}")).unwrap();
    let json = || {
        let (code, out, err) = agent_status(&lab, &w1, &["-o", "json"]);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        (code, v)
    };
    assert!(
        wait_for(Duration::from_secs(2), || json().1["repairs"].as_u64()
            >= Some(1)),
        "{}",
        json().1
    );
    assert!(table(&w1).contains("10.245.0.0/16"), "{}", table(&w1));
    let (code, v) = json();
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["node"], "w1");
    assert_eq!(v["mode"], "vxlan");
    assert_eq!(v["gatewayNode"], "gw");
    assert_eq!(v["isGatewayNode"], false);
    assert_eq!(
        v["routes"]["installed"].as_u64(),
        Some(remote as u64),
        "{v}"
    );
    assert_eq!(v["routes"]["missing"], serde_json::json!([]), "{v}");
    let (m, text) = agent_metrics(&w1);
    assert!(counter(&m, "repairs") >= 1.0, "{text}");
    assert_eq!(routes(&m, "installed"), remote as f64, "{text}");

    // A route that cannot be installed (direct mode, an IPv6 next hop no link reaches): status
    // names it, exits 1, and the failure is counted.
    let reconciles = counter(&m, "reconciles");
    let broken = config
        .replace("mode: vxlan", "mode: direct")
        .replace("ip6: 'fd00:172:20::10'", "ip6: 'fd00:99::10'");
    assert_ne!(broken, config);
    fs::write(path, &broken).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || agent_status(&lab, &w1, &[]).0
            == Some(1)),
        "{}",
        agent_status(&lab, &w1, &[]).1
    );
    let (_, out, _) = agent_status(&lab, &w1, &[]);
    println!("liqonet-route-agent status (w1, a route refused):\n{out}");
    for want in [
        "node       w1  mode direct\n",
        "  missing  fd10:245::/56 via fd00:99::10\n",
        "last pass  failed: cannot add route fd10:245::/56 via fd00:99::10",
    ] {
        assert!(out.contains(want), "{want:?} not in\n{out}");
    }
    let (m, text) = agent_metrics(&w1);
    assert!(counter(&m, "reconcile_failures") >= 1.0, "{text}");
    assert!(counter(&m, "reconciles") > reconciles, "{text}");
    assert_eq!(routes(&m, "installed"), (remote - 1) as f64, "{text}");
    // Mended: in sync again, the counters carried on.
    fs::write(path, &config).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || agent_status(&lab, &w1, &[]).0
            == Some(0)),
        "{}",
        agent_status(&lab, &w1, &[]).1
    );
    let (_, v) = json();
    assert!(v["repairs"].as_u64() >= Some(1), "{v}");
    assert!(v["reconcileFailures"].as_u64() >= Some(1), "{v}");
    assert!(v["lastError"]["errors"][0]
        .as_str()
        .is_some_and(|e| e.contains("fd10:245::/56")));

    // No agent there: exit 2, naming the address.
    let (code, out, err) = agent_status(&lab, &w1, &["--address", "127.0.0.1:9743"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("no route agent answers on 127.0.0.1:9743"),
        "{err}"
    );
}
