//! The layer under every gRPC server that measures each call it serves into
//! [`ServerCalls`] (in [`metrics`], beside it): from the request's arrival to the end of its response
//! body, so a stream counts whole and rng's calls include their wait in the
//! lane; the status read from the response headers (a trailers-only error) or
//! from the trailers.
//!
//! Only the server's own services are measured, and a method they do not have
//! (UNIMPLEMENTED) is counted as `_OTHER`: a client choosing paths must not
//! choose how many series the server keeps.

pub mod metrics;

use crate::telemetry::{code_name, is_grpc, metrics::TraceExemplar};
use axum::http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use metrics::{ServerCall, ServerCalls};
use pin_project_lite::pin_project;
use prometheus_client::metrics::gauge::Gauge;
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
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
    type Response = Response<MeteredBody<R>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let call = self.start(&request);
        MeteredFuture {
            inner: self.inner.call(request),
            call,
        }
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

pin_project! {
    /// The response of a measured call, until its headers arrive.
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        call: Option<ServerCall>,
    }
}

impl<F, R, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<MeteredBody<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let mut call = this.call.take();
        if let Some(call) = &mut call {
            // A trailers-only response (an error) has its status here.
            note_status(call, response.headers());
        }
        Poll::Ready(Ok(response.map(|inner| MeteredBody { inner, call })))
    }
}

pin_project! {
    /// A measured call's response body: the call ends with its last frame.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<ServerCall>,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(trailers), Some(call)) = (frame.trailers_ref(), this.call.as_mut()) {
                    note_status(call, trailers);
                }
            }
            // The end (or a broken body): the call is observed now, with
            // the status it has (UNKNOWN if the trailers never came).
            None | Some(Err(_)) => {
                if let Some(mut call) = this.call.take() {
                    call.set_status_if_unknown("UNKNOWN");
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
