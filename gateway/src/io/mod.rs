//! The I/O shell around the engine: devices, sockets, netlink, signals. Thin on purpose.

pub mod batch;
pub mod event_loop;
pub mod metrics_http;
pub mod routes;
pub mod serve;
pub mod tun;
pub mod udp;

use std::io;
use std::os::fd::BorrowedFd;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// A non-blocking write that waits (briefly) for room instead of dropping when a buffer is full.
pub(crate) fn retry_when_full<T>(
    fd: BorrowedFd<'_>,
    mut write: impl FnMut() -> io::Result<T>,
) -> io::Result<()> {
    for _ in 0..2 {
        match write() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
                poll(&mut fds, PollTimeout::from(100u16))?;
            }
            other => return other.map(|_| ()),
        }
    }
    Err(io::ErrorKind::WouldBlock.into())
}
