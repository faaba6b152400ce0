//! `liqonet-route-agent run`: reconcile this node's routes to the gateway node at start, at once
//! when the configuration changes, on SIGHUP or when the kernel reports a change to them, and
//! periodically; remove them on SIGTERM. The configuration is a standalone file (`--config`,
//! looked at every second and re-read on SIGHUP) or derived from the cluster (`--kubernetes`:
//! TunnelEndpoints and Nodes, watched). Each pass is published as metrics and a report, served
//! at `metricsAddress` (`--metrics-address`); `liqonet-route-agent status` reads the report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use clap::{Parser, Subcommand};
use liqonet_proto::agent::AgentConfig;
use liqonet_route_agent::agent_loop::{self, owned, Source, Update, Wakeups};
use liqonet_route_agent::kubernetes::{self, KubeArgs};
use liqonet_route_agent::metrics::{Telemetry, DEFAULT_PORT};
use liqonet_route_agent::monitor::Monitor;
use liqonet_route_agent::netlink::Netlink;
use liqonet_route_agent::reconcile::Owned;
use liqonet_route_agent::signals::Signals;
use liqonet_route_agent::status;

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
    /// Run from a standalone config file, or in Kubernetes mode.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["config", "kubernetes"])))]
    Run {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Derive the configuration from TunnelEndpoints and Nodes.
        #[arg(long)]
        kubernetes: bool,
        #[command(flatten)]
        kube: KubeArgs,
        /// Leave routes, rules and the overlay device in place on exit (for a hitless restart).
        #[arg(long)]
        keep_on_exit: bool,
    },
    /// What the agent running on this node says about its last reconciliation: mode, gateway
    /// node, table and rules, routes desired and installed (those missing listed), when it ran
    /// and what failed. Exit status 1 when routes are missing or the last pass failed, 2 when the
    /// agent cannot be reached.
    Status {
        /// Where the agent serves (its metricsAddress or --metrics-address) [default: 127.0.0.1:9742]
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "config")]
        address: Option<String>,
        /// Take the address from this standalone config file's metricsAddress.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// `text`, or `json` for scripts.
        #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
}

fn main() -> ExitCode {
    let (config, kube, keep_on_exit) = match Cli::parse().command {
        Command::Run {
            config,
            kube,
            keep_on_exit,
            ..
        } => (config, kube, keep_on_exit),
        Command::Status {
            address,
            config,
            output,
        } => return status_command(address.as_deref(), config.as_deref(), output == "json"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // kube's client logs every failed request at ERROR; the callers here report
                // API failures once, with what they were doing.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
                }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match config {
        Some(path) => run_file(&path, keep_on_exit),
        None => run_kubernetes(kube, keep_on_exit),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("liqonet-route-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where `status` finds the agent: `--address`, the file's `metricsAddress`, or the default.
fn status_address(address: Option<&str>, config: Option<&Path>) -> anyhow::Result<SocketAddr> {
    match (address, config) {
        (Some(a), _) => status::resolve(a),
        (None, Some(path)) => load(path)?
            .metrics_address
            .map(|a| status::reachable(a.0))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} sets no metricsAddress: the agent it configures serves no status",
                    path.display()
                )
            }),
        (None, None) => Ok(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))),
    }
}

fn status_command(address: Option<&str>, config: Option<&Path>, json: bool) -> ExitCode {
    let report = status_address(address, config).and_then(status::fetch);
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("liqonet-route-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("liqonet-route-agent: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", status::render(&report));
    }
    if status::healthy(&report) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn load(path: &Path) -> anyhow::Result<AgentConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    AgentConfig::from_yaml(&text)
        .map_err(|e| anyhow::anyhow!("invalid configuration: {}:\n{e}", path.display()))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The standalone file, reloaded when its modification time changes.
struct FileSource {
    path: PathBuf,
    mtime: Option<SystemTime>,
    /// The metricsAddress bound at start.
    metrics_address: Option<SocketAddr>,
}

impl FileSource {
    fn read(&mut self) -> Update {
        self.mtime = modified(&self.path);
        match load(&self.path) {
            Ok(c) => {
                let wanted = c.metrics_address.map(|a| a.0);
                if wanted != self.metrics_address {
                    tracing::warn!(
                        "metricsAddress changed to {}: it takes effect when the agent restarts",
                        wanted.map_or("none".to_string(), |a| a.to_string())
                    );
                }
                Update::Config(Some(c))
            }
            Err(e) => Update::Invalid(format!("{e:#}")),
        }
    }
}

impl Source for FileSource {
    fn poll(&mut self) -> Option<Update> {
        (modified(&self.path) != self.mtime).then(|| self.read())
    }

    fn reload(&mut self) -> Option<Update> {
        Some(self.read())
    }
}

/// Watches the kernel for changes to what the agent owns; without it (the subscription was
/// refused) repairs wait for the periodic pass.
fn monitor(marks: &Owned) -> Option<Monitor> {
    Monitor::spawn(marks)
        .inspect_err(|e| {
            tracing::warn!(
                "cannot watch the kernel for changes, repairs will be periodic only: {e:#}"
            )
        })
        .ok()
}

fn run_file(path: &Path, keep_on_exit: bool) -> anyhow::Result<()> {
    let config = load(path)?;
    let nl = Netlink::new()?;
    let telemetry = Telemetry::new();
    let metrics_address = config.metrics_address.map(|a| a.0);
    if let Some(addr) = metrics_address {
        telemetry.serve(addr, "metricsAddress")?;
    }
    let signals = Signals::register()?;
    tracing::info!(node = %config.node_name, gateway = %config.gateway_node, mode = ?config.mode, table = config.table, "route agent starting");
    let mut source = FileSource {
        path: path.to_owned(),
        mtime: modified(path),
        metrics_address,
    };
    let marks = owned(&config);
    let monitor = monitor(&marks);
    let wakeups = Wakeups {
        stop: &signals.stop,
        reload: Some(&signals.reload),
        source: None,
        monitor: monitor.as_ref(),
    };
    agent_loop::run(
        &nl,
        Some(config),
        marks,
        &mut source,
        wakeups,
        &telemetry,
        keep_on_exit,
    )
}

fn run_kubernetes(args: KubeArgs, keep_on_exit: bool) -> anyhow::Result<()> {
    let node = args
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--node-name (LIQONET_NODE_NAME) is required in Kubernetes mode (the manifests set it from the downward API)"))?;
    let nl = Netlink::new()?;
    let telemetry = Telemetry::new();
    telemetry.serve(args.metrics_address, "--metrics-address")?;
    let signals = Signals::register()?;
    let marks = Owned {
        table: args.table,
        priority: args.rule_priority,
        device: args.vxlan_device.clone(),
    };
    tracing::info!(node = %node, namespace = %args.namespace, mode = ?args.mode, table = args.table, "route agent starting (Kubernetes)");
    let (mut source, wake) = kubernetes::spawn(args, node)?;
    let monitor = monitor(&marks);
    // SIGHUP reconciles at once; the configuration itself is always the cluster's current one.
    let wakeups = Wakeups {
        stop: &signals.stop,
        reload: Some(&signals.reload),
        source: Some(&wake),
        monitor: monitor.as_ref(),
    };
    agent_loop::run(
        &nl,
        None,
        marks,
        &mut source,
        wakeups,
        &telemetry,
        keep_on_exit,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
