//! `liqonet-bench flood`: the release gateway under a 200 k/s handshake flood from one source,
//! against the hardening targets: the established peer keeps >= 90 % of its single-stream
//! throughput and loses < 1 % of its pings; a peer restarted during the flood is back in < 2 s.

use std::time::Duration;

use liqonet_lab::under_flood;
use liqonet_lab::{Lab, LabSpec};

pub fn run(secs: u32, runs: usize) -> anyhow::Result<()> {
    let mut lab = Lab::start(&LabSpec::distinct_cidrs())?;
    let (from, dst) = (
        lab.home().main_pod().ns.clone(),
        lab.cluster("foreign").main_pod().ip.clone(),
    );
    if !liqonet_lab::probe::wait_reachable(&from, &dst, Duration::from_secs(10)) {
        anyhow::bail!("{dst} is not reachable");
    }
    let r = under_flood::measure(&mut lab, 200_000, secs, runs)?;
    r.print();
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    let back = r.back_after.unwrap_or(Duration::MAX);
    println!(
        "targets: throughput kept {:.0} % (>= 90 %: {}), ping loss {:.2} % (< 1 %: {}), restarted peer back {:.2?} (< 2 s: {})",
        r.throughput_kept() * 100.0,
        mark(r.throughput_kept() >= 0.9),
        r.ping_loss() * 100.0,
        mark(r.ping_loss() < 0.01),
        back,
        mark(back < Duration::from_secs(2)),
    );
    Ok(())
}
