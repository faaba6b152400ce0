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
use tun_rs::SyncDevice;

use super::aqm::{self, Codel, Verdict};
use super::batch::{TunBatch, UdpBatch};
use super::control::Control;
use super::dataplane::Dataplane;
use super::tun_reader::TunReader;
use super::udp::{self, Sockets};
use crate::engine::Sink;
use crate::metrics::LoopCounters;
use crate::snapshot::Snapshot;

const TICK: Duration = Duration::from_millis(250);
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// Reads from one source before looking at the others again (fairness).
const BURST: usize = 64;
/// TUN reads handed to the data plane between two reads of the device: a few hundred
/// microseconds of encryption, so a pod's packet is not left unstamped in the kernel's queue.
const SLICE: usize = 4;

/// The engine's [`Sink`]: gathers its output into batches for the devices.
struct Shell<'a> {
    tun: &'a SyncDevice,
    sockets: &'a Sockets,
    to_network: UdpBatch,
    to_tun: TunBatch,
    /// CoDel on the underlay sockets' buffers: what peers' packets waited before we read them.
    codel: Codel,
    /// How long the datagram being handled waited, and when it was read (zero outside).
    waited: Duration,
    read_at: Instant,
}

impl Sink for Shell<'_> {
    fn send_to_network(&mut self, dst: SocketAddr, datagram: &[u8]) {
        self.to_network.push(self.sockets, dst, datagram);
    }

    fn write_to_tun(&mut self, packet: &[u8]) {
        self.to_tun
            .room(self.tun, packet.len())
            .copy_from_slice(packet);
        self.commit_packet(packet.len());
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
        let packet = self.to_tun.uncommitted(len);
        if self.codel.admit(packet, self.waited, self.read_at) != Verdict::Drop {
            self.to_tun.commit(len);
        }
    }
}

impl Shell<'_> {
    fn flush(&mut self) {
        self.to_network.flush(self.sockets);
        self.to_tun.flush(self.tun);
    }
}

/// Runs until a byte arrives on `stop`.
pub fn run(
    dataplane: &mut impl Dataplane,
    tun: &SyncDevice,
    tun_offload: bool,
    sockets: &Sockets,
    mut stop: &UnixStream,
    control: &Control,
    snapshot: &Snapshot,
) -> io::Result<()> {
    let mut shell = Shell {
        tun,
        sockets,
        to_network: UdpBatch::new(sockets.gso),
        to_tun: TunBatch::new(tun_offload),
        codel: aqm::codel(),
        waited: Duration::ZERO,
        read_at: Instant::now(),
    };
    let mut reader = TunReader::new(tun_offload, tun.mtu().ok(), aqm::codel());
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
    loop {
        let now = Instant::now();
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
                standing_queue_dropped: reader.codel.signals.dropped + shell.codel.signals.dropped,
                standing_queue_marked: reader.codel.signals.marked + shell.codel.signals.marked,
            };
            publish(dataplane, io, snapshot, now);
            next_metrics = now + METRICS_EVERY;
        }
        // Reads queued for the data plane: look at the others and come straight back.
        let wait = if reader.pending() {
            PollTimeout::ZERO
        } else {
            let wait = next_tick.saturating_duration_since(Instant::now());
            PollTimeout::try_from(wait.as_millis().min(1000) as i32 + 1)
                .unwrap_or(PollTimeout::NONE)
        };
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
        if ready[4] {
            control.take(dataplane);
        }
        if ready[1] || reader.pending() {
            // Read the device dry, encrypt a few reads, read again: what waits, waits in the
            // reader's queue, where CoDel sees how long.
            let mut taken = 0;
            while taken < BURST {
                reader.fill(tun)?;
                let n = reader.take(SLICE, Instant::now(), dataplane, &mut shell);
                if n == 0 {
                    break;
                }
                taken += n;
            }
            shell.flush();
        }
        if ready[2] {
            let o = &mut overflows[0];
            drain_udp(&sockets.v4, dataplane, &mut shell, &mut buf, &mut cmsg, o);
        }
        if let (Some(s), true) = (v6, ready[3]) {
            let o = &mut overflows[1];
            drain_udp(s, dataplane, &mut shell, &mut buf, &mut cmsg, o);
        }
    }
}

/// Drains one underlay socket; `overflows` keeps the highest drop count the kernel reported.
fn drain_udp(
    sock: &UdpSocket,
    dataplane: &mut impl Dataplane,
    shell: &mut Shell<'_>,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
    overflows: &mut u32,
) {
    for _ in 0..BURST {
        match udp::recv(sock, buf, cmsg) {
            Ok(r) => {
                (shell.waited, shell.read_at) = (r.sojourn, Instant::now());
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
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // ICMP errors for earlier sends surface here (ECONNREFUSED...); they are not fatal.
            Err(e) => {
                tracing::debug!("UDP receive: {e}");
                break;
            }
        }
    }
    // Whatever the engine writes to the TUN outside a receive did not wait in a socket.
    shell.waited = Duration::ZERO;
    shell.flush();
}

/// How `status` names the kernel's drops beside the engine's reasons.
pub const KERNEL_TUN_QUEUE_FULL: &str = "tun_queue_full";
pub const KERNEL_SOCKET_BUFFER_FULL: &str = "socket_buffer_full";
/// TCP the loop's CoDel dropped to shrink a standing queue.
pub const STANDING_QUEUE: &str = "standing_queue";

/// Numbers the loops the process runs: a new one's own counters start from zero.
static LOOPS: AtomicU64 = AtomicU64::new(1);

/// Hands a fresh view to the HTTP thread; its time also tells `/healthz` the loop is turning.
fn publish(dataplane: &impl Dataplane, io: LoopCounters, snapshot: &Snapshot, now: Instant) {
    let Ok(mut s) = snapshot.lock() else { return };
    let s = &mut *s;
    let at = std::time::SystemTime::now();
    s.loop_turned = Some(now);
    s.published_at = Some(at);
    s.drops.clear();
    dataplane.publish(s, io, at);
    s.drops.extend([
        (KERNEL_TUN_QUEUE_FULL, io.tun_queue_dropped),
        (KERNEL_SOCKET_BUFFER_FULL, io.socket_buffer_dropped),
        (STANDING_QUEUE, io.standing_queue_dropped),
    ]);
}
