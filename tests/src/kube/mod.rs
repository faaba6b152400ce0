//! The Kubernetes lab: clusters of network namespaces, each with a real control plane
//! ([`controlplane`]: etcd, kube-apiserver, kube-scheduler, kube-controller-manager) and real
//! nodes ([`node`]: containerd, kubelet, kube-proxy), liqonet installed from `deploy/` with
//! kubectl ([`install`]) and run by the cluster from the project's image ([`lab`]).
//!
//! ```text
//!  cluster home (node network 172.20.0.0/24, router .1)    cluster foreign (its own 172.20.0.0/24)
//!  cp: etcd, kube-apiserver, scheduler, KCM (172.20.0.2)    cp
//!  gw1 (.11) gw2 (.12): gateway replica, route agent,       gw1 gw2
//!                       a test pod (kubelet, containerd)
//!  w1 (.21): route agent, a test pod                        w1
//!  gw1, gw2 ── WAN 192.168.250.0/24 ── gw1, gw2
//! ```
//! Both clusters number their pods from 10.244.0.0/16 (a /24 per node, from the Node's
//! podCIDR) and their Services from 10.96.0.0/12.

pub mod controlplane;
pub mod failover;
pub mod forward;
pub mod install;
pub mod lab;
pub mod node;
pub mod routes;

pub use controlplane::ControlPlane;
pub use lab::{KubeCluster, KubeLab};
