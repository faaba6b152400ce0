//! Batches between the engine and the kernel: datagrams to one endpoint leave in one `sendmsg`
//! (UDP GSO), packets for the TUN leave coalesced by flow (TCP/UDP GRO through the TUN's virtio
//! header, [`super::gro`]). Buffers are allocated once; the engine writes into them.
//!
//! The devices are behind two small traits, [`Datagrams`] and [`Packets`], so that the batching,
//! the GSO fallback and the retry on a full buffer are tested against fakes.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
use tun_rs::{SyncDevice, IDEAL_BATCH_SIZE};

use super::gro::{self, Gro, Writes};
use super::udp::Sockets;

/// Segments per GSO send (the kernel's limit is 64).
const GSO_SEGMENTS: usize = 64;
/// Bytes per GSO send (one UDP datagram before segmentation).
const GSO_BYTES: usize = 65000;
/// How long a send waits for room in a full socket buffer, once, before the batch is dropped.
const FULL_WAIT: Duration = Duration::from_millis(100);

/// Where UDP batches go: the underlay sockets (or a fake).
pub trait Datagrams {
    /// Sends `buf` to `dst`: one datagram, or with `segment` a run the kernel cuts (UDP GSO).
    fn send(&self, dst: SocketAddr, buf: &[u8], segment: Option<u16>) -> io::Result<()>;
    /// Returns once a send to `dst` would not block, or `timeout` has passed.
    fn wait_writable(&self, dst: SocketAddr, timeout: Duration) -> io::Result<()>;
}

/// Where TUN batches go: the TUN device (or a fake). With offloads, packets go through
/// [`Writes`], each after its virtio header; without, one by one through `send`.
pub trait Packets: Writes {
    fn send(&self, packet: &[u8]) -> io::Result<usize>;
    /// The device takes UDP super-packets (Linux 6.2 and later).
    fn udp_offload(&self) -> bool;
}

impl Datagrams for Sockets {
    fn send(&self, dst: SocketAddr, buf: &[u8], segment: Option<u16>) -> io::Result<()> {
        let sock = self.for_dst(&dst).ok_or_else(|| {
            io::Error::new(io::ErrorKind::AddrNotAvailable, "no socket of that family")
        })?;
        let Some(seg) = segment else {
            return sock.send_to(buf, dst).map(|_| ());
        };
        let addr = SockaddrStorage::from(dst);
        let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
        sendmsg(
            sock.as_raw_fd(),
            &[IoSlice::new(buf)],
            &cmsg,
            MsgFlags::empty(),
            Some(&addr),
        )
        .map(|_| ())
        .map_err(io::Error::from)
    }

    fn wait_writable(&self, dst: SocketAddr, timeout: Duration) -> io::Result<()> {
        let Some(sock) = self.for_dst(&dst) else {
            return Ok(());
        };
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLOUT)];
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        poll(&mut fds, PollTimeout::from(ms))?;
        Ok(())
    }
}

impl Writes for SyncDevice {
    fn write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        Ok(nix::sys::uio::writev(self, iov)?)
    }
}

impl Packets for SyncDevice {
    fn send(&self, packet: &[u8]) -> io::Result<usize> {
        SyncDevice::send(self, packet)
    }

    fn udp_offload(&self) -> bool {
        self.udp_gso()
    }
}

/// One send; if the socket buffer is full, one wait for room and one more try: a burst that
/// outruns the NIC is held back briefly rather than lost, and never for long.
fn send_or_wait(
    out: &impl Datagrams,
    dst: SocketAddr,
    buf: &[u8],
    segment: Option<u16>,
) -> io::Result<()> {
    match out.send(dst, buf, segment) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            out.wait_writable(dst, FULL_WAIT)?;
            out.send(dst, buf, segment)
        }
        other => other,
    }
}

/// Datagrams for one endpoint, laid end to end: all `segment` bytes long but the last.
pub struct UdpBatch {
    buf: Vec<u8>,
    len: usize,
    count: usize,
    segment: usize,
    dst: Option<SocketAddr>,
    /// Cleared (and said once) when the kernel refuses UDP_SEGMENT.
    pub gso: bool,
    /// Datagrams that could not be sent.
    pub errors: u64,
}

impl UdpBatch {
    pub fn new(gso: bool) -> Self {
        UdpBatch {
            buf: vec![0; GSO_BYTES + 2048],
            len: 0,
            count: 0,
            segment: 0,
            dst: None,
            gso,
            errors: 0,
        }
    }

    pub fn push(&mut self, out: &impl Datagrams, dst: SocketAddr, datagram: &[u8]) {
        self.room(out, dst, datagram.len())[..datagram.len()].copy_from_slice(datagram);
        self.commit(datagram.len());
    }

    /// Where a datagram of `len` bytes to `dst` goes, flushing first if it cannot join the
    /// batch; the slice runs to the end of the buffer (at least `len` and 2 KB). Nothing is
    /// sent from it until [`UdpBatch::commit`].
    pub fn room(&mut self, out: &impl Datagrams, dst: SocketAddr, len: usize) -> &mut [u8] {
        let fits = self.dst == Some(dst)
            && self.gso
            && len <= self.segment
            // Only the last segment may be shorter: after a short one, nothing more.
            && self.len == self.count * self.segment
            && self.count < GSO_SEGMENTS
            && self.len + len <= GSO_BYTES;
        if !fits {
            self.flush(out);
            self.dst = Some(dst);
            self.segment = len;
        }
        &mut self.buf[self.len..]
    }

    /// Takes the `len` bytes written at the start of the last [`UdpBatch::room`].
    pub fn commit(&mut self, len: usize) {
        self.len += len;
        self.count += 1;
    }

    pub fn flush(&mut self, out: &impl Datagrams) {
        let (Some(dst), len) = (self.dst, self.len) else {
            return;
        };
        if len == 0 {
            return;
        }
        let result = if self.count == 1 {
            send_or_wait(out, dst, &self.buf[..len], None)
        } else {
            let r = send_or_wait(out, dst, &self.buf[..len], Some(self.segment as u16));
            if matches!(&r, Err(e) if e.raw_os_error() == Some(nix::libc::EIO) || e.raw_os_error() == Some(nix::libc::EINVAL))
            {
                // No UDP GSO here (or not for this route): send one by one from now on.
                tracing::warn!(
                    "UDP GSO refused by the kernel ({r:?}); sending datagrams one by one"
                );
                self.gso = false;
                let mut failed = 0;
                for chunk in self.buf[..len].chunks(self.segment) {
                    if send_or_wait(out, dst, chunk, None).is_err() {
                        failed += 1;
                    }
                }
                self.errors += failed;
                self.reset();
                return;
            }
            r
        };
        if let Err(e) = result {
            self.errors += self.count as u64;
            tracing::debug!(%dst, "send failed: {e}");
        }
        self.reset();
    }

    fn reset(&mut self) {
        self.len = 0;
        self.count = 0;
        self.dst = None;
    }
}

/// Packets for the TUN, written together so that flows can be coalesced (GRO).
pub struct TunBatch {
    bufs: Vec<Vec<u8>>,
    count: usize,
    gro: Gro,
    /// Bytes before each packet: room for the virtio header when offloads are on.
    offset: usize,
    /// Packets in batches the TUN refused.
    pub errors: u64,
}

impl TunBatch {
    pub fn new(offload: bool) -> Self {
        let offset = if offload { gro::HEADER_LEN } else { 0 };
        TunBatch {
            bufs: (0..IDEAL_BATCH_SIZE)
                .map(|_| Vec::with_capacity(offset + 65535))
                .collect(),
            count: 0,
            gro: Gro::new(IDEAL_BATCH_SIZE),
            offset,
            errors: 0,
        }
    }

    pub fn push(&mut self, dev: &impl Packets, packet: &[u8]) {
        self.room(dev, packet.len()).copy_from_slice(packet);
        self.commit(packet.len());
    }

    /// Where a packet of up to `len` bytes goes, flushing first if the batch is full; taken
    /// by [`TunBatch::commit`]. A buffer keeps its length between uses, so that this rarely
    /// writes anything (no zeroing of room about to be overwritten).
    pub fn room(&mut self, dev: &impl Packets, len: usize) -> &mut [u8] {
        if self.count == self.bufs.len() {
            self.flush(dev);
        }
        let b = &mut self.bufs[self.count];
        b.resize(self.offset + len, 0);
        &mut b[self.offset..]
    }

    /// Takes the `len` bytes written at the start of the last [`TunBatch::room`].
    pub fn commit(&mut self, len: usize) {
        self.bufs[self.count].truncate(self.offset + len);
        self.count += 1;
    }

    pub fn flush(&mut self, dev: &impl Packets) {
        if self.count == 0 {
            return;
        }
        let bufs = &mut self.bufs[..self.count];
        // Once: a TUN write does not block (the kernel queues or drops).
        if self.offset > 0 {
            self.errors += self.gro.write(dev, bufs, dev.udp_offload());
        } else {
            // One by one: a packet the kernel refuses costs only itself.
            for b in bufs.iter() {
                if let Err(e) = dev.send(b) {
                    self.errors += 1;
                    tracing::debug!("TUN write failed: {e}");
                }
            }
        }
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;

    /// A send as the fake saw it: where, what, and the GSO segment size.
    type Sent = (SocketAddr, Vec<u8>, Option<u16>);

    /// Records every send; answers from a script of results (then Ok).
    #[derive(Default)]
    struct FakeSocket {
        sends: RefCell<Vec<Sent>>,
        script: RefCell<VecDeque<io::Result<()>>>,
        waits: RefCell<u32>,
    }

    impl Datagrams for FakeSocket {
        fn send(&self, dst: SocketAddr, buf: &[u8], segment: Option<u16>) -> io::Result<()> {
            self.sends.borrow_mut().push((dst, buf.to_vec(), segment));
            self.script.borrow_mut().pop_front().unwrap_or(Ok(()))
        }
        fn wait_writable(&self, _dst: SocketAddr, timeout: Duration) -> io::Result<()> {
            assert_eq!(timeout, FULL_WAIT);
            *self.waits.borrow_mut() += 1;
            Ok(())
        }
    }

    fn a() -> SocketAddr {
        "192.0.2.1:51840".parse().unwrap()
    }
    fn b() -> SocketAddr {
        "192.0.2.2:51840".parse().unwrap()
    }

    #[test]
    fn datagrams_to_one_endpoint_leave_together_until_a_short_one_or_another_endpoint() {
        let out = FakeSocket::default();
        let mut batch = UdpBatch::new(true);
        for _ in 0..3 {
            batch.push(&out, a(), &[1; 100]);
        }
        batch.push(&out, a(), &[2; 40]); // shorter: ends the run
        batch.push(&out, a(), &[3; 100]);
        batch.push(&out, b(), &[4; 100]);
        batch.flush(&out);
        let sends = out.sends.borrow();
        let shape: Vec<_> = sends
            .iter()
            .map(|(d, buf, s)| (*d, buf.len(), *s))
            .collect();
        assert_eq!(
            shape,
            [(a(), 340, Some(100)), (a(), 100, None), (b(), 100, None)]
        );
        assert_eq!(batch.errors, 0);
    }

    #[test]
    fn room_the_engine_writes_into_joins_the_batch_and_room_left_alone_sends_nothing() {
        let out = FakeSocket::default();
        let mut batch = UdpBatch::new(true);
        batch.push(&out, a(), &[1; 100]);
        let room = batch.room(&out, a(), 100);
        assert!(room.len() >= 2048);
        room[..100].fill(2);
        batch.commit(100);
        // A handshake instead of data, say: the room is not taken.
        batch.room(&out, a(), 100)[..148].fill(9);
        batch.push(&out, b(), &[3; 100]);
        batch.room(&out, b(), 100)[..100].fill(9);
        batch.flush(&out);
        let sends = out.sends.borrow();
        assert_eq!(sends.len(), 2);
        assert_eq!(sends[0].0, a());
        assert_eq!(sends[0].1, [[1u8; 100], [2u8; 100]].concat());
        assert_eq!(sends[0].2, Some(100));
        assert_eq!(
            (sends[1].0, sends[1].1.clone(), sends[1].2),
            (b(), vec![3; 100], None)
        );
    }

    #[test]
    fn a_run_stops_at_64_segments() {
        let out = FakeSocket::default();
        let mut batch = UdpBatch::new(true);
        for _ in 0..65 {
            batch.push(&out, a(), &[1; 500]);
        }
        batch.flush(&out);
        let sizes: Vec<_> = out.sends.borrow().iter().map(|s| s.1.len()).collect();
        assert_eq!(sizes, [64 * 500, 500]);
    }

    #[test]
    fn refused_gso_falls_back_to_one_by_one_for_good() {
        let out = FakeSocket::default();
        out.script
            .borrow_mut()
            .push_back(Err(io::Error::from_raw_os_error(nix::libc::EIO)));
        let mut batch = UdpBatch::new(true);
        for _ in 0..3 {
            batch.push(&out, a(), &[1; 100]);
        }
        batch.flush(&out);
        assert!(!batch.gso);
        for _ in 0..2 {
            batch.push(&out, a(), &[1; 100]);
        }
        batch.flush(&out);
        let segments: Vec<_> = out.sends.borrow().iter().map(|s| s.2).collect();
        assert_eq!(segments, [Some(100), None, None, None, None, None]);
        assert_eq!(batch.errors, 0);
    }

    #[test]
    fn a_full_buffer_is_waited_for_once_then_the_batch_is_counted_lost() {
        let out = FakeSocket::default();
        let full = || Err(io::Error::from(io::ErrorKind::WouldBlock));
        out.script.borrow_mut().extend([full(), Ok(())]);
        let mut batch = UdpBatch::new(true);
        batch.push(&out, a(), &[1; 100]);
        batch.flush(&out);
        assert_eq!((out.sends.borrow().len(), *out.waits.borrow()), (2, 1));
        assert_eq!(batch.errors, 0);
        // Still full after the wait: no second wait, the datagrams are counted.
        out.script.borrow_mut().extend([full(), full()]);
        batch.push(&out, a(), &[1; 100]);
        batch.push(&out, a(), &[1; 100]);
        batch.flush(&out);
        assert_eq!((out.sends.borrow().len(), *out.waits.borrow()), (4, 2));
        assert_eq!(batch.errors, 2);
    }

    /// Counts writes; refuses them all when told to.
    #[derive(Default)]
    struct FakeTun {
        writes: RefCell<usize>,
        fail: RefCell<bool>,
    }

    impl Writes for FakeTun {
        fn write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
            assert!(iov[0].len() > gro::HEADER_LEN);
            *self.writes.borrow_mut() += 1;
            if *self.fail.borrow() {
                return Err(io::Error::from_raw_os_error(nix::libc::EIO));
            }
            Ok(iov.iter().map(|s| s.len()).sum())
        }
    }

    impl Packets for FakeTun {
        fn send(&self, packet: &[u8]) -> io::Result<usize> {
            *self.writes.borrow_mut() += 1;
            Ok(packet.len())
        }
        fn udp_offload(&self) -> bool {
            false
        }
    }

    /// Records the packets of each write (without their virtio header).
    #[derive(Default)]
    struct PacketLog(RefCell<Vec<Vec<u8>>>);

    impl Writes for PacketLog {
        fn write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
            let whole: Vec<u8> = iov.iter().flat_map(|s| s.iter().copied()).collect();
            self.0.borrow_mut().push(whole[gro::HEADER_LEN..].to_vec());
            Ok(whole.len())
        }
    }

    impl Packets for PacketLog {
        fn send(&self, packet: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().push(packet.to_vec());
            Ok(packet.len())
        }
        fn udp_offload(&self) -> bool {
            false
        }
    }

    /// Without offloads: refuses packets shorter than an IPv4 header, as the kernel does.
    struct PickyTun(PacketLog);

    impl Writes for PickyTun {
        fn write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
            self.0.write_vectored(iov)
        }
    }

    impl Packets for PickyTun {
        fn send(&self, packet: &[u8]) -> io::Result<usize> {
            if packet.len() < 20 {
                return Err(io::Error::from_raw_os_error(nix::libc::EINVAL));
            }
            self.0.send(packet)
        }
        fn udp_offload(&self) -> bool {
            false
        }
    }

    #[test]
    fn without_offloads_a_refused_packet_costs_only_itself() {
        let tun = PickyTun(PacketLog::default());
        let mut batch = TunBatch::new(false);
        batch.push(&tun, &[1; 60]);
        batch.push(&tun, &[2; 10]);
        batch.push(&tun, &[3; 60]);
        batch.flush(&tun);
        assert_eq!(*tun.0 .0.borrow(), [vec![1; 60], vec![3; 60]]);
        assert_eq!(batch.errors, 1);
    }

    #[test]
    fn tun_room_holds_exactly_what_was_committed_whatever_was_there_before() {
        let tun = PacketLog::default();
        let mut batch = TunBatch::new(true);
        batch.push(&tun, &[7; 1500]);
        batch.flush(&tun);
        // The same buffer again, shorter: nothing of the old packet is left in it.
        batch.room(&tun, 100)[..60].fill(5);
        batch.commit(60);
        // Room not committed is not written.
        batch.room(&tun, 100).fill(9);
        batch.flush(&tun);
        assert_eq!(*tun.0.borrow(), [vec![7; 1500], vec![5; 60]]);
    }

    #[test]
    fn tun_batches_are_written_when_full_or_flushed_and_failures_counted() {
        let tun = FakeTun::default();
        let mut batch = TunBatch::new(true);
        for _ in 0..IDEAL_BATCH_SIZE {
            batch.push(&tun, &[0x45; 60]);
        }
        assert_eq!(*tun.writes.borrow(), 0);
        // Packets that cannot be coalesced: one write each.
        batch.push(&tun, &[0x45; 60]);
        assert_eq!(*tun.writes.borrow(), IDEAL_BATCH_SIZE);
        batch.push(&tun, &[0x45; 60]);
        batch.flush(&tun);
        assert_eq!(*tun.writes.borrow(), IDEAL_BATCH_SIZE + 2);
        // A refused write is not retried.
        *tun.fail.borrow_mut() = true;
        batch.push(&tun, &[0x45; 60]);
        batch.push(&tun, &[0x45; 60]);
        batch.flush(&tun);
        assert_eq!(*tun.writes.borrow(), IDEAL_BATCH_SIZE + 4);
        assert_eq!(batch.errors, 2);
    }
}
