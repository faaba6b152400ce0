//! The engine's cost per packet and per 64 KB of 1420-byte packets: encapsulation (TUN →
//! network) and decapsulation (network → TUN), with 1 and 100 peers, with and without address
//! remapping; the remapping rewrite alone, to set against the encryption; and a round of
//! in-tunnel probes with 100 peers.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use liqonet_benches::{
    connected_pair, connected_pair_with, exchange, foreign_addr, home_addr, hub, packet, Capture,
    Routed,
};
use liqonet_gateway::engine::{DropReason, Engine, Probing};
use liqonet_gateway::wire::remap::{rewrite, Field};
use liqonet_proto::Cidr;

const MTU_PACKET: usize = 1420;
const BATCH: usize = 65536 / MTU_PACKET;

fn encapsulate(c: &mut Criterion) {
    let mut g = c.benchmark_group("encapsulate");
    for (peers, networks, remapped) in [
        (1, 1, false),
        (100, 1, false),
        (1, 1, true),
        (100, 10, true),
    ] {
        let (mut home, _) = connected_pair_with(peers - 1, networks, remapped);
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
        let name = format!(
            "{peers}-peers{}{}",
            if networks > 1 {
                format!("-{}-networks", peers * networks)
            } else {
                String::new()
            },
            if remapped { "-remapped" } else { "" }
        );
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

/// The scale target in one line: per-packet cost (encapsulate + remap, decapsulate + remap) on a
/// gateway with 100 peers and 1 000 remapped networks against 1 peer and 1 network, timed in
/// alternating rounds so drift hits both alike; medians of 7.
fn many_peers(_: &mut Criterion) {
    const PACKETS: usize = 20_000;
    let mut small = connected_pair_with(0, 1, true);
    let mut large = connected_pair_with(99, 10, true);
    let template = packet(MTU_PACKET, [10, 245, 0, 10]);
    // Foreign's pods send to home's pods, which foreign knows as 10.246.0.0/16.
    let reply = {
        let mut p = packet(MTU_PACKET, [10, 246, 0, 10]);
        p[12..16].copy_from_slice(&[10, 244, 0, 20]);
        p
    };
    let encapsulate = |home: &mut Engine| {
        let mut pkt = template.clone();
        let mut out = Capture::default();
        let t = Instant::now();
        for _ in 0..PACKETS {
            pkt.copy_from_slice(&template);
            home.from_tun(&mut pkt, &mut out);
        }
        assert_eq!(out.sent, PACKETS);
        t.elapsed() / PACKETS as u32
    };
    let decapsulate = |(home, foreign): &mut (Engine, Engine)| {
        let mut cap = Capture {
            keep: true,
            ..Default::default()
        };
        for _ in 0..PACKETS {
            foreign.from_tun(&mut reply.clone(), &mut cap);
        }
        let mut out = Capture::default();
        let t = Instant::now();
        for d in &cap.datagrams {
            home.from_network(foreign_addr(), d, &mut out);
        }
        assert_eq!(out.delivered, PACKETS, "{:?}", home.counters());
        t.elapsed() / PACKETS as u32
    };
    let (mut enc, mut dec) = (vec![], vec![]);
    for _ in 0..7 {
        enc.push((encapsulate(&mut small.0), encapsulate(&mut large.0)));
        dec.push((decapsulate(&mut small), decapsulate(&mut large)));
    }
    let median = |v: &mut Vec<(Duration, Duration)>| {
        let mut a: Vec<Duration> = v.iter().map(|x| x.0).collect();
        let mut b: Vec<Duration> = v.iter().map(|x| x.1).collect();
        a.sort();
        b.sort();
        (a[a.len() / 2], b[b.len() / 2])
    };
    for (what, v) in [
        ("encapsulate + remap", &mut enc),
        ("decapsulate + remap", &mut dec),
    ] {
        let (one, many) = median(v);
        let change = (many.as_secs_f64() / one.as_secs_f64() - 1.0) * 100.0;
        println!(
            "{what}, {MTU_PACKET} B: 1 peer / 1 network {one:.2?}, 100 peers / 1 000 networks {many:.2?} a packet ({change:+.1} %; target within 5 %)"
        );
    }
}

criterion_group!(benches, encapsulate, decapsulate, remap, probe, many_peers);
criterion_main!(benches);
