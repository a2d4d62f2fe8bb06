//! What a server measures of its connections: those it holds, those it
//! closed for one of its bounds, and the calls it refused before reading
//! their data.

use crate::telemetry::metrics::{Counter, Registry};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
};

/// Why a server closed a connection: `handshake` (no request in time),
/// `idle` (nothing in flight for too long), `evicted` (idle the longest
/// when the server was full), `refused` (a newcomer, when it was full of
/// busy ones).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub reason: &'static str,
}

/// The connections a server holds, and those it closed for a bound.
#[derive(Clone)]
pub struct ConnectionMetrics {
    pub open: Gauge,
    closed: Family<ClosedLabels, Counter>,
    /// Calls refused before their data was buffered: the server held its
    /// most calls in flight, or request data.
    pub calls_refused: Counter,
}

impl ConnectionMetrics {
    /// Measures nothing anyone reads (edge, which has no `/metrics`; tests).
    pub fn unregistered() -> Self {
        Self {
            open: Gauge::default(),
            closed: Family::default(),
            calls_refused: Counter::default(),
        }
    }

    pub fn register(registry: &mut Registry) -> Self {
        let this = Self::unregistered();
        registry.register(
            "connections_open",
            "Connections this server holds now",
            this.open.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections this server closed for one of its bounds, by reason",
            this.closed.clone(),
        );
        registry.register(
            "calls_refused",
            "Calls refused at once (RESOURCE_EXHAUSTED, HTTP 503) because this server held its most calls in flight, or request data",
            this.calls_refused.clone(),
        );
        this
    }

    /// One connection closed for `reason` (a [`ClosedLabels`] reason).
    pub fn closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ClosedLabels { reason }).inc();
    }
}
