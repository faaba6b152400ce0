//! The engine's cost per packet and per 64 KB of 1420-byte packets: encapsulation (TUN →
//! network) and decapsulation (network → TUN), with 1 and 100 peers, with and without address
//! remapping; and the remapping rewrite alone, to set against the encryption.

use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use liqonet_benches::{connected_pair, home_addr, packet, Capture};
use liqonet_gateway::engine::DropReason;
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

criterion_group!(benches, encapsulate, decapsulate, remap);
criterion_main!(benches);
