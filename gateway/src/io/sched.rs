//! The data-path thread's CPU priority.
//!
//! Under load a gateway node's CPUs are shared with the pods that make the traffic, and a packet
//! waits for nothing so long as for the gateway's turn on a CPU: with both gateways and both
//! iperf3 ends on 2 vCPUs, a ping through the tunnel took 6.5 ms (median) under a single stream
//! at normal priority and 0.55 ms with the data-path threads at real-time priority, for the same
//! throughput (docs/STATUS.md, speed, round 3). The kernel's own WireGuard runs in softirq
//! context, above every task; a low real-time priority (`SCHED_FIFO`) is the userspace
//! equivalent. Threaded interrupt handlers (priority 50) still preempt it.
//!
//! Only the calling thread is raised, only while the loop is busy, never for more than
//! [`MOST`] of a CPU ([`Priority`]), and with `SCHED_RESET_ON_FORK`: threads it starts run at
//! normal priority. It needs `CAP_SYS_NICE`; without it the loop runs at normal priority (said
//! once).
//!
//! Raised, the loop runs the moment a packet arrives, so packets that come one at a time (UDP
//! from a pod: a send each) are read one or two a turn, each turn its own wake-up, underlay
//! send and TUN write. At 1 Gbit/s of such datagrams that took 25 k turns a second and 2.7
//! times the gateways' CPU per byte of normal priority, and the pods sending lost the CPU to it:
//! 0.33–0.63 Gbit/s got through against 0.95–1.0. So after a run of small turns a raised loop lets
//! packets gather for a moment ([`GATHER`]) before each next turn, as a NIC moderates its
//! interrupts, until a turn is full again. At 1 Gbit/s of datagrams the turn after a pause
//! usually is, so it pauses about every fifth turn. Under a TCP stream turns carry 64 KB
//! super-packets and it almost never waits (about 20 times a second).

use std::time::{Duration, Instant};

use nix::libc;

/// How often the loop's share of CPU time is looked at.
const WINDOW: Duration = Duration::from_millis(20);
/// The thread's share of one CPU over a window that raises it to real-time priority.
const RAISE_AT: f64 = 0.25;
/// Under this share it idles, and goes back to normal priority.
const LOWER_AT: f64 = 0.05;
/// The most of a CPU the thread takes at real-time priority: past it (flat out, a flood or a
/// stream it cannot keep up with), it rests for the excess. A real-time thread that never
/// sleeps starves everything else on its CPU until the kernel takes the CPU from it for tens
/// of milliseconds at once (real-time throttling or the fair server: 50 ms a second), long
/// enough for its socket buffer to overflow under a flood (47 datagrams in the hardening lab
/// test). Resting a millisecond or two at a time, the rest of the machine runs in between.
const MOST: f64 = 0.9;
/// A turn that read less than this, and left nothing behind, is a small one.
const SMALL_TURN: usize = 16 * 1024;
/// Small turns in a row after which a raised loop lets packets gather before each next turn.
const SMALL_TURNS: u32 = 4;
/// How long it lets them gather: at 1 Gbit/s of 1300-byte datagrams, about 20 of them.
const GATHER: Duration = Duration::from_micros(200);

/// What one loop turn did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Turn {
    /// Bytes read from the TUN and the sockets.
    pub read: usize,
    /// A source still had packets when the turn moved on (it read its most from one).
    pub left_some: bool,
}

/// The calling thread's priority: real-time while the loop is busy (taking at most [`MOST`] of
/// a CPU), normal while it idles.
///
/// Normal while idle, because an idle gateway wakes faster at normal priority on a VM: the
/// scheduler wakes a normal thread on the CPU that woke it, a real-time one on its own last CPU,
/// which, idle, must first be woken itself (on this lab's VM, 0.6–0.8 ms against 0.42–0.48 ms
/// for an idle ping through the tunnel).
pub struct Priority {
    /// The real-time priority taken while busy; 0 when off or refused.
    pub realtime: u8,
    raised: bool,
    window_start: Instant,
    cpu_at_start: Duration,
    /// Small turns in a row, up to [`SMALL_TURNS`].
    small_turns: u32,
}

impl Priority {
    /// Checks that `realtime` (1–99; 0: always normal) may be taken, and says so either way.
    pub fn new(realtime: u8) -> Self {
        let mut p = Priority {
            realtime: 0,
            raised: false,
            window_start: Instant::now(),
            cpu_at_start: thread_cpu(),
            small_turns: 0,
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

    /// Once per loop turn, with what the last turn did: when a window has passed, the thread
    /// takes the priority its share of CPU time over the window calls for. Returns how long to
    /// pause first, at real-time priority: to rest for what it used past [`MOST`] of the
    /// window, or to let packets gather after small turns ([`GATHER`]); usually zero.
    pub fn turn(&mut self, now: Instant, last: Turn) -> Duration {
        if self.realtime == 0 {
            return Duration::ZERO;
        }
        let rest = self.rest(now);
        self.gather(last).max(rest)
    }

    /// How long a raised loop waits for packets to gather after `last`.
    fn gather(&mut self, last: Turn) -> Duration {
        match last {
            // A turn for a timer or a control message says nothing of the traffic.
            Turn { read: 0, .. } => {}
            Turn {
                read,
                left_some: false,
            } if read < SMALL_TURN => self.small_turns = (self.small_turns + 1).min(SMALL_TURNS),
            _ => self.small_turns = 0,
        }
        match self.raised && self.small_turns == SMALL_TURNS {
            true => GATHER,
            false => Duration::ZERO,
        }
    }

    /// At a window's end: the priority for the window's share, and the rest it calls for.
    fn rest(&mut self, now: Instant) -> Duration {
        let span = now.saturating_duration_since(self.window_start);
        if span < WINDOW {
            return Duration::ZERO;
        }
        let cpu = thread_cpu();
        let used = cpu.saturating_sub(self.cpu_at_start);
        let was_raised = self.raised;
        self.decide(used.as_secs_f64() / span.as_secs_f64());
        self.window_start = now;
        self.cpu_at_start = cpu;
        match was_raised && self.raised {
            true => used.saturating_sub(span.mul_f64(MOST)).min(WINDOW),
            false => Duration::ZERO,
        }
    }

    /// Raises or lowers the thread for a window in which it used `share` of a CPU.
    fn decide(&mut self, share: f64) {
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
            // The next busy spell starts its own run of small turns.
            self.small_turns = 0;
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

/// The CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
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

    impl Priority {
        /// The real-time priority in force now; 0 at normal priority.
        fn in_force(&self) -> u8 {
            if self.raised {
                self.realtime
            } else {
                0
            }
        }
    }

    /// Runs `test` on a thread of its own: priorities are per thread, and the harness's must
    /// stay as they are.
    fn on_own_thread(test: impl FnOnce() + Send + 'static) {
        std::thread::spawn(test).join().unwrap();
    }

    #[test]
    fn real_time_while_busy_normal_while_idle_never_for_threads_it_starts() {
        on_own_thread(|| {
            let mut p = Priority::new(10);
            // Tests run as root here; elsewhere the refusal is the case under test.
            if p.realtime == 0 {
                assert_eq!(policy(), libc::SCHED_OTHER, "a refusal changes nothing");
                return;
            }
            assert_eq!(
                (policy(), p.in_force()),
                (libc::SCHED_OTHER, 0),
                "normal until busy"
            );
            p.decide(0.5);
            assert_eq!((policy(), p.in_force()), (libc::SCHED_FIFO, 10));
            let child = std::thread::spawn(policy).join().unwrap();
            assert_eq!(
                child,
                libc::SCHED_OTHER,
                "threads it starts run at normal priority"
            );
            // Between idle and busy, it stays as it is.
            p.decide(0.1);
            assert_eq!(p.in_force(), 10);
            p.decide(0.01);
            assert_eq!((policy(), p.in_force()), (libc::SCHED_OTHER, 0), "idle");
            p.decide(0.1);
            assert_eq!(p.in_force(), 0);
            p.decide(1.0);
            assert_eq!((policy(), p.in_force()), (libc::SCHED_FIFO, 10));
            drop(p);
            assert_eq!(policy(), libc::SCHED_OTHER, "normal once the loop is over");
        });
    }

    #[test]
    fn flat_out_at_real_time_priority_it_rests_for_what_it_took_past_its_share() {
        on_own_thread(|| {
            let mut p = Priority::new(10);
            if p.realtime == 0 {
                return;
            }
            let spin = |p: &mut Priority| {
                let start = p.window_start;
                while Instant::now() - start < WINDOW * 2 {}
                p.turn(Instant::now(), Turn::default())
            };
            // The first busy window raises it (and rests nothing: it was normal till then).
            assert_eq!(spin(&mut p), Duration::ZERO);
            assert_eq!(p.in_force(), 10);
            // Flat out at real-time priority (where normal threads cannot take its CPU): a
            // rest of about a tenth of the span.
            let rest = spin(&mut p);
            assert!(rest > Duration::ZERO && rest <= WINDOW, "{rest:?}");
            assert_eq!(p.in_force(), 10);
            // Resting, it uses nothing: it is lowered after an idle window, and rests no more.
            std::thread::sleep(WINDOW * 2);
            assert_eq!(p.turn(Instant::now(), Turn::default()), Duration::ZERO);
            assert_eq!(p.in_force(), 0);
        });
    }

    #[test]
    fn raised_after_a_run_of_small_turns_it_lets_packets_gather() {
        // No system call here: the flag stands for the priority, so this runs unprivileged too.
        let mut p = Priority::new(0);
        let small = Turn {
            read: SMALL_TURN - 1,
            left_some: false,
        };
        let full = Turn {
            read: SMALL_TURN,
            left_some: false,
        };
        // Small in bytes, but a source had more: not a trickle.
        let cut_short = Turn {
            read: 100,
            left_some: true,
        };
        // At normal priority the kernel's scheduling gathers packets already.
        for _ in 0..SMALL_TURNS * 2 {
            assert_eq!(p.gather(small), Duration::ZERO);
        }
        p.raised = true;
        assert_eq!(
            p.gather(small),
            GATHER,
            "a run of small turns ends in a pause"
        );
        assert_eq!(p.gather(small), GATHER, "and a pause before each next one");
        assert_eq!(
            p.gather(Turn::default()),
            GATHER,
            "an empty turn (a timer) changes nothing"
        );
        assert_eq!(p.gather(full), Duration::ZERO, "a full turn: at once");
        for _ in 1..SMALL_TURNS {
            assert_eq!(p.gather(small), Duration::ZERO, "not before a run");
        }
        assert_eq!(p.gather(small), GATHER);
        assert_eq!(
            p.gather(cut_short),
            Duration::ZERO,
            "a turn that left packets: at once"
        );
        for _ in 1..SMALL_TURNS {
            assert_eq!(p.gather(small), Duration::ZERO);
        }
        // Lowered, never.
        p.raised = false;
        assert_eq!(p.gather(small), Duration::ZERO);
    }

    #[test]
    fn the_share_is_the_threads_own_cpu_time() {
        on_own_thread(|| {
            let start = thread_cpu();
            // Asleep, the thread uses no CPU time; spinning, it does.
            std::thread::sleep(Duration::from_millis(20));
            assert!(thread_cpu() - start < Duration::from_millis(5));
            let spin = Instant::now();
            while thread_cpu() - start < Duration::from_millis(10) {
                assert!(
                    spin.elapsed() < Duration::from_secs(10),
                    "the clock does not move"
                );
            }
        });
    }

    #[test]
    fn priority_zero_stays_normal_however_busy() {
        on_own_thread(|| {
            let mut p = Priority::new(0);
            let t0 = Instant::now();
            let spin = Instant::now();
            while spin.elapsed() < WINDOW {}
            p.turn(
                t0 + WINDOW * 2,
                Turn {
                    read: 1,
                    left_some: false,
                },
            );
            assert_eq!(
                (policy(), p.in_force(), p.realtime),
                (libc::SCHED_OTHER, 0, 0)
            );
        });
    }
}
