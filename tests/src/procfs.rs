//! What /proc says of a process: its CPU time and resident memory, for the benches' and the
//! labs' usage figures.

use std::fs;
use std::sync::OnceLock;
use std::time::Duration;

/// Clock ticks a second (`getconf CLK_TCK`, 100 on Linux), asked once.
fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        crate::netns::run(&["getconf", "CLK_TCK"])
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// User and system CPU time of `pid` so far, every thread's (`/proc/PID/stat`, in clock ticks).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after it. The state
    // is field 3, utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / ticks_per_second(),
    ))
}

/// CPU time of every live thread of `pid` so far, to the nanosecond (the scheduler's statistics,
/// where `cpu_time` counts whole ticks): for costs of a few milliseconds.
pub fn sched_time(pid: u32) -> Duration {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// Resident memory of `pid`, in bytes (`VmRSS`).
pub fn rss(pid: u32) -> Option<u64> {
    let kib: u64 = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        // Burn a little CPU so that a tick is counted.
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_time(me).is_some());
        assert!(sched_time(me) >= Duration::from_millis(20));
        assert!(rss(me).is_some_and(|b| b > 1 << 20));
        assert_eq!(rss(u32::MAX), None);
    }
}
