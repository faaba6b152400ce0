//! `liqonet-route-agent run --config FILE`: reconcile this node's routes to the gateway node at
//! start, within a second of a config change, and periodically; remove them on SIGTERM.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::{Parser, Subcommand};
use liqonet_proto::agent::AgentConfig;
use liqonet_route_agent::desired::desired;
use liqonet_route_agent::netlink::Netlink;
use liqonet_route_agent::reconcile::{cleanup, reconcile, Owned};

#[derive(Parser)]
#[command(
    name = "liqonet-route-agent",
    version,
    about = "liqonet's per-node routes to the gateway node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run from a standalone config file.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Leave routes, rules and the overlay device in place on exit (for a hitless restart).
        #[arg(long)]
        keep_on_exit: bool,
    },
}

fn main() -> ExitCode {
    let Command::Run {
        config,
        keep_on_exit,
    } = Cli::parse().command;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(&config, keep_on_exit) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("liqonet-route-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> anyhow::Result<AgentConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    AgentConfig::from_yaml(&text)
        .map_err(|e| anyhow::anyhow!("invalid configuration: {}:\n{e}", path.display()))
}

fn owned(c: &AgentConfig) -> Owned {
    Owned {
        table: c.table,
        priority: c.rule_priority,
        device: c.vxlan.device.clone(),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn run(path: &Path, keep_on_exit: bool) -> anyhow::Result<()> {
    let mut config = load(path)?;
    let nl = Netlink::new()?;
    let (mut signals, tx) = UnixStream::pair()?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(sig, tx.try_clone()?)?;
    }
    // The loop wakes at least once a second to look at the config file.
    signals.set_read_timeout(Some(Duration::from_secs(1)))?;
    tracing::info!(node = %config.node_name, gateway = %config.gateway_node, mode = ?config.mode, table = config.table, "route agent starting");

    let mut mtime = modified(path);
    let mut due = Instant::now();
    let mut last_error: Option<String> = None;
    let mut retry = Duration::from_secs(1);
    let mut first = true;
    loop {
        let now_mtime = modified(path);
        if now_mtime != mtime {
            mtime = now_mtime;
            match load(path) {
                Ok(new) => {
                    let (old, new_owned) = (owned(&config), owned(&new));
                    if old != new_owned {
                        // The agent's marks changed: what it owned under the old ones goes first.
                        if let Err(e) = cleanup(&nl, &old) {
                            tracing::warn!(
                                "cannot clean up the previous table/rules/device: {e:#}"
                            );
                        }
                    }
                    config = new;
                    tracing::info!("configuration reloaded");
                    due = Instant::now();
                }
                Err(e) => tracing::error!("{e:#}; keeping the previous configuration"),
            }
        }
        if Instant::now() >= due {
            let period = Duration::from_secs(u64::from(config.reconcile_seconds));
            match reconcile(&nl, &desired(&config), &owned(&config)) {
                Ok(ch) => {
                    if ch.any() || first {
                        tracing::info!(
                            added = ch.added,
                            removed = ch.removed,
                            "reconciled: in sync"
                        );
                    }
                    first = false;
                    if last_error.take().is_some() {
                        tracing::info!("reconciliation succeeds again");
                    }
                    retry = Duration::from_secs(1);
                    due = Instant::now() + period;
                }
                Err(e) => {
                    // Say each distinct problem once, then retry quietly with a growing delay.
                    let msg = format!("{e:#}");
                    if last_error.as_deref() != Some(&msg) {
                        tracing::warn!("reconciliation failed, will retry: {msg}");
                    }
                    last_error = Some(msg);
                    due = Instant::now() + retry;
                    retry = (retry * 2).min(period);
                }
            }
        }
        match signals.read(&mut [0u8; 16]) {
            Ok(_) => break,
            // Timed out: time to look at the file again. Interrupted: the signal's byte follows.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if keep_on_exit {
        tracing::info!("exiting; routes, rules and overlay device kept");
    } else {
        let ch = cleanup(&nl, &owned(&config))?;
        tracing::info!(
            removed = ch.removed,
            "exiting; routes, rules and overlay device removed"
        );
    }
    Ok(())
}
