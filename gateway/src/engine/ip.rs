//! A read-only view of an IP packet's addresses, checked once at construction (smoltcp style).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 or IPv6 packet whose fixed header is known to be present and self-consistent.
#[derive(Debug, Clone, Copy)]
pub struct IpPacket<'a> {
    buf: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Truncated,
    BadVersion,
    BadLength,
}

impl<'a> IpPacket<'a> {
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, Malformed> {
        let first = *buf.first().ok_or(Malformed::Truncated)?;
        match first >> 4 {
            4 => {
                if buf.len() < 20 {
                    return Err(Malformed::Truncated);
                }
                let ihl = usize::from(first & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
                if ihl < 20 || total < ihl || total > buf.len() {
                    return Err(Malformed::BadLength);
                }
            }
            6 => {
                if buf.len() < 40 {
                    return Err(Malformed::Truncated);
                }
                let payload = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
                if 40 + payload > buf.len() {
                    return Err(Malformed::BadLength);
                }
            }
            _ => return Err(Malformed::BadVersion),
        }
        Ok(IpPacket { buf })
    }

    pub fn is_ipv4(&self) -> bool {
        self.buf[0] >> 4 == 4
    }

    pub fn src_addr(&self) -> IpAddr {
        if self.is_ipv4() {
            IpAddr::V4(v4_at(self.buf, 12))
        } else {
            IpAddr::V6(v6_at(self.buf, 8))
        }
    }

    pub fn dst_addr(&self) -> IpAddr {
        if self.is_ipv4() {
            IpAddr::V4(v4_at(self.buf, 16))
        } else {
            IpAddr::V6(v6_at(self.buf, 24))
        }
    }
}

fn v4_at(buf: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(buf[at], buf[at + 1], buf[at + 2], buf[at + 3])
}

fn v6_at(buf: &[u8], at: usize) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&buf[at..at + 16]);
    Ipv6Addr::from(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v4_addresses_and_rejects_garbage() {
        let mut p = [0u8; 28];
        p[0] = 0x45;
        p[3] = 28;
        p[12..16].copy_from_slice(&[10, 244, 0, 10]);
        p[16..20].copy_from_slice(&[10, 245, 0, 10]);
        let v = IpPacket::new_checked(&p).unwrap();
        assert_eq!(v.src_addr(), "10.244.0.10".parse::<IpAddr>().unwrap());
        assert_eq!(v.dst_addr(), "10.245.0.10".parse::<IpAddr>().unwrap());

        assert_eq!(
            IpPacket::new_checked(&[]).unwrap_err(),
            Malformed::Truncated
        );
        assert_eq!(
            IpPacket::new_checked(&p[..10]).unwrap_err(),
            Malformed::Truncated
        );
        p[3] = 200;
        assert_eq!(IpPacket::new_checked(&p).unwrap_err(), Malformed::BadLength);
        p[0] = 0x75;
        assert_eq!(
            IpPacket::new_checked(&p).unwrap_err(),
            Malformed::BadVersion
        );
    }
}
