//! One failover of a real cluster's leading gateway, done the ways a cluster does it, measured
//! while test pods ping across both ways every 10 ms: what the real-node tests and
//! `liqonet-bench failover` do each round.

use std::time::Duration;

use super::lab::KubeLab;
use crate::netns::wait_for;
use crate::outage::{Gaps, Pinger, TunWatch};

/// What is done to the leading gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failover {
    /// kill -9 of the gateway's process (the kubelet restarts the container).
    Kill,
    /// `kubectl delete pod` of the leader's pod.
    Delete,
    /// `kubectl rollout restart ds/liqonet-gateway`, until `rollout status` succeeds.
    Rollout,
    /// The leader's node crashes (kubelet, containerd, every container) and comes back.
    NodeCrash,
}

/// How long everything may take to settle after a failover.
const SETTLE: Duration = Duration::from_secs(120);

/// What one failover did.
#[derive(Debug)]
pub struct Outcome {
    pub old: String,
    pub new: Option<String>,
    /// `cluster` → `peer`, and back.
    pub there: Gaps,
    pub back: Gaps,
    /// The most gateway replicas of `cluster` forwarding at once (of samples every 100 ms).
    pub most_forwarding: usize,
    /// Both replicas Ready again, one Service endpoint, the leader's.
    pub settled: bool,
    pub endpoints: Vec<String>,
}

impl Outcome {
    /// The longest silence in either direction.
    pub fn outage(&self) -> Duration {
        self.there.longest.max(self.back.longest)
    }

    /// Every silence added up, in the worse direction (a rollout has several).
    pub fn silent(&self) -> Duration {
        self.there.silent.max(self.back.silent)
    }
}

/// The test pods that ping: `cluster`'s and `peer`'s on w1, and how each reaches the other.
pub struct Probed {
    pub pods: [(String, String); 2],
    pub targets: [String; 2],
}

impl Probed {
    /// Once both sides know each other's alias.
    pub fn find(lab: &KubeLab, cluster: &str, peer: &str) -> anyhow::Result<Probed> {
        let a = lab.test_pod(cluster, "w1")?;
        let b = lab.test_pod(peer, "w1")?;
        if !wait_for(Duration::from_secs(60), || {
            lab.remote_ip(cluster, peer, &b.1).is_ok() && lab.remote_ip(peer, cluster, &a.1).is_ok()
        }) {
            anyhow::bail!("{cluster} and {peer} do not know each other's pod CIDR yet");
        }
        let targets = [
            lab.remote_ip(cluster, peer, &b.1)?,
            lab.remote_ip(peer, cluster, &a.1)?,
        ];
        Ok(Probed {
            pods: [a, b],
            targets,
        })
    }

    /// One ping each way with `kubectl exec` is answered.
    pub fn reachable(&self, lab: &KubeLab, cluster: &str, peer: &str) -> bool {
        lab.exec(
            cluster,
            &self.pods[0].0,
            &["ping", "-c", "1", "-W", "1", &self.targets[0]],
        )
        .is_ok()
            && lab
                .exec(
                    peer,
                    &self.pods[1].0,
                    &["ping", "-c", "1", "-W", "1", &self.targets[1]],
                )
                .is_ok()
    }
}

/// Does `how` to `cluster`'s leader while `probed` pings both ways; returns once the cluster has
/// settled (or [`SETTLE`] passed), with the pingers stopped 2 s after.
pub fn fail_over(
    lab: &mut KubeLab,
    cluster: &str,
    peer: &str,
    probed: &Probed,
    how: Failover,
) -> anyhow::Result<Outcome> {
    let old = lab
        .cluster(cluster)
        .leader()
        .ok_or_else(|| anyhow::anyhow!("{cluster} has no leader"))?;
    let there = Pinger::start(
        &lab.pod_netns(cluster, &probed.pods[0].0)?,
        &probed.targets[0],
        &format!("{cluster} → {peer}"),
    )?;
    let back = Pinger::start(
        &lab.pod_netns(peer, &probed.pods[1].0)?,
        &probed.targets[1],
        &format!("{peer} → {cluster}"),
    )?;
    let gateways: Vec<String> = lab
        .cluster(cluster)
        .nodes
        .iter()
        .filter(|n| n.wan_ip.is_some())
        .map(|n| n.ns.clone())
        .collect();
    let forwarding = TunWatch::start(gateways, "liqo0");
    std::thread::sleep(Duration::from_millis(500));
    let c = lab.cluster(cluster);
    match how {
        Failover::Kill => {
            let pid = lab
                .gateway_pid(cluster, &old)
                .ok_or_else(|| anyhow::anyhow!("no gateway process on {old}"))?;
            crate::netns::run(&["kill", "-KILL", &pid.to_string()])?;
        }
        Failover::Delete => {
            let lease = c.get_json(&["-n", "liqonet", "lease", "liqonet-gateway"])?;
            let pod = lease["spec"]["holderIdentity"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            c.kubectl(&["-n", "liqonet", "delete", "pod", &pod, "--wait=false"])?;
        }
        Failover::Rollout => {
            c.kubectl(&["-n", "liqonet", "rollout", "restart", "ds/liqonet-gateway"])?;
            c.rollout_status("liqonet-gateway")?;
        }
        Failover::NodeCrash => {
            lab.crash_node(cluster, &old)?;
            // Until the other replica leads.
            wait_for(Duration::from_secs(30), || {
                lab.cluster(cluster).leader().is_some_and(|l| l != old)
            });
            std::thread::sleep(Duration::from_secs(3));
            lab.restart_node(cluster, &old)?;
        }
    }
    let settled = wait_for(SETTLE, || {
        let c = lab.cluster(cluster);
        let e = c.service_endpoints();
        // Running and Ready again, every replica (repeated kills must not end in
        // CrashLoopBackOff), one endpoint: the leader's.
        c.ready_gateways().len() == 2 && e.len() == 1 && Some(&e[0]) == c.leader().as_ref()
    });
    std::thread::sleep(Duration::from_secs(2));
    let samples = forwarding.stop();
    let c = lab.cluster(cluster);
    Ok(Outcome {
        old,
        new: c.leader(),
        there: there.stop()?,
        back: back.stop()?,
        most_forwarding: samples.into_iter().max().unwrap_or(0),
        settled,
        endpoints: c.service_endpoints(),
    })
}
