//! rng's lane: a bounded queue that knows about deadlines. At most `lanes`
//! requests are served at once, in the order they arrived; at most `queue`
//! more wait, and the next are refused at once ([`Overloaded`]); a request
//! whose deadline would pass before it is served is given up on and leaves
//! the queue. Whatever the protocol a request came by, it waits here.
//!
//! Not here: what a request is (sizes, stream plans, the gRPC service and
//! the HTTP routes, in the module above) and how a refusal is said on the
//! wire (`server::overload`).

use super::{RngConfig, metrics::LaneMetrics, metrics::RngMetrics};
use crate::{
    server::deadline::{self, DeadlineMetrics, Expired},
    server::faults::Injector,
    server::load_report::{Busy, Occupancy, Occupied},
    server::overload::{self, Overloaded, Refusals},
    telemetry::metrics::TraceExemplar,
};
use prometheus_client::metrics::gauge::Gauge;
use std::time::Duration;
use tokio::{
    sync::{Semaphore, SemaphorePermit},
    time::Instant,
};
use tracing::Instrument;

/// Why the lane did not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Expired(#[from] Expired),
    /// The queue was full.
    #[error(transparent)]
    Full(#[from] Overloaded),
}

/// Where rng's requests queue: at most `lanes` of them are served at once, in
/// the order they arrived (tokio's semaphore is fair), each paying `delay`.
pub struct Lane {
    /// `None` when lanes are unlimited: nothing to wait for.
    permits: Option<Semaphore>,
    /// Places in the lanes and their queue (`lanes + queue`): a request
    /// that finds none is refused at once. `None` with unlimited lanes.
    places: Option<Semaphore>,
    /// How many lanes, for the traces.
    lanes: usize,
    /// How many may wait, for the refusal's message and hint.
    queue: usize,
    /// Refusals not yet logged.
    refusals: Refusals,
    /// Cost of one request once it holds a lane.
    delay: Duration,
    /// How many wait, and how long each waited.
    metrics: LaneMetrics,
    /// Requests given up on because their deadline would pass.
    expired: DeadlineMetrics,
    /// Requests in the lanes and their queue over time, for the load
    /// reports.
    occupancy: std::sync::Arc<Occupancy>,
    /// The extra delays to pay in the lane (and, for the service, the
    /// failures to inject).
    pub(super) faults: Injector,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lane({} lanes, {:?})", self.lanes, self.delay)
    }
}

/// Where a request was given up on, for its error and its trace.
const ON_ARRIVAL: &str = "deadline too near to be served";
const IN_THE_QUEUE: &str = "deadline passed in the lane";
const AT_ITS_TURN: &str = "deadline passed at its turn in the lane";
const WHILE_SERVED: &str = "deadline passed while served (an injected extra delay)";

impl Lane {
    pub fn new(config: &RngConfig, metrics: RngMetrics) -> Self {
        Self {
            permits: config.lanes.map(Semaphore::new),
            places: config
                .lanes
                .map(|lanes| Semaphore::new(lanes.saturating_add(config.queue))),
            lanes: config.lanes.unwrap_or(0),
            queue: config.queue,
            refusals: Refusals::default(),
            delay: config.delay,
            metrics: metrics.lane,
            expired: metrics.expired,
            occupancy: Default::default(),
            faults: Injector::new(&config.server.faults, metrics.faults),
        }
    }

    /// Waits until this caller holds a lane; the lane is free again when the
    /// returned turn is dropped.
    ///
    /// A request that finds the queue full is refused at once
    /// ([`Overloaded`]): an overloaded rng tells its callers to back off
    /// instead of answering nobody in time.
    ///
    /// With a `deadline`, waits only while the request can still be served
    /// in time (its turn, then the delay, [`deadline::MARGIN`] before the
    /// deadline), and checks again when its turn comes: a request that
    /// cannot make it is given up on, leaves the queue, and is never served.
    ///
    /// The wait is a span of its own, `rng.lane.wait`: in Jaeger it is where
    /// ten workers' time goes, and where a request's deadline passed.
    pub async fn wait_turn(&self, deadline: Option<Instant>) -> Result<Turn<'_>, Refused> {
        let arrived = Instant::now();
        // The last moment the request may get its turn; none without a
        // deadline.
        let latest = match deadline {
            Some(deadline) => match deadline::latest_start(deadline, self.delay) {
                Some(latest) => Some(latest),
                None => {
                    return Err(self
                        .give_up(&tracing::Span::current(), arrived, ON_ARRIVAL)
                        .into());
                }
            },
            None => None,
        };
        let (Some(permits), Some(places)) = (self.permits.as_ref(), self.places.as_ref()) else {
            return Ok(Turn::default());
        };
        let place = self.take_place(places)?;
        let span = self.wait_span();
        let measured = crate::telemetry::metrics::enabled();
        // Counted in the queue's depth until it leaves, whichever way.
        let queued = measured.then(|| Queued::join(&self.metrics.queue));
        // The semaphore is never closed, so acquire cannot fail.
        let acquire = permits.acquire().instrument(span.clone());
        let permit = match latest {
            None => acquire.await.ok(),
            Some(latest) => match tokio::time::timeout_at(latest, acquire).await {
                Ok(permit) => permit.ok(),
                Err(_) => {
                    drop(queued);
                    return Err(self.give_up(&span, arrived, IN_THE_QUEUE).into());
                }
            },
        };
        drop(queued);
        if measured {
            self.metrics.wait.observe(
                arrived.elapsed().as_secs_f64(),
                TraceExemplar::of(&span),
                None,
            );
        }
        // The turn may come just after the last moment: not served either.
        if latest.is_some_and(|latest| Instant::now() > latest) {
            drop(permit);
            return Err(self.give_up(&span, arrived, AT_ITS_TURN).into());
        }
        Ok(Turn {
            _lane: permit,
            _place: Some(place),
        })
    }

    /// The wait's span, in a sampled trace only.
    fn wait_span(&self) -> tracing::Span {
        if crate::telemetry::sampling::in_sampled_trace() {
            tracing::info_span!(
                target: crate::telemetry::TARGET,
                "rng.lane.wait",
                rng.lanes = self.lanes,
            )
        } else {
            tracing::Span::none()
        }
    }

    /// A place in the lanes or their queue, counted in the lane's
    /// occupancy (its load reports) until given back; refused at once when
    /// there is none.
    fn take_place<'a>(
        &'a self,
        places: &'a Semaphore,
    ) -> Result<(SemaphorePermit<'a>, Occupied), Overloaded> {
        let place = places.try_acquire().map_err(|_| self.refuse())?;
        Ok((place, self.occupancy.occupy(1.0)))
    }

    /// Counts and logs (at a bounded rate) a request refused for a full
    /// queue, and says how long the queue takes to drain.
    fn refuse(&self) -> Overloaded {
        self.metrics.refused.inc();
        // Everyone waiting, and everyone served, must pass before it.
        let turns = u32::try_from(self.queue / self.lanes.max(1))
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let full = Overloaded {
            why: format!(
                "rng is overloaded: {} requests already wait for its lane",
                self.queue
            ),
            retry_after: overload::pushback(self.delay.saturating_mul(turns)),
        };
        if let Some(refused) = self.refusals.note() {
            tracing::warn!(
                refused,
                waiting = self.queue,
                retry_after_ms = full.retry_after.as_millis() as u64,
                "rng's lane is full: refusing requests with RESOURCE_EXHAUSTED (HTTP 503); `refused` counts those since the last line like this, rng_lane_refused_total all of them"
            );
        }
        full
    }

    /// Counts and traces a request given up on, and says why.
    fn give_up(&self, span: &tracing::Span, since: Instant, reason: &'static str) -> Expired {
        let stage = if reason == WHILE_SERVED {
            "working"
        } else {
            "waiting"
        };
        self.expired.expired(stage);
        let waited = since.elapsed();
        tracing::info!(
            target: crate::telemetry::TARGET,
            parent: span,
            waited_ms = waited.as_millis() as u64,
            "{reason}"
        );
        Expired { reason, waited }
    }

    /// Waits for a lane, pays the delay in it, and runs `work` before letting
    /// the next request in; with a `deadline`, only if that can be done in
    /// time.
    ///
    /// An injected extra delay is paid here, inside the lane, on top of the
    /// delay: a slow replica holds its lane longer, so it is slow for every
    /// request queued behind it too, as a real one is (a GC pause, a noisy
    /// neighbour). It is not counted when deciding whether a request can be
    /// served in time (a slow replica does not know it will be slow), so a
    /// client sees its deadline eaten; the request is still answered
    /// DEADLINE_EXCEEDED, [`deadline::MARGIN`] before its deadline, rather
    /// than cut off by tonic.
    pub async fn serve<T>(
        &self,
        deadline: Option<Instant>,
        work: impl FnOnce() -> T,
    ) -> Result<T, Refused> {
        let _turn = self.wait_turn(deadline).await?;
        let extra = self.faults.extra_delay();
        // Its turn came in time for the delay; only an extra delay can make
        // it overrun, and then it holds the lane until it is too late.
        if let Err(overran) = deadline::pay(self.delay, extra, deadline).await {
            return Err(self
                .give_up(&tracing::Span::current(), overran.started, WHILE_SERVED)
                .into());
        }
        Ok(work())
    }
}

/// A request's turn in the lane: its place and its lane, both given back
/// when it is dropped. Empty when lanes are unlimited.
#[derive(Default)]
pub struct Turn<'a> {
    _lane: Option<SemaphorePermit<'a>>,
    _place: Option<(SemaphorePermit<'a>, Occupied)>,
}

/// The lane's load, for rng's load reports: requests in the lanes and
/// their queue over the lanes (1 = every lane busy and none waiting; 10
/// with one lane = one served, nine waiting).
impl Busy for Lane {
    fn utilization(&self, now: std::time::Instant) -> f64 {
        if self.lanes == 0 {
            // Unlimited lanes: no measure of its own; the CPU says it.
            return 0.0;
        }
        self.occupancy.mean(now) / self.lanes as f64
    }

    fn named_metrics(&self, metrics: &mut std::collections::HashMap<String, f64>) {
        let (Some(permits), Some(places)) = (&self.permits, &self.places) else {
            return;
        };
        let held = self.lanes + self.queue - places.available_permits();
        let serving = self.lanes - permits.available_permits();
        metrics.insert(
            "rng.lane.queue".to_owned(),
            held.saturating_sub(serving) as f64,
        );
        metrics.insert("rng.lanes".to_owned(), self.lanes as f64);
    }
}

/// A place in the lane's queue, counted in its depth until it is left (a
/// turn taken, or a caller gone).
struct Queued<'a>(&'a Gauge);

impl<'a> Queued<'a> {
    fn join(depth: &'a Gauge) -> Self {
        depth.inc();
        Self(depth)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
