//! The gRPC client side shared by the worker and the webui gateway: one
//! [`Backend`] per service, spreading calls over every replica that the
//! service's name resolves to, with connect and call timeouts, and a capped
//! exponential [`Backoff`] for when a backend is down.
//!
//! Why not one channel to the name: HTTP/2 keeps a connection for as long as
//! it can, so a client that resolved `rng` once stays pinned to the replica it
//! found, and replicas added later sit idle (the best-known trap of gRPC
//! behind DNS). [`Policy::Balanced`] re-resolves the name every few seconds,
//! keeps a connection per address, sends calls round robin, and ejects a
//! replica whose connection fails, retrying the call on another one.
//! [`Policy::Pinned`] is the naive client, kept so the lab can show the trap.
//!
//! TLS: an `https://` URL encrypts every connection, balanced ones included,
//! although those dial an IP address each: the server's certificate is
//! checked against the URL's host (`rng`), not the address dialled.

use rand::Rng as _;
use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::Notify;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tracing::Instrument;

/// How a client spreads its calls over a backend's replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Every address the name resolves to, re-resolved periodically.
    #[default]
    Balanced,
    /// One connection to the name, as a naive gRPC client: it stays on the
    /// replica it first reached.
    Pinned,
}

/// How a client reaches its backends.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// HTTP/2 connections per replica (one connection serialises its
    /// streams on a lock in h2).
    pub channels: usize,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on each call, queueing in the backend included.
    pub call_timeout: Duration,
    /// Balanced or pinned.
    pub policy: Policy,
    /// How often a balanced backend resolves its name again.
    pub resolve_interval: Duration,
    /// The CA (and client identity) for `https://` URLs; required for them.
    pub tls: Option<crate::tls::ClientTls>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            channels: 2,
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(5),
            policy: Policy::Balanced,
            resolve_interval: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// How long a replica whose connection failed gets no calls.
const EJECTION: Duration = Duration::from_secs(2);

/// A backend URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {name} URL {url:?}: {reason}")]
pub struct InvalidUrl {
    name: &'static str,
    url: String,
    reason: String,
}

/// Turns a host and port into addresses: the system resolver by default, a
/// closure in tests.
pub type Resolver = Arc<
    dyn Fn(String, u16) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
        + Send
        + Sync,
>;

/// The system's resolver (Docker's embedded DNS, a Kubernetes headless
/// Service: one address per replica).
pub fn system_resolver() -> Resolver {
    Arc::new(|host, port| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    })
}

/// One replica: an address (or, pinned, the name) and its connections.
struct Replica {
    /// The address, or the URL when pinned; for logs, spans and counts.
    label: String,
    /// The host part, for `server.address` on spans.
    host: String,
    port: u16,
    channels: Vec<Channel>,
    next: AtomicUsize,
    /// No calls before this instant: its connection failed.
    ejected_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn channel(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }

    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| until > now)
    }

    fn eject(&self) {
        *self.ejected_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + EJECTION);
    }
}

/// What a backend shares between its clones and its resolver task.
struct Shared {
    name: &'static str,
    url: String,
    endpoint: Endpoint,
    scheme: String,
    /// `https://`: TLS for every replica, the certificate checked against
    /// the URL's host.
    tls: Option<ClientTlsConfig>,
    host: String,
    port: u16,
    settings: PoolSettings,
    resolver: Resolver,
    /// The current replicas, swapped whole when the name resolves anew.
    replicas: RwLock<Arc<[Arc<Replica>]>>,
    next: AtomicUsize,
    /// Wakes the resolver early (no replica left to call).
    resolve_now: Notify,
    /// Calls answered, by the replica that says it served them.
    served: Mutex<BTreeMap<String, u64>>,
    /// Whether the last call failed: the logs say "down" once and "back" once.
    down: AtomicBool,
    /// Calls that failed after every retry: units of work lost to this backend.
    failures: std::sync::atomic::AtomicU64,
}

/// The replicas of one backend service.
#[derive(Clone)]
pub struct Backend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.shared.name, self.shared.url)
    }
}

impl Backend {
    /// A backend at `url` (`http://host:port`), resolved with the system
    /// resolver. Nothing connects until the first call. Must be called
    /// inside a tokio runtime (a balanced backend resolves in a task).
    pub fn new(name: &'static str, url: &str, settings: &PoolSettings) -> Result<Self, InvalidUrl> {
        Self::with_resolver(name, url, settings, system_resolver())
    }

    /// The same, with the resolver given.
    pub fn with_resolver(
        name: &'static str,
        url: &str,
        settings: &PoolSettings,
        resolver: Resolver,
    ) -> Result<Self, InvalidUrl> {
        let invalid = |reason: String| InvalidUrl {
            name,
            url: url.to_owned(),
            reason,
        };
        let shape = |reason: &str| invalid(format!("{reason} (expected like http://{name}:8001)"));
        let endpoint =
            Endpoint::from_shared(url.to_owned()).map_err(|error| shape(&error.to_string()))?;
        let uri = endpoint.uri().clone();
        let host = uri.host().ok_or_else(|| shape("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let scheme = uri.scheme_str().unwrap_or("http").to_owned();
        let port = uri.port_u16().ok_or_else(|| shape("no port"))?;
        let tls = match (scheme.as_str(), &settings.tls) {
            ("https", Some(tls)) => {
                tracing::info!(
                    backend = name,
                    url,
                    ca = %tls.ca_path().display(),
                    client_cert = %tls.cert_path().map_or_else(|| "none".into(), |p| p.display().to_string()),
                    "{name}: TLS on, certificates checked against the name {host}"
                );
                Some(tls.config(&host).timeout(settings.connect_timeout))
            }
            ("https", None) => {
                return Err(invalid(format!(
                    "https:// needs the CA that signed {name}'s certificate: set {}",
                    crate::tls::setting::TLS_CA
                )));
            }
            (_, Some(_)) => {
                tracing::warn!(
                    backend = name,
                    url,
                    "TLS settings are given but the URL is not https://: calls to {name} are not encrypted"
                );
                None
            }
            (_, None) => None,
        };
        let mut endpoint = configure(endpoint, settings);
        if let Some(tls) = &tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|error| {
                invalid(format!(
                    "cannot set up TLS: {}",
                    crate::tls::error_chain(&error)
                ))
            })?;
        }
        let pinned = settings.policy == Policy::Pinned;
        let replicas: Arc<[Arc<Replica>]> = if pinned {
            // The naive client: one connection to the name, resolved by the
            // connection itself when it (re)connects.
            Arc::new([Arc::new(Replica {
                label: url.to_owned(),
                host: host.clone(),
                port,
                channels: vec![endpoint.connect_lazy()],
                next: AtomicUsize::new(0),
                ejected_until: Mutex::new(None),
            })])
        } else {
            Arc::new([])
        };
        let shared = Arc::new(Shared {
            name,
            url: url.to_owned(),
            endpoint,
            scheme,
            tls,
            host,
            port,
            settings: settings.clone(),
            resolver,
            replicas: RwLock::new(replicas),
            next: AtomicUsize::new(0),
            resolve_now: Notify::new(),
            served: Mutex::default(),
            down: AtomicBool::new(false),
            failures: Default::default(),
        });
        if !pinned {
            tokio::spawn(resolve_forever(Arc::downgrade(&shared)));
        }
        Ok(Self { shared })
    }

    pub fn name(&self) -> &'static str {
        self.shared.name
    }

    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// The replicas' labels (addresses), in order.
    pub fn replicas(&self) -> Vec<String> {
        self.current().iter().map(|r| r.label.clone()).collect()
    }

    /// A channel to each current replica, with its label.
    pub async fn replica_channels(&self) -> Vec<(String, Channel)> {
        if self.current().is_empty() {
            resolve_once(&self.shared).await;
        }
        self.current()
            .iter()
            .map(|replica| (replica.label.clone(), replica.channel()))
            .collect()
    }

    /// Calls answered so far, by the replica that served them.
    pub fn served(&self) -> BTreeMap<String, u64> {
        self.shared
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn current(&self) -> Arc<[Arc<Replica>]> {
        self.shared
            .replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The replica for the next call: round robin over those not ejected;
    /// if all are, the next one anyway (better a probe than no call).
    async fn pick(&self) -> Result<Arc<Replica>, tonic::Status> {
        let mut replicas = self.current();
        if replicas.is_empty() {
            // The first call, or the name resolves to nothing: resolve now.
            resolve_once(&self.shared).await;
            replicas = self.current();
        }
        if replicas.is_empty() {
            self.shared.resolve_now.notify_one();
            return Err(tonic::Status::unavailable(format!(
                "{}: {}:{} resolves to no address",
                self.shared.name, self.shared.host, self.shared.port
            )));
        }
        let start = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let healthy = (0..replicas.len())
            .map(|i| &replicas[(start + i) % replicas.len()])
            .find(|replica| !replica.is_ejected(now));
        match healthy {
            Some(replica) => Ok(replica.clone()),
            None => {
                self.shared.resolve_now.notify_one();
                Ok(replicas[start % replicas.len()].clone())
            }
        }
    }

    fn count_served(&self, served_by: Option<&str>, replica: &Replica) {
        let key = served_by.unwrap_or(&replica.label);
        let mut served = self.shared.served.lock().unwrap_or_else(|p| p.into_inner());
        // Every call lands here: allocate the key only the first time.
        match served.get_mut(key) {
            Some(calls) => *calls += 1,
            None => {
                served.insert(key.to_owned(), 1);
            }
        }
    }

    /// Notes a call that failed; logs the first failure of a streak at warn.
    pub fn note_failure(&self, status: &tonic::Status) {
        let shared = &self.shared;
        shared.failures.fetch_add(1, Ordering::Relaxed);
        if !shared.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                backend = shared.name,
                url = %shared.url,
                code = ?status.code(),
                error = %status_reason(status),
                "{} call failed; backing off and retrying",
                shared.name
            );
        } else {
            tracing::debug!(backend = shared.name, code = ?status.code(), error = %status_reason(status), "call failed");
        }
    }

    /// Calls noted as failed so far.
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// Notes a call that succeeded; logs the end of a failure streak.
    pub fn note_success(&self) {
        let shared = &self.shared;
        if shared.down.load(Ordering::Relaxed) && shared.down.swap(false, Ordering::Relaxed) {
            tracing::info!(backend = shared.name, url = %shared.url, "{} is answering again", shared.name);
        }
    }
}

fn configure(endpoint: Endpoint, settings: &PoolSettings) -> Endpoint {
    endpoint
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.call_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
}

/// Resolves the name every `resolve_interval` (sooner when asked) for as long
/// as the backend exists.
async fn resolve_forever(shared: Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let interval = strong.settings.resolve_interval;
        resolve_once(&strong).await;
        let woken = async {
            // Held only while waiting, so the backend can go away meanwhile.
            strong.resolve_now.notified().await;
        };
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = woken => {
                // Asked early: still at most one resolution a quarter period.
                tokio::time::sleep(interval / 4).await;
            }
        }
        drop(strong);
    }
}

/// Resolves the name once and swaps in the new set of replicas, keeping the
/// connections of addresses that stay.
async fn resolve_once(shared: &Shared) {
    let addrs = match (shared.resolver)(shared.host.clone(), shared.port).await {
        Ok(addrs) => addrs,
        Err(error) => {
            tracing::debug!(backend = shared.name, host = %shared.host, %error, "cannot resolve");
            Vec::new()
        }
    };
    let mut addrs: Vec<SocketAddr> = addrs;
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        // Keep what we had: a resolver hiccup must not drop live replicas.
        return;
    }
    let old = shared
        .replicas
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let by_label: HashMap<&str, &Arc<Replica>> =
        old.iter().map(|r| (r.label.as_str(), r)).collect();
    let mut changed = old.len() != addrs.len();
    let replicas: Vec<Arc<Replica>> = addrs
        .iter()
        .map(|addr| {
            let label = addr.to_string();
            if let Some(existing) = by_label.get(label.as_str()) {
                return Arc::clone(existing);
            }
            changed = true;
            let uri = format!("{}://{label}", shared.scheme);
            let endpoint = Endpoint::from_shared(uri)
                .map(|e| configure(e, &shared.settings))
                .and_then(|e| match &shared.tls {
                    // The address is dialled, the URL's host is checked.
                    Some(tls) => e.tls_config(tls.clone()),
                    None => Ok(e),
                })
                .unwrap_or_else(|error| {
                    tracing::warn!(backend = shared.name, address = %label, %error, "cannot make an endpoint for this address; using the URL's");
                    shared.endpoint.clone()
                });
            Arc::new(Replica {
                label,
                host: addr.ip().to_string(),
                port: addr.port(),
                channels: (0..shared.settings.channels.max(1))
                    .map(|_| endpoint.connect_lazy())
                    .collect(),
                next: AtomicUsize::new(0),
                ejected_until: Mutex::new(None),
            })
        })
        .collect();
    if changed {
        let labels: Vec<&str> = replicas.iter().map(|r| r.label.as_str()).collect();
        tracing::info!(backend = shared.name, host = %shared.host, endpoints = ?labels, "{} endpoints changed", shared.name);
        *shared.replicas.write().unwrap_or_else(|p| p.into_inner()) = replicas.into();
    }
}

/// A status's message and the errors under it, on one line: a connection
/// that failed says only "transport error" at the top, and why (a refused
/// certificate, a TLS alert from the server) underneath.
pub fn status_reason(status: &tonic::Status) -> String {
    crate::tls::with_sources(
        status.message().to_owned(),
        std::error::Error::source(status),
    )
}

/// The response header in which rng and hasher say which replica served a call.
pub const SERVED_BY: &str = "x-served-by";

/// Makes one gRPC call to `backend` inside a client span, with the trace
/// context in its metadata and its status recorded on the span. A replica
/// whose connection fails (UNAVAILABLE) is ejected and the call is tried on
/// the next one, so a dead replica still in DNS costs no failed call. For a
/// streaming call the span covers the call's start, up to the response
/// headers.
pub async fn traced<M: Clone, T>(
    backend: &Backend,
    service: &'static str,
    method: &'static str,
    call: impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
    message: M,
) -> Result<tonic::Response<T>, tonic::Status> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let replica = backend.pick().await?;
        let result = call_replica(backend, &replica, service, method, &call, message.clone()).await;
        // Up to one try per replica (at most 4), counted only on a failure:
        // a call that succeeds takes the replica list once, in `pick`.
        if matches!(&result, Err(status) if status.code() == tonic::Code::Unavailable)
            && attempt < backend.current().len().clamp(1, 4)
        {
            tracing::debug!(backend = backend.name(), replica = %replica.label, "unavailable; trying another replica");
            continue;
        }
        return result;
    }
}

/// [`traced`] for a call whose request cannot be sent twice (a client
/// stream): one replica, one attempt; the caller's backoff retries.
pub async fn traced_once<M, T>(
    backend: &Backend,
    service: &'static str,
    method: &'static str,
    call: impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
    message: M,
) -> Result<tonic::Response<T>, tonic::Status> {
    let replica = backend.pick().await?;
    call_replica(backend, &replica, service, method, &call, message).await
}

async fn call_replica<M, T>(
    backend: &Backend,
    replica: &Replica,
    service: &'static str,
    method: &'static str,
    call: &impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
    message: M,
) -> Result<tonic::Response<T>, tonic::Status> {
    let span = crate::telemetry::grpc_client_span(service, method, &replica.host, replica.port);
    let result = async {
        let mut request = tonic::Request::new(message);
        crate::telemetry::inject(&mut request);
        call(replica.channel(), request).await
    }
    .instrument(span.clone())
    .await;
    crate::telemetry::record_grpc_result(&span, &result);
    match &result {
        Ok(response) => {
            let served_by = response
                .metadata()
                .get(SERVED_BY)
                .and_then(|value| value.to_str().ok());
            backend.count_served(served_by, replica);
        }
        // The connection failed: no more calls to this replica for a while.
        Err(status) if status.code() == tonic::Code::Unavailable => replica.eject(),
        Err(_) => {}
    }
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
