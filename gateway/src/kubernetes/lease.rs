//! Active/passive failover: a `coordination.k8s.io` Lease elects the replica that carries the
//! tunnel.
//!
//! [`Elector`] is the decision logic, with time passed in (unit-tested with controlled time).
//! Expiry is judged on the follower's own monotonic clock, from when it last saw the Lease change,
//! never by comparing the holder's `renewTime` with local wall time, so clock skew between nodes
//! cannot elect two leaders. A leader that cannot renew within `renew_deadline` (shorter than the
//! Lease's duration) stops carrying the tunnel before any follower may take over.
//! [`campaign`] runs it against the API.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How long a Lease is valid after its last renewal.
    pub lease: Duration,
    /// A leader that has not renewed for this long steps down.
    pub renew_deadline: Duration,
    /// Between two looks at the Lease (renewals, for the leader).
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
                "need retry period ({retry:?}) < renew deadline ({renew_deadline:?}) < lease duration ({lease:?}), so that a leader steps down before its Lease can be taken"
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
}

pub struct Elector {
    identity: String,
    timings: Timings,
    /// The Lease as last seen changed, and when (on our clock).
    observed: Option<(Record, Instant)>,
    /// Our last successful write holding the Lease.
    renewed_at: Option<Instant>,
}

impl Elector {
    pub fn new(identity: String, timings: Timings) -> Self {
        Elector {
            identity,
            timings,
            observed: None,
            renewed_at: None,
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
                self.renewed_at = None;
                if since_change >= record.duration {
                    Action::Acquire
                } else {
                    Action::Follow {
                        holder: h.to_string(),
                    }
                }
            }
        }
    }

    /// The outcome of the write [`Elector::decide`] asked for.
    pub fn wrote(&mut self, ok: bool, now: Instant) {
        if ok {
            self.renewed_at = Some(now);
        }
    }

    /// Did we hold the Lease recently enough to carry the tunnel?
    pub fn is_leader(&self, now: Instant) -> bool {
        self.renewed_at
            .is_some_and(|t| now.saturating_duration_since(t) < self.timings.renew_deadline)
    }

    /// We gave the Lease up.
    pub fn released(&mut self) {
        self.renewed_at = None;
    }
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// `lease` held by `elector`'s identity from now on.
fn hold(mut lease: Lease, elector: &Elector, taking_over: bool) -> Lease {
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

/// Runs the election until `shutdown` completes, publishing leadership on `leader`. On shutdown a
/// leader releases the Lease, so a follower takes over within one retry period.
pub async fn campaign(
    api: Api<Lease>,
    name: String,
    mut elector: Elector,
    leader: watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // A hung call must not keep a stale leader leading: each call gets one retry period.
    let limit = elector.timings().retry;
    let timed = |r: Result<Result<Option<Lease>, kube::Error>, tokio::time::error::Elapsed>| {
        r.unwrap_or_else(|_| Err(kube::Error::Service("lease call timed out".into())))
    };
    // The Lease as our last write returned it: a leader renews from it without reading first.
    let mut ours: Option<Lease> = None;
    let mut last_error: Option<String> = None;
    loop {
        let now = Instant::now();
        let read = match ours.take() {
            Some(l) if elector.is_leader(now) => Ok(Some(l)),
            _ => timed(tokio::time::timeout(limit, api.get_opt(&name)).await),
        };
        let written = match read {
            Err(e) => Err(e),
            Ok(current) => {
                let action = elector.decide(current.as_ref().map(Record::of).as_ref(), now);
                match (action, current) {
                    (Action::Create, _) => {
                        let lease = Lease {
                            metadata: ObjectMeta {
                                name: Some(name.clone()),
                                ..ObjectMeta::default()
                            },
                            spec: None,
                        };
                        let lease = hold(lease, &elector, true);
                        timed(tokio::time::timeout(limit, write(&api, None, lease)).await)
                    }
                    (Action::Acquire, Some(l)) => {
                        let lease = hold(l, &elector, true);
                        timed(tokio::time::timeout(limit, write(&api, Some(&name), lease)).await)
                    }
                    (Action::Renew, Some(l)) => {
                        let lease = hold(l, &elector, false);
                        timed(tokio::time::timeout(limit, write(&api, Some(&name), lease)).await)
                    }
                    (Action::Follow { .. }, _) | (_, None) => Ok(None),
                }
            }
        };
        match written {
            Ok(Some(l)) => {
                elector.wrote(true, Instant::now());
                ours = Some(l);
                last_error = None;
            }
            Ok(None) => last_error = None,
            Err(e) => {
                // A conflict is a lost race (or a stale renewal): read again next time.
                let msg = e.to_string();
                if last_error.as_deref() != Some(&msg) {
                    tracing::warn!(lease = %name, "lease: {msg}");
                }
                last_error = Some(msg);
            }
        }
        let leading = elector.is_leader(Instant::now());
        leader.send_if_modified(|was| {
            if *was != leading {
                tracing::info!(lease = %name, identity = %elector.identity(), leading, "leadership changed");
                *was = leading;
                true
            } else {
                false
            }
        });
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(elector.timings().retry) => {}
        }
    }
    if let (true, Some(mut l)) = (elector.is_leader(Instant::now()), ours) {
        if let Some(spec) = l.spec.as_mut() {
            spec.holder_identity = None;
        }
        match api.replace(&name, &PostParams::default(), &l).await {
            Ok(_) => tracing::info!(lease = %name, "lease released"),
            Err(e) => tracing::warn!(lease = %name, "cannot release the lease: {e}"),
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
        assert!(!e.is_leader(t0));
        e.wrote(true, t0);
        assert!(e.is_leader(t0));
        let mut b = Elector::new("b".into(), timings());
        let free = Record {
            holder: None,
            ..held_by("x", 1)
        };
        assert_eq!(b.decide(Some(&free), t0), Action::Acquire);
    }

    #[test]
    fn the_leader_renews_and_steps_down_when_it_cannot() {
        let t0 = Instant::now();
        let mut e = Elector::new("a".into(), timings());
        assert_eq!(e.decide(Some(&held_by("a", 1)), t0), Action::Renew);
        e.wrote(true, t0);
        // Renewals keep failing (API unreachable): leader until the renew deadline, not after.
        for t in [150, 300, 450] {
            assert_eq!(e.decide(Some(&held_by("a", 1)), ms(t0, t)), Action::Renew);
            e.wrote(false, ms(t0, t));
            assert!(e.is_leader(ms(t0, t)));
        }
        assert!(!e.is_leader(ms(t0, 500)));
        // campaign notices within one more iteration (a timed-out call plus a sleep: 2 × 150 ms),
        // which is before any follower may take the Lease (1 s after it last changed).
        assert!(Duration::from_millis(500 + 300) < held_by("a", 1).duration);
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
        assert!(!b.is_leader(ms(t0, 4000)));
    }

    #[test]
    fn a_follower_takes_over_a_lease_that_stopped_changing() {
        let t0 = Instant::now();
        let mut b = Elector::new("b".into(), timings());
        // The holder renewed at t0, then died. Expiry runs on b's clock from when b saw it.
        let last = held_by("a", 7);
        assert!(matches!(
            b.decide(Some(&last), ms(t0, 100)),
            Action::Follow { .. }
        ));
        assert!(matches!(
            b.decide(Some(&last), ms(t0, 1000)),
            Action::Follow { .. }
        ));
        assert_eq!(b.decide(Some(&last), ms(t0, 1100)), Action::Acquire);
        b.wrote(true, ms(t0, 1110));
        assert!(b.is_leader(ms(t0, 1110)));
        // Worst case with the defaults: b looks 150 ms apart, so it takes over at most
        // retry + duration + retry = 1.3 s after the last renewal, leaving 0.7 s of the 2 s
        // budget for the data plane to start and the handshake.
        assert!(
            Duration::from_millis(150) + Duration::from_secs(1) + Duration::from_millis(150)
                < Duration::from_secs(2)
        );
    }

    #[test]
    fn a_leader_that_sees_another_holder_stops_leading() {
        let t0 = Instant::now();
        let mut a = Elector::new("a".into(), timings());
        a.decide(Some(&held_by("a", 1)), t0);
        a.wrote(true, t0);
        // Partitioned for a while; meanwhile b took over.
        assert!(matches!(
            a.decide(Some(&held_by("b", 1)), ms(t0, 300)),
            Action::Follow { .. }
        ));
        assert!(!a.is_leader(ms(t0, 300)));
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
        b.wrote(false, t0); // 409: c was faster
        assert!(!b.is_leader(t0));
        assert!(matches!(
            b.decide(Some(&held_by("c", 1)), ms(t0, 200)),
            Action::Follow { .. }
        ));
    }

    #[test]
    fn timings_must_let_the_leader_step_down_first() {
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
}
