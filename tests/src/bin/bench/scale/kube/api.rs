//! One TLS connection to the API server, opened ahead of a timed write, so that a round's clock
//! starts when the request leaves and not when a client process starts and shakes hands
//! (`openssl s_client` carries HTTP/1.1 for us; the lab has no TLS client library).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use liqonet_lab::kube::controlplane::{ControlPlane, API_PORT};

pub struct Conn {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    host: String,
}

impl Conn {
    /// Connects as the lab admin and waits until a first request is answered (the handshake is
    /// done).
    pub fn open(cp: &ControlPlane) -> anyhow::Result<Conn> {
        let f = |name: &str| cp.dir.join(name).to_string_lossy().into_owned();
        let host = format!("{}:{API_PORT}", cp.ip);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &cp.ns, "openssl", "s_client", "-quiet"])
            .args(["-connect", &host, "-CAfile", &f("ca.crt")])
            .args(["-cert", &f("admin.crt"), "-key", &f("admin.key")])
            .arg("-verify_return_error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run openssl s_client")?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("openssl s_client without pipes");
        };
        let mut conn = Conn {
            child,
            input,
            output: BufReader::new(output),
            host,
        };
        conn.send("GET", "/readyz", "")?;
        conn.answer()
            .context("the API server does not answer over s_client")?;
        Ok(conn)
    }

    /// A merge patch: when the request was written, and how long the answer took.
    pub fn patch(&mut self, path: &str, body: &str) -> anyhow::Result<(Instant, Duration)> {
        let sent = Instant::now();
        self.send("PATCH", path, body)?;
        self.answer().with_context(|| format!("PATCH {path}"))?;
        Ok((sent, sent.elapsed()))
    }

    fn send(&mut self, method: &str, path: &str, body: &str) -> anyhow::Result<()> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nContent-Type: application/merge-patch+json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.input.write_all(req.as_bytes())?;
        self.input.flush()?;
        Ok(())
    }

    /// Reads one response; an error unless its status is 2xx.
    fn answer(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        self.output.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP status line: {line:?}"))?;
        let (mut length, mut chunked) = (0usize, false);
        loop {
            let mut h = String::new();
            if self.output.read_line(&mut h)? == 0 {
                bail!("the connection closed in the headers");
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().context("Content-Length")?,
                "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
        let body = if chunked {
            self.chunks()?
        } else {
            let mut b = vec![0; length];
            self.output.read_exact(&mut b)?;
            b
        };
        let body = String::from_utf8_lossy(&body).into_owned();
        if !(200..300).contains(&status) {
            bail!("HTTP {status}: {body}");
        }
        Ok(body)
    }

    fn chunks(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            self.output.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .with_context(|| format!("bad chunk size {size:?}"))?;
            let mut chunk = vec![0; size + 2];
            self.output.read_exact(&mut chunk)?;
            if size == 0 {
                return Ok(body);
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
