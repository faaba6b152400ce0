//! The tunnel's MTU against the underlay path to each peer: a full-size tunnel packet plus
//! WireGuard's encapsulation (outer IP header, UDP, WireGuard header and tag) must fit the
//! MTU of the device the kernel routes the peer's endpoint through, and the route's `mtu`
//! (or a path MTU the kernel learned) when it has one.

use std::net::SocketAddr;

use super::netlink::{LookupError, Route};
use super::Check;

/// Encapsulation: IPv4 20 + UDP 8 + WireGuard 32 bytes; IPv6 40 + 8 + 32.
pub fn overhead(endpoint: &SocketAddr) -> u32 {
    if endpoint.is_ipv4() {
        60
    } else {
        80
    }
}

/// The `underlay-mtu` lines, one per peer endpoint. `route_to` is the kernel's lookup,
/// `device_mtu` reads a device's MTU by index, `set_mtu(n)` says how to set the tunnel MTU.
pub fn underlay(
    endpoints: &[(String, SocketAddr)],
    tun_mtu: u16,
    route_to: impl Fn(std::net::IpAddr) -> Result<Route, LookupError>,
    device_mtu: impl Fn(u32) -> Option<(String, u32)>,
    set_mtu: impl Fn(u32) -> String,
) -> Vec<Check> {
    if endpoints.is_empty() {
        return vec![Check::warn(
            "underlay-mtu",
            "path to each peer",
            "not checked: no peer endpoint known (a peer that only answers shows its own once it has connected)",
        )];
    }
    endpoints
        .iter()
        .map(|(peer, ep)| {
            let subject = format!("path to peer {peer} at {ep}");
            let route = match route_to(ep.ip()) {
                Ok(r) => r,
                Err(e) => {
                    return Check::fail(
                        "underlay-mtu",
                        &subject,
                        &format!("no route to it: {e}"),
                        &format!("ip route add {} via <next hop>", ep.ip()),
                    )
                }
            };
            let Some((dev, dev_mtu)) = route.oif.and_then(&device_mtu) else {
                return Check::warn("underlay-mtu", &subject, "cannot tell the outgoing device's MTU");
            };
            let (path, why) = match route.mtu {
                Some(m) if m < dev_mtu => (m, format!("route MTU {m}, {dev} MTU {dev_mtu}")),
                _ => (dev_mtu, format!("{dev} MTU {dev_mtu}")),
            };
            let over = overhead(ep);
            let need = u32::from(tun_mtu) + over;
            if need <= path {
                Check::pass(
                    "underlay-mtu",
                    &subject,
                    &format!("{why} ≥ tunnel MTU {tun_mtu} + {over}"),
                )
            } else {
                Check::fail(
                    "underlay-mtu",
                    &subject,
                    &format!(
                        "{why} < tunnel MTU {tun_mtu} + {over}: full-size tunnel packets are fragmented or dropped"
                    ),
                    &set_mtu(path.saturating_sub(over)),
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::Status;

    fn route(mtu: Option<u32>) -> Route {
        Route {
            dst: None,
            oif: Some(3),
            gateway: None,
            mtu,
            table: 254,
            protocol: 2,
        }
    }

    fn set(n: u32) -> String {
        format!("set mtu: {n}")
    }

    #[test]
    fn the_tunnel_mtu_plus_encapsulation_must_fit_the_path() {
        let eps = [
            ("foreign".to_string(), "192.0.2.2:51840".parse().unwrap()),
            ("far".to_string(), "[2001:db8::2]:51840".parse().unwrap()),
        ];
        let dev = |_| Some(("eth0".to_string(), 1500));
        let c = underlay(&eps, 1440, |_| Ok(route(None)), dev, set);
        // 1440 + 60 fits 1500; 1440 + 80 does not.
        assert_eq!(c[0].status, Status::Pass, "{c:?}");
        assert_eq!(c[1].status, Status::Fail, "{c:?}");
        assert_eq!(c[1].fix.as_deref(), Some("set mtu: 1420"));
        // A route's MTU below the device's counts.
        let c = underlay(&eps[..1], 1420, |_| Ok(route(Some(1400))), dev, set);
        assert_eq!(c[0].status, Status::Fail);
        assert_eq!(c[0].fix.as_deref(), Some("set mtu: 1340"));
        assert!(c[0].found.contains("route MTU 1400"), "{c:?}");
        assert_eq!(
            underlay(&[], 1420, |_| Ok(route(None)), dev, set)[0].status,
            Status::Warn
        );
    }
}
