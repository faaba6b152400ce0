//! The agent's main loop, whatever its configuration comes from: reconcile at start, at once
//! when the source has a new configuration or on SIGHUP, within milliseconds of the kernel
//! reporting a change to the agent's state, and periodically; back off on failure; clean up on
//! SIGTERM. Netlink calls block, so this runs on a plain thread.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime};

use liqonet_proto::agent::AgentConfig;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::desired::{desired, Desired};
use crate::kernel::Kernel;
use crate::metrics::{self, Telemetry};
use crate::monitor::Monitor;
use crate::reconcile::{apply, cleanup, Changes, Owned};
use crate::signals::{drain, Drained};

/// How long a change reported by the kernel waits for the rest of its burst (a deleted device
/// takes its routes and addresses with it) before the repair pass.
const DEBOUNCE: Duration = Duration::from_millis(10);
/// After this many passes in a row that each had something to change, something else is
/// changing the agent's state as fast as it repairs it: repairs slow down to one a second.
const CHURN_LIMIT: u32 = 5;
const SLOW_REPAIR: Duration = Duration::from_secs(1);

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
    /// On SIGHUP: the configuration read afresh. A watched source is always current: `None`.
    fn reload(&mut self) -> Option<Update> {
        None
    }
}

pub fn owned(c: &AgentConfig) -> Owned {
    Owned {
        table: c.table,
        priority: c.rule_priority,
        device: c.vxlan.device.clone(),
    }
}

/// What wakes the loop besides its timers. Every socket but `stop` is non-blocking.
pub struct Wakeups<'a> {
    /// SIGTERM or SIGINT: clean up and return.
    pub stop: &'a UnixStream,
    /// SIGHUP: reload and reconcile.
    pub reload: Option<&'a UnixStream>,
    /// The source has news.
    pub source: Option<&'a UnixStream>,
    /// The kernel reports a change to the agent's state.
    pub monitor: Option<&'a Monitor>,
}

/// What woke the loop.
#[derive(Default)]
struct Woken {
    stop: bool,
    reload: bool,
    kernel: bool,
}

#[derive(Clone, Copy)]
enum Wake {
    Reload,
    Source,
    Kernel,
}

impl<'a> Wakeups<'a> {
    fn socket(&self, w: Wake) -> Option<&'a UnixStream> {
        match w {
            Wake::Reload => self.reload,
            Wake::Source => self.source,
            Wake::Kernel => self.monitor.map(|m| &m.wake),
        }
    }

    /// Stops listening to a socket whose other end is gone (it would be readable forever).
    fn forget(&mut self, w: Wake) {
        let what = match w {
            Wake::Reload => {
                self.reload = None;
                "SIGHUP"
            }
            Wake::Source => {
                self.source = None;
                "the configuration source"
            }
            Wake::Kernel => {
                self.monitor = None;
                "the kernel monitor"
            }
        };
        tracing::warn!("{what} is gone; periodic reconciliation carries on");
    }

    /// Waits until `deadline` or a wake-up, and says which.
    fn wait(&mut self, deadline: Instant) -> anyhow::Result<Woken> {
        let wait = deadline.saturating_duration_since(Instant::now());
        // +1: never wake a fraction of a millisecond early and spin.
        let millis = i32::try_from(wait.as_millis())
            .unwrap_or(i32::MAX)
            .saturating_add(1);
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::NONE);
        let optional: Vec<(Wake, &UnixStream)> = [Wake::Reload, Wake::Source, Wake::Kernel]
            .into_iter()
            .filter_map(|w| self.socket(w).map(|s| (w, s)))
            .collect();
        let mut fds = vec![PollFd::new(self.stop.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            optional
                .iter()
                .map(|(_, s)| PollFd::new(s.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| {
                f.revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
            })
            .collect();
        drop(fds);
        let mut woken = Woken {
            stop: ready[0],
            ..Woken::default()
        };
        for ((w, s), _) in optional.into_iter().zip(&ready[1..]).filter(|(_, r)| **r) {
            match drain(s) {
                Drained::Closed => self.forget(w),
                Drained::Nothing => {}
                Drained::Bytes => match w {
                    Wake::Reload => woken.reload = true,
                    // The source is polled on every wake-up anyway.
                    Wake::Source => {}
                    Wake::Kernel => woken.kernel = true,
                },
            }
        }
        Ok(woken)
    }
}

/// The loop's state between wake-ups.
struct Agent<'a, K> {
    kernel: &'a K,
    config: Option<AgentConfig>,
    marks: Owned,
    monitor: Option<&'a Monitor>,
    /// When the next pass is due.
    due: Instant,
    retry: Duration,
    /// The failures of the last pass, as logged (each is logged when it first appears).
    failing: Vec<String>,
    passes: u64,
    /// Passes in a row that had something to change.
    churn: u32,
    /// What the last pass put in place, when it did all it had to: changes to the same state in
    /// the next pass are repairs of something else's doing.
    in_sync: Option<(Desired, Owned)>,
    telemetry: &'a Telemetry,
}

impl<K: Kernel> Agent<'_, K> {
    fn period(&self) -> Duration {
        Duration::from_secs(
            self.config
                .as_ref()
                .map_or(10, |c| u64::from(c.reconcile_seconds)),
        )
    }

    fn apply(&mut self, update: Update) {
        match update {
            Update::Config(new) => {
                let new_marks = new.as_ref().map_or_else(|| self.marks.clone(), owned);
                if new_marks != self.marks {
                    // The agent's marks changed: what it owned under the old ones goes first.
                    if let Err(e) = cleanup(self.kernel, &self.marks) {
                        tracing::warn!("cannot clean up the previous table/rules/device: {e}");
                    }
                    self.marks = new_marks;
                    if let Some(m) = self.monitor {
                        m.set_marks(&self.marks);
                    }
                }
                match &new {
                    Some(c) => {
                        tracing::info!(gateway = %c.gateway_node, networks = c.remote_networks.len(), nodes = c.nodes.len(), "configuration reloaded")
                    }
                    None => tracing::info!("no gateway known: nothing to route"),
                }
                self.config = new;
                self.due = Instant::now();
            }
            Update::Invalid(e) => tracing::error!("{e}; keeping the previous configuration"),
        }
    }

    /// A change reported by the kernel: repair soon, unless something keeps undoing the repairs.
    fn kernel_changed(&mut self) {
        let delay = if self.churn >= CHURN_LIMIT {
            SLOW_REPAIR
        } else {
            DEBOUNCE
        };
        self.due = self.due.min(Instant::now() + delay);
    }

    fn pass(&mut self) {
        let want = self.config.as_ref().map(desired).unwrap_or_default();
        let started = Instant::now();
        let outcome = apply(self.kernel, &want, &self.marks);
        let took = started.elapsed();
        let changes = outcome.changes;
        let same = self
            .in_sync
            .as_ref()
            .is_some_and(|(d, m)| *d == want && *m == self.marks);
        self.telemetry.record(&metrics::Pass {
            config: self.config.as_ref(),
            marks: &self.marks,
            desired: &want,
            outcome: &outcome,
            repairs: if same {
                changes.added + changes.removed
            } else {
                0
            },
            ended: SystemTime::now(),
            took,
        });
        self.in_sync = outcome
            .failures
            .is_empty()
            .then(|| (want, self.marks.clone()));
        self.passes += 1;
        self.count_churn(changes);
        let failures: Vec<String> = outcome.failures.iter().map(ToString::to_string).collect();
        // Each failure is said once, with what it was doing; then retried quietly.
        for f in failures.iter().filter(|f| !self.failing.contains(f)) {
            tracing::warn!("{f}");
        }
        if failures.is_empty() {
            if changes.any() || self.passes == 1 {
                tracing::info!(
                    added = changes.added,
                    removed = changes.removed,
                    "reconciled: in sync"
                );
            }
            if !self.failing.is_empty() {
                tracing::info!("reconciliation succeeds again");
            }
            self.retry = Duration::from_secs(1);
            self.due = Instant::now() + self.period();
        } else {
            if failures != self.failing {
                tracing::warn!(
                    added = changes.added,
                    removed = changes.removed,
                    "reconciliation failed for {} action(s), the rest is in place; will retry",
                    failures.len()
                );
            }
            self.due = Instant::now() + self.retry;
            self.retry = (self.retry * 2).min(self.period());
        }
        self.failing = failures;
    }

    fn count_churn(&mut self, changes: Changes) {
        if !changes.any() {
            self.churn = 0;
            return;
        }
        self.churn += 1;
        if self.churn == CHURN_LIMIT {
            tracing::warn!(
                table = self.marks.table,
                priority = self.marks.priority,
                device = %self.marks.device,
                "the agent's routes, rules or device keep changing under it (another program managing them?); repairs slowed to one a second"
            );
        }
    }
}

/// Runs until SIGTERM or SIGINT, publishing each pass into `telemetry`.
pub fn run<K: Kernel>(
    kernel: &K,
    config: Option<AgentConfig>,
    marks: Owned,
    source: &mut impl Source,
    mut wakeups: Wakeups<'_>,
    telemetry: &Telemetry,
    keep_on_exit: bool,
) -> anyhow::Result<()> {
    let mut agent = Agent {
        kernel,
        config,
        marks,
        monitor: wakeups.monitor,
        due: Instant::now(),
        retry: Duration::from_secs(1),
        failing: Vec::new(),
        passes: 0,
        churn: 0,
        in_sync: None,
        telemetry,
    };
    let mut woken = Woken::default();
    loop {
        let mut update = source.poll();
        if woken.reload {
            tracing::info!("SIGHUP: reloading the configuration and reconciling");
            update = source.reload().or(update);
            agent.due = Instant::now();
        }
        if let Some(update) = update {
            agent.apply(update);
        }
        if woken.kernel {
            agent.kernel_changed();
        }
        if Instant::now() >= agent.due {
            agent.pass();
        }
        // Wake at least once a second to poll the source.
        let deadline = agent.due.min(Instant::now() + Duration::from_secs(1));
        woken = wakeups.wait(deadline)?;
        if woken.stop {
            break;
        }
    }
    if keep_on_exit {
        tracing::info!("exiting; routes, rules and overlay device kept");
    } else {
        let ch = cleanup(kernel, &agent.marks)?;
        tracing::info!(
            removed = ch.removed,
            "exiting; routes, rules and overlay device removed"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;
    use std::thread::JoinHandle;

    use super::*;
    use crate::fake_kernel::{config, FakeKernel};

    /// A file whose every reload (SIGHUP) reads the next of `configs`.
    struct Reloaded {
        configs: Vec<AgentConfig>,
    }

    impl Source for Reloaded {
        fn poll(&mut self) -> Option<Update> {
            None
        }

        fn reload(&mut self) -> Option<Update> {
            (!self.configs.is_empty()).then(|| Update::Config(Some(self.configs.remove(0))))
        }
    }

    /// A loop running over a fake kernel, with the test holding the other ends of its wake-ups.
    struct Running {
        kernel: Arc<FakeKernel>,
        telemetry: Telemetry,
        stop: UnixStream,
        hup: UnixStream,
        notify: UnixStream,
        thread: JoinHandle<anyhow::Result<()>>,
    }

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().expect("a socket pair")
    }

    /// `setup` adjusts the fake; `notify_writes`: the fake's writes are notified, as the kernel's.
    fn start(setup: impl FnOnce(&mut FakeKernel), notify_writes: bool) -> Running {
        start_with(setup, notify_writes, Vec::new())
    }

    /// [`start`], SIGHUP reading the next of `reloads` each time.
    fn start_with(
        setup: impl FnOnce(&mut FakeKernel),
        notify_writes: bool,
        reloads: Vec<AgentConfig>,
    ) -> Running {
        let c = config("w1", "vxlan");
        let marks = owned(&c);
        let (monitor, notify) = Monitor::fed(&marks);
        let mut fake = FakeKernel::default();
        if notify_writes {
            fake.notify = Some(notify.try_clone().expect("a clone"));
        }
        setup(&mut fake);
        let kernel = Arc::new(fake);
        let (stop_rx, stop) = pair();
        let (hup_rx, hup) = pair();
        hup_rx.set_nonblocking(true).expect("non-blocking");
        let k = kernel.clone();
        let telemetry = Telemetry::new();
        let t = telemetry.clone();
        let thread = std::thread::spawn(move || {
            let wakeups = Wakeups {
                stop: &stop_rx,
                reload: Some(&hup_rx),
                source: None,
                monitor: Some(&monitor),
            };
            let mut source = Reloaded { configs: reloads };
            run(&*k, Some(c), marks, &mut source, wakeups, &t, false)
        });
        Running {
            kernel,
            telemetry,
            stop,
            hup,
            notify,
            thread,
        }
    }

    impl Running {
        fn routes(&self) -> usize {
            self.kernel.state().routes.len()
        }

        /// Polls `check` for up to `limit`; how long it took to hold.
        fn within(&self, limit: Duration, check: impl Fn(&Self) -> bool) -> Option<Duration> {
            let start = Instant::now();
            while start.elapsed() < limit {
                if check(self) {
                    return Some(start.elapsed());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            None
        }

        fn status(&self) -> crate::status::Status {
            self.telemetry.status(std::time::SystemTime::now())
        }

        fn finish(self) -> Arc<FakeKernel> {
            (&self.stop).write_all(&[1]).expect("stop");
            self.thread
                .join()
                .expect("the loop panicked")
                .expect("the loop failed");
            self.kernel
        }
    }

    const ALL: usize = 3;

    #[test]
    fn sighup_reconciles_at_once_even_without_a_file_to_reload() {
        let r = start(|_| {}, false);
        assert!(r
            .within(Duration::from_secs(2), |r| r.routes() == ALL)
            .is_some());
        // Lost silently: only the periodic pass (10 s away) or SIGHUP brings it back.
        r.kernel.state().routes.pop();
        (&r.hup).write_all(&[1]).expect("SIGHUP");
        let took = r.within(Duration::from_millis(500), |r| r.routes() == ALL);
        assert!(took.is_some(), "SIGHUP did not reconcile");
        assert!(!r.thread.is_finished(), "SIGHUP ended the loop");
        let k = r.finish();
        assert!(k.state().routes.is_empty(), "SIGTERM cleans up");
    }

    #[test]
    fn a_change_the_kernel_reports_is_repaired_within_milliseconds() {
        let r = start(|_| {}, false);
        assert!(r
            .within(Duration::from_secs(2), |r| r.routes() == ALL)
            .is_some());
        r.kernel.state().routes.pop();
        (&r.notify).write_all(&[1]).expect("notify");
        let took = r.within(Duration::from_millis(500), |r| r.routes() == ALL);
        assert!(
            took.is_some_and(|t| t < Duration::from_millis(100)),
            "{took:?}"
        );
        r.finish();
    }

    #[test]
    fn the_agents_own_changes_set_off_one_quiet_pass_and_no_more() {
        let r = start(|_| {}, true);
        assert!(r
            .within(Duration::from_secs(2), |r| r.routes() == ALL)
            .is_some());
        std::thread::sleep(Duration::from_millis(300));
        let (passes, writes) = {
            let s = r.kernel.state();
            (s.route_dumps, s.writes)
        };
        // The first pass, then the one its own notifications set off, which finds nothing.
        assert_eq!(passes, 2);
        std::thread::sleep(Duration::from_millis(300));
        let s = r.kernel.state();
        assert_eq!((s.route_dumps, s.writes), (passes, writes));
        drop(s);
        r.finish();
    }

    #[test]
    fn a_fight_with_another_program_slows_repairs_down() {
        // Every route it adds is deleted at once, and every change notified.
        let r = start(|k| k.lose_routes = true, true);
        std::thread::sleep(Duration::from_millis(1500));
        let passes = r.kernel.state().route_dumps;
        // CHURN_LIMIT passes 10 ms apart, then one a second (unbounded: about 100).
        assert!(
            (CHURN_LIMIT as usize..=CHURN_LIMIT as usize + 3).contains(&passes),
            "{passes} passes in 1.5 s"
        );
        r.finish();
    }

    #[test]
    fn a_repair_the_kernel_reports_is_counted_and_the_snapshot_follows() {
        let r = start(|_| {}, false);
        assert!(r
            .within(Duration::from_secs(2), |r| r.status().routes.installed
                == Some(ALL))
            .is_some());
        let s = r.status();
        assert_eq!((s.routes.desired, s.repairs), (ALL, 0));
        assert!(crate::status::healthy(&s), "{s:?}");
        r.kernel.state().routes.pop();
        (&r.notify).write_all(&[1]).expect("notify");
        assert!(
            r.within(Duration::from_millis(500), |r| r.status().repairs == 1)
                .is_some(),
            "{:?}",
            r.status()
        );
        assert_eq!(r.status().routes.installed, Some(ALL));
        r.finish();
    }

    #[test]
    fn a_refused_route_is_missing_and_each_failed_pass_counted() {
        let r = start(|k| k.refuse = vec!["10.97.0.0/16".parse().unwrap()], false);
        // The first pass and the retry a second later both fail.
        assert!(r
            .within(Duration::from_secs(3), |r| r.status().reconcile_failures
                >= 2)
            .is_some());
        let s = r.status();
        assert_eq!(s.reconciles, s.reconcile_failures, "{s:?}");
        assert_eq!(s.routes.missing, ["10.97.0.0/16 via 10.84.0.10 (overlay)"]);
        assert_eq!(s.routes.installed, Some(ALL - 1));
        assert!(!crate::status::healthy(&s));
        // Retrying the same route is no repair.
        assert_eq!(s.repairs, 0);
        r.finish();
    }

    #[test]
    fn counters_never_go_back_across_reloads() {
        let mut fewer = config("w1", "vxlan");
        fewer.remote_networks.truncate(1);
        let mut moved = config("w1", "vxlan");
        moved.table = 2742;
        let r = start_with(|_| {}, false, vec![fewer, moved]);
        assert!(r
            .within(Duration::from_secs(2), |r| r.status().reconciles >= 1)
            .is_some());
        r.kernel.state().routes.pop();
        (&r.notify).write_all(&[1]).expect("notify");
        assert!(r
            .within(Duration::from_millis(500), |r| r.status().repairs == 1)
            .is_some());
        let mut last = r.status();
        for (desired, table) in [(1, 2741), (3, 2742)] {
            (&r.hup).write_all(&[1]).expect("SIGHUP");
            assert!(
                r.within(Duration::from_millis(500), |r| {
                    let s = r.status();
                    s.routes.desired == desired && s.table == table
                })
                .is_some(),
                "{:?}",
                r.status()
            );
            let s = r.status();
            assert!(s.reconciles > last.reconciles, "{s:?}");
            assert!(s.reconcile_failures >= last.reconcile_failures);
            // A new configuration's changes are not repairs, and the old ones still count.
            assert_eq!(s.repairs, 1, "{s:?}");
            assert_eq!(s.routes.installed, Some(desired));
            last = s;
        }
        let text = r.telemetry.encode().expect("metrics");
        assert!(
            text.contains(&format!(
                "liqonet_route_agent_reconciles_total {}\n",
                last.reconciles
            )),
            "{text}"
        );
        r.finish();
    }
}
