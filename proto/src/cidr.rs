//! IP prefixes (`10.244.0.0/16`, `fd00:10::/64`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 or IPv6 prefix whose host bits are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("expected ADDRESS/LENGTH")]
    MissingLength,
    #[error("{0:?} is not an IP address")]
    BadAddress(String),
    #[error("{0:?} is not a prefix length")]
    BadLength(String),
    #[error("prefix length {len} exceeds {max}")]
    LengthTooLong { len: u8, max: u8 },
    #[error("host bits are set (the network is {0})")]
    HostBits(Cidr),
}

impl Cidr {
    /// A prefix from an address and a length; fails if the length is too long or host bits are set.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, CidrError> {
        let max = max_len(addr);
        if len > max {
            return Err(CidrError::LengthTooLong { len, max });
        }
        let net = Cidr {
            addr: mask(addr, len),
            len,
        };
        if net.addr != addr {
            return Err(CidrError::HostBits(net));
        }
        Ok(net)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }

    /// `ip` moved from this prefix into `to` (same length), keeping its host bits, as iptables
    /// NETMAP does; `None` when `ip` is not in this prefix or the families differ.
    pub fn swap_prefix(&self, ip: IpAddr, to: &Cidr) -> Option<IpAddr> {
        if !self.contains(ip) || to.len != self.len || to.is_ipv4() != self.is_ipv4() {
            return None;
        }
        Some(match (ip, to.addr) {
            (IpAddr::V4(a), IpAddr::V4(t)) => {
                let host =
                    u32::from(a) & !u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(t) | host))
            }
            (IpAddr::V6(a), IpAddr::V6(t)) => {
                let host = u128::from(a)
                    & !u128::MAX
                        .checked_shl(128 - u32::from(self.len))
                        .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(t) | host))
            }
            _ => return None,
        })
    }

    /// True when the two prefixes share at least one address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let shorter = self.len.min(other.len);
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && mask(self.addr, shorter) == mask(other.addr, shorter)
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// `addr` with every bit after the first `len` cleared.
pub(crate) fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.split_once('/').ok_or(CidrError::MissingLength)?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::BadAddress(addr.to_string()))?;
        let len: u8 = len
            .parse()
            .map_err(|_| CidrError::BadLength(len.to_string()))?;
        Cidr::new(addr, len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a CIDR: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(c("10.244.0.0/16").to_string(), "10.244.0.0/16");
        assert_eq!(c("fd00:10::/64").to_string(), "fd00:10::/64");
        assert_eq!(c("0.0.0.0/0").prefix_len(), 0);
    }

    #[test]
    fn rejects_bad_prefixes() {
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::LengthTooLong { len: 33, max: 32 })
        );
        assert!(matches!(
            "10.244.1.0/16".parse::<Cidr>(),
            Err(CidrError::HostBits(_))
        ));
        assert_eq!("10.0.0.0".parse::<Cidr>(), Err(CidrError::MissingLength));
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::BadAddress(_))
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<Cidr>(),
            Err(CidrError::BadLength(_))
        ));
    }

    #[test]
    fn swaps_prefixes_keeping_host_bits() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (a, b) = (c("10.245.0.0/16"), c("10.244.0.0/16"));
        assert_eq!(a.swap_prefix(ip("10.245.2.7"), &b), Some(ip("10.244.2.7")));
        assert_eq!(a.swap_prefix(ip("10.246.2.7"), &b), None);
        assert_eq!(a.swap_prefix(ip("10.245.2.7"), &c("10.0.0.0/8")), None);
        let (x, y) = (c("fd10:245::/64"), c("fd10:244::/64"));
        assert_eq!(
            x.swap_prefix(ip("fd10:245::a:10"), &y),
            Some(ip("fd10:244::a:10"))
        );
        assert_eq!(
            c("0.0.0.0/0").swap_prefix(ip("1.2.3.4"), &c("0.0.0.0/0")),
            Some(ip("1.2.3.4"))
        );
        assert_eq!(
            c("10.1.2.3/32").swap_prefix(ip("10.1.2.3"), &c("10.9.9.9/32")),
            Some(ip("10.9.9.9"))
        );
    }

    #[test]
    fn contains_and_overlaps() {
        let net = c("10.244.0.0/16");
        assert!(net.contains("10.244.3.4".parse().unwrap()));
        assert!(!net.contains("10.245.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        assert!(net.overlaps(&c("10.244.7.0/24")));
        assert!(c("10.244.7.0/24").overlaps(&net));
        assert!(!net.overlaps(&c("10.245.0.0/16")));
        assert!(c("0.0.0.0/0").overlaps(&net));
        assert!(!c("::/0").overlaps(&net));
    }
}
