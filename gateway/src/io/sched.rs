//! The data-path thread's CPU priority.
//!
//! Under load a gateway node's CPUs are shared with the pods that make the traffic, and a packet
//! waits for nothing so long as for the gateway's turn on a CPU: with both gateways and both
//! iperf3 ends on 2 vCPUs, a ping through the tunnel took 6.5 ms (median) under a single stream
//! at normal priority and 0.55 ms with the data-path threads at real-time priority, for the same
//! throughput (docs/STATUS.md, speed). The kernel's own WireGuard runs in softirq context, above
//! every task; a low real-time priority (`SCHED_FIFO`) is the userspace equivalent. The kernel
//! still keeps a share of every CPU for normal tasks (`sched_rt_runtime_us`, or the fair server
//! since Linux 6.12), and threaded interrupt handlers (priority 50) preempt it.
//!
//! Only the calling thread is raised, with `SCHED_RESET_ON_FORK`: threads it starts later run at
//! normal priority. It needs `CAP_SYS_NICE`; without it the loop runs at normal priority (said
//! once).

use nix::libc;

/// The calling thread at real-time priority until dropped (then back to normal).
pub struct Realtime {
    /// The priority in force; 0 when the thread runs at normal priority.
    pub priority: u8,
}

impl Realtime {
    /// Raises the calling thread to `SCHED_FIFO` at `priority` (1–99); 0 leaves it alone.
    pub fn enter(priority: u8) -> Self {
        if priority == 0 {
            return Realtime { priority: 0 };
        }
        match set(
            libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK,
            i32::from(priority),
        ) {
            Ok(()) => {
                tracing::info!(priority, "data path at real-time priority (SCHED_FIFO)");
                Realtime { priority }
            }
            Err(e) => {
                tracing::warn!(
                    "data path at normal priority: real-time priority {priority} refused ({e}; \
                     it needs CAP_SYS_NICE). Latency under load will be higher"
                );
                Realtime { priority: 0 }
            }
        }
    }
}

impl Drop for Realtime {
    fn drop(&mut self) {
        if self.priority != 0 {
            let _ = set(libc::SCHED_OTHER, 0);
        }
    }
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
    fn the_thread_runs_at_real_time_priority_until_dropped_and_its_children_do_not() {
        std::thread::spawn(|| {
            let rt = Realtime::enter(10);
            // Tests run as root here; elsewhere the refusal is the case under test.
            if rt.priority == 0 {
                assert_eq!(policy(), libc::SCHED_OTHER, "a refusal changes nothing");
                return;
            }
            assert_eq!(policy(), libc::SCHED_FIFO);
            let child = std::thread::spawn(policy).join().unwrap();
            assert_eq!(
                child,
                libc::SCHED_OTHER,
                "threads it starts run at normal priority"
            );
            drop(rt);
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn priority_zero_leaves_the_thread_alone() {
        std::thread::spawn(|| {
            assert_eq!(Realtime::enter(0).priority, 0);
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }
}
