//! Loads a standalone config file into what the gateway runs on: the validated config, the
//! private key, and peers with resolved endpoints. Errors name the field and value.

use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use liqonet_proto::config::{ConfigError, ConfigErrors, Endpoint, GatewayConfig};
use liqonet_proto::ipam::IpamState;
use liqonet_proto::Key;

use crate::engine::{Network, PeerSpec};

pub struct Settings {
    pub config: GatewayConfig,
    pub private_key: Key,
    pub peers: Vec<PeerSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:\n{errors}")]
    Invalid { path: PathBuf, errors: ConfigErrors },
    #[error("IPAM state {path}: {message}")]
    State { path: PathBuf, message: String },
}

/// The private key `config` names, read relative to the config file at `path`.
pub fn read_private_key(path: &Path, config: &GatewayConfig) -> Result<Key, ConfigError> {
    let key_path = match path.parent() {
        Some(dir) => dir.join(&config.private_key_file),
        None => config.private_key_file.clone(),
    };
    let err = |message: String| ConfigError {
        path: "privateKeyFile".into(),
        message,
    };
    let text = read_text(&key_path, MAX_KEY_FILE)
        .map_err(|e| err(format!("cannot read {key_path:?}: {e}")))?;
    text.parse::<Key>().map_err(|e| {
        err(format!(
            "{key_path:?} does not hold a WireGuard private key: {e}"
        ))
    })
}

/// Where the prefixes IPAM chose are kept: next to the config, `NAME.yaml` → `NAME.ipam.yaml`.
pub fn ipam_state_path(config: &Path) -> PathBuf {
    config.with_extension("ipam.yaml")
}

/// The IPAM state file at `path` (an absent file is an empty state).
pub fn read_state(path: &Path) -> Result<IpamState, LoadError> {
    let err = |message: String| LoadError::State {
        path: path.to_owned(),
        message,
    };
    match read_text(path, MAX_CONFIG_FILE) {
        Ok(text) => {
            check_nesting(&text).map_err(err)?;
            serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IpamState::default()),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Replaces the state file atomically (write a sibling, then rename over it).
fn write_state(path: &Path, state: &IpamState) -> Result<(), LoadError> {
    let err = |message: String| LoadError::State {
        path: path.to_owned(),
        message,
    };
    let text = serde_yaml::to_string(state).map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(
        &tmp,
        format!("# Prefixes chosen for `remapped: auto`; kept across restarts.\n{text}"),
    )
    .and_then(|()| std::fs::rename(&tmp, path))
    .map_err(|e| err(e.to_string()))
}

/// An endpoint's socket address, looking a host name up (blocking).
pub fn resolve_endpoint(endpoint: &Endpoint) -> Result<SocketAddr, String> {
    match endpoint {
        Endpoint::Addr(a) => Ok(*a),
        Endpoint::Host(host, port) => match (host.as_str(), *port).to_socket_addrs() {
            Ok(mut a) => a.next().ok_or_else(|| format!("{host:?} has no address")),
            Err(e) => Err(format!("cannot resolve {host:?}: {e}")),
        },
    }
}

/// Largest config or state file read (a real one is a few KB).
pub const MAX_CONFIG_FILE: u64 = 1 << 20;
const MAX_KEY_FILE: u64 = 4096;
/// Deepest `[`/`{` nesting accepted: the YAML parser's time grows with the square of the depth.
const MAX_NESTING: usize = 64;

/// Reads a regular file of at most `limit` bytes as text. A FIFO, a device (`/dev/zero`) or an
/// oversized file is an error at once, never a hang or an unbounded read.
pub fn read_text(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind};
    // O_NONBLOCK: opening a FIFO with no writer would wait forever.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > limit {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{} bytes, more than the {limit} accepted", meta.len()),
        ));
    }
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("more than the {limit} bytes accepted"),
        ));
    }
    Ok(text)
}

/// Refuses flow collections nested deeper than [`MAX_NESTING`] (outside quotes and comments).
fn check_nesting(text: &str) -> Result<(), String> {
    let (mut depth, mut quote, mut comment) = (0usize, None, false);
    let mut prev = '\n';
    for c in text.chars() {
        match (quote, c) {
            (_, '\n') => comment = false,
            _ if comment => {}
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '#') if prev.is_whitespace() => comment = true,
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!(
                        "collections nested deeper than {MAX_NESTING} levels"
                    ));
                }
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    Ok(())
}

pub fn load(path: &Path) -> Result<Settings, LoadError> {
    let text = read_text(path, MAX_CONFIG_FILE).map_err(|error| LoadError::Read {
        path: path.to_owned(),
        error,
    })?;
    let invalid = |errors| LoadError::Invalid {
        path: path.to_owned(),
        errors,
    };
    check_nesting(&text).map_err(|message| {
        invalid(ConfigErrors(vec![ConfigError {
            path: "(document)".into(),
            message,
        }]))
    })?;
    let config = GatewayConfig::from_yaml(&text).map_err(invalid)?;
    let state_path = ipam_state_path(path);
    let state = read_state(&state_path)?;
    let (remapped, new_state) = config.resolve_remapped(&state).map_err(invalid)?;
    if new_state != state {
        write_state(&state_path, &new_state)?;
    }
    let mut errs = Vec::new();
    let mut err = |path: String, message: String| errs.push(ConfigError { path, message });

    let private_key = read_private_key(path, &config).map_err(|e| err(e.path, e.message));

    let mut peers = Vec::with_capacity(config.peers.len());
    for (i, p) in config.peers.iter().enumerate() {
        let endpoint = match p.endpoint.as_ref().map(resolve_endpoint).transpose() {
            Ok(e) => e,
            Err(m) => {
                err(format!("peers[{i}].endpoint"), m);
                None
            }
        };
        let networks = p
            .networks
            .iter()
            .zip(&remapped[i])
            .map(|(n, r)| Network {
                cidr: n.cidr,
                remapped: *r,
            })
            .collect();
        peers.push(PeerSpec {
            name: p.cluster_id.clone(),
            public_key: p.public_key,
            endpoint,
            persistent_keepalive: p.persistent_keepalive,
            networks,
        });
    }
    match private_key {
        Ok(private_key) if errs.is_empty() => Ok(Settings {
            config,
            private_key,
            peers,
        }),
        _ => Err(invalid(ConfigErrors(errs))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_and_huge_files_are_refused_at_once() {
        let dir = std::env::temp_dir().join(format!("liqonet-read-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("key");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = read_text(&fifo, MAX_KEY_FILE).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file");
        let e = read_text(Path::new("/dev/zero"), MAX_KEY_FILE).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file");
        let big = dir.join("big.yaml");
        std::fs::write(&big, vec![b'#'; 5000]).unwrap();
        let e = read_text(&big, MAX_KEY_FILE).unwrap_err();
        assert!(e.to_string().contains("more than the 4096"), "{e}");
        std::fs::write(&big, "ok\n").unwrap();
        assert_eq!(read_text(&big, MAX_KEY_FILE).unwrap(), "ok\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing_and_quotes_do_not_count() {
        let deep = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let t = std::time::Instant::now();
        assert!(check_nesting(&deep).unwrap_err().contains("deeper than 64"));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        let fine = "a: [[1, 2], {b: \"[[[[\"}] # [[[[[[\nc: '{{{{'\n";
        assert!(check_nesting(fine).is_ok());
        assert!(check_nesting(&"[".repeat(64)).is_ok());
    }
}
