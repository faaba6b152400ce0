//! Would a second core help one peer? The work that dominates a busy gateway — sealing and
//! opening one peer's packets with ChaCha20-Poly1305 (the AEAD boringtun uses) — done by the
//! calling thread alone, against a pool of worker threads fed the way wireguard-go feeds its
//! own: the data-path thread numbers each batch of packets (nonces in order) and queues it,
//! any idle worker seals and opens the whole batch in place, and the data-path thread takes
//! batches back in the order it queued them, so the peer's packets keep their order. The
//! figure is throughput with 2 workers against 1 thread (docs/multicore.md: built only at
//! 1.7× or more).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

const PACKET: usize = 1420;
const TAG: usize = 16;
const BATCH: usize = 64;
const BATCHES: usize = 3000;
/// Batches queued at once: enough to keep every worker busy.
const IN_FLIGHT: usize = 8;

fn key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]).expect("a 32-byte key"))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// What each packet costs a gateway that both sends and receives: seal it, then open it.
fn seal_and_open(key: &LessSafeKey, packets: &mut [Vec<u8>], first: u64) {
    for (i, p) in packets.iter_mut().enumerate() {
        let counter = first + i as u64;
        p.truncate(PACKET);
        key.seal_in_place_append_tag(nonce(counter), Aad::empty(), p)
            .expect("seal");
        let opened = key
            .open_in_place(nonce(counter), Aad::empty(), p)
            .expect("open")
            .len();
        assert_eq!(opened, PACKET);
    }
}

fn batch() -> Vec<Vec<u8>> {
    (0..BATCH)
        .map(|_| {
            let mut p = vec![0xab; PACKET];
            p.reserve(TAG);
            p
        })
        .collect()
}

fn one_thread() -> Duration {
    let key = key();
    let mut packets = batch();
    let t = Instant::now();
    for b in 0..BATCHES {
        seal_and_open(&key, &mut packets, (b * BATCH) as u64);
    }
    t.elapsed()
}

/// Batches waiting for a worker, and batches done, by sequence number.
#[derive(Default)]
struct Queues {
    todo: VecDeque<(u64, Vec<Vec<u8>>)>,
    done: Vec<(u64, Vec<Vec<u8>>)>,
    stop: bool,
}

fn workers(n: usize) -> Duration {
    let shared = Arc::new((
        Mutex::new(Queues::default()),
        Condvar::new(),
        Condvar::new(),
    ));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let key = key();
                let (queues, work, finished) = &*shared;
                loop {
                    let (seq, mut packets) = {
                        let mut q = queues.lock().expect("queue lock");
                        loop {
                            if let Some(job) = q.todo.pop_front() {
                                break job;
                            }
                            if q.stop {
                                return;
                            }
                            q = work.wait(q).expect("queue lock");
                        }
                    };
                    seal_and_open(&key, &mut packets, seq * BATCH as u64);
                    queues.lock().expect("queue lock").done.push((seq, packets));
                    finished.notify_one();
                }
            })
        })
        .collect();
    let (queues, work, finished) = &*shared;
    let mut spare: Vec<Vec<Vec<u8>>> = (0..IN_FLIGHT).map(|_| batch()).collect();
    let (mut sent, mut next) = (0u64, 0u64);
    let t = Instant::now();
    while next < BATCHES as u64 {
        let mut q = queues.lock().expect("queue lock");
        while let Some(packets) = (sent < BATCHES as u64).then(|| spare.pop()).flatten() {
            q.todo.push_back((sent, packets));
            sent += 1;
            work.notify_one();
        }
        // In order: only the next batch due may leave, whichever worker finished first.
        match q.done.iter().position(|(s, _)| *s == next) {
            Some(i) => {
                let (_, packets) = q.done.swap_remove(i);
                spare.push(packets);
                next += 1;
            }
            None => drop(finished.wait(q).expect("queue lock")),
        }
    }
    let took = t.elapsed();
    queues.lock().expect("queue lock").stop = true;
    work.notify_all();
    for h in handles {
        h.join().expect("worker");
    }
    took
}

fn main() {
    let bytes = (PACKET * BATCH * BATCHES) as f64;
    let gbps = |d: Duration| bytes * 8.0 / d.as_secs_f64() / 1e9;
    let mut rows = Vec::new();
    // Alternating rounds, medians: drift on a shared machine hits every variant alike.
    for _ in 0..5 {
        rows.push((one_thread(), workers(1), workers(2)));
    }
    let median = |f: fn(&(Duration, Duration, Duration)) -> Duration| {
        let mut v: Vec<Duration> = rows.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    let (one, w1, w2) = (median(|r| r.0), median(|r| r.1), median(|r| r.2));
    println!(
        "seal + open, one peer, {PACKET} B packets in batches of {BATCH}, order kept: \
         1 thread {:.2} Gbit/s, a pool of 1 worker {:.2}, of 2 workers {:.2} \
         ({:.2}× one thread; build threshold 1.7×; {} cores here)",
        gbps(one),
        gbps(w1),
        gbps(w2),
        one.as_secs_f64() / w2.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
}
