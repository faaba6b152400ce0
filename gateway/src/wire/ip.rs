//! IPv4 and IPv6 headers: addresses, protocol, fragments, and where the transport header is.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 or IPv6 packet whose fixed header is present and self-consistent.
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

/// Where the transport header of a packet is, when it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    pub protocol: u8,
    /// Offset of the transport header in the packet.
    pub offset: usize,
    /// Bytes from `offset` to the end of the IP payload (the transport length for checksums).
    pub len: usize,
}

impl<'a> IpPacket<'a> {
    /// Checks the version and that the header and the stated length fit in `buf`.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, Malformed> {
        let p = IpPacket { buf };
        let first = *buf.first().ok_or(Malformed::Truncated)?;
        match first >> 4 {
            4 => {
                if buf.len() < 20 {
                    return Err(Malformed::Truncated);
                }
                let total = p.total_len();
                if p.header_len() < 20 || total < p.header_len() || total > buf.len() {
                    return Err(Malformed::BadLength);
                }
            }
            6 => {
                if buf.len() < 40 {
                    return Err(Malformed::Truncated);
                }
                if p.total_len() > buf.len() {
                    return Err(Malformed::BadLength);
                }
            }
            _ => return Err(Malformed::BadVersion),
        }
        Ok(p)
    }

    /// A view of a packet quoted inside an ICMP error: the header must be whole, the payload
    /// may be cut short (only as much as the error carries is checked against).
    pub fn new_quoted(buf: &'a [u8]) -> Result<Self, Malformed> {
        let p = IpPacket { buf };
        let first = *buf.first().ok_or(Malformed::Truncated)?;
        let min = match first >> 4 {
            4 => 20.max(p.header_len_unchecked()),
            6 => 40,
            _ => return Err(Malformed::BadVersion),
        };
        if buf.len() < min || (first >> 4 == 4 && p.header_len_unchecked() < 20) {
            return Err(Malformed::Truncated);
        }
        Ok(p)
    }

    pub fn is_ipv4(&self) -> bool {
        self.buf[0] >> 4 == 4
    }

    fn header_len_unchecked(&self) -> usize {
        usize::from(self.buf[0] & 0x0f) * 4
    }

    /// IPv4 header length; 40 for IPv6 (extension headers are part of the payload).
    pub fn header_len(&self) -> usize {
        if self.is_ipv4() {
            self.header_len_unchecked()
        } else {
            40
        }
    }

    /// The length the header states (IPv4 total length; IPv6 40 + payload length).
    pub fn total_len(&self) -> usize {
        if self.is_ipv4() {
            usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]))
        } else {
            40 + usize::from(u16::from_be_bytes([self.buf[4], self.buf[5]]))
        }
    }

    /// The stated length, cut to the bytes present (quoted packets are often truncated).
    pub fn present_len(&self) -> usize {
        self.total_len().min(self.buf.len())
    }

    /// Byte offset of the source address; the destination follows it.
    pub fn src_offset(&self) -> usize {
        if self.is_ipv4() {
            12
        } else {
            8
        }
    }

    pub fn addr_len(&self) -> usize {
        if self.is_ipv4() {
            4
        } else {
            16
        }
    }

    pub fn src_addr(&self) -> IpAddr {
        addr_at(self.buf, self.src_offset(), self.is_ipv4())
    }

    pub fn dst_addr(&self) -> IpAddr {
        addr_at(
            self.buf,
            self.src_offset() + self.addr_len(),
            self.is_ipv4(),
        )
    }

    /// The transport header, if this packet carries one: not for IPv4/IPv6 fragments after the
    /// first, nor when extension headers run past the data.
    pub fn transport(&self) -> Option<Transport> {
        let end = self.present_len();
        if self.is_ipv4() {
            let frag_offset = u16::from_be_bytes([self.buf[6], self.buf[7]]) & 0x1fff;
            if frag_offset != 0 {
                return None;
            }
            let offset = self.header_len();
            // A quoted header may state a total length shorter than itself.
            return Some(Transport {
                protocol: self.buf[9],
                offset,
                len: self.total_len().checked_sub(offset)?,
            });
        }
        let mut next = self.buf[6];
        let mut offset = 40;
        loop {
            match next {
                // Hop-by-hop, routing, destination options: length in 8-octet units after the first 8.
                0 | 43 | 60 => {
                    if offset + 2 > end {
                        return None;
                    }
                    next = self.buf[offset];
                    offset += 8 + usize::from(self.buf[offset + 1]) * 8;
                }
                // Fragment header: only the first fragment carries the transport header.
                44 => {
                    if offset + 8 > end {
                        return None;
                    }
                    let frag_offset =
                        u16::from_be_bytes([self.buf[offset + 2], self.buf[offset + 3]]) >> 3;
                    if frag_offset != 0 {
                        return None;
                    }
                    next = self.buf[offset];
                    offset += 8;
                }
                _ => break,
            }
        }
        if offset > self.total_len() {
            return None;
        }
        Some(Transport {
            protocol: next,
            offset,
            len: self.total_len().checked_sub(offset)?,
        })
    }
}

fn addr_at(buf: &[u8], at: usize, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::new(
            buf[at],
            buf[at + 1],
            buf[at + 2],
            buf[at + 3],
        ))
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&buf[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v4_addresses_and_rejects_garbage() {
        let mut p = [0u8; 28];
        p[0] = 0x45;
        p[3] = 28;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 244, 0, 10]);
        p[16..20].copy_from_slice(&[10, 245, 0, 10]);
        let v = IpPacket::new_checked(&p).unwrap();
        assert_eq!(v.src_addr(), "10.244.0.10".parse::<IpAddr>().unwrap());
        assert_eq!(v.dst_addr(), "10.245.0.10".parse::<IpAddr>().unwrap());
        assert_eq!(
            v.transport(),
            Some(Transport {
                protocol: 17,
                offset: 20,
                len: 8
            })
        );

        assert_eq!(
            IpPacket::new_checked(&[]).unwrap_err(),
            Malformed::Truncated
        );
        assert_eq!(
            IpPacket::new_checked(&p[..10]).unwrap_err(),
            Malformed::Truncated
        );
        p[6] = 0x00;
        p[7] = 0x10;
        assert_eq!(
            IpPacket::new_checked(&p).unwrap().transport(),
            None,
            "a later fragment"
        );
        p[3] = 200;
        assert_eq!(IpPacket::new_checked(&p).unwrap_err(), Malformed::BadLength);
        p[0] = 0x75;
        assert_eq!(
            IpPacket::new_checked(&p).unwrap_err(),
            Malformed::BadVersion
        );
    }

    #[test]
    fn a_quoted_header_stating_less_than_itself_has_no_transport() {
        let mut q = [0u8; 28];
        q[0] = 0x45;
        q[3] = 4;
        q[9] = 17;
        assert_eq!(IpPacket::new_quoted(&q).unwrap().transport(), None);
    }

    #[test]
    fn walks_ipv6_extension_headers() {
        let mut p = vec![0u8; 40 + 8 + 8 + 8];
        p[0] = 0x60;
        p[5] = 24;
        p[6] = 0; // hop-by-hop
        p[40] = 44; // then a fragment header
        p[48] = 17; // then UDP
        let v = IpPacket::new_checked(&p).unwrap();
        assert_eq!(
            v.transport(),
            Some(Transport {
                protocol: 17,
                offset: 56,
                len: 8
            })
        );
        p[50] = 0x01; // fragment offset 32: not the first fragment
        assert_eq!(IpPacket::new_checked(&p).unwrap().transport(), None);
    }
}
