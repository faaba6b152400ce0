//! The Kubernetes lab: clusters of network namespaces, each with a real control plane
//! ([`controlplane`]), installed from `deploy/` with kubectl, whose gateway and route-agent
//! processes start as the rendered DaemonSets would start them ([`pods`]), with the gateway
//! Service's node port wired to the active replica as kube-proxy would ([`nodeport`]).
//!
//! ```text
//!  cluster home (node network 172.20.0.0/24)              cluster foreign (its own 172.20.0.0/24)
//!  cp: etcd + kube-apiserver (172.20.0.2)                  cp: etcd + kube-apiserver
//!  gw1 (.11) gw2 (.12): gateway replica + route agent      gw1 gw2
//!  w1 (.21)  w2 (.22):  route agent, a pod each            w1  w2
//!  gw1, gw2 ── WAN 192.168.250.0/24 ── gw1, gw2
//! ```
//! Both clusters number their pods from 10.244.0.0/16 (node n: 10.244.n.0/24, its pod at .10).

pub mod controlplane;
pub mod failover;
pub mod forward;
pub mod lab;
pub mod node;
pub mod nodeport;
pub mod pods;
pub mod real;
pub mod real_failover;
pub mod routes;

pub use controlplane::ControlPlane;
pub use lab::{KubeCluster, KubeLab, KubeNode};
