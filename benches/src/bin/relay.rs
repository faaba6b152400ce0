//! `liqonet-relay`: the I/O floor of the end-to-end bench. TUN ↔ UDP through the gateway's own
//! event loop, batches, TUN and sockets (`liqonet_gateway::io`, unchanged), with one difference:
//! no WireGuard. A packet leaves with WireGuard's framing (16-byte header, 16-byte tag, zeros) so
//! that datagrams, GSO runs and MTUs are the gateway's; a datagram's payload goes back to the TUN.
//! What liqonet costs beyond this relay is its engine: crypto, remapping, the MSS clamp.
//!
//! Never a mode of the shipped gateway: it authenticates nothing and forwards anything.
//!
//! Usage: `liqonet-relay --interface NAME --listen-port PORT --peer IP:PORT [--mtu N]`

use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::SystemTime;

use liqonet_gateway::engine::{PeerChanges, PeerSpec, Sink};
use liqonet_gateway::io::control::Control;
use liqonet_gateway::io::dataplane::Dataplane;
use liqonet_gateway::io::udp::Sockets;
use liqonet_gateway::io::{event_loop, tun};
use liqonet_gateway::metrics::LoopCounters;
use liqonet_gateway::snapshot::{Published, Snapshot};
use liqonet_proto::config::DEFAULT_REALTIME_PRIORITY;

/// WireGuard's data header (type, receiver index, counter) and its Poly1305 tag.
const HEADER: usize = 16;
const TAG: usize = 16;

struct Relay {
    peer: SocketAddr,
    /// The outgoing datagram: framing around the packet, built here as the engine builds its own.
    buf: Vec<u8>,
}

impl Dataplane for Relay {
    fn from_tun(&mut self, packet: &mut [u8], sink: &mut impl Sink) {
        let len = HEADER + packet.len() + TAG;
        if len > self.buf.len() {
            return;
        }
        self.buf[0] = 4;
        self.buf[HEADER..HEADER + packet.len()].copy_from_slice(packet);
        sink.send_to_network(self.peer, &self.buf[..len]);
    }

    fn from_network(&mut self, _src: SocketAddr, datagram: &[u8], sink: &mut impl Sink) {
        if datagram.len() > HEADER + TAG && datagram[0] == 4 {
            sink.write_to_tun(&datagram[HEADER..datagram.len() - TAG]);
        }
    }

    fn tick(&mut self, _sink: &mut impl Sink) {}

    fn apply_peers(&mut self, _peers: Vec<PeerSpec>) -> Result<PeerChanges, String> {
        Err("the relay has one fixed peer".into())
    }

    fn take_changed(&mut self) -> bool {
        false
    }

    fn publish(&self, _into: &mut Published, _io: LoopCounters, _at: SystemTime) {}
}

struct Args {
    interface: String,
    listen_port: u16,
    peer: SocketAddr,
    mtu: u16,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let value = |flag: &str| -> Result<&str, String> {
        let i = args
            .iter()
            .position(|a| a == flag)
            .ok_or(format!("{flag} is required"))?;
        args.get(i + 1)
            .map(String::as_str)
            .ok_or(format!("{flag} needs a value"))
    };
    let number = |flag: &str, v: &str| v.parse().map_err(|_| format!("{flag}: bad value {v:?}"));
    let mtu = match args.iter().any(|a| a == "--mtu") {
        true => number("--mtu", value("--mtu")?)?,
        false => 1420,
    };
    Ok(Args {
        interface: value("--interface")?.to_string(),
        listen_port: number("--listen-port", value("--listen-port")?)?,
        peer: value("--peer")?
            .parse()
            .map_err(|_| format!("--peer: bad address {:?}", value("--peer")))?,
        mtu,
    })
}

fn run(args: Args) -> std::io::Result<()> {
    let (dev, offload) = tun::create(&args.interface, args.mtu, true)?;
    let sockets = Sockets::bind(args.listen_port, true)?;
    let mut relay = Relay {
        peer: args.peer,
        buf: vec![0; HEADER + usize::from(u16::MAX) + TAG],
    };
    // Never written to: the relay runs until it is killed, and the TUN goes with it.
    let (stop, _keep) = UnixStream::pair()?;
    eprintln!(
        "relay up: {} (offload {offload}) ↔ udp {} ↔ {}",
        args.interface, args.listen_port, args.peer
    );
    // The gateway's priority, so that the floor differs from liqonet by the engine only.
    let options = event_loop::Options {
        tun_offload: offload,
        realtime_priority: DEFAULT_REALTIME_PRIORITY,
    };
    event_loop::run(
        &mut relay,
        &dev,
        options,
        &sockets,
        &stop,
        &Control::new()?,
        &Snapshot::default(),
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("liqonet-relay: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("liqonet-relay: {e}");
            ExitCode::FAILURE
        }
    }
}
