//! SIGHUP applies the config's peers live: a peer added starts working, a peer removed stops
//! being routed, and the peers that stay keep their sessions and traffic meanwhile.

use std::time::Duration;

use liqonet_lab::netns::{sh, wait_for};
use liqonet_lab::probe::{ping, wait_reachable};
use liqonet_lab::{ClusterSpec, Lab, LabSpec, Underlay};

const HANDSHAKE: Duration = Duration::from_secs(10);

#[test]
fn sighup_adds_and_removes_peers_without_disturbing_the_others() {
    let spec = LabSpec {
        clusters: vec![
            ClusterSpec::new("home", "10.244.0.0/16").gateway_only(),
            ClusterSpec::new("east", "10.245.0.0/16").gateway_only(),
            ClusterSpec::new("west", "10.246.0.0/16").gateway_only(),
        ],
        underlay: Underlay::V4,
    };
    let mut lab = Lab::start(&spec).unwrap();
    let full = lab.liqonet_config(0);
    let without_west = full[..full.find("  - clusterID: west").unwrap()].to_string();
    lab.restart_gateway_with("home", &without_west).unwrap();
    let home = lab.home().clone();
    let (east, west) = (
        lab.cluster("east").main_pod().ip.clone(),
        lab.cluster("west").main_pod().ip.clone(),
    );
    assert!(wait_reachable(&home.main_pod().ns, &east, HANDSHAKE));
    assert_eq!(ping(&home.main_pod().ns, &west, 2).unwrap().received, 0);

    // Add west with a reload while east carries traffic: no east packet is lost.
    let config = lab.dir.join("home.yaml");
    std::thread::scope(|s| {
        let pinger = s.spawn(|| ping(&home.main_pod().ns, &east, 20).unwrap());
        std::thread::sleep(Duration::from_millis(800));
        std::fs::write(&config, &full).unwrap();
        lab.signal("home-gateway", "HUP").unwrap();
        let p = pinger.join().unwrap();
        assert_eq!(p.received, 20, "east lost packets during the reload: {p:?}");
    });
    assert!(
        wait_reachable(&home.main_pod().ns, &west, HANDSHAKE),
        "west was not added"
    );
    let log = lab.log("home-gateway");
    assert!(
        log.contains("configuration reloaded added=[\"west\"] updated=[] removed=[]"),
        "{log}"
    );
    // east's session was kept: one handshake for it in the whole log.
    assert_eq!(
        log.matches("peer up: handshake completed peer=east")
            .count(),
        1,
        "{log}"
    );

    // Remove east: its route into the TUN goes, and so does its traffic; west stays.
    let without_east = full.replace(
        &full[full.find("  - clusterID: east").unwrap()..full.find("  - clusterID: west").unwrap()],
        "",
    );
    std::fs::write(&config, without_east).unwrap();
    lab.signal("home-gateway", "HUP").unwrap();
    let gone = wait_for(Duration::from_secs(5), || {
        !sh(home.gw_ns(), "ip route show proto 201")
            .unwrap()
            .contains("10.245.0.0/16")
    });
    assert!(
        gone,
        "{}",
        sh(home.gw_ns(), "ip route show proto 201").unwrap()
    );
    assert_eq!(ping(&home.main_pod().ns, &east, 2).unwrap().received, 0);
    assert_eq!(ping(&home.main_pod().ns, &west, 3).unwrap().received, 3);

    // A broken file is refused and changes nothing.
    std::fs::write(&config, "clusterID: Home\n").unwrap();
    lab.signal("home-gateway", "HUP").unwrap();
    assert!(wait_for(Duration::from_secs(5), || lab
        .log("home-gateway")
        .contains("the running configuration stays")));
    assert_eq!(ping(&home.main_pod().ns, &west, 3).unwrap().received, 3);
}
