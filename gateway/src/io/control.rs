//! How a new peer set reaches the running event loop without stalling it.
//!
//! Whatever is slow about a change — reading and parsing a config file, resolving endpoint
//! names, talking to the API server, installing routes — happens on the caller's thread. The
//! loop only swaps the engine's peers, which takes microseconds: it finds the set in a slot,
//! woken by a byte on a pipe it polls, and answers on a channel. Its buffers, fallbacks and
//! counters stay as they are.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use liqonet_proto::Cidr;

use super::dataplane::Dataplane;
use super::routes::Routes;
use crate::engine::{PeerChanges, PeerSpec};

/// How long a caller waits for the loop to take a peer set (it takes microseconds when running).
const LOOP_ANSWER: Duration = Duration::from_secs(10);

struct Request {
    peers: Vec<PeerSpec>,
    reply: SyncSender<Result<PeerChanges, String>>,
}

struct Shared {
    slot: Mutex<Option<Request>>,
    wake_rx: UnixStream,
    wake_tx: UnixStream,
    /// The routes into the TUN while the device exists; `None` before and after.
    routes: Mutex<Option<Routes>>,
    /// One change at a time, start to finish (peers, then their routes).
    one_at_a_time: Mutex<()>,
    /// The loop has ended and nothing is routed into the device any more (it may still exist).
    halted: (Mutex<bool>, Condvar),
}

/// The handle callers use to change the peers of a running (or starting) tunnel. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Control {
    pub fn new() -> std::io::Result<Self> {
        let (wake_rx, wake_tx) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        Ok(Control {
            shared: Arc::new(Shared {
                slot: Mutex::new(None),
                wake_rx,
                wake_tx,
                routes: Mutex::new(None),
                one_at_a_time: Mutex::new(()),
                halted: (Mutex::new(false), Condvar::new()),
            }),
        })
    }

    /// Makes `peers` the tunnel's peers and routes their networks into the TUN device. Blocks
    /// until done (call it off any async runtime). On an inconsistent set nothing changes.
    pub fn apply(&self, peers: Vec<PeerSpec>) -> Result<PeerChanges, String> {
        let _turn = lock(&self.shared.one_at_a_time);
        log_remapping(&peers);
        let wanted = routed_networks(&peers);
        let (reply, answer) = sync_channel(1);
        *lock(&self.shared.slot) = Some(Request { peers, reply });
        // A full pipe already holds a wake-up; the loop reads the slot either way.
        let _ = (&self.shared.wake_tx).write(&[1]);
        let changes = match answer.recv_timeout(LOOP_ANSWER) {
            Ok(result) => result?,
            Err(_) => {
                lock(&self.shared.slot).take();
                return Err("the data plane is not running".to_string());
            }
        };
        match lock(&self.shared.routes).as_mut() {
            Some(routes) => routes
                .sync(&wanted)
                .map_err(|e| format!("peers applied, but their routes are not: {e:#}"))?,
            None => return Err("the data plane stopped".to_string()),
        }
        Ok(changes)
    }

    /// The loop's side: the pipe to poll.
    pub(super) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.shared.wake_rx.as_fd()
    }

    /// The loop's side, when the pipe is readable: applies the waiting peer set, if any;
    /// whether it did.
    pub(super) fn take(&self, dataplane: &mut impl Dataplane) -> bool {
        let mut drain = [0u8; 64];
        while matches!((&self.shared.wake_rx).read(&mut drain), Ok(n) if n > 0) {}
        let Some(Request { peers, reply }) = lock(&self.shared.slot).take() else {
            return false;
        };
        let _ = reply.send(dataplane.apply_peers(peers));
        true
    }

    /// The device is up: routes go through `routes` from now on.
    pub(super) fn attach(&self, routes: Routes) {
        *lock(&self.shared.routes) = Some(routes);
    }

    /// The device is going: no more route changes; the caller removes what is installed.
    pub(super) fn detach(&self) -> Option<Routes> {
        // A request still in the slot gets its answer (a dropped channel) at once.
        lock(&self.shared.slot).take();
        lock(&self.shared.routes).take()
    }

    /// The loop's side: forwarding has stopped for good (routes gone, device down).
    pub(super) fn mark_halted(&self) {
        let (flag, changed) = &self.shared.halted;
        *lock(flag) = true;
        changed.notify_all();
    }

    /// Waits up to `limit` until forwarding has stopped for good; whether it has.
    pub fn wait_halted(&self, limit: Duration) -> bool {
        let (flag, changed) = &self.shared.halted;
        let guard = lock(flag);
        let (guard, _) = changed
            .wait_timeout_while(guard, limit, |halted| !*halted)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    /// Runs `f` on the attached routes (at start, before the loop).
    pub(super) fn with_routes<T>(
        &self,
        f: impl FnOnce(&mut Routes) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        match lock(&self.shared.routes).as_mut() {
            Some(r) => f(r),
            None => Err(anyhow::anyhow!("no TUN device")),
        }
    }
}

/// The prefixes routed into the TUN device: every peer network as home pods address it.
pub fn routed_networks(peers: &[PeerSpec]) -> Vec<Cidr> {
    peers
        .iter()
        .flat_map(|p| p.networks.iter().map(|n| n.remapped))
        .collect()
}

pub fn log_remapping(peers: &[PeerSpec]) {
    for p in peers {
        for n in p.networks.iter().filter(|n| n.cidr != n.remapped) {
            tracing::info!(peer = %p.name, cidr = %n.cidr, remapped = %n.remapped, "home pods reach {} as {}", n.cidr, n.remapped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use liqonet_proto::Key;

    #[test]
    fn a_peer_set_reaches_the_engine_only_through_the_loop_side() {
        let control = Control::new().unwrap();
        let mut engine = Engine::new(&Key::clamped([1; 32]), Vec::new(), 1420).unwrap();
        let caller = control.clone();
        let spec = PeerSpec {
            name: "foreign".into(),
            public_key: Key([9; 32]),
            endpoint: None,
            persistent_keepalive: None,
            networks: Vec::new(),
        };
        let t = std::thread::spawn(move || caller.apply(vec![spec]));
        // The loop's turn: wait for the wake-up, then take the set.
        let mut fds = [nix::poll::PollFd::new(
            control.wake_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).unwrap();
        control.take(&mut engine);
        // No device, so no routes: the engine has the peer, the caller hears why routes failed.
        let result = t.join().unwrap();
        assert_eq!(result.unwrap_err(), "the data plane stopped");
        assert!(!engine.peer_is_up("foreign"));
        let mut stats = Vec::new();
        engine.peer_stats(&mut stats);
        assert_eq!(stats.len(), 1);
    }
}
