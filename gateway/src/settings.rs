//! Loads a standalone config file into what the gateway runs on: the validated config, the
//! private key, and peers with resolved endpoints. Errors name the field and value.

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};

use liqonet_proto::config::{ConfigError, ConfigErrors, Endpoint, GatewayConfig, Remapped};
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
    let mut errs = Vec::new();
    let mut err = |path: String, message: String| errs.push(ConfigError { path, message });

    let key_path = match path.parent() {
        Some(dir) => dir.join(&config.private_key_file),
        None => config.private_key_file.clone(),
    };
    let private_key = match std::fs::read_to_string(&key_path) {
        Ok(s) => s.parse::<Key>().map_err(|e| {
            err(
                "privateKeyFile".into(),
                format!("{key_path:?} does not hold a WireGuard private key: {e}"),
            )
        }),
        Err(e) => {
            err(
                "privateKeyFile".into(),
                format!("cannot read {key_path:?}: {e}"),
            );
            Err(())
        }
    };

    let mut peers = Vec::with_capacity(config.peers.len());
    for (i, p) in config.peers.iter().enumerate() {
        let endpoint = match &p.endpoint {
            None => None,
            Some(Endpoint::Addr(a)) => Some(*a),
            Some(Endpoint::Host(host, port)) => {
                match (host.as_str(), *port)
                    .to_socket_addrs()
                    .map(|mut a| a.next())
                {
                    Ok(Some(a)) => Some(a),
                    Ok(None) => {
                        err(
                            format!("peers[{i}].endpoint"),
                            format!("{host:?} has no address"),
                        );
                        None
                    }
                    Err(e) => {
                        err(
                            format!("peers[{i}].endpoint"),
                            format!("cannot resolve {host:?}: {e}"),
                        );
                        None
                    }
                }
            }
        };
        let mut networks = Vec::with_capacity(p.networks.len());
        for (j, n) in p.networks.iter().enumerate() {
            match n.remapped {
                None => {}
                Some(Remapped::To(r)) if r == n.cidr => {}
                // Address translation between overlapping CIDRs is not in this version's data path.
                Some(other) => err(
                    format!("peers[{i}].networks[{j}].remapped"),
                    format!(
                        "{:?}: this version routes networks as the peer numbers them; remapped must equal cidr ({}) or be omitted",
                        match other {
                            Remapped::Auto => "auto".to_string(),
                            Remapped::To(r) => r.to_string(),
                        },
                        n.cidr
                    ),
                ),
            }
            networks.push(Network {
                cidr: n.cidr,
                remapped: n.cidr,
            });
        }
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
