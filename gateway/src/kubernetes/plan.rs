//! From the TunnelEndpoints to the engine's peers (pure).
//!
//! The endpoints become the `peers` of a gateway config built from the local settings, so
//! Kubernetes mode validates and allocates exactly as standalone mode does. One bad endpoint does
//! not take the others down: it is set aside with its error (which its status reports) and the
//! rest are planned again. Between two that conflict, the older one keeps working.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::{Resource, ResourceExt};
use std::net::SocketAddr;

use liqonet_proto::config::{ConfigErrors, Endpoint, GatewayConfig, Remapped};
use liqonet_proto::crd::{NetworkStatus, TunnelEndpoint};
use liqonet_proto::ipam::IpamState;

use crate::engine::{Network, PeerSpec};

/// The gateway's finalizer: deleting a TunnelEndpoint first removes its peer.
pub const FINALIZER: &str = "net.liqo.io/liqonet-gateway";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied, with the prefix home pods use for each network.
    Applied(Vec<NetworkStatus>),
    Invalid(String),
}

#[derive(Debug, Default)]
pub struct Plan {
    pub peers: Vec<PeerSpec>,
    /// By TunnelEndpoint name.
    pub outcomes: BTreeMap<String, Outcome>,
}

/// The endpoints the gateway carries: holding its finalizer and not being deleted.
fn active(endpoints: &[Arc<TunnelEndpoint>]) -> Vec<Arc<TunnelEndpoint>> {
    let mut v: Vec<_> = endpoints
        .iter()
        .filter(|t| {
            t.meta().deletion_timestamp.is_none() && t.finalizers().iter().any(|f| f == FINALIZER)
        })
        .cloned()
        .collect();
    v.sort_by(|a, b| {
        (
            a.meta().creation_timestamp.as_ref().map(|t| t.0),
            a.name_any(),
        )
            .cmp(&(
                b.meta().creation_timestamp.as_ref().map(|t| t.0),
                b.name_any(),
            ))
    });
    v
}

/// The IPAM choices recorded in the endpoints' status (only for networks still `auto`).
fn recorded(endpoints: &[Arc<TunnelEndpoint>]) -> IpamState {
    let mut state = IpamState::default();
    for t in endpoints {
        let Some(status) = &t.status else { continue };
        for n in &t.spec.networks {
            if n.remapped != Some(Remapped::Auto) {
                continue;
            }
            if let Some(s) = status.networks.iter().find(|s| s.cidr == n.cidr) {
                state.set(&t.spec.cluster_id, n.cidr, s.remapped);
            }
        }
    }
    state
}

/// Index of the peer an error path such as `peers[3].networks[0].cidr` is about.
fn peer_index(path: &str) -> Option<usize> {
    path.strip_prefix("peers[")?.split(']').next()?.parse().ok()
}

/// Sets aside every endpoint an error names; false if an error names none (a local problem).
fn set_aside(
    errors: ConfigErrors,
    candidates: &mut Vec<Arc<TunnelEndpoint>>,
    outcomes: &mut BTreeMap<String, Outcome>,
) -> bool {
    let mut bad: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for e in errors.0 {
        let Some(i) = peer_index(&e.path) else {
            return false;
        };
        // `peers[3].networks[0].cidr` is the endpoint's `spec.networks[0].cidr`.
        let field = match e.path.split_once('.') {
            Some((_, f)) => format!("spec.{f}"),
            None => "spec".into(),
        };
        bad.entry(i)
            .or_default()
            .push(format!("{field}: {}", e.message));
    }
    for (i, messages) in bad.iter().rev() {
        if *i < candidates.len() {
            let t = candidates.remove(*i);
            outcomes.insert(t.name_any(), Outcome::Invalid(messages.join("; ")));
        }
    }
    !bad.is_empty()
}

/// Plans the peers; `resolve` gives an endpoint's address (host names from the resolver's cache:
/// a name not resolved yet leaves the peer without an endpoint, answering only).
pub fn plan(
    local: &GatewayConfig,
    endpoints: &[Arc<TunnelEndpoint>],
    resolve: &impl Fn(&Endpoint) -> Result<SocketAddr, String>,
) -> Plan {
    let mut outcomes = BTreeMap::new();
    let mut candidates = active(endpoints);
    let state = recorded(&candidates);
    loop {
        let mut config = local.clone();
        config.peers = candidates.iter().map(|t| t.spec.clone()).collect();
        let resolved = config
            .validate()
            .and_then(|()| config.resolve_remapped(&state).map(|(r, _)| r));
        let remapped = match resolved {
            Ok(r) => r,
            Err(errors) => {
                if set_aside(errors.clone(), &mut candidates, &mut outcomes) {
                    continue;
                }
                for t in candidates.drain(..) {
                    outcomes.insert(
                        t.name_any(),
                        Outcome::Invalid(format!("local settings: {errors}")),
                    );
                }
                return Plan {
                    peers: Vec::new(),
                    outcomes,
                };
            }
        };
        let mut peers = Vec::with_capacity(candidates.len());
        for (t, remapped) in candidates.iter().zip(remapped) {
            let endpoint = match t.spec.endpoint.as_ref().map(resolve).transpose() {
                Ok(e) => e,
                Err(m) => {
                    tracing::warn!(endpoint = %t.name_any(), "spec.endpoint: {m}; the peer only answers until it resolves");
                    None
                }
            };
            let networks: Vec<Network> = t
                .spec
                .networks
                .iter()
                .zip(remapped)
                .map(|(n, r)| Network {
                    cidr: n.cidr,
                    remapped: r,
                })
                .collect();
            outcomes.insert(
                t.name_any(),
                Outcome::Applied(
                    networks
                        .iter()
                        .map(|n| NetworkStatus {
                            cidr: n.cidr,
                            remapped: n.remapped,
                        })
                        .collect(),
                ),
            );
            peers.push(PeerSpec {
                name: t.spec.cluster_id.clone(),
                public_key: t.spec.public_key,
                endpoint,
                persistent_keepalive: t.spec.persistent_keepalive,
                networks,
            });
        }
        return Plan { peers, outcomes };
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use liqonet_proto::crd::TunnelEndpointStatus;

    pub fn resolve(e: &Endpoint) -> Result<SocketAddr, String> {
        match e {
            Endpoint::Addr(a) => Ok(*a),
            Endpoint::Host(h, _) => Err(format!("{h} is not resolved")),
        }
    }

    pub fn local() -> GatewayConfig {
        GatewayConfig::from_yaml(
            "clusterID: home\nprivateKeyFile: secret/keys\nlocalNetworks: [10.244.0.0/16, fd10:244::/56]\nipam: {pools: [10.0.0.0/8, fd00::/8]}\n",
        )
        .unwrap()
    }

    /// A TunnelEndpoint as the API would return it, holding the finalizer.
    pub fn endpoint(name: &str, key: u8, networks: &str, created: i64) -> TunnelEndpoint {
        let key = liqonet_proto::Key([key; 32]).to_base64();
        let text = format!(
            "apiVersion: net.liqo.io/v1alpha1\nkind: TunnelEndpoint\nmetadata:\n  name: {name}\n  namespace: liqonet\n  uid: uid-{name}\n  resourceVersion: \"1\"\n  creationTimestamp: \"2026-01-01T00:00:{created:02}Z\"\n  finalizers: [{FINALIZER}]\nspec:\n  clusterID: {name}\n  publicKey: {key}\n  endpoint: 192.0.2.{created}:51840\n  networks: {networks}\n"
        );
        serde_yaml::from_str(&text).unwrap()
    }

    fn applied(p: &Plan, name: &str) -> Vec<String> {
        match &p.outcomes[name] {
            Outcome::Applied(n) => n.iter().map(|n| n.remapped.to_string()).collect(),
            Outcome::Invalid(m) => panic!("{name} is invalid: {m}"),
        }
    }

    #[test]
    fn endpoints_become_peers_with_auto_resolved() {
        let a = endpoint("a", 1, "[{cidr: 10.244.0.0/16, remapped: auto}]", 1);
        let b = endpoint("b", 2, "[{cidr: 10.245.0.0/16}]", 2);
        let p = plan(&local(), &[Arc::new(b), Arc::new(a)], &resolve);
        assert_eq!(p.peers.len(), 2);
        assert_eq!(p.peers[0].name, "a", "older first");
        assert_eq!(applied(&p, "a"), ["10.0.0.0/16"]);
        assert_eq!(applied(&p, "b"), ["10.245.0.0/16"]);
    }

    #[test]
    fn the_choice_recorded_in_status_is_kept() {
        let mut a = endpoint("a", 1, "[{cidr: 10.244.0.0/16, remapped: auto}]", 5);
        a.status = Some(TunnelEndpointStatus {
            networks: vec![NetworkStatus {
                cidr: "10.244.0.0/16".parse().unwrap(),
                remapped: "10.7.0.0/16".parse().unwrap(),
            }],
            ..TunnelEndpointStatus::default()
        });
        // A newer, earlier-sorted peer cannot take it.
        let b = endpoint("b", 2, "[{cidr: 10.244.0.0/16, remapped: auto}]", 1);
        let p = plan(&local(), &[Arc::new(a), Arc::new(b)], &resolve);
        assert_eq!(applied(&p, "a"), ["10.7.0.0/16"]);
        assert_eq!(applied(&p, "b"), ["10.0.0.0/16"]);
    }

    #[test]
    fn a_bad_endpoint_is_set_aside_and_the_rest_applied() {
        let a = endpoint("a", 1, "[{cidr: 10.244.0.0/16, remapped: auto}]", 1);
        // Overlaps home without remapping.
        let bad = endpoint("bad", 2, "[{cidr: 10.244.0.0/16}]", 2);
        // Same key as a: the newer one loses.
        let dup = endpoint("dup", 1, "[{cidr: 10.250.0.0/16}]", 3);
        let p = plan(
            &local(),
            &[Arc::new(a), Arc::new(bad), Arc::new(dup)],
            &resolve,
        );
        assert_eq!(p.peers.len(), 1);
        assert_eq!(applied(&p, "a"), ["10.0.0.0/16"]);
        for name in ["bad", "dup"] {
            match &p.outcomes[name] {
                Outcome::Invalid(m) => assert!(m.starts_with("spec."), "{name}: {m}"),
                o => panic!("{name}: {o:?}"),
            }
        }
    }

    #[test]
    fn deleted_or_unfinalized_endpoints_are_not_peers() {
        let mut gone = endpoint("gone", 1, "[{cidr: 10.245.0.0/16}]", 1);
        gone.metadata.deletion_timestamp = gone.metadata.creation_timestamp.clone();
        let mut fresh = endpoint("fresh", 2, "[{cidr: 10.246.0.0/16}]", 2);
        fresh.metadata.finalizers = None;
        let p = plan(&local(), &[Arc::new(gone), Arc::new(fresh)], &resolve);
        assert!(p.peers.is_empty());
        assert!(p.outcomes.is_empty());
    }
}
