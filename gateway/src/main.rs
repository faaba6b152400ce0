//! `liqonet-gateway`: key tools and the standalone gateway.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use liqonet_gateway::engine::Engine;
use liqonet_gateway::io::control::{log_remapping, routed_networks, Control};
use liqonet_gateway::io::metrics_http;
use liqonet_gateway::io::serve::serve;
use liqonet_gateway::kubernetes::{self, peering as kube_peering, KubeSettings};
use liqonet_gateway::{keys, peering, settings};
use liqonet_proto::Key;

#[derive(Parser)]
#[command(
    name = "liqonet-gateway",
    version,
    about = "liqonet's WireGuard gateway between clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new private key (base64, as `wg genkey`).
    Genkey,
    /// Read a private key on stdin and print its public key (as `wg pubkey`).
    Pubkey,
    /// Run the gateway: from a standalone config file, or in Kubernetes mode.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["config", "kubernetes"])))]
    Run {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Peers from TunnelEndpoints, keys from a Secret, leader elected by a Lease.
        #[arg(long)]
        kubernetes: bool,
        #[command(flatten)]
        settings: Box<KubeSettings>,
    },
    /// Print this cluster's peering information (key, endpoint, exported networks) as YAML.
    PeeringInfo {
        #[command(flatten)]
        target: Target,
        /// How the other cluster reaches this gateway (HOST:PORT). Standalone: without it, the
        /// other side only answers. Kubernetes: without it, the gateway Service tells.
        #[arg(long, value_name = "HOST:PORT")]
        endpoint: Option<String>,
    },
    /// Print the TunnelEndpoint CustomResourceDefinition (as deploy/base/crds/ holds it).
    Crd,
    /// What the gateway running on this node says about each peer (phase, endpoint, networks,
    /// handshake, latency, loss, traffic, drops); with --kubernetes, every TunnelEndpoint of the
    /// cluster. Exit status 1 when a peer is down.
    Status {
        /// The gateway's interface (its socket is /var/run/wireguard/INTERFACE.sock).
        #[arg(long, default_value = "liqo0", conflicts_with_all = ["config", "kubernetes"])]
        interface: String,
        /// Take the interface from this standalone config file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// List the cluster's TunnelEndpoints from the API instead.
        #[arg(long)]
        kubernetes: bool,
        /// The gateway's namespace (Kubernetes).
        #[arg(long, default_value = "liqonet")]
        namespace: String,
        /// `text`, or `json` for scripts.
        #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Check this node for what commonly breaks a peering: forwarding, rp_filter, the TUN
    /// device, the listen port and the firewall, routes, the underlay path MTU. One line per
    /// check; exit status 1 when one fails.
    Diagnose(Box<liqonet_gateway::diagnose::Args>),
    /// Add or remove a peer: in a standalone config file (SIGHUP to the gateway applies it), or
    /// as a TunnelEndpoint.
    Peer {
        #[command(subcommand)]
        action: PeerAction,
    },
}

/// Which gateway the peering commands are about.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["config", "kubernetes"])))]
struct Target {
    /// A standalone config file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The cluster of the current kubeconfig context.
    #[arg(long)]
    kubernetes: bool,
    /// The gateway's namespace (Kubernetes).
    #[arg(long, default_value = "liqonet")]
    namespace: String,
}

#[derive(Subcommand)]
enum PeerAction {
    /// Add the cluster whose `peering-info` is in INFO; overlapping networks get `remapped: auto`.
    Add {
        #[command(flatten)]
        target: Target,
        #[arg(value_name = "INFO")]
        info: PathBuf,
    },
    /// Remove peer CLUSTER_ID, or (Kubernetes) every peer with --all.
    Remove {
        #[command(flatten)]
        target: Target,
        #[arg(required_unless_present = "all")]
        cluster_id: Option<String>,
        /// Every TunnelEndpoint of the namespace (with --kubernetes).
        #[arg(long, conflicts_with = "cluster_id", requires = "kubernetes")]
        all: bool,
        /// With --all: wait until they are gone (their finalizers released), up to this long.
        #[arg(long, value_name = "DURATION", requires = "all", value_parser = liqonet_gateway::kubernetes::settings::parse_duration)]
        wait: Option<std::time::Duration>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Genkey => keys::generate()
            .map(|k| println!("{}", k.to_base64()))
            .context("cannot read random bytes"),
        Command::Pubkey => pubkey(),
        Command::Run {
            config: Some(config),
            ..
        } => run(config),
        Command::Run { settings, .. } => {
            init_logging();
            tokio_runtime().and_then(|rt| rt.block_on(kubernetes::run(*settings)))
        }
        Command::Diagnose(args) => return liqonet_gateway::diagnose::main(&args),
        Command::Crd => {
            print!("{}", liqonet_proto::crd::crd_yaml());
            Ok(())
        }
        Command::Status {
            interface,
            config,
            kubernetes,
            namespace,
            output,
        } => {
            let json = output == "json";
            let up = if kubernetes {
                with_cluster(|client| async move {
                    kubernetes::list::show_endpoints(&client, &namespace, json).await
                })
            } else {
                status(config.as_deref(), &interface, json)
            };
            return match up {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("liqonet-gateway: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::PeeringInfo { target, endpoint } => match target.config {
            Some(config) => peering::info(&config, endpoint.as_deref()),
            None => with_cluster(|client| async move {
                kube_peering::info(&client, &names(&target.namespace), endpoint.as_deref()).await
            }),
        }
        .map(|text| print!("{text}")),
        Command::Peer {
            action: PeerAction::Add { target, info },
        } => match target.config {
            Some(config) => peering::add(&config, &info).map(|summary| {
                println!("{summary}; send the gateway SIGHUP (or restart it) to apply");
            }),
            None => peering::read_info(&info).and_then(|info| {
                with_cluster(|client| async move {
                    kube_peering::add(&client, &names(&target.namespace), &info).await
                })
                .map(|summary| println!("{summary}; the gateway applies it live"))
            }),
        },
        Command::Peer {
            action:
                PeerAction::Remove {
                    target,
                    all: true,
                    wait,
                    ..
                },
        } => with_cluster(|client| async move {
            kube_peering::remove_all(&client, &names(&target.namespace), wait).await
        })
        .map(|removed| {
            println!(
                "removed {} TunnelEndpoint(s){}{}",
                removed.len(),
                if removed.is_empty() { "" } else { ": " },
                removed.join(", ")
            )
        }),
        Command::Peer {
            action:
                PeerAction::Remove {
                    target,
                    cluster_id: Some(cluster_id),
                    ..
                },
        } => match target.config {
            Some(config) => peering::remove(&config, &cluster_id).map(|()| {
                println!(
                    "removed peer {cluster_id:?}; send the gateway SIGHUP (or restart it) to apply"
                );
            }),
            None => with_cluster(|client| {
                let id = cluster_id.clone();
                async move { kube_peering::remove(&client, &names(&target.namespace), &id).await }
            })
            .map(|()| {
                println!(
                    "removed TunnelEndpoint {cluster_id:?}; the gateway removes the peer first"
                )
            }),
        },
        // clap requires CLUSTER_ID unless --all is given.
        Command::Peer {
            action: PeerAction::Remove { .. },
        } => Err(anyhow::anyhow!("peer remove needs CLUSTER_ID or --all")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("liqonet-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn names(namespace: &str) -> kube_peering::Names {
    kube_peering::Names {
        namespace: namespace.to_string(),
        ..kube_peering::Names::default()
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs `f` with a client for the current kubeconfig context (or in-cluster configuration).
fn with_cluster<T, F>(f: impl FnOnce(kube::Client) -> F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    tokio_runtime()?.block_on(async { f(kubernetes::client().await?).await })
}

/// `status` on this node: the running gateway's report; whether every peer is up.
fn status(config: Option<&std::path::Path>, interface: &str, json: bool) -> anyhow::Result<bool> {
    let interface = match config {
        Some(path) => {
            let text = settings::read_text(path, settings::MAX_CONFIG_FILE)
                .with_context(|| format!("cannot read {}", path.display()))?;
            liqonet_proto::config::GatewayConfig::from_yaml(&text)
                .map_err(|e| anyhow::anyhow!("{}:\n{e}", path.display()))?
                .interface
        }
        None => interface.to_string(),
    };
    let report = liqonet_gateway::status::fetch(
        std::path::Path::new(liqonet_gateway::io::uapi::SOCKET_DIR),
        &interface,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", liqonet_gateway::status::render(&report));
    }
    Ok(liqonet_gateway::status::all_up(&report))
}

fn pubkey() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let private: Key = input
        .parse()
        .map_err(|e| anyhow::anyhow!("stdin does not hold a private key: {e}"))?;
    println!("{}", keys::public_of(&private).to_base64());
    Ok(())
}

/// SIGHUP: the peers of the config file, applied live (other peers' sessions go on). Settings
/// of the device or socket need a restart; a bad file changes nothing. It runs on a thread of
/// its own: reading, parsing and resolving take what they take, and the data path goes on.
fn reload(
    path: &std::path::Path,
    running: &liqonet_proto::config::GatewayConfig,
    public: Key,
    control: &Control,
) {
    let new = match settings::load(path) {
        Ok(s) => s,
        Err(e) => return tracing::error!("reload: {e:#}; the running configuration stays"),
    };
    let c = &new.config;
    if keys::public_of(&new.private_key) != public
        || c.interface != running.interface
        || c.listen_port != running.listen_port
        || c.mtu != running.mtu
        || c.offload != running.offload
        || c.realtime_priority != running.realtime_priority
        || c.interface_addresses != running.interface_addresses
        || c.metrics_address != running.metrics_address
    {
        tracing::warn!("reload: only peers change live; the key, interface, port, MTU, offload, real-time priority, addresses and metrics address apply at the next start");
    }
    match control.apply(new.peers) {
        Ok(ch) => {
            tracing::info!(added = ?ch.added, updated = ?ch.updated, removed = ?ch.removed, "configuration reloaded")
        }
        Err(e) => tracing::error!("reload: {e}"),
    }
}

fn init_logging() {
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
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    init_logging();

    let settings::Settings {
        config,
        private_key,
        peers,
    } = settings::load(&path).context("invalid configuration")?;
    log_remapping(&peers);
    let networks = routed_networks(&peers);
    let mut engine = Engine::new(&private_key, peers, config.mtu)?;
    engine.set_probing(config.probes.into());
    tracing::info!(
        cluster = %config.cluster_id,
        public_key = %engine.public_key().to_base64(),
        peers = config.peers.len(),
        "starting gateway"
    );

    // SIGINT and SIGTERM go through a pipe into the event loop, so shutdown always runs the
    // cleanup; SIGHUP wakes the reload thread.
    let (stop, stop_tx) = UnixStream::pair()?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(sig, stop_tx.try_clone()?)?;
    }
    let (mut hup, hup_tx) = UnixStream::pair()?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, hup_tx)?;
    let control = Control::new()?;
    let reloader = control.clone();
    let (reload_path, running, public) = (path.clone(), config.clone(), engine.public_key());
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            let mut byte = [0u8; 16];
            // Signals that arrive while a reload runs are one more reload, not one each.
            while matches!(hup.read(&mut byte), Ok(n) if n > 0) {
                reload(&reload_path, &running, public, &reloader);
            }
        })?;

    let metrics = match config.metrics_address {
        Some(addr) => Some(metrics_http::spawn(addr.0)?),
        None => None,
    };
    serve(
        &config,
        &private_key,
        &mut engine,
        &networks,
        &stop,
        &control,
        metrics.as_ref(),
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
