//! Loads a standalone config file into what the gateway runs on: the validated config, the
//! private key, and peers with resolved endpoints. Errors name the field and value.

use std::net::{SocketAddr, ToSocketAddrs};
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
    let text = std::fs::read_to_string(&key_path)
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
    match std::fs::read_to_string(path) {
        Ok(text) => serde_yaml::from_str(&text).map_err(|e| err(e.to_string())),
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

pub fn load(path: &Path) -> Result<Settings, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
        path: path.to_owned(),
        error,
    })?;
    let invalid = |errors| LoadError::Invalid {
        path: path.to_owned(),
        errors,
    };
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
