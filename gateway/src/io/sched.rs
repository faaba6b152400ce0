//! The data-path thread's CPU priority.
//!
//! Under load a gateway node's CPUs are shared with the pods that make the traffic, and a packet
//! waits for nothing so long as for the gateway's turn on a CPU: with both gateways and both
//! iperf3 ends on 2 vCPUs, a ping through the tunnel took 6.5 ms (median) under a single stream
//! at normal priority and 0.55 ms with the data-path threads at real-time priority, for the same
//! throughput (docs/STATUS.md, speed, round 3). The kernel's own WireGuard runs in softirq context, above
//! every task; a low real-time priority (`SCHED_FIFO`) is the userspace equivalent. The kernel
//! still keeps a share of every CPU for normal tasks (`sched_rt_runtime_us`, or the fair server
//! since Linux 6.12), and threaded interrupt handlers (priority 50) preempt it.
//!
//! Only the calling thread is raised, and only while the loop is busy ([`Priority`]), with
//! `SCHED_RESET_ON_FORK`: threads it starts run at normal priority. It needs `CAP_SYS_NICE`;
//! without it the loop runs at normal priority (said once). A flood of datagrams keeps the
//! thread busy, so it holds a CPU at real-time priority for as long as the flood lasts, within
//! the share the kernel keeps for other tasks.

use std::time::{Duration, Instant};

use nix::libc;

/// How often the loop's share of busy time is looked at.
const WINDOW: Duration = Duration::from_millis(20);
/// Busy at least this share of a window: real-time priority. Under the lower share: normal.
const RAISE_AT: f64 = 0.25;
const LOWER_AT: f64 = 0.05;

/// The calling thread's priority: real-time while the loop is busy, normal while it idles.
///
/// Only while busy, because an idle gateway wakes faster at normal priority on a VM: the
/// scheduler wakes a normal thread on the CPU that woke it, a real-time one on its own last CPU,
/// which, idle, must first be woken itself (on this lab's VM, 0.6–0.8 ms against 0.42–0.48 ms
/// for an idle ping through the tunnel).
pub struct Priority {
    /// The real-time priority taken while busy; 0 when off or refused.
    pub realtime: u8,
    raised: bool,
    window_start: Instant,
    worked: Duration,
}

impl Priority {
    /// Checks that `realtime` (1–99; 0: always normal) may be taken, and says so either way.
    pub fn new(realtime: u8) -> Self {
        let mut p = Priority {
            realtime: 0,
            raised: false,
            window_start: Instant::now(),
            worked: Duration::ZERO,
        };
        if realtime == 0 {
            return p;
        }
        match set(realtime_policy(), i32::from(realtime)).and_then(|()| set(normal_policy(), 0)) {
            Ok(()) => {
                tracing::info!(
                    priority = realtime,
                    "data path at real-time priority (SCHED_FIFO) while busy"
                );
                p.realtime = realtime;
            }
            Err(e) => tracing::warn!(
                "data path at normal priority: real-time priority {realtime} refused ({e}; it \
                 needs CAP_SYS_NICE, and a real-time budget in the cgroup where that applies). \
                 Latency under load will be higher"
            ),
        }
        p
    }

    /// The loop worked for `worked` since it last slept; at `now`, once a window has passed,
    /// the thread takes the priority its share of busy time calls for.
    pub fn worked(&mut self, worked: Duration, now: Instant) {
        if self.realtime == 0 {
            return;
        }
        self.worked += worked;
        let span = now.saturating_duration_since(self.window_start);
        if span < WINDOW {
            return;
        }
        let share = self.worked.as_secs_f64() / span.as_secs_f64();
        if !self.raised && share >= RAISE_AT {
            match set(realtime_policy(), i32::from(self.realtime)) {
                Ok(()) => self.raised = true,
                Err(e) => {
                    tracing::warn!("data path at normal priority from now: {e}");
                    self.realtime = 0;
                }
            }
        } else if self.raised && share < LOWER_AT && set(normal_policy(), 0).is_ok() {
            self.raised = false;
        }
        self.window_start = now;
        self.worked = Duration::ZERO;
    }

    /// The real-time priority in force now; 0 at normal priority.
    pub fn in_force(&self) -> u8 {
        if self.raised {
            self.realtime
        } else {
            0
        }
    }
}

impl Drop for Priority {
    fn drop(&mut self) {
        if self.raised {
            let _ = set(normal_policy(), 0);
        }
    }
}

/// Threads started from the data path run at normal priority.
fn realtime_policy() -> i32 {
    libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK
}

/// Keeping the reset-on-fork flag: clearing it needs CAP_SYS_NICE, which a priority granted by
/// RLIMIT_RTPRIO does not carry.
fn normal_policy() -> i32 {
    libc::SCHED_OTHER | libc::SCHED_RESET_ON_FORK
}

fn set(policy: i32, priority: i32) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is this thread.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> i32 {
        // SAFETY: no arguments but the calling thread.
        let policy = unsafe { libc::sched_getscheduler(0) };
        policy & !libc::SCHED_RESET_ON_FORK
    }

    #[test]
    fn real_time_while_busy_normal_while_idle_and_never_for_threads_it_starts() {
        std::thread::spawn(|| {
            let mut p = Priority::new(10);
            // Tests run as root here; elsewhere the refusal is the case under test.
            if p.realtime == 0 {
                assert_eq!(policy(), libc::SCHED_OTHER, "a refusal changes nothing");
                return;
            }
            assert_eq!(policy(), libc::SCHED_OTHER, "normal until busy");
            let t0 = Instant::now();
            // Half of a window busy: raised once the window is over, not before.
            p.worked(WINDOW / 2, t0 + WINDOW / 2);
            assert_eq!((policy(), p.in_force()), (libc::SCHED_OTHER, 0));
            p.worked(Duration::ZERO, t0 + WINDOW);
            assert_eq!((policy(), p.in_force()), (libc::SCHED_FIFO, 10));
            let child = std::thread::spawn(policy).join().unwrap();
            assert_eq!(
                child,
                libc::SCHED_OTHER,
                "threads it starts run at normal priority"
            );
            // Busy 10 %: between the two shares, it stays.
            p.worked(WINDOW / 10, t0 + WINDOW * 2);
            assert_eq!(p.in_force(), 10);
            // Idle a window: normal again.
            p.worked(Duration::from_micros(50), t0 + WINDOW * 3);
            assert_eq!((policy(), p.in_force()), (libc::SCHED_OTHER, 0));
            p.worked(WINDOW, t0 + WINDOW * 4);
            assert_eq!(policy(), libc::SCHED_FIFO);
            drop(p);
            assert_eq!(policy(), libc::SCHED_OTHER, "normal once the loop is over");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn priority_zero_stays_normal_however_busy() {
        std::thread::spawn(|| {
            let mut p = Priority::new(0);
            let t0 = Instant::now();
            p.worked(WINDOW, t0 + WINDOW);
            assert_eq!(
                (policy(), p.in_force(), p.realtime),
                (libc::SCHED_OTHER, 0, 0)
            );
        })
        .join()
        .unwrap();
    }
}
