//! The route agent's watchers on kube's mock service: TunnelEndpoint, Node and Lease lists and
//! watch events become agent configurations, and only requests the RBAC manifests grant are made.

use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use liqonet_lab::kube_mock::{pair, ApiServer, Call};
use liqonet_proto::rbac;
use liqonet_route_agent::agent_loop::Update;
use liqonet_route_agent::kubernetes::{watch, KubeArgs};
use serde_json::{json, Value};

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    args: KubeArgs,
}

const TEPS: &str = "/apis/net.liqo.io/v1alpha1/namespaces/liqonet/tunnelendpoints";
const NODES: &str = "/api/v1/nodes";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/liqonet/leases";

/// The gateways' Lease, held by the replica on `node`.
fn lease(node: &str, rv: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "liqonet-gateway", "namespace": "liqonet", "resourceVersion": rv,
                        "annotations": {"liqonet.liqo.io/node": node}},
           "spec": {"holderIdentity": format!("liqonet-gateway-{node}")}})
}

fn endpoint(gateway: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "net.liqo.io/v1alpha1", "kind": "TunnelEndpoint",
        "metadata": {"name": "foreign", "namespace": "liqonet", "resourceVersion": rv},
        "spec": {"clusterID": "foreign", "publicKey": liqonet_proto::Key([1; 32]).to_base64(),
                 "networks": [{"cidr": "10.244.0.0/16", "remapped": "auto"}]},
        "status": {"phase": "Connected", "networks": [{"cidr": "10.244.0.0/16", "remapped": "10.0.0.0/16"}],
                   "gateway": {"nodeName": gateway, "nodeIP": "172.20.0.1"}}
    })
}

fn node(name: &str, ip: &str, cidr: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "resourceVersion": "1"},
           "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

/// Answers a watch with these events, then ends the stream (the watcher watches again).
fn events(call: Call, events: &[Value]) {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    call.reply_raw(200, body);
}

fn config(rx: &mpsc::Receiver<Update>) -> liqonet_proto::agent::AgentConfig {
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Update::Config(Some(c))) => c,
        Ok(Update::Config(None)) => panic!("no gateway"),
        Ok(Update::Invalid(e)) => panic!("invalid: {e}"),
        Err(e) => panic!("no update: {e}"),
    }
}

/// Serves the three lists, in whatever order they come.
async fn serve_lists(server: &mut ApiServer) {
    for _ in 0..3 {
        let call = server.next().await;
        assert_eq!(call.method, "GET");
        assert!(!call.query.contains("watch=true"), "{}", call.query);
        let body = if call.path == TEPS {
            list("TunnelEndpointList", vec![endpoint("gw", "1")])
        } else if call.path == LEASES {
            // The one Lease RBAC grants, by name.
            assert!(
                call.query
                    .contains("fieldSelector=metadata.name%3Dliqonet-gateway"),
                "{}",
                call.query
            );
            // Not there yet (an older gateway, or none elected): the status decides.
            list("LeaseList", vec![])
        } else {
            assert_eq!(call.path, NODES);
            list(
                "NodeList",
                vec![
                    node("gw", "172.20.0.1", "10.244.1.0/24"),
                    node("w1", "172.20.0.2", "10.244.2.0/24"),
                    node("w2", "172.20.0.3", "10.244.3.0/24"),
                ],
            )
        };
        call.reply(200, body);
    }
}

#[tokio::test]
async fn watched_endpoints_and_nodes_drive_the_config_and_a_gateway_move() {
    let (client, mut server) = pair(rbac::ROUTE_AGENT, "liqonet");
    let args = Wrapper::parse_from(["agent"]).args;
    let (tx, rx) = mpsc::channel();
    let (wake_rx, wake_tx) = UnixStream::pair().unwrap();
    let task = tokio::spawn(watch(client, args, "w1".into(), tx, wake_tx));
    serve_lists(&mut server).await;
    let first = tokio::task::spawn_blocking({
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        move || {
            let c = config(&rx.lock().unwrap());
            (c, rx)
        }
    });
    // Then the three watches; the endpoint's watch reports the gateway moving to w2, and later
    // the Lease's watch a replica on w1 taking over (before any status says so).
    let mut moved = false;
    let mut lease_watch = None;
    for _ in 0..3 {
        let call = server.next().await;
        assert!(
            call.query.contains("watch=true"),
            "{} {}",
            call.path,
            call.query
        );
        if call.path == TEPS {
            events(
                call,
                &[json!({"type": "MODIFIED", "object": endpoint("w2", "2")})],
            );
            moved = true;
        } else if call.path == LEASES {
            lease_watch = Some(call);
        } else {
            // Keep the node watch open: answer later (never, here).
            std::mem::forget(call);
        }
    }
    assert!(moved);
    let (c, rx) = first.await.unwrap();
    assert_eq!(c.gateway_node, "gw");
    assert_eq!(c.remote_networks, ["10.0.0.0/16".parse().unwrap()]);
    assert_eq!(c.nodes.len(), 3);
    let moved = tokio::task::spawn_blocking({
        let rx = rx.clone();
        move || config(&rx.lock().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(moved.gateway_node, "w2");
    events(
        lease_watch.expect("a Lease watch"),
        &[json!({"type": "ADDED", "object": lease("w1", "3")})],
    );
    let taken = tokio::task::spawn_blocking(move || config(&rx.lock().unwrap()))
        .await
        .unwrap();
    assert_eq!(taken.gateway_node, "w1");
    let mut b = [0u8; 8];
    assert!(
        std::io::Read::read(&mut &wake_rx, &mut b).unwrap() > 0,
        "the loop was woken"
    );
    task.abort();
    assert!(server
        .calls
        .iter()
        .all(|c| c.contains("tunnelendpoints") || c.contains("nodes") || c.contains("leases")));
}
