//! The underlay sockets: one IPv4 and one IPv6 (v6-only) UDP socket on the listen port.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

pub struct Sockets {
    pub v4: UdpSocket,
    /// Absent when the node has IPv6 disabled.
    pub v6: Option<UdpSocket>,
}

impl Sockets {
    pub fn bind(port: u16) -> io::Result<Self> {
        let v4 = open(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
        let v6 = match open(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
            Ok(s) => Some(s),
            Err(e) if e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) => {
                tracing::warn!("IPv6 is not available on this node; listening on IPv4 only");
                None
            }
            Err(e) => return Err(e),
        };
        Ok(Sockets { v4, v6 })
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
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    }
}
