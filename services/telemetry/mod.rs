//! Logs and traces, set up once by [`init`].
//!
//! Logs: `tracing-subscriber`, filtered by `RUST_LOG` (default `info`), as
//! text or JSON lines on stderr. A line written inside a traced span carries
//! that span's `trace_id`.
//!
//! Traces: OpenTelemetry through `tracing-opentelemetry`, exported over
//! OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Whether a trace is
//! kept is decided once, where it starts ([`sampling`], with the standard
//! `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`), and only a kept
//! trace makes spans; every trace has ids, so trace ids reach the logs and
//! `traceparent` reaches the next hop. `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` are honoured by the SDK. Only spans with
//! target [`TARGET`] become OpenTelemetry spans: h2, hyper, tonic and the
//! exporter's own calls never do, health checks neither.
//!
//! The helpers below make the spans of this project: one shape for a gRPC
//! client call, a gRPC or HTTP server request, a Redis command.
//!
//! Beside them: [`metrics`], the core every metric family registers in
//! (each family lives beside what it measures); [`latency`], the buckets and
//! durations read back as rates and quantiles; [`throttle`], the one
//! rate-limited log line; [`error_chain`], an error and its causes on one
//! line; [`procfs`], a process's CPU and memory as Linux tells them.

pub mod error_chain;
pub mod latency;
pub mod metrics;
pub mod procfs;
pub mod sampling;
pub mod throttle;
pub mod traceparent;

use opentelemetry::{
    KeyValue,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use sampling::Head;
use std::{io::IsTerminal, time::Duration};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterExt, filter_fn},
    fmt,
    layer::Identity,
    prelude::*,
};

/// The target of every span that becomes an OpenTelemetry span.
pub const TARGET: &str = "dockercoins::trace";
/// The target of a span made for the logs only: a plain HTTP request of a
/// trace that is not sampled, whose lines still carry its `trace_id`.
const LOG_TARGET: &str = "dockercoins::log";

/// Log fields that other programs read from a service's output: `bench` and
/// the tests start services as child processes and wait for these.
pub mod fields {
    /// The address a server (or the worker's liveness probe) listens on,
    /// in its first line: a caller that bound port 0 learns the real one.
    pub const LISTEN: &str = "listen";
    /// The worker's last line: hashes done, each with a valid digest.
    pub const HASHES_DONE: &str = "hashes_done";
    /// The worker's last line: of those, how many Redis acknowledged.
    pub const HASHES_FLUSHED: &str = "hashes_flushed";
    /// The worker's last line: coins found.
    pub const COINS_FOUND: &str = "coins_found";
    /// The worker's last line: of those, how many Redis counted in `coins`.
    pub const COINS_FLUSHED: &str = "coins_flushed";
    /// An open-loop worker's line before its last: its latency report, as
    /// JSON.
    pub const OPEN_LOOP: &str = "open_loop";
    /// The message of the worker's first line, once its loops run.
    pub const WORKER_MINING: &str = "worker mining";
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Keeps telemetry alive; dropping it flushes the spans still buffered, for
/// at most [`FLUSH_TIMEOUT`] so a stop stays within its second.
#[must_use = "telemetry stops when the guard is dropped"]
pub struct Guard {
    provider: SdkTracerProvider,
}

/// Bound on the last export at exit; a collector that is down costs no more.
pub const FLUSH_TIMEOUT: Duration = Duration::from_millis(300);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::debug!(%error, "trace export did not finish at exit");
        }
    }
}

/// Installs logging and tracing for the process; call once, inside the tokio
/// runtime (the OTLP exporter's channel needs it). `service` names the
/// service when `OTEL_SERVICE_NAME` does not.
pub fn init(format: LogFormat, service: &str) -> Guard {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|value| !value.is_empty());
    let provider = provider(service, endpoint.as_deref());
    let tracer = provider.tracer("dockercoins");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    // OTEL_SDK_DISABLED=true (the standard switch): no spans at all, so no
    // trace ids in the logs and no traceparent sent on; what tracing costs.
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    sampling::configure(disabled, endpoint.is_some());
    let traces = trace_layer(tracer, disabled);
    // Logs see the spans that frame an HTTP request (their trace_id prefixes
    // the lines inside), not the per-call ones that no
    // line is written in: the formatter writes a span's fields when it opens
    // and again at every `record`, and for rng's and hasher's gRPC server
    // spans that was a quarter of their instructions per call (callgrind).
    // The worker's unit spans are left out too: recording a unit's trace id
    // on its span had the formatter write the span again, per hash in unary
    // mode (6% of the worker's instructions, callgrind); the few lines a
    // unit logs say it themselves ([`current_trace_id`]).
    let framing = filter_fn(|meta| meta.target() != TARGET || meta.name() == "http.server");
    tracing_subscriber::registry()
        .with(fmt.with_filter(logs.and(framing)))
        .with(traces)
        .init();
    if disabled {
        tracing::info!("OTEL_SDK_DISABLED: no tracing");
    } else if let Some(endpoint) = endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP/gRPC");
    }
    Guard { provider }
}

/// The layer that makes spans for OpenTelemetry, or one that enables
/// nothing when tracing is off.
fn trace_layer<S>(
    tracer: opentelemetry_sdk::trace::Tracer,
    disabled: bool,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber
        + Send
        + Sync
        + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    // Off is a layer that enables nothing, not an absent (`None`) one: an
    // absent layer declares an interest in every callsite, which had every
    // library's debug span made, so "off" cost more than on (callgrind: 198k
    // instructions per rng call against 103k).
    if disabled {
        Identity::new().with_filter(filter_fn(|_| false)).boxed()
    } else {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_location(false)
            // Not conventions, and not what a reader of a trace looks for:
            // every span here has the same target, and busy/idle times cost
            // two clock reads per poll.
            .with_target(false)
            .with_tracked_inactivity(false)
            // Entering a span would attach its OpenTelemetry context at every
            // poll; nothing here reads it (children find their parent
            // through tracing, unsampled traces carry their own).
            .with_context_activation(false)
            .with_filter(filter_fn(|meta| {
                // Our spans, and warnings and errors as span events.
                meta.target() == TARGET
                    || (meta.is_event() && *meta.level() <= tracing::Level::WARN)
            }))
            .boxed()
    }
}

fn provider(service: &str, endpoint: Option<&str>) -> SdkTracerProvider {
    let detected = Resource::builder().build();
    let mut resource = Resource::builder();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if !named {
        resource = resource.with_service_name(format!("dockercoins-{service}"));
    }
    if detected
        .get(&opentelemetry::Key::from_static_str("service.instance.id"))
        .is_none()
    {
        // Replicas of one service are told apart by host (the container id
        // under Docker) and process.
        let instance = format!("{}-{}", hostname(), std::process::id());
        resource = resource.with_attribute(KeyValue::new("service.instance.id", instance));
    }
    // Every span made is of a trace already decided as kept (see
    // `sampling`): the provider's sampler must not decide again.
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource.build());
    if let Some(endpoint) = endpoint {
        use opentelemetry_otlp::WithTonicConfig;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(channel) = collector_channel(endpoint) {
            exporter = exporter.with_channel(channel);
        }
        match exporter.build() {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(error) => eprintln!("dockercoins: traces will not be exported: {error}"),
        }
    }
    builder.build()
}

/// How long a connection to the Collector may take to open.
const COLLECTOR_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an HTTP/2 PING asks whether the Collector is still there, and
/// how long its answer may take.
const COLLECTOR_KEEPALIVE: (Duration, Duration) =
    (Duration::from_secs(30), Duration::from_secs(10));

/// The exporter's connection to a plain-HTTP Collector, or `None` to leave
/// it to the SDK (which then says what it cannot do, e.g. https).
///
/// The SDK's own has neither a connect timeout nor HTTP/2 keepalive, so
/// when the Collector's pod goes (a rolling restart, a reschedule) an
/// exporter could wait on a dead address or a silent connection for
/// minutes, every export failing meanwhile: on a live cluster, rng's spans
/// were missing from Jaeger for over a minute after the Collector was
/// restarted. The Collector's receiver allows these pings
/// (`keepalive.enforcement_policy` in deploy/otel/collector.yaml).
fn collector_channel(endpoint: &str) -> Option<tonic::transport::Channel> {
    if !endpoint.starts_with("http://") {
        return None;
    }
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_owned()).ok()?;
    Some(
        endpoint
            .connect_timeout(COLLECTOR_CONNECT_TIMEOUT)
            .http2_keep_alive_interval(COLLECTOR_KEEPALIVE.0)
            .keep_alive_timeout(COLLECTOR_KEEPALIVE.1)
            .keep_alive_while_idle(true)
            .connect_lazy(),
    )
}

/// Writes the call's trace into outgoing gRPC metadata: `span`'s context
/// (the call's server span becomes its child), or, with no span, the
/// unsampled trace the call runs in (the server then makes no span).
pub fn inject<T>(span: &Span, request: &mut tonic::Request<T>) {
    if span.is_none() {
        opentelemetry::Context::map_current(|context| {
            let span = context.span();
            let ids = span.span_context();
            if !ids.is_valid() {
                return;
            }
            let value = traceparent::write(ids);
            if let Ok(value) = tonic::metadata::MetadataValue::try_from(&value[..]) {
                let key = tonic::metadata::MetadataKey::from_static(traceparent::HEADER);
                request.metadata_mut().insert(key, value);
            }
        });
    } else {
        TraceContextPropagator::new()
            .inject_context(&span.context(), &mut MetadataMap(request.metadata_mut()));
    }
}

struct MetadataMap<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataMap<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Reads a trace context from HTTP headers (gRPC metadata included).
pub(crate) struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

/// The current trace's id, for a log line to carry when the logs do not
/// format its span (a worker's unit of work); `None` without tracing.
pub fn current_trace_id() -> Option<String> {
    if sampling::in_sampled_trace() {
        trace_id_of(&Span::current())
    } else {
        sampling::unsampled_trace_id().map(|id| id.to_string())
    }
}

/// `span`'s trace id in hex; `None` when it has none (tracing off).
fn trace_id_of(span: &Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Records `span`'s trace id in its `trace_id` field, for the logs; a span
/// without that field (one the logs do not format) costs no lookup.
pub(crate) fn record_trace_id(span: &Span) {
    let for_logs = span
        .metadata()
        .is_some_and(|meta| meta.fields().field("trace_id").is_some());
    if !for_logs {
        return;
    }
    if let Some(id) = trace_id_of(span) {
        span.record("trace_id", id);
    }
}

/// A gRPC client span: `service/method` to `address:port`, per the stable
/// OpenTelemetry RPC conventions (semconv 1.45): the span is named after the
/// full method, which `rpc.method` carries too. Record the outcome with
/// [`record_grpc_result`]. Outside a sampled trace: `Span::none()`.
pub fn grpc_client_span(
    service: &'static str,
    method: &'static str,
    address: &str,
    port: u16,
) -> Span {
    if !sampling::in_sampled_trace() {
        return Span::none();
    }
    let full_method = format!("{service}/{method}");
    tracing::info_span!(
        target: TARGET,
        "grpc.client",
        otel.name = full_method.as_str(),
        otel.kind = "client",
        rpc.system.name = "grpc",
        rpc.method = full_method.as_str(),
        server.address = address,
        server.port = i64::from(port),
        rpc.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        error.message = tracing::field::Empty,
        // `retry` or `hedge`: why this attempt of a call was made.
        dockercoins.attempt = tracing::field::Empty,
    )
}

/// Records a gRPC call's status on its client span: every status but OK is
/// an error for the caller.
pub fn record_grpc_result<T>(span: &Span, result: &Result<T, tonic::Status>) {
    match result {
        Ok(_) => {
            span.record("rpc.response.status_code", code_name(tonic::Code::Ok));
        }
        Err(status) => {
            let code = code_name(status.code());
            span.record("rpc.response.status_code", code);
            span.record("error.type", code);
            span.record("otel.status_code", "ERROR");
            span.record("error.message", status.message());
        }
    }
}

/// A gRPC status code as the RPC conventions write it (`OK`,
/// `DEADLINE_EXCEEDED`...): the names of the gRPC specification, which
/// tonic's `Code` spells in CamelCase.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether a server that answered `code` failed, per the gRPC conventions:
/// a caller's mistake (INVALID_ARGUMENT, NOT_FOUND...) is not the server's
/// error.
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// A Redis command span; outside a sampled trace, `Span::none()`.
pub fn redis_span(operation: &'static str, url: &str) -> Span {
    if !sampling::in_sampled_trace() {
        return Span::none();
    }
    let (address, port) = server_address(url);
    tracing::info_span!(
        target: TARGET,
        "redis",
        otel.name = operation,
        otel.kind = "client",
        db.system = "redis",
        db.system.name = "redis",
        db.operation.name = operation,
        server.address = address,
        server.port = port,
        otel.status_code = tracing::field::Empty,
        error.message = tracing::field::Empty,
    )
}

/// `server.address` and `server.port` of a URL like `http://rng:8001` or
/// `redis://:pw@redis:6379/0` (never its credentials); no port: 0. Not a URL
/// (a bare host): the string as given.
fn server_address(url: &str) -> (String, u16) {
    match url::Url::parse(url) {
        Ok(url) => (
            url.host_str().unwrap_or_default().to_owned(),
            url.port().unwrap_or(0),
        ),
        Err(_) => (url.to_owned(), 0),
    }
}

/// Whether a request or response is gRPC, by its content type.
pub fn is_grpc(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

/// Paths never traced: health checks and reflection.
fn untraced_path(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// The server span of a request: a child of the caller's `traceparent`, per
/// the OpenTelemetry RPC (or HTTP) conventions, when the request's trace is
/// sampled ([`sampling::IncomingTraceLayer`] decided). Otherwise none, or,
/// for plain HTTP, a span for the logs only, with the trace id.
pub fn server_span<B>(request: &axum::http::Request<B>) -> Span {
    let path = request.uri().path();
    if untraced_path(path) {
        return Span::none();
    }
    let head = match request.extensions().get::<Head>() {
        Some(head) => head.clone(),
        None => sampling::incoming(request.headers(), path),
    };
    let Head::Sampled(parent) = head else {
        if is_grpc(request.headers()) {
            return Span::none();
        }
        return tracing::info_span!(
            target: LOG_TARGET,
            "http.server",
            http.request.method = %request.method(),
            url.path = path,
            trace_id = head.trace_id(),
        );
    };
    let span = if is_grpc(request.headers()) {
        let full_method = path.trim_start_matches('/');
        tracing::info_span!(
            target: TARGET,
            "grpc.server",
            otel.name = full_method,
            otel.kind = "server",
            rpc.system.name = "grpc",
            rpc.method = full_method,
            rpc.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    } else {
        tracing::info_span!(
            target: TARGET,
            "http.server",
            otel.name = format!("{} {path}", request.method()),
            otel.kind = "server",
            http.request.method = %request.method(),
            url.path = path,
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        )
    };
    let _ = span.set_parent(parent);
    record_trace_id(&span);
    span
}

fn record_grpc_status(headers: &axum::http::HeaderMap, span: &Span) {
    if let Some(code) = headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
    {
        let code = tonic::Code::from_i32(code);
        span.record("rpc.response.status_code", code_name(code));
        if is_server_error(code) {
            span.record("error.type", code_name(code));
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// Plain HTTP: the status. gRPC: the status when it came with the headers
/// (an error before any message); otherwise it comes in the trailers.
pub fn record_response<B>(response: &axum::http::Response<B>, _latency: Duration, span: &Span) {
    if is_grpc(response.headers()) {
        record_grpc_status(response.headers(), span);
    } else {
        span.record("http.response.status_code", response.status().as_u16());
        if response.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
}

pub fn record_trailers(trailers: Option<&axum::http::HeaderMap>, _stream: Duration, span: &Span) {
    if let Some(trailers) = trailers {
        record_grpc_status(trailers, span);
    }
}

/// This machine's hostname, as the original services printed it.
pub fn hostname() -> String {
    hostname::get()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_grpc_code_has_its_specification_name() {
        let names: Vec<&str> = (0..=16)
            .map(|code| super::code_name(tonic::Code::from_i32(code)))
            .collect();
        assert_eq!(names[0], "OK");
        assert_eq!(names[4], "DEADLINE_EXCEEDED");
        assert_eq!(names[14], "UNAVAILABLE");
        assert_eq!(names[16], "UNAUTHENTICATED");
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 17, "{names:?}");
        // A caller's mistake is not the server's error; a crash is.
        assert!(!super::is_server_error(tonic::Code::InvalidArgument));
        assert!(super::is_server_error(tonic::Code::Internal));
    }

    #[test]
    fn urls_split_into_address_and_port_without_credentials() {
        let split = super::server_address;
        assert_eq!(split("http://rng:8001"), ("rng".into(), 8001));
        assert_eq!(
            split("redis://:secret@redis:6379/0"),
            ("redis".into(), 6379)
        );
        assert_eq!(split("redis://:***@redis:6379/0"), ("redis".into(), 6379));
        assert_eq!(split("redis://redis"), ("redis".into(), 0));
        assert_eq!(split("redis://[::1]:6379"), ("[::1]".into(), 6379));
        assert_eq!(split("redis"), ("redis".into(), 0));
    }
}
