//! Which handshake messages get an answer: WireGuard's defence against handshake floods, per
//! source, as the kernel and wireguard-go do it.
//!
//! Every handshake message must carry a valid MAC1, which only proves that its sender knows our
//! *public* key (peering information hands it out). Past [`LOAD_PER_SECOND`] handshake messages
//! in a second, valid or not, the gateway is *under load* until a second after the last busy
//! second. Under load a
//! message must also carry a valid MAC2, which proves that its sender receives at its source
//! address; one without gets a cookie reply to compute it. And each source (an IPv4 address, an
//! IPv6 /64) gets at most [`PER_SOURCE_RATE`] answers a second, burst [`PER_SOURCE_BURST`],
//! cookie replies included: one source can buy neither Diffie-Hellman work nor a reply per
//! datagram, and once it has had its share its messages cost a table lookup, not a MAC.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::TunnResult;
use boringtun::x25519::PublicKey;

use super::counters::DropReason;

/// Handshake messages per second before the gateway is under load.
pub const LOAD_PER_SECOND: u32 = 128;
/// How long the gateway stays under load after a busy second.
const LOAD_HOLD: Duration = Duration::from_secs(1);
/// Answers per second to one source while under load (the kernel's and wireguard-go's figures).
pub const PER_SOURCE_RATE: u32 = 20;
pub const PER_SOURCE_BURST: u32 = 5;
/// Sources tracked at once; allocated up front. Past it (a flood from many spoofed sources)
/// the newest sources are answered without a per-source limit, as the kernel would.
const MAX_SOURCES: usize = 4096;

/// What to do with a handshake message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Process it (Diffie-Hellman and all).
    Admit,
    /// Send this cookie reply back to its source, nothing else.
    Cookie(&'a [u8]),
    Drop(DropReason),
}

pub struct Admission {
    /// Checks MAC1 only (its limit is never reached); the sessions use it too, so a message
    /// admitted here is not judged a second time.
    mac1: Arc<RateLimiter>,
    /// Checks MAC2 and writes cookie replies (its limit is 0: always "under load").
    mac2: RateLimiter,
    window_start: Option<Instant>,
    window_count: u32,
    under_load_until: Option<Instant>,
    /// Per source, the time at which its bucket is full again (GCRA: one instant per source).
    sources: HashMap<u128, Instant>,
}

impl Admission {
    pub fn new(public: &PublicKey) -> Self {
        Admission {
            mac1: Arc::new(RateLimiter::new(public, u64::MAX)),
            mac2: RateLimiter::new(public, 0),
            window_start: None,
            window_count: 0,
            under_load_until: None,
            sources: HashMap::with_capacity(MAX_SOURCES),
        }
    }

    /// The MAC1-only checker for the sessions (boringtun's `Tunn` checks every message again).
    pub fn session_limiter(&self) -> Arc<RateLimiter> {
        self.mac1.clone()
    }

    pub fn under_load(&self, now: Instant) -> bool {
        self.under_load_until.is_some_and(|t| now < t)
    }

    /// Judges one handshake initiation or response from `src`; a cookie reply is written in `buf`.
    pub fn check<'b>(
        &mut self,
        src: IpAddr,
        datagram: &[u8],
        buf: &'b mut [u8],
        now: Instant,
    ) -> Verdict<'b> {
        // Every message counts towards the load, valid or not (the kernel counts its queue).
        self.count(now);
        let under_load = self.under_load(now);
        // A source that had its share is dropped before any hashing: a flood costs a lookup.
        if under_load && !self.has_token(src, now) {
            return Verdict::Drop(DropReason::HandshakeRateLimited);
        }
        if self.mac1.verify_packet(Some(src), datagram, buf).is_err() {
            return Verdict::Drop(DropReason::AuthFailed);
        }
        if !under_load {
            return Verdict::Admit;
        }
        self.take_token(src, now);
        match self.mac2.verify_packet(Some(src), datagram, buf) {
            Ok(_) => Verdict::Admit,
            Err(TunnResult::WriteToNetwork(cookie)) => Verdict::Cookie(cookie),
            Err(_) => Verdict::Drop(DropReason::AuthFailed),
        }
    }

    /// Forgets sources whose bucket is full again; call every tick.
    pub fn tick(&mut self, now: Instant) {
        if self.sources.len() > MAX_SOURCES / 2 || !self.under_load(now) {
            self.sources.retain(|_, full_at| *full_at > now);
        }
    }

    fn count(&mut self, now: Instant) {
        match self.window_start {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {
                self.window_count = self.window_count.saturating_add(1);
            }
            _ => {
                self.window_start = Some(now);
                self.window_count = 1;
            }
        }
        if self.window_count > LOAD_PER_SECOND {
            if !self.under_load(now) {
                tracing::warn!(
                    "over {LOAD_PER_SECOND} handshake messages a second: under load, answering with cookies"
                );
            }
            self.under_load_until = Some(now + LOAD_HOLD);
        }
    }

    fn interval() -> Duration {
        Duration::from_secs(1) / PER_SOURCE_RATE
    }

    /// Has `src` an answer left in its bucket?
    fn has_token(&self, src: IpAddr, now: Instant) -> bool {
        let tolerance = Self::interval() * (PER_SOURCE_BURST - 1);
        self.sources
            .get(&source_key(src))
            .is_none_or(|full_at| full_at.saturating_duration_since(now) <= tolerance)
    }

    /// Spends one answer of `src`'s bucket (it has one: see [`Self::has_token`]).
    fn take_token(&mut self, src: IpAddr, now: Instant) {
        let key = source_key(src);
        let full_at = match self.sources.get(&key) {
            Some(&t) => t.max(now),
            // Past the table's size a new source goes unlimited rather than allocate.
            None if self.sources.len() >= MAX_SOURCES => return,
            None => now,
        };
        self.sources.insert(key, full_at + Self::interval());
    }
}

/// A source as the limits see it: an IPv4 address, or the /64 of an IPv6 one (one host holds a
/// whole /64).
fn source_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 64) - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::x25519::StaticSecret;

    /// A handshake initiation from `from` to `to` as boringtun formats it (valid MAC1, no MAC2).
    fn initiation(from: &StaticSecret, to: &PublicKey) -> Vec<u8> {
        let mut t = boringtun::noise::Tunn::new(from.clone(), *to, None, None, 0, None);
        let mut buf = vec![0u8; 256];
        match t.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            _ => panic!("no initiation"),
        }
    }

    fn keys() -> (StaticSecret, PublicKey, StaticSecret) {
        let ours = StaticSecret::from([7u8; 32]);
        let public = PublicKey::from(&ours);
        (ours, public, StaticSecret::from([9u8; 32]))
    }

    #[test]
    fn below_the_load_every_valid_mac1_is_admitted_and_a_bad_one_never() {
        let (_, public, theirs) = keys();
        let mut a = Admission::new(&public);
        let init = initiation(&theirs, &public);
        let mut buf = [0u8; 256];
        let t0 = Instant::now();
        let src: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..LOAD_PER_SECOND - 1 {
            assert_eq!(a.check(src, &init, &mut buf, t0), Verdict::Admit);
        }
        let mut bad = init.clone();
        bad[20] ^= 1;
        assert_eq!(
            a.check(src, &bad, &mut buf, t0),
            Verdict::Drop(DropReason::AuthFailed)
        );
        assert!(!a.under_load(t0));
    }

    #[test]
    fn under_load_a_source_gets_a_few_cookies_then_nothing_and_others_still_get_theirs() {
        let (_, public, theirs) = keys();
        let mut a = Admission::new(&public);
        let init = initiation(&theirs, &public);
        let mut buf = [0u8; 256];
        let t0 = Instant::now();
        let flooder: IpAddr = "198.51.100.66".parse().unwrap();
        let mut cookies = 0;
        let mut limited = 0;
        for _ in 0..10_000 {
            match a.check(flooder, &init, &mut buf, t0) {
                Verdict::Admit => {}
                Verdict::Cookie(c) => {
                    assert_eq!((c.len(), c[0]), (64, 3));
                    cookies += 1;
                }
                Verdict::Drop(r) => {
                    assert_eq!(r, DropReason::HandshakeRateLimited);
                    limited += 1;
                }
            }
        }
        assert!(a.under_load(t0));
        assert_eq!(cookies, PER_SOURCE_BURST);
        assert!(limited > 9_000, "{limited}");
        // Another source still gets its cookie at once; the flooder again once its bucket refills.
        let peer: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        assert!(matches!(
            a.check(peer, &init, &mut buf, t0),
            Verdict::Cookie(_)
        ));
        let later = t0 + Duration::from_millis(60);
        assert!(matches!(
            a.check(flooder, &init, &mut buf, later),
            Verdict::Cookie(_)
        ));
        // A second after the flood stops, the load is over.
        let calm = t0 + Duration::from_secs(3);
        assert!(!a.under_load(calm));
        assert_eq!(a.check(flooder, &init, &mut buf, calm), Verdict::Admit);
        a.tick(calm);
        assert!(a.sources.is_empty());
    }

    #[test]
    fn under_load_a_message_with_the_cookie_is_admitted() {
        let (ours, public, theirs) = keys();
        let mut a = Admission::new(&public);
        let t0 = Instant::now();
        let src: IpAddr = "192.0.2.9".parse().unwrap();
        let junk = initiation(&theirs, &public);
        let mut buf = [0u8; 256];
        for _ in 0..=LOAD_PER_SECOND {
            a.check("203.0.113.1".parse().unwrap(), &junk, &mut buf, t0);
        }
        assert!(a.under_load(t0));
        // The initiator learns the cookie from the reply and sends a MAC2 with its next try.
        let mut tunn = boringtun::noise::Tunn::new(theirs.clone(), public, None, None, 0, None);
        let mut out = [0u8; 256];
        let first = match tunn.format_handshake_initiation(&mut out, false) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            _ => panic!("no initiation"),
        };
        let cookie = match a.check(src, &first, &mut buf, t0) {
            Verdict::Cookie(c) => c.to_vec(),
            v => panic!("{v:?}"),
        };
        let mut scratch = [0u8; 256];
        assert!(matches!(
            tunn.decapsulate(None, &cookie, &mut scratch),
            TunnResult::Done
        ));
        let second = match tunn.format_handshake_initiation(&mut out, true) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            _ => panic!("no initiation"),
        };
        assert_eq!(a.check(src, &second, &mut buf, t0), Verdict::Admit);
        let _ = ours;
    }
}
