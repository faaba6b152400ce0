//! `peering-info`, `peer add`, `peer remove` with `--kubernetes`: the same exchange as in
//! standalone mode, read from and written to the cluster. The local settings come from the
//! ConfigMap the gateway's environment is made from, the public key from the keys Secret, the
//! endpoint from the gateway Service; a peer becomes a TunnelEndpoint.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret, Service};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use liqonet_proto::config::{Endpoint, GatewayConfig};
use liqonet_proto::crd::TunnelEndpoint;
use liqonet_proto::peering::PeeringInfo;

use super::key_secret;
use super::settings::KubeSettings;
use crate::keys::public_of;
use crate::peering::{describe, render};

/// The label of the nodes that may run the gateway.
pub const GATEWAY_NODE_LABEL: &str = "liqonet.liqo.io/gateway";

/// Where the gateway's resources are.
#[derive(Debug, Clone)]
pub struct Names {
    pub namespace: String,
    pub config_map: String,
    pub secret: String,
    pub service: String,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            namespace: "liqonet".into(),
            config_map: "liqonet-gateway".into(),
            secret: "liqonet-gateway-keys".into(),
            service: "liqonet-gateway".into(),
        }
    }
}

async fn local(
    client: &Client,
    names: &Names,
) -> anyhow::Result<(GatewayConfig, liqonet_proto::Key)> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &names.namespace)
        .get(&names.config_map)
        .await
        .with_context(|| format!("ConfigMap {}/{}", names.namespace, names.config_map))?;
    let vars: BTreeMap<String, String> = cm.data.unwrap_or_default();
    let config = KubeSettings::from_env_map(&vars)
        .map_err(|e| anyhow!("ConfigMap {}: {e}", names.config_map))?
        .to_config()
        .map_err(|e| anyhow!("ConfigMap {}:\n{e}", names.config_map))?;
    let secrets = Api::<Secret>::namespaced(client.clone(), &names.namespace);
    let key = key_secret::read(&secrets, &names.secret)
        .await?
        .ok_or_else(|| {
            anyhow!(
                "Secret {}/{} does not exist yet: the gateway creates it on its first start",
                names.namespace,
                names.secret
            )
        })?;
    Ok((config, key))
}

/// How foreign clusters reach the gateway Service: a load balancer's address, or a gateway
/// node's address with the node port.
async fn service_endpoint(client: &Client, names: &Names) -> anyhow::Result<Endpoint> {
    let svc = Api::<Service>::namespaced(client.clone(), &names.namespace)
        .get(&names.service)
        .await
        .with_context(|| format!("Service {}/{}", names.namespace, names.service))?;
    let spec = svc.spec.unwrap_or_default();
    let port = spec.ports.unwrap_or_default().into_iter().next();
    let ingress = svc
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .and_then(|i| i.into_iter().next());
    if let (Some(ingress), Some(port)) = (ingress, &port) {
        let host = ingress.ip.or(ingress.hostname);
        if let Some(host) = host {
            let port = u16::try_from(port.port).unwrap_or(0);
            return endpoint_of(&host, port);
        }
    }
    let node_port = port
        .and_then(|p| p.node_port)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| anyhow!("Service {} has neither a load balancer address nor a node port; pass --endpoint HOST:PORT", names.service))?;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{GATEWAY_NODE_LABEL}=true")))
        .await
        .context("listing the gateway nodes")?;
    let address = nodes
        .items
        .iter()
        .filter_map(|n| n.status.as_ref()?.addresses.as_ref())
        .find_map(|addrs| {
            let of = |t: &str| addrs.iter().find(|a| a.type_ == t).map(|a| a.address.clone());
            of("ExternalIP").or_else(|| of("InternalIP"))
        })
        .ok_or_else(|| anyhow!("no node labelled {GATEWAY_NODE_LABEL}=true has an address; pass --endpoint HOST:PORT"))?;
    endpoint_of(&address, node_port)
}

fn endpoint_of(host: &str, port: u16) -> anyhow::Result<Endpoint> {
    let text = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    text.parse()
        .map_err(|m: String| anyhow!("endpoint {text}: {m}"))
}

/// This cluster's peering information, as YAML.
pub async fn info(
    client: &Client,
    names: &Names,
    endpoint: Option<&str>,
) -> anyhow::Result<String> {
    let (config, key) = local(client, names).await?;
    if config.local_networks.is_empty() {
        bail!(
            "LIQONET_LOCAL_NETWORKS is empty in ConfigMap {}: the cluster would export nothing",
            names.config_map
        );
    }
    let endpoint = match endpoint {
        Some(e) => e.parse().map_err(|m: String| anyhow!("--endpoint: {m}"))?,
        None => service_endpoint(client, names).await?,
    };
    render(&PeeringInfo::of(&config, public_of(&key), Some(endpoint)))
}

/// Creates the TunnelEndpoint for the cluster `info` describes; returns what was added.
pub async fn add(client: &Client, names: &Names, info: &PeeringInfo) -> anyhow::Result<String> {
    let (mut config, key) = local(client, names).await?;
    let api = Api::<TunnelEndpoint>::namespaced(client.clone(), &names.namespace);
    config.peers = api
        .list(&ListParams::default())
        .await
        .context("listing the TunnelEndpoints")?
        .items
        .into_iter()
        .map(|t| t.spec)
        .collect();
    let peer = info
        .as_peer_of(&config, &public_of(&key))
        .map_err(|e| anyhow!("cannot add cluster {:?}: {e}", info.cluster_id))?;
    let te = TunnelEndpoint {
        metadata: ObjectMeta {
            name: Some(peer.cluster_id.clone()),
            namespace: Some(names.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: peer,
        status: None,
    };
    match api.create(&PostParams::default(), &te).await {
        Ok(_) => Ok(describe(&te.spec)),
        Err(kube::Error::Api(s)) if s.code == 409 => bail!(
            "TunnelEndpoint {}/{} already exists: remove it first (peer remove {})",
            names.namespace,
            info.cluster_id,
            info.cluster_id
        ),
        Err(e) => Err(e).context("creating the TunnelEndpoint"),
    }
}

/// Deletes the TunnelEndpoint of `cluster_id` (the gateway removes the peer, then the object goes).
pub async fn remove(client: &Client, names: &Names, cluster_id: &str) -> anyhow::Result<()> {
    let api = Api::<TunnelEndpoint>::namespaced(client.clone(), &names.namespace);
    match api.delete(cluster_id, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            bail!("no TunnelEndpoint {}/{cluster_id}", names.namespace)
        }
        Err(e) => Err(e).context("deleting the TunnelEndpoint"),
    }
}

/// Deletes every TunnelEndpoint in the namespace (what `helm uninstall` does first, while the
/// gateways still run to release their finalizers) and, with `wait`, waits up to that long
/// until they are gone. Returns their names.
pub async fn remove_all(
    client: &Client,
    names: &Names,
    wait: Option<std::time::Duration>,
) -> anyhow::Result<Vec<String>> {
    let api = Api::<TunnelEndpoint>::namespaced(client.clone(), &names.namespace);
    let listed = api
        .list(&ListParams::default())
        .await
        .context("listing the TunnelEndpoints")?;
    let mut removed = Vec::new();
    for te in listed {
        let Some(name) = te.metadata.name else {
            continue;
        };
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => removed.push(name),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting TunnelEndpoint {name}")),
        }
    }
    if let Some(limit) = wait {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = api
                .list(&ListParams::default())
                .await
                .context("listing the TunnelEndpoints")?;
            if left.items.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let names: Vec<String> = left
                    .items
                    .into_iter()
                    .filter_map(|t| t.metadata.name)
                    .collect();
                bail!(
                    "TunnelEndpoints still there after {limit:?} (their finalizers wait for a running gateway): {}",
                    names.join(", ")
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
    Ok(removed)
}
