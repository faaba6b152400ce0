//! The Kubernetes API calls each component makes, declared once.
//!
//! `deploy/base/rbac.yaml` must grant exactly these (a test compares them), and the controller tests
//! check that every request the code sends on the mock API server is one of them, so the two
//! cannot drift apart: a new call fails the controller tests until it is declared here, and then
//! the RBAC test until it is granted.

use std::fmt;

/// One permission: an API group (`""` for the core group), a resource (with `/subresource`),
/// and a verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiCall {
    pub group: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
}

const fn call(group: &'static str, resource: &'static str, verb: &'static str) -> ApiCall {
    ApiCall {
        group,
        resource,
        verb,
    }
}

const NET: &str = "net.liqo.io";
const COORDINATION: &str = "coordination.k8s.io";
const DISCOVERY: &str = "discovery.k8s.io";

/// The gateway pod: TunnelEndpoint controller (finalizer and status), key Secret, leader Lease,
/// the gateway Service's EndpointSlice (written by the leader). All in its own namespace.
pub const GATEWAY: &[ApiCall] = &[
    call(NET, "tunnelendpoints", "list"),
    call(NET, "tunnelendpoints", "watch"),
    call(NET, "tunnelendpoints", "patch"),
    call(NET, "tunnelendpoints/status", "patch"),
    call("", "secrets", "get"),
    call("", "secrets", "create"),
    call(COORDINATION, "leases", "get"),
    call(COORDINATION, "leases", "create"),
    call(COORDINATION, "leases", "update"),
    call(COORDINATION, "leases", "list"),
    call(COORDINATION, "leases", "watch"),
    call(DISCOVERY, "endpointslices", "get"),
    call(DISCOVERY, "endpointslices", "list"),
    call(DISCOVERY, "endpointslices", "create"),
    call(DISCOVERY, "endpointslices", "update"),
    call(DISCOVERY, "endpointslices", "delete"),
];

/// The route agent pod: TunnelEndpoints and the gateway's Lease (which names the leader's node)
/// in the gateway's namespace, Nodes cluster-wide.
pub const ROUTE_AGENT: &[ApiCall] = &[
    call(NET, "tunnelendpoints", "list"),
    call(NET, "tunnelendpoints", "watch"),
    call(COORDINATION, "leases", "list"),
    call(COORDINATION, "leases", "watch"),
    call("", "nodes", "list"),
    call("", "nodes", "watch"),
];

/// The peering commands (`peering-info`, `peer add`, `peer remove` with `--kubernetes`), run by
/// an administrator; `deploy/base/rbac.yaml` has a role to bind to whoever peers clusters.
pub const PEERING_CLI: &[ApiCall] = &[
    call("", "configmaps", "get"),
    call("", "secrets", "get"),
    call("", "services", "get"),
    call("", "nodes", "list"),
    call(NET, "tunnelendpoints", "list"),
    call(NET, "tunnelendpoints", "create"),
    call(NET, "tunnelendpoints", "delete"),
];

impl fmt::Display for ApiCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        write!(f, "{} {}/{}", self.verb, group, self.resource)
    }
}

/// The permission a request needs, from its method, path and query, as the API server's RBAC
/// sees it (`/api/v1/...` is the core group; a collection GET is `list`, or `watch` with
/// `watch=true`). `None` for paths that are not resource requests.
pub fn classify(method: &str, path: &str, query: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, named) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some((group.to_string(), resource, verb.to_string()))
}

/// Is the request one of `allowed`? Returns the permission it needs either way, for messages.
pub fn check(allowed: &[ApiCall], method: &str, path: &str, query: &str) -> Result<String, String> {
    let Some((group, resource, verb)) = classify(method, path, query) else {
        return Err(format!("{method} {path}?{query} is not a resource request"));
    };
    let name = format!(
        "{verb} {}/{resource}",
        if group.is_empty() { "core" } else { &group }
    );
    if allowed
        .iter()
        .any(|c| c.group == group && c.resource == resource && c.verb == verb)
    {
        Ok(name)
    } else {
        Err(format!(
            "{method} {path}?{query} needs `{name}`, which is not declared in liqonet_proto::rbac"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_the_permissions_rbac_checks() {
        let ns = "/api/v1/namespaces/liqonet";
        let net = "/apis/net.liqo.io/v1alpha1/namespaces/liqonet";
        let cases = [
            (
                "GET",
                format!("{ns}/secrets/keys"),
                "",
                "",
                "secrets",
                "get",
            ),
            ("POST", format!("{ns}/secrets"), "", "", "secrets", "create"),
            (
                "GET",
                "/api/v1/nodes".into(),
                "limit=500",
                "",
                "nodes",
                "list",
            ),
            (
                "GET",
                "/api/v1/nodes".into(),
                "watch=true&resourceVersion=5",
                "",
                "nodes",
                "watch",
            ),
            (
                "PATCH",
                format!("{net}/tunnelendpoints/a/status"),
                "",
                NET,
                "tunnelendpoints/status",
                "patch",
            ),
            (
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/liqonet/leases/gw".into(),
                "",
                COORDINATION,
                "leases",
                "update",
            ),
            (
                "DELETE",
                format!("{net}/tunnelendpoints/a"),
                "",
                NET,
                "tunnelendpoints",
                "delete",
            ),
        ];
        for (method, path, query, group, resource, verb) in cases {
            assert_eq!(
                classify(method, &path, query),
                Some((group.into(), resource.into(), verb.into())),
                "{method} {path}?{query}"
            );
        }
        assert_eq!(classify("GET", "/version", ""), None);
    }

    #[test]
    fn undeclared_calls_are_refused_by_name() {
        let err = check(
            GATEWAY,
            "DELETE",
            "/api/v1/namespaces/liqonet/secrets/keys",
            "",
        )
        .unwrap_err();
        assert!(err.contains("delete core/secrets"), "{err}");
        assert!(check(GATEWAY, "GET", "/api/v1/namespaces/l/secrets/k", "").is_ok());
    }
}
