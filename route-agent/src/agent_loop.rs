//! The agent's main loop, whatever its configuration comes from: reconcile at start, at once
//! when the source has a new configuration, and periodically; back off on failure; clean up on
//! SIGTERM. Netlink calls block, so this runs on a plain thread.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use liqonet_proto::agent::AgentConfig;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::desired::desired;
use crate::netlink::Netlink;
use crate::reconcile::{cleanup, reconcile, Owned};

/// What a source reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A new configuration; `None`: nothing to route (no gateway known yet).
    Config(Option<AgentConfig>),
    /// The source's new state is unusable; the previous configuration stays.
    Invalid(String),
}

pub trait Source {
    /// Called on every wake-up (at least once a second): a new configuration, if any.
    fn poll(&mut self) -> Option<Update>;
}

pub fn owned(c: &AgentConfig) -> Owned {
    Owned {
        table: c.table,
        priority: c.rule_priority,
        device: c.vxlan.device.clone(),
    }
}

/// Runs until a byte arrives on `stop`. A byte on `wake` makes the loop poll `source` at once.
pub fn run(
    nl: &Netlink,
    mut config: Option<AgentConfig>,
    mut marks: Owned,
    source: &mut impl Source,
    stop: &UnixStream,
    wake: Option<&UnixStream>,
    keep_on_exit: bool,
) -> anyhow::Result<()> {
    let mut due = Instant::now();
    let mut last_error: Option<String> = None;
    let mut retry = Duration::from_secs(1);
    let mut first = true;
    loop {
        match source.poll() {
            Some(Update::Config(new)) => {
                let new_marks = new.as_ref().map_or_else(|| marks.clone(), owned);
                if new_marks != marks {
                    // The agent's marks changed: what it owned under the old ones goes first.
                    if let Err(e) = cleanup(nl, &marks) {
                        tracing::warn!("cannot clean up the previous table/rules/device: {e:#}");
                    }
                    marks = new_marks;
                }
                match &new {
                    Some(c) => {
                        tracing::info!(gateway = %c.gateway_node, networks = c.remote_networks.len(), nodes = c.nodes.len(), "configuration reloaded")
                    }
                    None => tracing::info!("no gateway known: nothing to route"),
                }
                config = new;
                due = Instant::now();
            }
            Some(Update::Invalid(e)) => {
                tracing::error!("{e}; keeping the previous configuration")
            }
            None => {}
        }
        if Instant::now() >= due {
            let period = Duration::from_secs(
                config
                    .as_ref()
                    .map_or(10, |c| u64::from(c.reconcile_seconds)),
            );
            let want = config.as_ref().map(desired).unwrap_or_default();
            match reconcile(nl, &want, &marks) {
                Ok(ch) => {
                    if ch.any() || first {
                        tracing::info!(
                            added = ch.added,
                            removed = ch.removed,
                            "reconciled: in sync"
                        );
                    }
                    first = false;
                    if last_error.take().is_some() {
                        tracing::info!("reconciliation succeeds again");
                    }
                    retry = Duration::from_secs(1);
                    due = Instant::now() + period;
                }
                Err(e) => {
                    // Say each distinct problem once, then retry quietly with a growing delay.
                    let msg = format!("{e:#}");
                    if last_error.as_deref() != Some(&msg) {
                        tracing::warn!("reconciliation failed, will retry: {msg}");
                    }
                    last_error = Some(msg);
                    due = Instant::now() + retry;
                    retry = (retry * 2).min(period);
                }
            }
        }
        let wait = due
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        let timeout =
            PollTimeout::try_from(wait.as_millis() as i32 + 1).unwrap_or(PollTimeout::NONE);
        let mut fds = vec![PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
        if let Some(w) = wake {
            fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let readable = |f: &PollFd<'_>| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
        if readable(&fds[0]) {
            break;
        }
        if let (Some(mut w), Some(true)) = (wake, fds.get(1).map(readable)) {
            let _ = w.read(&mut [0u8; 64]);
        }
    }
    if keep_on_exit {
        tracing::info!("exiting; routes, rules and overlay device kept");
    } else {
        let ch = cleanup(nl, &marks)?;
        tracing::info!(
            removed = ch.removed,
            "exiting; routes, rules and overlay device removed"
        );
    }
    Ok(())
}
