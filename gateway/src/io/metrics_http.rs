//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process answers, and its
//! data-path loop, if it runs one, has turned within [`LOOP_STALL`]; in Kubernetes mode with its
//! Lease identity and readiness, which a follower checks before taking over an expired Lease, so
//! it must answer whatever else is going on) and `/readyz` (this
//! replica carries the tunnel: only the leader is ready, so the gateway Service sends the
//! foreign clusters' datagrams to it alone).
//!
//! hyper on a thread and runtime of its own: any number of clients, each connection a task, a
//! slow or idle client (headers not sent within [`HEADER_TIMEOUT`]) dropped without holding up
//! the others. The event loop publishes a fresh snapshot every second; this thread only serves
//! the latest one, so requests never touch the data path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::engine::PeerStats;

/// A client that has not sent its request headers by then is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// The loop publishes every second; this long without means it is stuck (liveness fails).
pub const LOOP_STALL: Duration = Duration::from_secs(3);

/// What the event loop publishes for readers outside the data path.
#[derive(Debug, Default)]
pub struct Published {
    /// Prometheus text.
    pub metrics: String,
    pub peers: Vec<PeerStats>,
    /// The tunnel is up on this replica.
    pub ready: bool,
    /// When the data-path loop last published (while it runs).
    pub loop_turned: Option<Instant>,
    /// The same moment on the wall clock: session ages become absolute handshake times.
    pub published_at: Option<std::time::SystemTime>,
    /// Packets dropped, by reason.
    pub drops: Vec<(&'static str, u64)>,
    /// Kubernetes mode: this replica's identity in the Lease. `/healthz` names it and whether
    /// the replica carries the tunnel, so a follower checking an expired Lease's holder knows it
    /// reached that holder (not a newer pod on the same node) and that it still leads.
    pub identity: Option<String>,
}

pub type Snapshot = Arc<Mutex<Published>>;

/// Binds `addr` and serves it on a thread of its own.
pub fn spawn(addr: SocketAddr) -> std::io::Result<Snapshot> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("metricsAddress {addr}: {e}")))?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let snapshot = Snapshot::default();
    let shared = snapshot.clone();
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || runtime.block_on(accept(listener, shared)))?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(snapshot)
}

async fn accept(listener: std::net::TcpListener, snapshot: Snapshot) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!("HTTP endpoint: {e}"),
    };
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, say: wait a little rather than spin.
                tracing::debug!("HTTP accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = respond(&req, &snapshot);
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("HTTP connection: {e}");
            }
        });
    }
}

fn health(s: &Published, now: Instant) -> (StatusCode, String) {
    if let Some(stalled) = s
        .loop_turned
        .map(|t| now.saturating_duration_since(t))
        .filter(|d| *d > LOOP_STALL)
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the data path has not turned for {:.1} s\n",
                stalled.as_secs_f64()
            ),
        );
    }
    let body = match &s.identity {
        Some(id) => format!("ok\nidentity: {id}\nready: {}\n", s.ready),
        None => "ok\n".to_string(),
    };
    (StatusCode::OK, body)
}

fn respond(req: &Request<Incoming>, snapshot: &Snapshot) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            snapshot
                .lock()
                .map(|s| s.metrics.clone())
                .unwrap_or_default(),
        ),
        "/healthz" => match snapshot.lock() {
            Ok(s) => health(&s, Instant::now()),
            Err(_) => (StatusCode::OK, "ok\n".to_string()),
        },
        "/readyz" => match snapshot.lock().map(|s| s.ready) {
            Ok(true) => (StatusCode::OK, "ready\n".to_string()),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not carrying the tunnel\n".to_string(),
            ),
        },
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_fails_when_the_loop_stops_turning_and_not_before() {
        let t0 = Instant::now();
        let mut p = Published {
            identity: Some("gw1_abc".into()),
            ready: true,
            loop_turned: Some(t0),
            ..Published::default()
        };
        let (code, body) = health(&p, t0 + Duration::from_secs(1));
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, "ok\nidentity: gw1_abc\nready: true\n");
        let (code, body) = health(&p, t0 + Duration::from_secs(4));
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("has not turned for 4.0 s"), "{body}");
        // A follower runs no loop: nothing to be stuck.
        p.loop_turned = None;
        assert_eq!(health(&p, t0 + Duration::from_secs(60)).0, StatusCode::OK);
    }
}
