//! An in-memory kernel for tests: it keeps routes, rules, one device, its addresses, FDB and
//! sysctls; counts dumps, writes and batches; can refuse chosen routes, lose every route it is
//! given (another program deleting them), and notify each successful write, as the kernel does.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard, PoisonError};

use anyhow::bail;
use liqonet_proto::Cidr;

use crate::desired::{FdbEntry, Neighbour, Route, Rule, Vxlan};
use crate::kernel::{Installed, Kernel, VxlanLink, MAIN_TABLE};

#[derive(Default)]
pub struct State {
    pub routes: Vec<(u32, Installed)>,
    pub rules: Vec<(u32, u32, Rule)>,
    pub link: Option<(String, VxlanLink)>,
    pub addresses: Vec<(IpAddr, u8)>,
    pub fdb: BTreeSet<FdbEntry>,
    /// The guards (blackholes in the main table), apart from `routes`.
    pub guards: BTreeSet<Cidr>,
    pub neighbours: BTreeMap<IpAddr, Neighbour>,
    pub sysctls: BTreeMap<String, String>,
    /// Route dumps: one per reconciliation pass.
    pub route_dumps: usize,
    /// Writes that succeeded.
    pub writes: usize,
    /// Batch calls (of routes or rules) and the items in them.
    pub batches: usize,
    pub batched: usize,
}

#[derive(Default)]
pub struct FakeKernel {
    pub state: Mutex<State>,
    /// Routes to these destinations are refused.
    pub refuse: Vec<Cidr>,
    /// Routes are accepted, then lost at once.
    pub lose_routes: bool,
    /// The overlay device cannot be created.
    pub refuse_device: bool,
    /// Written to after every successful write.
    pub notify: Option<UnixStream>,
}

impl FakeKernel {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a successful write and notifies it.
    fn wrote(&self, s: &mut State) {
        s.writes += 1;
        if let Some(n) = &self.notify {
            let _ = (&*n).write(&[1]);
        }
    }

    /// Counts a batch of `n` items.
    fn batch(&self, n: usize) {
        let mut s = self.state();
        s.batches += 1;
        s.batched += n;
    }

    /// One route: refused, or replacing (as the kernel does) the first route of `table` to the
    /// same destination that is replaceable.
    fn add_route(&self, r: &Route, table: u32, overlay_index: Option<u32>) -> anyhow::Result<()> {
        if self.refuse.contains(&r.dst) {
            bail!("Network is unreachable (os error 101)");
        }
        let mut s = self.state();
        if let Some(i) = overlay_index {
            Self::index(&s, i)?;
        }
        let same = s
            .routes
            .iter()
            .position(|(t, i)| *t == table && i.dst == r.dst && i.replaceable);
        if let Some(at) = same {
            s.routes.remove(at);
        }
        if !self.lose_routes {
            let oif = overlay_index.or(Some(2));
            s.routes.push((
                table,
                Installed {
                    dst: r.dst,
                    via: Some(r.via),
                    oif,
                    replaceable: true,
                },
            ));
        }
        self.wrote(&mut s);
        Ok(())
    }

    fn del_route(&self, r: (u32, Installed)) -> anyhow::Result<()> {
        let mut s = self.state();
        if r.0 == MAIN_TABLE {
            if !s.guards.remove(&r.1.dst) {
                bail!("No such process (os error 3)");
            }
            self.wrote(&mut s);
            return Ok(());
        }
        let before = s.routes.len();
        s.routes.retain(|x| *x != r);
        if s.routes.len() == before {
            bail!("No such process (os error 3)");
        }
        self.wrote(&mut s);
        Ok(())
    }

    fn index(s: &State, index: u32) -> anyhow::Result<()> {
        match &s.link {
            Some((_, l)) if l.index == index => Ok(()),
            _ => bail!("No such device (os error 19)"),
        }
    }
}

impl Kernel for FakeKernel {
    type RouteRef = (u32, Installed);
    type RuleRef = (u32, u32, Rule);

    fn routes(&self, table: u32) -> anyhow::Result<Vec<(Self::RouteRef, Installed)>> {
        let mut s = self.state();
        s.route_dumps += 1;
        Ok(s.routes
            .iter()
            .filter(|(t, _)| *t == table)
            .map(|&(t, r)| ((t, r), r))
            .collect())
    }

    fn add_routes(
        &self,
        routes: &[Route],
        table: u32,
        overlay_index: Option<u32>,
    ) -> Vec<anyhow::Result<()>> {
        self.batch(routes.len());
        routes
            .iter()
            .map(|r| self.add_route(r, table, overlay_index.filter(|_| r.overlay)))
            .collect()
    }

    fn del_routes(&self, routes: Vec<Self::RouteRef>) -> Vec<anyhow::Result<()>> {
        self.batch(routes.len());
        routes.into_iter().map(|r| self.del_route(r)).collect()
    }

    fn guards(&self) -> anyhow::Result<Vec<(Self::RouteRef, Cidr)>> {
        Ok(self
            .state()
            .guards
            .iter()
            .map(|&dst| ((MAIN_TABLE, guard(dst)), dst))
            .collect())
    }

    fn add_guards(&self, dsts: &[Cidr]) -> Vec<anyhow::Result<()>> {
        self.batch(dsts.len());
        dsts.iter()
            .map(|&dst| {
                let mut s = self.state();
                s.guards.insert(dst);
                self.wrote(&mut s);
                Ok(())
            })
            .collect()
    }

    fn rules(&self, priority: u32, table: u32) -> anyhow::Result<Vec<(Self::RuleRef, Rule)>> {
        Ok(self
            .state()
            .rules
            .iter()
            .filter(|(p, t, _)| *p == priority && *t == table)
            .map(|&x| (x, x.2))
            .collect())
    }

    fn add_rules(&self, rules: &[Rule], priority: u32, table: u32) -> Vec<anyhow::Result<()>> {
        self.batch(rules.len());
        rules
            .iter()
            .map(|r| {
                let mut s = self.state();
                // As the kernel's NLM_F_EXCL: no second identical rule.
                if s.rules.contains(&(priority, table, *r)) {
                    bail!("File exists (os error 17)");
                }
                s.rules.push((priority, table, *r));
                self.wrote(&mut s);
                Ok(())
            })
            .collect()
    }

    fn del_rules(&self, rules: Vec<Self::RuleRef>) -> Vec<anyhow::Result<()>> {
        self.batch(rules.len());
        rules
            .into_iter()
            .map(|r| {
                let mut s = self.state();
                let Some(pos) = s.rules.iter().position(|x| *x == r) else {
                    bail!("No such file or directory (os error 2)");
                };
                s.rules.remove(pos);
                self.wrote(&mut s);
                Ok(())
            })
            .collect()
    }

    fn vxlan_link(&self, name: &str) -> anyhow::Result<Option<VxlanLink>> {
        Ok(self
            .state()
            .link
            .as_ref()
            .filter(|(n, _)| n == name)
            .map(|(_, l)| *l))
    }

    fn create_vxlan(&self, v: &Vxlan) -> anyhow::Result<u32> {
        let mut s = self.state();
        if self.refuse_device {
            bail!("Operation not permitted (os error 1)");
        }
        if s.link.is_some() {
            bail!("File exists (os error 17)");
        }
        let link = VxlanLink {
            index: 7,
            vni: Some(v.vni),
            port: Some(v.port),
            local: Some(v.local),
            mtu: Some(u32::from(v.mtu)),
            mac: Some(v.mac),
            up: true,
        };
        s.link = Some((v.name.clone(), link));
        self.wrote(&mut s);
        Ok(link.index)
    }

    fn set_mtu_up(&self, index: u32, mtu: u16) -> anyhow::Result<()> {
        let mut s = self.state();
        Self::index(&s, index)?;
        if let Some((_, l)) = &mut s.link {
            l.mtu = Some(u32::from(mtu));
            l.up = true;
        }
        self.wrote(&mut s);
        Ok(())
    }

    fn del_link(&self, index: u32) -> anyhow::Result<()> {
        let mut s = self.state();
        Self::index(&s, index)?;
        // Its addresses, FDB and the routes through it go with it.
        s.link = None;
        s.addresses.clear();
        s.fdb.clear();
        s.neighbours.clear();
        s.routes.retain(|(_, r)| r.oif != Some(index));
        self.wrote(&mut s);
        Ok(())
    }

    fn addresses(&self, index: u32) -> anyhow::Result<Vec<(IpAddr, u8)>> {
        let s = self.state();
        Self::index(&s, index)?;
        Ok(s.addresses.clone())
    }

    fn add_address(&self, index: u32, ip: IpAddr, len: u8) -> anyhow::Result<()> {
        let mut s = self.state();
        Self::index(&s, index)?;
        s.addresses.push((ip, len));
        self.wrote(&mut s);
        Ok(())
    }

    fn fdb(&self, index: u32) -> anyhow::Result<Vec<FdbEntry>> {
        let s = self.state();
        Self::index(&s, index)?;
        Ok(s.fdb.iter().copied().collect())
    }

    fn add_fdb(&self, index: u32, e: &FdbEntry) -> anyhow::Result<()> {
        let mut s = self.state();
        Self::index(&s, index)?;
        s.fdb.insert(*e);
        self.wrote(&mut s);
        Ok(())
    }

    fn del_fdb(&self, index: u32, e: &FdbEntry) -> anyhow::Result<()> {
        let mut s = self.state();
        Self::index(&s, index)?;
        if !s.fdb.remove(e) {
            bail!("No such file or directory (os error 2)");
        }
        self.wrote(&mut s);
        Ok(())
    }

    fn neighbours(&self, index: u32) -> anyhow::Result<Vec<Neighbour>> {
        let s = self.state();
        Self::index(&s, index)?;
        Ok(s.neighbours.values().copied().collect())
    }

    fn set_neighbour(&self, index: u32, n: &Neighbour) -> anyhow::Result<()> {
        let mut s = self.state();
        Self::index(&s, index)?;
        s.neighbours.insert(n.ip, *n);
        self.wrote(&mut s);
        Ok(())
    }

    fn del_neighbour(&self, index: u32, n: &Neighbour) -> anyhow::Result<()> {
        let mut s = self.state();
        Self::index(&s, index)?;
        if s.neighbours.remove(&n.ip).is_none() {
            bail!("No such file or directory (os error 2)");
        }
        self.wrote(&mut s);
        Ok(())
    }

    fn sysctl(&self, key: &str) -> anyhow::Result<String> {
        Ok(self.state().sysctls.get(key).cloned().unwrap_or("0".into()))
    }

    fn set_sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let mut s = self.state();
        s.sysctls.insert(key.into(), value.into());
        // No notification: sysctls have none.
        s.writes += 1;
        Ok(())
    }
}

/// A guard as a route reference.
fn guard(dst: Cidr) -> Installed {
    Installed {
        dst,
        via: None,
        oif: None,
        replaceable: false,
    }
}

/// A three-node cluster's config as seen from `node`, in `mode` (`vxlan` or `direct`).
pub fn config(node: &str, mode: &str) -> liqonet_proto::agent::AgentConfig {
    let text = format!(
        "nodeName: {node}\nmode: {mode}\ngatewayNode: gw\nremoteNetworks: [10.245.0.0/16, 10.97.0.0/16, fd10:245::/56]\nnodes:\n  - {{name: gw, ip: 172.20.0.10, podCIDR: 10.244.0.0/24, ip6: 'fd00:172:20::10', podCIDR6: 'fd10:244::/64'}}\n  - {{name: w1, ip: 172.20.0.11, podCIDR: 10.244.1.0/24, podCIDR6: 'fd10:244:0:1::/64'}}\n  - {{name: w2, ip: 172.21.0.12, podCIDR: 10.244.2.0/24}}\n"
    );
    liqonet_proto::agent::AgentConfig::from_yaml(&text).unwrap_or_else(|e| panic!("{e}"))
}
