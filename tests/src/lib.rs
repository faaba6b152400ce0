//! The lab: clusters made of network namespaces, joined by a WAN bridge, with real gateways
//! (liqonet or wireguard-go) and real tools (ping, curl, iperf3). Used by the demo and the tests.
//!
//! Every namespace carries a per-lab prefix (`lq<pid>x<n>-`), so labs run side by side. A lab is
//! torn down when dropped (also while a failing test unwinds); labs left by killed processes are
//! swept when the next lab starts.

pub mod agent_scale;
pub mod attack;
pub mod bad_configs;
pub mod image;
pub mod kube;
pub mod kube_mock;
pub mod lab;
pub mod netns;
pub mod outage;
pub mod peers;
pub mod probe;
pub mod procfs;
pub mod rtnl;
pub mod under_flood;

pub use lab::{Cluster, ClusterSpec, GatewayKind, Lab, LabSpec, Underlay};

/// Removes this process's labs and exits when SIGINT or SIGTERM arrives (for the binaries;
/// tests rely on `Drop`).
pub fn teardown_on_signal() {
    use std::io::Read;
    let Ok((mut rx, tx)) = std::os::unix::net::UnixStream::pair() else {
        return;
    };
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Ok(tx) = tx.try_clone() {
            let _ = signal_hook::low_level::pipe::register(sig, tx);
        }
    }
    std::thread::spawn(move || {
        let _ = rx.read(&mut [0u8; 1]);
        eprintln!("\ninterrupted: tearing the lab down");
        netns::remove_prefixed(&format!("lq{}x", std::process::id()));
        std::process::exit(130);
    });
}
