//! Debian's `wg` against the gateway's WireGuard userspace API: `wg show`, its `dump`, `wg
//! showconf`, a refused `wg set`; `liqonet-gateway status` on the same socket, and a peer that
//! stops answering in-tunnel probes going down; hostile clients on the socket while traffic
//! flows, which the data path must not notice.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use liqonet_lab::netns::{output, run};
use liqonet_lab::probe::wait_reachable;
use liqonet_lab::{Lab, LabSpec};

#[test]
fn wg_shows_the_gateway_and_hostile_clients_go_unnoticed() {
    let lab = Lab::start(&LabSpec::distinct_cidrs()).unwrap();
    let (home, foreign) = (lab.cluster("home").clone(), lab.cluster("foreign").clone());
    assert!(wait_reachable(
        &home.main_pod().ns,
        &foreign.main_pod().ip,
        Duration::from_secs(10)
    ));
    // The loop publishes every second.
    std::thread::sleep(Duration::from_millis(1200));
    let tun = &home.interface;

    let show = run(&["wg", "show", tun]).unwrap();
    println!("{show}");
    assert!(show.contains(&format!("interface: {tun}")), "{show}");
    assert!(
        show.contains(&format!("public key: {}", home.public_key)),
        "{show}"
    );
    assert!(show.contains("listening port: 51840"), "{show}");
    assert!(
        show.contains(&format!("peer: {}", foreign.public_key)),
        "{show}"
    );
    assert!(show.contains("endpoint: 192.168.250.11:51840"), "{show}");
    assert!(show.contains("allowed ips: 10.245.0.0/16"), "{show}");
    assert!(
        // "1 second ago" or "N seconds ago": wg's own wording, singular at 1.
        show.contains("latest handshake: ") && show.contains(" ago"),
        "{show}"
    );
    assert!(!show.contains("years"), "{show}");
    assert!(show.contains("transfer: "), "{show}");

    // dump: private key, public key, port, fwmark; then the peer's fields, tab-separated.
    let dump = run(&["wg", "show", tun, "dump"]).unwrap();
    let lines: Vec<Vec<&str>> = dump.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "{dump}");
    assert_eq!(lines[0][0], home.private_key);
    assert_eq!(lines[0][2], "51840");
    let peer = &lines[1];
    assert_eq!(peer[0], foreign.public_key);
    assert_eq!(peer[2], "192.168.250.11:51840");
    assert_eq!(peer[3], "10.245.0.0/16");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let handshake: u64 = peer[4].parse().unwrap();
    assert!(
        now.abs_diff(handshake) < 30,
        "handshake {handshake}, now {now}"
    );
    assert!(peer[5].parse::<u64>().unwrap() > 0 && peer[6].parse::<u64>().unwrap() > 0);

    let conf = run(&["wg", "showconf", tun]).unwrap();
    assert!(
        conf.contains(&format!("PrivateKey = {}", home.private_key)),
        "{conf}"
    );
    assert!(
        conf.contains(&format!("PublicKey = {}", foreign.public_key)),
        "{conf}"
    );

    // Changes belong to the config file: `wg set` is refused, and says so.
    let set = output(&["wg", "set", tun, "listen-port", "1"]).unwrap();
    assert!(!set.status.success());
    let err = String::from_utf8_lossy(&set.stderr);
    assert!(err.contains("Operation not permitted"), "{err}");

    // liqonet's own report on the same socket: `liqonet-gateway status`.
    let gateway = lab.bin("liqonet-gateway");
    let status_now = || output(&[gateway.to_str().unwrap(), "status", "--interface", tun]).unwrap();
    // The first probe's answer shows at the loop's next publication (every second).
    liqonet_lab::netns::wait_for(Duration::from_secs(5), || {
        String::from_utf8_lossy(&status_now().stdout).contains(" ms, average ")
    });
    let status = status_now();
    let text = String::from_utf8_lossy(&status.stdout);
    println!("{text}");
    assert!(status.status.success(), "{text}");
    assert!(text.contains("peer foreign: up"), "{text}");
    // Where this machine grants real-time priority (as root, outside a cgroup without an RT
    // budget), the gateway takes it: asked of `chrt`, not of the gateway. The lab's setting for
    // A/B runs, when there is one, names the priority.
    let wanted = liqonet_lab::lab::realtime_priority().unwrap_or(10);
    let realtime = wanted > 0
        && output(&["chrt", "-f", &wanted.to_string(), "true"]).is_ok_and(|o| o.status.success());
    let priority = if realtime { wanted } else { 0 };
    let line = match realtime {
        true => format!("data path  real-time priority {wanted} while busy"),
        false => "data path  normal priority".to_string(),
    };
    assert!(text.contains(&line), "{text}");
    assert!(
        text.contains("network    10.245.0.0/16 → 10.245.0.0/16"),
        "{text}"
    );
    assert!(
        text.contains("latency    last ") && text.contains(" ms, average "),
        "{text}"
    );
    let status_json = || -> serde_json::Value {
        let json = run(&[
            gateway.to_str().unwrap(),
            "status",
            "--interface",
            tun,
            "-o",
            "json",
        ]);
        serde_json::from_str(&json.unwrap()).unwrap()
    };
    let report = status_json();
    let json = report.to_string();
    assert_eq!(report["peers"][0]["phase"], "up", "{json}");
    assert_eq!(report["realtimePriority"], priority, "{json}");
    // What the kernel says, by `ps`: idle, every thread at normal priority (TS); under a TCP
    // stream, the data path alone in the FIFO class at 10 (HTTP, API, signals stay TS).
    let pid = lab.pid("home-gateway").unwrap().to_string();
    let classes = || {
        let threads = run(&["ps", "-L", "-o", "cls=,rtprio=", "-p", &pid]).unwrap();
        let fifo = threads
            .lines()
            .filter(|l| l.split_whitespace().eq(["FF", &wanted.to_string()]))
            .count();
        let normal = threads
            .lines()
            .filter(|l| l.trim_start().starts_with("TS"))
            .count();
        (fifo, normal, threads.lines().count(), threads)
    };
    let (fifo, normal, all, threads) = classes();
    assert!(fifo == 0 && normal == all, "idle: {threads}");
    let (src, dst) = (home.main_pod().ns.clone(), foreign.main_pod().ip.clone());
    let stream = std::thread::spawn(move || liqonet_lab::probe::iperf3(&src, &dst, 3));
    std::thread::sleep(Duration::from_millis(1500));
    let (fifo, normal, all, threads) = classes();
    let sent = stream.join().unwrap().unwrap();
    println!("under {:.2} Gbit/s:\n{threads}", sent.bits_per_second / 1e9);
    assert_eq!(
        (fifo, normal + 1),
        (usize::from(realtime), all),
        "{threads}"
    );
    assert!(
        report["peers"][0]["latencyAverageMs"].as_f64().unwrap() > 0.0,
        "{json}"
    );

    // The metrics, read by the Prometheus project's own OpenMetrics parser (strict: types,
    // units, `_total` suffixes, cumulative buckets, `# EOF`), and every gateway family the
    // Grafana dashboard in deploy/ plots is among them.
    let metrics = lab.metrics("home").unwrap();
    let dashboard =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/liqonet.json");
    let parsed = liqonet_lab::probe::pipe(
        &[
            "python3",
            "-c",
            OPENMETRICS_CHECK,
            dashboard.to_str().unwrap(),
            &priority.to_string(),
        ],
        &metrics,
    )
    .unwrap();
    println!("prometheus_client (OpenMetrics): {parsed}");
    assert!(parsed.starts_with("ok "), "{parsed}\n{metrics}");

    // Hostile clients while pings run every 10 ms both ways.
    let socket = format!("/var/run/wireguard/{tun}.sock");
    let probes = lab.pingers().unwrap();
    let mut held = Vec::new();
    for hostile in [
        &b"\x00\xff garbage \r\n\r\n"[..],
        b"get=1\n",                 // half a request, then silence
        b"set=1\nprivate_key=zz\n", // half a set
        &[b'a'; 200_000][..],       // one endless line
    ] {
        let mut c = UnixStream::connect(&socket).unwrap();
        let _ = c.write_all(hostile);
        held.push(c);
    }
    // One that asks again and again and never reads its answers.
    let mut greedy = UnixStream::connect(&socket).unwrap();
    greedy
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    for _ in 0..2000 {
        if greedy.write_all(b"get=1\n\n").is_err() {
            break;
        }
    }
    // More clients than it serves at once.
    let crowd: Vec<_> = (0..20)
        .filter_map(|_| UnixStream::connect(&socket).ok())
        .collect();
    // `wg` still works once the crowd is gone (the limit frees as clients time out).
    drop(crowd);
    drop(greedy);
    std::thread::sleep(Duration::from_secs(3));
    let again = run(&["wg", "show", tun, "latest-handshakes"]).unwrap();
    assert!(again.contains(&foreign.public_key), "{again}");
    std::thread::sleep(Duration::from_millis(500));
    for p in probes {
        let label = p.label.clone();
        let g = p.stop().unwrap();
        println!("hostile UAPI clients, {label}: {g:?}");
        assert_eq!(g.lost(), 0, "{label}: {g:?}");
        assert!(g.longest < Duration::from_millis(500), "{label}: {g:?}");
    }
    // The silent ones were dropped by the server's timeout (before the timings below: they
    // hold the socket's client slots).
    for mut c in held {
        let mut rest = Vec::new();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = c.read_to_end(&mut rest);
    }

    // The probes' round trip, between the two gateways' engines, lies between the underlay's
    // own (gateway node to gateway node, no tunnel) and ping's pod to pod through the tunnel,
    // which also crosses both TUN devices each way (two more wake-ups of each gateway's loop)
    // and the pods' veths.
    let underlay = liqonet_lab::probe::ping(home.gw_ns(), "192.168.250.11", 25).unwrap();
    let ping = liqonet_lab::probe::ping(&home.main_pod().ns, &foreign.main_pod().ip, 25).unwrap();
    let report = status_json();
    let probe_ms = report["peers"][0]["latencyAverageMs"].as_f64().unwrap();
    let (underlay_ms, ping_ms) = (underlay.rtt_avg_ms.unwrap(), ping.rtt_avg_ms.unwrap());
    println!(
        "round trip: underlay {underlay_ms:.3} ms, probes {probe_ms:.3} ms (last 60), ping through the tunnel {ping_ms:.3} ms (probes {:+.0} %)",
        (probe_ms / ping_ms - 1.0) * 100.0
    );
    // Timings on a shared 2-core machine are noisy (an average over 60 probes keeps one slow
    // round trip for a minute): this bounds only what would be a fault, a probe slower than a
    // tick of the loop (250 ms would mean replies wait for timers) or faster than the wire.
    assert!(
        underlay_ms * 0.8 <= probe_ms && probe_ms < 50.0,
        "underlay {underlay_ms} ms, probes {probe_ms} ms, ping {ping_ms} ms"
    );

    // Foreign's node drops the tunnel's UDP (nftables): after 5 unanswered probes home says the
    // peer is down (`status` exits 1) although WireGuard's session lives on; up again at the
    // first answer once the rule goes.
    let fgw = foreign.gw_ns().to_string();
    for rule in [
        "add table inet lqtest",
        "add chain inet lqtest input { type filter hook input priority 0 ; policy accept ; }",
        "add rule inet lqtest input udp dport 51840 drop",
    ] {
        liqonet_lab::netns::ns_run(&fgw, &["nft", rule]).unwrap();
    }
    let dropped = std::time::Instant::now();
    let gw = gateway.to_str().unwrap();
    let is = |code: i32| {
        move || {
            output(&[gw, "status", "--interface", tun]).is_ok_and(|o| o.status.code() == Some(code))
        }
    };
    let down = liqonet_lab::netns::wait_for(Duration::from_secs(15), is(1));
    let took_down = dropped.elapsed();
    liqonet_lab::netns::sh(&fgw, "nft delete table inet lqtest").unwrap();
    let lifted = std::time::Instant::now();
    let up = liqonet_lab::netns::wait_for(Duration::from_secs(10), is(0));
    let took_up = lifted.elapsed();
    println!(
        "UDP dropped: status down after {:.2} s; rule removed: up after {:.2} s",
        took_down.as_secs_f64(),
        took_up.as_secs_f64()
    );
    let log = lab.log("home-gateway");
    let changes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" peer up") || l.contains(" peer down"))
        .collect();
    println!("{}", changes.join("\n"));
    assert!(down && up, "{log}");
    assert!(
        log.contains("peer down: probes unanswered peer=foreign"),
        "{log}"
    );
    assert!(
        log.contains("peer up: probe answered peer=foreign"),
        "{log}"
    );
    // 5 probes a second apart, the first lost up to a second after the drop; a tick (250 ms)
    // and a `status` poll on top.
    assert!(took_down < Duration::from_millis(6500), "{took_down:?}");
    assert!(took_up < Duration::from_secs(2), "{took_up:?}");
}

/// Parses stdin with `prometheus_client`'s OpenMetrics parser; checks the families the tests and
/// the dashboard rely on; prints `ok` and what it saw.
const OPENMETRICS_CHECK: &str = r#"
import json, re, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse
families = {f.name: f for f in parse(sys.stdin.read())}
want = {"liqonet_peer_up": "gauge", "liqonet_peer_rx_bytes": "counter",
        "liqonet_peer_tx_bytes": "counter", "liqonet_peer_latency_seconds": "histogram",
        "liqonet_peer_last_handshake_timestamp_seconds": "gauge",
        "liqonet_peer_probes_sent": "counter", "liqonet_peer_probes_lost": "counter",
        "liqonet_dropped_packets": "counter", "liqonet_build": "info",
        "liqonet_underlay_send_errors": "counter", "liqonet_tun_write_errors": "counter",
        "liqonet_tun_queue_dropped": "counter",
        "liqonet_underlay_receive_buffer_dropped": "counter",
        "liqonet_data_path_realtime_priority": "gauge"}
for name, kind in want.items():
    assert name in families, f"missing {name}"
    assert families[name].type == kind, f"{name} is {families[name].type}"
count = [s.value for s in families["liqonet_peer_latency_seconds"].samples
         if s.name.endswith("_count") and s.labels.get("peer") == "foreign"]
assert count and count[0] > 0, "no probe round trips in the histogram"
priority = families["liqonet_data_path_realtime_priority"].samples[0].value
assert priority == int(sys.argv[2]), f"data path at priority {priority}"
exported = set()
for f in families.values():
    exported.update(s.name for s in f.samples)
dashboard = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
used = {m for e in exprs for m in re.findall(r"liqonet_[a-z_]+", e)}
missing = sorted(m for m in used if not m.startswith("liqonet_route_agent_") and m not in exported)
assert not missing, f"the dashboard plots what the gateway does not export: {missing}"
print("ok", len(families), "families;", int(count[0]), "probe round trips;", len(used), "dashboard series")
"#;
