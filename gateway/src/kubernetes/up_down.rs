//! Peers going up or down on this replica's data plane, as a stream of triggers: the controller
//! reconciles every TunnelEndpoint on each, so their phases follow the probes within a fraction
//! of a second instead of at the next status period. Read from the snapshot the event loop
//! publishes (at once on such a change), so the data path never waits on the API.

use std::time::Duration;

use futures::Stream;

use crate::snapshot::{Published, Snapshot};

/// How often the snapshot is looked at.
const POLL: Duration = Duration::from_millis(200);

/// Yields once each time the set of peers that are up changes.
pub fn changes(snapshot: Snapshot) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold((snapshot, up_of(None)), |(snapshot, mut last)| async move {
        loop {
            tokio::time::sleep(POLL).await;
            let now = up_of(snapshot.lock().ok().as_deref());
            if now != last {
                last = now;
                return Some(((), (snapshot, last)));
            }
        }
    })
}

/// The peers, each with whether it is up, in the order the loop published them.
fn up_of(published: Option<&Published>) -> Vec<(String, bool)> {
    published
        .map(|p| p.peers.iter().map(|s| (s.name.clone(), s.up)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::PeerStats;
    use futures::StreamExt;

    fn peer(up: bool) -> PeerStats {
        PeerStats {
            name: "foreign".into(),
            public_key: liqonet_proto::Key([1; 32]),
            persistent_keepalive: None,
            networks: Vec::new(),
            last_handshake_age: None,
            endpoint: None,
            rx_bytes: 0,
            tx_bytes: 0,
            up,
            latency: Default::default(),
            rtt_histogram: Default::default(),
            incarnation: 1,
        }
    }

    #[tokio::test]
    async fn a_peer_going_down_and_up_triggers_and_traffic_does_not() {
        let snapshot = Snapshot::default();
        let mut changes = Box::pin(changes(snapshot.clone()));
        let set = |up: bool, rx: u64| {
            let mut s = snapshot.lock().unwrap();
            s.peers = vec![PeerStats {
                rx_bytes: rx,
                ..peer(up)
            }];
        };
        set(true, 1);
        assert_eq!(changes.next().await, Some(()));
        // Counters move: no trigger within a few polls.
        set(true, 2);
        let quiet = tokio::time::timeout(POLL * 5, changes.next()).await;
        assert!(quiet.is_err());
        set(false, 3);
        assert_eq!(changes.next().await, Some(()));
        set(true, 4);
        assert_eq!(changes.next().await, Some(()));
    }
}
