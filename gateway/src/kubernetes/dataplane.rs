//! The leader's tunnel on its own thread: the same device, sockets and event loop as standalone
//! mode. Peer sets reach it through [`Control`], applied on a blocking thread of the runtime, so
//! neither the data path nor the controller's runtime waits on the other.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use liqonet_proto::config::GatewayConfig;
use liqonet_proto::Key;
use tokio::sync::oneshot;

use super::controller::Peers;
use crate::engine::{Engine, PeerChanges, PeerSpec, PeerStats};
use crate::io::control::Control;
use crate::io::serve::serve;
use crate::snapshot::Snapshot;

pub struct Dataplane {
    stop: UnixStream,
    control: Control,
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
        engine.set_probing(config.probes.into());
        let key = *key;
        let (stop_rx, stop) = UnixStream::pair()?;
        let control = Control::new()?;
        let (ended_tx, ended) = oneshot::channel();
        let loop_control = control.clone();
        let published = snapshot.clone();
        let thread = std::thread::Builder::new()
            .name("data-plane".into())
            .spawn(move || {
                let result = serve(
                    &config,
                    &key,
                    &mut engine,
                    &[],
                    &stop_rx,
                    &loop_control,
                    Some(&published),
                );
                let _ = ended_tx.send(());
                result
            })
            .context("cannot start the data-plane thread")?;
        let dataplane = Dataplane {
            stop,
            control,
            snapshot,
            thread: Mutex::new(Some(thread)),
        };
        Ok((dataplane, ended))
    }
    /// Stops the event loop and waits (up to 5 s) until forwarding has stopped for good: the
    /// routes are gone and the device is down, but may not be removed yet.
    pub fn halt(&self) {
        let _ = (&self.stop).write_all(&[1]);
        let finished = || {
            self.thread
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_none_or(JoinHandle::is_finished)
        };
        // A loop that failed to start never halts: its thread ends instead.
        for _ in 0..50 {
            if self.control.wait_halted(Duration::from_millis(100)) || finished() {
                return;
            }
        }
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
        let control = self.control.clone();
        tokio::task::spawn_blocking(move || control.apply(peers))
            .await
            .map_err(|e| format!("applying the peers failed: {e}"))?
    }

    fn stats(&self) -> Vec<PeerStats> {
        self.snapshot
            .lock()
            .map(|s| s.peers.clone())
            .unwrap_or_default()
    }
}
