//! The UDP listen port: something is bound to it (`/proc/net/udp` and `udp6` of this
//! namespace), and the node's nftables input rules let datagrams to it in.

use std::path::Path;
use std::process::Command;

use super::nftables::{self, Family, Verdict};
use super::Check;

/// The local addresses bound to UDP `port` in a `/proc/net/udp` or `udp6` table.
pub fn bound(table: &str, port: u16) -> Vec<String> {
    let want = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|local| local.rsplit_once(':'))
        .filter(|(_, p)| p.eq_ignore_ascii_case(&want))
        .map(|(addr, _)| address(addr))
        .collect()
}

/// A `/proc/net/udp` address (hex, in the kernel's byte order) as text: `0100007F` →
/// `127.0.0.1`; the unspecified ones as `0.0.0.0` and `[::]`.
fn address(hex: &str) -> String {
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    // Each 32-bit word is in host (little-endian) order.
    let mut ordered = Vec::with_capacity(bytes.len());
    for word in bytes.chunks(4) {
        ordered.extend(word.iter().rev());
    }
    match ordered.len() {
        4 => std::net::Ipv4Addr::new(ordered[0], ordered[1], ordered[2], ordered[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&ordered);
            format!("[{}]", std::net::Ipv6Addr::from(a))
        }
        _ => hex.to_string(),
    }
}

/// The `listen-port` line: is anything bound to UDP `port` in `proc_net` (`/proc/net`)?
pub fn listening(proc_net: &Path, port: u16, start: &str) -> Check {
    let subject = format!("UDP port {port}");
    let mut addrs = Vec::new();
    for table in ["udp", "udp6"] {
        match std::fs::read_to_string(proc_net.join(table)) {
            Ok(text) => addrs.extend(bound(&text, port)),
            // A node without IPv6 has no udp6 table.
            Err(e) if table == "udp6" && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Check::warn(
                    "listen-port",
                    &subject,
                    &format!("cannot read {}: {e}", proc_net.join(table).display()),
                )
            }
        }
    }
    if addrs.is_empty() {
        Check::fail(
            "listen-port",
            &subject,
            "nothing is bound to it: the gateway is not running, or listens on another port",
            start,
        )
    } else {
        Check::pass(
            "listen-port",
            &subject,
            &format!("bound on {}", addrs.join(", ")),
        )
    }
}

/// The `firewall` lines: what each nftables input chain does to a datagram to `port` from an
/// unknown source, for the underlay `families` in use.
pub fn firewall(port: u16, families: &[Family]) -> Vec<Check> {
    let subject = format!("nftables input chains, UDP port {port}");
    let out = match Command::new("nft").args(["-j", "list", "ruleset"]).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![Check::warn(
                "firewall",
                &subject,
                "skipped: nft is not installed (rules of iptables-legacy are not checked either)",
            )]
        }
        Err(e) => {
            return vec![Check::warn(
                "firewall",
                &subject,
                &format!("cannot run nft: {e}"),
            )]
        }
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return vec![Check::warn(
            "firewall",
            &subject,
            &format!("skipped: nft -j list ruleset failed: {}", err.trim()),
        )];
    }
    judge(&String::from_utf8_lossy(&out.stdout), port, families)
}

/// The `firewall` lines for ruleset `json` (`nft -j list ruleset`).
pub fn judge(json: &str, port: u16, families: &[Family]) -> Vec<Check> {
    let subject = format!("nftables input chains, UDP port {port}");
    let chains = match nftables::evaluate(json, port, families) {
        Ok(c) => c,
        Err(e) => return vec![Check::warn("firewall", &subject, &e)],
    };
    if chains.is_empty() {
        return vec![Check::pass(
            "firewall",
            &subject,
            "no chain on the input hook",
        )];
    }
    chains
        .iter()
        .map(|c| {
            let subject = format!("nftables {} {} {}", c.family, c.table, c.chain);
            let accept = format!(
                "nft insert rule {} {} {} udp dport {port} accept",
                c.family, c.table, c.chain
            );
            let packet = c.packet;
            match &c.verdict {
                Verdict::Accepted { by: Some(at) } => Check::pass(
                    "firewall",
                    &subject,
                    &format!("accepts UDP port {port} (rule handle {})", at.handle),
                ),
                Verdict::Accepted { by: None } => Check::pass(
                    "firewall",
                    &subject,
                    &format!("no rule drops UDP port {port}; policy accept"),
                ),
                Verdict::Dropped { at } => Check::fail(
                    "firewall",
                    &subject,
                    &format!(
                        "rule {at} drops {} datagrams to UDP port {port}: peers cannot reach the gateway",
                        packet.name()
                    ),
                    &format!(
                        "nft delete rule {} {} {} handle {}",
                        at.family, at.table, at.chain, at.handle
                    ),
                ),
                Verdict::PolicyDrop => Check::fail(
                    "firewall",
                    &subject,
                    &format!(
                        "policy drop, and no rule surely accepts {} datagrams to UDP port {port}",
                        packet.name()
                    ),
                    &accept,
                ),
                Verdict::MayDrop { at } => Check::warn(
                    "firewall",
                    &subject,
                    &format!(
                        "may drop {} datagrams to UDP port {port}: rule {} drops by what the peers' addresses, interface or state decide",
                        packet.name(),
                        at.iter().map(ToString::to_string).collect::<Vec<_>>().join(", rule ")
                    ),
                )
                .with_fix(&accept),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::Status;

    /// `/proc/net/udp` and `udp6` with the gateway on 51840 (0xCA80).
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n  1: 00000000:CA80 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1234 2 0000000000000000 0\n  2: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1235 2 0000000000000000 0\n";
    const UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n  3: 00000000000000000000000000000000:CA80 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 0\n  4: 000080FE00000000FF0C4702FE8C9A0B:0222 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 98 2 0000000000000000 0\n";

    #[test]
    fn proc_net_udp_names_the_bound_addresses() {
        assert_eq!(bound(UDP, 51840), ["0.0.0.0"]);
        assert_eq!(bound(UDP, 53), ["127.0.0.1"]);
        assert_eq!(bound(UDP6, 51840), ["[::]"]);
        assert_eq!(bound(UDP6, 546), ["[fe80::247:cff:b9a:8cfe]"]);
        assert!(bound(UDP, 51841).is_empty());
    }

    #[test]
    fn the_listen_port_check_reads_both_tables() {
        let dir = std::env::temp_dir().join(format!("liqonet-diagnose-udp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("udp"), UDP).unwrap();
        std::fs::write(dir.join("udp6"), UDP6).unwrap();
        let c = listening(&dir, 51840, "start it");
        assert_eq!(c.status, Status::Pass);
        assert_eq!(c.found, "bound on 0.0.0.0, [::]");
        let c = listening(&dir, 51841, "start it");
        assert_eq!(
            (c.status, c.fix.as_deref()),
            (Status::Fail, Some("start it"))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn firewall_lines_name_the_rule_and_the_fix() {
        let c = judge(
            include_str!("testdata/simple_drop.json"),
            51840,
            &[Family::V4],
        );
        assert_eq!(c[0].status, Status::Fail);
        assert_eq!(
            c[0].fix.as_deref(),
            Some("nft delete rule inet diagtest input handle 2")
        );
        let c = judge(
            include_str!("testdata/policy_drop.json"),
            51840,
            &[Family::V4],
        );
        assert_eq!(
            c[0].fix.as_deref(),
            Some("nft insert rule ip fw input udp dport 51840 accept")
        );
        let c = judge(include_str!("testdata/may_drop.json"), 51840, &[Family::V4]);
        assert_eq!(c[0].status, Status::Warn);
        assert!(c[0].found.contains("rule inet fw input handle 3"), "{c:?}");
        let c = judge(r#"{"nftables": []}"#, 51840, &[Family::V4]);
        assert_eq!(c[0].status, Status::Pass);
    }
}
