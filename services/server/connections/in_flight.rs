//! The layer that tells a connection is in use: a call is in flight from
//! its request to the end of its response body (or until either is
//! dropped), so a long gRPC stream keeps its connection busy. It also
//! refuses, on its headers, a call that finds the server holding its most
//! calls: before its body is read, so a flood of calls costs little more
//! than their headers; and it hands each call's request body to
//! [`Received`], which counts its data against the server's bound.

use super::{CALLS_PUSHBACK, Connection, admitted::ConnectedOn, received::Received};
use crate::{
    server::guarded::{GuardedBody, GuardedFuture, ResponseGuard},
    server::overload,
    telemetry::is_grpc,
};
use axum::http::{Request, Response, StatusCode};
use bytes::Bytes;
use futures_util::future::{Either, Ready, ready as ready_now};
use http_body::Body;
use std::{
    sync::Arc,
    sync::atomic::{AtomicUsize, Ordering},
    task::{Context, Poll},
};

/// A health check is never refused for the calls in flight: a probe
/// (Compose's, Kubernetes', a balancer's) that finds a saturated server
/// dead gets it restarted, which sheds everything. It is one small request
/// answered at once, never buffered or queued.
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// Counts each call on the connection tonic says it came on
/// ([`ConnectedOn`], in the request's extensions).
#[derive(Clone, Copy, Debug, Default)]
pub struct InFlightLayer;

impl<S> tower::Layer<S> for InFlightLayer {
    type Service = InFlight<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlight {
            inner,
            connection: None,
        }
    }
}

/// A service whose calls are counted on their connection.
#[derive(Clone)]
pub struct InFlight<S> {
    inner: S,
    /// The connection, when the service serves one (webui's loop); else
    /// read from each request.
    connection: Option<Arc<Connection>>,
}

impl<S> InFlight<S> {
    /// `inner`, serving `connection` alone.
    pub fn on(inner: S, connection: Arc<Connection>) -> Self {
        Self {
            inner,
            connection: Some(connection),
        }
    }
}

impl<S, B, R> tower::Service<Request<B>> for InFlight<S>
where
    S: tower::Service<Request<tonic::body::Body>, Response = Response<R>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<GuardedBody<R, Arc<Call>>>;
    type Error = S::Error;
    type Future =
        Either<GuardedFuture<S::Future, Arc<Call>>, Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let connection = self.connection.clone().or_else(|| {
            request
                .extensions()
                .get::<ConnectedOn>()
                .map(|on| on.0.clone())
        });
        let Some(connection) = connection else {
            let request = request.map(tonic::body::Body::new);
            return Either::Left(GuardedFuture::new(self.inner.call(request), None));
        };
        let always = request.uri().path() == HEALTH_CHECK;
        let Some(call) = Call::begin(connection, always) else {
            return Either::Right(ready_now(Ok(refusal(
                &request,
                "the server holds its most calls in flight",
            ))));
        };
        let grpc = is_grpc(request.headers());
        let request =
            request.map(|body| tonic::body::Body::new(Received::new(body, call.clone(), grpc)));
        Either::Left(GuardedFuture::new(self.inner.call(request), Some(call)))
    }
}

/// The answer to a call refused because the server holds its most calls:
/// RESOURCE_EXHAUSTED with a pushback for gRPC, 503 with `Retry-After`
/// otherwise.
fn refusal<B, R>(request: &Request<B>, why: &str) -> Response<GuardedBody<R, Arc<Call>>> {
    let response = if is_grpc(request.headers()) {
        overload::status(why.into(), CALLS_PUSHBACK).into_http::<()>()
    } else {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let (name, value) = overload::retry_after_header(CALLS_PUSHBACK);
        if let Ok(value) = value.parse() {
            response.headers_mut().insert(name, value);
        }
        response
    };
    response.map(|()| GuardedBody::Empty)
}

/// One call in flight on a connection, and the request data it holds,
/// until its request body and its response are both done. Public only as
/// the guard in the layer's response type; only this module makes one.
pub struct Call {
    connection: Arc<Connection>,
    /// Request bytes it holds against the server's bound.
    held: AtomicUsize,
}

impl Call {
    /// The call begun on `connection`; `None` when the server refuses it
    /// (never when `always`).
    fn begin(connection: Arc<Connection>, always: bool) -> Option<Arc<Self>> {
        connection.begin_call(always).then(|| {
            Arc::new(Self {
                connection,
                held: AtomicUsize::new(0),
            })
        })
    }

    /// A new gRPC message of `size` bytes begins: the one before is the
    /// service's now. Whether it fits.
    pub(super) fn hold_message(&self, size: usize) -> bool {
        self.give_back_held();
        self.hold_more(size)
    }

    /// `bytes` more of request data. Whether they fit.
    pub(super) fn hold_more(&self, bytes: usize) -> bool {
        let fits = self.connection.server_calls.take_received(bytes);
        if fits {
            self.held.fetch_add(bytes, Ordering::AcqRel);
        }
        fits
    }

    fn give_back_held(&self) {
        let held = self.held.swap(0, Ordering::AcqRel);
        self.connection.server_calls.give_back_received(held);
    }

    /// How a call whose data does not fit is refused.
    pub(super) fn refusal(&self) -> tonic::Status {
        overload::status(
            "the server holds its most request data".into(),
            CALLS_PUSHBACK,
        )
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.give_back_held();
        self.connection.end_call();
    }
}

/// A call is in flight until its response body ends: dropping it is all.
impl ResponseGuard for Arc<Call> {}
