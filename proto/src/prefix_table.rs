//! Longest-prefix match over IPv4 and IPv6 prefixes.
//!
//! One hash map per prefix length that is in use: a lookup probes at most as many maps as there
//! are distinct lengths (a handful in practice), however many prefixes the table holds.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::cidr::{mask, Cidr};

#[derive(Debug, Clone)]
pub struct PrefixTable<T> {
    /// Per family, the lengths in use, longest first, each with its prefixes.
    v4: Vec<(u8, HashMap<IpAddr, T>)>,
    v6: Vec<(u8, HashMap<IpAddr, T>)>,
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        PrefixTable {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

impl<T> PrefixTable<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts `value` for `cidr`, returning the value it replaces.
    pub fn insert(&mut self, cidr: Cidr, value: T) -> Option<T> {
        let levels = self.family_mut(cidr.is_ipv4());
        let pos = match levels.iter().position(|(len, _)| *len <= cidr.prefix_len()) {
            Some(p) if levels[p].0 == cidr.prefix_len() => p,
            Some(p) => {
                levels.insert(p, (cidr.prefix_len(), HashMap::new()));
                p
            }
            None => {
                levels.push((cidr.prefix_len(), HashMap::new()));
                levels.len() - 1
            }
        };
        levels[pos].1.insert(cidr.addr(), value)
    }

    pub fn remove(&mut self, cidr: &Cidr) -> Option<T> {
        let levels = self.family_mut(cidr.is_ipv4());
        let pos = levels
            .iter()
            .position(|(len, _)| *len == cidr.prefix_len())?;
        let removed = levels[pos].1.remove(&cidr.addr());
        if levels[pos].1.is_empty() {
            levels.remove(pos);
        }
        removed
    }

    /// The value of the longest prefix that contains `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&T> {
        let levels = if ip.is_ipv4() { &self.v4 } else { &self.v6 };
        levels
            .iter()
            .find_map(|(len, map)| map.get(&mask(ip, *len)))
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    fn family_mut(&mut self, v4: bool) -> &mut Vec<(u8, HashMap<IpAddr, T>)> {
        if v4 {
            &mut self.v4
        } else {
            &mut self.v6
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = PrefixTable::new();
        t.insert(c("10.0.0.0/8"), 1);
        t.insert(c("10.244.0.0/16"), 2);
        t.insert(c("10.244.5.0/24"), 3);
        t.insert(c("0.0.0.0/0"), 0);
        t.insert(c("fd00::/8"), 6);
        assert_eq!(t.lookup(ip("10.244.5.9")), Some(&3));
        assert_eq!(t.lookup(ip("10.244.6.9")), Some(&2));
        assert_eq!(t.lookup(ip("10.1.1.1")), Some(&1));
        assert_eq!(t.lookup(ip("192.0.2.1")), Some(&0));
        assert_eq!(t.lookup(ip("fd12::1")), Some(&6));
        assert_eq!(t.lookup(ip("2001:db8::1")), None);
    }

    #[test]
    fn remove_and_replace() {
        let mut t = PrefixTable::new();
        assert_eq!(t.insert(c("10.244.0.0/16"), 1), None);
        assert_eq!(t.insert(c("10.244.0.0/16"), 2), Some(1));
        assert_eq!(t.remove(&c("10.244.0.0/16")), Some(2));
        assert_eq!(t.lookup(ip("10.244.0.1")), None);
        assert!(t.is_empty());
    }
}
