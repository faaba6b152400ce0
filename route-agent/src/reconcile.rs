//! Desired state − observed state → idempotent actions. Running it twice changes nothing the
//! second time (and writes nothing); it only ever removes what carries the agent's marks.
//!
//! Every action is attempted: one that fails is recorded, with what it was, and the others still
//! run, so one route the kernel refuses does not leave the rest uninstalled. Routes and rules
//! go to the kernel in batches (deletions, then additions), matched against the installed ones
//! by set look-ups: a thousand remote networks cost milliseconds, not a round trip each. A route
//! whose next hop changed is replaced in place, never deleted and added again, so a moved
//! gateway node leaves no destination without a route meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use liqonet_proto::Cidr;

use crate::desired::{Desired, MacDisplay, Route, Rule, Vxlan};
use crate::kernel::{Installed, Kernel};

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

/// An action that failed: what it was (`add route 10.245.0.0/16 via 10.84.0.10 to table 2741`)
/// and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub action: String,
    pub cause: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {}: {}", self.action, self.cause)
    }
}

/// A pass that could not do everything: what it did change, and each action that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incomplete {
    pub changes: Changes,
    pub failures: Vec<Failure>,
}

impl fmt::Display for Incomplete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} action(s) failed", self.failures.len())?;
        for (i, failure) in self.failures.iter().enumerate() {
            write!(f, "{} {failure}", if i == 0 { ":" } else { ";" })?;
        }
        Ok(())
    }
}

impl std::error::Error for Incomplete {}

/// The agent's routes and rules as a pass left them: how many it owns (desired or stale ones it
/// could not delete), and which desired ones are not in place. `None`: not known this pass (the
/// listing failed, or the overlay device they go through is not set up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InPlace {
    pub routes: Option<usize>,
    pub missing_routes: Vec<Route>,
    pub rules: Option<usize>,
    pub missing_rules: Vec<Rule>,
}

/// Everything one pass did: its changes, its failures, and what it left in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub changes: Changes,
    pub failures: Vec<Failure>,
    pub in_place: InPlace,
}

impl Outcome {
    pub fn into_result(self) -> Result<Changes, Incomplete> {
        if self.failures.is_empty() {
            Ok(self.changes)
        } else {
            Err(Incomplete {
                changes: self.changes,
                failures: self.failures,
            })
        }
    }
}

pub fn reconcile<K: Kernel>(k: &K, d: &Desired, owned: &Owned) -> Result<Changes, Incomplete> {
    apply(k, d, owned).into_result()
}

/// [`reconcile`], saying also what the pass left in place (for the agent's status and metrics).
pub fn apply<K: Kernel>(k: &K, d: &Desired, owned: &Owned) -> Outcome {
    let mut pass = Pass {
        k,
        outcome: Outcome::default(),
    };
    if d.forwarding {
        pass.sysctl("net/ipv4/ip_forward", "1");
        pass.sysctl("net/ipv6/conf/all/forwarding", "1");
    }
    // Before the routes, so that no remote network is ever without either.
    pass.guards(d);
    let overlay = match &d.vxlan {
        Some(v) => pass.vxlan(v),
        None => {
            pass.no_vxlan(&owned.device);
            None
        }
    };
    if d.vxlan.is_some() && overlay.is_none() {
        // Without the device, its routes can neither be installed nor told from stale ones;
        // the device's failure is reported, and the next pass tries again.
        tracing::debug!("routes left as they are: the overlay device is not set up");
    } else {
        pass.routes(d, owned.table, overlay);
    }
    pass.rules(d, owned);
    pass.outcome
}

/// Removes every rule, route and device the agent owns.
pub fn cleanup<K: Kernel>(k: &K, owned: &Owned) -> Result<Changes, Incomplete> {
    reconcile(k, &Desired::default(), owned)
}

/// One reconciliation pass: what it changed, what failed and what is in place so far.
struct Pass<'a, K> {
    k: &'a K,
    outcome: Outcome,
}

enum Change {
    Add,
    Remove,
}

impl<K: Kernel> Pass<'_, K> {
    /// Runs `f`; on failure records it as `action` and returns `None`.
    fn attempt<T>(
        &mut self,
        action: impl FnOnce() -> String,
        f: impl FnOnce(&K) -> anyhow::Result<T>,
    ) -> Option<T> {
        match f(self.k) {
            Ok(v) => Some(v),
            Err(e) => {
                self.outcome.failures.push(Failure {
                    action: action(),
                    cause: format!("{e:#}"),
                });
                None
            }
        }
    }

    /// A write, counted when it succeeds.
    fn change(
        &mut self,
        kind: Change,
        action: impl FnOnce() -> String,
        f: impl FnOnce(&K) -> anyhow::Result<()>,
    ) -> bool {
        let done = self.attempt(action, f).is_some();
        if done {
            match kind {
                Change::Add => self.outcome.changes.added += 1,
                Change::Remove => self.outcome.changes.removed += 1,
            }
        }
        done
    }

    /// Sets a sysctl if it has another value, and says so.
    fn sysctl(&mut self, key: &str, value: &str) {
        let name = key.replace('/', ".");
        let Some(current) = self.attempt(|| format!("read {name}"), |k| k.sysctl(key)) else {
            return;
        };
        if current != value
            && self
                .attempt(
                    || format!("set {name} to {value}"),
                    |k| k.set_sysctl(key, value),
                )
                .is_some()
        {
            tracing::info!("set {name} = {value} (was {current})");
        }
    }

    fn no_vxlan(&mut self, device: &str) {
        let found = self.attempt(
            || format!("look up device {device}"),
            |k| k.vxlan_link(device),
        );
        if let Some(Some(l)) = found {
            self.change(
                Change::Remove,
                || format!("delete device {device}"),
                |k| k.del_link(l.index),
            );
        }
    }

    /// Brings the overlay device to `v` (recreating it if its identity changed); its index, if
    /// it exists.
    fn vxlan(&mut self, v: &Vxlan) -> Option<u32> {
        let name = &v.name;
        let found = self.attempt(|| format!("look up device {name}"), |k| k.vxlan_link(name))?;
        let index = match found {
            Some(l)
                if l.vni == Some(v.vni)
                    && l.port == Some(v.port)
                    && l.local == Some(v.local)
                    && l.mac == Some(v.mac) =>
            {
                if l.mtu != Some(u32::from(v.mtu)) || !l.up {
                    tracing::debug!(mtu = ?l.mtu, up = l.up, "setting the overlay device's MTU and state");
                    self.change(
                        Change::Add,
                        || format!("set device {name} up with MTU {}", v.mtu),
                        |k| k.set_mtu_up(l.index, v.mtu),
                    );
                }
                l.index
            }
            existing => {
                if let Some(l) = existing {
                    tracing::debug!(?l, "recreating the overlay device");
                    let deleted = self.change(
                        Change::Remove,
                        || format!("delete device {name} to recreate it with VNI {}, port {}, local {}, MAC {}", v.vni, v.port, v.local, MacDisplay(&v.mac)),
                        |k| k.del_link(l.index),
                    );
                    if !deleted {
                        return None;
                    }
                }
                let index = self.attempt(
                    || {
                        format!(
                            "create VXLAN device {name} (VNI {}, port {}, local {}, MAC {})",
                            v.vni,
                            v.port,
                            v.local,
                            MacDisplay(&v.mac)
                        )
                    },
                    |k| k.create_vxlan(v),
                )?;
                self.outcome.changes.added += 1;
                index
            }
        };
        let addrs = self.attempt(
            || format!("list the addresses of {name}"),
            |k| k.addresses(index),
        );
        if let Some(addrs) = addrs {
            for &(ip, len) in v.addresses.iter().filter(|a| !addrs.contains(a)) {
                self.change(
                    Change::Add,
                    || format!("add address {ip}/{len} to {name}"),
                    |k| k.add_address(index, ip, len),
                );
            }
        }
        // Return traffic from the overlay has a source whose route is elsewhere (the TUN, or the
        // node network): strict reverse-path filtering would drop it. Loose (2) still requires a route.
        self.sysctl(&format!("net/ipv4/conf/{name}/rp_filter"), "2");

        let fdb = self.attempt(|| format!("list the FDB of {name}"), |k| k.fdb(index));
        if let Some(fdb) = fdb {
            for stale in fdb.iter().filter(|e| !v.fdb.contains(e)) {
                self.change(
                    Change::Remove,
                    || format!("delete the FDB entry {stale} of {name}"),
                    |k| k.del_fdb(index, stale),
                );
            }
            for missing in v.fdb.iter().filter(|e| !fdb.contains(e)) {
                self.change(
                    Change::Add,
                    || format!("add the FDB entry {missing} to {name}"),
                    |k| k.add_fdb(index, missing),
                );
            }
        }
        let neighbours = self.attempt(
            || format!("list the neighbours of {name}"),
            |k| k.neighbours(index),
        );
        if let Some(neighbours) = neighbours {
            // Set first: a stale entry of a desired IP is replaced, not deleted.
            for missing in v.neighbours.iter().filter(|n| !neighbours.contains(n)) {
                self.change(
                    Change::Add,
                    || format!("set the neighbour {missing} on {name}"),
                    |k| k.set_neighbour(index, missing),
                );
            }
            let desired_ips: Vec<IpAddr> = v.neighbours.iter().map(|n| n.ip).collect();
            for stale in neighbours.iter().filter(|n| !desired_ips.contains(&n.ip)) {
                self.change(
                    Change::Remove,
                    || format!("delete the neighbour {stale} of {name}"),
                    |k| k.del_neighbour(index, stale),
                );
            }
        }
        Some(index)
    }

    /// Writes done as one batch, `results` one per item: each success counted, each failure
    /// recorded as `action(i)` (a missing result is a failure too); which succeeded.
    fn batch(
        &mut self,
        kind: Change,
        n: usize,
        action: impl Fn(usize) -> String,
        results: Vec<anyhow::Result<()>>,
    ) -> Vec<bool> {
        let mut results = results.into_iter();
        (0..n)
            .map(|i| {
                let result = results
                    .next()
                    .unwrap_or_else(|| Err(anyhow::anyhow!("the kernel gave no result")));
                match result {
                    Ok(()) => {
                        match kind {
                            Change::Add => self.outcome.changes.added += 1,
                            Change::Remove => self.outcome.changes.removed += 1,
                        }
                        true
                    }
                    Err(e) => {
                        self.outcome.failures.push(Failure {
                            action: action(i),
                            cause: format!("{e:#}"),
                        });
                        false
                    }
                }
            })
            .collect()
    }

    /// Deletes `routes` of `table`; how many could not be.
    fn delete_routes(&mut self, routes: Vec<(K::RouteRef, Installed)>, table: u32) -> usize {
        if routes.is_empty() {
            return 0;
        }
        let (refs, shown): (Vec<_>, Vec<_>) = routes.into_iter().unzip();
        let results = self.k.del_routes(refs);
        let action = |i: usize| format!("delete route {} from table {table}", shown[i]);
        let deleted = self.batch(Change::Remove, shown.len(), action, results);
        deleted.iter().filter(|d| !**d).count()
    }

    fn routes(&mut self, d: &Desired, table: u32, overlay: Option<u32>) {
        let Some(installed) = self.attempt(
            || format!("list the routes of table {table}"),
            |k| k.routes(table),
        ) else {
            return;
        };
        // Desired routes already in place; the others installed are not (yet) right.
        let mut present = BTreeSet::new();
        let mut wrong = Vec::new();
        for (msg, route) in installed {
            match route.as_route(overlay).filter(|r| d.routes.contains(r)) {
                Some(r) if present.insert(r) => {}
                // Stale, or a duplicate of one already kept.
                _ => wrong.push((msg, route)),
            }
        }
        let to_add: Vec<Route> = d.routes.difference(&present).copied().collect();
        let destinations: BTreeSet<Cidr> = to_add.iter().map(|r| r.dst).collect();
        // A wrong route to a destination still to be routed (a moved gateway node's next hop)
        // is replaced in place by the add: deleting it first would leave the destination
        // without a route, its traffic to the main table's, until the add.
        let mut replaced: BTreeMap<Cidr, (K::RouteRef, Installed)> = BTreeMap::new();
        let mut stale = Vec::new();
        for (msg, route) in wrong {
            let replace = route.replaceable
                && destinations.contains(&route.dst)
                && !replaced.contains_key(&route.dst);
            if replace {
                replaced.insert(route.dst, (msg, route));
            } else {
                stale.push((msg, route));
            }
        }
        // Stale routes a deletion failed for: still the agent's, still in its table.
        let mut left = self.delete_routes(stale, table);
        let mut missing = Vec::new();
        let mut unreplaced = Vec::new();
        if !to_add.is_empty() {
            tracing::debug!(routes = to_add.len(), "adding or replacing routes");
            let results = self.k.add_routes(&to_add, table, overlay);
            let action = |i: usize| format!("add route {} to table {table}", to_add[i]);
            let added = self.batch(Change::Add, to_add.len(), action, results);
            for (r, ok) in to_add.iter().zip(added) {
                if !ok {
                    missing.push(*r);
                    // What it was to replace is not wanted either.
                    unreplaced.extend(replaced.remove(&r.dst));
                }
            }
        }
        left += self.delete_routes(unreplaced, table);
        let added = to_add.len() - missing.len();
        self.outcome.in_place.routes = Some(present.len() + added + left);
        self.outcome.in_place.missing_routes = missing;
    }

    fn guards(&mut self, d: &Desired) {
        let Some(installed) = self.attempt(|| "list the guard routes".to_string(), |k| k.guards())
        else {
            return;
        };
        let mut present = BTreeSet::new();
        let mut stale = Vec::new();
        for (msg, dst) in installed {
            if d.guards.contains(&dst) && present.insert(dst) {
                continue;
            }
            stale.push((msg, dst));
        }
        if !stale.is_empty() {
            let names: Vec<Cidr> = stale.iter().map(|(_, c)| *c).collect();
            let results = self
                .k
                .del_routes(stale.into_iter().map(|(m, _)| m).collect());
            let action = |i: usize| format!("delete the guard route blackhole {}", names[i]);
            self.batch(Change::Remove, names.len(), action, results);
        }
        let to_add: Vec<Cidr> = d.guards.difference(&present).copied().collect();
        if !to_add.is_empty() {
            let results = self.k.add_guards(&to_add);
            let action = |i: usize| format!("add the guard route blackhole {}", to_add[i]);
            self.batch(Change::Add, to_add.len(), action, results);
        }
    }

    fn rules(&mut self, d: &Desired, owned: &Owned) {
        let (priority, table) = (owned.priority, owned.table);
        let Some(installed) = self.attempt(
            || format!("list the rules at priority {priority}"),
            |k| k.rules(priority, table),
        ) else {
            return;
        };
        let mut kept = BTreeSet::new();
        let mut stale = Vec::new();
        for (msg, rule) in installed {
            // Not desired, or a duplicate of one already kept.
            if !(d.rules.contains(&rule) && kept.insert(rule)) {
                stale.push((msg, rule));
            }
        }
        let mut left = 0;
        if !stale.is_empty() {
            let (refs, shown): (Vec<_>, Vec<_>) = stale.into_iter().unzip();
            let results = self.k.del_rules(refs);
            let action = |i: usize| {
                format!(
                    "delete rule {} lookup {table} at priority {priority}",
                    shown[i]
                )
            };
            let deleted = self.batch(Change::Remove, shown.len(), action, results);
            left = deleted.iter().filter(|d| !**d).count();
        }
        let to_add: Vec<Rule> = d.rules.difference(&kept).copied().collect();
        let mut missing = Vec::new();
        if !to_add.is_empty() {
            tracing::debug!(rules = to_add.len(), "adding rules");
            let results = self.k.add_rules(&to_add, priority, table);
            let action = |i: usize| {
                format!(
                    "add rule {} lookup {table} at priority {priority}",
                    to_add[i]
                )
            };
            let added = self.batch(Change::Add, to_add.len(), action, results);
            missing = to_add
                .iter()
                .zip(added)
                .filter(|(_, ok)| !ok)
                .map(|(r, _)| *r)
                .collect();
        }
        let added = to_add.len() - missing.len();
        self.outcome.in_place.rules = Some(kept.len() + added + left);
        self.outcome.in_place.missing_rules = missing;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_loop::owned;
    use crate::desired::desired;
    use crate::fake_kernel::{config, FakeKernel};

    #[test]
    fn a_second_pass_changes_nothing_and_writes_nothing() {
        for (node, mode) in [
            ("w1", "vxlan"),
            ("gw", "vxlan"),
            ("w1", "direct"),
            ("gw", "direct"),
        ] {
            let c = config(node, mode);
            let k = FakeKernel::default();
            let first = reconcile(&k, &desired(&c), &owned(&c)).unwrap();
            assert!(first.any() || node == "gw", "{node} {mode}");
            let writes = k.state().writes;
            let second = reconcile(&k, &desired(&c), &owned(&c)).unwrap();
            assert_eq!(second, Changes::default(), "{node} {mode}");
            assert_eq!(
                k.state().writes,
                writes,
                "{node} {mode}: a pass with nothing to do wrote"
            );
        }
    }

    #[test]
    fn a_refused_route_leaves_every_other_route_and_rule_installed() {
        let c = config("w1", "vxlan");
        let k = FakeKernel {
            refuse: vec!["10.97.0.0/16".parse().unwrap()],
            ..FakeKernel::default()
        };
        let d = desired(&c);
        let e = reconcile(&k, &d, &owned(&c)).unwrap_err();
        assert_eq!(e.failures.len(), 1, "{e}");
        assert_eq!(
            e.failures[0].to_string(),
            "cannot add route 10.97.0.0/16 via 10.84.0.10 (overlay) to table 2741: Network is unreachable (os error 101)"
        );
        let s = k.state();
        let routes: Vec<String> = s.routes.iter().map(|(_, r)| r.dst.to_string()).collect();
        assert_eq!(routes, ["10.245.0.0/16", "fd10:245::/56"]);
        assert_eq!(s.rules.len(), d.rules.len());
        // The gateway node's two FDB entries (its MAC, the flood list) and two neighbours.
        assert!(s.link.is_some() && s.fdb.len() == 2 && s.addresses.len() == 2);
        assert_eq!(s.neighbours.len(), 2);
        // The summary says how many failed and what.
        assert!(
            e.to_string()
                .starts_with("1 action(s) failed: cannot add route 10.97.0.0/16"),
            "{e}"
        );
        let writes = s.writes;
        drop(s);
        // The next pass retries the one route and writes nothing else.
        let again = reconcile(&k, &d, &owned(&c)).unwrap_err();
        assert_eq!(again.failures, e.failures);
        assert_eq!(again.changes, Changes::default());
        assert_eq!(k.state().writes, writes);
    }

    #[test]
    fn a_device_that_cannot_be_set_up_leaves_its_routes_alone_and_the_rules_installed() {
        let c = config("w1", "vxlan");
        let k = FakeKernel {
            refuse_device: true,
            ..FakeKernel::default()
        };
        // A route through a device that is gone: not judged until the device is back.
        let old = crate::kernel::Installed {
            dst: "10.245.0.0/16".parse().unwrap(),
            via: Some("10.84.0.10".parse().unwrap()),
            oif: Some(7),
            replaceable: true,
        };
        k.state().routes.push((2741, old));
        let e = reconcile(&k, &desired(&c), &owned(&c)).unwrap_err();
        assert_eq!(e.failures.len(), 1, "{e}");
        assert_eq!(
            e.failures[0].to_string(),
            "cannot create VXLAN device liqo.vxlan (VNI 2741, port 4789, local 172.20.0.11, MAC 02:4c:ac:14:00:0b): Operation not permitted (os error 1)"
        );
        let s = k.state();
        assert_eq!(s.routes, [(2741, old)]);
        assert_eq!(s.rules.len(), 3);
    }

    /// A device made by an agent that relied on ARP (another MAC, learnt and stale entries) is
    /// brought to the overlay MACs: recreated, and every entry the agent owns made exact.
    #[test]
    fn an_overlay_relying_on_arp_is_brought_to_the_overlay_macs() {
        use crate::desired::{FdbEntry, Neighbour};
        use std::net::Ipv4Addr;
        let c = config("w1", "vxlan");
        let d = desired(&c);
        let v = d.vxlan.clone().unwrap();
        let k = FakeKernel::default();
        reconcile(&k, &d, &owned(&c)).unwrap();
        let gw = Ipv4Addr::new(172, 20, 0, 10);
        {
            let mut s = k.state();
            let stale = [0x02, 0, 0, 0, 0, 1];
            s.fdb.insert(FdbEntry {
                mac: stale,
                dst: gw,
            });
            for (ip, mac) in [("10.84.0.10", stale), ("10.84.0.99", v.mac)] {
                let ip = ip.parse().unwrap();
                s.neighbours.insert(ip, Neighbour { ip, mac });
            }
        }
        let ch = reconcile(&k, &d, &owned(&c)).unwrap();
        assert_eq!((ch.added, ch.removed), (1, 2), "{ch:?}");
        {
            let s = k.state();
            assert_eq!(s.fdb, v.fdb);
            let n: BTreeSet<Neighbour> = s.neighbours.values().copied().collect();
            assert_eq!(n, v.neighbours);
        }
        // Another MAC on the device itself: it is made again, with everything on it.
        if let Some((_, l)) = &mut k.state().link {
            l.mac = Some([0x02, 0, 0, 0, 0, 2]);
        }
        reconcile(&k, &d, &owned(&c)).unwrap();
        let s = k.state();
        assert_eq!(s.link.as_ref().and_then(|(_, l)| l.mac), Some(v.mac));
        assert_eq!((s.fdb.len(), s.neighbours.len()), (2, 2));
        assert_eq!(s.routes.len(), 3);
    }

    #[test]
    fn cleanup_removes_all_it_owns() {
        let c = config("gw", "vxlan");
        let k = FakeKernel::default();
        reconcile(&k, &desired(&c), &owned(&c)).unwrap();
        assert!(!k.state().routes.is_empty());
        let ch = cleanup(&k, &owned(&c)).unwrap();
        assert!(ch.removed > 0);
        let s = k.state();
        assert!(s.routes.is_empty() && s.rules.is_empty() && s.link.is_none());
    }

    #[test]
    fn a_pass_says_what_it_left_in_place() {
        let c = config("w1", "vxlan");
        let d = desired(&c);
        let k = FakeKernel {
            refuse: vec!["10.97.0.0/16".parse().unwrap()],
            ..FakeKernel::default()
        };
        // A stale route of the agent's: deleted, so not counted.
        let stale = crate::kernel::Installed {
            dst: "10.99.0.0/16".parse().unwrap(),
            via: Some("10.84.0.10".parse().unwrap()),
            oif: Some(7),
            replaceable: true,
        };
        k.state().routes.push((2741, stale));
        let o = apply(&k, &d, &owned(&c));
        assert_eq!(o.in_place.routes, Some(2));
        assert_eq!(
            o.in_place.missing_routes,
            [*d.routes
                .iter()
                .find(|r| r.dst.to_string() == "10.97.0.0/16")
                .unwrap()]
        );
        assert_eq!(o.in_place.rules, Some(d.rules.len()));
        assert!(o.in_place.missing_rules.is_empty());
        assert_eq!(o.clone().into_result().unwrap_err().failures, o.failures);
        // Through a device that cannot be set up, the routes are not even listed.
        let k = FakeKernel {
            refuse_device: true,
            ..FakeKernel::default()
        };
        let o = apply(&k, &d, &owned(&c));
        assert_eq!(o.in_place.routes, None);
        assert_eq!(o.in_place.rules, Some(d.rules.len()));
    }

    /// `n` remote networks, `10.(100 + i / 256).(i % 256).0/24`.
    fn networks(n: usize) -> Vec<Cidr> {
        (0..n)
            .map(|i| {
                format!("10.{}.{}.0/24", 100 + i / 256, i % 256)
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn a_thousand_networks_take_one_batch_of_guards_one_of_routes_and_one_of_rules() {
        let mut c = config("w1", "vxlan");
        c.remote_networks = networks(1000);
        let k = FakeKernel::default();
        let ch = reconcile(&k, &desired(&c), &owned(&c)).unwrap();
        let s = k.state();
        assert_eq!(s.routes.len(), 1000);
        assert_eq!(s.rules.len(), 1000);
        assert_eq!(s.guards.len(), 1000);
        // The device, its two addresses, two FDB entries and two neighbours, then the guards,
        // the routes and the rules.
        assert_eq!(ch.added, 7 + 3000);
        assert_eq!((s.batches, s.batched), (3, 3000));
    }

    /// Every remote network is guarded on every node, gateway or not, in both modes; a network
    /// no longer remote loses its guard; cleanup removes them all.
    #[test]
    fn every_remote_network_is_guarded_on_every_node() {
        for (node, mode) in [
            ("gw", "direct"),
            ("gw", "vxlan"),
            ("w1", "direct"),
            ("w1", "vxlan"),
        ] {
            let mut c = config(node, mode);
            let k = FakeKernel::default();
            reconcile(&k, &desired(&c), &owned(&c)).unwrap();
            let remote: BTreeSet<Cidr> = c.remote_networks.iter().copied().collect();
            assert_eq!(k.state().guards, remote, "{node} {mode}");
            c.remote_networks.pop();
            let ch = reconcile(&k, &desired(&c), &owned(&c)).unwrap();
            assert!(ch.removed >= 1, "{ch:?}");
            assert_eq!(k.state().guards.len(), remote.len() - 1);
            cleanup(&k, &owned(&c)).unwrap();
            assert!(k.state().guards.is_empty());
        }
    }

    #[test]
    fn a_moved_gateway_node_re_points_every_route_in_place() {
        let mut c = config("w1", "direct");
        c.remote_networks = networks(1000);
        let k = FakeKernel::default();
        reconcile(&k, &desired(&c), &owned(&c)).unwrap();
        let before = k.state().batches;
        c.gateway_node = "w2".into();
        let ch = reconcile(&k, &desired(&c), &owned(&c)).unwrap();
        // Replaced, not deleted and added again: no destination was ever without a route.
        assert_eq!(
            ch,
            Changes {
                added: 1000,
                removed: 0
            }
        );
        let s = k.state();
        assert_eq!(
            s.batches - before,
            1,
            "one batch of routes, the rules unchanged"
        );
        assert_eq!(s.routes.len(), 1000);
        let w2: std::net::IpAddr = "172.21.0.12".parse().unwrap();
        assert!(s.routes.iter().all(|(_, r)| r.via == Some(w2)));
    }

    #[test]
    fn a_route_that_cannot_be_re_pointed_does_not_stay_pointing_at_the_old_node() {
        let c = config("w1", "direct");
        let k = FakeKernel::default();
        reconcile(&k, &desired(&c), &owned(&c)).unwrap();
        let mut moved = c.clone();
        moved.gateway_node = "w2".into();
        let k = FakeKernel {
            refuse: vec!["10.97.0.0/16".parse().unwrap()],
            state: std::sync::Mutex::new(std::mem::take(&mut *k.state())),
            ..FakeKernel::default()
        };
        let e = reconcile(&k, &desired(&moved), &owned(&moved)).unwrap_err();
        assert_eq!(e.failures.len(), 1, "{e}");
        assert!(e.failures[0]
            .action
            .starts_with("add route 10.97.0.0/16 via 172.21.0.12"));
        // 10.245.0.0/16 replaced; the refused one's old route deleted, as nothing wants it
        // (and the IPv6 one, as w2 has no IPv6 address to route it through).
        assert_eq!(
            e.changes,
            Changes {
                added: 1,
                removed: 2
            }
        );
        let s = k.state();
        let dsts: Vec<String> = s.routes.iter().map(|(_, r)| r.dst.to_string()).collect();
        assert_eq!(dsts, ["10.245.0.0/16"]);
    }

    #[test]
    fn a_route_the_add_would_not_replace_is_deleted() {
        let c = config("w1", "direct");
        let d = desired(&c);
        let k = FakeKernel::default();
        // The agent's marks, a desired destination, another metric: the add goes beside it.
        let other = crate::kernel::Installed {
            dst: "10.245.0.0/16".parse().unwrap(),
            via: Some("172.20.0.99".parse().unwrap()),
            oif: Some(2),
            replaceable: false,
        };
        k.state().routes.push((2741, other));
        let ch = reconcile(&k, &d, &owned(&c)).unwrap();
        assert_eq!(ch.removed, 1);
        let s = k.state();
        assert_eq!(s.routes.len(), d.routes.len());
        assert!(!s.routes.iter().any(|(_, r)| *r == other));
    }

    #[test]
    fn duplicates_of_a_desired_rule_are_deleted_and_one_kept() {
        let c = config("w1", "vxlan");
        let d = desired(&c);
        let k = FakeKernel::default();
        reconcile(&k, &d, &owned(&c)).unwrap();
        let first = k.state().rules[0];
        k.state().rules.push(first);
        let ch = reconcile(&k, &d, &owned(&c)).unwrap();
        assert_eq!(
            ch,
            Changes {
                added: 0,
                removed: 1
            }
        );
        assert_eq!(k.state().rules.len(), d.rules.len());
    }
}
