//! Hostile HTTP/1.1 requests to the gateway's real metrics and health server
//! (`io::metrics_http::spawn`, hyper on its own thread) over loopback TCP: odd methods, paths and
//! versions, many and huge headers, bad chunked bodies, lying lengths, pipelining, partial
//! requests, stalled clients. Checks: whatever comes back is HTTP/1.x; the server thread never
//! panics; and a plain `GET /healthz` on a fresh connection answers `200 ok` after every input.
//! Slow per input (two connections each), so its rate is that of a real server.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::codec::{Reader, Writer};
use crate::driver::{panic_count, pct};
use crate::rng::Rng;
use crate::targets::Target;

/// Longest wait for the server's answer (its header timeout is 2 s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(4);
/// Longest a health check may take while hostile clients sit on the server (kubelet's default
/// probe timeout is 1 s; twice that leaves room for a loaded test machine).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Stalled clients kept open at once.
const STALLED: usize = 8;

pub struct HttpRequests {
    addr: SocketAddr,
    stalled: VecDeque<TcpStream>,
    inputs: u64,
    answered: u64,
    statuses: [u64; 6],
    silent: u64,
    stalls: u64,
    health_slowest: Duration,
}

impl HttpRequests {
    pub fn new() -> Self {
        // `spawn` does not say which port it bound, so pick a free one first (and again if
        // someone else takes it in between).
        let addr = (0..10)
            .find_map(|_| {
                let addr = free_port();
                liqonet_gateway::io::metrics_http::spawn(addr)
                    .ok()
                    .map(|_| addr)
            })
            .expect("the metrics server starts on a free loopback port");
        HttpRequests {
            addr,
            stalled: VecDeque::new(),
            inputs: 0,
            answered: 0,
            statuses: [0; 6],
            silent: 0,
            stalls: 0,
            health_slowest: Duration::ZERO,
        }
    }

    fn connect(&self) -> Result<TcpStream, String> {
        let s = TcpStream::connect_timeout(&self.addr, HEALTH_TIMEOUT)
            .map_err(|e| format!("connect to {}: {e}", self.addr))?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    fn health(&mut self) -> Result<(), String> {
        let t = Instant::now();
        let mut s = self.connect()?;
        s.set_read_timeout(Some(HEALTH_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("/healthz: write: {e}"))?;
        let mut answer = Vec::new();
        let read = s.read_to_end(&mut answer);
        close_with_reset(s);
        let took = t.elapsed();
        self.health_slowest = self.health_slowest.max(took);
        if let Err(e) = read {
            return Err(format!(
                "/healthz: no answer within {HEALTH_TIMEOUT:?}: {e}"
            ));
        }
        let text = String::from_utf8_lossy(&answer);
        if !(text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\nok\n")) {
            return Err(format!("/healthz answered {text:?}"));
        }
        Ok(())
    }
}

impl Default for HttpRequests {
    fn default() -> Self {
        Self::new()
    }
}

/// A loopback port nobody listens on (bound and released; `spawn` binds it again).
fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    l.local_addr().expect("its address")
}

/// Closing with SO_LINGER 0 sends a reset: no TIME_WAIT left behind for each connection.
fn close_with_reset(s: TcpStream) {
    let s = Socket::from(s);
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// How the request is delivered.
mod delivery {
    /// Written whole (in pieces), then the write side shut: the server answers and closes.
    pub const SEND_AND_SHUT: u8 = 0;
    /// Written, then left open without a word more (a stalled client, kept a while).
    pub const STALL: u8 = 1;
    /// Written, then closed with a reset before any answer.
    pub const ABORT: u8 = 2;
}

fn request(rng: &mut Rng, out: &mut Vec<u8>) {
    // Two requests in five are well-formed (they reach the handler); the rest are not.
    if rng.chance(2, 5) {
        let path = *rng.pick(&[
            "/healthz",
            "/metrics",
            "/readyz",
            "/",
            "/nope",
            "/healthz?x=1",
        ]);
        let method = *rng.pick(&["GET", "GET", "HEAD", "POST"]);
        out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\nHost: fuzz\r\n").as_bytes());
        for _ in 0..rng.below(4) {
            out.extend_from_slice(format!("X-H{}: {}\r\n", rng.u16(), rng.u32()).as_bytes());
        }
        if method == "POST" {
            let n = rng.below(64);
            out.extend_from_slice(format!("Content-Length: {n}\r\n\r\n").as_bytes());
            rng.bytes(n, out);
        } else {
            out.extend_from_slice(b"\r\n");
        }
        return;
    }
    let method = *rng.pick(&[
        "GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT",
        "PATCH", "get", "G\0T", "", "GET GET", "\u{e9}",
    ]);
    let long_method;
    let method = if rng.chance(1, 50) {
        long_method = "A".repeat(rng.range(100, 100_000));
        &long_method
    } else {
        method
    };
    let path = match rng.below(14) {
        0..=3 => (*rng.pick(&["/healthz", "/metrics", "/readyz", "/"])).to_string(),
        4 => "*".into(),
        5 => "/healthz?x=1&y=%zz".into(),
        6 => "//healthz/../metrics".into(),
        7 => "http://fuzz/healthz".into(),
        8 => "fuzz:80".into(),
        9 => format!("/{}", "a".repeat(rng.range(1000, 200_000))),
        10 => "/\u{e9}t\u{e9}".into(),
        11 => "/a b".into(),
        12 => "/%00%ff".into(),
        _ => String::new(),
    };
    let version = *rng.pick(&[
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/2.0",
        "HTTP/0.9",
        "",
        "http/1.1",
        "HTTP/1.1x",
        "HTTP/9.9",
        "HTTP/1.01",
    ]);
    let eol = *rng.pick(&["\r\n", "\r\n", "\r\n", "\r\n", "\n", "\r", "\n\r"]);
    let sp = *rng.pick(&[" ", " ", " ", " ", "  ", "\t"]);
    out.extend_from_slice(format!("{method}{sp}{path}{sp}{version}{eol}").as_bytes());
    // Headers: a few, or past hyper's limit of 100; one may be huge.
    let n = match rng.below(10) {
        0..=6 => rng.below(6),
        7 | 8 => rng.range(90, 110),
        _ => rng.range(200, 2000),
    };
    let mut body = None;
    for _ in 0..n {
        let (name, value) = match rng.below(16) {
            0 => ("Host".to_string(), "fuzz".to_string()),
            1 => {
                let len = *rng.pick(&[
                    "0",
                    "5",
                    "-1",
                    "99999999999999999999",
                    "5, 6",
                    " 3",
                    "0x10",
                    "",
                ]);
                body = Some(len.trim().parse::<usize>().unwrap_or(0).min(100));
                ("Content-Length".into(), len.into())
            }
            2 => (
                "Transfer-Encoding".into(),
                (*rng.pick(&[
                    "chunked",
                    "gzip, chunked",
                    "chunked, chunked",
                    "xchunked",
                    "identity",
                ]))
                .into(),
            ),
            3 => (
                "Connection".into(),
                (*rng.pick(&["close", "keep-alive", "upgrade", ""])).into(),
            ),
            4 => (
                "Expect".into(),
                (*rng.pick(&["100-continue", "200-ok"])).into(),
            ),
            5 => ("X-Huge".into(), "v".repeat(rng.range(1000, 500_000))),
            6 => ("".into(), "empty name".into()),
            7 => ("Bad Name".into(), "x".into()),
            8 => ("X-Folded".into(), format!("a{eol} continued")),
            9 => ("X-Ctl".into(), "a\u{1}b\u{7f}".into()),
            10 => ("X-Utf8".into(), "\u{e9}\u{1f600}".into()),
            11 => ("Upgrade".into(), "h2c".into()),
            _ => (format!("X-H{}", rng.u16()), format!("{}", rng.u32())),
        };
        out.extend_from_slice(format!("{name}:{sp}{value}{eol}").as_bytes());
    }
    out.extend_from_slice(eol.as_bytes());
    // A body: as long as said, shorter, longer, or chunked right or wrong.
    match rng.below(8) {
        0 => {
            let n = body.unwrap_or(0);
            let n = match rng.below(3) {
                0 => n,
                1 => n / 2,
                _ => n + rng.below(50),
            };
            rng.bytes(n, out);
        }
        1 => {
            let chunks = *rng.pick(&[
                "5\r\nhello\r\n0\r\n\r\n",
                "zz\r\nhello\r\n0\r\n\r\n",
                "ffffffffffffffffff\r\nx\r\n",
                "5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n",
                "5\r\nhel",
                "5\r\nhelloXX0\r\n\r\n",
                "-1\r\n\r\n",
                "0\r\n",
                "\r\n\r\n",
            ]);
            out.extend_from_slice(chunks.as_bytes());
        }
        _ => {}
    }
}

impl Target for HttpRequests {
    /// Delivery mode, split points, then the bytes of one to five requests (pipelined), cut short
    /// now and then.
    fn generate(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        let mode = match rng.below(20) {
            0 => delivery::STALL,
            1 => delivery::ABORT,
            _ => delivery::SEND_AND_SHUT,
        };
        let mut w = Writer(out);
        w.u8(mode);
        let splits = rng.below(4);
        w.u8(splits as u8);
        for _ in 0..splits {
            w.u16(rng.u16());
        }
        let at = w.begin_bytes();
        for _ in 0..*rng.pick(&[1, 1, 1, 2, 5]) {
            request(rng, w.0);
        }
        if rng.chance(1, 6) {
            let len = w.0.len() - at;
            let cut = at + rng.below(len + 1);
            w.0.truncate(cut);
        }
        w.end_bytes(at);
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        self.inputs += 1;
        let panics = panic_count();
        let mut r = Reader::new(input);
        let (Some(mode), Some(splits)) = (r.u8(), r.u8()) else {
            return Ok(());
        };
        let mut cuts: Vec<usize> = (0..splits)
            .filter_map(|_| r.u16().map(usize::from))
            .collect();
        let bytes = r.bytes().unwrap_or_default();
        cuts.retain(|&c| c < bytes.len());
        cuts.sort_unstable();
        let mut s = self.connect()?;
        let mut at = 0;
        let mut wrote = Ok(());
        for end in cuts.into_iter().chain([bytes.len()]) {
            // The server may close on a bad request before the rest is written: not an error.
            if let Err(e) = s.write_all(&bytes[at..end.max(at)]) {
                wrote = Err(e);
                break;
            }
            at = end.max(at);
        }
        match mode % 3 {
            delivery::STALL => {
                self.stalls += 1;
                self.stalled.push_back(s);
                if self.stalled.len() > STALLED {
                    if let Some(old) = self.stalled.pop_front() {
                        close_with_reset(old);
                    }
                }
            }
            delivery::ABORT => close_with_reset(s),
            _ => {
                let _ = s.shutdown(std::net::Shutdown::Write);
                s.set_read_timeout(Some(ANSWER_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                let mut answer = Vec::new();
                let read = s.read_to_end(&mut answer);
                close_with_reset(s);
                match read {
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset) => {}
                    Err(e) => {
                        return Err(format!(
                            "no end to the answer within {ANSWER_TIMEOUT:?} ({e}; wrote: {wrote:?})"
                        ))
                    }
                }
                if answer.is_empty() {
                    self.silent += 1;
                } else if !answer.starts_with(b"HTTP/1.") {
                    return Err(format!(
                        "the answer is not HTTP/1.x: {:?}",
                        String::from_utf8_lossy(&answer[..answer.len().min(200)])
                    ));
                } else {
                    self.answered += 1;
                    let class = answer.get(9).map_or(0, |c| c.wrapping_sub(b'0'));
                    self.statuses[usize::from(class.min(5))] += 1;
                }
            }
        }
        if panic_count() != panics {
            return Err(format!(
                "the server panicked: {}",
                crate::driver::last_panic()
            ));
        }
        self.health()
    }

    fn coverage(&self) -> String {
        let n = self.inputs;
        format!(
            "answered {} (2xx {}, 4xx {}, 5xx {}), closed without an answer {}, stalled clients {}; slowest /healthz {:.1} ms",
            pct(self.answered, n),
            pct(self.statuses[2], n),
            pct(self.statuses[4], n),
            pct(self.statuses[5], n),
            pct(self.silent, n),
            pct(self.stalls, n),
            self.health_slowest.as_secs_f64() * 1000.0,
        )
    }
}
