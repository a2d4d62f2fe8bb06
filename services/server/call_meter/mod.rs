//! The layer under every gRPC server that measures each call it serves into
//! [`ServerCalls`] (in [`metrics`], beside it): from the request's arrival
//! to the end of its response body (held by a [`ResponseGuard`]), so a stream counts
//! whole and rng's calls include their wait in the lane; the status read
//! from the response headers (a trailers-only error) or from the trailers.
//!
//! Only the server's own services are measured, and a method they do not have
//! (UNIMPLEMENTED) is counted as `_OTHER`: a client choosing paths must not
//! choose how many series the server keeps.

pub mod metrics;

use crate::{
    server::guarded::{GuardedBody, GuardedFuture, ResponseGuard},
    telemetry::{code_name, is_grpc, metrics::TraceExemplar},
};
use axum::http::{HeaderMap, Request, Response};
use metrics::{ServerCall, ServerCalls};
use prometheus_client::metrics::gauge::Gauge;
use std::{
    sync::Arc,
    task::{Context, Poll},
};

/// Measures the calls to `services` (gRPC service names) into `calls`.
#[derive(Clone)]
pub struct CallMeterLayer {
    calls: ServerCalls,
    /// Each service with its in-flight gauge, resolved once.
    services: Arc<[(&'static str, Gauge)]>,
}

impl CallMeterLayer {
    pub fn new(calls: ServerCalls, services: &[&'static str]) -> Self {
        let services = services
            .iter()
            .map(|&service| (service, calls.in_flight(service)))
            .collect();
        Self { calls, services }
    }
}

impl<S> tower::Layer<S> for CallMeterLayer {
    type Service = CallMeter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallMeter {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CallMeter<S> {
    inner: S,
    layer: CallMeterLayer,
}

impl<S, B, R> tower::Service<Request<B>> for CallMeter<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<GuardedBody<R, ServerCall>>;
    type Error = S::Error;
    type Future = GuardedFuture<S::Future, ServerCall>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let call = self.start(&request);
        GuardedFuture::new(self.inner.call(request), call)
    }
}

impl<S> CallMeter<S> {
    fn start<B>(&self, request: &Request<B>) -> Option<ServerCall> {
        if !crate::telemetry::metrics::enabled() || !is_grpc(request.headers()) {
            return None;
        }
        let method = request.uri().path().trim_start_matches('/');
        let service = method.split('/').next().unwrap_or_default();
        let (_, in_flight) = self
            .layer
            .services
            .iter()
            .find(|(known, _)| *known == service)?;
        // Inside the server's span: its trace, when sampled, is the exemplar.
        let trace = TraceExemplar::of(&tracing::Span::current());
        Some(self.layer.calls.start(in_flight, method, trace))
    }
}

/// A call's [`ServerCall`] is observed when its response body ends, with
/// the status its headers or trailers said.
impl ResponseGuard for ServerCall {
    fn headers(&mut self, headers: &mut HeaderMap) {
        // A trailers-only response (an error) has its status here.
        note_status(self, headers);
    }

    fn trailers(&mut self, trailers: &mut HeaderMap) {
        note_status(self, trailers);
    }

    fn ended(&mut self) {
        // UNKNOWN if the trailers never came (a broken body).
        self.set_status_if_unknown("UNKNOWN");
    }
}

fn note_status(call: &mut ServerCall, headers: &HeaderMap) {
    if let Some(code) = headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
    {
        call.set_status(code_name(tonic::Code::from_i32(code)));
    }
}
