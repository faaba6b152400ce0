//! The `TunnelEndpoint` custom resource (group `net.liqo.io`, version `v1alpha1`): one per
//! foreign cluster. Its spec is [`PeerConfig`], the peer of the standalone config; the gateway
//! writes the status. `deploy/base/crds/` holds the CRD generated from these types.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::config::{Endpoint, Remapped};

/// The annotation on the gateway's Lease naming the holder's node. The route agents route to
/// that node from the write that acquires the Lease on.
pub const LEASE_NODE_ANNOTATION: &str = "liqonet.liqo.io/node";

pub use crate::config::{PeerConfig, TunnelEndpoint};
use crate::{Cidr, Key};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    Pending,
    Connecting,
    Connected,
    Error,
}

/// What the active gateway reports about one foreign cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TunnelEndpointStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Each network with the prefix actually used for it (`auto` resolved; kept across restarts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayStatus>,
    /// RFC 3339 time of the latest completed handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake: Option<String>,
    #[serde(default)]
    pub rx_bytes: u64,
    #[serde(default)]
    pub tx_bytes: u64,
    /// Round trips of the in-tunnel probes over the last minute (as Submariner's `latencyRTT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyStatus>,
}

/// Round-trip statistics of the in-tunnel probes, as durations (`"1.234ms"`), and their loss.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencyStatus {
    pub last: String,
    pub min: String,
    pub average: String,
    pub max: String,
    pub std_dev: String,
    /// Unanswered probes, as a percentage (`"0.0%"`).
    pub loss: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    pub cidr: Cidr,
    pub remapped: Cidr,
}

/// The active gateway: where the foreign cluster's traffic enters this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    pub node_name: String,
    #[serde(rename = "nodeIP")]
    pub node_ip: String,
}

fn string_schema(description: &str, pattern: Option<&str>) -> Schema {
    match pattern {
        Some(p) => json_schema!({ "type": "string", "description": description, "pattern": p }),
        None => json_schema!({ "type": "string", "description": description }),
    }
}

impl JsonSchema for Cidr {
    fn schema_name() -> Cow<'static, str> {
        "Cidr".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "an IPv4 or IPv6 prefix without host bits, as 10.244.0.0/16",
            Some(r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"),
        )
    }
}

impl JsonSchema for Key {
    fn schema_name() -> Cow<'static, str> {
        "Key".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "a WireGuard key: 32 bytes in base64",
            Some(r"^[A-Za-z0-9+/]{43}=$"),
        )
    }
}

impl JsonSchema for Endpoint {
    fn schema_name() -> Cow<'static, str> {
        "Endpoint".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema("HOST:PORT, an IPv6 host in brackets", None)
    }
}

impl JsonSchema for Remapped {
    fn schema_name() -> Cow<'static, str> {
        "Remapped".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "\"auto\", or a prefix of the same length as cidr",
            Some(r"^(auto|[0-9a-fA-F:.]+/[0-9]{1,3})$"),
        )
    }
}

/// The CRD as YAML, as `deploy/base/crds/` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let header = "# Generated from liqonet-proto's types by `liqonet-gateway crd`; do not edit.\n";
    format!(
        "{header}{}",
        serde_yaml::to_string(&TunnelEndpoint::crd()).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_crds_match_the_types() {
        // kustomize's and the Helm chart's: both generated from the types, so they cannot differ.
        for (path, checked_in) in [
            (
                "deploy/base/crds/tunnelendpoints.net.liqo.io.yaml",
                include_str!("../../deploy/base/crds/tunnelendpoints.net.liqo.io.yaml"),
            ),
            (
                "deploy/helm/liqonet/crds/tunnelendpoints.net.liqo.io.yaml",
                include_str!("../../deploy/helm/liqonet/crds/tunnelendpoints.net.liqo.io.yaml"),
            ),
        ] {
            assert!(
                checked_in == crd_yaml(),
                "{path} is stale: regenerate it with `cargo run -p liqonet-gateway -- crd > {path}`"
            );
        }
    }

    #[test]
    fn a_tunnel_endpoint_round_trips() {
        let text = "apiVersion: net.liqo.io/v1alpha1\nkind: TunnelEndpoint\nmetadata: {name: foreign, namespace: liqonet}\nspec:\n  clusterID: foreign\n  publicKey: yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n  endpoint: 192.0.2.2:51840\n  networks:\n    - {cidr: 10.244.0.0/16, remapped: auto}\nstatus:\n  phase: Connected\n  networks: [{cidr: 10.244.0.0/16, remapped: 10.0.0.0/16}]\n  gateway: {nodeName: gw, nodeIP: 172.20.0.10}\n  rxBytes: 5\n  txBytes: 7\n";
        let te: TunnelEndpoint = serde_yaml::from_str(text).unwrap();
        assert_eq!(te.spec.networks[0].remapped, Some(Remapped::Auto));
        let status = te.status.clone().unwrap();
        assert_eq!(status.phase, Some(Phase::Connected));
        assert_eq!(status.networks[0].remapped.to_string(), "10.0.0.0/16");
        let back: TunnelEndpoint =
            serde_yaml::from_str(&serde_yaml::to_string(&te).unwrap()).unwrap();
        assert_eq!(back.status, te.status);
    }
}
