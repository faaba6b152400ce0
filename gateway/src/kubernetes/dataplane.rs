//! The leader's tunnel on its own thread: the same device, sockets and event loop as standalone
//! mode. Peer sets arrive through a shared slot and a wake-up byte on the reload pipe, so the
//! data path takes no lock per packet; the answer goes back on a oneshot channel.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context;
use liqonet_proto::config::GatewayConfig;
use liqonet_proto::Key;
use tokio::sync::oneshot;

use super::controller::Peers;
use crate::engine::{Engine, PeerChanges, PeerSpec, PeerStats};
use crate::io::event_loop::Signals;
use crate::io::metrics_http::Snapshot;
use crate::io::serve::{apply_peers, serve};

type Reply = oneshot::Sender<Result<PeerChanges, String>>;

/// The newest peer set not yet applied, and everyone waiting for it (a newer set answers the
/// callers of the older ones too: it was planned from a fresher view).
#[derive(Default)]
struct Pending {
    peers: Option<Vec<PeerSpec>>,
    replies: Vec<Reply>,
}

pub struct Dataplane {
    stop: UnixStream,
    wake: UnixStream,
    pending: Arc<Mutex<Pending>>,
    snapshot: Snapshot,
    thread: Mutex<Option<JoinHandle<anyhow::Result<()>>>>,
}

impl Dataplane {
    /// Brings the tunnel up with no peers; the controller applies them. The receiver fires when
    /// the thread ends, for whatever reason.
    pub fn start(
        config: GatewayConfig,
        key: &Key,
        snapshot: Snapshot,
    ) -> anyhow::Result<(Self, oneshot::Receiver<()>)> {
        let mut engine = Engine::new(key, Vec::new(), config.mtu)?;
        let (stop_rx, stop) = UnixStream::pair()?;
        let (wake_rx, wake) = UnixStream::pair()?;
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (ended_tx, ended) = oneshot::channel();
        let shared = pending.clone();
        let published = snapshot.clone();
        let thread = std::thread::Builder::new()
            .name("data-plane".into())
            .spawn(move || {
                let mut signals = Signals {
                    stop: stop_rx,
                    reload: wake_rx,
                };
                let result = serve(
                    &config,
                    &mut engine,
                    &[],
                    &mut signals,
                    Some(&published),
                    |engine, routes| {
                        let Pending { peers, replies } =
                            std::mem::take(&mut *shared.lock().unwrap_or_else(|e| e.into_inner()));
                        let Some(peers) = peers else { return };
                        let result = apply_peers(engine, routes, peers);
                        for r in replies {
                            let _ = r.send(result.clone());
                        }
                    },
                );
                let _ = ended_tx.send(());
                result
            })
            .context("cannot start the data-plane thread")?;
        let dataplane = Dataplane {
            stop,
            wake,
            pending,
            snapshot,
            thread: Mutex::new(Some(thread)),
        };
        Ok((dataplane, ended))
    }

    /// Stops the event loop and waits until the device and routes are gone.
    pub fn stop(&self) -> anyhow::Result<()> {
        let _ = (&self.stop).write_all(&[1]);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        match thread.map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(anyhow::anyhow!("the data-plane thread panicked")),
            None => Ok(()),
        }
    }
}

impl Peers for Arc<Dataplane> {
    async fn apply(&self, peers: Vec<PeerSpec>) -> Result<PeerChanges, String> {
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.peers = Some(peers);
            p.replies.push(tx);
        }
        (&self.wake)
            .write_all(&[1])
            .map_err(|e| format!("cannot wake the data plane: {e}"))?;
        rx.await
            .map_err(|_| "the data plane stopped before applying the peers".to_string())?
    }

    fn stats(&self) -> Vec<PeerStats> {
        self.snapshot
            .lock()
            .map(|s| s.peers.clone())
            .unwrap_or_default()
    }
}
