//! liqonet ⇄ liqonet through the lab: ping both ways, curl, iperf3; several peers; IPv6 underlay;
//! roaming.

use std::time::Duration;

use liqonet_lab::netns::{ns_run, wait_for};
use liqonet_lab::probe::{curl, iperf3, metric, ping, wait_reachable};
use liqonet_lab::{ClusterSpec, Lab, LabSpec, Underlay};

const HANDSHAKE: Duration = Duration::from_secs(10);

fn assert_path(lab: &Lab, from: &str, to: &str) {
    let (a, b) = (lab.cluster(from), lab.cluster(to));
    assert!(
        wait_reachable(&a.pod_ns, &b.pod_ip, HANDSHAKE),
        "{from} pod cannot reach {to} pod"
    );
    let p = ping(&a.pod_ns, &b.pod_ip, 5).unwrap();
    assert_eq!(p.received, 5, "{from} -> {to}: {p:?}");
    let body = curl(&a.pod_ns, &format!("http://{}/", b.pod_ip)).unwrap();
    assert_eq!(body, format!("hello from {to} pod {}\n", b.pod_ip));
}

#[test]
fn ping_curl_and_iperf3_both_ways() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    assert_path(&lab, "home", "foreign");
    assert_path(&lab, "foreign", "home");
    let r = iperf3(&lab.home().pod_ns, &lab.cluster("foreign").pod_ip, 2).unwrap();
    assert!(r.bytes > 1_000_000, "iperf3 moved only {} bytes", r.bytes);
    let m = lab.metrics("home").unwrap();
    assert!(m.contains("liqonet_peer_up{peer=\"foreign\"} 1"), "{m}");
}

#[test]
fn ipv6_underlay() {
    let spec = LabSpec {
        underlay: Underlay::V6,
        ..LabSpec::default()
    };
    let lab = Lab::start(&spec).unwrap();
    assert!(lab.cluster("foreign").endpoint().starts_with("[fd00:250::"));
    assert_path(&lab, "home", "foreign");
    assert_path(&lab, "foreign", "home");
}

#[test]
fn several_peers_at_once() {
    let spec = LabSpec {
        clusters: vec![
            ClusterSpec::new("home", "10.244.0.0/16"),
            ClusterSpec::new("east", "10.245.0.0/16"),
            ClusterSpec::new("west", "10.246.0.0/16"),
        ],
        underlay: Underlay::V4,
    };
    let lab = Lab::start(&spec).unwrap();
    for c in ["east", "west"] {
        assert_path(&lab, "home", c);
        assert_path(&lab, c, "home");
    }
    // east and west do not peer with each other: home does not relay between them.
    let p = ping(&lab.cluster("east").pod_ns, &lab.cluster("west").pod_ip, 2).unwrap();
    assert_eq!(p.received, 0);
}

#[test]
fn follows_a_peer_that_roams() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    assert_path(&lab, "home", "foreign");
    // foreign's gateway node moves to another WAN address; home still has the old one configured.
    let f = lab.cluster("foreign");
    // (Deleting first: removing a primary address would take a secondary one with it.)
    ns_run(
        &f.gw_ns,
        &[
            "ip",
            "addr",
            "del",
            &format!("{}/24", f.wan_ip),
            "dev",
            "wan0",
        ],
    )
    .unwrap();
    ns_run(
        &f.gw_ns,
        &["ip", "addr", "add", "192.168.250.99/24", "dev", "wan0"],
    )
    .unwrap();
    // foreign speaks first from its new address; home must answer there, and keep using it.
    assert!(wait_reachable(&f.pod_ns, &lab.home().pod_ip, HANDSHAKE));
    let p = ping(&lab.home().pod_ns, &f.pod_ip, 5).unwrap();
    assert_eq!(p.received, 5, "{p:?}");
    assert!(
        lab.log("home-gateway").contains("192.168.250.99:51840"),
        "{}",
        lab.log("home-gateway")
    );
}

/// UDP datagrams received so far in namespace `ns` (`/proc/net/snmp`, Udp InDatagrams).
fn udp_in(ns: &str) -> u64 {
    let snmp = ns_run(ns, &["cat", "/proc/net/snmp"]).unwrap();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let col = names
        .split_whitespace()
        .position(|n| n == "InDatagrams")
        .unwrap();
    values.split_whitespace().nth(col).unwrap().parse().unwrap()
}

#[test]
fn persistent_keepalive_brings_the_session_up_without_traffic() {
    let mut lab = Lab::start(&LabSpec::default()).unwrap();
    let is_up = |lab: &Lab| {
        let m = lab.metrics("home").unwrap_or_default();
        metric(&m, "liqonet_peer_up{peer=\"foreign\"}") == Some(1.0)
    };
    // Without keepalives and without traffic, nobody starts a handshake.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!is_up(&lab), "{}", lab.metrics("home").unwrap());

    let config = lab.liqonet_config(0).replace(
        "    networks:\n      - cidr: 10.245.0.0/16",
        "    persistentKeepalive: 1\n    networks:\n      - cidr: 10.245.0.0/16",
    );
    assert!(config.contains("persistentKeepalive: 1"));
    lab.restart_gateway_with("home", &config).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || is_up(&lab)),
        "{}",
        lab.metrics("home").unwrap()
    );
    // And keepalives keep arriving at foreign, with no pod traffic at all.
    let foreign_gw = lab.cluster("foreign").gw_ns.clone();
    let before = udp_in(&foreign_gw);
    std::thread::sleep(Duration::from_millis(3500));
    let arrived = udp_in(&foreign_gw) - before;
    assert!((2..=6).contains(&arrived), "{arrived} datagrams in 3.5 s");
}
