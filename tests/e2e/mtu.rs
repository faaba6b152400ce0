//! Sizes and errors across the remapped tunnel: pods with MTU 1500 over a 1420-byte tunnel (MSS
//! clamping), fragmentation-needed for DF packets that do not fit, and ICMP errors from the far
//! side whose quoted packet must be translated for the sender to recognise it.

use std::time::Duration;

use liqonet_lab::lab::BIG_FILE;
use liqonet_lab::netns::{ns_output, ns_run};
use liqonet_lab::probe::{snmp, wait_reachable};
use liqonet_lab::{Lab, LabSpec};

const HANDSHAKE: Duration = Duration::from_secs(10);

/// Fragmentation-needed / packet-too-big errors sent so far by every node of the lab.
fn too_big_errors(lab: &Lab) -> u64 {
    let nodes = lab.clusters.iter().flat_map(|c| c.nodes.iter());
    let errors = |ns: &str| {
        snmp(ns, "Icmp", "OutDestUnreachs").unwrap() + snmp(ns, "Icmp6", "OutPktTooBigs").unwrap()
    };
    nodes.map(|n| errors(&n.ns)).sum()
}

/// `count` pings of `size` bytes with Don't Fragment from `ns`: whether all came back, and what
/// ping printed (stdout and stderr, where it reports the MTU it learned).
fn ping_df(ns: &str, dst: &str, size: u16, count: u8) -> (bool, String) {
    let (size, count) = (size.to_string(), count.to_string());
    let args = [
        "ping", "-n", "-c", &count, "-i", "0.3", "-W", "1", "-M", "do", "-s", &size, dst,
    ];
    let out = ns_output(ns, &args).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn large_downloads_fit_the_tunnel() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    let link = ns_run(&lab.home().main_pod().ns, &["ip", "link", "show", "eth0"]).unwrap();
    assert!(link.contains("mtu 1500"), "{link}");
    let before = too_big_errors(&lab);
    for v6 in [false, true] {
        let from = &lab.pod_of("home").ns;
        let dst = lab.ip_of("foreign", "home", v6);
        assert!(wait_reachable(from, &dst, HANDSHAKE));
        let url = if v6 {
            format!("http://[{dst}]/big.bin")
        } else {
            format!("http://{dst}/big.bin")
        };
        let args = [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &url,
        ];
        let size = ns_run(from, &args).unwrap();
        assert_eq!(size, BIG_FILE.to_string(), "{url}");
    }
    // The pods announced an MSS for MTU 1500; clamped, no segment was too big on the way.
    assert_eq!(
        too_big_errors(&lab),
        before,
        "a node had to send fragmentation-needed"
    );
}

#[test]
fn dont_fragment_packets_learn_the_tunnel_mtu() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    let from = &lab.home().main_pod().ns;
    let dst = lab.ip_of("foreign", "home", false);
    assert!(wait_reachable(from, &dst, HANDSHAKE));
    // 1438 bytes: fits the overlay to the gateway node (1450), not the tunnel (1420).
    let (_, text) = ping_df(from, &dst, 1410, 3);
    assert!(
        text.contains("mtu = 1420") || text.contains("mtu=1420"),
        "{text}"
    );
    // A DF ping that fits goes through.
    let (ok, text) = ping_df(from, &dst, 1392, 2);
    assert!(ok, "{text}");
}

/// A UDP datagram to a closed port of the remote pod comes back as "port unreachable", generated
/// in the foreign cluster and quoting the datagram as the foreign side saw it. The home socket
/// only reports it when both gateways translated the quote back to the addresses home used.
#[test]
fn icmp_errors_from_the_far_side_reach_the_sender() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    for v6 in [false, true] {
        let from = &lab.pod_of("home").ns;
        let dst = lab.ip_of("foreign", "home", v6);
        assert!(wait_reachable(from, &dst, HANDSHAKE));
        let family = if v6 { "AF_INET6" } else { "AF_INET" };
        let script = format!(
            "import socket\ns = socket.socket(socket.{family}, socket.SOCK_DGRAM)\ns.settimeout(3)\ns.connect(('{dst}', 9))\ns.send(b'x')\ntry:\n    s.recv(10)\n    print('answered')\nexcept ConnectionRefusedError:\n    print('refused')\nexcept socket.timeout:\n    print('timeout')\n"
        );
        let out = ns_run(from, &["python3", "-c", &script]).unwrap();
        assert_eq!(out.trim(), "refused", "IPv{}", if v6 { 6 } else { 4 });
    }
}

/// A smaller MTU inside the foreign cluster: the foreign gateway node itself answers
/// "fragmentation needed" across the tunnel, from its TUN address (inside its pod CIDR, so home
/// accepts and remaps it), and the home pod learns the smaller MTU.
#[test]
fn path_mtu_inside_the_foreign_cluster_reaches_the_sender() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    let (home, foreign) = (lab.home(), lab.cluster("foreign"));
    let from = &home.gw_pod().ns;
    let target = foreign.gw_pod();
    let dst = lab.addr_of("foreign", target, "home", false);
    assert!(wait_reachable(from, &dst, HANDSHAKE));
    ns_run(
        foreign.gw_ns(),
        &["ip", "link", "set", "pod0", "mtu", "1300"],
    )
    .unwrap();
    let (_, text) = ping_df(from, &dst, 1350, 3);
    assert!(
        text.contains("mtu = 1300") || text.contains("mtu=1300"),
        "{text}"
    );
    // The error came from the foreign gateway node, by its remapped TUN address.
    assert!(
        text.contains("From 10.245.0.1 icmp_seq=1 Frag needed and DF set (mtu = 1300)"),
        "{text}"
    );
}
