//! What hasher measures of its own, beside its calls (which the server's
//! call meter measures): the requests refused for a spent work budget, those
//! given up on for their deadline, and the faults injected. Shaped as rng's
//! are, registered the same way.

use crate::{
    server::deadline::DeadlineMetrics,
    server::faults::metrics::FaultMetrics,
    telemetry::metrics::{Counter, Registry},
};

/// What hasher measures of its own, beside its calls.
#[derive(Clone)]
pub struct HasherMetrics {
    /// Requests refused at once because the work budget was spent.
    pub refused: Counter,
    /// Requests given up on for their deadline.
    pub expired: DeadlineMetrics,
    /// Faults injected, and the knobs.
    pub faults: FaultMetrics,
}

impl HasherMetrics {
    /// Measures nothing anyone reads (tests, benches).
    pub fn unregistered() -> Self {
        Self {
            refused: Counter::default(),
            expired: DeadlineMetrics::unregistered(),
            faults: FaultMetrics::unregistered(),
        }
    }

    /// hasher's measures, registered in `registry` for its `/metrics`.
    pub fn register(registry: &mut Registry) -> Self {
        let expired = DeadlineMetrics::register(registry, "hasher");
        let faults = FaultMetrics::register(registry);
        let refused = Counter::default();
        registry.register(
            "hasher_refused",
            "Requests refused at once (RESOURCE_EXHAUSTED, HTTP 503) because hasher's work budget was spent",
            refused.clone(),
        );
        Self {
            refused,
            expired,
            faults,
        }
    }
}
