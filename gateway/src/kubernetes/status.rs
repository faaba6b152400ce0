//! What a TunnelEndpoint's status says, and when it is worth a write (pure).
//!
//! A change of phase, message, networks or gateway is written at once; traffic counters and the
//! handshake time alone at most once per status interval, so a busy tunnel does not turn into a
//! stream of API writes.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use liqonet_proto::crd::{GatewayStatus, LatencyStatus, Phase, TunnelEndpointStatus};

use super::plan::Outcome;
use crate::engine::PeerStats;

pub fn status_of(
    outcome: &Outcome,
    stats: Option<&PeerStats>,
    gateway: &GatewayStatus,
    now: Timestamp,
) -> TunnelEndpointStatus {
    let mut status = TunnelEndpointStatus {
        gateway: Some(gateway.clone()),
        ..TunnelEndpointStatus::default()
    };
    match outcome {
        Outcome::Invalid(message) => {
            status.phase = Some(Phase::Error);
            status.message = Some(message.clone());
        }
        Outcome::Applied(networks) => {
            status.networks = networks.clone();
            let handshake = stats.and_then(|s| s.last_handshake_age);
            // The phase follows the in-tunnel probes: a session whose peer stopped answering
            // them is not connected.
            let up = stats.is_some_and(|s| s.up);
            status.phase = Some(if up {
                Phase::Connected
            } else {
                Phase::Connecting
            });
            if handshake.is_some() && !up {
                status.message = Some("the peer does not answer in-tunnel probes".into());
            }
            status.latency = stats
                .filter(|s| s.latency.last.is_some())
                .map(|s| latency_status(&s.latency));
            status.last_handshake = handshake.and_then(|age| {
                let age = SignedDuration::from_secs(age.as_secs() as i64);
                now.checked_sub(age)
                    .ok()
                    .and_then(|t| t.round(k8s_openapi::jiff::Unit::Second).ok())
                    .map(|t| t.to_string())
            });
            if let Some(s) = stats {
                status.rx_bytes = s.rx_bytes;
                status.tx_bytes = s.tx_bytes;
            }
        }
    }
    status
}

fn latency_status(l: &crate::engine::Latency) -> LatencyStatus {
    let show = |d: Option<Duration>| {
        d.map_or_else(
            || "-".to_string(),
            |d| format!("{:.3}ms", d.as_secs_f64() * 1000.0),
        )
    };
    LatencyStatus {
        last: show(l.last),
        min: show(l.min),
        average: show(l.average),
        max: show(l.max),
        std_dev: show(l.std_dev),
        loss: format!("{:.1}%", l.loss * 100.0),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Write {
    Now,
    /// Only counters changed and the last write is recent: not before this long.
    After(Duration),
    No,
}

fn material(s: &TunnelEndpointStatus) -> TunnelEndpointStatus {
    TunnelEndpointStatus {
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
        latency: None,
        ..s.clone()
    }
}

pub fn when_to_write(
    current: Option<&TunnelEndpointStatus>,
    new: &TunnelEndpointStatus,
    last_write: Option<Instant>,
    interval: Duration,
    now: Instant,
) -> Write {
    let Some(current) = current else {
        return Write::Now;
    };
    if material(current) != material(new) {
        return Write::Now;
    }
    if current == new {
        return Write::No;
    }
    match last_write.map(|t| now.saturating_duration_since(t)) {
        Some(since) if since < interval => Write::After(interval - since),
        _ => Write::Now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liqonet_proto::crd::NetworkStatus;

    fn gw() -> GatewayStatus {
        GatewayStatus {
            node_name: "gw".into(),
            node_ip: "172.20.0.1".into(),
        }
    }

    fn applied() -> Outcome {
        Outcome::Applied(vec![NetworkStatus {
            cidr: "10.244.0.0/16".parse().unwrap(),
            remapped: "10.0.0.0/16".parse().unwrap(),
        }])
    }

    fn stats(age: Option<u64>, rx: u64) -> PeerStats {
        PeerStats {
            public_key: liqonet_proto::Key([0; 32]),
            persistent_keepalive: None,
            networks: Vec::new(),
            name: "a".into(),
            last_handshake_age: age.map(Duration::from_secs),
            endpoint: None,
            rx_bytes: rx,
            tx_bytes: 1,
            up: age.is_some(),
            latency: crate::engine::Latency::default(),
            rtt_histogram: Default::default(),
            incarnation: 1,
        }
    }

    #[test]
    fn phases_follow_the_session() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let s = status_of(&applied(), None, &gw(), now);
        assert_eq!(s.phase, Some(Phase::Connecting));
        let s = status_of(&applied(), Some(&stats(Some(30), 5)), &gw(), now);
        assert_eq!(s.phase, Some(Phase::Connected));
        assert_eq!(s.last_handshake.as_deref(), Some("2026-01-01T00:00:30Z"));
        assert_eq!((s.rx_bytes, s.tx_bytes), (5, 1));
        assert_eq!(s.networks.len(), 1);
        let s = status_of(&Outcome::Invalid("spec.x: bad".into()), None, &gw(), now);
        assert_eq!(s.phase, Some(Phase::Error));
        assert_eq!(s.message.as_deref(), Some("spec.x: bad"));
    }

    #[test]
    fn the_phase_follows_the_probes_and_latency_is_shown() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let mut silent = stats(Some(30), 5);
        silent.up = false;
        let s = status_of(&applied(), Some(&silent), &gw(), now);
        assert_eq!(s.phase, Some(Phase::Connecting));
        assert_eq!(
            s.message.as_deref(),
            Some("the peer does not answer in-tunnel probes")
        );
        let mut answering = stats(Some(30), 5);
        answering.latency = crate::engine::Latency {
            last: Some(Duration::from_micros(1500)),
            min: Some(Duration::from_micros(1000)),
            average: Some(Duration::from_micros(1250)),
            max: Some(Duration::from_micros(1500)),
            std_dev: Some(Duration::from_micros(250)),
            loss: 0.5,
            sent: 4,
            lost: 2,
        };
        let s = status_of(&applied(), Some(&answering), &gw(), now);
        assert_eq!(s.phase, Some(Phase::Connected));
        let l = s.latency.unwrap();
        assert_eq!(
            (
                l.last.as_str(),
                l.average.as_str(),
                l.std_dev.as_str(),
                l.loss.as_str()
            ),
            ("1.500ms", "1.250ms", "0.250ms", "50.0%")
        );
    }

    #[test]
    fn counters_alone_are_written_at_a_bounded_rate() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let t0 = Instant::now();
        let i = Duration::from_secs(10);
        let a = status_of(&applied(), Some(&stats(Some(1), 5)), &gw(), now);
        let b = status_of(&applied(), Some(&stats(Some(1), 9)), &gw(), now);
        let c = status_of(&applied(), None, &gw(), now);
        assert_eq!(when_to_write(None, &a, None, i, t0), Write::Now);
        assert_eq!(when_to_write(Some(&a), &a, Some(t0), i, t0), Write::No);
        assert_eq!(
            when_to_write(Some(&a), &b, Some(t0), i, t0 + Duration::from_secs(4)),
            Write::After(Duration::from_secs(6))
        );
        assert_eq!(
            when_to_write(Some(&a), &b, Some(t0), i, t0 + Duration::from_secs(10)),
            Write::Now
        );
        // The session went down: a phase change is written at once.
        assert_eq!(when_to_write(Some(&a), &c, Some(t0), i, t0), Write::Now);
    }
}
