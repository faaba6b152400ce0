//! Reading a lab namespace's routes and rules straight from its kernel: a netlink socket opened
//! inside the namespace, dumps parsed into messages and attributes. A dump of a thousand routes
//! costs the kernel about a millisecond, so benchmarks poll it every few milliseconds, or on
//! each change the kernel reports (running `ip` that often would take a core from what is
//! timed).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};

use crate::netns::in_netns;

pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWRULE: u16 = 32;
pub const RTM_GETRULE: u16 = 34;
pub const AF_UNSPEC: u8 = 0;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
/// `RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_RULE`: change reports for IPv4 routes and rules.
pub const IPV4_ROUTES_AND_RULES: u32 = 0x40 | 0x80;
// Route and rule attributes (RTA_*, FRA_*) share these numbers where used here.
pub const ATTR_DST: u16 = 1;
pub const ATTR_SRC: u16 = 2;
pub const RTA_GATEWAY: u16 = 5;
pub const FRA_PRIORITY: u16 = 6;
pub const ATTR_TABLE: u16 = 15;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
/// The kernel's state changed during the dump: it may have missed or repeated entries.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// The header of a netlink message, then of a route or rule message (`rtmsg`, `fib_rule_hdr`).
const NLMSG_HDR: usize = 16;
pub const RT_HDR: usize = 12;

/// A route or rule message: the bytes after the netlink header.
pub struct Message {
    pub kind: u16,
    pub body: Vec<u8>,
}

impl Message {
    /// `rtmsg` / `fib_rule_hdr`: family, destination and source prefix lengths, and the table
    /// byte (a table past 255 is in [`ATTR_TABLE`]).
    pub fn family(&self) -> u8 {
        self.body.first().copied().unwrap_or(0)
    }

    pub fn dst_len(&self) -> u8 {
        self.body.get(1).copied().unwrap_or(0)
    }

    pub fn src_len(&self) -> u8 {
        self.body.get(2).copied().unwrap_or(0)
    }

    pub fn table(&self) -> u32 {
        self.u32_attr(ATTR_TABLE)
            .unwrap_or_else(|| u32::from(self.body.get(4).copied().unwrap_or(0)))
    }

    /// A route's protocol (who installed it).
    pub fn protocol(&self) -> u8 {
        self.body.get(5).copied().unwrap_or(0)
    }

    /// The attributes after the header: (type, payload).
    pub fn attributes(&self) -> impl Iterator<Item = (u16, &[u8])> {
        let m = &self.body;
        let mut at = RT_HDR;
        std::iter::from_fn(move || {
            let h = m.get(at..at + 4)?;
            let len = usize::from(u16::from_ne_bytes([h[0], h[1]]));
            // The top bits of the type are flags (nested, byte order).
            let ty = u16::from_ne_bytes([h[2], h[3]]) & 0x3fff;
            let payload = m.get(at + 4..at + len.max(4))?;
            at += align(len.max(4));
            Some((ty, payload))
        })
    }

    pub fn u32_attr(&self, kind: u16) -> Option<u32> {
        self.attributes()
            .find(|(k, v)| *k == kind && v.len() == 4)
            .map(|(_, v)| u32_at(v, 0))
    }

    /// An address attribute in the message's family.
    pub fn ip_attr(&self, kind: u16) -> Option<IpAddr> {
        let family = self.family();
        self.attributes()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, v)| ip(family, v))
    }

    /// The family's unspecified address (a default route's destination has no attribute).
    pub fn unspecified(&self) -> Option<IpAddr> {
        match self.family() {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            _ => None,
        }
    }
}

/// A netlink route socket inside a namespace (it stays there whichever thread uses it).
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    /// Opened in `ns`, subscribed to `groups` (0: none, for dumps).
    pub fn open(ns: &str, groups: u32) -> anyhow::Result<Socket> {
        let fd = in_netns(ns, move || {
            let fd = socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::NetlinkRoute,
            )?;
            bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
            Ok(fd)
        })
        .with_context(|| format!("netlink socket in {ns}"))?;
        // A dump's answers (or a burst of change reports) queue until read: room for thousands.
        setsockopt(&fd, sockopt::RcvBuf, &(4 << 20))?;
        Ok(Socket {
            fd,
            seq: 0,
            // A dump answers in datagrams of a few pages: ample room.
            buf: vec![0; 256 << 10],
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Drops the change reports queued so far.
    pub fn drain(&mut self) {
        loop {
            match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) | Err(Errno::EAGAIN) => return,
                Ok(_) | Err(Errno::ENOBUFS | Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    /// Every message of type `kind` that a dump request `get` of `family` answers; a dump the
    /// kernel says was interrupted by a change is taken again.
    pub fn dump(&mut self, get: u16, kind: u16, family: u8) -> anyhow::Result<Vec<Message>> {
        for _ in 0..10 {
            let (messages, interrupted) = self.dump_once(get, kind, family)?;
            if !interrupted {
                return Ok(messages);
            }
        }
        bail!("10 dumps in a row were interrupted by changes")
    }

    fn dump_once(
        &mut self,
        get: u16,
        kind: u16,
        family: u8,
    ) -> anyhow::Result<(Vec<Message>, bool)> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = Vec::with_capacity(NLMSG_HDR + RT_HDR);
        req.extend_from_slice(&((NLMSG_HDR + RT_HDR) as u32).to_ne_bytes());
        req.extend_from_slice(&get.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&self.seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.push(family);
        req.extend_from_slice(&[0; RT_HDR - 1]);
        send(self.fd.as_raw_fd(), &req, MsgFlags::empty())?;
        let (mut out, mut interrupted) = (Vec::new(), false);
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty())?;
            let mut at = 0;
            while at + NLMSG_HDR <= n {
                let b = &self.buf[at..n];
                let len = u32_at(b, 0) as usize;
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                let flags = u16::from_ne_bytes([b[6], b[7]]);
                if len < NLMSG_HDR || len > b.len() {
                    bail!("a malformed netlink message ({len} bytes of {})", b.len());
                }
                let ours = u32_at(b, 8) == self.seq;
                interrupted |= ours && flags & NLM_F_DUMP_INTR != 0;
                match ty {
                    NLMSG_DONE if ours => return Ok((out, interrupted)),
                    NLMSG_ERROR if ours => {
                        let code = b
                            .get(16..20)
                            .map_or(0, |c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                        bail!(
                            "the dump failed: {}",
                            std::io::Error::from_raw_os_error(-code)
                        );
                    }
                    t if t == kind && ours => out.push(Message {
                        kind: t,
                        body: b[NLMSG_HDR..len].to_vec(),
                    }),
                    _ => {}
                }
                at += align(len);
            }
        }
    }
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
}

fn ip(family: u8, b: &[u8]) -> Option<IpAddr> {
    match (family, b.len()) {
        (AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        (AF_INET6, 16) => <[u8; 16]>::try_from(b).ok().map(|a| IpAddr::V6(a.into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_split_at_their_aligned_lengths() {
        // rtmsg (12 bytes) then RTA_DST 10.245.0.0 and RTA_TABLE 2741.
        let mut body = vec![AF_INET, 16, 0, 0, 252, 202, 0, 1, 0, 0, 0, 0];
        for (kind, value) in [
            (ATTR_DST, [10u8, 245, 0, 0]),
            (ATTR_TABLE, 2741u32.to_ne_bytes()),
        ] {
            body.extend_from_slice(&8u16.to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(&value);
        }
        let m = Message {
            kind: RTM_NEWROUTE,
            body,
        };
        assert_eq!((m.family(), m.dst_len(), m.protocol()), (AF_INET, 16, 202));
        assert_eq!(
            m.ip_attr(ATTR_DST),
            Some(IpAddr::V4(Ipv4Addr::new(10, 245, 0, 0)))
        );
        assert_eq!(m.table(), 2741);
        assert_eq!(m.ip_attr(RTA_GATEWAY), None);
        assert_eq!(m.attributes().count(), 2);
    }
}
