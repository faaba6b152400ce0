//! Sizes and errors across the remapped tunnel: pods with MTU 1500 over a 1420-byte tunnel (MSS
//! clamping), fragmentation-needed for DF packets that do not fit, and ICMP errors from the far
//! side whose quoted packet must be translated for the sender to recognise it.

use std::time::Duration;

use liqonet_lab::lab::BIG_FILE;
use liqonet_lab::netns::{ns_output, ns_run};
use liqonet_lab::probe::{snmp, wait_reachable};
use liqonet_lab::{Lab, LabSpec};

#[test]
fn large_downloads_fit_the_tunnel() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    let home = lab.home();
    assert!(ns_run(&home.pod_ns, &["ip", "link", "show", "eth0"])
        .unwrap()
        .contains("mtu 1500"));
    // Fragmentation-needed errors the gateway nodes send: none when every SYN was clamped.
    let gws = [home.gw_ns.clone(), lab.cluster("foreign").gw_ns.clone()];
    let unreachables = || {
        let errors = |ns: &String| {
            snmp(ns, "Icmp", "OutDestUnreachs").unwrap()
                + snmp(ns, "Icmp6", "OutPktTooBigs").unwrap()
        };
        gws.iter().map(errors).sum::<u64>()
    };
    let before = unreachables();
    for v6 in [false, true] {
        let dst = lab.ip_of("foreign", "home", v6);
        assert!(wait_reachable(&home.pod_ns, &dst, Duration::from_secs(10)));
        let url = if v6 {
            format!("http://[{dst}]/big.bin")
        } else {
            format!("http://{dst}/big.bin")
        };
        let size = ns_run(
            &home.pod_ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "20",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                &url,
            ],
        )
        .unwrap();
        assert_eq!(size, BIG_FILE.to_string(), "{url}");
    }
    // The pods announced an MSS for MTU 1500; clamped, no segment was too big for the tunnel.
    assert_eq!(
        unreachables(),
        before,
        "a gateway node had to send fragmentation-needed"
    );
}

#[test]
fn dont_fragment_packets_learn_the_tunnel_mtu() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    let home = lab.home();
    let dst = lab.ip_of("foreign", "home", false);
    assert!(wait_reachable(&home.pod_ns, &dst, Duration::from_secs(10)));
    let out = ns_output(
        &home.pod_ns,
        &[
            "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", "1450", &dst,
        ],
    )
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("mtu = 1420") || text.contains("mtu=1420"),
        "{text}"
    );
    // A DF ping that fits goes through.
    let out = ns_output(
        &home.pod_ns,
        &[
            "ping", "-n", "-c", "2", "-W", "1", "-M", "do", "-s", "1392", &dst,
        ],
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A UDP datagram to a closed port of the remote pod comes back as "port unreachable", generated
/// in the foreign cluster and quoting the datagram as the foreign side saw it. The home socket
/// only reports it when both gateways translated the quote back to the addresses home used.
#[test]
fn icmp_errors_from_the_far_side_reach_the_sender() {
    let lab = Lab::start(&LabSpec::default()).unwrap();
    let home = lab.home();
    for v6 in [false, true] {
        let dst = lab.ip_of("foreign", "home", v6);
        assert!(wait_reachable(&home.pod_ns, &dst, Duration::from_secs(10)));
        let family = if v6 { "AF_INET6" } else { "AF_INET" };
        let script = format!(
            "import socket\ns = socket.socket(socket.{family}, socket.SOCK_DGRAM)\ns.settimeout(3)\ns.connect(('{dst}', 9))\ns.send(b'x')\ntry:\n    s.recv(10)\n    print('answered')\nexcept ConnectionRefusedError:\n    print('refused')\nexcept socket.timeout:\n    print('timeout')\n"
        );
        let out = ns_run(&home.pod_ns, &["python3", "-c", &script]).unwrap();
        assert_eq!(out.trim(), "refused", "IPv{}", if v6 { 6 } else { 4 });
    }
}
