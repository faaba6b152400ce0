//! The engine's cost per packet and per 64 KB of 1420-byte packets: encapsulation (TUN →
//! network) and decapsulation (network → TUN), with 1 and 100 peers.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use liqonet_benches::{connected_pair, home_addr, packet, Capture};

const MTU_PACKET: usize = 1420;
const BATCH: usize = 65536 / MTU_PACKET;

fn encapsulate(c: &mut Criterion) {
    let mut g = c.benchmark_group("encapsulate");
    for peers in [1, 100] {
        let (mut home, _) = connected_pair(peers - 1);
        let mut pkt = packet(MTU_PACKET, [10, 245, 0, 10]);
        let mut out = Capture::default();
        g.throughput(Throughput::Bytes(MTU_PACKET as u64));
        g.bench_function(format!("packet/{peers}-peers"), |b| {
            b.iter(|| home.from_tun(&mut pkt, &mut out))
        });
        g.throughput(Throughput::Bytes((MTU_PACKET * BATCH) as u64));
        g.bench_function(format!("64KB/{peers}-peers"), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    home.from_tun(&mut pkt, &mut out)
                }
            })
        });
    }
    g.finish();
}

fn decapsulate(c: &mut Criterion) {
    let mut g = c.benchmark_group("decapsulate");
    let (mut home, mut foreign) = connected_pair(0);
    let mut pkt = packet(MTU_PACKET, [10, 245, 0, 10]);
    g.throughput(Throughput::Bytes((MTU_PACKET * BATCH) as u64));
    g.bench_function("64KB", |b| {
        // Fresh datagrams each round: the replay window rejects a datagram seen before.
        b.iter_batched(
            || {
                let mut cap = Capture {
                    keep: true,
                    ..Default::default()
                };
                for _ in 0..BATCH {
                    home.from_tun(&mut pkt, &mut cap);
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
    g.finish();
}

criterion_group!(benches, encapsulate, decapsulate);
criterion_main!(benches);
