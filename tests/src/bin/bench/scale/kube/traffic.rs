//! What the agents cost the API server and the machine, read at points in time and compared:
//! the API server's own request, watch and watch-event metrics for the two resources the agents
//! watch, the bytes on the control plane's link, and CPU time of the agents and the control
//! plane.

use std::collections::BTreeMap;
use std::time::Instant;

use super::fleet::Fleet;

/// The resources the agents watch.
pub const RESOURCES: [&str; 2] = ["tunnelendpoints", "nodes"];

/// One reading.
pub struct Snapshot {
    pub at: Instant,
    /// `apiserver_request_total` by (verb, resource), the agents' resources only.
    pub requests: BTreeMap<(String, String), f64>,
    /// Open watches (`apiserver_longrunning_requests`, verb WATCH) by resource.
    pub watches: BTreeMap<String, f64>,
    /// Watch events sent to watchers, and their bytes (`apiserver_watch_events_total`,
    /// `apiserver_watch_events_sizes_sum`), summed over the agents' resources.
    pub watch_events: f64,
    pub watch_event_bytes: f64,
    /// The control plane's link: bytes out (to the agents) and in.
    pub tx: u64,
    pub rx: u64,
    /// CPU time in ns: all agents, the API server, etcd.
    pub agents_cpu: u64,
    pub apiserver_cpu: u64,
    pub etcd_cpu: u64,
}

impl Snapshot {
    pub fn take(fleet: &Fleet) -> anyhow::Result<Snapshot> {
        let at = Instant::now();
        let (tx, rx) = fleet.link_bytes()?;
        let text = fleet.cp()?.kubectl(&["get", "--raw", "/metrics"])?;
        let mut s = Snapshot {
            at,
            requests: BTreeMap::new(),
            watches: BTreeMap::new(),
            watch_events: 0.0,
            watch_event_bytes: 0.0,
            tx,
            rx,
            agents_cpu: fleet.agent_pids().into_iter().map(cpu_ns).sum(),
            apiserver_cpu: fleet.control_plane_pid("kube-apiserver").map_or(0, cpu_ns),
            etcd_cpu: fleet.control_plane_pid("etcd").map_or(0, cpu_ns),
        };
        for (name, labels, value) in samples(&text) {
            let label = |k: &str| labels.get(k).map_or("", String::as_str);
            if !RESOURCES.contains(&label("resource")) {
                continue;
            }
            match name {
                "apiserver_request_total" => {
                    *s.requests
                        .entry((label("verb").into(), label("resource").into()))
                        .or_default() += value;
                }
                "apiserver_longrunning_requests" if label("verb") == "WATCH" => {
                    *s.watches.entry(label("resource").into()).or_default() += value;
                }
                "apiserver_watch_events_total" => s.watch_events += value,
                "apiserver_watch_events_sizes_sum" => s.watch_event_bytes += value,
                _ => {}
            }
        }
        Ok(s)
    }

    /// Requests of `verbs` (all resources the agents watch) since `before`.
    pub fn requests_since(&self, before: &Snapshot, verbs: &[&str]) -> f64 {
        let count = |s: &Snapshot| -> f64 {
            s.requests
                .iter()
                .filter(|((verb, _), _)| verbs.contains(&verb.as_str()))
                .map(|(_, v)| v)
                .sum()
        };
        count(self) - count(before)
    }

    /// Open watches on `resource` now.
    pub fn watching(&self, resource: &str) -> f64 {
        self.watches.get(resource).copied().unwrap_or(0.0)
    }
}

/// The samples of a Prometheus text exposition: name, labels, value.
fn samples(text: &str) -> Vec<(&str, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some((s, v)) => (s, v),
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, labels(rest.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        out.push((name, labels, value));
    }
    out
}

/// `a="x",b="y"` (the values here hold no quotes or commas that matter).
fn labels(s: &str) -> BTreeMap<String, String> {
    s.split("\",")
        .filter_map(|kv| kv.split_once("=\""))
        .map(|(k, v)| (k.trim().to_string(), v.trim_end_matches('"').to_string()))
        .collect()
}

/// CPU time of every thread of `pid` so far, in ns (exact, where utime/stime count ticks).
pub fn cpu_ns(pid: u32) -> u64 {
    u64::try_from(liqonet_lab::procfs::sched_time(pid).as_nanos()).unwrap_or(u64::MAX)
}

/// A process's resident memory, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    liqonet_lab::procfs::rss(pid).map(|b| b / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lines_become_samples() {
        let text = "# HELP x y\napiserver_request_total{code=\"200\",resource=\"nodes\",verb=\"LIST\"} 51\nup 1\n";
        let s = samples(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, "apiserver_request_total");
        assert_eq!(s[0].1["verb"], "LIST");
        assert_eq!(s[0].1["resource"], "nodes");
        assert_eq!(s[0].2, 51.0);
        assert_eq!((s[1].0, s[1].2), ("up", 1.0));
    }
}
