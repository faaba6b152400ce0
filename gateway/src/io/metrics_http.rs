//! A minimal HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (this replica carries the tunnel: in Kubernetes mode only the leader is ready, so the
//! gateway Service sends the foreign clusters' datagrams to it alone).
//!
//! The event loop publishes a fresh snapshot every second; this thread only serves the latest
//! one, so scrapes never touch the data path.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::PeerStats;

/// What the event loop publishes for readers outside the data path.
#[derive(Debug, Default)]
pub struct Published {
    /// Prometheus text.
    pub metrics: String,
    pub peers: Vec<PeerStats>,
    /// The tunnel is up on this replica.
    pub ready: bool,
}

pub type Snapshot = Arc<Mutex<Published>>;

pub fn spawn(addr: SocketAddr) -> std::io::Result<Snapshot> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("metricsAddress {addr}: {e}")))?;
    let snapshot = Snapshot::default();
    let shared = snapshot.clone();
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Err(e) = serve(conn, &shared) {
                    tracing::debug!("metrics request failed: {e}");
                }
            }
        })?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(snapshot)
}

fn serve(conn: TcpStream, snapshot: &Snapshot) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path {
        "/metrics" => (
            "200 OK",
            snapshot
                .lock()
                .map(|s| s.metrics.clone())
                .unwrap_or_default(),
        ),
        "/healthz" => ("200 OK", "ok\n".to_string()),
        "/readyz" => match snapshot.lock().map(|s| s.ready) {
            Ok(true) => ("200 OK", "ready\n".to_string()),
            _ => (
                "503 Service Unavailable",
                "not carrying the tunnel\n".to_string(),
            ),
        },
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
