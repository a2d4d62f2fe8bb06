//! Head sampling: whether a trace is kept is decided once, where it starts,
//! and a trace that nobody keeps builds no span.
//!
//! Why not leave it to the SDK's sampler: tracing-opentelemetry builds a
//! span's data (its attributes, ids, builder) before the sampler's decision
//! is known, so a trace sampled at 1%, or with no exporter at all, paid for
//! every span of the other 99% (callgrind: about 30 thousand instructions
//! per unary unit of work in the worker). So the decision is ours, taken
//! where a trace starts (a worker's unit, a server's incoming request), with
//! the configured sampler (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`):
//!
//! - [`Head::Sampled`]: our spans are made (target [`super::TARGET`]), and
//!   their children too; the provider's own sampler keeps all of them.
//! - [`Head::Unsampled`]: no span. The trace's ids ride in an OpenTelemetry
//!   [`Context`] attached to the future, so log lines still carry the
//!   `trace_id` and the next hop gets a `traceparent` saying "not sampled"
//!   (it then makes no spans either).
//! - [`Head::Off`]: `OTEL_SDK_DISABLED=true`, no trace at all.
//!
//! With no exporter configured every trace is unsampled: nothing would keep
//! its spans.
//!
//! The children's constructors ([`super::grpc_client_span`],
//! [`super::redis_span`], rng's lane wait) ask [`in_sampled_trace`] and
//! return `Span::none()` outside one.

use super::traceparent::{self, Parent};
use futures_util::future::Either;
use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::{
    Context,
    propagation::TextMapPropagator,
    trace::{SpanContext, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{IdGenerator, RandomIdGenerator, SamplingDecision, ShouldSample},
};
use std::sync::OnceLock;
use tracing::{Instrument as _, Span, instrument::Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// How this process decides, set once by [`super::init`].
#[derive(Debug)]
enum Policy {
    /// `OTEL_SDK_DISABLED=true`: no traces.
    Off,
    /// No exporter: traces have ids (for the logs and the next hop) and
    /// are never sampled.
    Unexported,
    /// Spans are exported: the configured sampler decides.
    Exported(Box<dyn ShouldSample>),
}

static POLICY: OnceLock<Policy> = OnceLock::new();

/// Sets how traces are decided: `exported` with the SDK's sampler (read from
/// the environment), or never sampled, or no traces when `disabled`.
pub(super) fn configure(disabled: bool, exported: bool) {
    let policy = if disabled {
        Policy::Off
    } else if exported {
        Policy::Exported(opentelemetry_sdk::trace::Config::default().sampler)
    } else {
        Policy::Unexported
    };
    let _ = POLICY.set(policy);
}

/// A process that never called [`super::init`] (a library test) makes ids
/// but no spans.
fn policy() -> &'static Policy {
    POLICY.get_or_init(|| Policy::Unexported)
}

/// The decision for one trace, at its head in this process.
#[derive(Clone, Debug)]
pub enum Head {
    /// Kept: make the spans. Holds the remote parent (an empty context for
    /// a new trace).
    Sampled(Context),
    /// Not kept: no spans; the context holds the trace's ids.
    Unsampled(Context),
    /// No tracing in this process.
    Off,
}

impl Head {
    pub fn is_sampled(&self) -> bool {
        matches!(self, Head::Sampled(_))
    }

    /// An unsampled trace's id in hex, for a log line; `None` for a sampled
    /// one (its span has it) and when tracing is off.
    pub fn trace_id(&self) -> Option<String> {
        match self {
            Head::Sampled(_) | Head::Off => None,
            Head::Unsampled(context) => Some(context.span().span_context().trace_id().to_string()),
        }
    }
}

/// The decision for a new trace: a unit of work, an update to Redis, a
/// request that came without a `traceparent`.
pub fn new_trace(name: &str) -> Head {
    decide(None, name)
}

/// The decision for a request that may carry a `traceparent`: its parent's
/// (with the default `parentbased_*` samplers), or a new trace's.
pub fn incoming(headers: &axum::http::HeaderMap, name: &str) -> Head {
    if matches!(policy(), Policy::Off) {
        return Head::Off;
    }
    let header = headers
        .get(traceparent::HEADER)
        .map(|value| value.as_bytes());
    let parent = match traceparent::read(header) {
        Parent::None => return decide(None, name),
        Parent::Unsampled(ids) => Context::new().with_remote_span_context(ids),
        Parent::Other => TraceContextPropagator::new().extract(&super::Headers(headers)),
    };
    if parent.span().span_context().is_valid() {
        decide(Some(parent), name)
    } else {
        decide(None, name)
    }
}

fn decide(parent: Option<Context>, name: &str) -> Head {
    let ids = RandomIdGenerator::default();
    let trace_id = parent.as_ref().map_or_else(
        || ids.new_trace_id(),
        |cx| cx.span().span_context().trace_id(),
    );
    let sampled = match policy() {
        Policy::Off => return Head::Off,
        Policy::Unexported => false,
        Policy::Exported(sampler) => {
            let result = sampler.should_sample(
                parent.as_ref(),
                trace_id,
                name,
                &SpanKind::Internal,
                &[],
                &[],
            );
            result.decision == SamplingDecision::RecordAndSample
        }
    };
    if sampled {
        return Head::Sampled(parent.unwrap_or_default());
    }
    // A caller that did not sample: its context as it came.
    if let Some(parent) = parent.as_ref()
        && !parent.span().span_context().is_sampled()
    {
        return Head::Unsampled(parent.clone());
    }
    // The caller's span id when there is a caller (nothing of this hop is
    // exported, so no span of its own is needed), a fresh one otherwise.
    let span_id = parent.as_ref().map_or_else(
        || ids.new_span_id(),
        |cx| cx.span().span_context().span_id(),
    );
    let ids = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::default(),
        false,
        TraceState::NONE,
    );
    Head::Unsampled(Context::new().with_remote_span_context(ids))
}

/// Runs `work` as the head of a trace in this process: inside the span
/// `make_span` makes when `head` is sampled (its parent set to the head's),
/// inside the trace's context when not, as it is when tracing is off.
pub fn traced<F: Future>(
    head: Head,
    make_span: impl FnOnce() -> Span,
    work: F,
) -> Either<WithContext<F>, Instrumented<F>> {
    match head {
        Head::Sampled(parent) => {
            let span = make_span();
            // An explicit parent, even an empty one: a new trace's root is
            // a root whatever span encloses it.
            let _ = span.set_parent(parent);
            super::record_trace_id(&span);
            Either::Right(work.instrument(span))
        }
        Head::Unsampled(context) => Either::Left(work.with_context(context)),
        Head::Off => Either::Right(work.instrument(Span::none())),
    }
}

/// Takes the decision for each incoming request (gRPC or HTTP) and leaves it
/// in the request's extensions for [`super::server_span`]; an unsampled
/// request's handler runs in its trace's context. Health checks and
/// reflection are not traced.
#[derive(Clone, Copy, Debug, Default)]
pub struct IncomingTraceLayer;

impl<S> tower::Layer<S> for IncomingTraceLayer {
    type Service = IncomingTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IncomingTrace { inner }
    }
}

/// The service of [`IncomingTraceLayer`].
#[derive(Clone, Debug)]
pub struct IncomingTrace<S> {
    inner: S,
}

impl<S, B> tower::Service<axum::http::Request<B>> for IncomingTrace<S>
where
    S: tower::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<WithContext<S::Future>, S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if super::untraced_path(path) {
            return Either::Right(self.inner.call(request));
        }
        let head = incoming(request.headers(), path);
        let context = match &head {
            Head::Unsampled(context) => Some(context.clone()),
            _ => None,
        };
        request.extensions_mut().insert(head);
        let response = self.inner.call(request);
        match context {
            Some(context) => Either::Left(response.with_context(context)),
            None => Either::Right(response),
        }
    }
}

/// Whether the current span is one of ours, so of a sampled trace: only
/// then does a child span get made. Asks the dispatcher, without cloning
/// the span.
pub fn in_sampled_trace() -> bool {
    tracing::dispatcher::get_default(|dispatch| {
        dispatch
            .current_span()
            .metadata()
            .is_some_and(|meta| meta.target() == super::TARGET)
    })
}

/// The trace of an unsampled unit, from the context it runs in: its ids
/// for a log line or the next hop's `traceparent`.
pub(super) fn unsampled_trace_id() -> Option<TraceId> {
    Context::map_current(|context| {
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then(|| span_context.trace_id())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsampled_trace_keeps_its_callers_ids_and_says_not_sampled() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
                .parse()
                .unwrap(),
        );
        // No init in a unit test: never sampled, ids kept.
        let head = incoming(&headers, "test");
        assert!(!head.is_sampled());
        assert_eq!(
            head.trace_id().as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        let Head::Unsampled(context) = head else {
            panic!("{head:?}");
        };
        let ids = context.span().span_context().clone();
        assert_eq!(ids.span_id().to_string(), "b7ad6b7169203331");
        assert!(!ids.is_sampled());
    }

    #[test]
    fn a_new_trace_gets_fresh_ids() {
        let (a, b) = (new_trace("a"), new_trace("b"));
        assert_ne!(a.trace_id(), b.trace_id());
        assert_eq!(a.trace_id().map(|id| id.len()), Some(32));
    }
}
