//! How a client chooses the replica of each call.
//!
//! Every balanced policy chooses among the eligible replicas first (serving
//! by their health watch, not ejected); when none is, among those not
//! ejected (a replica that says NOT_SERVING still beats no call at all:
//! it may be the only one, restarting); and when every one is ejected, any
//! (better a probe than no call).

use super::{
    replica::Replica,
    weighted::{Schedule, Stride},
};
use rand::Rng as _;
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

/// How a client spreads its calls over a backend's replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Every address the name resolves to, re-resolved periodically, each
    /// in turn.
    #[default]
    #[value(name = "round_robin", alias = "balanced")]
    RoundRobin,
    /// Of two replicas drawn at random, the one with fewer calls in flight
    /// ("power of two choices"): a slow replica, whose calls pile up, gets
    /// fewer new ones.
    #[value(name = "least_request")]
    LeastRequest,
    /// Of two replicas drawn at random, the one with the lower latency
    /// estimate times its calls in flight plus one ("peak EWMA"): it learns
    /// a replica is slow from its own answers, even one call at a time.
    #[value(name = "ewma")]
    Ewma,
    /// Each replica in proportion to the weight its own load reports give
    /// it (ORCA, gRFC A51 and A58): calls per unit of its capacity used,
    /// lowered by its errors.
    #[value(name = "weighted_round_robin")]
    WeightedRoundRobin,
    /// One connection to the name, as a naive gRPC client: it stays on the
    /// replica it first reached.
    Pinned,
}

impl Policy {
    /// The name on the command line, in logs and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastRequest => "least_request",
            Self::Ewma => "ewma",
            Self::WeightedRoundRobin => "weighted_round_robin",
            Self::Pinned => "pinned",
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which replicas a pick may choose among, best first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// Serving and not ejected.
    Eligible,
    /// Not ejected, whatever its health says.
    NotEjected,
    /// Anyone.
    Any,
}

impl Tier {
    fn admits(self, replica: &Replica, now: Instant) -> bool {
        match self {
            Self::Eligible => replica.is_eligible(now),
            Self::NotEjected => !replica.record.is_ejected(now),
            Self::Any => true,
        }
    }
}

/// What picks in turn draw from: the round-robin counter, and under
/// `weighted_round_robin` the weights in force (none: round robin).
pub(super) struct Picks<'a> {
    pub next: &'a AtomicUsize,
    pub weighted: Option<(&'a Schedule, &'a Stride)>,
}

/// The replica for the next call under `policy`, avoiding `avoid` (a hedged
/// call's first replica) when another will do; `None` only when there is no
/// replica.
pub(super) fn pick(
    policy: Policy,
    replicas: &[Arc<Replica>],
    picks: &Picks<'_>,
    avoid: Option<&Replica>,
) -> Option<Arc<Replica>> {
    let next = picks.next;
    let now = Instant::now();
    let avoided = |replica: &Replica| avoid.is_some_and(|a| std::ptr::eq(a, replica));
    for tier in [Tier::Eligible, Tier::NotEjected, Tier::Any] {
        let ok = |replica: &Replica| tier.admits(replica, now) && !avoided(replica);
        let chosen = match policy {
            Policy::LeastRequest => two_choices(replicas, ok, |r| r.in_flight() as f64),
            Policy::Ewma => two_choices(replicas, ok, |r| r.latency.cost(r.in_flight(), now)),
            Policy::WeightedRoundRobin => match picks.weighted {
                Some((schedule, stride)) => weighted(replicas, schedule, stride, ok)
                    .or_else(|| round_robin(replicas, next, ok)),
                None => round_robin(replicas, next, ok),
            },
            Policy::RoundRobin | Policy::Pinned => round_robin(replicas, next, ok),
        };
        if chosen.is_some() {
            return chosen;
        }
    }
    // Only the avoided replica is left: it will do.
    round_robin(replicas, next, |_| true)
}

/// The next replica `ok` admits, in turn.
fn round_robin(
    replicas: &[Arc<Replica>],
    next: &AtomicUsize,
    ok: impl Fn(&Replica) -> bool,
) -> Option<Arc<Replica>> {
    let start = next.fetch_add(1, Ordering::Relaxed);
    (0..replicas.len())
        .map(|i| &replicas[(start + i) % replicas.len()])
        .find(|replica| ok(replica))
        .cloned()
}

/// The next replica by the weights that `ok` admits, drawing a few times
/// (a replica set aside is skipped, as round robin skips it); `None` when
/// the draws found none, and round robin decides.
fn weighted(
    replicas: &[Arc<Replica>],
    schedule: &Schedule,
    stride: &Stride,
    ok: impl Fn(&Replica) -> bool,
) -> Option<Arc<Replica>> {
    (0..2 * replicas.len())
        .map(|_| schedule.next(stride))
        .filter_map(|i| replicas.get(i))
        .find(|replica| ok(replica))
        .cloned()
}

/// Power of two choices on `cost`, among the replicas `ok` admits. Two
/// draws without allocating: when either is not admitted, the cheapest
/// admitted replica of all (rare: only while some are out).
fn two_choices(
    replicas: &[Arc<Replica>],
    ok: impl Fn(&Replica) -> bool,
    cost: impl Fn(&Replica) -> f64,
) -> Option<Arc<Replica>> {
    let least = |candidates: &mut dyn Iterator<Item = &Arc<Replica>>| {
        candidates
            .filter(|replica| ok(replica))
            .min_by(|a, b| cost(a).total_cmp(&cost(b)))
            .cloned()
    };
    if replicas.len() < 2 {
        return least(&mut replicas.iter());
    }
    let mut random = rand::rng();
    let a = random.random_range(0..replicas.len());
    let mut b = random.random_range(0..replicas.len() - 1);
    if b >= a {
        b += 1;
    }
    let (a, b) = (&replicas[a], &replicas[b]);
    match (ok(a), ok(b)) {
        (true, true) => Some(if cost(b) < cost(a) { b } else { a }.clone()),
        _ => least(&mut replicas.iter()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::transport::Endpoint;

    fn rr(next: &AtomicUsize) -> Picks<'_> {
        Picks {
            next,
            weighted: None,
        }
    }

    fn replicas(n: usize) -> Vec<Arc<Replica>> {
        (0..n)
            .map(|i| {
                let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
                Arc::new(Replica::new(
                    format!("r{i}"),
                    "127.0.0.1".into(),
                    1,
                    vec![channel],
                ))
            })
            .collect()
    }

    #[tokio::test]
    async fn least_request_prefers_the_replica_with_fewer_calls_in_flight() {
        let all = replicas(2);
        let _busy: Vec<_> = (0..3).map(|_| all[0].start_call()).collect();
        let next = AtomicUsize::new(0);
        for _ in 0..20 {
            let chosen = pick(Policy::LeastRequest, &all, &rr(&next), None).unwrap();
            assert_eq!(chosen.label, "r1");
        }
    }

    #[tokio::test]
    async fn a_replica_not_serving_gets_calls_only_when_no_other_can() {
        let all = replicas(3);
        all[1]
            .serving
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let next = AtomicUsize::new(0);
        for policy in [Policy::RoundRobin, Policy::LeastRequest] {
            for _ in 0..30 {
                assert_ne!(pick(policy, &all, &rr(&next), None).unwrap().label, "r1");
            }
        }
        for replica in [&all[0], &all[2]] {
            replica
                .record
                .eject_for(Instant::now(), std::time::Duration::from_secs(60));
        }
        assert_eq!(
            pick(Policy::RoundRobin, &all, &rr(&next), None)
                .unwrap()
                .label,
            "r1"
        );
    }

    #[tokio::test]
    async fn a_hedge_avoids_the_first_replica_unless_it_is_the_only_one() {
        let all = replicas(2);
        let next = AtomicUsize::new(0);
        for _ in 0..10 {
            let chosen = pick(Policy::RoundRobin, &all, &rr(&next), Some(&all[0])).unwrap();
            assert_eq!(chosen.label, "r1");
        }
        let one = replicas(1);
        assert!(pick(Policy::LeastRequest, &one, &rr(&next), Some(&one[0])).is_some());
    }

    #[tokio::test]
    async fn weighted_picks_follow_the_weights_and_skip_a_replica_set_aside() {
        let all = replicas(3);
        let schedule = Schedule::default();
        let stride = Stride::new(&[3.0, 1.0, 1.0]).unwrap();
        let next = AtomicUsize::new(0);
        let picks = Picks {
            next: &next,
            weighted: Some((&schedule, &stride)),
        };
        let mut counts = [0; 3];
        for _ in 0..500 {
            let chosen = pick(Policy::WeightedRoundRobin, &all, &picks, None).unwrap();
            counts[all.iter().position(|r| r.label == chosen.label).unwrap()] += 1;
        }
        assert!((280..=320).contains(&counts[0]), "{counts:?}");
        all[0]
            .record
            .eject_for(Instant::now(), std::time::Duration::from_secs(60));
        for _ in 0..50 {
            let chosen = pick(Policy::WeightedRoundRobin, &all, &picks, None).unwrap();
            assert_ne!(chosen.label, "r0");
        }
    }
}
