//! WireGuard's cross-platform userspace API on `/var/run/wireguard/<interface>.sock`, so that
//! `wg show`, `wg show <interface> dump` and `wg showconf` work against the gateway.
//!
//! `get=1` is answered from the snapshot the event loop publishes every second: the data path
//! never waits on a client. `set=1` is refused with `errno=-1` (EPERM, which `wg` reports): the
//! config file or the TunnelEndpoints are the source of truth, and a change made here would be
//! undone by the next reload. Each client has a thread, a 2 s read and write timeout and a
//! 64 KiB request limit; at most [`MAX_CLIENTS`] at once, the rest are closed at once.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use liqonet_proto::Key;

use crate::snapshot::Snapshot;

pub const SOCKET_DIR: &str = "/var/run/wireguard";
const MAX_CLIENTS: usize = 8;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_REQUEST: u64 = 64 * 1024;

/// The device-wide facts `get=1` reports besides the peers.
#[derive(Clone)]
pub struct Device {
    pub interface: String,
    pub private_key: Key,
    pub listen_port: u16,
}

/// The socket while it is served; removed when dropped.
pub struct Uapi {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for Uapi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread so that it sees `stop` and ends.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the API for `interface` in `dir` (normally [`SOCKET_DIR`]). A stale socket (nobody
/// listening) is replaced; a live one (another process serves this interface) is an error.
pub fn spawn(
    dir: &Path,
    interface: &str,
    device: Device,
    snapshot: Snapshot,
) -> std::io::Result<Uapi> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{interface}.sock"));
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by another process", path.display()),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let clients = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("uapi".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if clients.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                let (device, snapshot, clients) =
                    (device.clone(), snapshot.clone(), clients.clone());
                let spawned = std::thread::Builder::new()
                    .name("uapi-client".into())
                    .spawn(move || {
                        let _ = serve_client(stream, &device, &snapshot);
                        clients.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    tracing::debug!("UAPI: no thread for a client");
                }
            }
        })?;
    tracing::info!(socket = %path.display(), "serving the WireGuard userspace API (wg show)");
    Ok(Uapi { path, stop })
}

fn serve_client(stream: UnixStream, device: &Device, snapshot: &Snapshot) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream.take(MAX_REQUEST));
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        match line.trim_end_matches('\n') {
            "get=1" => {
                expect_blank(&mut reader)?;
                let answer = get(device, snapshot);
                writer.write_all(answer.as_bytes())?;
            }
            // liqonet's own verb: the report `liqonet-gateway status` prints, as JSON.
            "get=liqonet" => {
                expect_blank(&mut reader)?;
                let report = match snapshot.lock() {
                    Ok(p) => crate::status::report(
                        &device.interface,
                        &device.private_key,
                        device.listen_port,
                        &p,
                    ),
                    Err(_) => return Ok(()),
                };
                let json = serde_json::to_string(&report).unwrap_or_default();
                writer.write_all(json.as_bytes())?;
                writer.write_all(b"\n")?;
                return Ok(());
            }
            "set=1" => {
                // Read the whole request (up to its blank line), then refuse it.
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 || line == "\n" {
                        break;
                    }
                }
                writer.write_all(b"errno=-1\n\n")?;
            }
            _ => return Ok(()),
        }
    }
}

fn expect_blank(reader: &mut impl BufRead) -> std::io::Result<()> {
    let mut blank = String::new();
    reader.read_line(&mut blank)?;
    if blank == "\n" {
        Ok(())
    } else {
        Err(std::io::ErrorKind::InvalidData.into())
    }
}

/// The `get=1` answer, as WireGuard implementations write it.
pub fn get(device: &Device, snapshot: &Snapshot) -> String {
    let (peers, at) = match snapshot.lock() {
        Ok(s) => (s.peers.clone(), s.published_at),
        Err(_) => (Vec::new(), None),
    };
    let at = at.unwrap_or_else(SystemTime::now);
    let mut out = String::with_capacity(256 + 256 * peers.len());
    let _ = writeln!(out, "private_key={}", hex(&device.private_key.0));
    let _ = writeln!(out, "listen_port={}", device.listen_port);
    for p in &peers {
        let _ = writeln!(out, "public_key={}", hex(&p.public_key.0));
        if let Some(ep) = p.endpoint {
            let _ = writeln!(out, "endpoint={ep}");
        }
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            p.persistent_keepalive.unwrap_or(0)
        );
        // Absolute time: the session's age subtracted from when it was measured.
        let (sec, nsec) = p
            .last_handshake_age
            .and_then(|age| at.checked_sub(age))
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
        let _ = writeln!(out, "last_handshake_time_sec={sec}");
        let _ = writeln!(out, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(out, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(out, "tx_bytes={}", p.tx_bytes);
        for n in &p.networks {
            let _ = writeln!(out, "allowed_ip={}", n.cidr);
        }
        out.push_str("protocol_version=1\n");
    }
    out.push_str("errno=0\n\n");
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Network, PeerStats};

    fn device() -> Device {
        Device {
            interface: "wg9".into(),
            private_key: Key([0x11; 32]),
            listen_port: 51840,
        }
    }

    fn snapshot() -> Snapshot {
        let s = Snapshot::default();
        if let Ok(mut p) = s.lock() {
            p.published_at = Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
            p.peers.push(PeerStats {
                name: "foreign".into(),
                public_key: Key([0xab; 32]),
                persistent_keepalive: Some(25),
                networks: vec![Network {
                    cidr: "10.244.0.0/16".parse().unwrap(),
                    remapped: "10.245.0.0/16".parse().unwrap(),
                }],
                last_handshake_age: Some(Duration::from_millis(1500)),
                endpoint: Some("192.0.2.2:51840".parse().unwrap()),
                rx_bytes: 10,
                tx_bytes: 20,
                up: true,
                latency: crate::engine::Latency::default(),
                rtt_histogram: Default::default(),
                incarnation: 1,
            });
        }
        s
    }

    #[test]
    fn get_names_every_key_wg_reads_with_an_absolute_handshake_time() {
        let text = get(&device(), &snapshot());
        let expected = format!(
            "private_key={}\nlisten_port=51840\npublic_key={}\nendpoint=192.0.2.2:51840\npersistent_keepalive_interval=25\nlast_handshake_time_sec=1799999998\nlast_handshake_time_nsec=500000000\nrx_bytes=10\ntx_bytes=20\nallowed_ip=10.244.0.0/16\nprotocol_version=1\nerrno=0\n\n",
            "11".repeat(32),
            "ab".repeat(32)
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn a_socket_serves_get_refuses_set_replaces_a_stale_one_and_goes_away() {
        let dir = std::env::temp_dir().join(format!("liqonet-uapi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A stale socket from a killed process: a file nobody listens on.
        drop(UnixListener::bind(dir.join("wg9.sock")).unwrap());
        let served = spawn(&dir, "wg9", device(), snapshot()).unwrap();
        let path = dir.join("wg9.sock");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second server for the same interface is refused.
        assert!(spawn(&dir, "wg9", device(), snapshot()).is_err());
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(b"set=1\nlisten_port=1\n\nget=1\n\n").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("errno=-1\n\nprivate_key="), "{answer}");
        assert!(answer.ends_with("errno=0\n\n"), "{answer}");
        // liqonet's report for `liqonet-gateway status`.
        let report = crate::status::fetch(&dir, "wg9").unwrap();
        assert_eq!(report.peers[0].name, "foreign");
        assert_eq!(report.peers[0].networks, ["10.244.0.0/16 → 10.245.0.0/16"]);
        assert!(crate::status::all_up(&report));
        drop(served);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
