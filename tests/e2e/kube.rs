//! Kubernetes mode end to end on the real control plane (kube-apiserver and etcd built from Go
//! modules by scripts/controlplane.sh): clusters installed from deploy/ with kubectl, gateway
//! replicas and route agents started as their DaemonSets would be (in-cluster configuration,
//! their own ServiceAccounts under the real RBAC authorizer), peered with the peering CLI.
//!
//! These tests are `#[ignore]`d in the ordinary pass: `make test` runs them once, one at a
//! time, in a step of their own (`--ignored --test-threads=1`), since each lab runs two control
//! planes on a 2-core machine. Every test prints what it measured.

use std::time::{Duration, Instant};

use liqonet_lab::kube::failover::{fail_over, pingers};
use liqonet_lab::kube::lab::{AGENT_DS, GATEWAY_DS};
use liqonet_lab::kube::KubeLab;
use liqonet_lab::outage::{Pinger, TunWatch};
use liqonet_lab::probe::{curl, iperf3, ping, wait_reachable};

const CONNECT: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(30);

fn connected(lab: &KubeLab, a: &str, b: &str) -> serde_json::Value {
    lab.wait_phase(a, b, "Connected", CONNECT).unwrap()
}

/// Ping and curl from `a`'s w2 pod to `b`'s w1 pod by its remapped address.
fn assert_path(lab: &KubeLab, a: &str, b: &str) {
    let dst = lab.remote_pod_ip(a, b, "w1").unwrap();
    let src = &lab.cluster(a).node("w2").pod.ns;
    assert!(
        wait_reachable(src, &dst, Duration::from_secs(20)),
        "{a} w2 pod cannot reach {b} w1 pod at {dst}"
    );
    let p = ping(src, &dst, 5).unwrap();
    assert_eq!(p.received, 5, "{a} -> {b} ({dst}): {p:?}");
    let body = curl(src, &format!("http://{dst}/")).unwrap();
    assert_eq!(
        body,
        format!(
            "hello from {b} w1 pod {}\n",
            lab.cluster(b).node("w1").pod.ip
        )
    );
}

/// Every node of `cluster` holds exactly the routes and rules its TunnelEndpoints call for.
fn assert_routes(lab: &KubeLab, cluster: &str) {
    let (gw, nets) = lab.carried(cluster).unwrap();
    let took = lab
        .wait_routes(cluster, gw.as_deref(), &nets, CONVERGE)
        .unwrap();
    println!(
        "{cluster}: routes exact on every node (gateway {gw:?}, {} networks) after {took:?}",
        nets.len()
    );
}

fn gateway_namespaces(lab: &KubeLab, cluster: &str) -> Vec<String> {
    lab.cluster(cluster)
        .gateway_nodes()
        .map(|n| n.ns.clone())
        .collect()
}

#[test]
#[ignore = "Kubernetes lab: make test runs it in its own step"]
fn pods_reach_remote_pods_through_the_real_control_plane() {
    let mut lab = KubeLab::start(&["home", "foreign"]).unwrap();
    for (a, b) in [("home", "foreign"), ("foreign", "home")] {
        let t = connected(&lab, a, b);
        assert_eq!(t["status"]["gateway"]["nodeName"], "gw1", "{}", t["status"]);
        assert!(t["status"]["lastHandshake"].is_string(), "{}", t["status"]);
        assert_path(&lab, a, b);
    }
    assert_routes(&lab, "home");
    assert_routes(&lab, "foreign");
    // The DaemonSet's route agent serves its status on the node at the default address.
    let agent = lab.bin("liqonet-route-agent");
    let out = liqonet_lab::netns::ns_output(
        &lab.cluster("home").node("w1").ns,
        &[agent.to_str().unwrap(), "status"],
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("liqonet-route-agent status (home w1, Kubernetes mode):\n{text}");
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("node       w1  mode vxlan\n") && text.contains("gateway    gw1\n"),
        "{text}"
    );
    let dst = lab.remote_pod_ip("home", "foreign", "w1").unwrap();
    let r = iperf3(&lab.cluster("home").node("w2").pod.ns, &dst, 3).unwrap();
    println!("iperf3 home w2 pod -> foreign w1 pod: {r:?}");
    assert!(r.bits_per_second > 50e6, "{r:?}");

    // The status shows traffic (counters are written at most every 10 s).
    let deadline = Instant::now() + Duration::from_secs(25);
    let status = loop {
        let t = lab.cluster("home").get_json(&["tep", "foreign"]).unwrap();
        if t["status"]["txBytes"].as_u64().unwrap_or(0) > 1_000_000 {
            break t["status"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no byte counts in {}",
            t["status"]
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("home: tep foreign status: {status}");
    let wide = lab
        .cluster("home")
        .kubectl(&["-n", "liqonet", "get", "tep", "-o", "wide"])
        .unwrap();
    println!("{wide}");
    let row = wide.lines().find(|l| l.starts_with("foreign")).unwrap();
    assert!(row.contains("Connected") && row.contains("gw1"), "{wide}");

    // RBAC is the real authorizer's: each component has its own ServiceAccount and nothing more.
    let denied = lab
        .kubectl_as_pod("home", "w1", AGENT_DS, &["-n", "liqonet", "get", "secrets"])
        .unwrap();
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success() && err.contains("Forbidden"),
        "{err}"
    );
    println!("route agent reading Secrets: {}", err.trim());
    let allowed = lab
        .kubectl_as_pod("home", "w1", AGENT_DS, &["-n", "liqonet", "get", "tep"])
        .unwrap();
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let denied = lab
        .kubectl_as_pod("home", "gw1", GATEWAY_DS, &["get", "nodes"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Forbidden"),
        "the gateway may not list nodes"
    );

    // Every kustomization renders and applies to the real server.
    let deploy = liqonet_lab::kube::lab::deploy_dir();
    for k in ["", "base", "loadbalancer"] {
        let dir = deploy.join(k);
        let dir = dir.to_str().unwrap();
        let rendered = lab.cluster("home").kubectl(&["kustomize", dir]).unwrap();
        assert!(rendered.contains("kind: DaemonSet"), "{k}");
        lab.cluster("home")
            .kubectl(&["apply", "-k", dir, "--dry-run=server"])
            .unwrap_or_else(|e| panic!("deploy/{k}: {e}"));
        println!("deploy/{k}: renders and applies (server dry run)");
    }

    // A third cluster peered live: reachable, the others undisturbed.
    let (home_foreign, foreign_home) = pingers(&lab, "home", "foreign").unwrap();
    lab.add_cluster("third").unwrap();
    lab.peer("home", "third").unwrap();
    connected(&lab, "home", "third");
    connected(&lab, "third", "home");
    assert_path(&lab, "home", "third");
    assert_path(&lab, "third", "home");
    for p in [home_foreign, foreign_home] {
        let label = p.label.clone();
        let g = p.stop().unwrap();
        println!("{label} while third joined: {g:?}");
        assert_eq!(g.lost(), 0, "{label}: {g:?}");
    }
    assert_routes(&lab, "home");
    assert_routes(&lab, "third");

    // The phase follows the in-tunnel probes, at once: home's gateway nodes drop third's
    // datagrams (nftables), so home's probes go unanswered; after 5 misses home's TunnelEndpoint
    // for third is Connecting, and Connected again at the first answer once the rule goes.
    let third_wan: Vec<String> = lab
        .cluster("third")
        .gateway_nodes()
        .filter_map(|n| n.wan_ip.clone())
        .collect();
    let drop_rule = format!(
        "add rule inet lqtest input ip saddr {{ {} }} drop",
        third_wan.join(", ")
    );
    for ns in gateway_namespaces(&lab, "home") {
        for rule in [
            "add table inet lqtest",
            "add chain inet lqtest input { type filter hook input priority 0 ; policy accept ; }",
            drop_rule.as_str(),
        ] {
            liqonet_lab::netns::ns_run(&ns, &["nft", rule]).unwrap();
        }
    }
    let t0 = Instant::now();
    let down = lab
        .wait_phase("home", "third", "Connecting", CONVERGE)
        .unwrap();
    let took_down = t0.elapsed();
    for ns in gateway_namespaces(&lab, "home") {
        liqonet_lab::netns::ns_run(&ns, &["nft", "delete table inet lqtest"]).unwrap();
    }
    let t0 = Instant::now();
    connected(&lab, "home", "third");
    let took_up = t0.elapsed();
    println!(
        "third's datagrams dropped: tep third Connecting after {took_down:?} ({}); rule removed: Connected after {took_up:?}",
        down["status"]["message"]
    );
    assert_eq!(
        down["status"]["message"], "the peer does not answer in-tunnel probes",
        "{down}"
    );
    // 5 probes a second apart, then a write to the API (at the next status period before).
    assert!(took_down < Duration::from_secs(9), "{took_down:?}");
    assert!(took_up < Duration::from_secs(4), "{took_up:?}");

    // Deleting a TunnelEndpoint: kubectl waits for the gateway's finalizer; the peer leaves the
    // data plane and its routes leave every node.
    let t0 = Instant::now();
    lab.cluster("home")
        .kubectl(&["-n", "liqonet", "delete", "tep", "third", "--timeout=30s"])
        .unwrap();
    let deleted = t0.elapsed();
    let (gw, nets) = lab.carried("home").unwrap();
    let routes = lab
        .wait_routes("home", gw.as_deref(), &nets, CONVERGE)
        .unwrap();
    println!("tep third deleted in {deleted:?} (finalizer released), routes gone from every node {:?} later", routes);
    // The other peer is untouched.
    assert_path(&lab, "home", "foreign");
}

#[test]
#[ignore = "Kubernetes lab: make test runs it in its own step"]
fn the_other_replica_takes_over_and_the_far_side_follows() {
    let mut lab = KubeLab::start(&["home", "foreign"]).unwrap();
    connected(&lab, "home", "foreign");
    connected(&lab, "foreign", "home");
    assert_path(&lab, "home", "foreign");
    assert_path(&lab, "foreign", "home");

    // kill -9 of the active gateway: the other replica takes over; traffic started on either
    // side comes back.
    let f = fail_over(&mut lab, "home", "foreign", "KILL", Duration::from_secs(4)).unwrap();
    println!(
        "kill -9 of home's {}: {} took over; outage {:?} ({f:?})",
        f.old,
        f.new,
        f.outage()
    );
    assert!(f.outage() < Duration::from_secs(5), "{f:?}");
    assert_path(&lab, "home", "foreign");
    assert_path(&lab, "foreign", "home");
    assert_routes(&lab, "home");
    lab.start_pod("home", &f.old, GATEWAY_DS).unwrap();

    // The far side's gateway restarts (its active replica killed): its new leader finds home's
    // active replica through home's node port on its own.
    let f = fail_over(&mut lab, "foreign", "home", "KILL", Duration::from_secs(4)).unwrap();
    println!(
        "kill -9 of foreign's {}: {} took over; outage {:?}",
        f.old,
        f.new,
        f.outage()
    );
    assert!(f.outage() < Duration::from_secs(5), "{f:?}");
    assert_routes(&lab, "foreign");
    lab.start_pod("foreign", &f.old, GATEWAY_DS).unwrap();

    // SIGTERM of the active gateway (a rolling update): it stops forwarding, releases the
    // Lease, and the other replica takes over at once.
    let f = fail_over(&mut lab, "home", "foreign", "TERM", Duration::from_secs(3)).unwrap();
    println!(
        "SIGTERM of home's {}: handed over to {}; outage {:?}",
        f.old,
        f.new,
        f.outage()
    );
    assert!(f.outage() < Duration::from_secs(3), "{f:?}");
    assert_routes(&lab, "home");
    assert_routes(&lab, "foreign");
}

#[test]
#[ignore = "Kubernetes lab: make test runs it in its own step"]
fn the_tunnel_outlives_the_api_server_and_watches_survive_410_gone() {
    let mut lab = KubeLab::start(&["home", "foreign"]).unwrap();
    connected(&lab, "home", "foreign");
    connected(&lab, "foreign", "home");
    assert_path(&lab, "home", "foreign");

    for how in ["stopped", "hung"] {
        let (a, b) = pingers(&lab, "home", "foreign").unwrap();
        let tuns = TunWatch::start(gateway_namespaces(&lab, "home"), "liqo0");
        match how {
            "stopped" => lab.clusters[0].cp.stop_apiserver().unwrap(),
            _ => lab.clusters[0].cp.signal_apiserver("STOP").unwrap(),
        }
        std::thread::sleep(Duration::from_secs(10));
        match how {
            "stopped" => lab.clusters[0].cp.start_apiserver_again().unwrap(),
            _ => lab.clusters[0].cp.signal_apiserver("CONT").unwrap(),
        }
        std::thread::sleep(Duration::from_secs(1));
        let counts = tuns.stop();
        let (ga, gb) = (a.stop().unwrap(), b.stop().unwrap());
        println!("home API server {how} for 10 s: home->foreign {ga:?}, foreign->home {gb:?}; forwarding replicas per sample: min {:?} max {:?}", counts.iter().min(), counts.iter().max());
        assert_eq!(ga.lost() + gb.lost(), 0, "{how}: {ga:?} {gb:?}");
        // Nor a silence at the end, after the API server came back.
        let longest = ga.longest.max(gb.longest);
        assert!(
            longest < Duration::from_millis(500),
            "{how}: a gap of {longest:?}"
        );
        assert!(
            counts.iter().all(|&n| n == 1),
            "{how}: forwarding replicas {counts:?}"
        );
        connected(&lab, "home", "foreign");
        assert_routes(&lab, "home");
    }

    // Compaction, then a restart: every watch resumes from a compacted revision and gets
    // 410 Gone, relists, and converges on a change made meanwhile. Only what the components log
    // from here on counts.
    let components: Vec<(&str, &str)> = ["gw1", "gw2", "w1", "w2"]
        .into_iter()
        .flat_map(|n| [(n, AGENT_DS), (n, GATEWAY_DS)])
        .collect();
    let seen: Vec<usize> = components
        .iter()
        .map(|(n, ds)| lab.log("home", n, ds).len())
        .collect();
    lab.clusters[0].cp.stop_apiserver().unwrap();
    let rev = lab.clusters[0].cp.compact().unwrap();
    lab.clusters[0].cp.start_apiserver_again().unwrap();
    println!("etcd compacted at revision {rev}, API server restarted");
    let t0 = Instant::now();
    lab.cluster("home")
        .kubectl(&["-n", "liqonet", "delete", "tep", "foreign", "--timeout=30s"])
        .unwrap();
    let took = lab.wait_routes("home", None, &[], CONVERGE).unwrap();
    println!(
        "after the relist, tep foreign deleted and its routes gone from every node in {:?}",
        t0.elapsed().max(took)
    );
    let mut gone = Vec::new();
    for ((n, ds), from) in components.iter().zip(seen) {
        let log = lab.log("home", n, ds);
        let new = log.get(from..).unwrap_or_default();
        if new.contains("too old resource version") {
            gone.push(format!("{n}/{ds}"));
        }
    }
    println!("watchers that logged 410 Gone and relisted: {gone:?}");
    assert!(!gone.is_empty(), "no watcher saw 410 Gone");
}

#[test]
#[ignore = "Kubernetes lab: make test runs it in its own step"]
fn tunnel_endpoints_created_together_carry_the_first_ping_at_once() {
    let lab = KubeLab::start_unpeered(&["home", "foreign"]).unwrap();
    // Both clusters' gateways are up and elected before any peering.
    for c in ["home", "foreign"] {
        assert!(
            liqonet_lab::netns::wait_for(CONVERGE, || lab.cluster(c).lease_holder().is_some()),
            "{c}: no gateway leads"
        );
    }
    let infos = [
        lab.peering_info("foreign").unwrap(),
        lab.peering_info("home").unwrap(),
    ];
    let first = Instant::now();
    lab.peer_add("home", &infos[0]).unwrap();
    lab.peer_add("foreign", &infos[1]).unwrap();
    let created = Instant::now();
    let apart = created - first;
    assert!(apart < Duration::from_secs(1), "created {apart:?} apart");
    // A home pod pings a foreign pod every 50 ms from the moment its address is known.
    assert!(liqonet_lab::netns::wait_for(CONVERGE, || lab
        .alias("home", "foreign")
        .is_ok()));
    let dst = lab.remote_pod_ip("home", "foreign", "w1").unwrap();
    let pinger = Pinger::start_every(
        &lab.cluster("home").node("w2").pod.ns,
        &dst,
        "home → foreign",
        Duration::from_millis(50),
    )
    .unwrap();
    liqonet_lab::netns::wait_for(Duration::from_secs(10), || pinger.first_reply().is_some());
    let answered = pinger.first_reply();
    let _ = pinger.stop();
    let took = answered
        .expect("no reply within 10 s")
        .saturating_duration_since(created);
    println!(
        "TunnelEndpoints created {apart:.2?} apart: the first ping answered {took:.2?} after the later one"
    );
    assert!(took <= Duration::from_millis(1500), "{took:?}");
}
