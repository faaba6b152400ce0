//! `peering-info`, `peer add`, `peer remove` for a standalone config file: the file is edited
//! in place (the previous one kept as `FILE.bak`), and the gateway applies it when restarted.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use liqonet_proto::config::{Endpoint, GatewayConfig, PeerConfig};
use liqonet_proto::peering::PeeringInfo;
use serde_yaml::{Mapping, Value};

use crate::keys::public_of;
use crate::settings::{ipam_state_path, read_private_key, read_state};

fn load(path: &Path) -> anyhow::Result<(String, GatewayConfig)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = GatewayConfig::from_yaml(&text)
        .map_err(|e| anyhow!("invalid configuration: {}:\n{e}", path.display()))?;
    Ok((text, config))
}

/// This cluster's peering information, as YAML for the other cluster's `peer add`.
pub fn info(config_path: &Path, endpoint: Option<&str>) -> anyhow::Result<String> {
    let (_, config) = load(config_path)?;
    let private = read_private_key(config_path, &config).map_err(|e| anyhow!("{e}"))?;
    let endpoint: Option<Endpoint> = endpoint
        .map(|e| e.parse().map_err(|m: String| anyhow!("--endpoint: {m}")))
        .transpose()?;
    if config.local_networks.is_empty() {
        bail!("localNetworks is empty: the cluster would export nothing");
    }
    render(&PeeringInfo::of(&config, public_of(&private), endpoint))
}

/// Peering information as the YAML `peer add` reads, with a comment saying whose it is.
pub fn render(info: &PeeringInfo) -> anyhow::Result<String> {
    let mut text = format!(
        "# liqonet peering information of cluster {:?}\n",
        info.cluster_id
    );
    if info.endpoint.is_none() {
        text += "# (no endpoint: the other cluster will only answer; pass --endpoint HOST:PORT)\n";
    }
    text += &serde_yaml::to_string(info)?;
    Ok(text)
}

/// Reads a file of peering information.
pub fn read_info(path: &Path) -> anyhow::Result<PeeringInfo> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    PeeringInfo::from_yaml(&text)
        .map_err(|e| anyhow!("{} is not peering information:\n{e}", path.display()))
}

/// In words, what adding `peer` does.
pub fn describe(peer: &PeerConfig) -> String {
    let nets: Vec<String> = peer
        .networks
        .iter()
        .map(|n| match n.remapped {
            Some(_) => format!("{} (overlaps: remapped by IPAM)", n.cidr),
            None => n.cidr.to_string(),
        })
        .collect();
    format!("added peer {:?}: {}", peer.cluster_id, nets.join(", "))
}

/// Adds the cluster described in `info_path` as a peer; returns what was added, in words.
pub fn add(config_path: &Path, info_path: &Path) -> anyhow::Result<String> {
    let (text, config) = load(config_path)?;
    let own = public_of(&read_private_key(config_path, &config).map_err(|e| anyhow!("{e}"))?);
    let info = read_info(info_path)?;
    let peer = info
        .as_peer_of(&config, &own)
        .map_err(|e| anyhow!("cannot add cluster {:?}: {e}", info.cluster_id))?;
    let summary = describe(&peer);
    edit(config_path, &text, |doc| {
        let peers = doc
            .entry(Value::from("peers"))
            .or_insert_with(|| Value::Sequence(Vec::new()));
        let list = peers
            .as_sequence_mut()
            .ok_or_else(|| anyhow!("peers is not a list"))?;
        list.push(serde_yaml::to_value(&peer)?);
        Ok(())
    })?;
    Ok(summary)
}

/// Removes peer `cluster_id`.
pub fn remove(config_path: &Path, cluster_id: &str) -> anyhow::Result<()> {
    let (text, config) = load(config_path)?;
    if !config.peers.iter().any(|p| p.cluster_id == cluster_id) {
        bail!("{cluster_id:?} is not a peer of this cluster");
    }
    edit(config_path, &text, |doc| {
        if let Some(Value::Sequence(list)) = doc.get_mut("peers") {
            list.retain(|p| p.get("clusterID").and_then(Value::as_str) != Some(cluster_id));
        }
        Ok(())
    })
}

/// Applies `change` to the YAML document, checks the result is a valid config whose `auto`
/// networks IPAM can resolve, then replaces the file (keeping the old one as FILE.bak).
fn edit(
    path: &Path,
    text: &str,
    change: impl FnOnce(&mut Mapping) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut doc: Value = serde_yaml::from_str(text)?;
    change(
        doc.as_mapping_mut()
            .ok_or_else(|| anyhow!("the config is not a mapping"))?,
    )?;
    let new_text = serde_yaml::to_string(&doc)?;
    let config = GatewayConfig::from_yaml(&new_text)
        .map_err(|e| anyhow!("the result would be invalid:\n{e}"))?;
    let state = read_state(&ipam_state_path(path))?;
    config
        .resolve_remapped(&state)
        .map_err(|e| anyhow!("the result would be invalid:\n{e}"))?;
    std::fs::write(path.with_extension("yaml.bak"), text).context("cannot write the backup")?;
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, new_text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))
}
