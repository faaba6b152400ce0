//! The engine's cost per packet and per 64 KB of 1420-byte packets: encapsulation (TUN →
//! network) and decapsulation (network → TUN), with 1 and 100 peers, with and without address
//! remapping; the remapping rewrite alone, to set against the encryption; and a round of
//! in-tunnel probes with 100 peers.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use liqonet_benches::{connected_pair, exchange, home_addr, hub, packet, Capture, Routed};
use liqonet_gateway::engine::{DropReason, Engine, Probing};
use liqonet_gateway::wire::remap::{rewrite, Field};
use liqonet_proto::Cidr;

const MTU_PACKET: usize = 1420;
const BATCH: usize = 65536 / MTU_PACKET;

fn encapsulate(c: &mut Criterion) {
    let mut g = c.benchmark_group("encapsulate");
    for (peers, remapped) in [(1, false), (100, false), (1, true)] {
        let (mut home, _) = connected_pair(peers - 1, remapped);
        // The engine rewrites packets in place: each one starts from a fresh copy.
        let template = packet(MTU_PACKET, [10, 245, 0, 10]);
        let mut pkt = template.clone();
        let mut out = Capture::default();
        let mut send = |out: &mut Capture| {
            pkt.copy_from_slice(&template);
            home.from_tun(&mut pkt, out);
        };
        // Once outside the measurements, so the check below holds when a filter skips them.
        send(&mut out);
        let name = format!("{peers}-peers{}", if remapped { "-remapped" } else { "" });
        g.throughput(Throughput::Bytes(MTU_PACKET as u64));
        g.bench_function(format!("packet/{name}"), |b| b.iter(|| send(&mut out)));
        g.throughput(Throughput::Bytes((MTU_PACKET * BATCH) as u64));
        g.bench_function(format!("64KB/{name}"), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    send(&mut out)
                }
            })
        });
        assert!(out.sent > 0 && home.counters().get(DropReason::NoRoute) == 0);
    }
    g.finish();
}

fn decapsulate(c: &mut Criterion) {
    let mut g = c.benchmark_group("decapsulate");
    for remapped in [false, true] {
        let (mut home, mut foreign) = connected_pair(0, remapped);
        let template = packet(MTU_PACKET, [10, 245, 0, 10]);
        g.throughput(Throughput::Bytes((MTU_PACKET * BATCH) as u64));
        let name = if remapped { "64KB/remapped" } else { "64KB" };
        g.bench_function(name, |b| {
            // Fresh datagrams each round: the replay window rejects a datagram seen before.
            b.iter_batched(
                || {
                    let mut cap = Capture {
                        keep: true,
                        ..Default::default()
                    };
                    for _ in 0..BATCH {
                        home.from_tun(&mut template.clone(), &mut cap);
                    }
                    cap.datagrams
                },
                |datagrams| {
                    let mut out = Capture::default();
                    for d in &datagrams {
                        foreign.from_network(home_addr(), d, &mut out);
                    }
                    assert_eq!(out.delivered, BATCH);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn remap(c: &mut Criterion) {
    let mut g = c.benchmark_group("remap");
    let (from, to): (Cidr, Cidr) = (
        "10.245.0.0/16".parse().unwrap(),
        "10.244.0.0/16".parse().unwrap(),
    );
    let (back_from, back_to) = (to, from);
    let mut pkt = packet(MTU_PACKET, [10, 245, 0, 10]);
    // Alternate directions so every call really rewrites.
    let mut flip = false;
    let mut step = |p: &mut [u8]| {
        flip = !flip;
        let (f, t) = if flip {
            (&from, &to)
        } else {
            (&back_from, &back_to)
        };
        let _ = rewrite(p, Field::Dst, &|a: IpAddr| f.swap_prefix(a, t));
    };
    g.throughput(Throughput::Bytes(MTU_PACKET as u64));
    g.bench_function("packet", |b| b.iter(|| step(&mut pkt)));
    g.throughput(Throughput::Bytes((MTU_PACKET * BATCH) as u64));
    g.bench_function("64KB", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                step(&mut pkt)
            }
        })
    });
    g.finish();
}

/// One round of in-tunnel probes with 100 peers: home's tick (timers of every peer, a probe to
/// each), the far engines' answers, and home reading the replies. Each gateway also answers its
/// peers' probes, which costs what the far side's part costs here, so one round is about what a
/// gateway spends on probing each interval (1 s by default).
fn probe(c: &mut Criterion) {
    const PEERS: usize = 100;
    let (mut home, mut spokes) = hub(PEERS);
    for s in &mut spokes {
        s.set_probing(Probing {
            enabled: false,
            ..Probing::default()
        });
    }
    // Every tick probes every peer.
    home.set_probing(Probing {
        interval: Duration::ZERO,
        ..Probing::default()
    });
    let mut round = |home: &mut Engine| {
        let mut out = Routed::default();
        home.tick(&mut out);
        exchange(home, &mut spokes, out)
    };
    let mut g = c.benchmark_group("probe");
    g.bench_function(format!("round/{PEERS}-peers"), |b| {
        b.iter(|| round(&mut home))
    });
    g.finish();
    let rounds = 200;
    let t = Instant::now();
    let mut carried = 0;
    for _ in 0..rounds {
        carried += round(&mut home);
    }
    let per_round = t.elapsed() / rounds;
    let latency = home.latency("p0").unwrap_or_default();
    assert!(carried >= PEERS * rounds as usize && latency.sent > 0 && latency.last.is_some());
    println!(
        "probing {PEERS} peers once a second: {:.0} µs a second, {:.3} % of a core",
        per_round.as_secs_f64() * 1e6,
        per_round.as_secs_f64() * 100.0
    );
}

criterion_group!(benches, encapsulate, decapsulate, remap, probe);
criterion_main!(benches);
