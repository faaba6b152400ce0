//! The network half of a peering: what a cluster tells another (`peering-info`) and how that
//! becomes a peer of the other's gateway (`peer add`). Pure: the callers read and write files.

use serde::{Deserialize, Serialize};

use crate::config::{
    ConfigError, ConfigErrors, Endpoint, GatewayConfig, NetworkConfig, PeerConfig, Remapped,
};
use crate::{Cidr, Key};

/// This cluster as a peer sees it: who it is, its key, where to reach it, what it exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeeringInfo {
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
    pub public_key: Key,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    pub networks: Vec<Cidr>,
}

impl PeeringInfo {
    /// A standalone gateway's info: its local networks are what it exports.
    pub fn of(config: &GatewayConfig, public_key: Key, endpoint: Option<Endpoint>) -> Self {
        PeeringInfo {
            cluster_id: config.cluster_id.clone(),
            public_key,
            endpoint,
            networks: config.local_networks.clone(),
        }
    }

    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        let info: PeeringInfo = crate::config::parse_yaml(text)?;
        if info.networks.is_empty() {
            return Err(ConfigErrors(vec![ConfigError {
                path: "networks".into(),
                message: "a cluster must export at least one network".into(),
            }]));
        }
        Ok(info)
    }

    /// The peer entry `config` needs for this cluster. Networks that would clash with a local
    /// network or with what another peer is routed by get `remapped: auto`; the others are
    /// routed as they are. Refuses what cannot be a peer of `config`: itself, a cluster or a
    /// key it already has.
    pub fn as_peer_of(&self, config: &GatewayConfig, own_key: &Key) -> Result<PeerConfig, String> {
        if self.cluster_id == config.cluster_id {
            return Err(format!("{:?} is this cluster itself", self.cluster_id));
        }
        if own_key == &self.public_key {
            return Err("its public key is this cluster's own".into());
        }
        if let Some(p) = config
            .peers
            .iter()
            .find(|p| p.cluster_id == self.cluster_id)
        {
            return Err(format!(
                "{:?} is already a peer (peer remove it first)",
                p.cluster_id
            ));
        }
        if let Some(p) = config
            .peers
            .iter()
            .find(|p| p.public_key == self.public_key)
        {
            return Err(format!(
                "its public key is already peer {:?}'s",
                p.cluster_id
            ));
        }
        let routed: Vec<Cidr> = config
            .peers
            .iter()
            .flat_map(|p| {
                p.networks
                    .iter()
                    .filter_map(NetworkConfig::effective_remapped)
            })
            .chain(config.local_networks.iter().copied())
            .collect();
        let networks = self
            .networks
            .iter()
            .map(|&cidr| NetworkConfig {
                cidr,
                remapped: routed
                    .iter()
                    .any(|r| r.overlaps(&cidr))
                    .then_some(Remapped::Auto),
            })
            .collect();
        Ok(PeerConfig {
            cluster_id: self.cluster_id.clone(),
            public_key: self.public_key,
            endpoint: self.endpoint.clone(),
            persistent_keepalive: None,
            networks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME_KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const FOREIGN_KEY: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn home() -> GatewayConfig {
        GatewayConfig::from_yaml(
            "clusterID: home\nprivateKeyFile: k\nlocalNetworks: [10.244.0.0/16, 10.96.0.0/12]\n",
        )
        .unwrap()
    }

    fn foreign_info() -> PeeringInfo {
        PeeringInfo::from_yaml(&format!(
            "clusterID: foreign\npublicKey: {FOREIGN_KEY}\nendpoint: 192.0.2.2:51840\nnetworks: [10.244.0.0/16, 10.200.0.0/16]\n"
        ))
        .unwrap()
    }

    #[test]
    fn overlapping_networks_get_auto_the_others_stay() {
        let peer = foreign_info()
            .as_peer_of(&home(), &HOME_KEY.parse().unwrap())
            .unwrap();
        let remapped: Vec<_> = peer.networks.iter().map(|n| n.remapped).collect();
        assert_eq!(remapped, [Some(Remapped::Auto), None]);
        // The result is a valid config, whose auto network IPAM resolves.
        let mut c = home();
        c.peers.push(peer);
        c.validate().unwrap();
        let (nets, _) = c.resolve_remapped(&Default::default()).unwrap();
        assert_eq!(nets[0][0].to_string(), "10.0.0.0/16");
    }

    #[test]
    fn round_trips_through_yaml() {
        let info = PeeringInfo::of(
            &home(),
            HOME_KEY.parse().unwrap(),
            Some("192.0.2.1:51840".parse().unwrap()),
        );
        let text = serde_yaml::to_string(&info).unwrap();
        assert_eq!(PeeringInfo::from_yaml(&text).unwrap(), info);
    }

    #[test]
    fn refuses_what_cannot_be_a_peer() {
        let own: Key = HOME_KEY.parse().unwrap();
        let mut me = foreign_info();
        me.cluster_id = "home".into();
        assert!(me
            .as_peer_of(&home(), &own)
            .unwrap_err()
            .contains("this cluster itself"));
        let mut same_key = foreign_info();
        same_key.public_key = own;
        assert!(same_key
            .as_peer_of(&home(), &own)
            .unwrap_err()
            .contains("own"));
        let mut c = home();
        c.peers
            .push(foreign_info().as_peer_of(&home(), &own).unwrap());
        assert!(foreign_info()
            .as_peer_of(&c, &own)
            .unwrap_err()
            .contains("already a peer"));
        let e = PeeringInfo::from_yaml("clusterID: x\npublicKey: nope\nnetworks: [10.0.0.0/8]\n")
            .unwrap_err();
        assert_eq!(e.0[0].path, "publicKey");
        let e = PeeringInfo::from_yaml(&format!(
            "clusterID: x\npublicKey: {FOREIGN_KEY}\nnetworks: []\n"
        ))
        .unwrap_err();
        assert_eq!(e.0[0].path, "networks");
    }
}
