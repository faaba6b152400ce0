//! liqonet ⇄ liqonet through the lab. Both clusters number their pods from the same CIDRs, so
//! every path below crosses the address remapping; IPv4 paths run between pods on worker nodes
//! (through the route agents), IPv6 ones between pods on the gateway nodes. Also: IPv6
//! underlay, three clusters on one CIDR, roaming, persistent keepalive.

use std::time::Duration;

use liqonet_lab::netns::{ns_run, wait_for};
use liqonet_lab::probe::{curl, iperf3, metric, ping, snmp, wait_reachable};
use liqonet_lab::{ClusterSpec, Lab, LabSpec, Underlay};

const HANDSHAKE: Duration = Duration::from_secs(10);

/// Ping and curl from `from`'s pod to `to`'s pod, by the address `from` knows it by.
fn assert_path(lab: &Lab, from: &str, to: &str, v6: bool) {
    let src = &lab.pod_of(from).ns;
    let dst = lab.ip_of(to, from, v6);
    assert!(
        wait_reachable(src, &dst, HANDSHAKE),
        "{from} pod cannot reach {to} pod at {dst}"
    );
    let p = ping(src, &dst, 5).unwrap();
    assert_eq!(p.received, 5, "{from} -> {to} ({dst}): {p:?}");
    let url = if v6 {
        format!("http://[{dst}]/")
    } else {
        format!("http://{dst}/")
    };
    let body = curl(src, &url).unwrap();
    assert_eq!(body, format!("hello from {to} pod {}\n", lab.pod_of(to).ip));
}

#[test]
fn same_pod_cidr_both_ways_ipv4_and_ipv6() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    assert_eq!(
        lab.home().main_pod().ip,
        lab.cluster("foreign").main_pod().ip,
        "the pods share one address"
    );
    for v6 in [false, true] {
        assert_path(&lab, "home", "foreign", v6);
        assert_path(&lab, "foreign", "home", v6);
    }
    // The foreign pods saw the home pods by the alias the foreign cluster gave home.
    assert_eq!(lab.ip_of("home", "foreign", false), "10.246.1.10");
    let seen = lab.http_log("foreign", "w1");
    assert!(
        seen.contains(&format!("{} - -", lab.ip_of("home", "foreign", false))),
        "{seen}"
    );
    let seen6 = lab.http_log("foreign", "w1");
    assert!(
        seen6.contains(&format!("{} - -", lab.ip_of("home", "foreign", true))),
        "{seen6}"
    );

    let r = iperf3(
        &lab.home().main_pod().ns,
        &lab.ip_of("foreign", "home", false),
        2,
    )
    .unwrap();
    assert!(r.bytes > 1_000_000, "iperf3 moved only {} bytes", r.bytes);
    let m = lab.metrics("home").unwrap();
    assert!(m.contains("liqonet_peer_up{peer=\"foreign\"} 1"), "{m}");
    // The offloads are on unless the run forces them off.
    let log = lab.log("home-gateway");
    let on = log.contains("TUN segmentation offloads on");
    assert_eq!(on, liqonet_lab::lab::offload_enabled(), "{log}");
}

#[test]
fn ipv6_underlay() {
    let spec = LabSpec {
        underlay: Underlay::V6,
        ..LabSpec::default()
    };
    let lab = Lab::start(&spec).unwrap();
    assert!(lab.cluster("foreign").endpoint().starts_with("[fd00:250::"));
    assert_path(&lab, "home", "foreign", false);
    assert_path(&lab, "foreign", "home", true);
}

#[test]
fn three_clusters_on_the_same_pod_cidr() {
    let spec = LabSpec {
        clusters: vec![
            ClusterSpec::new("home", "10.244.0.0/16")
                .aliased("10.246.0.0/16", None)
                .gateway_only(),
            ClusterSpec::new("east", "10.244.0.0/16")
                .aliased("10.245.0.0/16", None)
                .gateway_only(),
            ClusterSpec::new("west", "10.244.0.0/16")
                .aliased("auto", None)
                .gateway_only(),
        ],
        underlay: Underlay::V4,
    };
    let lab = Lab::start(&spec).unwrap();
    let (east, west) = (
        lab.ip_of("east", "home", false),
        lab.ip_of("west", "home", false),
    );
    assert_eq!(east, "10.245.0.10");
    assert_ne!(west, east, "west gets a prefix of its own from home's IPAM");
    for c in ["east", "west"] {
        assert_path(&lab, "home", c, false);
        assert_path(&lab, c, "home", false);
    }
    // east and west do not peer with each other: home does not relay between them.
    let p = ping(&lab.cluster("east").main_pod().ns, &west, 2).unwrap();
    assert_eq!(p.received, 0);
}

#[test]
fn follows_a_peer_that_roams() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    assert_path(&lab, "home", "foreign", false);
    // foreign's gateway node moves to another WAN address; home still has the old one configured.
    let f = lab.cluster("foreign");
    // (Deleting first: removing a primary address would take a secondary one with it.)
    let old = format!("{}/24", f.wan_ip);
    ns_run(f.gw_ns(), &["ip", "addr", "del", &old, "dev", "wan0"]).unwrap();
    ns_run(
        f.gw_ns(),
        &["ip", "addr", "add", "192.168.250.99/24", "dev", "wan0"],
    )
    .unwrap();
    // foreign speaks first from its new address; home must answer there, and keep using it.
    assert!(wait_reachable(
        &f.main_pod().ns,
        &lab.ip_of("home", "foreign", false),
        HANDSHAKE
    ));
    let p = ping(
        &lab.home().main_pod().ns,
        &lab.ip_of("foreign", "home", false),
        5,
    )
    .unwrap();
    assert_eq!(p.received, 5, "{p:?}");
    let log = lab.log("home-gateway");
    assert!(log.contains("192.168.250.99:51840"), "{log}");
}

#[test]
fn known_endpoints_and_persistent_keepalive_bring_the_session_up_without_traffic() {
    let mut lab = Lab::start(&LabSpec::default()).unwrap();
    let is_up = |lab: &Lab| {
        let m = lab.metrics("home").unwrap_or_default();
        metric(&m, "liqonet_peer_up{peer=\"foreign\"}") == Some(1.0)
    };
    // Each gateway starts a handshake with every peer whose endpoint it knows: the session is up
    // with no pod traffic at all.
    let up = wait_for(Duration::from_secs(10), || is_up(&lab));
    assert!(up, "{}", lab.metrics("home").unwrap());

    let keepalive = "    persistentKeepalive: 1\n    networks:\n";
    // Probes off on both sides: what arrives is keepalives alone.
    let probes_off = |c: String| c.replace("peers:\n", "probes: {intervalMs: 0}\npeers:\n");
    let foreign_config = probes_off(lab.liqonet_config(1));
    lab.restart_gateway_with("foreign", &foreign_config)
        .unwrap();
    let config = probes_off(lab.liqonet_config(0).replace("    networks:\n", keepalive));
    assert!(config.contains("persistentKeepalive: 1"));
    lab.restart_gateway_with("home", &config).unwrap();
    let up = wait_for(Duration::from_secs(5), || is_up(&lab));
    assert!(up, "{}", lab.metrics("home").unwrap());
    // And keepalives keep arriving at foreign, with no pod traffic at all.
    let foreign_gw = lab.cluster("foreign").gw_ns().to_string();
    let udp_in = || snmp(&foreign_gw, "Udp", "InDatagrams").unwrap();
    let before = udp_in();
    std::thread::sleep(Duration::from_millis(3500));
    let arrived = udp_in() - before;
    assert!((2..=6).contains(&arrived), "{arrived} datagrams in 3.5 s");
}
