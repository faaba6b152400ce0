//! Forwarding and reverse-path filtering, read from `/proc/sys` of the network namespace
//! diagnose runs in (or from `LIQONET_PROC_SYS`, where a container sees the host's, as for the
//! route agent).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::Check;

/// A sysctl key by its path components: `["net", "ipv4", "conf", "liqo.vxlan", "rp_filter"]`.
pub struct Key<'a>(pub Vec<&'a str>);

impl Key<'_> {
    /// As `sysctl` spells it: components joined by `.`, a `.` inside one written `/`
    /// (`net.ipv4.conf.liqo/vxlan.rp_filter`).
    pub fn dotted(&self) -> String {
        self.0
            .iter()
            .map(|c| c.replace('.', "/"))
            .collect::<Vec<_>>()
            .join(".")
    }
}

pub struct Sysctls {
    root: PathBuf,
}

impl Sysctls {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysctls { root: root.into() }
    }

    /// `/proc/sys`, or `LIQONET_PROC_SYS`.
    pub fn from_env() -> Self {
        Sysctls::new(std::env::var_os("LIQONET_PROC_SYS").unwrap_or_else(|| "/proc/sys".into()))
    }

    pub fn read(&self, key: &Key) -> Result<String, String> {
        let path = key.0.iter().fold(self.root.clone(), |p, c| p.join(c));
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    }
}

/// `net.ipv4.ip_forward`, and `net.ipv6.conf.all.forwarding` when IPv6 networks are routed.
pub fn forwarding(sys: &Sysctls, ipv6: bool) -> Vec<Check> {
    let mut keys = vec![Key(vec!["net", "ipv4", "ip_forward"])];
    if ipv6 {
        keys.push(Key(vec!["net", "ipv6", "conf", "all", "forwarding"]));
    }
    keys.iter()
        .map(|key| {
            let name = key.dotted();
            match sys.read(key) {
                Ok(v) if v == "1" => Check::pass("ip-forward", &name, "1"),
                Ok(v) => Check::fail(
                    "ip-forward",
                    &name,
                    &format!("{v}: the node does not forward between its pods and the tunnel"),
                    &format!("sysctl -w {name}=1"),
                ),
                Err(e) => Check::warn("ip-forward", &name, &e),
            }
        })
        .collect()
}

/// An interface the tunnel's traffic arrives on, and packets to ask the kernel about: IPv4
/// (source, destination) pairs such traffic has.
pub struct Arrival {
    pub device: String,
    pub index: Option<u32>,
    pub packets: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Where the sources come from, for the report ("the remote networks").
    pub sources: &'static str,
}

/// What the kernel says about a packet arriving on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// The reverse-path filter refuses it (EXDEV).
    Refused,
    /// Another error: the lookup says nothing about the filter.
    Unknown(String),
}

/// The reverse-path filter on each device of `arrivals`. Its mode is the larger of `all` and
/// the device's own value (0 off, 1 strict, 2 loose). Strict mode drops a packet whose source
/// is not routed back through the device it came in on; rather than guess from the routes,
/// the kernel is asked about packets the tunnel carries (`verdict`), so policy rules count too.
pub fn rp_filter(
    sys: &Sysctls,
    arrivals: &[Arrival],
    verdict: impl Fn(u32, Ipv4Addr, Ipv4Addr) -> Verdict,
) -> Vec<Check> {
    let all_key = Key(vec!["net", "ipv4", "conf", "all", "rp_filter"]);
    let all = sys.read(&all_key);
    let mut out = Vec::new();
    for a in arrivals {
        let key = Key(vec!["net", "ipv4", "conf", &a.device, "rp_filter"]);
        let subject = format!("{} and {}", all_key.dotted(), key.dotted());
        let fix = format!("sysctl -w {}=2", key.dotted());
        let (all, own) = match (&all, &sys.read(&key)) {
            (Ok(all), Ok(own)) => (all.clone(), own.clone()),
            (Err(e), _) | (_, Err(e)) => {
                out.push(Check::warn("rp-filter", &subject, e));
                continue;
            }
        };
        let mode = all.parse::<u8>().unwrap_or(0).max(own.parse().unwrap_or(0));
        let values = format!("{all} and {own}");
        if mode != 1 {
            let name = if mode == 2 { "loose" } else { "off" };
            out.push(Check::pass(
                "rp-filter",
                &subject,
                &format!("{values}: {name} on {}", a.device),
            ));
            continue;
        }
        // Strict: ask the kernel about each packet.
        let Some(index) = a.index else {
            out.push(Check::warn(
                "rp-filter",
                &subject,
                &format!("{values}: strict on {}, which does not exist", a.device),
            ));
            continue;
        };
        let mut refused = Vec::new();
        let mut unknown = Vec::new();
        for &(src, dst) in &a.packets {
            match verdict(index, src, dst) {
                Verdict::Accepted => {}
                Verdict::Refused => refused.push(format!("{src} → {dst}")),
                Verdict::Unknown(e) => unknown.push(format!("{src} → {dst}: {e}")),
            }
        }
        let strict = format!("{values}: strict on {}", a.device);
        out.push(if !refused.is_empty() {
            Check::fail(
                "rp-filter",
                &subject,
                &format!(
                    "{strict}, and the kernel drops packets from {} arriving there ({}): their sources are routed out another way",
                    a.sources,
                    refused.join(", ")
                ),
                &fix,
            )
        } else if !unknown.is_empty() || a.packets.is_empty() {
            let why = if unknown.is_empty() {
                format!("no packets from {} to ask the kernel about", a.sources)
            } else {
                unknown.join("; ")
            };
            Check::warn(
                "rp-filter",
                &subject,
                &format!("{strict}; cannot tell whether it drops packets from {} ({why})", a.sources),
            )
            .with_fix(&fix)
        } else {
            Check::pass(
                "rp-filter",
                &subject,
                &format!(
                    "{strict}, and the kernel accepts packets from {} there (their sources are routed back through it)",
                    a.sources
                ),
            )
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::Status;

    /// A scratch `/proc/sys` with `values` (path relative to it, value).
    fn scratch(name: &str, values: &[(&str, &str)]) -> (PathBuf, Sysctls) {
        let dir = std::env::temp_dir().join(format!(
            "liqonet-diagnose-sysctl-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, v) in values {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        }
        (dir.clone(), Sysctls::new(dir))
    }

    #[test]
    fn forwarding_off_fails_with_the_sysctl_that_fixes_it() {
        let (dir, sys) = scratch(
            "fwd",
            &[
                ("net/ipv4/ip_forward", "0"),
                ("net/ipv6/conf/all/forwarding", "1"),
            ],
        );
        let checks = forwarding(&sys, true);
        assert_eq!(checks[0].status, Status::Fail);
        assert_eq!(
            checks[0].fix.as_deref(),
            Some("sysctl -w net.ipv4.ip_forward=1")
        );
        assert_eq!(checks[1].status, Status::Pass);
        assert_eq!(checks[1].subject, "net.ipv6.conf.all.forwarding");
        // Without IPv6 networks only IPv4 counts.
        assert_eq!(forwarding(&sys, false).len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn arrival(device: &str) -> Arrival {
        Arrival {
            device: device.into(),
            index: Some(7),
            packets: vec![(Ipv4Addr::new(10, 245, 0, 1), Ipv4Addr::new(10, 244, 0, 1))],
            sources: "the remote networks",
        }
    }

    #[test]
    fn strict_mode_is_the_larger_value_and_the_kernel_decides() {
        let (dir, sys) = scratch(
            "rp",
            &[
                ("net/ipv4/conf/all/rp_filter", "1"),
                ("net/ipv4/conf/liqo0/rp_filter", "0"),
                ("net/ipv4/conf/liqo.vxlan/rp_filter", "2"),
            ],
        );
        let arrivals = [arrival("liqo0"), arrival("liqo.vxlan")];
        // all=1, liqo0=0: strict on liqo0, loose on liqo.vxlan; the kernel accepts.
        let checks = rp_filter(&sys, &arrivals, |_, _, _| Verdict::Accepted);
        assert_eq!(checks[0].status, Status::Pass, "{checks:?}");
        assert!(checks[0].found.contains("strict on liqo0"), "{checks:?}");
        assert!(checks[1].found.contains("loose"), "{checks:?}");
        // The kernel refuses: a failure, fixed by loose mode on the device (a dot in a device
        // name is a slash to sysctl).
        let checks = rp_filter(&sys, &arrivals, |_, _, _| Verdict::Refused);
        assert_eq!(checks[0].status, Status::Fail);
        assert_eq!(
            checks[0].fix.as_deref(),
            Some("sysctl -w net.ipv4.conf.liqo0.rp_filter=2")
        );
        assert_eq!(checks[1].status, Status::Pass);
        std::fs::write(dir.join("net/ipv4/conf/liqo.vxlan/rp_filter"), "1\n").unwrap();
        let checks = rp_filter(&sys, &arrivals, |_, _, _| Verdict::Refused);
        assert_eq!(
            checks[1].fix.as_deref(),
            Some("sysctl -w net.ipv4.conf.liqo/vxlan.rp_filter=2")
        );
        // A lookup that fails for another reason cannot tell.
        let checks = rp_filter(&sys, &arrivals, |_, _, _| {
            Verdict::Unknown("Network is down".into())
        });
        assert_eq!(checks[0].status, Status::Warn);
        // all=0: off, nothing to ask.
        std::fs::write(dir.join("net/ipv4/conf/all/rp_filter"), "0\n").unwrap();
        let checks = rp_filter(&sys, &arrivals[..1], |_, _, _| Verdict::Refused);
        assert_eq!(checks[0].status, Status::Pass);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
