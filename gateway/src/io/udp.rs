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

/// Receives one datagram, or with GRO a run of coalesced ones from one sender: returns the
/// bytes read, the segment size (the length of each but the last), and the sender.
/// `cmsg` is the caller's buffer for the GRO control message ([`cmsg_buffer`]), reused across
/// calls so that receiving allocates nothing.
// nix's recvmsg takes the control buffer as a Vec.
#[allow(clippy::ptr_arg)]
pub fn recv(
    sock: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
) -> io::Result<(usize, usize, SocketAddr)> {
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
    let n = msg.bytes;
    let segment = msg
        .cmsgs()
        .ok()
        .and_then(|mut c| {
            c.find_map(|m| match m {
                ControlMessageOwned::UdpGroSegments(s) => Some(s as usize),
                _ => None,
            })
        })
        .filter(|s| *s > 0)
        .unwrap_or(n);
    let src = msg.address.and_then(|a: SockaddrStorage| {
        if let Some(v4) = a.as_sockaddr_in() {
            Some(SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
        } else {
            a.as_sockaddr_in6()
                .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
        }
    });
    match src {
        Some(src) => Ok((n, segment, src)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "datagram without a source address",
        )),
    }
}

/// A buffer large enough for the UDP GRO control message.
pub fn cmsg_buffer() -> Vec<u8> {
    nix::cmsg_space!(i32)
}
