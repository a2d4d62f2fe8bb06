//! A response held by a guard until its body ends: the guard goes with the
//! response future, then with its body, and is dropped with the body's last
//! frame (or with whichever is dropped first). A gRPC stream is a call until
//! its last message, not until its headers; so the call meter measures it
//! whole and the connection it came on stays busy.
//!
//! The guard is told what goes by ([`ResponseGuard`]): the call meter reads the
//! status from the headers or the trailers; the load report adds itself to
//! them; a call in flight needs only to be dropped. Not here: what any guard
//! does, which lives with its layer.

use axum::http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

/// What a guard is told of the response it holds; then it is dropped.
pub trait ResponseGuard {
    /// The response's headers (a trailers-only gRPC answer's status is
    /// here), which the guard may add to.
    fn headers(&mut self, _headers: &mut HeaderMap) {}

    /// The body's trailers (a gRPC answer's status, usually), which the
    /// guard may add to.
    fn trailers(&mut self, _trailers: &mut HeaderMap) {}

    /// The body ended, or broke: the last word before the guard is dropped.
    fn ended(&mut self) {}
}

pin_project! {
    /// A response future, holding its guard until the headers arrive, then
    /// handing it to the body.
    pub struct GuardedFuture<F, G> {
        #[pin]
        inner: F,
        guard: Option<G>,
    }
}

impl<F, G> GuardedFuture<F, G> {
    /// `inner`, held by `guard` (none: nothing to hold).
    pub fn new(inner: F, guard: Option<G>) -> Self {
        Self { inner, guard }
    }
}

impl<F, G, R, E> Future for GuardedFuture<F, G>
where
    F: Future<Output = Result<Response<R>, E>>,
    G: ResponseGuard,
{
    type Output = Result<Response<GuardedBody<R, G>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        let mut guard = this.guard.take();
        if let Some(guard) = &mut guard {
            guard.headers(response.headers_mut());
        }
        Poll::Ready(Ok(
            response.map(|inner| GuardedBody::Guarded { inner, guard })
        ))
    }
}

pin_project! {
    /// A response body, its guard dropped with its last frame.
    #[project = GuardedBodyProjection]
    pub enum GuardedBody<B, G> {
        Guarded {
            #[pin]
            inner: B,
            guard: Option<G>,
        },
        /// No frame at all: an answer a layer made itself, before any
        /// service (a refusal), in the type of the answers it lets through.
        Empty,
    }
}

impl<B: Body, G: ResponseGuard> Body for GuardedBody<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let GuardedBodyProjection::Guarded { inner, guard } = self.project() else {
            return Poll::Ready(None);
        };
        let mut frame = ready!(inner.poll_frame(cx));
        match &mut frame {
            Some(Ok(frame)) => {
                if let (Some(trailers), Some(guard)) = (frame.trailers_mut(), guard.as_mut()) {
                    guard.trailers(trailers);
                }
            }
            // The end (or a broken body): the guard's last word, then gone.
            None | Some(Err(_)) => {
                if let Some(mut guard) = guard.take() {
                    guard.ended();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Guarded { inner, .. } => inner.is_end_stream(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Guarded { inner, .. } => inner.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
        }
    }
}
