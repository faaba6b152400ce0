//! Nothing is left behind: the gateway removes its TUN and routes on SIGTERM, and a lab removes
//! every namespace, also when the test using it fails.

use liqonet_lab::netns::{list, ns_output, ns_run};
use liqonet_lab::{Lab, LabSpec};

#[test]
fn gateway_removes_tun_and_routes_on_sigterm() {
    let mut lab = Lab::start(&LabSpec::default()).unwrap();
    let gw = lab.home().gw_ns().to_string();
    let tun = lab.home().interface.clone();
    let routes = ns_run(&gw, &["ip", "route", "show", "proto", "201"]).unwrap();
    assert!(
        routes.contains(&format!("10.245.0.0/16 dev {tun}")),
        "{routes}"
    );
    let socket = format!("/var/run/wireguard/{tun}.sock");
    assert!(std::path::Path::new(&socket).exists());
    let status = lab.stop("home-gateway").unwrap();
    assert!(status.success(), "{status}");
    let link = ns_output(&gw, &["ip", "link", "show", &tun]).unwrap();
    assert!(!link.status.success(), "{tun} still exists");
    assert!(!std::path::Path::new(&socket).exists(), "{socket} is left");
    let routes = ns_run(&gw, &["ip", "route", "show", "proto", "201"]).unwrap();
    assert!(routes.trim().is_empty(), "{routes}");
    assert!(lab
        .log("home-gateway")
        .contains("routes and TUN device removed"));
}

#[test]
fn lab_leaves_nothing_even_when_a_test_fails() {
    let mut prefix = String::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::start(&LabSpec::default()).unwrap();
        prefix = lab.prefix.clone();
        // WAN, and per cluster: the node network, three nodes, three pods.
        assert_eq!(lab.namespaces().len(), 15, "{:?}", lab.namespaces());
        panic!("a failing test");
    }));
    assert!(result.is_err());
    assert!(!prefix.is_empty());
    let left: Vec<_> = list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Nothing leaked into the host's own namespace either.
    let host_routes = liqonet_lab::netns::run(&["ip", "route", "show", "proto", "201"]).unwrap();
    assert!(host_routes.trim().is_empty(), "{host_routes}");
    assert!(!std::path::Path::new(&format!(
        "/tmp/liqonet-lab-{}",
        prefix.trim_end_matches('-')
    ))
    .exists());
}
