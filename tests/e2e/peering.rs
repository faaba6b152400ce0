//! The standalone peering round trip: each cluster prints its `peering-info`, the other adds it
//! with `peer add` (overlapping pod CIDRs get `remapped: auto`), the gateways restart, and the
//! tunnel comes up.

use std::fs;
use std::time::Duration;

use liqonet_lab::netns::run;
use liqonet_lab::probe::{curl, ping, wait_reachable};
use liqonet_lab::{ClusterSpec, Lab, LabSpec, Underlay};

#[test]
fn peering_info_then_peer_add_brings_the_tunnel_up() {
    let spec = LabSpec {
        clusters: ["home", "foreign"]
            .map(|n| {
                ClusterSpec::new(n, "10.244.0.0/16")
                    .aliased("auto", None)
                    .gateway_only()
            })
            .to_vec(),
        underlay: Underlay::V4,
    };
    let mut lab = Lab::start(&spec).unwrap();
    let gateway = lab.bin("liqonet-gateway");
    let gateway = gateway.to_str().unwrap();
    let names = ["home", "foreign"];

    // Start over with two gateways that know nothing of each other.
    for name in names {
        let config = lab.liqonet_config(if name == "home" { 0 } else { 1 });
        let bare = format!("{}peers: []\n", &config[..config.find("peers:\n").unwrap()]);
        let _ = fs::remove_file(lab.dir.join(format!("{name}.ipam.yaml")));
        lab.restart_gateway_with(name, &bare).unwrap();
    }
    let p = ping(&lab.home().main_pod().ns, "10.0.0.10", 1).unwrap();
    assert_eq!(p.received, 0);

    // Exchange peering information.
    for name in names {
        let config = lab.dir.join(format!("{name}.yaml"));
        let endpoint = lab.cluster(name).endpoint();
        let info = run(&[
            gateway,
            "peering-info",
            "--config",
            config.to_str().unwrap(),
            "--endpoint",
            &endpoint,
        ])
        .unwrap();
        assert!(info.contains(&format!("clusterID: {name}")), "{info}");
        fs::write(lab.dir.join(format!("{name}.info.yaml")), info).unwrap();
    }
    for (me, other) in [("home", "foreign"), ("foreign", "home")] {
        let config = lab.dir.join(format!("{me}.yaml"));
        let info = lab.dir.join(format!("{other}.info.yaml"));
        let (config_arg, info_arg) = (config.to_str().unwrap(), info.to_str().unwrap());
        let add = [gateway, "peer", "add", "--config", config_arg, info_arg];
        let out = run(&add).unwrap();
        assert!(
            out.contains("10.244.0.0/16 (overlaps: remapped by IPAM)"),
            "{out}"
        );
        // Adding it twice is refused, and the file is left as it was.
        let before = fs::read_to_string(&config).unwrap();
        let again = liqonet_lab::netns::output(&add).unwrap();
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("already a peer"));
        assert_eq!(fs::read_to_string(&config).unwrap(), before);
        lab.restart_gateway_with(me, &before).unwrap();
    }

    let dst = lab.ip_of("foreign", "home", false);
    assert!(dst.starts_with("10.0."), "IPAM chose {dst}");
    assert!(
        wait_reachable(&lab.home().main_pod().ns, &dst, Duration::from_secs(10)),
        "no tunnel to {dst}"
    );
    let body = curl(&lab.home().main_pod().ns, &format!("http://{dst}/")).unwrap();
    assert_eq!(body, "hello from foreign pod 10.244.0.10\n");
    let back = lab.ip_of("home", "foreign", false);
    assert_eq!(
        ping(&lab.cluster("foreign").main_pod().ns, &back, 3)
            .unwrap()
            .received,
        3
    );

    // And peer remove takes it out of the config again.
    let config = lab.dir.join("home.yaml");
    run(&[
        gateway,
        "peer",
        "remove",
        "--config",
        config.to_str().unwrap(),
        "foreign",
    ])
    .unwrap();
    assert!(!fs::read_to_string(&config)
        .unwrap()
        .contains("clusterID: foreign"));
}
