//! What the event loop drives: the [`Engine`] in the gateway. The trait is the seam that lets
//! the bench's no-crypto relay (the I/O floor) run through the very same loop, batches and
//! devices, so that the two differ only in what happens to each packet.

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::engine::{DropReason, Engine, PeerChanges, PeerSpec, Sink};
use crate::metrics::{LoopCounters, Sample};
use crate::snapshot::Published;

// The engine's own names: where a packet comes from, not a conversion.
#[allow(clippy::wrong_self_convention)]
pub trait Dataplane {
    /// A packet read from the TUN (mutable, for rewriting in place).
    fn from_tun(&mut self, packet: &mut [u8], sink: &mut impl Sink);
    /// A datagram received from the underlay.
    fn from_network(&mut self, src: SocketAddr, datagram: &[u8], sink: &mut impl Sink);
    /// Timers; called every ~250 ms.
    fn tick(&mut self, sink: &mut impl Sink);
    /// A new peer set, from [`super::control::Control`].
    fn apply_peers(&mut self, peers: Vec<PeerSpec>) -> Result<PeerChanges, String>;
    /// Whether something changed that readers should see now, not at the next second.
    fn take_changed(&mut self) -> bool;
    /// Its state and counts, with the loop's own, into what the HTTP and API threads read
    /// (`drops` comes cleared: it adds its own).
    fn publish(&self, into: &mut Published, io: LoopCounters, at: SystemTime);
}

impl Dataplane for Engine {
    fn from_tun(&mut self, packet: &mut [u8], sink: &mut impl Sink) {
        Engine::from_tun(self, packet, sink)
    }

    fn from_network(&mut self, src: SocketAddr, datagram: &[u8], sink: &mut impl Sink) {
        Engine::from_network(self, src, datagram, sink)
    }

    fn tick(&mut self, sink: &mut impl Sink) {
        Engine::tick(self, sink)
    }

    fn apply_peers(&mut self, peers: Vec<PeerSpec>) -> Result<PeerChanges, String> {
        Engine::apply_peers(self, peers).map_err(|e| format!("{e}; the running peers stay"))
    }

    fn take_changed(&mut self) -> bool {
        self.take_up_changed()
    }

    fn publish(&self, s: &mut Published, io: LoopCounters, at: SystemTime) {
        s.drops.extend(
            DropReason::ALL
                .iter()
                .map(|r| (r.name(), self.counters().get(*r))),
        );
        self.peer_stats(&mut s.peers);
        s.totals.absorb(&Sample {
            engine: self.instance(),
            counters: self.counters(),
            under_load: self.under_load(),
            io,
            peers: &s.peers,
            at,
        });
    }
}
