//! One thread, one data plane (the engine, through [`Dataplane`]): poll the TUN, the UDP sockets,
//! a stop pipe and the [`Control`] pipe; drain whatever is readable through the data plane in
//! batches; run its timers. No locks on the data path, and nothing slow: peer changes arrive
//! ready to swap in.
//!
//! With offloads, one TUN read yields a TCP super-packet that tun-rs splits into MTU-sized
//! packets, one UDP receive yields a run of coalesced datagrams, and what the engine emits is
//! gathered into one GSO send per endpoint and one coalesced TUN write per burst.

use std::io::{self, Read};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tun_rs::{SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::batch::{TunBatch, UdpBatch};
use super::control::Control;
use super::dataplane::Dataplane;
use super::sched::{Priority, Turn};
use super::tun::Reads;
use super::udp::{self, Sockets};
use crate::engine::{Sink, MAX_PACKET};
use crate::metrics::LoopCounters;
use crate::snapshot::Snapshot;

const TICK: Duration = Duration::from_millis(250);
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// Reads from one source before looking at the others again (fairness).
const BURST: usize = 64;

/// The engine's [`Sink`]: gathers its output into batches for the devices.
struct Shell<'a> {
    tun: &'a SyncDevice,
    sockets: &'a Sockets,
    to_network: UdpBatch,
    to_tun: TunBatch,
}

impl Sink for Shell<'_> {
    fn send_to_network(&mut self, dst: SocketAddr, datagram: &[u8]) {
        self.to_network.push(self.sockets, dst, datagram);
    }

    fn write_to_tun(&mut self, packet: &[u8]) {
        self.to_tun.push(self.tun, packet);
    }

    // The engine encrypts and decrypts straight into the batches.
    fn datagram_room(&mut self, dst: SocketAddr, len: usize) -> Option<&mut [u8]> {
        Some(self.to_network.room(self.sockets, dst, len))
    }

    fn commit_datagram(&mut self, len: usize) {
        self.to_network.commit(len);
    }

    fn packet_room(&mut self, len: usize) -> Option<&mut [u8]> {
        Some(self.to_tun.room(self.tun, len))
    }

    fn commit_packet(&mut self, len: usize) {
        self.to_tun.commit(len);
    }
}

impl Shell<'_> {
    fn flush(&mut self) {
        self.to_network.flush(self.sockets);
        self.to_tun.flush(self.tun);
    }
}

/// Buffers for reading from the TUN: one super-packet, and the packets it splits into.
struct TunReader {
    offload: bool,
    /// Reads the TUN gave that could not be split into packets (dropped).
    dropped: u64,
    original: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
}

impl TunReader {
    fn new(offload: bool) -> Self {
        TunReader {
            offload,
            dropped: 0,
            original: vec![0; VIRTIO_NET_HDR_LEN + 65535],
            bufs: (0..if offload { IDEAL_BATCH_SIZE } else { 1 })
                .map(|_| vec![0; MAX_PACKET])
                .collect(),
            sizes: vec![0; IDEAL_BATCH_SIZE],
        }
    }

    /// Reads what is there, handing each packet to the engine. Returns the bytes read (0 for a
    /// read it dropped), or `None` when drained.
    fn read(
        &mut self,
        tun: &impl Reads,
        dataplane: &mut impl Dataplane,
        shell: &mut impl Sink,
    ) -> io::Result<Option<usize>> {
        let n = if self.offload {
            tun.recv_multiple(&mut self.original, &mut self.bufs, &mut self.sizes)
        } else {
            tun.recv(&mut self.bufs[0]).map(|n| {
                self.sizes[0] = n;
                1
            })
        };
        match n {
            Ok(n) => {
                let mut bytes = 0;
                for (buf, &size) in self.bufs.iter_mut().zip(&self.sizes).take(n) {
                    bytes += size;
                    dataplane.from_tun(&mut buf[..size], shell);
                }
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            // A super-packet tun-rs cannot split is one bad packet, not a dead device: tun-rs
            // reports those itself, without an OS error number.
            Err(e) if e.raw_os_error().is_none() => {
                self.dropped += 1;
                tracing::debug!("TUN read dropped: {e}");
                Ok(Some(0))
            }
            Err(e) => Err(io::Error::new(e.kind(), format!("TUN read: {e}"))),
        }
    }
}

/// How the loop runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The TUN carries a virtio header (offloads on).
    pub tun_offload: bool,
    /// The thread's real-time priority while busy ([`Priority`]); 0: always normal.
    pub realtime_priority: u8,
}

/// Runs until a byte arrives on `stop`.
pub fn run(
    dataplane: &mut impl Dataplane,
    tun: &SyncDevice,
    options: Options,
    sockets: &Sockets,
    mut stop: &UnixStream,
    control: &Control,
    snapshot: &Snapshot,
) -> io::Result<()> {
    let mut shell = Shell {
        tun,
        sockets,
        to_network: UdpBatch::new(sockets.gso),
        to_tun: TunBatch::new(options.tun_offload),
    };
    let mut reader = TunReader::new(options.tun_offload);
    let mut priority = Priority::new(options.realtime_priority);
    let mut buf = vec![0u8; 65536];
    let mut cmsg = udp::cmsg_buffer();
    // Drops the kernel reported: on each socket's full receive buffer, on the TUN's full queue.
    let mut overflows = [0u32; 2];
    let tun_name = tun.name().unwrap_or_default();
    let mut tun_queue_dropped = 0;
    let mut next_tick = Instant::now();
    let mut next_metrics = Instant::now();
    let loop_id = LOOPS.fetch_add(1, Ordering::Relaxed);
    let v6 = sockets.v6.as_ref();
    let mut last = Turn::default();
    loop {
        let pause = priority.turn(Instant::now(), last);
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
        let now = Instant::now();
        last = Turn::default();
        if now >= next_tick {
            dataplane.tick(&mut shell);
            shell.flush();
            next_tick = now + TICK;
        }
        // A peer that went up or down is published at once, not at the next second.
        if now >= next_metrics || dataplane.take_changed() {
            // A failed read keeps the last count: a dip would read as a new device's count.
            if let Some(n) = super::tun::queue_dropped(&tun_name) {
                tun_queue_dropped = n;
            }
            let io = LoopCounters {
                instance: loop_id,
                tun_read_dropped: reader.dropped,
                underlay_send_errors: shell.to_network.errors,
                tun_write_errors: shell.to_tun.errors,
                tun_queue_dropped,
                socket_buffer_dropped: overflows.iter().map(|&n| u64::from(n)).sum(),
                realtime_priority: priority.realtime,
            };
            if publish(dataplane, io, snapshot, now) {
                next_metrics = now + METRICS_EVERY;
            }
        }
        let wait = next_tick.saturating_duration_since(Instant::now());
        let wait = PollTimeout::try_from(wait.as_millis().min(1000) as i32 + 1)
            .unwrap_or(PollTimeout::NONE);
        // Without IPv6 the last slot polls the stop pipe for nothing, keeping the set fixed-size.
        let (v6_fd, v6_events) = match v6 {
            Some(s) => (s.as_fd(), PollFlags::POLLIN),
            None => (stop.as_fd(), PollFlags::empty()),
        };
        let mut fds = [
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(tun.as_fd(), PollFlags::POLLIN),
            PollFd::new(sockets.v4.as_fd(), PollFlags::POLLIN),
            PollFd::new(v6_fd, v6_events),
            PollFd::new(control.wake_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, wait) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready = fds.map(|f| {
            f.revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLERR))
        });
        if ready[0] {
            let _ = stop.read(&mut [0u8; 16]);
            tracing::info!("stopping the tunnel");
            return Ok(());
        }
        // New peers' handshakes start at the next tick: make it now, not up to 250 ms later
        // (a new leader's first initiation waited that long).
        if ready[4] && control.take(dataplane) {
            next_tick = Instant::now();
        }
        if ready[1] {
            let mut drained = false;
            for _ in 0..BURST {
                match reader.read(tun, dataplane, &mut shell)? {
                    Some(n) => last.read += n,
                    None => {
                        drained = true;
                        break;
                    }
                }
            }
            last.left_some |= !drained;
            shell.flush();
        }
        if ready[2] {
            let o = &mut overflows[0];
            drain_udp(
                &sockets.v4,
                dataplane,
                &mut shell,
                &mut buf,
                &mut cmsg,
                o,
                &mut last,
            );
        }
        if let (Some(s), true) = (v6, ready[3]) {
            let o = &mut overflows[1];
            drain_udp(s, dataplane, &mut shell, &mut buf, &mut cmsg, o, &mut last);
        }
    }
}

/// Drains one underlay socket (up to [`BURST`] receives); `overflows` keeps the highest drop
/// count the kernel reported; `turn` learns what was read and whether the socket had more.
fn drain_udp(
    sock: &UdpSocket,
    dataplane: &mut impl Dataplane,
    shell: &mut Shell<'_>,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
    overflows: &mut u32,
    turn: &mut Turn,
) {
    let mut drained = false;
    for _ in 0..BURST {
        match udp::recv(sock, buf, cmsg) {
            Ok(r) => {
                turn.read += r.len;
                if let Some(n) = r.overflows {
                    *overflows = (*overflows).max(n);
                }
                if r.len == 0 {
                    // An empty datagram is still one: the engine counts it as malformed.
                    dataplane.from_network(r.src, &[], shell);
                }
                for datagram in buf[..r.len].chunks(r.segment.max(1)) {
                    dataplane.from_network(r.src, datagram, shell);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                drained = true;
                break;
            }
            // ICMP errors for earlier sends surface here (ECONNREFUSED...); they are not fatal.
            Err(e) => {
                tracing::debug!("UDP receive: {e}");
                drained = true;
                break;
            }
        }
    }
    turn.left_some |= !drained;
    shell.flush();
}

/// How `status` names the kernel's drops beside the engine's reasons.
pub const KERNEL_TUN_QUEUE_FULL: &str = "tun_queue_full";
pub const KERNEL_SOCKET_BUFFER_FULL: &str = "socket_buffer_full";

/// Numbers the loops the process runs: a new one's own counters start from zero.
static LOOPS: AtomicU64 = AtomicU64::new(1);

/// Hands a fresh view to the HTTP thread; its time also tells `/healthz` the loop is turning.
/// False if a reader holds the view: the loop, perhaps at real-time priority, does not wait on
/// a normal-priority thread that may be off the CPU, and tries again at its next turn.
fn publish(
    dataplane: &impl Dataplane,
    io: LoopCounters,
    snapshot: &Snapshot,
    now: Instant,
) -> bool {
    let Ok(mut s) = snapshot.try_lock() else {
        return false;
    };
    let s = &mut *s;
    let at = std::time::SystemTime::now();
    s.loop_turned = Some(now);
    s.published_at = Some(at);
    s.drops.clear();
    dataplane.publish(s, io, at);
    s.drops.extend([
        (KERNEL_TUN_QUEUE_FULL, io.tun_queue_dropped),
        (KERNEL_SOCKET_BUFFER_FULL, io.socket_buffer_dropped),
    ]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{PeerChanges, PeerSpec};
    use crate::snapshot::Published;
    use std::cell::RefCell;
    use std::collections::VecDeque;

    /// A TUN whose reads follow a script: a packet of that many bytes, or an error.
    struct ScriptedTun(RefCell<VecDeque<io::Result<usize>>>);

    impl Reads for ScriptedTun {
        fn recv_multiple(
            &self,
            _original: &mut [u8],
            _bufs: &mut [Vec<u8>],
            sizes: &mut [usize],
        ) -> io::Result<usize> {
            let n = self
                .0
                .borrow_mut()
                .pop_front()
                .unwrap_or(Err(io::ErrorKind::WouldBlock.into()))?;
            sizes[0] = n;
            Ok(1)
        }
        fn recv(&self, _buf: &mut [u8]) -> io::Result<usize> {
            self.0
                .borrow_mut()
                .pop_front()
                .unwrap_or(Err(io::ErrorKind::WouldBlock.into()))
        }
    }

    /// Counts the packets handed over.
    #[derive(Default)]
    struct Counting(Vec<usize>);

    impl Dataplane for Counting {
        fn from_tun(&mut self, packet: &mut [u8], _sink: &mut impl Sink) {
            self.0.push(packet.len());
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

    #[test]
    fn a_read_tun_rs_cannot_split_drops_one_read_and_a_device_error_ends_the_loop() {
        for offload in [true, false] {
            let tun = ScriptedTun(RefCell::new(VecDeque::from([
                Ok(60),
                // What tun-rs returns for a super-packet it cannot split: no OS error number.
                Err(io::Error::other("invalid virtio header")),
                Ok(1400),
                Err(io::ErrorKind::WouldBlock.into()),
                Err(io::Error::from_raw_os_error(nix::libc::EBADFD)),
            ])));
            let (mut reader, mut plane) = (TunReader::new(offload), Counting::default());
            let mut read = || reader.read(&tun, &mut plane, &mut Nowhere);
            assert!(matches!(read(), Ok(Some(60))));
            assert!(
                matches!(read(), Ok(Some(0))),
                "an unsplittable read is not fatal"
            );
            assert!(matches!(read(), Ok(Some(1400))));
            assert!(matches!(read(), Ok(None)), "drained");
            let fatal = read().unwrap_err();
            assert!(fatal.to_string().starts_with("TUN read: "), "{fatal}");
            assert_eq!(reader.dropped, 1);
            assert_eq!(plane.0, [60, 1400]);
        }
    }
}
