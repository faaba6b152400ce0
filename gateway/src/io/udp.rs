//! The underlay sockets: one IPv4 and one IPv6 (v6-only) UDP socket on the listen port.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};

pub struct Sockets {
    pub v4: UdpSocket,
    /// Absent when the node has IPv6 disabled.
    pub v6: Option<UdpSocket>,
    /// Whether the kernel coalesces received datagrams (UDP GRO) on both sockets.
    pub gro: bool,
    /// Whether to send runs of datagrams as one (UDP GSO); turned off if the kernel refuses.
    pub gso: bool,
}

impl Sockets {
    /// Binds both sockets; with `offload`, asks for UDP GRO (said once if refused).
    pub fn bind(port: u16, offload: bool) -> io::Result<Self> {
        let v4 = open(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
        let v6 = match open(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
            Ok(s) => Some(s),
            Err(e) if e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) => {
                tracing::warn!("IPv6 is not available on this node; listening on IPv4 only");
                None
            }
            Err(e) => return Err(e),
        };
        let mut gro = offload;
        for s in std::iter::once(&v4).chain(v6.as_ref()) {
            if gro {
                if let Err(e) = setsockopt(s, sockopt::UdpGroSegment, &true) {
                    tracing::warn!("UDP GRO unavailable ({e}); one datagram per receive");
                    gro = false;
                }
            }
        }
        Ok(Sockets {
            v4,
            v6,
            gro,
            gso: offload,
        })
    }

    /// The socket of `dst`'s family.
    pub fn for_dst(&self, dst: &SocketAddr) -> Option<&UdpSocket> {
        match dst {
            SocketAddr::V4(_) => Some(&self.v4),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
    }
}

fn open(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    set_buffers(&socket);
    // The kernel's count of datagrams dropped on a full receive buffer, with each datagram: where
    // UDP loss happens, from the socket itself (absent on old kernels: the count stays 0).
    let _ = setsockopt(&socket, sockopt::RxqOvfl, &1);
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}")))?;
    Ok(socket.into())
}

/// Socket buffers large enough for a burst of a fast TCP stream; the default (~200 KB) overflows
/// while the single-threaded loop is busy with the other direction. As root the `FORCE` variants
/// lift the `net.core.[rw]mem_max` cap; otherwise the capped size is what we get.
const SOCKET_BUFFER: usize = 4 << 20;

fn set_buffers(socket: &Socket) {
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    }
}

/// One receive: `len` bytes from `src`, cut into datagrams of `segment` bytes (the last may be
/// shorter) when the kernel coalesced a run (GRO).
pub struct Received {
    pub len: usize,
    pub segment: usize,
    pub src: SocketAddr,
    /// The socket's drops on a full receive buffer until this datagram was queued, when there
    /// were any (SO_RXQ_OVFL).
    pub overflows: Option<u32>,
}

/// Receives one datagram, or with GRO a run of coalesced ones from one sender.
/// `cmsg` is the caller's buffer for the control messages ([`cmsg_buffer`]), reused across
/// calls so that receiving allocates nothing.
// nix's recvmsg takes the control buffer as a Vec.
#[allow(clippy::ptr_arg)]
pub fn recv(sock: &UdpSocket, buf: &mut [u8], cmsg: &mut Vec<u8>) -> io::Result<Received> {
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};

    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let len = msg.bytes;
    let (mut segment, mut overflows) = (None, None);
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::UdpGroSegments(s) if s > 0 => segment = Some(s as usize),
                ControlMessageOwned::RxqOvfl(n) => overflows = Some(n),
                _ => {}
            }
        }
    }
    let src = msg.address.and_then(|a: SockaddrStorage| {
        if let Some(v4) = a.as_sockaddr_in() {
            Some(SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
        } else {
            a.as_sockaddr_in6()
                .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
        }
    });
    match src {
        Some(src) => Ok(Received {
            len,
            segment: segment.unwrap_or(len),
            src,
            overflows,
        }),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "datagram without a source address",
        )),
    }
}

/// A buffer large enough for the UDP GRO and the drop-count control messages.
pub fn cmsg_buffer() -> Vec<u8> {
    nix::cmsg_space!(i32, u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_receive_buffer_is_counted_with_the_next_datagram() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        setsockopt(&rx, sockopt::RcvBuf, &4096).unwrap();
        setsockopt(&rx, sockopt::RxqOvfl, &1).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        for _ in 0..200 {
            tx.send_to(&[7; 1000], to).unwrap();
        }
        let (mut buf, mut cmsg) = (vec![0; 2048], cmsg_buffer());
        let first = recv(&rx, &mut buf, &mut cmsg).unwrap();
        assert_eq!((first.len, first.segment), (1000, 1000));
        assert_eq!(first.src, tx.local_addr().unwrap());
        let mut received = 1;
        while recv(&rx, &mut buf, &mut cmsg).is_ok() {
            received += 1;
        }
        assert!(received < 200, "the buffer never filled");
        // The count rides on datagrams queued after the drops: the next one says.
        tx.send_to(&[8; 10], to).unwrap();
        let next = recv(&rx, &mut buf, &mut cmsg).unwrap();
        assert_eq!(next.len, 10);
        assert_eq!(next.overflows, Some(200 - received));
    }
}
