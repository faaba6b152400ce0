//! `liqonet-gateway`: key tools and the standalone gateway.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use liqonet_gateway::engine::Engine;
use liqonet_gateway::io::{event_loop, metrics_http, routes::Routes, tun, udp::Sockets};
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
    /// Run the gateway from a standalone config file.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print this cluster's peering information (key, endpoint, exported networks) as YAML.
    PeeringInfo {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// How the other cluster reaches this gateway (HOST:PORT); without it, it only answers.
        #[arg(long, value_name = "HOST:PORT")]
        endpoint: Option<String>,
    },
    /// Print the TunnelEndpoint CustomResourceDefinition (as deploy/crds/ holds it).
    Crd,
    /// Add or remove a peer in a standalone config file (SIGHUP to the gateway applies it).
    Peer {
        #[command(subcommand)]
        action: PeerAction,
    },
}

#[derive(Subcommand)]
enum PeerAction {
    /// Add the cluster whose `peering-info` is in INFO; overlapping networks get `remapped: auto`.
    Add {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(value_name = "INFO")]
        info: PathBuf,
    },
    /// Remove peer CLUSTER_ID.
    Remove {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        cluster_id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Genkey => keys::generate()
            .map(|k| println!("{}", k.to_base64()))
            .context("cannot read random bytes"),
        Command::Pubkey => pubkey(),
        Command::Run { config } => run(config),
        Command::Crd => {
            print!("{}", liqonet_proto::crd::crd_yaml());
            Ok(())
        }
        Command::PeeringInfo { config, endpoint } => {
            peering::info(&config, endpoint.as_deref()).map(|text| print!("{text}"))
        }
        Command::Peer {
            action: PeerAction::Add { config, info },
        } => peering::add(&config, &info).map(|summary| {
            println!("{summary}; send the gateway SIGHUP (or restart it) to apply");
        }),
        Command::Peer {
            action: PeerAction::Remove { config, cluster_id },
        } => peering::remove(&config, &cluster_id).map(|()| {
            println!(
                "removed peer {cluster_id:?}; send the gateway SIGHUP (or restart it) to apply"
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("liqonet-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
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

fn log_remapping(peers: &[liqonet_gateway::engine::PeerSpec]) {
    for p in peers {
        for n in p.networks.iter().filter(|n| n.cidr != n.remapped) {
            tracing::info!(peer = %p.name, cidr = %n.cidr, remapped = %n.remapped, "home pods reach {} as {}", n.cidr, n.remapped);
        }
    }
}

fn routed_networks(peers: &[liqonet_gateway::engine::PeerSpec]) -> Vec<liqonet_proto::Cidr> {
    peers
        .iter()
        .flat_map(|p| p.networks.iter().map(|n| n.remapped))
        .collect()
}

/// SIGHUP: the peers of the config file, applied live (other peers' sessions go on). Settings
/// of the device or socket need a restart; a bad file changes nothing.
fn reload(
    path: &std::path::Path,
    running: &liqonet_proto::config::GatewayConfig,
    engine: &mut Engine,
    routes: &mut Routes,
    networks: &mut Vec<liqonet_proto::Cidr>,
) {
    let new = match settings::load(path) {
        Ok(s) => s,
        Err(e) => return tracing::error!("reload: {e:#}; the running configuration stays"),
    };
    let c = &new.config;
    if keys::public_of(&new.private_key) != engine.public_key()
        || c.interface != running.interface
        || c.listen_port != running.listen_port
        || c.mtu != running.mtu
        || c.offload != running.offload
        || c.interface_addresses != running.interface_addresses
        || c.metrics_address != running.metrics_address
    {
        tracing::warn!("reload: only peers change live; the key, interface, port, MTU, offload, addresses and metrics address apply at the next start");
    }
    log_remapping(&new.peers);
    let wanted = routed_networks(&new.peers);
    match engine.apply_peers(new.peers) {
        Ok(ch) => {
            if let Err(e) = routes.sync(&wanted) {
                tracing::error!("reload: {e:#}");
            }
            *networks = wanted;
            tracing::info!(added = ?ch.added, updated = ?ch.updated, removed = ?ch.removed, "configuration reloaded");
        }
        Err(e) => tracing::error!("reload: {e}; the running configuration stays"),
    }
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let settings::Settings {
        config,
        private_key,
        peers,
    } = settings::load(&path).context("invalid configuration")?;
    log_remapping(&peers);
    let mut networks = routed_networks(&peers);
    let mut engine = Engine::new(&private_key, peers, config.mtu)?;
    tracing::info!(
        cluster = %config.cluster_id,
        public_key = %engine.public_key().to_base64(),
        peers = config.peers.len(),
        "starting gateway"
    );

    // Signals go through pipes into the event loop, so shutdown always runs the cleanup below.
    let (stop, stop_tx) = UnixStream::pair()?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(sig, stop_tx.try_clone()?)?;
    }
    let (reload_rx, reload_tx) = UnixStream::pair()?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, reload_tx)?;
    let mut signals = event_loop::Signals {
        stop,
        reload: reload_rx,
    };

    let (dev, tun_offload) = tun::create(&config.interface, config.mtu, config.offload)
        .with_context(|| format!("cannot create TUN device {:?}", config.interface))?;
    let mut routes = Routes::new(dev.if_index()?)?;
    let result = (|| -> anyhow::Result<()> {
        for address in &config.interface_addresses {
            routes.add_address(*address)?;
        }
        routes.sync(&networks)?;
        let sockets = Sockets::bind(config.listen_port, config.offload)?;
        let metrics = match config.metrics_address {
            Some(addr) => Some(metrics_http::spawn(addr.0)?),
            None => None,
        };
        tracing::info!(
            interface = %config.interface,
            port = config.listen_port,
            mtu = config.mtu,
            "tunnel up"
        );
        while event_loop::run(
            &mut engine,
            &dev,
            tun_offload,
            &sockets,
            &mut signals,
            metrics.as_ref(),
        )? == event_loop::Exit::Reload
        {
            reload(&path, &config, &mut engine, &mut routes, &mut networks);
        }
        Ok(())
    })();
    routes.remove_all();
    drop(dev);
    tracing::info!("routes and TUN device removed");
    result
}
