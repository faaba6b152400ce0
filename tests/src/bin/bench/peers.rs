//! What the end-to-end bench measures: plain routing, liqonet and the userspace WireGuards it is
//! compared with, each with the binary it runs and that binary's version.

use std::path::{Path, PathBuf};
use std::process::Command;

use liqonet_lab::GatewayKind;

/// The wireguard-go release tests/peers/wireguard-go/go.mod pins (its pseudo-version names the
/// commit, not the release); the bench names the peer after it before it is built.
pub const WIREGUARD_GO_RELEASE: &str = "0.0.20250522";

/// Finds an implementation's binary and version, or says why it cannot be run.
type Find = fn(&str) -> Result<Subject, String>;

pub struct Subject {
    pub name: String,
    pub kind: GatewayKind,
    /// The wireguard-go binary, for `GatewayKind::WireguardGo`.
    pub wireguard_go: Option<PathBuf>,
    pub version: String,
}

/// An implementation the bench cannot run, and why.
pub struct Missing {
    pub name: String,
    pub reason: String,
}

/// The implementations whose name `wanted` accepts, in the order the table lists them.
pub fn subjects(wanted: impl Fn(&str) -> bool) -> Vec<Result<Subject, Missing>> {
    let current = format!("wireguard-go-{WIREGUARD_GO_RELEASE}");
    let all: [(&str, Find); 6] = [
        ("plain routing", plain),
        ("liqonet-relay (no crypto)", relay),
        ("liqonet", liqonet),
        (&current, wireguard_go_current),
        ("wireguard-go-debian", wireguard_go_debian),
        ("boringtun-cli", boringtun_cli),
    ];
    all.into_iter()
        .filter(|(name, _)| wanted(name))
        .map(|(name, find)| {
            find(name).map_err(|reason| Missing {
                name: name.into(),
                reason,
            })
        })
        .collect()
}

fn subject(name: &str, kind: GatewayKind, bin: Option<PathBuf>, version: String) -> Subject {
    Subject {
        name: name.into(),
        kind,
        wireguard_go: bin,
        version,
    }
}

fn plain(name: &str) -> Result<Subject, String> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = format!("Linux {}", kernel.trim());
    Ok(subject(name, GatewayKind::Plain, None, version))
}

fn liqonet(name: &str) -> Result<Subject, String> {
    let gateway = liqonet_lab::lab::bin_dir()
        .map_err(|e| format!("{e:#}"))?
        .join("liqonet-gateway");
    let mut version = first_line(&gateway, &["--version"])?;
    // The commit says which data path was measured better than the crate version does.
    if let Ok(commit) = first_line(Path::new("git"), &["describe", "--always", "--dirty"]) {
        version = format!("{version} ({commit})");
    }
    Ok(subject(name, GatewayKind::Liqonet, None, version))
}

/// The I/O floor: the gateway's loop without crypto (benches/src/bin/relay.rs).
fn relay(name: &str) -> Result<Subject, String> {
    let bin = liqonet_lab::lab::bin_dir()
        .map_err(|e| format!("{e:#}"))?
        .join("liqonet-relay");
    if !bin.exists() {
        return Err(format!(
            "{} is not built (cargo build --release -p liqonet-benches --bin liqonet-relay)",
            bin.display()
        ));
    }
    Ok(subject(
        name,
        GatewayKind::Relay,
        None,
        "liqonet-gateway's io/ with no crypto".into(),
    ))
}

/// The pinned release, built from its Go module: `LIQONET_WIREGUARD_GO` names the binary
/// (`make bench` builds it first; empty when the build failed), else scripts/wireguard-go.sh
/// builds it now. Never the `wireguard-go` on the PATH.
fn wireguard_go_current(name: &str) -> Result<Subject, String> {
    let bin = match std::env::var_os("LIQONET_WIREGUARD_GO") {
        Some(p) if p.is_empty() => {
            return Err("not built: scripts/wireguard-go.sh failed (its output is above)".into())
        }
        Some(p) => PathBuf::from(p),
        None => {
            eprintln!("== building wireguard-go {WIREGUARD_GO_RELEASE}");
            liqonet_lab::peers::pinned_wireguard_go().map_err(|e| format!("not built: {e}"))?
        }
    };
    let version = first_line(&bin, &["--version"])?;
    let release = version.trim_start_matches("wireguard-go v");
    let name = if release == WIREGUARD_GO_RELEASE {
        name.to_string()
    } else {
        format!("wireguard-go-{release}")
    };
    Ok(subject(&name, GatewayKind::WireguardGo, Some(bin), version))
}

/// Debian's wireguard-go (2022, before its TUN and UDP offloads): history, for comparison.
fn wireguard_go_debian(name: &str) -> Result<Subject, String> {
    let version = first_line(Path::new("wireguard-go"), &["--version"])?;
    Ok(subject(name, GatewayKind::WireguardGo, None, version))
}

fn boringtun_cli(name: &str) -> Result<Subject, String> {
    // Where the lab looks for it (`Lab::tool`): `make bench` installs it into target/tools.
    let bin = std::env::var_os("BORINGTUN_CLI")
        .map(PathBuf::from)
        .or_else(|| {
            let local = liqonet_lab::lab::bin_dir()
                .ok()?
                .join("../tools/bin/boringtun-cli");
            local.exists().then_some(local)
        })
        .unwrap_or_else(|| PathBuf::from("boringtun-cli"));
    let version = first_line(&bin, &["--version"])?;
    Ok(subject(name, GatewayKind::BoringtunCli, None, version))
}

/// The first line a program prints, or why it could not be run.
fn first_line(program: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if !out.status.success() {
        return Err(format!("{} {} failed", program.display(), args.join(" ")));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string())
}
