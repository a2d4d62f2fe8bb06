//! How an overloaded server says no: at once, before any work, with when to
//! ask again. rng refuses when its lane's queue is full, hasher when the
//! data it is working on would pass its budget. A refusal is gRPC
//! RESOURCE_EXHAUSTED with gRFC A6's pushback in its trailers, or HTTP 503
//! with `Retry-After`; it is counted by the server and logged at a bounded
//! rate, since a flood is refused thousands of times a second.

use crate::telemetry::throttle::Throttle;
use axum::{
    body::Bytes,
    extract::rejection::BytesRejection,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use std::time::Duration;
use tonic::Status;

/// gRFC A6's pushback, in a refusal's trailers: the milliseconds a client
/// should wait before it asks this replica again (the balancer honours it).
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// The longest pushback said or honoured: a full queue can take long to
/// drain (256 x 100 ms), and a hint from a confused server must not set a
/// replica aside for an hour.
pub const MAX_PUSHBACK: Duration = Duration::from_secs(30);

/// How often a server's refusals are logged, at most.
pub const SAY_REFUSALS_EVERY: Duration = Duration::from_secs(5);

/// A request refused for overload: answered at once, never queued, never
/// served; not the caller's mistake, and it is told when to ask again. rng
/// refuses with one when its lane's queue is full, hasher when its work
/// budget is spent: each says `why` its own way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why}; retry in {} ms", .retry_after.as_millis())]
pub struct Overloaded {
    /// `rng is overloaded: 256 requests already wait for its lane`.
    pub why: String,
    /// About how long the server takes to have room again.
    pub retry_after: Duration,
}

impl From<Overloaded> for Status {
    fn from(overloaded: Overloaded) -> Self {
        status(overloaded.to_string(), overloaded.retry_after)
    }
}

impl IntoResponse for Overloaded {
    fn into_response(self) -> Response {
        response(self.to_string(), self.retry_after)
    }
}

/// `retry_after` as a pushback: at least 1 ms, at most [`MAX_PUSHBACK`].
pub fn pushback(retry_after: Duration) -> Duration {
    retry_after.clamp(Duration::from_millis(1), MAX_PUSHBACK)
}

/// A refusal as gRPC answers it: RESOURCE_EXHAUSTED, `why`, and the pushback.
pub fn status(why: String, retry_after: Duration) -> Status {
    let mut status = Status::resource_exhausted(why);
    let millis = pushback(retry_after).as_millis().to_string();
    if let Ok(value) = millis.parse() {
        status.metadata_mut().insert(RETRY_PUSHBACK, value);
    }
    status
}

/// A refusal as HTTP answers it: 503, `why`, and `Retry-After`.
pub fn response(why: String, retry_after: Duration) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [retry_after_header(retry_after)],
        format!("{why}\n"),
    )
        .into_response()
}

/// `Retry-After` for `retry_after`: whole seconds, rounded up and never 0
/// (RFC 9110).
pub fn retry_after_header(retry_after: Duration) -> (header::HeaderName, String) {
    let seconds = pushback(retry_after).as_millis().div_ceil(1000).max(1);
    (header::RETRY_AFTER, seconds.to_string())
}

/// The pause a refusal asks for (gRFC A6: milliseconds in
/// [`RETRY_PUSHBACK`]; negative or unreadable: none), at most
/// [`MAX_PUSHBACK`].
pub fn asked(status: &Status) -> Option<Duration> {
    let millis: i64 = status
        .metadata()
        .get(RETRY_PUSHBACK)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let millis = u64::try_from(millis).ok()?;
    Some(Duration::from_millis(millis).min(MAX_PUSHBACK))
}

/// A request body an HTTP handler reads whole, or why it could not.
pub fn whole_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, UnreadBody> {
    body.map_err(|rejection| match refusal_in(&rejection) {
        Some(status) => UnreadBody::Refused {
            why: status.message().to_owned(),
            retry_after: asked(status).unwrap_or(Duration::from_secs(1)),
        },
        None => UnreadBody::Rejected(rejection),
    })
}

/// Why a request body could not be read whole.
#[derive(Debug)]
pub enum UnreadBody {
    /// The server refused its data for overload (its bound on request data
    /// held): 503 with `Retry-After`.
    Refused { why: String, retry_after: Duration },
    /// axum's reason (too large, broken): its own answer.
    Rejected(BytesRejection),
}

impl IntoResponse for UnreadBody {
    fn into_response(self) -> Response {
        match self {
            Self::Refused { why, retry_after } => response(why, retry_after),
            Self::Rejected(rejection) => rejection.into_response(),
        }
    }
}

/// The overload refusal (RESOURCE_EXHAUSTED) behind `error`, if any.
fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Status> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(status) = error.downcast_ref::<Status>()
            && status.code() == tonic::Code::ResourceExhausted
        {
            return Some(status);
        }
        next = error.source();
    }
    None
}

/// A server's line about its refusals, said at most every
/// [`SAY_REFUSALS_EVERY`] with how many there were since the last one.
#[derive(Debug)]
pub struct Refusals(Throttle);

impl Default for Refusals {
    fn default() -> Self {
        Self(Throttle::new(SAY_REFUSALS_EVERY))
    }
}

impl Refusals {
    /// Notes one refusal; `Some(count)` when it is time to say how many
    /// there were since the last line, this one included (the first is
    /// said at once, then at most every [`SAY_REFUSALS_EVERY`]).
    pub fn note(&self) -> Option<u64> {
        self.0.note().map(|unsaid| unsaid + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_is_milliseconds_in_grpc_and_whole_seconds_in_http() {
        let refused = status("full".into(), Duration::from_millis(300));
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(refused.metadata().get(RETRY_PUSHBACK).unwrap(), "300");
        let refused = response("full".into(), Duration::from_millis(300));
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        let refused = response("full".into(), Duration::from_secs(3600));
        assert_eq!(refused.headers()[header::RETRY_AFTER], "30");
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_said_at_once_then_at_most_every_five_seconds() {
        let refusals = Refusals::default();
        assert_eq!(refusals.note(), Some(1));
        assert_eq!(refusals.note(), None);
        assert_eq!(refusals.note(), None);
        tokio::time::advance(SAY_REFUSALS_EVERY).await;
        assert_eq!(refusals.note(), Some(3));
    }
}
