//! Metrics, in the OpenMetrics text format (`GET /metrics`), for Prometheus
//! and for webui's per-hop view.
//!
//! Each server or client owns a [`Registry`] and registers what it measures
//! in it: calls by method and status ([`ServerCalls`], [`ClientCalls`]),
//! rng's lane, the worker's tally. Durations go into histograms whose
//! buckets resolve turbo's microseconds and classroom's seconds alike, each
//! observation carrying the trace id of its call when that call is sampled
//! (an OpenMetrics exemplar): a slow bucket leads to a trace in Jaeger.
//!
//! Names follow OpenTelemetry's stable RPC conventions as Prometheus spells
//! them: `rpc.server.call.duration` in seconds is
//! `rpc_server_call_duration_seconds`, `rpc.method` is `rpc_method`.

use crate::telemetry::latency::{Latencies, MethodLatency, duration_buckets};
use opentelemetry::trace::TraceContextExt;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{exemplar::HistogramWithExemplars, family::Family, gauge::Gauge},
    registry::Unit,
};
use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
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

fn duration_histogram() -> DurationHistogram {
    HistogramWithExemplars::new(duration_buckets())
}

pub(crate) type DurationFamily<L> = Family<L, DurationHistogram, fn() -> DurationHistogram>;

pub(crate) fn duration_family<L: Clone + std::hash::Hash + Eq>() -> DurationFamily<L> {
    Family::new_with_constructor(duration_histogram)
}

/// A server call's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerCallLabels {
    /// The full method, `dockercoins.v1.Rng/Generate`.
    pub rpc_method: String,
    /// The gRPC status name, `OK`, `DEADLINE_EXCEEDED`...
    pub rpc_response_status_code: &'static str,
}

/// A gRPC service, for the in-flight gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub rpc_service: &'static str,
}

/// What a gRPC server measures of its calls, from the request's arrival to
/// the end of its response (a stream's last message): rng's includes the
/// wait in its lane.
#[derive(Clone)]
pub struct ServerCalls {
    durations: DurationFamily<ServerCallLabels>,
    in_flight: Family<ServiceLabels, Gauge>,
    /// The same durations, readable in process (for `Replica/Info`).
    latencies: Arc<Latencies>,
    /// Each method served so far (never a made-up one: a method is added
    /// once a call of it ended other than UNIMPLEMENTED), with the handles
    /// its calls are observed through: found again by name, without
    /// building and hashing labels on every call.
    methods: Arc<RwLock<HashMap<String, Arc<MethodSeries>>>>,
}

/// A method's OK series and its readable durations.
struct MethodSeries {
    name: String,
    ok: DurationHistogram,
    latency: Arc<MethodLatency>,
}

impl ServerCalls {
    pub fn register(registry: &mut Registry) -> Self {
        let this = Self {
            durations: duration_family(),
            in_flight: Family::default(),
            latencies: Arc::default(),
            methods: Arc::default(),
        };
        registry.register_with_unit(
            "rpc_server_call_duration",
            "Duration of gRPC calls served, from arrival to the end of the response",
            Unit::Seconds,
            this.durations.clone(),
        );
        registry.register(
            "rpc_server_calls_in_flight",
            "gRPC calls being served",
            this.in_flight.clone(),
        );
        this
    }

    /// The gauge of `service`'s calls in flight (resolved once, by the
    /// layer that measures them).
    pub fn in_flight(&self, service: &'static str) -> Gauge {
        self.in_flight.get_or_create_owned(&ServiceLabels {
            rpc_service: service,
        })
    }

    /// A call of `method` has arrived (of a service of the server's own,
    /// whose `in_flight` gauge is given); it is observed when the returned
    /// guard is dropped, with the status it was told (none: the client went
    /// away, CANCELLED).
    pub fn start(
        &self,
        in_flight: &Gauge,
        method: &str,
        trace: Option<TraceExemplar>,
    ) -> ServerCall {
        in_flight.inc();
        let known = self
            .methods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(method)
            .cloned();
        ServerCall {
            calls: self.clone(),
            method: known.map_or_else(|| Method::New(method.to_owned()), Method::Known),
            trace,
            started: std::time::Instant::now(),
            in_flight: in_flight.clone(),
            status: None,
        }
    }

    /// `name`'s series, made on its first call.
    fn method(&self, name: String) -> Arc<MethodSeries> {
        let mut methods = self.methods.write().unwrap_or_else(|p| p.into_inner());
        methods
            .entry(name)
            .or_insert_with_key(|name| {
                Arc::new(MethodSeries {
                    name: name.clone(),
                    ok: self.durations.get_or_create_owned(&ServerCallLabels {
                        rpc_method: name.clone(),
                        rpc_response_status_code: "OK",
                    }),
                    latency: self.latencies.method(name),
                })
            })
            .clone()
    }

    /// The durations of the calls served so far, by method.
    pub fn latencies(&self) -> &Latencies {
        &self.latencies
    }

    /// One call ended: with the server's `status`, or `None` when the client
    /// went away before the server said one (CANCELLED).
    fn observe(
        &self,
        method: Method,
        status: Option<&'static str>,
        elapsed: Duration,
        trace: Option<TraceExemplar>,
    ) {
        let seconds = elapsed.as_secs_f64();
        // A name the server never answered as its own (UNIMPLEMENTED, or a
        // first call cut off before any answer) is the client's choice: it
        // must not become a series.
        let unknown = matches!(
            (&method, status),
            (_, Some("UNIMPLEMENTED")) | (Method::New(_), None)
        );
        let status = status.unwrap_or("CANCELLED");
        if unknown {
            let labels = ServerCallLabels {
                rpc_method: OTHER_METHOD.to_owned(),
                rpc_response_status_code: status,
            };
            self.durations
                .get_or_create(&labels)
                .observe(seconds, trace, None);
            return;
        }
        let series = match method {
            Method::Known(series) => series,
            Method::New(name) => self.method(name),
        };
        let trace_id = trace.as_ref().map(|t| t.trace_id.as_str());
        series.latency.observe(elapsed, trace_id);
        if status == "OK" {
            series.ok.observe(seconds, trace, None);
        } else {
            let labels = ServerCallLabels {
                rpc_method: series.name.clone(),
                rpc_response_status_code: status,
            };
            self.durations
                .get_or_create(&labels)
                .observe(seconds, trace, None);
        }
    }
}

/// A call's method: one served before, or a name not yet known.
enum Method {
    Known(Arc<MethodSeries>),
    New(String),
}

/// What a method unknown to the service is counted as (the conventions'
/// name for a value outside the known set).
pub const OTHER_METHOD: &str = "_OTHER";

/// One call being served; observed once, when dropped.
pub struct ServerCall {
    calls: ServerCalls,
    method: Method,
    trace: Option<TraceExemplar>,
    started: std::time::Instant,
    in_flight: Gauge,
    status: Option<&'static str>,
}

impl ServerCall {
    /// The call's status, once known (a header, or the trailers).
    pub fn set_status(&mut self, status: &'static str) {
        self.status = Some(status);
    }

    pub fn set_status_if_unknown(&mut self, status: &'static str) {
        self.status.get_or_insert(status);
    }
}

impl Drop for ServerCall {
    fn drop(&mut self) {
        self.in_flight.dec();
        let method = std::mem::replace(&mut self.method, Method::New(String::new()));
        self.calls.observe(
            method,
            self.status,
            self.started.elapsed(),
            self.trace.take(),
        );
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

/// Where a request was given up on for its deadline.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `waiting`: before its work began, never served (rng: in its lane's
    /// queue or at its turn; hasher: before its work). `working`: cut off
    /// during its work, which an injected extra delay made too long.
    pub stage: &'static str,
}

/// Requests a service gave up on because their deadline would pass first
/// (`<service>_deadline_expired_total`).
#[derive(Clone)]
pub struct DeadlineMetrics {
    expired: Family<StageLabels, Counter>,
}

impl std::fmt::Debug for DeadlineMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadlineMetrics")
    }
}

impl DeadlineMetrics {
    pub fn unregistered() -> Self {
        Self {
            expired: Family::default(),
        }
    }

    /// `service` (`rng`, `hasher`) prefixes the name.
    pub fn register(registry: &mut Registry, service: &str) -> Self {
        let this = Self::unregistered();
        registry.register(
            format!("{service}_deadline_expired"),
            "Requests given up on, with DEADLINE_EXCEEDED, because their deadline would pass first",
            this.expired.clone(),
        );
        this
    }

    pub fn expired(&self, stage: &'static str) {
        if enabled() {
            self.expired.get_or_create(&StageLabels { stage }).inc();
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_call_is_counted_cancelled_and_leaves_the_gauge() {
        let mut registry = Registry::default();
        let calls = ServerCalls::register(&mut registry);
        let rng = calls.in_flight("dockercoins.v1.Rng");
        let mut ok = calls.start(&rng, "dockercoins.v1.Rng/Generate", None);
        ok.set_status("OK");
        drop(ok);
        // A method the server has answered as its own, cut off: CANCELLED.
        let gone = calls.start(&rng, "dockercoins.v1.Rng/Generate", None);
        let mut unknown = calls.start(&rng, "dockercoins.v1.Rng/Whatever", None);
        unknown.set_status("UNIMPLEMENTED");
        // A name never answered, cut off before any answer: not a series.
        let made_up = calls.start(&rng, "dockercoins.v1.Rng/MadeUp", None);
        drop((gone, unknown, made_up));
        let text = Exposition::new(registry).encode();
        for line in [
            r#"rpc_server_call_duration_seconds_count{rpc_method="dockercoins.v1.Rng/Generate",rpc_response_status_code="OK"} 1"#,
            r#"rpc_server_call_duration_seconds_count{rpc_method="dockercoins.v1.Rng/Generate",rpc_response_status_code="CANCELLED"} 1"#,
            r#"rpc_server_call_duration_seconds_count{rpc_method="_OTHER",rpc_response_status_code="UNIMPLEMENTED"} 1"#,
            r#"rpc_server_call_duration_seconds_count{rpc_method="_OTHER",rpc_response_status_code="CANCELLED"} 1"#,
            r#"rpc_server_calls_in_flight{rpc_service="dockercoins.v1.Rng"} 0"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(
            !text.contains("Whatever") && !text.contains("MadeUp"),
            "{text}"
        );
    }
}
