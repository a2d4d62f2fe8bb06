//! Metrics, in the OpenMetrics text format (`GET /metrics`), for Prometheus
//! and for webui's per-hop view.
//!
//! Each server or client owns a [`Registry`] and registers what it measures
//! in it: calls by method and status, rng's lane, the worker's tally. Each
//! family lives beside what it measures (`server::call_meter::metrics`,
//! `client::balancer::metrics`, `rng::metrics`...); here is only the core they share: the registry and
//! its exposition, the one switch, exemplars, and the duration histograms.
//! Durations go into histograms whose
//! buckets resolve turbo's microseconds and classroom's seconds alike, each
//! observation carrying the trace id of its call when that call is sampled
//! (an OpenMetrics exemplar): a slow bucket leads to a trace in Jaeger.
//!
//! Names follow OpenTelemetry's stable RPC conventions as Prometheus spells
//! them: `rpc.server.call.duration` in seconds is
//! `rpc_server_call_duration_seconds`, `rpc.method` is `rpc_method`.

use crate::telemetry::latency::duration_buckets;
use opentelemetry::trace::TraceContextExt;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{exemplar::HistogramWithExemplars, family::Family},
};
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// What `GET /metrics` answers with: OpenMetrics 1.0, the only text format
/// that carries exemplars (Prometheus asks for it first).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether anything is measured: on unless `METRICS_DISABLED` turns it off
/// for the whole process (to measure what measuring costs). One switch for
/// every hot path, as `OTEL_SDK_DISABLED` is for tracing.
static ENABLED: AtomicBool = AtomicBool::new(true);

pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Where a process's metrics are registered, then read by `GET /metrics`.
pub type Registry = prometheus_client::registry::Registry;

/// A count that only goes up (requests refused, retries...).
pub type Counter = prometheus_client::metrics::counter::Counter;

/// A registry once everything is registered: shared by the `/metrics` route.
#[derive(Clone)]
pub struct Exposition(Arc<Registry>);

impl Exposition {
    pub fn new(registry: Registry) -> Self {
        Self(Arc::new(registry))
    }

    /// The registry's metrics, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.0);
        text
    }

    /// `GET /metrics` for an axum router.
    pub fn route<S: Clone + Send + Sync + 'static>(self) -> axum::routing::MethodRouter<S> {
        axum::routing::get(move || {
            let exposition = self.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                    exposition.encode(),
                )
            }
        })
    }
}

/// The trace of a sampled call, as an exemplar's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
}

impl TraceExemplar {
    /// The trace of `span`, when it is sampled (an unsampled trace is nowhere
    /// to be found in Jaeger).
    pub fn of(span: &tracing::Span) -> Option<Self> {
        let context = span.context();
        let span_ref = context.span();
        let span_context = span_ref.span_context();
        span_context.is_sampled().then(|| Self {
            trace_id: span_context.trace_id().to_string(),
        })
    }
}

/// A duration histogram with exemplars.
pub type DurationHistogram = HistogramWithExemplars<TraceExemplar>;

/// An empty duration histogram, in [`duration_buckets`].
pub fn duration_histogram() -> DurationHistogram {
    HistogramWithExemplars::new(duration_buckets())
}

/// Duration histograms by label set, each made by [`duration_histogram`].
pub type DurationFamily<L> = Family<L, DurationHistogram, fn() -> DurationHistogram>;

/// An empty [`DurationFamily`].
pub fn duration_family<L: Clone + std::hash::Hash + Eq>() -> DurationFamily<L> {
    Family::new_with_constructor(duration_histogram)
}

/// A gRPC service, as a label: the server's calls in flight, the client's
/// retries and hedges. Here, in the core, because both sides use it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub rpc_service: &'static str,
}
