//! `liqonet-gateway status --kubernetes`: every TunnelEndpoint of the cluster with what the
//! active gateway reported (phase, gateway node, latency, handshake), as a table or as JSON.

use kube::api::ListParams;
use kube::Api;
use liqonet_proto::crd::{Phase, TunnelEndpoint};

/// Prints the TunnelEndpoints of `namespace`; whether every one is connected.
pub async fn show_endpoints(
    client: &kube::Client,
    namespace: &str,
    json: bool,
) -> anyhow::Result<bool> {
    let api: Api<TunnelEndpoint> = Api::namespaced(client.clone(), namespace);
    let list = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        api.list(&ListParams::default()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the API server did not answer within 10 s"))?
    .map_err(|e| anyhow::anyhow!("cannot list TunnelEndpoints in {namespace:?}: {e}"))?;
    let connected = |t: &TunnelEndpoint| {
        matches!(
            t.status.as_ref().and_then(|s| s.phase.as_ref()),
            Some(Phase::Connected)
        )
    };
    let all = list.items.iter().all(connected);
    if json {
        let rows: Vec<_> = list
            .items
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.metadata.name,
                    "clusterID": t.spec.cluster_id,
                    "status": t.status,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(all);
    }
    println!(
        "{:<20} {:<11} {:<16} {:<11} {:<9} {:<22} MESSAGE",
        "NAME", "PHASE", "GATEWAY", "LATENCY", "LOSS", "HANDSHAKE"
    );
    for t in &list.items {
        let s = t.status.clone().unwrap_or_default();
        let phase = s.phase.map_or("-".to_string(), |p| format!("{p:?}"));
        let (latency, loss) = s
            .latency
            .map_or(("-".to_string(), "-".to_string()), |l| (l.average, l.loss));
        println!(
            "{:<20} {:<11} {:<16} {:<11} {:<9} {:<22} {}",
            t.metadata.name.as_deref().unwrap_or("-"),
            phase,
            s.gateway.map_or("-".to_string(), |g| g.node_name),
            latency,
            loss,
            s.last_handshake.unwrap_or_else(|| "-".into()),
            s.message.unwrap_or_default()
        );
    }
    Ok(all)
}
