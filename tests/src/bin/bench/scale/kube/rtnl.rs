//! A node's routing state read straight from its kernel: netlink sockets opened inside the node's
//! namespace, one subscribed to IPv4 route and rule changes (so a round waits on the kernel's own
//! reports instead of polling), one for dumps of the agent's table and rules.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWRULE: u16 = 32;
const RTM_GETRULE: u16 = 34;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const AF_INET: u8 = 2;
/// `RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_RULE`.
const GROUPS: u32 = 0x40 | 0x80;
// Route and rule attributes (RTA_*, FRA_*) share these numbers where used here.
const ATTR_DST: u16 = 1;
const ATTR_SRC: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const FRA_PRIORITY: u16 = 6;
const ATTR_TABLE: u16 = 15;

/// What the agent owns on a node, normalised for comparing: routes of its table as
/// `DST via GW`, rules at its priority as `to DST` / `from SRC`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub routes: BTreeSet<String>,
    pub rules: BTreeSet<String>,
}

/// One node's sockets.
pub struct Node {
    events: OwnedFd,
    query: OwnedFd,
    seq: u32,
}

fn open(groups: u32) -> anyhow::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    // A burst of changes (49 return routes at once) must not overflow into ENOBUFS; if it
    // does anyway, the next dump still sees the truth.
    let _ = setsockopt(&fd, sockopt::RcvBuf, &(1 << 20));
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
    Ok(fd)
}

impl Node {
    /// Sockets in namespace `ns` (they stay there whichever thread uses them).
    pub fn open(ns: &str) -> anyhow::Result<Node> {
        liqonet_lab::netns::in_netns(ns, || {
            Ok(Node {
                events: open(GROUPS)?,
                query: open(0)?,
                seq: 0,
            })
        })
        .with_context(|| format!("netlink sockets in {ns}"))
    }

    /// Drops the change reports queued so far.
    pub fn drain(&self) {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match recv(self.events.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) | Err(Errno::EAGAIN) => return,
                Ok(_) | Err(Errno::ENOBUFS | Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    /// Waits until the node's state is `want` (read again after every change the kernel
    /// reports); when it was first seen so. An error after `timeout`, with the state last seen.
    pub fn wait_for(
        &mut self,
        table: u32,
        want: &State,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.state(table)?;
            if have == *want {
                return Ok(Instant::now());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("after {timeout:?}: have {have:?}, want {want:?}");
            }
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.events.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            // A burst is read in full before the next dump.
            self.drain();
        }
    }

    /// The agent's routes (table `table`) and rules (priority and table `table`; the agent uses
    /// the same number for both by default).
    pub fn state(&mut self, table: u32) -> anyhow::Result<State> {
        let mut s = State::default();
        for m in self.dump(RTM_GETROUTE)? {
            if m.kind != RTM_NEWROUTE || m.body.len() < 12 {
                continue;
            }
            let (dst_len, byte_table) = (m.body[1], u32::from(m.body[4]));
            let attrs = attrs(&m.body[12..]);
            if attr_u32(&attrs, ATTR_TABLE).unwrap_or(byte_table) != table {
                continue;
            }
            let dst = attr_ip(&attrs, ATTR_DST).unwrap_or(Ipv4Addr::UNSPECIFIED);
            let via = attr_ip(&attrs, RTA_GATEWAY).map_or("-".to_string(), |g| g.to_string());
            s.routes.insert(format!("{dst}/{dst_len} via {via}"));
        }
        for m in self.dump(RTM_GETRULE)? {
            if m.kind != RTM_NEWRULE || m.body.len() < 12 {
                continue;
            }
            let (dst_len, src_len) = (m.body[1], m.body[2]);
            let attrs = attrs(&m.body[12..]);
            if attr_u32(&attrs, FRA_PRIORITY) != Some(table)
                || attr_u32(&attrs, ATTR_TABLE).unwrap_or(u32::from(m.body[4])) != table
            {
                continue;
            }
            if let Some(src) = attr_ip(&attrs, ATTR_SRC) {
                s.rules.insert(format!("from {src}/{src_len}"));
            }
            if let Some(dst) = attr_ip(&attrs, ATTR_DST) {
                s.rules.insert(format!("to {dst}/{dst_len}"));
            }
        }
        Ok(s)
    }

    /// An IPv4 dump of `kind` (routes or rules): every message of the answer.
    fn dump(&mut self, kind: u16) -> anyhow::Result<Vec<Message>> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = Vec::with_capacity(28);
        req.extend_from_slice(&28u32.to_ne_bytes());
        req.extend_from_slice(&kind.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&self.seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        // rtmsg / fib_rule_hdr: the family, the rest zero.
        req.push(AF_INET);
        req.extend_from_slice(&[0; 11]);
        send(self.query.as_raw_fd(), &req, MsgFlags::empty())?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 128 << 10];
        loop {
            let n = recv(self.query.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            for m in messages(&buf[..n]) {
                if m.seq != self.seq {
                    continue;
                }
                match m.kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = m
                            .body
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        bail!("netlink dump {kind}: error {code}");
                    }
                    _ => out.push(m),
                }
            }
        }
    }
}

struct Message {
    kind: u16,
    seq: u32,
    body: Vec<u8>,
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The netlink messages in one datagram (a truncated tail is dropped).
fn messages(mut b: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = u32_at(b, 0) as usize;
        if len < 16 || len > b.len() {
            break;
        }
        out.push(Message {
            kind: u16_at(b, 4),
            seq: u32_at(b, 8),
            body: b[16..len].to_vec(),
        });
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

/// (type, payload) of each attribute.
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16_at(b, 0));
        if len < 4 || len > b.len() {
            break;
        }
        out.push((u16_at(b, 2) & 0x3fff, &b[4..len]));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

fn attr_u32(attrs: &[(u16, &[u8])], kind: u16) -> Option<u32> {
    attrs
        .iter()
        .find(|(k, v)| *k == kind && v.len() == 4)
        .map(|(_, v)| u32_at(v, 0))
}

fn attr_ip(attrs: &[(u16, &[u8])], kind: u16) -> Option<Ipv4Addr> {
    attrs
        .iter()
        .find(|(k, v)| *k == kind && v.len() == 4)
        .map(|(_, v)| Ipv4Addr::new(v[0], v[1], v[2], v[3]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_attributes_are_split_at_their_aligned_lengths() {
        // One route message: rtmsg (12 bytes) then RTA_DST 10.245.0.0 and RTA_TABLE 2741.
        let mut body = vec![AF_INET, 16, 0, 0, 252, 0, 0, 1, 0, 0, 0, 0];
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&ATTR_DST.to_ne_bytes());
        body.extend_from_slice(&[10, 245, 0, 0]);
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&ATTR_TABLE.to_ne_bytes());
        body.extend_from_slice(&2741u32.to_ne_bytes());
        let mut msg = Vec::new();
        msg.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
        msg.extend_from_slice(&RTM_NEWROUTE.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&7u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&body);
        let twice = [msg.clone(), msg].concat();
        let ms = messages(&twice);
        assert_eq!(ms.len(), 2);
        assert_eq!((ms[1].kind, ms[1].seq), (RTM_NEWROUTE, 7));
        let a = attrs(&ms[0].body[12..]);
        assert_eq!(attr_ip(&a, ATTR_DST), Some(Ipv4Addr::new(10, 245, 0, 0)));
        assert_eq!(attr_u32(&a, ATTR_TABLE), Some(2741));
        assert_eq!(attr_ip(&a, RTA_GATEWAY), None);
    }
}
