//! `liqonet-bench failover [--rounds N]`: failovers of home's leading gateway on the Kubernetes
//! lab's real nodes (kubelet, containerd, kube-proxy), measured with 10 ms pings between test
//! pods, home → foreign and back at the same time. Each round does, in turn: kill -9 of the
//! leader's gateway process (the kubelet restarts it), `kubectl delete pod` of the leader, and a
//! whole `kubectl rollout restart` of the gateway DaemonSet; each waits until every gateway pod
//! is Running and Ready again. A kill's or a deletion's figure is the longest silence in either
//! direction; a rollout's is all its silences added up. Then the packets lost while home's API
//! server is away for 10 s.

use std::time::{Duration, Instant};

use liqonet_lab::kube::controlplane::versions;
use liqonet_lab::kube::failover::{fail_over, Failover, Probed};
use liqonet_lab::kube::install::GATEWAY_DS;
use liqonet_lab::kube::lab::KubeLab;
use liqonet_lab::outage::{Gaps, Pinger};

const SETTLE: Duration = Duration::from_secs(60);

fn show(g: &Gaps) -> String {
    format!(
        "{:.0} ms, {} lost",
        g.longest.as_secs_f64() * 1000.0,
        g.lost()
    )
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    let (min, max) = (v[0], v[v.len() - 1]);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    println!("failover {name}: min {min:.0} ms, median {median:.0} ms, max {max:.0} ms");
}

/// The Lease settings the gateways run with: the ConfigMap's, else the gateway's defaults (as its
/// `--help` states them).
fn lease_settings(lab: &KubeLab) -> anyhow::Result<String> {
    let cm = lab
        .cluster("home")
        .get_json(&["-n", "liqonet", "configmap", GATEWAY_DS])?;
    let gateway = liqonet_lab::lab::bin_dir()?.join("liqonet-gateway");
    let help = liqonet_lab::netns::run(&[gateway.to_str().unwrap_or_default(), "run", "--help"])?;
    let setting = |flag: &str, var: &str| -> String {
        if let Some(v) = cm["data"][var].as_str() {
            return format!("{flag} {v}");
        }
        let default = help
            .split(&format!("--{flag} "))
            .nth(1)
            .and_then(|rest| rest.split("[default: ").nth(1))
            .and_then(|d| d.split(']').next())
            .unwrap_or("?");
        format!("{flag} {default} (default)")
    };
    Ok([
        setting("lease-duration", "LIQONET_LEASE_DURATION"),
        setting("renew-deadline", "LIQONET_RENEW_DEADLINE"),
        setting("retry-period", "LIQONET_RETRY_PERIOD"),
    ]
    .join(", "))
}

pub fn run(rounds: usize) -> anyhow::Result<()> {
    println!("control plane: {}", versions()?);
    for line in liqonet_lab::kube::node::versions()?.lines() {
        println!("nodes: {line}");
    }
    let mut lab = KubeLab::start(&["home", "foreign"])?;
    lab.peer("home", "foreign")?;
    println!("lease settings: {}", lease_settings(&lab)?);
    for (a, b) in [("home", "foreign"), ("foreign", "home")] {
        lab.wait_phase(a, b, "Connected", SETTLE)?;
    }
    let probed = Probed::find(&lab, "home", "foreign")?;
    if !liqonet_lab::netns::wait_for(SETTLE, || probed.reachable(&lab, "home", "foreign")) {
        anyhow::bail!("the test pods do not reach each other");
    }
    let mut figures: [(Failover, &str, Vec<f64>); 3] = [
        (Failover::Kill, "kill", Vec::new()),
        (Failover::Delete, "delete", Vec::new()),
        (Failover::Rollout, "rollout", Vec::new()),
    ];
    for i in 0..rounds {
        println!("round {}:", i + 1);
        for (how, name, v) in &mut figures {
            let o = fail_over(&mut lab, "home", "foreign", &probed, *how)?;
            if !o.settled {
                anyhow::bail!("{name}: home did not settle: {o:?}");
            }
            let figure = if *how == Failover::Rollout {
                o.silent()
            } else {
                o.outage()
            };
            let ms = figure.as_secs_f64() * 1000.0;
            println!(
                "  {name:<7} {} -> {}: {ms:.0} ms (there {}, back {}; at most {} forwarding)",
                o.old,
                o.new.as_deref().unwrap_or("?"),
                show(&o.there),
                show(&o.back),
                o.most_forwarding
            );
            v.push(ms);
        }
    }
    for (_, name, v) in figures {
        summary(name, v);
    }

    // A deleted TunnelEndpoint, until its routes are gone from every node.
    let t0 = Instant::now();
    lab.cluster("home")
        .kubectl(&["-n", "liqonet", "delete", "tep", "foreign", "--wait=false"])?;
    lab.wait_routes("home", SETTLE)?;
    println!(
        "TunnelEndpoint deleted: routes gone from every node in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    // Peered again (home only: foreign still has home's endpoint) for what follows.
    let info = lab.dir.join("foreign.peering.yaml");
    lab.peering_cli(
        "home",
        &[
            "peer",
            "add",
            "--kubernetes",
            info.to_str().unwrap_or_default(),
        ],
    )?;
    lab.wait_phase("home", "foreign", "Connected", SETTLE)?;
    let probed = Probed::find(&lab, "home", "foreign")?;
    if !liqonet_lab::netns::wait_for(SETTLE, || probed.reachable(&lab, "home", "foreign")) {
        anyhow::bail!("the test pods do not reach each other after peering again");
    }

    // The API server stopped for 10 s: the tunnel must not notice.
    let there = Pinger::start(
        &lab.pod_netns("home", &probed.pods[0].0)?,
        &probed.targets[0],
        "home → foreign",
    )?;
    let back = Pinger::start(
        &lab.pod_netns("foreign", &probed.pods[1].0)?,
        &probed.targets[1],
        "foreign → home",
    )?;
    std::thread::sleep(Duration::from_millis(500));
    lab.cluster_mut("home").cp.stop_apiserver()?;
    std::thread::sleep(Duration::from_secs(10));
    lab.cluster_mut("home").cp.start_apiserver_again()?;
    std::thread::sleep(Duration::from_secs(1));
    let (ga, gb) = (there.stop()?, back.stop()?);
    println!(
        "API server stopped 10 s: {} packets lost of {} (there {}, back {})",
        ga.lost() + gb.lost(),
        ga.sent + gb.sent,
        show(&ga),
        show(&gb)
    );
    Ok(())
}
