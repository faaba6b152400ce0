//! Kubernetes mode end to end on the real control plane (kube-apiserver and etcd built from Go
//! modules): two clusters installed from deploy/ with kubectl, gateway replicas and route agents
//! started as their DaemonSets would be, peered with the peering CLI.

use std::time::Duration;

use liqonet_lab::kube::KubeLab;
use liqonet_lab::probe::{curl, ping, wait_reachable};

#[test]
fn worker_pod_to_remote_worker_pod() {
    let lab = KubeLab::start(&["home", "foreign"]).unwrap();
    for (a, b) in [("home", "foreign"), ("foreign", "home")] {
        let t = lab
            .wait_phase(a, b, "Connected", Duration::from_secs(60))
            .unwrap();
        println!("{a}: tep {b}: {}", t["status"]);
        let dst = lab.remote_pod_ip(a, b, "w1").unwrap();
        let src = &lab.cluster(a).node("w2").pod.ns;
        assert!(
            wait_reachable(src, &dst, Duration::from_secs(20)),
            "{a} w2 pod cannot reach {b} w1 pod at {dst}"
        );
        let p = ping(src, &dst, 5).unwrap();
        assert_eq!(p.received, 5, "{p:?}");
        let body = curl(src, &format!("http://{dst}/")).unwrap();
        assert_eq!(
            body,
            format!(
                "hello from {b} w1 pod {}\n",
                lab.cluster(b).node("w1").pod.ip
            )
        );
    }
}
