//! What rng measures of its own, beside its calls (which the server's
//! call meter measures): its lane's queue, wait and refusals, the requests
//! given up on for their deadline, and the faults injected.

use crate::{
    server::deadline::DeadlineMetrics,
    server::faults::metrics::FaultMetrics,
    telemetry::metrics::{Counter, DurationHistogram, Registry, duration_histogram},
};
use prometheus_client::{metrics::gauge::Gauge, registry::Unit};

/// What rng measures of its own, beside its calls.
#[derive(Clone)]
pub struct RngMetrics {
    /// The lane's queue and each request's wait.
    pub lane: LaneMetrics,
    /// Requests given up on for their deadline.
    pub expired: DeadlineMetrics,
    /// Faults injected, and the knobs.
    pub faults: FaultMetrics,
}

impl RngMetrics {
    /// Measures nothing anyone reads (tests, benches).
    pub fn unregistered() -> Self {
        Self {
            lane: LaneMetrics::unregistered(),
            expired: DeadlineMetrics::unregistered(),
            faults: FaultMetrics::unregistered(),
        }
    }

    /// rng's measures, registered in `registry` for its `/metrics`.
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            lane: LaneMetrics::register(registry),
            expired: DeadlineMetrics::register(registry, "rng"),
            faults: FaultMetrics::register(registry),
        }
    }
}

/// rng's lane: how many requests wait for it, and how long each waited.
#[derive(Clone)]
pub struct LaneMetrics {
    pub queue: Gauge,
    pub wait: DurationHistogram,
    /// Requests refused at once because the queue was full.
    pub refused: Counter,
}

impl LaneMetrics {
    /// Measures nothing anyone reads (tests, a lane built alone).
    pub fn unregistered() -> Self {
        Self {
            queue: Gauge::default(),
            wait: duration_histogram(),
            refused: Counter::default(),
        }
    }

    pub fn register(registry: &mut Registry) -> Self {
        let this = Self::unregistered();
        registry.register(
            "rng_lane_queue_depth",
            "Requests waiting for a lane of rng (the lab's bottleneck)",
            this.queue.clone(),
        );
        registry.register_with_unit(
            "rng_lane_wait",
            "Time a request waited for a lane of rng",
            Unit::Seconds,
            this.wait.clone(),
        );
        registry.register(
            "rng_lane_refused",
            "Requests refused at once (RESOURCE_EXHAUSTED, HTTP 503) because rng's lane queue was full",
            this.refused.clone(),
        );
        this
    }
}
