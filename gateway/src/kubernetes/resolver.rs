//! Endpoint host names, looked up off the controller's runtime.
//!
//! The system resolver blocks, and the same current-thread runtime renews the Lease: a lookup
//! there would stall the election. Lookups run on tokio's blocking pool, each bounded by a
//! timeout, and their answers are kept: a lookup that fails or hangs leaves the last good
//! address in use, so a DNS outage never takes a peer away. Planning reads only the cache.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use liqonet_proto::config::Endpoint;

/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// A good answer is looked up again after this long.
const REFRESH: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Resolver {
    /// (host, port) → last good address and when it was looked up.
    cache: Mutex<HashMap<(String, u16), (SocketAddr, Instant)>>,
}

impl Resolver {
    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u16), (SocketAddr, Instant)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks up every host name among `endpoints` that is new or due, concurrently.
    pub async fn refresh<'a>(&self, endpoints: impl Iterator<Item = &'a Endpoint>) {
        let due: Vec<(String, u16)> = {
            let cache = self.cache();
            let mut v: Vec<(String, u16)> = endpoints
                .filter_map(|e| match e {
                    Endpoint::Host(h, p) => Some((h.clone(), *p)),
                    Endpoint::Addr(_) => None,
                })
                .filter(|k| cache.get(k).is_none_or(|(_, at)| at.elapsed() >= REFRESH))
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let lookups = due.into_iter().map(|(host, port)| async move {
            let name = host.clone();
            let blocking = tokio::task::spawn_blocking(move || {
                (name.as_str(), port)
                    .to_socket_addrs()
                    .map(Iterator::collect::<Vec<SocketAddr>>)
                    .map_err(|e| e.to_string())
            });
            let result = match tokio::time::timeout(LOOKUP_TIMEOUT, blocking).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(format!("lookup task failed: {e}")),
                Err(_) => Err(format!("no answer within {LOOKUP_TIMEOUT:?}")),
            };
            ((host, port), result)
        });
        for (key, result) in futures::future::join_all(lookups).await {
            let mut cache = self.cache();
            let current = cache.get(&key).map(|(a, _)| *a);
            // A name with several addresses keeps the one in use while it is still among them
            // (a new address would move the peer and start a handshake).
            let result = result.and_then(|all| {
                current
                    .filter(|c| all.contains(c))
                    .or_else(|| all.first().copied())
                    .ok_or_else(|| "no address".to_string())
            });
            match result {
                Ok(addr) => {
                    if current != Some(addr) {
                        tracing::info!(host = %key.0, %addr, "endpoint resolved");
                    }
                    cache.insert(key, (addr, Instant::now()));
                }
                Err(e) => match cache.get(&key) {
                    Some((addr, _)) => {
                        tracing::warn!(host = %key.0, %addr, "cannot resolve {}: {e}; keeping the last address", key.0)
                    }
                    None => tracing::warn!(host = %key.0, "cannot resolve {}: {e}", key.0),
                },
            }
        }
    }

    /// The address to use for `endpoint`: itself, or the last good answer for its host name.
    pub fn get(&self, endpoint: &Endpoint) -> Result<SocketAddr, String> {
        match endpoint {
            Endpoint::Addr(a) => Ok(*a),
            Endpoint::Host(h, p) => self
                .cache()
                .get(&(h.clone(), *p))
                .map(|(a, _)| *a)
                .ok_or_else(|| format!("{h:?} is not resolved (yet)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_resolve_and_a_failed_lookup_keeps_the_last_address() {
        let r = Resolver::default();
        let ip: Endpoint = "192.0.2.1:51840".parse().unwrap();
        assert_eq!(r.get(&ip).unwrap(), "192.0.2.1:51840".parse().unwrap());
        let local: Endpoint = "localhost:51840".parse().unwrap();
        assert!(r.get(&local).is_err(), "nothing looked up yet");
        r.refresh([&local].into_iter()).await;
        let addr = r.get(&local).unwrap();
        assert!(addr.ip().is_loopback());
        // A name that cannot resolve: an error, and nothing cached.
        let bad: Endpoint = "no-such-host.invalid:51840".parse().unwrap();
        r.refresh([&bad].into_iter()).await;
        assert!(r.get(&bad).is_err());
        // A later failure for a known name keeps its address (simulated: the entry is due and
        // its lookup is made to fail by a name that no longer resolves).
        let key = ("no-such-host.invalid".to_string(), 51840);
        r.cache().insert(key, (addr, Instant::now() - REFRESH));
        r.refresh([&bad].into_iter()).await;
        assert_eq!(r.get(&bad).unwrap(), addr);
    }
}
