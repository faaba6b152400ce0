//! liqonet ⇄ Debian's wireguard-go (configured with `wg`): each side initiates once.

use std::time::Duration;

use liqonet_lab::probe::{curl, ping, wait_reachable};
use liqonet_lab::{GatewayKind, Lab, LabSpec};

/// `liqonet_knows_the_endpoint`: without it liqonet only answers, so wireguard-go is sure to be
/// the initiator (liqonet starts a handshake at start with every peer whose endpoint it knows).
fn wg_go_lab(liqonet_knows_the_endpoint: bool) -> Lab {
    let mut spec = LabSpec::distinct_cidrs();
    spec.clusters[1].gateway = GatewayKind::WireguardGo;
    spec.clusters[1].endpoint_known = liqonet_knows_the_endpoint;
    Lab::start(&spec).unwrap()
}

fn both_ways(lab: &Lab, first: &str, second: &str) {
    let (a, b) = (lab.cluster(first), lab.cluster(second));
    // The first packet of `first` triggers the handshake: `first` initiates.
    assert!(
        wait_reachable(&a.main_pod().ns, &b.main_pod().ip, Duration::from_secs(10)),
        "{first} could not reach {second}"
    );
    for (x, y) in [(a, b), (b, a)] {
        let p = ping(&x.main_pod().ns, &y.main_pod().ip, 5).unwrap();
        assert_eq!(p.received, 5, "{} -> {}: {p:?}", x.spec.name, y.spec.name);
        let body = curl(&x.main_pod().ns, &format!("http://{}/", y.main_pod().ip)).unwrap();
        assert_eq!(
            body,
            format!("hello from {} pod {}\n", y.spec.name, y.main_pod().ip)
        );
    }
}

#[test]
fn liqonet_initiates_to_wireguard_go() {
    let lab = wg_go_lab(true);
    both_ways(&lab, "home", "foreign");
    let log = lab.log("home-gateway");
    assert!(log.contains("peer up"), "{log}");
}

#[test]
fn wireguard_go_initiates_to_liqonet() {
    let lab = wg_go_lab(false);
    both_ways(&lab, "foreign", "home");
    assert!(
        lab.log("foreign-wireguard")
            .contains("Received handshake response"),
        "{}",
        lab.log("foreign-wireguard")
    );
}
