//! First contact: a gateway whose first handshake initiation was lost (the far side was not up
//! yet) must not hold its pods' packets until WireGuard's 5 s retry. A packet waiting for a
//! handshake unanswered for a second sends a new initiation; these tests show that every far
//! side in the lab (liqonet, wireguard-go of today and Debian's, boringtun-cli) accepts it,
//! whichever side starts first, and that a peer that stays away gets at most one a second.
//!
//! They measure how long the first packet waits, so `make test` runs them one at a time in a
//! step of their own (`--ignored --test-threads=1`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use liqonet_lab::lab::LISTEN_PORT;
use liqonet_lab::netns::{ns_run, wait_for};
use liqonet_lab::outage::Pinger;
use liqonet_lab::probe::{metric, wait_reachable};
use liqonet_lab::{GatewayKind, Lab, LabSpec};

/// How long the far side's port drops everything after it starts.
const BLOCKED: Duration = Duration::from_secs(1);
/// The target: the first reply within this long of the far side being able to receive.
const FIRST_REPLY: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, Copy)]
enum Order {
    /// The home gateway starts, then the far side.
    HomeFirst,
    /// The far side starts, then the home gateway.
    FarFirst,
}

#[derive(Debug, Clone, Copy)]
enum Blocked {
    /// The far side's port drops everything, in and out: it never sees the initiations.
    Port,
    /// Only the far side's answers are dropped: it sees an initiation and answers it, and must
    /// then accept the next one.
    Answers,
}

/// Home (liqonet) peered with a far side of `kind`, both gateways stopped once the tunnel has
/// been shown to work.
fn lab(kind: GatewayKind, wireguard_go: Option<PathBuf>) -> Lab {
    let mut spec = LabSpec::distinct_cidrs();
    spec.clusters[1].gateway = kind;
    spec.clusters[1].wireguard_go = wireguard_go;
    let mut lab = Lab::start(&spec).unwrap();
    let (home, foreign) = (lab.cluster("home"), lab.cluster("foreign"));
    assert!(wait_reachable(
        &home.main_pod().ns,
        &foreign.main_pod().ip,
        Duration::from_secs(10)
    ));
    lab.stop_gateway_of("home").unwrap();
    lab.stop_gateway_of("foreign").unwrap();
    lab
}

/// An nftables table on the far side's node that drops what `blocked` says, counting it.
fn block(ns: &str, blocked: Blocked) {
    let mut script = String::from(
        "add table inet firstcontact; \
         add chain inet firstcontact out { type filter hook output priority 0; }; ",
    );
    // Handshake responses (message type 2, the first byte after the UDP header) are counted apart.
    script += &format!(
        "add rule inet firstcontact out udp sport {LISTEN_PORT} @th,64,8 2 counter drop comment \"answers\"; \
         add rule inet firstcontact out udp sport {LISTEN_PORT} counter drop; "
    );
    if let Blocked::Port = blocked {
        script += "add chain inet firstcontact in { type filter hook input priority 0; }; ";
        script += &format!("add rule inet firstcontact in udp dport {LISTEN_PORT} counter drop");
    }
    ns_run(ns, &["nft", &script]).unwrap();
}

/// What the block dropped: every datagram, and the far side's handshake responses among them.
#[derive(Debug, Clone, Copy)]
struct Dropped {
    all: u64,
    answers: u64,
}

/// Removes the table; returns when it began to (the block may end any time after) and what it
/// dropped.
fn unblock(ns: &str) -> (Instant, Dropped) {
    let rules = ns_run(ns, &["nft", "list", "table", "inet", "firstcontact"]).unwrap();
    let opened = Instant::now();
    ns_run(ns, &["nft", "delete", "table", "inet", "firstcontact"]).unwrap();
    let count = |line: &str| {
        let n = line.split("counter packets ").nth(1)?;
        n.split_whitespace().next()?.parse::<u64>().ok()
    };
    let dropped = Dropped {
        all: rules.lines().filter_map(count).sum(),
        answers: rules
            .lines()
            .filter(|l| l.contains("\"answers\""))
            .filter_map(count)
            .sum(),
    };
    (opened, dropped)
}

/// Starts both gateways in `order` with the far side's port blocked for its first second, a home
/// pod pinging a far pod every 50 ms; returns how long after the block ended the first reply
/// came, and what the block dropped. Both gateways are stopped again.
fn first_contact(lab: &mut Lab, order: Order, blocked: Blocked) -> (Duration, Dropped) {
    let far_ns = lab.cluster("foreign").gw_ns().to_string();
    block(&far_ns, blocked);
    let (far_started, home_started) = match order {
        Order::HomeFirst => {
            let home = Instant::now();
            lab.start_gateway_of("home").unwrap();
            let far = Instant::now();
            lab.start_gateway_of("foreign").unwrap();
            (far, home)
        }
        Order::FarFirst => {
            let far = Instant::now();
            lab.start_gateway_of("foreign").unwrap();
            let home = Instant::now();
            lab.start_gateway_of("home").unwrap();
            (far, home)
        }
    };
    // What the test is about: the home gateway's start-up initiation meets the block.
    assert!(
        home_started.elapsed() > Duration::ZERO && home_started < far_started + BLOCKED,
        "the home gateway started {:?} after the far side: past the far side's first second",
        home_started.saturating_duration_since(far_started)
    );
    let (home, foreign) = (lab.cluster("home"), lab.cluster("foreign"));
    let pinger = Pinger::start_every(
        &home.main_pod().ns,
        &foreign.main_pod().ip,
        "home → foreign",
        Duration::from_millis(50),
    )
    .unwrap();
    std::thread::sleep((far_started + BLOCKED).saturating_duration_since(Instant::now()));
    let (opened, dropped) = unblock(&far_ns);
    wait_for(Duration::from_secs(8), || pinger.first_reply().is_some());
    let first = pinger.first_reply();
    let _ = pinger.stop();
    lab.stop_gateway_of("home").unwrap();
    lab.stop_gateway_of("foreign").unwrap();
    let first = first.unwrap_or_else(|| {
        panic!(
            "{order:?}, {blocked:?}: no reply within 8 s of the block's end; home's log:\n{}",
            lab.log("home-gateway")
        )
    });
    (first.saturating_duration_since(opened), dropped)
}

/// Every order and block against the far side of `kind`, each printed and held to the target.
fn every_case(far: &str, kind: GatewayKind, wireguard_go: Option<PathBuf>) {
    let mut lab = lab(kind, wireguard_go);
    for (order, blocked) in [
        (Order::HomeFirst, Blocked::Port),
        (Order::FarFirst, Blocked::Port),
        (Order::FarFirst, Blocked::Answers),
    ] {
        let (took, dropped) = first_contact(&mut lab, order, blocked);
        println!(
            "first contact with {far}, {order:?}, far side's {blocked:?} blocked for its first \
             second: first reply {took:.2?} after the block ended ({} datagrams dropped, {} of \
             them the far side's answers)",
            dropped.all, dropped.answers
        );
        assert!(
            took <= FIRST_REPLY,
            "{far}, {order:?}, {blocked:?}: {took:?}"
        );
        if let Blocked::Answers = blocked {
            // The far side answered the start-up initiation (lost), then accepted a new one.
            assert!(dropped.answers >= 1, "{far}: the far side answered nothing");
        }
    }
}

#[test]
#[ignore = "measures the first packet's wait: run alone (make test does)"]
fn first_contact_with_liqonet() {
    every_case("liqonet", GatewayKind::Liqonet, None);
}

#[test]
#[ignore = "measures the first packet's wait: run alone (make test does)"]
fn first_contact_with_wireguard_go() {
    let bin = liqonet_lab::peers::pinned_wireguard_go().unwrap();
    every_case(
        "wireguard-go 0.0.20250522",
        GatewayKind::WireguardGo,
        Some(bin),
    );
}

#[test]
#[ignore = "measures the first packet's wait: run alone (make test does)"]
fn first_contact_with_debians_wireguard_go() {
    every_case("Debian's wireguard-go", GatewayKind::WireguardGo, None);
}

#[test]
#[ignore = "measures the first packet's wait: run alone (make test does)"]
fn first_contact_with_boringtun_cli() {
    every_case("boringtun-cli", GatewayKind::BoringtunCli, None);
}

#[test]
#[ignore = "measures the first packet's wait: run alone (make test does)"]
fn an_absent_peer_gets_at_most_one_initiation_a_second() {
    let mut lab = lab(GatewayKind::Liqonet, None);
    lab.start_gateway_of("home").unwrap();
    let initiations = |lab: &Lab| {
        let m = lab.metrics("home").unwrap();
        metric(
            &m,
            "liqonet_handshake_messages_sent_total{type=\"initiation\"}",
        )
        .unwrap_or_else(|| panic!("no initiation count in\n{m}"))
    };
    let before = initiations(&lab);
    let (home, foreign) = (lab.cluster("home"), lab.cluster("foreign"));
    let pinger = Pinger::start(
        &home.main_pod().ns,
        &foreign.main_pod().ip,
        "home → foreign",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(60));
    let sent = initiations(&lab) - before;
    let g = pinger.stop().unwrap();
    println!(
        "a pod pinging every 10 ms, the peer absent: {sent} initiations in 60 s ({} echoes)",
        g.sent
    );
    assert_eq!(g.received, 0);
    assert!(sent <= 60.0, "{sent} initiations in 60 s");
    // The packets still send some: one a second, not one per 5 s retry.
    assert!(sent >= 50.0, "{sent} initiations in 60 s");
}
