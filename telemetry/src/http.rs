//! A small HTTP/1.1 server on a thread and runtime of its own: any number of clients, each
//! connection a task, a client that has not sent its headers within [`HEADER_TIMEOUT`] dropped
//! without holding up the others. The handler answers from state its owner publishes, so a
//! request never waits on (or stalls) the data path or a reconcile.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

/// A client that has not sent its request headers by then is disconnected.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// One answer: status code, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    pub fn json(body: impl Into<String>) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json",
            body: body.into(),
        }
    }

    pub fn not_found() -> Reply {
        Reply::text(404, "not found\n")
    }
}

/// Answers a request path.
pub type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Binds `addr` (errors name `what`, the setting it came from) and serves `handler` on a thread
/// of its own until the process exits.
pub fn serve(addr: SocketAddr, what: &str, handler: Handler) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{what} {addr}: {e}")))?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || runtime.block_on(accept(listener, handler)))?;
    Ok(())
}

async fn accept(listener: std::net::TcpListener, handler: Handler) {
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
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let reply = handler(req.uri().path());
                async move { Ok::<_, Infallible>(response(reply)) }
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

fn response(reply: Reply) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(reply.content_type),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_handler_and_survives_an_idle_client() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        // Bind first to learn a free port, then serve on it.
        let port = std::net::TcpListener::bind(addr)
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        serve(
            addr,
            "test",
            Arc::new(|path: &str| match path {
                "/hello" => Reply::text(200, "hi\n"),
                _ => Reply::not_found(),
            }),
        )
        .unwrap();
        // An idle connection must not delay the next client.
        let _idle = std::net::TcpStream::connect(addr).unwrap();
        let t = std::time::Instant::now();
        let (code, body) = crate::client::get(addr, "/hello", Duration::from_secs(5)).unwrap();
        assert_eq!((code, body.as_str()), (200, "hi\n"));
        assert!(t.elapsed() < Duration::from_secs(1));
        let (code, _) = crate::client::get(addr, "/nope", Duration::from_secs(5)).unwrap();
        assert_eq!(code, 404);
    }
}
