//! A scripted Kubernetes API server for controller tests: a `kube::Client` over a `tower-test`
//! mock service (kube's own testing approach). The test awaits each request the code sends,
//! checks it, and answers it. Every request must need a permission the component declares in
//! `liqonet_proto::rbac`, so a call the RBAC manifests do not grant fails the test that makes it.

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use liqonet_proto::rbac::{check, ApiCall};
use serde_json::{json, Value};
use tower_test::mock::{self, Handle, SendResponse};

pub struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
    allowed: &'static [ApiCall],
    /// The permission of every request so far, in order (`verb group/resource`).
    pub calls: Vec<String>,
}

/// One request, waiting for its answer.
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    respond: SendResponse<Response<Body>>,
}

impl Call {
    pub fn reply(self, status: u16, body: Value) {
        self.reply_raw(status, body.to_string());
    }

    /// Answers with a body as it is (a watch's newline-separated events).
    pub fn reply_raw(self, status: u16, body: String) {
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body.into_bytes()))
            .expect("a valid response");
        self.respond.send_response(response);
    }

    /// Answers with the API's `Status` error object.
    pub fn fail(self, code: u16, reason: &str) {
        self.reply(code, status_error(code, reason));
    }
}

/// A client whose default namespace is `namespace`, and the server it talks to.
pub fn pair(allowed: &'static [ApiCall], namespace: &str) -> (kube::Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, namespace);
    (
        client,
        ApiServer {
            handle,
            allowed,
            calls: Vec::new(),
        },
    )
}

pub fn status_error(code: u16, reason: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "message": format!("mock: {reason}"), "reason": reason, "code": code,
    })
}

impl ApiServer {
    /// The next request (within 5 s), which must be one the component declares.
    pub async fn next(&mut self) -> Call {
        self.try_next(Duration::from_secs(5))
            .await
            .expect("no request to the API server within 5 s (or the client is gone)")
    }

    /// The next request within `d`, if one comes (and the client still exists); it must be one
    /// the component declares.
    pub async fn try_next(&mut self, d: Duration) -> Option<Call> {
        let (request, respond) = tokio::time::timeout(d, self.handle.next_request())
            .await
            .ok()??;
        let (parts, body) = request.into_parts();
        let method = parts.method.to_string();
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or("").to_string();
        match check(self.allowed, &method, &path, &query) {
            Ok(permission) => self.calls.push(permission),
            Err(e) => panic!("{e}"),
        }
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Some(Call {
            method,
            path,
            query,
            body,
            respond,
        })
    }

    /// The next request, which must be `method` on `path`.
    pub async fn expect(&mut self, method: &str, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (call.method.as_str(), call.path.as_str()),
            (method, path),
            "unexpected request (query {:?}, body {})",
            call.query,
            call.body
        );
        call
    }

    /// No request arrives for `d`.
    pub async fn expect_quiet(&mut self, d: Duration) {
        if let Ok(Some((r, _))) = tokio::time::timeout(d, self.handle.next_request()).await {
            panic!("unexpected request {} {}", r.method(), r.uri());
        }
    }
}
