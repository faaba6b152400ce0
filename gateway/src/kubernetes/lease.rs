//! Active/passive failover: a `coordination.k8s.io` Lease elects the replica that carries the
//! tunnel. The states, timeouts and partitions are in docs/failover.md.
//!
//! [`Elector`] is the decision logic, with time passed in (unit-tested with controlled time).
//! Expiry is judged on the follower's own monotonic clock, from when it last saw the Lease change,
//! never by comparing the holder's `renewTime` with local wall time, so clock skew between nodes
//! cannot elect two leaders. Calm and safe at once:
//! - a leader that cannot reach the API keeps leading: nobody else can take the Lease either, so
//!   an API server that is away takes no traffic down;
//! - a leader that sees another holder stops leading at once (every call is bounded by the call
//!   timeout, so it learns within one);
//! - a follower takes an expired Lease only when the holder's health endpoint, published on the
//!   Lease, does not answer: it never takes over from a leader that is alive.
//!
//! [`campaign`] runs it against the API.

use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How long a Lease is valid after its last renewal.
    pub lease: Duration,
    /// Every Lease call is abandoned after this long (so a leader learns within it that another
    /// replica holds the Lease).
    pub renew_deadline: Duration,
    /// Between two looks at the Lease (renewals, for the leader; a follower also looks at
    /// every change its watch shows).
    pub retry: Duration,
}

impl Timings {
    pub fn new(lease: Duration, renew_deadline: Duration, retry: Duration) -> Result<Self, String> {
        if lease < Duration::from_secs(1) {
            return Err(format!(
                "lease duration {lease:?} is under 1s, the Lease's resolution"
            ));
        }
        if !(retry < renew_deadline && renew_deadline < lease) {
            return Err(format!(
                "need retry period ({retry:?}) < renew deadline ({renew_deadline:?}) < lease duration ({lease:?}), so that a Lease call ends before the Lease can expire"
            ));
        }
        Ok(Timings {
            lease,
            renew_deadline,
            retry,
        })
    }

    /// The duration as the Lease records it (whole seconds, rounded up).
    pub fn lease_seconds(&self) -> i32 {
        let ms = self.lease.as_millis();
        i32::try_from(ms.div_ceil(1000)).unwrap_or(i32::MAX)
    }
}

/// What the election needs from a Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub holder: Option<String>,
    pub duration: Duration,
    /// Opaque: only compared, to notice renewals.
    pub renew_time: Option<String>,
    pub transitions: i32,
    /// Where the holder's health endpoint answers (`HOST:PORT`), from [`HEALTH_ANNOTATION`].
    pub health: Option<String>,
}

/// The annotation on the Lease where the holder publishes its health endpoint.
pub const HEALTH_ANNOTATION: &str = "liqonet.liqo.io/health-endpoint";

/// The annotation on the Lease where the holder publishes its node's name.
pub use liqonet_proto::crd::LEASE_NODE_ANNOTATION as NODE_ANNOTATION;

/// What the holder publishes on the Lease while it holds it.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Where its health endpoint answers (`HOST:PORT`): a follower probes it before taking over.
    pub health: Option<String>,
    /// The node it runs on: the route agents route to that node the moment the Lease changes
    /// hands (the acquiring write says it), without waiting for a TunnelEndpoint status.
    pub node: Option<String>,
}

impl Record {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            duration: Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(1).max(1)).unwrap_or(1),
            ),
            renew_time: spec.renew_time.map(|t| t.0.to_string()),
            transitions: spec.lease_transitions.unwrap_or(0),
            health: lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(HEALTH_ANNOTATION))
                .cloned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No Lease yet: create it, holding it.
    Create,
    /// Free or expired: take it (a write that fails on conflict if someone was faster).
    Acquire,
    /// Ours: renew it.
    Renew,
    /// Someone else holds a valid Lease.
    Follow { holder: String },
    /// Someone else holds a Lease that stopped changing a Lease duration ago: take it if the
    /// holder's health endpoint (if published) does not answer.
    TakeOver {
        holder: String,
        health: Option<String>,
    },
}

pub struct Elector {
    identity: String,
    timings: Timings,
    /// The Lease as last seen changed, and when (on our clock).
    observed: Option<(Record, Instant)>,
    /// Holding the Lease: our last write holding it succeeded and no other holder was seen since.
    holding: bool,
}

impl Elector {
    pub fn new(identity: String, timings: Timings) -> Self {
        Elector {
            identity,
            timings,
            observed: None,
            holding: false,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// What to do, given the Lease as just read at `now`.
    pub fn decide(&mut self, lease: Option<&Record>, now: Instant) -> Action {
        let Some(record) = lease else {
            return Action::Create;
        };
        if self.observed.as_ref().map(|(r, _)| r) != Some(record) {
            self.observed = Some((record.clone(), now));
        }
        let since_change = self
            .observed
            .as_ref()
            .map_or(Duration::ZERO, |(_, at)| now.saturating_duration_since(*at));
        match record.holder.as_deref() {
            Some(h) if h == self.identity => Action::Renew,
            None => Action::Acquire,
            Some(h) => {
                // Someone else holds it: whatever we thought, we do not lead.
                self.holding = false;
                if since_change >= record.duration {
                    Action::TakeOver {
                        holder: h.to_string(),
                        health: record.health.clone(),
                    }
                } else {
                    Action::Follow {
                        holder: h.to_string(),
                    }
                }
            }
        }
    }

    /// The outcome of the write [`Elector::decide`] asked for. A failed write changes nothing:
    /// a conflict makes the next round read the Lease, and an API that does not answer cannot
    /// let anyone else take it either.
    pub fn wrote(&mut self, ok: bool) {
        if ok {
            self.holding = true;
        }
    }

    /// Do we carry the tunnel?
    pub fn is_leader(&self) -> bool {
        self.holding
    }

    /// We gave the Lease up.
    pub fn released(&mut self) {
        self.holding = false;
    }
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// `lease` held by `elector`'s identity from now on, with our health endpoint and node published.
fn hold(mut lease: Lease, elector: &Elector, published: &Published, taking_over: bool) -> Lease {
    let annotations = lease
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    for (key, value) in [
        (HEALTH_ANNOTATION, &published.health),
        (NODE_ANNOTATION, &published.node),
    ] {
        match value {
            Some(v) => annotations.insert(key.to_string(), v.clone()),
            None => annotations.remove(key),
        };
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if taking_over {
        spec.acquire_time = Some(now_micro());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(elector.identity().to_string());
    spec.lease_duration_seconds = Some(elector.timings().lease_seconds());
    spec.renew_time = Some(now_micro());
    lease
}

/// Creates the Lease, or replaces `name` (failing with a conflict if it changed since read).
async fn write(
    api: &Api<Lease>,
    name: Option<&str>,
    lease: Lease,
) -> Result<Option<Lease>, kube::Error> {
    let pp = PostParams::default();
    match name {
        None => api.create(&pp, &lease).await.map(Some),
        Some(name) => api.replace(name, &pp, &lease).await.map(Some),
    }
}

/// How long a health probe of the holder may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// Whether `holder` answers `GET /healthz` on `addr` (`HOST:PORT`) within [`PROBE_TIMEOUT`],
/// naming itself and carrying the tunnel. A newer pod on the same node (another identity), a
/// replica that holds the Lease without leading, or no answer, all count as not alive.
pub async fn alive(addr: &str, holder: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: liqonet\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        s.take(4096).read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer);
        Some(
            text.starts_with("HTTP/1.")
                && text.get(9..12) == Some("200")
                && text.contains(&format!("\nidentity: {holder}\n"))
                && text.contains("\nready: true\n"),
        )
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}

/// The Lease as a follower's watch of it shows it.
struct Watch {
    events: BoxStream<'static, Result<watcher::Event<Lease>, watcher::Error>>,
    /// The Lease as of the last complete list and the events since (`None`: there is none).
    lease: Option<Lease>,
    /// The list is complete and no error came since: `lease` can be trusted without a read.
    synced: bool,
    /// A (re)list in progress: the Lease it has shown so far.
    listing: Option<Option<Lease>>,
}

impl Watch {
    /// Watches Lease `name` alone (a field selector: RBAC grants list and watch by name).
    fn start(api: &Api<Lease>, name: &str) -> Watch {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        Watch {
            events: watcher(api.clone(), config)
                .backoff(super::controller::watch_backoff())
                .boxed(),
            lease: None,
            synced: false,
            listing: None,
        }
    }

    /// The Lease as the watch shows it, once in sync.
    fn current(&self) -> Option<Option<Lease>> {
        self.synced.then(|| self.lease.clone())
    }

    /// Takes one event in; whether the Lease as seen changed (worth deciding on at once).
    fn apply(&mut self, event: Result<watcher::Event<Lease>, watcher::Error>) -> bool {
        match event {
            Ok(watcher::Event::Init) => {
                self.listing = Some(None);
                false
            }
            Ok(watcher::Event::InitApply(l)) => {
                self.listing = Some(Some(l));
                false
            }
            Ok(watcher::Event::InitDone) => {
                self.lease = self.listing.take().flatten();
                self.synced = true;
                true
            }
            Ok(watcher::Event::Apply(l)) => {
                self.lease = Some(l);
                true
            }
            Ok(watcher::Event::Delete(_)) => {
                self.lease = None;
                true
            }
            Err(e) => {
                // Until it lists again, the follower reads the Lease at every look.
                tracing::debug!("lease watch: {e}");
                self.synced = false;
                false
            }
        }
    }
}

/// The next event of a follower's watch, if there is one; whether the Lease changed.
async fn next_change(follow: &mut Option<Watch>) -> bool {
    let Some(w) = follow.as_mut() else {
        return std::future::pending().await;
    };
    match w.events.next().await {
        Some(event) => w.apply(event),
        None => {
            // The watcher's stream does not end; if it did, reading at every look remains.
            w.synced = false;
            std::future::pending().await
        }
    }
}

/// Failed probes, in consecutive rounds, before a follower takes an expired Lease: one lost
/// connection attempt is not a dead leader.
const PROBES_TO_TAKE_OVER: u32 = 2;

/// Runs the election until `shutdown` completes, publishing leadership on `leader`, and
/// `published` on the Lease while we hold it. On
/// shutdown a leader releases the Lease; a follower, which watches it, takes over at once.
pub async fn campaign(
    api: Api<Lease>,
    name: String,
    mut elector: Elector,
    published: Published,
    leader: watch::Sender<bool>,
    seen: watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // Every call is bounded, so a leader learns in time that another holds the Lease.
    let limit = elector.timings().renew_deadline;
    let timed = |r: Result<Result<Option<Lease>, kube::Error>, tokio::time::error::Elapsed>| {
        r.unwrap_or_else(|_| Err(kube::Error::Service("lease call timed out".into())))
    };
    // The Lease as our last write returned it: a leader renews from it without reading first.
    let mut ours: Option<Lease> = None;
    let mut last_error: Option<String> = None;
    let mut spared: Option<String> = None;
    // The holder whose health probes failed, and in how many consecutive rounds.
    let mut suspect: Option<(String, u32)> = None;
    // A follower watches the Lease: it sees a release (or any renewal) the moment it is
    // written, instead of at its next look, and reads nothing while the watch is in sync.
    let mut follow: Option<Watch> = None;
    'campaign: loop {
        let now = Instant::now();
        let read = match ours.take() {
            Some(l) if elector.is_leader() => Ok(Some(l)),
            _ => match follow.as_ref().and_then(Watch::current) {
                Some(l) => Ok(l),
                None => timed(tokio::time::timeout(limit, api.get_opt(&name)).await),
            },
        };
        let written = match read {
            Err(e) => Err(e),
            Ok(current) => {
                let mut action = elector.decide(current.as_ref().map(Record::of).as_ref(), now);
                if let Action::TakeOver { holder, health } = &action {
                    let up = match health {
                        Some(addr) => alive(addr, holder).await,
                        None => false,
                    };
                    let failed = match (&mut suspect, up) {
                        (_, true) => {
                            suspect = None;
                            0
                        }
                        (Some((h, n)), false) if h == holder => {
                            *n += 1;
                            *n
                        }
                        (_, false) => {
                            suspect = Some((holder.clone(), 1));
                            1
                        }
                    };
                    if up {
                        if spared.as_deref() != Some(holder) {
                            tracing::warn!(lease = %name, %holder, health = ?health, "the lease expired, but its holder answers its health endpoint and leads: not taking over");
                            spared = Some(holder.clone());
                        }
                        action = Action::Follow {
                            holder: holder.clone(),
                        };
                    } else if failed < PROBES_TO_TAKE_OVER {
                        action = Action::Follow {
                            holder: holder.clone(),
                        };
                    } else {
                        tracing::info!(lease = %name, %holder, health = ?health, "the lease expired and its holder does not answer as leader: taking over");
                    }
                } else {
                    spared = None;
                    suspect = None;
                }
                let h = &published;
                match (action, current) {
                    (Action::Create, _) => {
                        let lease = Lease {
                            metadata: ObjectMeta {
                                name: Some(name.clone()),
                                ..ObjectMeta::default()
                            },
                            spec: None,
                        };
                        let lease = hold(lease, &elector, h, true);
                        timed(tokio::time::timeout(limit, write(&api, None, lease)).await)
                    }
                    (Action::Acquire | Action::TakeOver { .. }, Some(l)) => {
                        let lease = hold(l, &elector, h, true);
                        timed(tokio::time::timeout(limit, write(&api, Some(&name), lease)).await)
                    }
                    (Action::Renew, Some(l)) => {
                        let lease = hold(l, &elector, h, false);
                        timed(tokio::time::timeout(limit, write(&api, Some(&name), lease)).await)
                    }
                    (Action::Follow { .. }, _) | (_, None) => Ok(None),
                }
            }
        };
        if written.is_ok() {
            // The Lease was read or written: this replica takes part in the election.
            seen.send_if_modified(|s| !std::mem::replace(s, true));
        }
        match written {
            Ok(Some(l)) => {
                elector.wrote(true);
                ours = Some(l);
                last_error = None;
            }
            Ok(None) => last_error = None,
            Err(e) => {
                // A conflict is a lost race (or a stale renewal): the next round reads the Lease.
                // An API that does not answer changes nothing: a leader goes on leading.
                elector.wrote(false);
                let msg = e.to_string();
                if last_error.as_deref() != Some(&msg) {
                    tracing::warn!(lease = %name, leading = elector.is_leader(), "lease: {msg}");
                }
                last_error = Some(msg);
            }
        }
        let leading = elector.is_leader();
        leader.send_if_modified(|was| {
            if *was != leading {
                tracing::info!(lease = %name, identity = %elector.identity(), leading, "leadership changed");
                *was = leading;
                true
            } else {
                false
            }
        });
        if leading {
            follow = None;
        } else if follow.is_none() {
            follow = Some(Watch::start(&api, &name));
        }
        let wait = tokio::time::sleep(elector.timings().retry);
        tokio::pin!(wait);
        // Until the next look: a change seen on the watch ends the wait at once.
        loop {
            tokio::select! {
                () = &mut shutdown => break 'campaign,
                () = &mut wait => break,
                changed = next_change(&mut follow) => if changed { break },
            }
        }
    }
    if let (true, Some(mut l)) = (elector.is_leader(), ours) {
        if let Some(spec) = l.spec.as_mut() {
            spec.holder_identity = None;
        }
        let params = PostParams::default();
        let release = api.replace(&name, &params, &l);
        match tokio::time::timeout(limit, release).await {
            Ok(Ok(_)) => tracing::info!(lease = %name, "lease released"),
            Ok(Err(e)) => tracing::warn!(lease = %name, "cannot release the lease: {e}"),
            Err(_) => tracing::warn!(lease = %name, "cannot release the lease: timed out"),
        }
    }
    elector.released();
    leader.send_replace(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings() -> Timings {
        Timings::new(
            Duration::from_secs(1),
            Duration::from_millis(500),
            Duration::from_millis(150),
        )
        .unwrap()
    }

    fn held_by(holder: &str, renew: u32) -> Record {
        Record {
            holder: Some(holder.into()),
            duration: Duration::from_secs(1),
            renew_time: Some(format!("t{renew}")),
            transitions: 0,
            health: Some(format!("{holder}:9640")),
        }
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn acquires_a_missing_or_free_lease() {
        let t0 = Instant::now();
        let mut e = Elector::new("a".into(), timings());
        assert_eq!(e.decide(None, t0), Action::Create);
        assert!(!e.is_leader());
        e.wrote(true);
        assert!(e.is_leader());
        let mut b = Elector::new("b".into(), timings());
        let free = Record {
            holder: None,
            ..held_by("x", 1)
        };
        assert_eq!(b.decide(Some(&free), t0), Action::Acquire);
    }

    #[test]
    fn the_leader_keeps_leading_while_the_api_is_away() {
        let t0 = Instant::now();
        let mut e = Elector::new("a".into(), timings());
        assert_eq!(e.decide(Some(&held_by("a", 1)), t0), Action::Renew);
        e.wrote(true);
        // Renewals keep failing for a minute (API server stopped or hung): nobody else can take
        // the Lease without the API either, so the tunnel stays up.
        for t in (150..60_000).step_by(150) {
            assert_eq!(e.decide(Some(&held_by("a", 1)), ms(t0, t)), Action::Renew);
            e.wrote(false);
            assert!(e.is_leader(), "at {t} ms");
        }
    }

    #[test]
    fn a_follower_waits_while_the_holder_renews() {
        let t0 = Instant::now();
        let mut b = Elector::new("b".into(), timings());
        for (i, t) in (0..20).map(|i| (i, i * 150)) {
            // The holder renews every 150 ms: the Lease keeps changing.
            let a = b.decide(Some(&held_by("a", i)), ms(t0, u64::from(t)));
            assert_eq!(a, Action::Follow { holder: "a".into() }, "at {t} ms");
        }
        assert!(!b.is_leader());
    }

    #[test]
    fn a_lease_that_stopped_changing_is_taken_over_after_a_health_check() {
        let t0 = Instant::now();
        let mut b = Elector::new("b".into(), timings());
        // The holder renewed at t0, then stopped. Expiry runs on b's clock from when b saw it.
        let last = held_by("a", 7);
        assert!(matches!(
            b.decide(Some(&last), ms(t0, 100)),
            Action::Follow { .. }
        ));
        assert!(matches!(
            b.decide(Some(&last), ms(t0, 1000)),
            Action::Follow { .. }
        ));
        // Expired: campaign probes the published health endpoint before writing.
        assert_eq!(
            b.decide(Some(&last), ms(t0, 1100)),
            Action::TakeOver {
                holder: "a".into(),
                health: Some("a:9640".into())
            }
        );
        b.wrote(true);
        assert!(b.is_leader());
    }

    #[test]
    fn a_leader_that_sees_another_holder_stops_leading() {
        let t0 = Instant::now();
        let mut a = Elector::new("a".into(), timings());
        a.decide(Some(&held_by("a", 1)), t0);
        a.wrote(true);
        // Partitioned from the API and from b for a while; meanwhile b took over.
        assert!(matches!(
            a.decide(Some(&held_by("b", 1)), ms(t0, 300)),
            Action::Follow { .. }
        ));
        assert!(!a.is_leader());
    }

    #[test]
    fn a_lost_race_leaves_the_follower_following() {
        let t0 = Instant::now();
        let mut b = Elector::new("b".into(), timings());
        let free = Record {
            holder: None,
            ..held_by("x", 1)
        };
        assert_eq!(b.decide(Some(&free), t0), Action::Acquire);
        b.wrote(false); // 409: c was faster
        assert!(!b.is_leader());
        assert!(matches!(
            b.decide(Some(&held_by("c", 1)), ms(t0, 200)),
            Action::Follow { .. }
        ));
    }

    #[test]
    fn timings_must_end_a_call_before_the_lease_can_expire() {
        let s = Duration::from_secs;
        let m = Duration::from_millis;
        assert!(Timings::new(m(500), m(300), m(100)).is_err());
        assert!(Timings::new(s(1), s(1), m(100)).is_err());
        assert!(Timings::new(s(2), m(500), m(500)).is_err());
        assert_eq!(
            Timings::new(m(1500), s(1), m(200)).unwrap().lease_seconds(),
            2
        );
    }

    #[tokio::test]
    async fn a_health_endpoint_that_is_gone_does_not_answer() {
        // Nothing listens on port 1 of the loopback: refused at once.
        assert!(!alive("127.0.0.1:1", "a").await);
    }
}
