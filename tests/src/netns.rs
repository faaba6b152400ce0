//! Running commands, in the host or inside a namespace, and removing namespaces by prefix.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Runs a command to completion; fails with its stderr when it exits non-zero.
pub fn run(args: &[&str]) -> anyhow::Result<String> {
    stdout_of(&args.join(" "), output(args)?)
}

/// A finished command's stdout, or an error naming `what` with its stderr when it failed.
pub fn stdout_of(what: &str, out: Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn output(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {:?} (is it installed?)", args[0]))
}

/// `args` inside namespace `ns`.
pub fn ns_args<'a>(ns: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    v
}

pub fn ns_run(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    run(&ns_args(ns, args))
}

/// A command line split on whitespace (no quoting), run inside `ns`: `sh(ns, "ip link set lo up")`.
pub fn sh(ns: &str, line: &str) -> anyhow::Result<String> {
    let args: Vec<&str> = line.split_whitespace().collect();
    ns_run(ns, &args)
}

pub fn ns_output(ns: &str, args: &[&str]) -> anyhow::Result<Output> {
    output(&ns_args(ns, args))
}

pub fn list() -> Vec<String> {
    run(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Kills every process in each namespace starting with `prefix`, then deletes the namespaces.
pub fn remove_prefixed(prefix: &str) {
    let spaces: Vec<String> = list()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    for sig in ["TERM", "KILL"] {
        let mut any = false;
        for ns in &spaces {
            for pid in run(&["ip", "netns", "pids", ns])
                .unwrap_or_default()
                .split_whitespace()
            {
                any = true;
                let _ = output(&["kill", &format!("-{sig}"), pid]);
            }
        }
        if !any {
            break;
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline
            && spaces.iter().any(|ns| {
                !run(&["ip", "netns", "pids", ns])
                    .unwrap_or_default()
                    .trim()
                    .is_empty()
            })
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for ns in &spaces {
        let _ = output(&["ip", "netns", "del", ns]);
        // Per-namespace files `ip netns exec` mounts (a lab's resolv.conf).
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
    }
}

/// Runs `f` on a thread inside namespace `ns` and returns what it returns: sockets it opens stay
/// in that namespace wherever they are used afterwards.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    // A lab namespace by name, or any namespace by path (a real pod's: /proc/PID/ns/net).
    let path = if ns.starts_with('/') {
        ns.to_string()
    } else {
        format!("/run/netns/{ns}")
    };
    let netns = std::fs::File::open(path)?;
    std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a thread in a lab namespace panicked"))?
}

/// Removes labs whose creating process is gone (prefix `lq<pid>x`), e.g. after a SIGKILL.
pub fn sweep_stale() {
    let mut seen = Vec::new();
    for ns in list() {
        let Some(rest) = ns.strip_prefix("lq") else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('x') else {
            continue;
        };
        if pid.parse::<u32>().is_err() || seen.contains(&pid.to_string()) {
            continue;
        }
        seen.push(pid.to_string());
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove_prefixed(&format!("lq{pid}x"));
        }
    }
}

/// Polls `check` until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
