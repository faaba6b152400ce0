//! The Kubernetes-mode controllers against a scripted API server (kube's mock-service approach):
//! each test awaits the exact requests the code sends, checks them and answers them. Peers go
//! to a real sans-IO engine, so "applied" means the engine has them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::Api;
use liqonet_gateway::engine::{Engine, PeerChanges, PeerSpec, PeerStats};
use liqonet_gateway::kubernetes::controller::{error_policy, reconcile, Context, Error, Peers};
use liqonet_gateway::kubernetes::lease::{campaign, Elector, Published, Timings};
use liqonet_gateway::kubernetes::plan::FINALIZER;
use liqonet_gateway::kubernetes::{key_secret, peering};
use liqonet_lab::kube_mock::{pair, ApiServer};
use liqonet_proto::config::GatewayConfig;
use liqonet_proto::crd::{GatewayStatus, TunnelEndpoint};
use liqonet_proto::rbac;
use liqonet_proto::Key;
use serde_json::{json, Value};

const TEPS: &str = "/apis/net.liqo.io/v1alpha1/namespaces/liqonet/tunnelendpoints";

/// The sans-IO engine as the controller's peer sink.
struct EnginePeers {
    engine: Mutex<Engine>,
    applied: Mutex<Vec<PeerChanges>>,
    /// Makes `apply` fail, as a data plane that stopped would.
    broken: std::sync::atomic::AtomicBool,
}

/// Shared between the controller's context and the test.
#[derive(Clone)]
struct Shared(Arc<EnginePeers>);

impl std::ops::Deref for Shared {
    type Target = EnginePeers;
    fn deref(&self) -> &EnginePeers {
        &self.0
    }
}

impl Peers for Shared {
    async fn apply(&self, peers: Vec<PeerSpec>) -> Result<PeerChanges, String> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("the data plane stopped".into());
        }
        let ch = self
            .engine
            .lock()
            .unwrap()
            .apply_peers(peers)
            .map_err(|e| e.to_string())?;
        self.applied.lock().unwrap().push(ch.clone());
        Ok(ch)
    }

    fn stats(&self) -> Vec<PeerStats> {
        let mut out = Vec::new();
        self.engine.lock().unwrap().peer_stats(&mut out);
        out
    }
}

fn local() -> GatewayConfig {
    GatewayConfig::from_yaml(
        "clusterID: home\nprivateKeyFile: secret/keys\nlocalNetworks: [10.244.0.0/16]\nipam: {pools: [10.0.0.0/8]}\n",
    )
    .unwrap()
}

fn endpoint(name: &str, key: u8, networks: Value, finalized: bool) -> Value {
    json!({
        "apiVersion": "net.liqo.io/v1alpha1", "kind": "TunnelEndpoint",
        "metadata": {
            "name": name, "namespace": "liqonet", "uid": format!("uid-{name}"),
            "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:01Z",
            "finalizers": if finalized { json!([FINALIZER]) } else { json!(null) },
        },
        "spec": {
            "clusterID": name, "publicKey": Key([key; 32]).to_base64(),
            "endpoint": "192.0.2.2:51840", "networks": networks,
        }
    })
}

fn te(v: &Value) -> Arc<TunnelEndpoint> {
    Arc::new(serde_json::from_value(v.clone()).unwrap())
}

struct Fixture {
    ctx: Arc<Context<Shared>>,
    peers: Shared,
    writer: Writer<TunnelEndpoint>,
    server: ApiServer,
}

fn fixture() -> Fixture {
    let (client, server) = pair(rbac::GATEWAY, "liqonet");
    let writer = Writer::<TunnelEndpoint>::default();
    let peers = Shared(Arc::new(EnginePeers {
        engine: Mutex::new(Engine::new(&Key([9; 32]), Vec::new(), 1420).unwrap()),
        applied: Mutex::new(Vec::new()),
        broken: Default::default(),
    }));
    let ctx = Arc::new(Context::new(
        Api::namespaced(client, "liqonet"),
        writer.as_reader(),
        local(),
        peers.clone(),
        GatewayStatus {
            node_name: "gw-1".into(),
            node_ip: "172.20.0.10".into(),
        },
        Duration::from_secs(10),
    ));
    Fixture {
        ctx,
        peers,
        writer,
        server,
    }
}

impl Fixture {
    fn store(&mut self, obj: &Arc<TunnelEndpoint>) {
        self.writer
            .apply_watcher_event(&watcher::Event::Apply((**obj).clone()));
    }

    /// Starts reconciling `obj`; the test answers the API on `self.server`, then awaits it.
    fn start(&self, obj: Arc<TunnelEndpoint>) -> tokio::task::JoinHandle<Result<Action, Error>> {
        tokio::spawn(reconcile(obj, self.ctx.clone()))
    }
}

/// Answers the next request, which must be a status write of `name`, with the stored object
/// carrying that status; returns the patch.
async fn answer_status(f: &mut Fixture, name: &str) -> Value {
    let call = f
        .server
        .expect("PATCH", &format!("{TEPS}/{name}/status"))
        .await;
    let body = call.body.clone();
    let stored = f
        .writer
        .as_reader()
        .get(&ObjectRef::new(name).within("liqonet"))
        .expect("the object is in the store");
    let mut obj = serde_json::to_value(&*stored).unwrap();
    obj["status"] = body["status"].clone();
    call.reply(200, obj);
    body
}

/// The status a PATCH to `/status` carries.
fn status_of(body: &Value) -> &Value {
    &body["status"]
}

#[tokio::test]
async fn create_adds_the_finalizer_then_applies_the_peer_and_writes_status() {
    let mut f = fixture();
    let created = endpoint(
        "a",
        1,
        json!([{"cidr": "10.244.0.0/16", "remapped": "auto"}]),
        false,
    );
    let obj = te(&created);
    f.store(&obj);
    let task = f.start(obj);
    let call = f.server.expect("PATCH", &format!("{TEPS}/a")).await;
    let ops = call.body.to_string();
    assert!(ops.contains("\"add\"") && ops.contains(FINALIZER), "{ops}");
    let mut with = created.clone();
    with["metadata"]["finalizers"] = json!([FINALIZER]);
    call.reply(200, with);
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    assert!(
        f.peers.applied.lock().unwrap().is_empty(),
        "not before the finalizer is on"
    );

    let obj = te(&endpoint(
        "a",
        1,
        json!([{"cidr": "10.244.0.0/16", "remapped": "auto"}]),
        true,
    ));
    f.store(&obj);
    let task = f.start(obj);
    let body = answer_status(&mut f, "a").await;
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(10))
    );
    assert_eq!(f.peers.applied.lock().unwrap()[0].added, ["a"]);
    let st = status_of(&body);
    assert_eq!(st["phase"], "Connecting");
    assert_eq!(
        st["networks"][0]["remapped"], "10.0.0.0/16",
        "auto resolved by IPAM"
    );
    assert_eq!(st["gateway"]["nodeName"], "gw-1");
    assert_eq!(st["gateway"]["nodeIP"], "172.20.0.10");
}

#[tokio::test]
async fn auto_is_resolved_once_and_kept_and_unchanged_status_is_not_rewritten() {
    let mut f = fixture();
    // As the gateway left it: the choice recorded in status.
    let mut a = endpoint(
        "a",
        1,
        json!([{"cidr": "10.244.0.0/16", "remapped": "auto"}]),
        true,
    );
    a["status"] = json!({"phase": "Connecting", "networks": [{"cidr": "10.244.0.0/16", "remapped": "10.9.0.0/16"}],
                         "gateway": {"nodeName": "gw-1", "nodeIP": "172.20.0.10"}, "rxBytes": 0, "txBytes": 0});
    // An older endpoint appears that also wants an auto prefix: it gets another one.
    let mut b = endpoint(
        "b",
        2,
        json!([{"cidr": "10.244.0.0/16", "remapped": "auto"}]),
        true,
    );
    b["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
    let (a, b) = (te(&a), te(&b));
    f.store(&a);
    f.store(&b);
    // a: nothing to write (same phase, networks, gateway, counters).
    let task = f.start(a.clone());
    f.server.expect_quiet(Duration::from_millis(200)).await;
    task.await.unwrap().unwrap();
    let task = f.start(b);
    let body = answer_status(&mut f, "b").await;
    task.await.unwrap().unwrap();
    assert_eq!(status_of(&body)["networks"][0]["remapped"], "10.0.0.0/16");
    // And a again: still the recorded prefix, still nothing to write.
    let task = f.start(a);
    f.server.expect_quiet(Duration::from_millis(200)).await;
    task.await.unwrap().unwrap();
    assert_eq!(
        f.peers.applied.lock().unwrap().len(),
        1,
        "one change: both added at once"
    );
}

#[tokio::test]
async fn a_spec_change_updates_the_peer_live() {
    let mut f = fixture();
    let v1 = te(&endpoint("a", 1, json!([{"cidr": "10.245.0.0/16"}]), true));
    let other = te(&endpoint("b", 2, json!([{"cidr": "10.246.0.0/16"}]), true));
    f.store(&v1);
    f.store(&other);
    let task = f.start(v1);
    answer_status(&mut f, "a").await;
    task.await.unwrap().unwrap();
    let v2 = te(&endpoint(
        "a",
        1,
        json!([{"cidr": "10.245.0.0/16"}, {"cidr": "10.247.0.0/16"}]),
        true,
    ));
    f.store(&v2);
    let task = f.start(v2);
    let body = answer_status(&mut f, "a").await;
    task.await.unwrap().unwrap();
    assert_eq!(status_of(&body)["networks"][1]["remapped"], "10.247.0.0/16");
    let applied = f.peers.applied.lock().unwrap().clone();
    assert_eq!(applied.len(), 2);
    assert_eq!(applied[1].updated, ["a"]);
    assert!(
        applied[1].added.is_empty() && applied[1].removed.is_empty(),
        "b untouched: {:?}",
        applied[1]
    );
}

#[tokio::test]
async fn delete_removes_the_peer_before_releasing_the_finalizer() {
    let mut f = fixture();
    let live = te(&endpoint("a", 1, json!([{"cidr": "10.245.0.0/16"}]), true));
    f.store(&live);
    let task = f.start(live);
    answer_status(&mut f, "a").await;
    task.await.unwrap().unwrap();
    assert_eq!(f.peers.stats().len(), 1);

    let mut deleting = endpoint("a", 1, json!([{"cidr": "10.245.0.0/16"}]), true);
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:01:00Z");
    let deleting_obj = te(&deleting);
    f.store(&deleting_obj);
    let task = f.start(deleting_obj);
    let call = f.server.expect("PATCH", &format!("{TEPS}/a")).await;
    // By the time the finalizer goes, the peer is gone.
    assert!(
        f.peers.stats().is_empty(),
        "peer still there when the finalizer is released"
    );
    let ops = call.body.to_string();
    assert!(ops.contains("\"remove\""), "{ops}");
    let mut gone = deleting.clone();
    gone["metadata"]["finalizers"] = json!(null);
    call.reply(200, gone);
    let r = task.await.unwrap().unwrap();
    assert_eq!(r, Action::await_change());
    assert_eq!(f.peers.applied.lock().unwrap()[1].removed, ["a"]);
}

#[tokio::test]
async fn api_errors_requeue_with_growing_backoff() {
    let mut f = fixture();
    let obj = te(&endpoint("a", 1, json!([{"cidr": "10.245.0.0/16"}]), true));
    f.store(&obj);
    let mut delays = Vec::new();
    for _ in 0..3 {
        let task = f.start(obj.clone());
        f.server
            .expect("PATCH", &format!("{TEPS}/a/status"))
            .await
            .fail(500, "InternalError");
        let err = task.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("status"), "{err}");
        delays.push(error_policy(obj.clone(), &err, f.ctx.clone()));
    }
    let requeue = |ms| Action::requeue(Duration::from_millis(ms));
    assert_eq!(delays, [requeue(500), requeue(1000), requeue(2000)]);
    // The peer was applied all along; a success resets the backoff.
    assert_eq!(f.peers.stats().len(), 1);
    let task = f.start(obj.clone());
    answer_status(&mut f, "a").await;
    task.await.unwrap().unwrap();
    let err = Error::Apply("x".into());
    assert_eq!(error_policy(obj, &err, f.ctx.clone()), requeue(500));
}

#[tokio::test]
async fn a_data_plane_failure_is_reported_as_pending_and_retried() {
    let mut f = fixture();
    f.peers
        .broken
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let obj = te(&endpoint("a", 1, json!([{"cidr": "10.245.0.0/16"}]), true));
    f.store(&obj);
    let task = f.start(obj.clone());
    let body = answer_status(&mut f, "a").await;
    assert_eq!(status_of(&body)["phase"], "Pending");
    let message = status_of(&body)["message"].as_str().unwrap().to_string();
    assert!(message.contains("the data plane stopped"), "{message}");
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(
        error_policy(obj, &err, f.ctx.clone()),
        Action::requeue(Duration::from_millis(500))
    );
}

#[tokio::test]
async fn the_key_secret_is_created_when_missing_and_reused_when_present() {
    let (client, mut server) = pair(rbac::GATEWAY, "liqonet");
    let api: Api<Secret> = Api::namespaced(client, "liqonet");
    const PATH: &str = "/api/v1/namespaces/liqonet/secrets";
    let created = Arc::new(Mutex::new(Value::Null));
    let seen = created.clone();
    let task = tokio::spawn({
        let api = api.clone();
        async move { key_secret::load_or_create(&api, "keys").await }
    });
    server
        .expect("GET", &format!("{PATH}/keys"))
        .await
        .fail(404, "NotFound");
    let call = server.expect("POST", PATH).await;
    *seen.lock().unwrap() = call.body.clone();
    let body = call.body.clone();
    call.reply(201, body);
    let key = task.await.unwrap().unwrap();
    let body = created.lock().unwrap().clone();
    let stored = body["data"][key_secret::PRIVATE_KEY]
        .as_str()
        .unwrap()
        .to_string();
    // Secret data is base64 of the key's own base64 text.
    let stored = String::from_utf8(base64_decode(&stored)).unwrap();
    assert_eq!(stored, key.to_base64());

    // Present: read, not created again.
    let task = tokio::spawn(async move { key_secret::load_or_create(&api, "keys").await });
    server
        .expect("GET", &format!("{PATH}/keys"))
        .await
        .reply(200, body);
    assert_eq!(task.await.unwrap().unwrap(), key);
    server.expect_quiet(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_bad_key_secret_is_refused_without_showing_it() {
    let (client, mut server) = pair(rbac::GATEWAY, "liqonet");
    let api: Api<Secret> = Api::namespaced(client, "liqonet");
    let task = tokio::spawn(async move { key_secret::load_or_create(&api, "keys").await });
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"},
                        "data": {"privateKey": "c2VjcmV0LXRleHQ="}});
    server
        .expect("GET", "/api/v1/namespaces/liqonet/secrets/keys")
        .await
        .reply(200, secret);
    let err = task.await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("data.privateKey") && err.contains("keys"),
        "{err}"
    );
    assert!(!err.contains("secret-text"), "{err}");
}

/// Short timings, so that the campaigns below run in a fraction of a second.
fn test_timings() -> Timings {
    Timings::new(
        Duration::from_secs(1),
        Duration::from_millis(500),
        Duration::from_millis(150),
    )
    .unwrap()
}

/// `identity` campaigning for Lease `gw` with [`test_timings`]; `quit` ends it.
fn start_campaign(
    identity: &str,
) -> (
    ApiServer,
    tokio::sync::watch::Receiver<bool>,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    start_campaign_with(identity, test_timings())
}

fn start_campaign_with(
    identity: &str,
    timings: Timings,
) -> (
    ApiServer,
    tokio::sync::watch::Receiver<bool>,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (client, server) = pair(rbac::GATEWAY, "liqonet");
    let (leader_tx, leader) = tokio::sync::watch::channel(false);
    let (quit_tx, mut quit) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(campaign(
        Api::<Lease>::namespaced(client, "liqonet"),
        "gw".into(),
        Elector::new(identity.into(), timings),
        Published {
            health: Some("192.0.2.1:9640".into()),
            node: Some("gw1".into()),
        },
        leader_tx,
        tokio::sync::watch::channel(false).0,
        async move {
            let _ = quit.wait_for(|q| *q).await;
        },
    ));
    (server, leader, quit_tx, task)
}

#[tokio::test]
async fn the_lease_is_created_renewed_and_released() {
    let (mut server, mut leader, quit_tx, task) = start_campaign("pod-a");
    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/liqonet/leases";
    server
        .expect("GET", &format!("{PATH}/gw"))
        .await
        .fail(404, "NotFound");
    let call = server.expect("POST", PATH).await;
    assert_eq!(call.body["spec"]["holderIdentity"], "pod-a");
    assert_eq!(
        call.body["spec"]["leaseDurationSeconds"],
        test_timings().lease_seconds()
    );
    // Followers probe this before they take an expired Lease over.
    assert_eq!(
        call.body["metadata"]["annotations"]["liqonet.liqo.io/health-endpoint"],
        "192.0.2.1:9640"
    );
    let mut lease = call.body.clone();
    lease["metadata"]["resourceVersion"] = json!("1");
    call.reply(201, lease.clone());
    leader.wait_for(|l| *l).await.unwrap();
    // The leader renews from what it wrote, without reading first.
    let call = server.expect("PUT", &format!("{PATH}/gw")).await;
    assert_eq!(call.body["metadata"]["resourceVersion"], "1");
    assert_eq!(call.body["spec"]["holderIdentity"], "pod-a");
    lease["metadata"]["resourceVersion"] = json!("2");
    call.reply(200, lease.clone());
    quit_tx.send(true).unwrap();
    // Released on the way out: holder cleared, so a follower takes over at once.
    let call = server.expect("PUT", &format!("{PATH}/gw")).await;
    assert!(
        call.body["spec"]["holderIdentity"].is_null(),
        "{}",
        call.body
    );
    call.reply(200, lease);
    task.await.unwrap();
    assert!(!*leader.borrow());
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/liqonet/leases";

/// Lease `gw` at `rv`, held by `holder` (none: released), renewed at second `renewed`.
fn lease_gw(rv: u32, holder: Option<&str>, renewed: u32) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "gw", "namespace": "liqonet", "resourceVersion": format!("{rv}")},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 1,
                 "renewTime": format!("2026-01-01T00:00:{renewed:02}.000000Z")}})
}

/// A follower's first look reads the Lease; then it watches that one Lease (list, then watch,
/// both by field selector, which RBAC grants by name). Answers both, the watch with `events`
/// (a body of newline-separated watch events; the watcher watches again once it ends).
async fn follow(server: &mut ApiServer, first: Value, events: &[(&str, Value)]) {
    server
        .expect("GET", &format!("{LEASES}/gw"))
        .await
        .reply(200, first.clone());
    let list = server.expect("GET", LEASES).await;
    assert!(
        list.query.contains("fieldSelector=metadata.name%3Dgw"),
        "{}",
        list.query
    );
    assert!(!list.query.contains("watch=true"), "{}", list.query);
    list.reply(
        200,
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList",
        "metadata": {"resourceVersion": first["metadata"]["resourceVersion"]}, "items": [first]}),
    );
    let watch = server.expect("GET", LEASES).await;
    assert!(
        watch.query.contains("watch=true")
            && watch.query.contains("fieldSelector=metadata.name%3Dgw"),
        "{}",
        watch.query
    );
    let body: String = events
        .iter()
        .map(|(kind, object)| format!("{}\n", json!({"type": kind, "object": object})))
        .collect();
    watch.reply_raw(200, body);
}

#[tokio::test]
async fn a_follower_watches_a_lease_held_by_another_and_never_writes() {
    let (mut server, leader, quit_tx, task) = start_campaign("pod-b");
    // The holder keeps renewing: renewTime changes at every event.
    let renewals: Vec<(&str, Value)> = (2..5)
        .map(|n| ("MODIFIED", lease_gw(n, Some("pod-a"), n)))
        .collect();
    follow(&mut server, lease_gw(1, Some("pod-a"), 1), &renewals).await;
    let rewatch = server.expect("GET", LEASES).await;
    assert!(rewatch.query.contains("watch=true"), "{}", rewatch.query);
    // In sync, it makes no call at its looks (every 150 ms).
    server.expect_quiet(Duration::from_millis(400)).await;
    assert!(!*leader.borrow());
    quit_tx.send(true).unwrap();
    task.await.unwrap();
    drop(rewatch);
}

#[tokio::test]
async fn a_follower_takes_a_released_lease_as_soon_as_its_watch_shows_it() {
    // Looks every 5 s: a write well before that came from the watch.
    let timings = Timings::new(
        Duration::from_secs(10),
        Duration::from_secs(6),
        Duration::from_secs(5),
    )
    .unwrap();
    let (mut server, mut leader, quit_tx, task) = start_campaign_with("pod-b", timings);
    let t0 = std::time::Instant::now();
    let released = lease_gw(2, None, 2);
    follow(
        &mut server,
        lease_gw(1, Some("pod-a"), 1),
        &[("MODIFIED", released)],
    )
    .await;
    // The acquisition replaces the Lease as the watch showed it (the watcher's re-watch may
    // come first; it stays unanswered).
    let mut rewatch = None;
    let call = loop {
        let call = server.next().await;
        if call.method == "GET" && call.query.contains("watch=true") {
            rewatch = Some(call);
            continue;
        }
        assert_eq!(
            (call.method.as_str(), call.path.as_str()),
            ("PUT", &*format!("{LEASES}/gw"))
        );
        break call;
    };
    let took = t0.elapsed();
    assert_eq!(call.body["metadata"]["resourceVersion"], "2");
    assert_eq!(call.body["spec"]["holderIdentity"], "pod-b");
    assert_eq!(call.body["spec"]["leaseTransitions"], 1);
    let mut lease = call.body.clone();
    lease["metadata"]["resourceVersion"] = json!("3");
    call.reply(200, lease.clone());
    leader.wait_for(|l| *l).await.unwrap();
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Leading, it stops watching and renews from what it wrote.
    drop(rewatch);
    quit_tx.send(true).unwrap();
    loop {
        let call = server.next().await;
        if call.method == "GET" {
            // A re-watch the watcher sent before it was dropped.
            continue;
        }
        assert_eq!(call.path, format!("{LEASES}/gw"));
        let released = call.body["spec"]["holderIdentity"].is_null();
        call.reply(200, lease.clone());
        if released {
            break;
        }
    }
    task.await.unwrap();
}

#[tokio::test]
async fn peer_remove_all_deletes_every_endpoint_and_waits_until_they_are_gone() {
    let (client, mut server) = pair(rbac::PEERING_CLI, "liqonet");
    let task = tokio::spawn(async move {
        peering::remove_all(
            &client,
            &peering::Names::default(),
            Some(Duration::from_secs(5)),
        )
        .await
    });
    let list = |items: Vec<Value>| json!({"apiVersion": "net.liqo.io/v1alpha1", "kind": "TunnelEndpointList", "metadata": {}, "items": items});
    let two = vec![
        endpoint("foreign", 1, json!([]), true),
        endpoint("third", 2, json!([]), true),
    ];
    server
        .expect("GET", TEPS)
        .await
        .reply(200, list(two.clone()));
    for (name, te) in ["foreign", "third"].iter().zip(&two) {
        server
            .expect("DELETE", &format!("{TEPS}/{name}"))
            .await
            .reply(200, te.clone());
    }
    // Their finalizers are still held: it looks again until the gateway released them.
    server
        .expect("GET", TEPS)
        .await
        .reply(200, list(vec![two[1].clone()]));
    server.expect("GET", TEPS).await.reply(200, list(vec![]));
    let removed = task.await.unwrap().unwrap();
    assert_eq!(removed, ["foreign", "third"]);
}

#[tokio::test]
async fn peer_add_and_remove_talk_to_the_cluster() {
    let (client, mut server) = pair(rbac::PEERING_CLI, "liqonet");
    let names = peering::Names::default();
    let info = liqonet_proto::peering::PeeringInfo::from_yaml(&format!(
        "clusterID: foreign\npublicKey: {}\nendpoint: 192.0.2.9:31820\nnetworks: [10.244.0.0/16]\n",
        Key([3; 32]).to_base64()
    ))
    .unwrap();
    let task = tokio::spawn({
        let (client, names, info) = (client.clone(), names.clone(), info.clone());
        async move { peering::add(&client, &names, &info).await }
    });
    serve_local_settings(&mut server).await;
    server
        .expect("GET", TEPS)
        .await
        .reply(200, json!({"apiVersion": "net.liqo.io/v1alpha1", "kind": "TunnelEndpointList", "metadata": {}, "items": []}));
    let call = server.expect("POST", TEPS).await;
    assert_eq!(call.body["metadata"]["name"], "foreign");
    assert_eq!(
        call.body["spec"]["networks"][0]["remapped"], "auto",
        "overlaps home"
    );
    let body = call.body.clone();
    call.reply(201, body);
    let summary = task.await.unwrap().unwrap();
    assert!(summary.contains("foreign"), "{summary}");

    let task = tokio::spawn({
        let (client, names) = (client.clone(), names.clone());
        async move { peering::remove(&client, &names, "nobody").await }
    });
    server
        .expect("DELETE", &format!("{TEPS}/nobody"))
        .await
        .fail(404, "NotFound");
    let err = task.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("no TunnelEndpoint liqonet/nobody"), "{err}");
}

/// The ConfigMap and keys Secret `peering-info` and `peer add` read first.
async fn serve_local_settings(server: &mut ApiServer) {
    server
        .expect(
            "GET",
            "/api/v1/namespaces/liqonet/configmaps/liqonet-gateway",
        )
        .await
        .reply(
            200,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "liqonet-gateway"},
            "data": {"LIQONET_CLUSTER_ID": "home", "LIQONET_LOCAL_NETWORKS": "10.244.0.0/16"}}),
        );
    server
        .expect("GET", "/api/v1/namespaces/liqonet/secrets/liqonet-gateway-keys")
        .await
        .reply(200, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "liqonet-gateway-keys"},
            "data": {"privateKey": base64_encode(Key([4; 32]).to_base64().as_bytes())}}));
}

#[tokio::test]
async fn peering_info_finds_the_endpoint_from_the_service() {
    let (client, mut server) = pair(rbac::PEERING_CLI, "liqonet");
    let names = peering::Names::default();
    let task = tokio::spawn({
        let (client, names) = (client.clone(), names.clone());
        async move { peering::info(&client, &names, None).await }
    });
    serve_local_settings(&mut server).await;
    server
        .expect("GET", "/api/v1/namespaces/liqonet/services/liqonet-gateway")
        .await
        .reply(200, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "liqonet-gateway"},
            "spec": {"type": "NodePort", "ports": [{"port": 51840, "nodePort": 30840, "protocol": "UDP"}]}}));
    let call = server.expect("GET", "/api/v1/nodes").await;
    assert!(
        call.query.contains("liqonet.liqo.io%2Fgateway%3Dtrue")
            || call.query.contains("liqonet.liqo.io/gateway=true"),
        "{}",
        call.query
    );
    call.reply(200, json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": [
        {"metadata": {"name": "gw"}, "status": {"addresses": [
            {"type": "InternalIP", "address": "172.20.0.10"}, {"type": "ExternalIP", "address": "198.51.100.7"}]}}]}));
    let text = task.await.unwrap().unwrap();
    let info = liqonet_proto::peering::PeeringInfo::from_yaml(&text).unwrap();
    assert_eq!(info.cluster_id, "home");
    assert_eq!(
        info.public_key,
        liqonet_gateway::keys::public_of(&Key([4; 32]))
    );
    assert_eq!(info.endpoint.unwrap().to_string(), "198.51.100.7:30840");
    assert_eq!(info.networks, ["10.244.0.0/16".parse().unwrap()]);

    // A load balancer's address wins over the nodes.
    let task = tokio::spawn(async move { peering::info(&client, &names, None).await });
    serve_local_settings(&mut server).await;
    server
        .expect("GET", "/api/v1/namespaces/liqonet/services/liqonet-gateway")
        .await
        .reply(
            200,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "liqonet-gateway"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 51840, "protocol": "UDP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "2001:db8::5"}]}}}),
        );
    let text = task.await.unwrap().unwrap();
    assert!(
        text.contains("'[2001:db8::5]:51840'") || text.contains("[2001:db8::5]:51840"),
        "{text}"
    );
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}
