//! One failover of a cluster's active gateway replica, measured both ways: what the failover
//! tests and `liqonet-bench failover` do each round.

use std::time::{Duration, Instant};

use super::lab::{KubeLab, GATEWAY_DS};
use crate::outage::{Gaps, Pinger};

/// How long a new leader may take to show in the Lease.
const ELECTION: Duration = Duration::from_secs(30);

/// Probers from `a`'s w2 pod to `b`'s w1 pod and from `b`'s w2 pod to `a`'s w1 pod.
pub fn pingers(lab: &KubeLab, a: &str, b: &str) -> anyhow::Result<(Pinger, Pinger)> {
    let there = lab.remote_pod_ip(a, b, "w1")?;
    let back = lab.remote_pod_ip(b, a, "w1")?;
    Ok((
        Pinger::start(
            &lab.cluster(a).node("w2").pod.ns,
            &there,
            &format!("{a}-{b}"),
        )?,
        Pinger::start(
            &lab.cluster(b).node("w2").pod.ns,
            &back,
            &format!("{b}-{a}"),
        )?,
    ))
}

/// The node whose replica holds `cluster`'s Lease, once it is not `not`.
pub fn leader(lab: &KubeLab, cluster: &str, not: Option<&str>) -> anyhow::Result<String> {
    let deadline = Instant::now() + ELECTION;
    loop {
        if let Some(h) = lab.cluster(cluster).lease_holder() {
            if Some(h.as_str()) != not {
                return Ok(h);
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("{cluster}: no leader other than {not:?} after {ELECTION:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug)]
pub struct Failover {
    pub old: String,
    pub new: String,
    /// `cluster` → `peer`, and back.
    pub there: Gaps,
    pub back: Gaps,
}

impl Failover {
    /// The longest gap between replies in either direction.
    pub fn outage(&self) -> Duration {
        self.there.longest.max(self.back.longest)
    }
}

/// Sends `sig` (`KILL`, `TERM`) to `cluster`'s active replica while pods ping across to `peer`
/// and back every 10 ms; waits `after` once the Lease has a new holder (long enough for a slow
/// recovery to show as a gap, not as a cut-off end). The stopped replica is not restarted.
pub fn fail_over(
    lab: &mut KubeLab,
    cluster: &str,
    peer: &str,
    sig: &str,
    after: Duration,
) -> anyhow::Result<Failover> {
    let old = leader(lab, cluster, None)?;
    let (a, b) = pingers(lab, cluster, peer)?;
    std::thread::sleep(Duration::from_millis(500));
    lab.signal_pod(cluster, &old, GATEWAY_DS, sig)?;
    let new = leader(lab, cluster, Some(&old))?;
    std::thread::sleep(after);
    Ok(Failover {
        old,
        new,
        there: a.stop()?,
        back: b.stop()?,
    })
}
