//! What the worker measures of its tally: the hashes and coins it mined,
//! and how long its Redis updates took.

use crate::telemetry::metrics::{Counter, DurationHistogram, Registry, duration_histogram};
use prometheus_client::registry::Unit;

/// The worker's tally: what it mined, and how long its Redis updates took.
#[derive(Clone)]
pub struct TallyMetrics {
    pub hashes: Counter,
    pub coins: Counter,
    pub redis_update: DurationHistogram,
}

impl TallyMetrics {
    pub fn unregistered() -> Self {
        Self {
            hashes: Counter::default(),
            coins: Counter::default(),
            redis_update: duration_histogram(),
        }
    }

    pub fn register(registry: &mut Registry) -> Self {
        let this = Self::unregistered();
        registry.register(
            "worker_hashes",
            "Hashes computed by this worker",
            this.hashes.clone(),
        );
        registry.register(
            "worker_coins",
            "Coins found by this worker (digests starting with 0)",
            this.coins.clone(),
        );
        registry.register_with_unit(
            "redis_update_duration",
            "Duration of the worker's Redis updates (its counts and coins, in one transaction)",
            Unit::Seconds,
            this.redis_update.clone(),
        );
        this
    }
}
