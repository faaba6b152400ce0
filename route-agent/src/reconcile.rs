//! Desired state − observed state → idempotent actions. Running it twice changes nothing the
//! second time; it only ever removes what carries the agent's marks.

use std::net::Ipv4Addr;

use anyhow::Context;

use crate::desired::{Desired, Vxlan};
use crate::netlink::Netlink;

/// Where the agent's state lives: its table, its rule priority, its overlay device name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub table: u32,
    pub priority: u32,
    pub device: String,
}

/// What one pass changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
}

impl Changes {
    pub fn any(&self) -> bool {
        self.added + self.removed > 0
    }
}

pub fn reconcile(nl: &Netlink, d: &Desired, owned: &Owned) -> anyhow::Result<Changes> {
    let mut ch = Changes::default();
    if d.forwarding {
        ensure_sysctl("net/ipv4/ip_forward", "1")?;
        ensure_sysctl("net/ipv6/conf/all/forwarding", "1")?;
    }
    let overlay = match &d.vxlan {
        Some(v) => Some(reconcile_vxlan(nl, v, &mut ch)?),
        None => {
            if let Some(l) = nl.vxlan_link(&owned.device)? {
                nl.del_link(l.index)?;
                ch.removed += 1;
            }
            None
        }
    };

    let installed = nl.routes(owned.table)?;
    let mut present = Vec::new();
    for (msg, route) in installed {
        match d.routes.iter().find(|r| route.is(r, overlay)) {
            Some(r) if !present.contains(r) => present.push(*r),
            // Stale, or a duplicate of one already kept.
            _ => {
                nl.del_route(msg)?;
                ch.removed += 1;
            }
        }
    }
    for r in d.routes.iter().filter(|r| !present.contains(r)) {
        tracing::debug!(?r, "adding a route");
        nl.add_route(r, owned.table, overlay.filter(|_| r.overlay))?;
        ch.added += 1;
    }

    let mut kept = Vec::new();
    for (msg, rule) in nl.rules(owned.priority, owned.table)? {
        if d.rules.contains(&rule) && !kept.contains(&rule) {
            kept.push(rule);
        } else {
            nl.del_rule(msg)?;
            ch.removed += 1;
        }
    }
    for r in d.rules.iter().filter(|r| !kept.contains(r)) {
        tracing::debug!(?r, "adding a rule");
        nl.add_rule(r, owned.priority, owned.table)?;
        ch.added += 1;
    }
    Ok(ch)
}

/// Brings the overlay device to `v` (recreating it if its identity changed); returns its index.
fn reconcile_vxlan(nl: &Netlink, v: &Vxlan, ch: &mut Changes) -> anyhow::Result<u32> {
    let index = match nl.vxlan_link(&v.name)? {
        Some(l) if l.vni == Some(v.vni) && l.port == Some(v.port) && l.local == Some(v.local) => {
            if l.mtu != Some(u32::from(v.mtu)) || !l.up {
                tracing::debug!(mtu = ?l.mtu, up = l.up, "setting the overlay device's MTU and state");
                nl.set_mtu_up(l.index, v.mtu)?;
                ch.added += 1;
            }
            l.index
        }
        existing => {
            if let Some(l) = existing {
                tracing::debug!(?l, "recreating the overlay device");
                nl.del_link(l.index)?;
                ch.removed += 1;
            }
            ch.added += 1;
            nl.create_vxlan(v)?
        }
    };
    let addrs = nl.addresses(index)?;
    for &(ip, len) in &v.addresses {
        if !addrs.contains(&(ip, len)) {
            tracing::debug!(?addrs, %ip, "adding an overlay address");
            nl.add_address(index, ip, len)?;
            ch.added += 1;
        }
    }
    // Return traffic from the overlay has a source whose route is elsewhere (the TUN, or the
    // node network): strict reverse-path filtering would drop it. Loose (2) still requires a route.
    ensure_sysctl(&format!("net/ipv4/conf/{}/rp_filter", v.name), "2")?;

    let fdb: Vec<Ipv4Addr> = nl.fdb(index)?;
    for stale in fdb.iter().filter(|ip| !v.remotes.contains(ip)) {
        nl.del_fdb(index, *stale)?;
        ch.removed += 1;
    }
    for missing in v.remotes.iter().filter(|ip| !fdb.contains(ip)) {
        tracing::debug!(%missing, ?fdb, "adding an FDB entry");
        nl.add_fdb(index, *missing)?;
        ch.added += 1;
    }
    Ok(index)
}

/// Removes every rule, route and device the agent owns.
pub fn cleanup(nl: &Netlink, owned: &Owned) -> anyhow::Result<Changes> {
    reconcile(nl, &Desired::default(), owned)
}

/// Where sysctls are written: `/proc/sys`, or `LIQONET_PROC_SYS` where a container sees the
/// host's (containers get a read-only `/proc/sys`; the DaemonSet mounts the host's elsewhere).
fn sysctl_root() -> String {
    std::env::var("LIQONET_PROC_SYS").unwrap_or_else(|_| "/proc/sys".into())
}

fn ensure_sysctl(key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("{}/{key}", sysctl_root());
    let current = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    if current.trim() != value {
        std::fs::write(&path, value).with_context(|| format!("cannot set {key} to {value}"))?;
        tracing::info!(
            "set {} = {value} (was {})",
            key.replace('/', "."),
            current.trim()
        );
    }
    Ok(())
}
