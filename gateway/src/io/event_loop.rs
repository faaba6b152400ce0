//! One thread, one engine: poll the TUN, the UDP sockets and a signal pipe; drain whatever is
//! readable through the engine; run the engine's timers. No locks on the data path.

use std::io::{self, Read};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tun_rs::SyncDevice;

use super::metrics_http::Snapshot;
use super::udp::Sockets;
use crate::engine::{Engine, Sink, MAX_PACKET};

const TICK: Duration = Duration::from_millis(250);
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// Packets read from one source before looking at the others again (fairness).
const BURST: usize = 64;

/// The engine's [`Sink`]: writes to the devices. Counts what the kernel refuses.
struct Shell<'a> {
    tun: &'a SyncDevice,
    sockets: &'a Sockets,
    send_errors: u64,
    tun_write_errors: u64,
}

impl Sink for Shell<'_> {
    fn send_to_network(&mut self, dst: SocketAddr, datagram: &[u8]) {
        let Some(sock) = self.sockets.for_dst(&dst) else {
            self.send_errors += 1;
            return;
        };
        if let Err(e) = retry_when_full(sock.as_fd(), || sock.send_to(datagram, dst)) {
            self.send_errors += 1;
            tracing::debug!(%dst, "send failed: {e}");
        }
    }

    fn write_to_tun(&mut self, packet: &[u8]) {
        if let Err(e) = retry_when_full(self.tun.as_fd(), || self.tun.send(packet)) {
            self.tun_write_errors += 1;
            tracing::debug!("TUN write failed: {e}");
        }
    }
}

/// Non-blocking write that waits (briefly) for room instead of dropping when a buffer is full.
fn retry_when_full(
    fd: BorrowedFd<'_>,
    mut write: impl FnMut() -> io::Result<usize>,
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

/// Runs until SIGINT or SIGTERM arrives on `signals`.
pub fn run(
    engine: &mut Engine,
    tun: &SyncDevice,
    sockets: &Sockets,
    mut signals: UnixStream,
    metrics: Option<Snapshot>,
) -> io::Result<()> {
    let mut shell = Shell {
        tun,
        sockets,
        send_errors: 0,
        tun_write_errors: 0,
    };
    let mut buf = vec![0u8; MAX_PACKET];
    let mut next_tick = Instant::now();
    let mut next_metrics = Instant::now();
    let v6 = sockets.v6.as_ref();
    loop {
        let now = Instant::now();
        if now >= next_tick {
            engine.tick(&mut shell);
            next_tick = now + TICK;
        }
        if let Some(snapshot) = &metrics {
            if now >= next_metrics {
                publish(engine, &shell, snapshot);
                next_metrics = now + METRICS_EVERY;
            }
        }
        let wait = next_tick.saturating_duration_since(Instant::now());
        let wait = PollTimeout::try_from(wait.as_millis().min(1000) as i32 + 1)
            .unwrap_or(PollTimeout::NONE);
        // Without IPv6 the last slot polls the signal pipe for nothing, keeping the set fixed-size.
        let (v6_fd, v6_events) = match v6 {
            Some(s) => (s.as_fd(), PollFlags::POLLIN),
            None => (signals.as_fd(), PollFlags::empty()),
        };
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(tun.as_fd(), PollFlags::POLLIN),
            PollFd::new(sockets.v4.as_fd(), PollFlags::POLLIN),
            PollFd::new(v6_fd, v6_events),
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
            let mut b = [0u8; 16];
            let _ = signals.read(&mut b);
            tracing::info!("signal received, shutting down");
            return Ok(());
        }
        if ready[1] {
            for _ in 0..BURST {
                match tun.recv(&mut buf) {
                    Ok(n) => engine.from_tun(&mut buf[..n], &mut shell),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(io::Error::new(e.kind(), format!("TUN read: {e}"))),
                }
            }
        }
        if ready[2] {
            drain_udp(&sockets.v4, engine, &mut shell, &mut buf);
        }
        if let (Some(s), true) = (v6, ready[3]) {
            drain_udp(s, engine, &mut shell, &mut buf);
        }
    }
}

fn drain_udp(sock: &UdpSocket, engine: &mut Engine, shell: &mut Shell<'_>, buf: &mut [u8]) {
    for _ in 0..BURST {
        match sock.recv_from(buf) {
            Ok((n, src)) => engine.from_network(src, &buf[..n], shell),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // ICMP errors for earlier sends surface here (ECONNREFUSED...); they are not fatal.
            Err(e) => {
                tracing::debug!("UDP receive: {e}");
                break;
            }
        }
    }
}

fn publish(engine: &Engine, shell: &Shell<'_>, snapshot: &Snapshot) {
    let mut text = String::with_capacity(4096);
    engine.render_metrics(&mut text);
    use std::fmt::Write;
    let _ = writeln!(
        text,
        "liqonet_underlay_send_errors_total {}",
        shell.send_errors
    );
    let _ = writeln!(
        text,
        "liqonet_tun_write_errors_total {}",
        shell.tun_write_errors
    );
    if let Ok(mut s) = snapshot.lock() {
        *s = text;
    }
}
