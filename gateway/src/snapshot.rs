//! What the data-path loop publishes for everyone outside it: the HTTP endpoint (`/metrics`,
//! `/healthz`, `/readyz`), the WireGuard userspace API and `status`, the Kubernetes controller.
//! The loop writes it once a second (and at once when a peer goes up or down); readers copy what
//! they need, so none of them ever waits on, or stalls, the data path.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::engine::PeerStats;
use crate::metrics::Totals;

/// What the event loop publishes for readers outside the data path.
#[derive(Debug, Default)]
pub struct Published {
    /// The counters of every data plane this process ran, for `/metrics`.
    pub totals: Totals,
    pub peers: Vec<PeerStats>,
    /// The tunnel is up on this replica.
    pub ready: bool,
    /// When the data-path loop last published (while it runs).
    pub loop_turned: Option<Instant>,
    /// The same moment on the wall clock: session ages become absolute handshake times.
    pub published_at: Option<std::time::SystemTime>,
    /// Packets dropped, by reason.
    pub drops: Vec<(&'static str, u64)>,
    /// Kubernetes mode: this replica's identity in the Lease. `/healthz` names it and whether
    /// the replica carries the tunnel, so a follower checking an expired Lease's holder knows it
    /// reached that holder (not a newer pod on the same node) and that it still leads.
    pub identity: Option<String>,
    /// Kubernetes mode: whether this replica could lead or leads, for `/readyz`.
    pub election: Election,
}

/// A replica's part in the election, as `/readyz` judges it: every healthy replica is ready (a
/// DaemonSet rollout waits for that), the leader once its data plane is up, none from SIGTERM.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Election {
    /// The election loop runs and has read the Lease at least once (the key is loaded before
    /// it starts). An API outage later does not undo it.
    pub campaigning: bool,
    /// The Lease elected this replica.
    pub leading: bool,
    /// SIGTERM arrived.
    pub stopping: bool,
}

impl Published {
    /// `/readyz`: standalone, the tunnel is up; in Kubernetes mode, see [`Election`].
    pub fn ready_to_serve(&self) -> bool {
        if self.identity.is_none() {
            return self.ready;
        }
        let e = self.election;
        e.campaigning && !e.stopping && (!e.leading || self.ready)
    }
}

pub type Snapshot = Arc<Mutex<Published>>;
