//! `liqonet-bench failover [--rounds N]`: gateway failovers on the Kubernetes lab (the real
//! control plane), measured with 10 ms pings worker pod → remote worker pod and back at the same
//! time; a round's outage is the longest gap between replies in either direction.

use std::time::{Duration, Instant};

use liqonet_lab::kube::controlplane::versions;
use liqonet_lab::kube::failover::{fail_over, pingers};
use liqonet_lab::kube::lab::GATEWAY_DS;
use liqonet_lab::kube::KubeLab;
use liqonet_lab::outage::Gaps;

const SETTLE: Duration = Duration::from_secs(60);

/// One failover of home's active replica by `sig`; the outage, in ms. The stopped replica is
/// started again before the next round.
fn round(lab: &mut KubeLab, sig: &str) -> anyhow::Result<f64> {
    let f = fail_over(lab, "home", "foreign", sig, Duration::from_secs(4))?;
    let ms = f.outage().as_secs_f64() * 1000.0;
    println!(
        "  {sig:<4} {} -> {}: {ms:.0} ms (there {}, back {})",
        f.old,
        f.new,
        show(&f.there),
        show(&f.back)
    );
    lab.start_pod("home", &f.old, GATEWAY_DS)?;
    std::thread::sleep(Duration::from_secs(2));
    Ok(ms)
}

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
    let cm = lab.cluster("home").get_json(&["configmap", GATEWAY_DS])?;
    let help = liqonet_lab::netns::run(&[
        lab.bin("liqonet-gateway").to_str().unwrap_or_default(),
        "run",
        "--help",
    ])?;
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
    let mut lab = KubeLab::start(&["home", "foreign"])?;
    println!("lease settings: {}", lease_settings(&lab)?);
    for (a, b) in [("home", "foreign"), ("foreign", "home")] {
        lab.wait_phase(a, b, "Connected", SETTLE)?;
    }
    let mut kills = Vec::new();
    let mut graceful = Vec::new();
    for i in 0..rounds {
        println!("round {}:", i + 1);
        kills.push(round(&mut lab, "KILL")?);
        graceful.push(round(&mut lab, "TERM")?);
    }
    summary("kill", kills);
    summary("graceful", graceful);

    // A deleted TunnelEndpoint, until its routes are gone from every node.
    let t0 = Instant::now();
    lab.cluster("home")
        .kubectl(&["-n", "liqonet", "delete", "tep", "foreign", "--wait=false"])?;
    lab.wait_routes("home", None, &[], SETTLE)?;
    println!(
        "TunnelEndpoint deleted: routes gone from every node in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    // Peered again (home only: foreign still has home's endpoint) for what follows.
    lab.peer_one_way("home", "foreign")?;
    lab.wait_phase("home", "foreign", "Connected", SETTLE)?;

    // The API server stopped for 10 s: the tunnel must not notice.
    let (a, b) = pingers(&lab, "home", "foreign")?;
    lab.clusters[0].cp.stop_apiserver()?;
    std::thread::sleep(Duration::from_secs(10));
    lab.clusters[0].cp.start_apiserver_again()?;
    std::thread::sleep(Duration::from_secs(1));
    let (ga, gb) = (a.stop()?, b.stop()?);
    println!(
        "API server stopped 10 s: {} packets lost of {} (there {}, back {})",
        ga.lost() + gb.lost(),
        ga.sent + gb.sent,
        show(&ga),
        show(&gb)
    );

    Ok(())
}
