//! A node's routing state read straight from its kernel ([`liqonet_lab::rtnl`]): one netlink
//! socket inside the node's namespace subscribed to IPv4 route and rule changes (so a round waits
//! on the kernel's own reports instead of polling), one for dumps of the agent's table and rules.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::bail;
use liqonet_lab::rtnl::{self, Socket};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// What the agent owns on a node, normalised for comparing: routes of its table as
/// `DST via GW`, rules at its priority as `to DST` / `from SRC`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub routes: BTreeSet<String>,
    pub rules: BTreeSet<String>,
}

/// One node's sockets.
pub struct Node {
    events: Socket,
    query: Socket,
}

impl Node {
    /// Sockets in namespace `ns` (they stay there whichever thread uses them).
    pub fn open(ns: &str) -> anyhow::Result<Node> {
        Ok(Node {
            events: Socket::open(ns, rtnl::IPV4_ROUTES_AND_RULES)?,
            query: Socket::open(ns, 0)?,
        })
    }

    /// Drops the change reports queued so far.
    pub fn drain(&mut self) {
        self.events.drain();
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
            let mut fds = [PollFd::new(self.events.fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            // A burst is read in full before the next dump.
            self.drain();
        }
    }

    /// The agent's IPv4 routes (table `table`) and rules (priority and table `table`; the
    /// agent uses the same number for both by default).
    pub fn state(&mut self, table: u32) -> anyhow::Result<State> {
        let mut s = State::default();
        let routes = self
            .query
            .dump(rtnl::RTM_GETROUTE, rtnl::RTM_NEWROUTE, rtnl::AF_INET)?;
        for m in routes.iter().filter(|m| m.table() == table) {
            let dst = m.ip_attr(rtnl::ATTR_DST).or_else(|| m.unspecified());
            let via = m
                .ip_attr(rtnl::RTA_GATEWAY)
                .map_or("-".to_string(), |g| g.to_string());
            if let Some(dst) = dst {
                s.routes.insert(format!("{dst}/{} via {via}", m.dst_len()));
            }
        }
        let rules = self
            .query
            .dump(rtnl::RTM_GETRULE, rtnl::RTM_NEWRULE, rtnl::AF_INET)?;
        for m in rules
            .iter()
            .filter(|m| m.table() == table && m.u32_attr(rtnl::FRA_PRIORITY) == Some(table))
        {
            if let Some(src) = m.ip_attr(rtnl::ATTR_SRC) {
                s.rules.insert(format!("from {src}/{}", m.src_len()));
            }
            if let Some(dst) = m.ip_attr(rtnl::ATTR_DST) {
                s.rules.insert(format!("to {dst}/{}", m.dst_len()));
            }
        }
        Ok(s)
    }
}
