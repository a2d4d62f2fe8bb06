//! What injected faults are measured by: the failures and extra delays
//! injected, and the knobs as set, so a scrape shows a replica that was
//! made to misbehave.

use crate::telemetry::metrics::{Counter, Registry};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
};

/// A gRPC status, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub rpc_response_status_code: &'static str,
}

/// A bucket of injected extra delay, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExtraDelayLabels {
    /// The bucket's delay in seconds, `0.3`.
    pub extra_delay_seconds: String,
}

/// A gauge of a fraction (a rate, a share).
pub type Fraction = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Injected faults (`crate::server::faults`): what was injected, and what the knobs
/// are set to, so a scrape shows a replica that was made to misbehave.
#[derive(Clone)]
pub struct FaultMetrics {
    /// Calls answered with an injected failure, by code.
    pub failures: Family<CodeLabels, Counter>,
    /// Calls (stream messages) that paid an injected extra delay, by bucket.
    pub delayed: Family<ExtraDelayLabels, Counter>,
    /// The configured failure rate.
    pub fail_rate: Fraction,
    /// The configured share of each extra-delay bucket.
    pub extra_delay_share: Family<ExtraDelayLabels, Fraction>,
}

impl FaultMetrics {
    pub fn unregistered() -> Self {
        Self {
            failures: Family::default(),
            delayed: Family::default(),
            fail_rate: Fraction::default(),
            extra_delay_share: Family::default(),
        }
    }

    pub fn register(registry: &mut Registry) -> Self {
        let this = Self::unregistered();
        registry.register(
            "faults_failures",
            "gRPC calls answered with an injected failure (--fail-rate), by code",
            this.failures.clone(),
        );
        registry.register(
            "faults_delayed",
            "Requests (stream messages) that paid an injected extra delay (--extra-delay), by bucket",
            this.delayed.clone(),
        );
        registry.register(
            "faults_fail_rate",
            "Share of gRPC calls set to fail (--fail-rate); 0 when off",
            this.fail_rate.clone(),
        );
        registry.register(
            "faults_extra_delay_share",
            "Share of requests set to pay each extra delay (--extra-delay)",
            this.extra_delay_share.clone(),
        );
        this
    }
}
