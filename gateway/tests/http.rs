//! The health endpoint answers at once however many clients sit idle on it (a follower relies on
//! it before taking over; kubelet probes it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The endpoint on a free loopback port.
fn serve() -> (u16, liqonet_gateway::snapshot::Snapshot) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    (
        port,
        liqonet_gateway::io::metrics_http::spawn(addr).unwrap(),
    )
}

#[test]
fn idle_and_half_sent_requests_hold_up_nobody() {
    let (port, snapshot) = serve();
    // 50 idle connections and 50 that sent half a request line.
    let mut idle = Vec::new();
    for i in 0..100 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        if i % 2 == 1 {
            s.write_all(b"GET /metr").unwrap();
        }
        idle.push(s);
    }
    let t = Instant::now();
    let health = get(port, "/healthz");
    let took = t.elapsed();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(took < Duration::from_millis(500), "/healthz took {took:?}");
    // A follower is alive and not ready; the leader is ready.
    assert!(get(port, "/readyz").starts_with("HTTP/1.1 503"));
    snapshot.lock().unwrap().ready = true;
    assert!(get(port, "/readyz").starts_with("HTTP/1.1 200"));
    println!("/healthz with 100 stalled clients: {took:?}");
}

#[test]
fn a_follower_counts_only_the_holder_that_leads_as_alive() {
    use liqonet_gateway::kubernetes::lease::alive;
    let (port, snapshot) = serve();
    snapshot.lock().unwrap().identity = Some("gw-a".into());
    let addr = format!("127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Alive but not carrying the tunnel (it holds the Lease without leading): not alive.
    assert!(!rt.block_on(alive(&addr, "gw-a")));
    snapshot.lock().unwrap().ready = true;
    assert!(rt.block_on(alive(&addr, "gw-a")));
    // Another pod on the same node's address is not the holder.
    assert!(!rt.block_on(alive(&addr, "gw-b")));
    let health = get(port, "/healthz");
    assert!(
        health.ends_with("ok\nidentity: gw-a\nready: true\n"),
        "{health}"
    );
}
