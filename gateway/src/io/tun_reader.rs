//! Reading the TUN into a short queue of our own, so that the time pods' packets wait is known.
//!
//! The kernel's TUN queue says nothing of how long a packet stood in it. So the loop reads the
//! device dry (up to [`FRAMES`] reads) before it encrypts, stamping each read, and CoDel
//! ([`super::aqm`]) sees each packet's wait when the data plane takes it: the standing queue of
//! a TCP stream moves from the kernel's queue, where nothing could act on it, to this one.
//! Beyond [`FRAMES`] reads the loop stops reading and the kernel's queue holds the rest, as
//! before (a burst of UDP while the loop was off the CPU).

use std::io;
use std::time::Instant;

use tun_rs::{IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::aqm::{Codel, Verdict};
use super::dataplane::Dataplane;
use super::tun::Reads;
use crate::engine::{Sink, MAX_PACKET};

/// Reads held at most: 16 super-packets of a TCP stream are 1 MB, a few milliseconds of
/// encryption, well past CoDel's target, so a standing queue shows here before it spills back.
pub const FRAMES: usize = 16;

/// One read: a super-packet split into packets (one packet without offloads), and when.
struct Frame {
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    count: usize,
    read_at: Instant,
}

pub struct TunReader {
    offload: bool,
    /// Reads the TUN gave that could not be split into packets (dropped).
    pub dropped: u64,
    /// Where a super-packet lands before tun-rs splits it into a frame's packets.
    original: Vec<u8>,
    frames: Vec<Frame>,
    head: usize,
    queued: usize,
    pub codel: Codel,
}

impl TunReader {
    /// `mtu` sizes the packet buffers of a split super-packet (each packet is at most the
    /// device's MTU); without it they take the largest packet.
    pub fn new(offload: bool, mtu: Option<u16>, codel: Codel) -> Self {
        let (per_frame, size) = match (offload, mtu) {
            (true, Some(mtu)) => (IDEAL_BATCH_SIZE, usize::from(mtu) + VIRTIO_NET_HDR_LEN),
            (true, None) => (IDEAL_BATCH_SIZE, MAX_PACKET),
            (false, _) => (1, MAX_PACKET),
        };
        TunReader {
            offload,
            dropped: 0,
            original: vec![
                0;
                if offload {
                    VIRTIO_NET_HDR_LEN + 65535
                } else {
                    0
                }
            ],
            frames: (0..FRAMES)
                .map(|_| Frame {
                    bufs: (0..per_frame).map(|_| vec![0; size]).collect(),
                    sizes: vec![0; per_frame],
                    count: 0,
                    read_at: Instant::now(),
                })
                .collect(),
            head: 0,
            queued: 0,
            codel,
        }
    }

    /// Whether reads are waiting for the data plane.
    pub fn pending(&self) -> bool {
        self.queued > 0
    }

    /// Reads until the device is drained or the queue is full. A device error ends the loop.
    pub fn fill(&mut self, tun: &impl Reads) -> io::Result<()> {
        while self.queued < FRAMES {
            let f = &mut self.frames[(self.head + self.queued) % FRAMES];
            let n = if self.offload {
                tun.recv_multiple(&mut self.original, &mut f.bufs, &mut f.sizes)
            } else {
                tun.recv(&mut f.bufs[0]).map(|n| {
                    f.sizes[0] = n;
                    1
                })
            };
            match n {
                Ok(n) => {
                    f.count = n;
                    f.read_at = Instant::now();
                    self.queued += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // A super-packet tun-rs cannot split is one bad packet, not a dead device:
                // tun-rs reports those itself, without an OS error number.
                Err(e) if e.raw_os_error().is_none() => {
                    self.dropped += 1;
                    tracing::debug!("TUN read dropped: {e}");
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("TUN read: {e}"))),
            }
        }
        Ok(())
    }

    /// Hands up to `max` queued reads to the data plane, each packet past CoDel first (at
    /// `now`: one clock read per turn). Returns how many reads it took.
    pub fn take(
        &mut self,
        max: usize,
        now: Instant,
        dataplane: &mut impl Dataplane,
        sink: &mut impl Sink,
    ) -> usize {
        let mut taken = 0;
        while taken < max && self.queued > 0 {
            let f = &mut self.frames[self.head];
            let waited = now.saturating_duration_since(f.read_at);
            for (buf, &size) in f.bufs.iter_mut().zip(&f.sizes).take(f.count) {
                let Some(packet) = buf.get_mut(..size) else {
                    continue;
                };
                if self.codel.admit(packet, waited, now) != Verdict::Drop {
                    dataplane.from_tun(packet, sink);
                }
            }
            self.head = (self.head + 1) % FRAMES;
            self.queued -= 1;
            taken += 1;
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{PeerChanges, PeerSpec};
    use crate::metrics::LoopCounters;
    use crate::snapshot::Published;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::time::Duration;

    /// A TUN whose reads follow a script: a packet (these bytes), or an error.
    struct ScriptedTun(RefCell<VecDeque<io::Result<Vec<u8>>>>);

    impl ScriptedTun {
        fn new(script: impl IntoIterator<Item = io::Result<Vec<u8>>>) -> Self {
            ScriptedTun(RefCell::new(script.into_iter().collect()))
        }

        fn next(&self, into: &mut [u8]) -> io::Result<usize> {
            let p = self
                .0
                .borrow_mut()
                .pop_front()
                .unwrap_or(Err(io::ErrorKind::WouldBlock.into()))?;
            into[..p.len()].copy_from_slice(&p);
            Ok(p.len())
        }
    }

    impl Reads for ScriptedTun {
        fn recv_multiple(
            &self,
            _original: &mut [u8],
            bufs: &mut [Vec<u8>],
            sizes: &mut [usize],
        ) -> io::Result<usize> {
            sizes[0] = self.next(&mut bufs[0])?;
            Ok(1)
        }
        fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            self.next(buf)
        }
    }

    /// Keeps the packets handed over.
    #[derive(Default)]
    struct Keeping(Vec<Vec<u8>>);

    impl Dataplane for Keeping {
        fn from_tun(&mut self, packet: &mut [u8], _sink: &mut impl Sink) {
            self.0.push(packet.to_vec());
        }
        fn from_network(&mut self, _src: SocketAddr, _datagram: &[u8], _sink: &mut impl Sink) {}
        fn tick(&mut self, _sink: &mut impl Sink) {}
        fn apply_peers(&mut self, _peers: Vec<PeerSpec>) -> Result<PeerChanges, String> {
            Ok(PeerChanges::default())
        }
        fn take_changed(&mut self) -> bool {
            false
        }
        fn publish(&self, _into: &mut Published, _io: LoopCounters, _at: std::time::SystemTime) {}
    }

    struct Nowhere;

    impl Sink for Nowhere {
        fn send_to_network(&mut self, _dst: SocketAddr, _datagram: &[u8]) {}
        fn write_to_tun(&mut self, _packet: &[u8]) {}
    }

    const TARGET: Duration = Duration::from_millis(1);
    const INTERVAL: Duration = Duration::from_millis(20);

    fn reader(offload: bool) -> TunReader {
        TunReader::new(offload, Some(1420), Codel::new(TARGET, INTERVAL))
    }

    /// An IPv4 header of `proto` (the rest zero: the reader looks at nothing else).
    fn packet(proto: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[9] = proto;
        p
    }

    #[test]
    fn a_read_tun_rs_cannot_split_drops_one_read_and_a_device_error_ends_the_loop() {
        for offload in [true, false] {
            let tun = ScriptedTun::new([
                Ok(packet(6, 60)),
                // What tun-rs returns for a super-packet it cannot split: no OS error number.
                Err(io::Error::other("invalid virtio header")),
                Ok(packet(17, 1400)),
                Err(io::ErrorKind::WouldBlock.into()),
                Err(io::Error::from_raw_os_error(nix::libc::EBADFD)),
            ]);
            let (mut reader, mut plane) = (reader(offload), Keeping::default());
            reader
                .fill(&tun)
                .expect("an unsplittable read is not fatal");
            assert_eq!(reader.dropped, 1);
            assert!(reader.pending());
            assert_eq!(reader.take(64, Instant::now(), &mut plane, &mut Nowhere), 2);
            assert!(!reader.pending(), "drained");
            let lens: Vec<_> = plane.0.iter().map(Vec::len).collect();
            assert_eq!(lens, [60, 1400]);
            let fatal = reader.fill(&tun).unwrap_err();
            assert!(fatal.to_string().starts_with("TUN read: "), "{fatal}");
        }
    }

    #[test]
    fn the_queue_holds_so_many_reads_then_leaves_the_rest_in_the_device() {
        let tun = ScriptedTun::new((0..FRAMES + 5).map(|_| Ok(packet(6, 100))));
        let (mut reader, mut plane) = (reader(true), Keeping::default());
        reader.fill(&tun).unwrap();
        assert_eq!(
            tun.0.borrow().len(),
            5,
            "the kernel keeps what does not fit"
        );
        assert_eq!(reader.take(3, Instant::now(), &mut plane, &mut Nowhere), 3);
        reader.fill(&tun).unwrap();
        assert_eq!(tun.0.borrow().len(), 2);
        let taken = reader.take(usize::MAX, Instant::now(), &mut plane, &mut Nowhere);
        assert_eq!(taken, FRAMES);
        assert_eq!(plane.0.len(), FRAMES + 3);
    }

    #[test]
    fn tcp_that_stood_in_the_queue_past_an_interval_is_dropped_and_a_ping_is_not() {
        let start = Instant::now();
        let late = start + TARGET * 5;
        let (mut reader, mut plane) = (reader(true), Keeping::default());
        // The first long wait only starts CoDel's clock: nothing is dropped.
        reader
            .fill(&ScriptedTun::new([Ok(packet(6, 100)), Ok(packet(1, 84))]))
            .unwrap();
        reader.take(FRAMES, late, &mut plane, &mut Nowhere);
        assert_eq!(plane.0.len(), 2);
        // Still waiting that long an interval later: the ping passes, TCP carries the signal.
        reader
            .fill(&ScriptedTun::new([Ok(packet(1, 84)), Ok(packet(6, 100))]))
            .unwrap();
        reader.take(FRAMES, late + INTERVAL, &mut plane, &mut Nowhere);
        let protos: Vec<_> = plane.0.iter().map(|p| p[9]).collect();
        assert_eq!(protos, [6, 1, 1]);
        assert_eq!(reader.codel.signals.dropped, 1);
    }
}
