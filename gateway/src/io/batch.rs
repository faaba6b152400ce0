//! Batches between the engine and the kernel: datagrams to one endpoint leave in one `sendmsg`
//! (UDP GSO), packets for the TUN leave in one coalesced write (TCP/UDP GRO through the TUN's
//! virtio header). Buffers are allocated once; pushing copies the engine's output into them.

use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
use tun_rs::{GROTable, SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::retry_when_full;
use super::udp::Sockets;

/// Segments per GSO send (the kernel's limit is 64).
const GSO_SEGMENTS: usize = 64;
/// Bytes per GSO send (one UDP datagram before segmentation).
const GSO_BYTES: usize = 65000;

/// Datagrams for one endpoint, laid end to end: all `segment` bytes long but the last.
pub struct UdpBatch {
    buf: Vec<u8>,
    len: usize,
    count: usize,
    segment: usize,
    dst: Option<SocketAddr>,
    /// Cleared (and said once) when the kernel refuses UDP_SEGMENT.
    pub gso: bool,
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

    pub fn push(&mut self, sockets: &Sockets, dst: SocketAddr, datagram: &[u8]) {
        let fits = self.dst == Some(dst)
            && self.gso
            && datagram.len() <= self.segment
            // Only the last segment may be shorter: after a short one, nothing more.
            && self.len == self.count * self.segment
            && self.count < GSO_SEGMENTS
            && self.len + datagram.len() <= GSO_BYTES;
        if !fits {
            self.flush(sockets);
            self.dst = Some(dst);
            self.segment = datagram.len();
        }
        self.buf[self.len..self.len + datagram.len()].copy_from_slice(datagram);
        self.len += datagram.len();
        self.count += 1;
    }

    pub fn flush(&mut self, sockets: &Sockets) {
        let (Some(dst), len) = (self.dst, self.len) else {
            return;
        };
        if len == 0 {
            return;
        }
        let Some(sock) = sockets.for_dst(&dst) else {
            self.errors += self.count as u64;
            self.reset();
            return;
        };
        let result = if self.count == 1 {
            send_one(sock, &self.buf[..len], dst)
        } else {
            let r = send_gso(sock, &self.buf[..len], self.segment, dst);
            if matches!(&r, Err(e) if e.raw_os_error() == Some(nix::libc::EIO) || e.raw_os_error() == Some(nix::libc::EINVAL))
            {
                // No UDP GSO here (or not for this route): send one by one from now on.
                tracing::warn!(
                    "UDP GSO refused by the kernel ({r:?}); sending datagrams one by one"
                );
                self.gso = false;
                let mut ok = Ok(());
                for chunk in self.buf[..len].chunks(self.segment) {
                    if let Err(e) = send_one(sock, chunk, dst) {
                        ok = Err(e);
                    }
                }
                ok
            } else {
                r
            }
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

fn send_one(sock: &UdpSocket, datagram: &[u8], dst: SocketAddr) -> io::Result<()> {
    retry_when_full(sock.as_fd(), || sock.send_to(datagram, dst))
}

fn send_gso(sock: &UdpSocket, buf: &[u8], segment: usize, dst: SocketAddr) -> io::Result<()> {
    let seg = segment as u16;
    let addr = SockaddrStorage::from(dst);
    retry_when_full(sock.as_fd(), || {
        let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
        sendmsg(
            sock.as_raw_fd(),
            &[IoSlice::new(buf)],
            &cmsg,
            MsgFlags::empty(),
            Some(&addr),
        )
        .map_err(io::Error::from)
    })
}

/// Packets for the TUN, written together so that tun-rs can coalesce TCP/UDP flows (GRO).
pub struct TunBatch {
    bufs: Vec<Vec<u8>>,
    count: usize,
    gro: GROTable,
    /// Bytes before each packet: room for the virtio header when offloads are on.
    offset: usize,
    pub errors: u64,
}

impl TunBatch {
    pub fn new(offload: bool) -> Self {
        let offset = if offload { VIRTIO_NET_HDR_LEN } else { 0 };
        TunBatch {
            // Coalescing grows the first packet of a flow: room for a whole 64 KB super-packet.
            bufs: (0..IDEAL_BATCH_SIZE)
                .map(|_| Vec::with_capacity(offset + 65535))
                .collect(),
            count: 0,
            gro: GROTable::new(),
            offset,
            errors: 0,
        }
    }

    pub fn push(&mut self, dev: &SyncDevice, packet: &[u8]) {
        if self.count == self.bufs.len() {
            self.flush(dev);
        }
        let b = &mut self.bufs[self.count];
        b.clear();
        b.resize(self.offset, 0);
        b.extend_from_slice(packet);
        self.count += 1;
    }

    pub fn flush(&mut self, dev: &SyncDevice) {
        if self.count == 0 {
            return;
        }
        let bufs = &mut self.bufs[..self.count];
        // Once: a TUN write does not block (the kernel queues or drops), and send_multiple
        // merges the buffers as it goes, so a second call would send merged packets again.
        let result = if self.offset > 0 {
            dev.send_multiple(&mut self.gro, bufs, self.offset)
                .map(|_| ())
        } else {
            bufs.iter().try_for_each(|b| dev.send(b).map(|_| ()))
        };
        if let Err(e) = result {
            self.errors += self.count as u64;
            tracing::debug!("TUN write failed: {e}");
        }
        self.count = 0;
    }
}
