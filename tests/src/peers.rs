//! Where the stock WireGuard implementations the lab runs beside liqonet come from.

use std::path::{Path, PathBuf};
use std::process::Command;

/// wireguard-go at the release tests/peers/wireguard-go pins, built from its Go module by
/// scripts/wireguard-go.sh (a no-op once built): the binary's path, or the build's last lines.
pub fn pinned_wireguard_go() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/wireguard-go.sh");
    let out = Command::new(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(tail.join(" / "));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}
