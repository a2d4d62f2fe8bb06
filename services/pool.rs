//! The gRPC client side shared by the worker and the webui gateway: a few
//! HTTP/2 channels per backend, with connect and call timeouts, and a capped
//! exponential [`Backoff`] for when a backend is down.
//!
//! Several channels, because one HTTP/2 connection serialises its streams on a
//! lock in h2: spreading calls over a few connections is what lets one worker
//! keep many calls in flight. [`Backend::channel`] is the one place a call
//! picks its connection, so a balancer over several replicas drops in there.

use rand::Rng as _;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

/// How a client reaches its backends.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// HTTP/2 connections per backend.
    pub channels: usize,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on each call, queueing in the backend included.
    pub call_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            channels: 2,
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(5),
        }
    }
}

/// A backend URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {name} URL {url:?}: {reason} (expected like http://{name}:8001)")]
pub struct InvalidUrl {
    name: &'static str,
    url: String,
    reason: String,
}

/// The channels to one backend service.
#[derive(Clone)]
pub struct Backend {
    /// `rng` or `hasher`: for logs.
    name: &'static str,
    /// The URL as configured, for logs and the status page.
    url: Arc<str>,
    /// Connected lazily: a backend that is down at start is not an error.
    channels: Arc<[Channel]>,
    /// Round-robin position over `channels`.
    next: Arc<AtomicUsize>,
    /// Whether the last call failed as unavailable: lets the logs say "down"
    /// once and "back" once, instead of once per failed call.
    down: Arc<AtomicBool>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.name, self.url)
    }
}

impl Backend {
    /// Channels to `url` (`http://host:port`). Nothing connects until the
    /// first call.
    pub fn new(name: &'static str, url: &str, settings: &PoolSettings) -> Result<Self, InvalidUrl> {
        let invalid = |reason: String| InvalidUrl {
            name,
            url: url.to_owned(),
            reason,
        };
        let endpoint =
            Endpoint::from_shared(url.to_owned()).map_err(|error| invalid(error.to_string()))?;
        if endpoint.uri().host().is_none() {
            return Err(invalid("no host".into()));
        }
        let endpoint = endpoint
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.call_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let channels = (0..settings.channels.max(1))
            .map(|_| endpoint.connect_lazy())
            .collect();
        Ok(Self {
            name,
            url: url.into(),
            channels,
            next: Arc::new(AtomicUsize::new(0)),
            down: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The channel for the next call (round robin).
    pub fn channel(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }

    /// Notes a call that failed; logs the first failure of a streak at warn.
    pub fn note_failure(&self, status: &tonic::Status) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                backend = self.name,
                url = %self.url,
                code = ?status.code(),
                error = status.message(),
                "{} call failed; backing off and retrying",
                self.name
            );
        } else {
            tracing::debug!(backend = self.name, code = ?status.code(), error = status.message(), "call failed");
        }
    }

    /// Notes a call that succeeded; logs the end of a failure streak.
    pub fn note_success(&self) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(backend = self.name, url = %self.url, "{} is answering again", self.name);
        }
    }
}

/// Makes one gRPC call inside a client span, with the trace context in its
/// metadata and its status recorded on the span. For a streaming call the
/// span covers the call's start, up to the response headers.
pub async fn traced<M, T>(
    backend: &Backend,
    service: &'static str,
    method: &'static str,
    call: impl AsyncFnOnce(tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
    message: M,
) -> Result<tonic::Response<T>, tonic::Status> {
    let span = crate::telemetry::grpc_client_span(service, method, backend.url());
    let result = async {
        let mut request = tonic::Request::new(message);
        crate::telemetry::inject(&mut request);
        call(request).await
    }
    .instrument(span.clone())
    .await;
    crate::telemetry::record_grpc_result(&span, &result);
    result
}

/// Capped exponential backoff with jitter: never a busy loop, and many
/// clients that failed together do not come back in lockstep.
#[derive(Debug)]
pub struct Backoff {
    /// Next wait, before jitter.
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(50), Duration::from_secs(2))
    }
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    /// Back to the shortest wait, after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The next wait (between half and all of the current step), doubling
    /// the step up to the cap.
    pub fn step(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// Sleeps for the next wait.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.step()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let waits: Vec<_> = (0..5).map(|_| backoff.step()).collect();
        let caps = [100, 200, 400, 400, 400].map(Duration::from_millis);
        for (wait, cap) in waits.iter().zip(caps) {
            assert!(*wait <= cap && *wait >= cap / 2, "{wait:?} vs {cap:?}");
        }
        backoff.reset();
        assert!(backoff.step() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn bad_urls_are_refused_with_the_backend_name() {
        let settings = PoolSettings::default();
        let error = Backend::new("rng", "not a url", &settings).unwrap_err();
        assert!(error.to_string().contains("invalid rng URL"), "{error}");
        assert!(Backend::new("rng", "http://rng:8001", &settings).is_ok());
    }
}
