//! Desired state − observed state → idempotent actions. Running it twice changes nothing the
//! second time (and writes nothing); it only ever removes what carries the agent's marks.
//!
//! Every action is attempted: one that fails is recorded, with what it was, and the others still
//! run, so one route the kernel refuses does not leave the rest uninstalled.

use std::fmt;
use std::net::Ipv4Addr;

use crate::desired::{Desired, Route, Rule, Vxlan};
use crate::kernel::Kernel;

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
                if l.vni == Some(v.vni) && l.port == Some(v.port) && l.local == Some(v.local) =>
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
                        || format!("delete device {name} to recreate it with VNI {}, port {}, local {}", v.vni, v.port, v.local),
                        |k| k.del_link(l.index),
                    );
                    if !deleted {
                        return None;
                    }
                }
                let index = self.attempt(
                    || {
                        format!(
                            "create VXLAN device {name} (VNI {}, port {}, local {})",
                            v.vni, v.port, v.local
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

        let fdb: Option<Vec<Ipv4Addr>> =
            self.attempt(|| format!("list the FDB of {name}"), |k| k.fdb(index));
        if let Some(fdb) = fdb {
            for &stale in fdb.iter().filter(|ip| !v.remotes.contains(ip)) {
                self.change(
                    Change::Remove,
                    || format!("delete the FDB entry of {name} for {stale}"),
                    |k| k.del_fdb(index, stale),
                );
            }
            for &missing in v.remotes.iter().filter(|ip| !fdb.contains(ip)) {
                self.change(
                    Change::Add,
                    || format!("add an FDB entry to {name} for {missing}"),
                    |k| k.add_fdb(index, missing),
                );
            }
        }
        Some(index)
    }

    fn routes(&mut self, d: &Desired, table: u32, overlay: Option<u32>) {
        let Some(installed) = self.attempt(
            || format!("list the routes of table {table}"),
            |k| k.routes(table),
        ) else {
            return;
        };
        let mut present = Vec::new();
        // Stale routes a deletion failed for: still the agent's, still in its table.
        let mut stale = 0;
        for (msg, route) in installed {
            match d.routes.iter().find(|r| route.is(r, overlay)) {
                Some(r) if !present.contains(r) => present.push(*r),
                // Stale, or a duplicate of one already kept.
                _ => {
                    let deleted = self.change(
                        Change::Remove,
                        || format!("delete route {route} from table {table}"),
                        |k| k.del_route(msg),
                    );
                    stale += usize::from(!deleted);
                }
            }
        }
        let mut missing = Vec::new();
        let mut added = 0;
        for r in d.routes.iter().filter(|r| !present.contains(r)) {
            tracing::debug!(?r, "adding a route");
            if self.change(
                Change::Add,
                || format!("add route {r} to table {table}"),
                |k| k.add_route(r, table, overlay.filter(|_| r.overlay)),
            ) {
                added += 1;
            } else {
                missing.push(*r);
            }
        }
        self.outcome.in_place.routes = Some(present.len() + added + stale);
        self.outcome.in_place.missing_routes = missing;
    }

    fn rules(&mut self, d: &Desired, owned: &Owned) {
        let (priority, table) = (owned.priority, owned.table);
        let Some(installed) = self.attempt(
            || format!("list the rules at priority {priority}"),
            |k| k.rules(priority, table),
        ) else {
            return;
        };
        let mut kept = Vec::new();
        let mut stale = 0;
        for (msg, rule) in installed {
            if d.rules.contains(&rule) && !kept.contains(&rule) {
                kept.push(rule);
            } else {
                let deleted = self.change(
                    Change::Remove,
                    || format!("delete rule {rule} lookup {table} at priority {priority}"),
                    |k| k.del_rule(msg),
                );
                stale += usize::from(!deleted);
            }
        }
        let mut missing = Vec::new();
        let mut added = 0;
        for r in d.rules.iter().filter(|r| !kept.contains(r)) {
            tracing::debug!(?r, "adding a rule");
            if self.change(
                Change::Add,
                || format!("add rule {r} lookup {table} at priority {priority}"),
                |k| k.add_rule(r, priority, table),
            ) {
                added += 1;
            } else {
                missing.push(*r);
            }
        }
        self.outcome.in_place.rules = Some(kept.len() + added + stale);
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
        assert!(s.link.is_some() && s.fdb.len() == 1 && s.addresses.len() == 2);
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
        };
        k.state().routes.push((2741, old));
        let e = reconcile(&k, &desired(&c), &owned(&c)).unwrap_err();
        assert_eq!(e.failures.len(), 1, "{e}");
        assert_eq!(
            e.failures[0].to_string(),
            "cannot create VXLAN device liqo.vxlan (VNI 2741, port 4789, local 172.20.0.11): Operation not permitted (os error 1)"
        );
        let s = k.state();
        assert_eq!(s.routes, [(2741, old)]);
        assert_eq!(s.rules.len(), 3);
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
}
