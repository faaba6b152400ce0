//! The gateway's Prometheus metrics: [`totals`] keeps what the data path counted so that no
//! counter goes back; [`encode`] writes them through `prometheus-client` (OpenMetrics text, every
//! family with HELP and TYPE), on the HTTP thread, from a copy the loop published.

pub mod totals;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::engine::{DropReason, HANDSHAKE_TYPES, RTT_BUCKETS};
pub use totals::{LoopCounters, Monotonic, PeerTotals, Sample, Totals};

type Result = std::result::Result<(), std::fmt::Error>;

/// Writes every family of `t` into `encoder`.
pub fn encode(t: &Totals, encoder: &mut DescriptorEncoder<'_>) -> Result {
    encode_peers(t, encoder)?;
    counter_by(
        encoder,
        "liqonet_dropped_packets",
        "Packets dropped by the gateway, by reason.",
        "reason",
        DropReason::ALL.iter().map(|r| r.name()).zip(&t.drops),
    )?;
    counter_by(
        encoder,
        "liqonet_handshake_messages_sent",
        "Handshake messages sent, by type.",
        "type",
        HANDSHAKE_TYPES.iter().copied().zip(&t.handshakes_sent),
    )?;
    for (name, help, value) in [
        (
            "liqonet_cookie_replies_received",
            "Cookie replies accepted from peers under load.",
            &t.cookies_received,
        ),
        (
            "liqonet_packets_queued_for_handshake",
            "Packets held while a handshake is pending.",
            &t.queued_for_handshake,
        ),
        (
            "liqonet_tun_read_dropped",
            "TUN reads that could not be split into packets.",
            &t.tun_read_dropped,
        ),
        (
            "liqonet_underlay_send_errors",
            "Datagrams the underlay sockets refused.",
            &t.underlay_send_errors,
        ),
        (
            "liqonet_tun_write_errors",
            "Packets the TUN device refused.",
            &t.tun_write_errors,
        ),
        (
            "liqonet_tun_queue_dropped",
            "Packets the kernel dropped at the TUN device before the gateway read them (mostly a full queue).",
            &t.tun_queue_dropped,
        ),
        (
            "liqonet_underlay_receive_buffer_dropped",
            "Datagrams the kernel dropped at the underlay sockets before the gateway read them (mostly full receive buffers).",
            &t.socket_buffer_dropped,
        ),
    ] {
        let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value.get()).encode(m)?;
    }
    let m = encoder.encode_descriptor(
        "liqonet_handshake_under_load",
        "1 while handshake messages arrive too fast to answer without a cookie.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(i64::from(t.under_load)).encode(m)?;
    let m = encoder.encode_descriptor(
        "liqonet_data_path_realtime_priority",
        "The data-path thread's real-time (SCHED_FIFO) priority while it is busy; 0 when it always runs at normal priority.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(i64::from(t.realtime_priority)).encode(m)
}

/// One counter family with one label.
fn counter_by<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (&'a str, &'a Monotonic)>,
) -> Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        ConstCounter::new(n.get()).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

type PeerValue = fn(&PeerTotals) -> Option<f64>;

fn encode_peers(t: &Totals, encoder: &mut DescriptorEncoder<'_>) -> Result {
    let mut family = encoder.encode_descriptor(
        "liqonet_peer_up",
        "1 while the peer has a session and answers its probes.",
        None,
        MetricType::Gauge,
    )?;
    for (peer, p) in &t.peers {
        ConstGauge::new(i64::from(p.up))
            .encode(family.encode_family(&[("peer", peer.as_str())])?)?;
    }
    let gauges: [(&str, &str, Option<Unit>, PeerValue); 3] = [
        (
            "liqonet_peer_last_handshake_timestamp",
            "Unix time of the last completed handshake (while a session lasts).",
            Some(Unit::Seconds),
            |p| p.last_handshake,
        ),
        (
            "liqonet_peer_rtt",
            "Round trip of the last answered in-tunnel probe.",
            Some(Unit::Seconds),
            |p| p.rtt_last,
        ),
        (
            "liqonet_peer_rtt_average",
            "Average round trip over the last 60 probes.",
            Some(Unit::Seconds),
            |p| p.rtt_average,
        ),
    ];
    for (name, help, unit, value) in gauges {
        let mut family = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
        for (peer, p) in &t.peers {
            if let Some(v) = value(p) {
                ConstGauge::new(v).encode(family.encode_family(&[("peer", peer.as_str())])?)?;
            }
        }
    }
    type PeerCount = fn(&PeerTotals) -> &Monotonic;
    let counters: [(&str, &str, Option<Unit>, PeerCount); 4] = [
        (
            "liqonet_peer_rx",
            "Bytes received from the peer through the tunnel.",
            Some(Unit::Bytes),
            |p| &p.rx_bytes,
        ),
        (
            "liqonet_peer_tx",
            "Bytes sent to the peer through the tunnel.",
            Some(Unit::Bytes),
            |p| &p.tx_bytes,
        ),
        (
            "liqonet_peer_probes_sent",
            "In-tunnel probes sent to the peer.",
            None,
            |p| &p.probes_sent,
        ),
        (
            "liqonet_peer_probes_lost",
            "In-tunnel probes the peer did not answer in time.",
            None,
            |p| &p.probes_lost,
        ),
    ];
    for (name, help, unit, value) in counters {
        let mut family =
            encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
        for (peer, p) in &t.peers {
            ConstCounter::new(value(p).get())
                .encode(family.encode_family(&[("peer", peer.as_str())])?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "liqonet_peer_latency",
        "Round trips of the in-tunnel probes the peer answered.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for (peer, p) in &t.peers {
        let mut buckets = [(0f64, 0u64); RTT_BUCKETS.len() + 1];
        for (i, (bound, n)) in buckets.iter_mut().enumerate() {
            // The encoder writes f64::MAX as +Inf.
            *bound = RTT_BUCKETS.get(i).copied().unwrap_or(f64::MAX);
            *n = p.rtt_buckets[i].get();
        }
        let count = buckets.iter().map(|b| b.1).sum();
        family
            .encode_family(&[("peer", peer.as_str())])?
            .encode_histogram::<NoLabelSet>(p.rtt_sum(), count, &buckets, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Counters, Latency, PeerStats, RttHistogram};
    use prometheus_client::collector::Collector;
    use prometheus_client::registry::Registry;
    use std::time::{Duration, SystemTime};

    #[derive(Debug)]
    struct Fixed(Totals);

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result {
            super::encode(&self.0, &mut encoder)
        }
    }

    #[test]
    fn families_are_whole_typed_and_histograms_cumulative() {
        let mut hist = RttHistogram::default();
        for ms in [1, 3, 3, 700] {
            hist.observe(Duration::from_millis(ms));
        }
        let peer = PeerStats {
            name: "foreign".into(),
            public_key: liqonet_proto::Key([1; 32]),
            persistent_keepalive: None,
            networks: Vec::new(),
            last_handshake_age: Some(Duration::from_secs(2)),
            endpoint: None,
            rx_bytes: 2500,
            tx_bytes: 100,
            up: true,
            latency: Latency::default(),
            rtt_histogram: hist,
            incarnation: 7,
        };
        let mut counters = Counters::default();
        counters.count(DropReason::SourceNotAllowed);
        let mut totals = Totals::default();
        totals.absorb(&Sample {
            engine: 1,
            counters: &counters,
            under_load: false,
            io: LoopCounters::default(),
            peers: std::slice::from_ref(&peer),
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(100),
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(totals)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE liqonet_peer_up gauge\n",
            "liqonet_peer_up{peer=\"foreign\"} 1\n",
            "# TYPE liqonet_peer_rx_bytes counter\n# UNIT liqonet_peer_rx_bytes bytes\n",
            "liqonet_peer_rx_bytes_total{peer=\"foreign\"} 2500\n",
            "liqonet_peer_last_handshake_timestamp_seconds{peer=\"foreign\"} 98.0\n",
            "# TYPE liqonet_peer_latency_seconds histogram\n",
            "liqonet_peer_latency_seconds_count{peer=\"foreign\"} 4\n",
            "liqonet_peer_latency_seconds_bucket{le=\"0.001\",peer=\"foreign\"} 1\n",
            "liqonet_peer_latency_seconds_bucket{le=\"0.005\",peer=\"foreign\"} 3\n",
            "liqonet_peer_latency_seconds_bucket{le=\"+Inf\",peer=\"foreign\"} 4\n",
            "liqonet_dropped_packets_total{reason=\"source_not_allowed\"} 1\n",
            "liqonet_handshake_under_load 0\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        // Each family once: no HELP line repeats.
        let helps: Vec<&str> = text.lines().filter(|l| l.starts_with("# HELP")).collect();
        let mut unique = helps.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(helps.len(), unique.len(), "{text}");
    }
}
