//! `deploy/base/rbac.yaml` grants each component exactly the API calls `liqonet_proto::rbac`
//! declares for it (the controller tests check every request the code makes is declared), and
//! binds each role to its component's ServiceAccount.

use std::collections::BTreeSet;
use std::path::Path;

use liqonet_proto::rbac::{ApiCall, GATEWAY, PEERING_CLI, ROUTE_AGENT};
use serde::Deserialize;
use serde_yaml::Value;

fn documents() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("deploy/base/rbac.yaml has no {kind} {name}"))
}

type Grant = (String, String, String);

/// Every (group, resource, verb) the named roles grant.
fn granted(docs: &[Value], roles: &[(&str, &str)]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for (kind, name) in roles {
        let role = find(docs, kind, name);
        for rule in role["rules"].as_sequence().unwrap() {
            let list = |k: &str| -> Vec<String> {
                rule[k]
                    .as_sequence()
                    .unwrap_or_else(|| panic!("{kind} {name}: a rule without {k}"))
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            for g in list("apiGroups") {
                for r in list("resources") {
                    for v in list("verbs") {
                        assert!(g != "*" && r != "*" && v != "*", "{kind} {name}: wildcard");
                        out.insert((g.clone(), r.clone(), v));
                    }
                }
            }
        }
    }
    out
}

fn declared(calls: &[ApiCall]) -> BTreeSet<Grant> {
    calls
        .iter()
        .map(|c| (c.group.into(), c.resource.into(), c.verb.into()))
        .collect()
}

fn assert_same(who: &str, granted: BTreeSet<Grant>, declared: BTreeSet<Grant>) {
    let extra: Vec<_> = granted.difference(&declared).collect();
    let missing: Vec<_> = declared.difference(&granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{who}: granted but never called: {extra:?}; called but not granted: {missing:?}"
    );
}

fn assert_bound(docs: &[Value], binding: (&str, &str), role: (&str, &str), account: &str) {
    let b = find(docs, binding.0, binding.1);
    assert_eq!(b["roleRef"]["kind"], role.0, "{binding:?}");
    assert_eq!(b["roleRef"]["name"], role.1, "{binding:?}");
    let subjects = b["subjects"].as_sequence().unwrap();
    assert_eq!(subjects.len(), 1, "{binding:?} binds only {account}");
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], account);
    assert_eq!(subjects[0]["namespace"], "liqonet");
}

#[test]
fn the_gateway_gets_exactly_what_it_calls() {
    let docs = documents();
    assert_same(
        "gateway",
        granted(&docs, &[("Role", "liqonet-gateway")]),
        declared(GATEWAY),
    );
    assert_bound(
        &docs,
        ("RoleBinding", "liqonet-gateway"),
        ("Role", "liqonet-gateway"),
        "liqonet-gateway",
    );
}

#[test]
fn the_route_agent_gets_exactly_what_it_calls() {
    let docs = documents();
    assert_same(
        "route agent",
        granted(
            &docs,
            &[
                ("Role", "liqonet-route-agent"),
                ("ClusterRole", "liqonet-route-agent"),
            ],
        ),
        declared(ROUTE_AGENT),
    );
    // Cluster-wide only for what is cluster-scoped.
    let cluster = granted(&docs, &[("ClusterRole", "liqonet-route-agent")]);
    assert!(cluster.iter().all(|(_, r, _)| r == "nodes"), "{cluster:?}");
    assert_bound(
        &docs,
        ("RoleBinding", "liqonet-route-agent"),
        ("Role", "liqonet-route-agent"),
        "liqonet-route-agent",
    );
    assert_bound(
        &docs,
        ("ClusterRoleBinding", "liqonet-route-agent"),
        ("ClusterRole", "liqonet-route-agent"),
        "liqonet-route-agent",
    );
}

#[test]
fn the_peering_role_gets_exactly_what_the_commands_call() {
    let docs = documents();
    assert_same(
        "peering commands",
        granted(
            &docs,
            &[
                ("Role", "liqonet-peering"),
                ("ClusterRole", "liqonet-peering"),
            ],
        ),
        declared(PEERING_CLI),
    );
}

#[test]
fn nothing_else_is_granted() {
    let docs = documents();
    let roles: BTreeSet<String> = docs
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
        .map(|d| {
            format!(
                "{} {}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    let expected: BTreeSet<String> = [
        "Role liqonet-gateway",
        "Role liqonet-route-agent",
        "ClusterRole liqonet-route-agent",
        "Role liqonet-peering",
        "ClusterRole liqonet-peering",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(roles, expected);
}
