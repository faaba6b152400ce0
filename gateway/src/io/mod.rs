//! The I/O shell around the engine: devices, sockets, netlink, signals. Thin on purpose.

pub mod batch;
pub mod control;
pub mod event_loop;
pub mod metrics_http;
pub mod routes;
pub mod serve;
pub mod tun;
pub mod udp;

use std::io;
use std::os::fd::BorrowedFd;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// A non-blocking send that waits (briefly, once) for room instead of dropping when the socket
/// buffer is full: a burst that outruns the NIC is held back rather than lost.
pub(crate) fn retry_when_full<T>(
    fd: BorrowedFd<'_>,
    mut write: impl FnMut() -> io::Result<T>,
) -> io::Result<()> {
    match write() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
            poll(&mut fds, PollTimeout::from(100u16))?;
            write().map(|_| ())
        }
        other => other.map(|_| ()),
    }
}
