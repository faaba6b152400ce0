//! IPAM for `remapped: auto`: the first free prefix of the peer network's length in the pools,
//! avoiding local networks, every other remapped network and the reserved list. Choices are kept
//! in an [`IpamState`] (persisted by the caller) and reused while they stay free, so they are
//! stable across restarts and when peers are added.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::Cidr;

/// The pools `auto` draws from when the config names none.
pub fn default_pools() -> Vec<Cidr> {
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Prefixes chosen so far: per peer cluster ID, each auto network's `cidr` and its `remapped`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamState {
    #[serde(default)]
    pub peers: BTreeMap<String, Vec<Allocation>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub cidr: Cidr,
    pub remapped: Cidr,
}

impl IpamState {
    pub fn get(&self, peer: &str, cidr: &Cidr) -> Option<Cidr> {
        self.peers
            .get(peer)?
            .iter()
            .find(|a| a.cidr == *cidr)
            .map(|a| a.remapped)
    }

    pub fn set(&mut self, peer: &str, cidr: Cidr, remapped: Cidr) {
        let list = self.peers.entry(peer.to_string()).or_default();
        list.retain(|a| a.cidr != cidr);
        list.push(Allocation { cidr, remapped });
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free /{len} left in the IPAM pools ({pools})")]
pub struct Exhausted {
    pub len: u8,
    pub pools: String,
}

/// Allocates prefixes from `pools` that overlap nothing in `taken`.
#[derive(Debug, Clone)]
pub struct Ipam {
    pools: Vec<Cidr>,
    taken: Vec<Cidr>,
}

impl Ipam {
    pub fn new(pools: Vec<Cidr>, taken: Vec<Cidr>) -> Self {
        Ipam { pools, taken }
    }

    /// Marks `c` as used.
    pub fn take(&mut self, c: Cidr) {
        self.taken.push(c);
    }

    pub fn is_free(&self, c: &Cidr) -> bool {
        !self.taken.iter().any(|t| t.overlaps(c))
    }

    /// The first free prefix of length `len` in the family of `like`, in pool order; taken.
    pub fn allocate(&mut self, like: &Cidr) -> Result<Cidr, Exhausted> {
        let len = like.prefix_len();
        for pool in self.pools.iter().filter(|p| p.is_ipv4() == like.is_ipv4()) {
            if pool.prefix_len() > len {
                continue;
            }
            if let Some(c) = self.first_free(pool, len) {
                self.taken.push(c);
                return Ok(c);
            }
        }
        Err(Exhausted {
            len,
            pools: self
                .pools
                .iter()
                .filter(|p| p.is_ipv4() == like.is_ipv4())
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Walks the candidates of `pool`, jumping past each taken prefix that overlaps: as many
    /// steps as there are obstacles, however large the pool.
    fn first_free(&self, pool: &Cidr, len: u8) -> Option<Cidr> {
        let v4 = pool.is_ipv4();
        let bits: u32 = if v4 { 32 } else { 128 };
        let host = |l: u8| {
            u128::MAX
                .checked_shr(128 - bits + u32::from(l))
                .unwrap_or(0)
        };
        let start = to_u128(pool.addr());
        let pool_last = start | host(pool.prefix_len());
        let size_minus_one = host(len);
        let mut cur = start;
        loop {
            let last = cur.checked_add(size_minus_one)?;
            if last > pool_last {
                return None;
            }
            let candidate = Cidr::new(from_u128(cur, v4), len).ok()?;
            match self.taken.iter().find(|t| t.overlaps(&candidate)) {
                None => return Some(candidate),
                Some(t) => {
                    let t_last = to_u128(t.addr()) | host(t.prefix_len());
                    // Next aligned candidate after both the obstacle and this candidate.
                    let next = t_last.max(last).checked_add(1)?;
                    cur = next.checked_add(size_minus_one)? & !size_minus_one;
                }
            }
        }
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn picks_the_first_free_prefix_around_obstacles() {
        let mut ipam = Ipam::new(
            default_pools(),
            vec![c("10.0.0.0/16"), c("10.1.128.0/17"), c("10.2.3.0/24")],
        );
        assert_eq!(ipam.allocate(&c("10.244.0.0/16")), Ok(c("10.3.0.0/16")));
        assert_eq!(ipam.allocate(&c("10.244.0.0/16")), Ok(c("10.4.0.0/16")));
        assert_eq!(ipam.allocate(&c("10.244.0.0/24")), Ok(c("10.1.0.0/24")));
        assert_eq!(ipam.allocate(&c("fd10:244::/64")), Ok(c("fd00::/64")));
        assert_eq!(ipam.allocate(&c("fd10:244::/64")), Ok(c("fd00:0:0:1::/64")));
    }

    #[test]
    fn moves_to_the_next_pool_then_reports_exhaustion() {
        let pools = vec![c("10.250.0.0/15"), c("192.168.0.0/16")];
        let mut ipam = Ipam::new(pools, vec![c("10.251.0.0/16")]);
        assert_eq!(ipam.allocate(&c("10.244.0.0/16")), Ok(c("10.250.0.0/16")));
        assert_eq!(ipam.allocate(&c("10.244.0.0/16")), Ok(c("192.168.0.0/16")));
        let e = ipam.allocate(&c("10.244.0.0/16")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no free /16 left in the IPAM pools (10.250.0.0/15, 192.168.0.0/16)"
        );
        // A prefix longer than any pool cannot come from it either.
        assert!(ipam.allocate(&c("10.0.0.0/8")).is_err());
        // No IPv6 pool at all.
        assert!(Ipam::new(vec![c("10.0.0.0/8")], vec![])
            .allocate(&c("fd00::/64"))
            .is_err());
    }

    #[test]
    fn huge_pools_with_many_obstacles_stay_fast() {
        let taken: Vec<Cidr> = (0..1000u32)
            .map(|i| {
                Cidr::new(
                    IpAddr::V6(Ipv6Addr::from(0xfd00u128 << 112 | u128::from(i) << 64)),
                    64,
                )
                .unwrap()
            })
            .collect();
        let mut ipam = Ipam::new(default_pools(), taken);
        assert_eq!(ipam.allocate(&c("fd10::/64")), Ok(c("fd00:0:0:3e8::/64")));
    }

    #[test]
    fn state_round_trips_through_yaml() {
        let mut s = IpamState::default();
        s.set("foreign", c("10.244.0.0/16"), c("10.0.0.0/16"));
        s.set("foreign", c("10.244.0.0/16"), c("10.1.0.0/16"));
        let text = serde_yaml::to_string(&s).unwrap();
        let back: IpamState = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            back.get("foreign", &c("10.244.0.0/16")),
            Some(c("10.1.0.0/16"))
        );
        assert_eq!(back, s);
    }
}
