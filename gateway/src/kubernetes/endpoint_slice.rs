//! Where the gateway Service sends the foreign clusters' datagrams: the Service has no selector,
//! and the leader writes its one EndpointSlice (named after the Service) with its own node's
//! address. So every healthy replica can be Ready (a DaemonSet rollout needs that), while
//! kube-proxy still sends the node port to the leader alone. docs/failover.md says why this way.
//!
//! The leader writes the slice only once its data plane is up and while it leads; it withdraws
//! it first when it stops leading. A replica that starts withdraws any slice naming its own node
//! (left by an earlier run it no longer leads), with the slice's `resourceVersion` as a
//! precondition, so it never removes what a newer leader wrote.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::Api;

/// The label that ties a slice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label that tells the EndpointSlice controller (and readers) who manages the slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "gateway.liqonet.liqo.io";
/// The Service's port name, which kube-proxy matches against the slice's.
pub const PORT_NAME: &str = "wireguard";

/// The leader's endpoint, as the slice names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub node_name: String,
    pub node_ip: String,
    pub pod_name: String,
    pub namespace: String,
    pub port: u16,
}

/// The slice for `service` naming `leader` alone.
pub fn slice(service: &str, leader: &Leader) -> EndpointSlice {
    let labels = BTreeMap::from([
        (SERVICE_NAME_LABEL.to_string(), service.to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ]);
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(service.to_string()),
            namespace: Some(leader.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        address_type: if leader.node_ip.contains(':') {
            "IPv6".into()
        } else {
            "IPv4".into()
        },
        endpoints: vec![Endpoint {
            addresses: vec![leader.node_ip.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: Some(leader.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(leader.pod_name.clone()),
                namespace: Some(leader.namespace.clone()),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some(PORT_NAME.into()),
            port: Some(i32::from(leader.port)),
            protocol: Some("UDP".into()),
            ..EndpointPort::default()
        }]),
    }
}

/// Whether `slice` sends anything to `ip`.
pub fn names(slice: &EndpointSlice, ip: &str) -> bool {
    slice
        .endpoints
        .iter()
        .any(|e| e.addresses.iter().any(|a| a == ip))
}

/// The label value of the slices Kubernetes' own EndpointSlice controller made.
const CONTROLLER_MANAGED: &str = "endpointslice-controller.k8s.io";

/// Makes the slice name `leader` alone: created, or replaced over whatever it said (deleted and
/// made anew if its address type differs, which cannot change). Also removes the slices
/// Kubernetes' EndpointSlice controller made while the Service still had a selector (an
/// upgrade): that controller leaves them behind once the selector is gone, and kube-proxy would
/// go on sending part of the flows to whatever they named.
pub async fn publish(api: &Api<EndpointSlice>, service: &str, leader: &Leader) -> kube::Result<()> {
    let mut want = slice(service, leader);
    match api.get_opt(service).await? {
        Some(current)
            if current.endpoints == want.endpoints
                && current.ports == want.ports
                && current.metadata.labels == want.metadata.labels => {}
        Some(current) if current.address_type != want.address_type => {
            api.delete(service, &DeleteParams::default()).await?;
            api.create(&PostParams::default(), &want).await?;
        }
        Some(current) => {
            want.metadata.resource_version = current.metadata.resource_version;
            api.replace(service, &PostParams::default(), &want).await?;
        }
        None => {
            api.create(&PostParams::default(), &want).await?;
        }
    }
    let leftovers = ListParams::default().labels(&format!(
        "{SERVICE_NAME_LABEL}={service},{MANAGED_BY_LABEL}={CONTROLLER_MANAGED}"
    ));
    for old in api.list(&leftovers).await? {
        if let Some(name) = old.metadata.name.as_deref().filter(|n| *n != service) {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(
                    slice = name,
                    "removed an EndpointSlice the Service's old selector left"
                ),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Removes the slice if it names `ip` (ours), unless it changed since it was read. Returns
/// whether it was removed.
pub async fn withdraw(api: &Api<EndpointSlice>, service: &str, ip: &str) -> kube::Result<bool> {
    let Some(current) = api.get_opt(service).await? else {
        return Ok(false);
    };
    if !names(&current, ip) {
        return Ok(false);
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: current.metadata.resource_version.clone(),
            uid: current.metadata.uid.clone(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(service, &params).await {
        Ok(_) => Ok(true),
        // Changed meanwhile (a new leader wrote it) or already gone: not ours to remove.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(ip: &str) -> Leader {
        Leader {
            node_name: "gw1".into(),
            node_ip: ip.into(),
            pod_name: "liqonet-gateway-abcde".into(),
            namespace: "liqonet".into(),
            port: 51840,
        }
    }

    #[test]
    fn the_slice_names_the_leader_alone_for_the_service() {
        let s = slice("liqonet-gateway", &leader("172.20.0.11"));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["metadata"]["name"], "liqonet-gateway");
        assert_eq!(
            v["metadata"]["labels"]["kubernetes.io/service-name"],
            "liqonet-gateway"
        );
        assert_eq!(v["addressType"], "IPv4");
        assert_eq!(v["endpoints"][0]["addresses"][0], "172.20.0.11");
        assert_eq!(v["endpoints"][0]["nodeName"], "gw1");
        assert_eq!(v["endpoints"][0]["conditions"]["ready"], true);
        assert_eq!(
            v["endpoints"][0]["targetRef"]["name"],
            "liqonet-gateway-abcde"
        );
        assert_eq!(v["ports"][0]["name"], PORT_NAME);
        assert_eq!(v["ports"][0]["port"], 51840);
        assert_eq!(v["ports"][0]["protocol"], "UDP");
        assert_eq!(v["endpoints"].as_array().unwrap().len(), 1);
        assert!(names(&s, "172.20.0.11"));
        assert!(!names(&s, "172.20.0.12"));
        let s6 = slice("liqonet-gateway", &leader("fd00::11"));
        assert_eq!(s6.address_type, "IPv6");
    }
}
