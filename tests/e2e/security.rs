//! What must not get through: a peer with the wrong key, a spoofed inner source; and datagrams
//! that are not WireGuard at all, empty ones included, are dropped and counted.

use std::time::Duration;

use liqonet_lab::netns::{sh, wait_for};
use liqonet_lab::probe::{metric, ping, ping_with, wait_reachable};
use liqonet_lab::{Lab, LabSpec};

#[test]
fn wrong_public_key_gets_no_packet_through() {
    // Start a working lab, then restart home's gateway with a key that is not foreign's.
    let mut lab = Lab::start(&LabSpec::default()).unwrap();
    let other = "oK56DE9Ue9zK76rAc8pBl6opph+1v36lm7cXXsQKrQM=";
    let wrong = liqonet_lab::probe::pubkey(&lab.bin("liqonet-gateway"), other).unwrap();
    let foreign_key = lab.cluster("foreign").public_key.clone();
    let config = lab.liqonet_config(0).replace(&foreign_key, &wrong);
    lab.restart_gateway_with("home", &config).unwrap();
    let restarted = std::time::Instant::now();

    let (home, foreign) = (lab.home().clone(), lab.cluster("foreign").clone());
    let p = ping(&home.main_pod().ns, &lab.ip_of("foreign", "home", false), 6).unwrap();
    assert_eq!(p.received, 0, "{p:?}");
    let p = ping(
        &foreign.main_pod().ns,
        &lab.ip_of("home", "foreign", false),
        6,
    )
    .unwrap();
    assert_eq!(p.received, 0, "{p:?}");
    // foreign could not authenticate home's handshakes.
    let m = lab.metrics("foreign").unwrap();
    let failed = metric(&m, "liqonet_dropped_packets_total{reason=\"auth_failed\"}").unwrap_or(0.0);
    assert!(failed >= 1.0, "{m}");
    // No session since the restart: foreign's last handshake (if any, from the lab's start,
    // when both gateways greeted each other with the right keys) is older than the restart.
    // The metrics snapshot is up to 1 s old.
    if let Some(at) = metric(
        &m,
        "liqonet_peer_last_handshake_timestamp_seconds{peer=\"home\"}",
    ) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let age = now - at;
        let since = restarted.elapsed().as_secs_f64();
        assert!(
            age >= since - 1.1,
            "handshake {age} s ago, restart {since} s ago: {m}"
        );
    }
}

#[test]
fn spoofed_inner_source_is_dropped_and_counted() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    let foreign = lab.cluster("foreign");
    let (gw, pod) = (foreign.gw_ns(), &foreign.gw_pod().ns);
    let home_ip = lab.ip_of("home", "foreign", false);
    assert!(wait_reachable(pod, &home_ip, Duration::from_secs(10)));

    // A misbehaving foreign cluster: its gateway node stops filtering by reverse path, and a pod
    // claims an address outside the foreign cluster's networks.
    sh(
        gw,
        "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.pod0.rp_filter=0",
    )
    .unwrap();
    sh(pod, "ip addr add 10.99.0.5/32 dev eth0").unwrap();
    let p = ping_with(pod, &home_ip, 5, &["-I", "10.99.0.5"]).unwrap();
    assert_eq!(p.received, 0, "{p:?}");
    let sample = "liqonet_dropped_packets_total{reason=\"source_not_allowed\"}";
    let counted = wait_for(Duration::from_secs(3), || {
        let m = lab.metrics("home").unwrap_or_default();
        metric(&m, sample).unwrap_or(0.0) >= 5.0
    });
    assert!(counted, "{}", lab.metrics("home").unwrap_or_default());
    // Legitimate traffic still flows.
    assert_eq!(ping(pod, &home_ip, 3).unwrap().received, 3);
}

#[test]
fn empty_and_short_datagrams_from_anywhere_are_counted() {
    let mut lab = Lab::start(&LabSpec::distinct_cidrs()).unwrap();
    let evil = lab.add_wan_host("evil", 66).unwrap();
    let to: std::net::SocketAddr = lab.home().endpoint().parse().unwrap();
    let malformed = |lab: &Lab| {
        let m = lab.metrics("home").unwrap_or_default();
        metric(&m, "liqonet_dropped_packets_total{reason=\"malformed\"}").unwrap_or(-1.0)
    };
    // The loop publishes every second.
    std::thread::sleep(Duration::from_millis(1200));
    let before = malformed(&lab);
    let from = "192.168.250.66:4000".parse().unwrap();
    for d in [&[][..], &[1, 2, 3][..]] {
        liqonet_lab::attack::send_from(&evil, from, to, d).unwrap();
    }
    let counted = wait_for(Duration::from_secs(3), || malformed(&lab) == before + 2.0);
    assert!(
        counted,
        "malformed went from {before} to {}",
        malformed(&lab)
    );
}
