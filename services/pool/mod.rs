//! The balancer under the typed clients of [`crate::clients`]: one
//! [`Backend`] per service, spreading calls over every replica that the
//! service's name resolves to, with connect and call timeouts, each call
//! traced and its success or failure noted. Callers back off themselves
//! (the worker with [`crate::backoff::Backoff`]).
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

use crate::{
    error_chain::status_reason,
    metrics::{ClientCalls, TraceExemplar},
};
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
    /// Where each call, retry and ejection is measured (by default, for
    /// nobody: the caller registers it to serve it on `/metrics`).
    pub metrics: ClientCalls,
}

/// HTTP/2 connections per replica unless told otherwise.
pub const DEFAULT_CHANNELS: usize = 2;

/// Bound on connecting to a replica unless told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1000;

/// Bound on each call unless told otherwise: long enough for a classroom
/// rng's queue of ten workers (about 1 s), short enough to notice a hang.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 5000;

/// How often a balanced client resolves the name again unless told otherwise.
pub const DEFAULT_RESOLVE_MS: u64 = 5000;

/// Resolving more often than this is refused: a DNS server is not a spin lock.
pub const MIN_RESOLVE_INTERVAL: Duration = Duration::from_millis(100);

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            channels: DEFAULT_CHANNELS,
            connect_timeout: Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
            call_timeout: Duration::from_millis(DEFAULT_CALL_TIMEOUT_MS),
            policy: Policy::default(),
            resolve_interval: Duration::from_millis(DEFAULT_RESOLVE_MS),
            tls: None,
            metrics: ClientCalls::default(),
        }
    }
}

/// How long a replica whose connection failed gets no calls.
const EJECTION: Duration = Duration::from_secs(2);

/// Which service a backend is, for its logs and its errors.
#[derive(Clone, Copy, Debug)]
pub struct Service {
    /// `rng`, `hasher`: the name in logs, and the host of the example URL.
    pub name: &'static str,
    /// The fully qualified gRPC service, from the generated code: the name
    /// on client spans, and the one asked about in health checks.
    pub grpc: &'static str,
    /// Its well-known port, for the example URL in an error.
    pub port: u16,
}

/// A backend URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {name} URL {url:?}: {reason}")]
pub struct InvalidUrl {
    name: &'static str,
    url: String,
    reason: String,
}

/// A backend's URL taken apart: what every replica's endpoint is made from.
struct Target {
    endpoint: Endpoint,
    scheme: String,
    /// The URL's host, brackets off an IPv6 address: what is resolved, and
    /// what a TLS certificate is checked against.
    host: String,
    port: u16,
}

impl Target {
    fn parse(service: Service, url: &str) -> Result<Self, InvalidUrl> {
        let shape = |reason: &str| InvalidUrl {
            name: service.name,
            url: url.to_owned(),
            reason: format!(
                "{reason} (expected like http://{}:{})",
                service.name, service.port
            ),
        };
        let endpoint =
            Endpoint::from_shared(url.to_owned()).map_err(|error| shape(&error.to_string()))?;
        let uri = endpoint.uri().clone();
        let host = uri.host().ok_or_else(|| shape("no host"))?;
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            scheme: uri.scheme_str().unwrap_or("http").to_owned(),
            port: uri.port_u16().ok_or_else(|| shape("no port"))?,
            endpoint,
        })
    }

    /// TLS for an `https://` URL, the certificate checked against the URL's
    /// host; an `https://` URL without a CA is refused, TLS settings with a
    /// plaintext URL are said loudly.
    fn tls(
        &self,
        service: Service,
        url: &str,
        settings: &PoolSettings,
    ) -> Result<Option<ClientTlsConfig>, InvalidUrl> {
        let name = service.name;
        match (self.scheme.as_str(), &settings.tls) {
            ("https", Some(tls)) => {
                tracing::info!(
                    backend = name,
                    url,
                    ca = %tls.ca_path().display(),
                    client_cert = %tls.cert_path().map_or_else(|| "none".into(), |p| p.display().to_string()),
                    "{name}: TLS on, certificates checked against the name {}",
                    self.host
                );
                Ok(Some(
                    tls.config(&self.host).timeout(settings.connect_timeout),
                ))
            }
            ("https", None) => Err(InvalidUrl {
                name,
                url: url.to_owned(),
                reason: format!(
                    "https:// needs the CA that signed {name}'s certificate: set {}",
                    crate::tls::setting::TLS_CA
                ),
            }),
            (_, Some(_)) => {
                tracing::warn!(
                    backend = name,
                    url,
                    "TLS settings are given but the URL is not https://: calls to {name} are not encrypted"
                );
                Ok(None)
            }
            (_, None) => Ok(None),
        }
    }
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

/// A backend's balancer: its replicas and how calls are spread over
/// them, shared by the backend's clones and its resolver task.
struct Balancer {
    service: Service,
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
    balancer: Arc<Balancer>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.balancer.service.name, self.balancer.url)
    }
}

impl Backend {
    /// A backend of `service` at `url` (`http://host:port`), its replicas
    /// found by `resolver` (balanced) or by the connection itself (pinned).
    /// Nothing connects until the first call. Must be called inside a tokio
    /// runtime (a balanced backend resolves in a task).
    pub(crate) fn new(
        service: Service,
        url: &str,
        settings: &PoolSettings,
        resolver: Resolver,
    ) -> Result<Self, InvalidUrl> {
        let target = Target::parse(service, url)?;
        let tls = target.tls(service, url, settings)?;
        let mut endpoint = configure(target.endpoint.clone(), settings);
        if let Some(tls) = &tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|error| InvalidUrl {
                    name: service.name,
                    url: url.to_owned(),
                    reason: format!(
                        "cannot set up TLS: {}",
                        crate::error_chain::describe(&error)
                    ),
                })?;
        }
        let pinned = settings.policy == Policy::Pinned;
        let replicas: Arc<[Arc<Replica>]> = if pinned {
            // The naive client: one connection to the name, resolved by the
            // connection itself when it (re)connects.
            Arc::new([Arc::new(Replica {
                label: url.to_owned(),
                host: target.host.clone(),
                port: target.port,
                channels: vec![endpoint.connect_lazy()],
                next: AtomicUsize::new(0),
                ejected_until: Mutex::new(None),
            })])
        } else {
            Arc::new([])
        };
        let balancer = Arc::new(Balancer {
            service,
            url: url.to_owned(),
            endpoint,
            scheme: target.scheme,
            tls,
            host: target.host,
            port: target.port,
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
            tokio::spawn(resolve_forever(Arc::downgrade(&balancer)));
        }
        Ok(Self { balancer })
    }

    /// Which service this is.
    pub fn service(&self) -> Service {
        self.balancer.service
    }

    /// The bound on each call (and on each message of a streamed reply).
    pub fn call_timeout(&self) -> Duration {
        self.balancer.settings.call_timeout
    }

    /// Notes `result`'s success or failure on this backend, and passes it on.
    pub(crate) fn note<T>(&self, result: Result<T, tonic::Status>) -> Result<T, tonic::Status> {
        match &result {
            Ok(_) => self.note_success(),
            Err(status) => self.note_failure(status),
        }
        result
    }

    pub fn name(&self) -> &'static str {
        self.balancer.service.name
    }

    pub fn url(&self) -> &str {
        &self.balancer.url
    }

    /// The replicas' labels (addresses), in order.
    pub fn replicas(&self) -> Vec<String> {
        self.current().iter().map(|r| r.label.clone()).collect()
    }

    /// A channel to each current replica, with its label.
    pub async fn replica_channels(&self) -> Vec<(String, Channel)> {
        if self.current().is_empty() {
            resolve_once(&self.balancer).await;
        }
        self.current()
            .iter()
            .map(|replica| (replica.label.clone(), replica.channel()))
            .collect()
    }

    /// Calls answered so far, by the replica that served them.
    pub fn served(&self) -> BTreeMap<String, u64> {
        self.balancer
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn current(&self) -> Arc<[Arc<Replica>]> {
        self.balancer
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
            resolve_once(&self.balancer).await;
            replicas = self.current();
        }
        if replicas.is_empty() {
            self.balancer.resolve_now.notify_one();
            return Err(tonic::Status::unavailable(format!(
                "{}: {}:{} resolves to no address",
                self.balancer.service.name, self.balancer.host, self.balancer.port
            )));
        }
        let start = self.balancer.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let healthy = (0..replicas.len())
            .map(|i| &replicas[(start + i) % replicas.len()])
            .find(|replica| !replica.is_ejected(now));
        match healthy {
            Some(replica) => Ok(replica.clone()),
            None => {
                self.balancer.resolve_now.notify_one();
                Ok(replicas[start % replicas.len()].clone())
            }
        }
    }

    fn count_served(&self, served_by: Option<&str>, replica: &Replica) {
        let key = served_by.unwrap_or(&replica.label);
        let mut served = self
            .balancer
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Every call lands here: allocate the key only the first time.
        match served.get_mut(key) {
            Some(calls) => *calls += 1,
            None => {
                served.insert(key.to_owned(), 1);
            }
        }
    }

    /// Notes a call that failed; logs the first failure of a streak at warn.
    fn note_failure(&self, status: &tonic::Status) {
        let balancer = &self.balancer;
        balancer.failures.fetch_add(1, Ordering::Relaxed);
        if !balancer.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                backend = balancer.service.name,
                url = %balancer.url,
                code = ?status.code(),
                error = %status_reason(status),
                trace_id = crate::telemetry::current_trace_id(),
                "{} call failed; said again when it answers",
                balancer.service.name
            );
        } else {
            tracing::debug!(backend = balancer.service.name, code = ?status.code(), error = %status_reason(status), "call failed");
        }
    }

    /// Calls noted as failed so far.
    pub fn failures(&self) -> u64 {
        self.balancer.failures.load(Ordering::Relaxed)
    }

    /// Notes a call that succeeded; logs the end of a failure streak.
    fn note_success(&self) {
        let balancer = &self.balancer;
        if balancer.down.load(Ordering::Relaxed) && balancer.down.swap(false, Ordering::Relaxed) {
            tracing::info!(backend = balancer.service.name, url = %balancer.url, trace_id = crate::telemetry::current_trace_id(), "{} is answering again", balancer.service.name);
        }
    }
}

/// Each connection's settings: timeouts, TCP_NODELAY, keepalive (`bench`'s
/// floor uses them too).
pub(crate) fn configure(endpoint: Endpoint, settings: &PoolSettings) -> Endpoint {
    endpoint
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.call_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
}

/// Resolves the name every `resolve_interval` (sooner when asked) for as long
/// as the backend exists.
async fn resolve_forever(balancer: Weak<Balancer>) {
    loop {
        let Some(strong) = balancer.upgrade() else {
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
async fn resolve_once(balancer: &Balancer) {
    let addrs = match (balancer.resolver)(balancer.host.clone(), balancer.port).await {
        Ok(addrs) => addrs,
        Err(error) => {
            tracing::debug!(backend = balancer.service.name, host = %balancer.host, %error, "cannot resolve");
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
    let old = balancer
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
            let uri = format!("{}://{label}", balancer.scheme);
            let endpoint = Endpoint::from_shared(uri)
                .map(|e| configure(e, &balancer.settings))
                .and_then(|e| match &balancer.tls {
                    // The address is dialled, the URL's host is checked.
                    Some(tls) => e.tls_config(tls.clone()),
                    None => Ok(e),
                })
                .unwrap_or_else(|error| {
                    tracing::warn!(backend = balancer.service.name, address = %label, %error, "cannot make an endpoint for this address; using the URL's");
                    balancer.endpoint.clone()
                });
            Arc::new(Replica {
                label,
                host: addr.ip().to_string(),
                port: addr.port(),
                channels: (0..balancer.settings.channels.max(1))
                    .map(|_| endpoint.connect_lazy())
                    .collect(),
                next: AtomicUsize::new(0),
                ejected_until: Mutex::new(None),
            })
        })
        .collect();
    if changed {
        let labels: Vec<&str> = replicas.iter().map(|r| r.label.as_str()).collect();
        tracing::info!(backend = balancer.service.name, host = %balancer.host, endpoints = ?labels, "{} endpoints changed", balancer.service.name);
        *balancer.replicas.write().unwrap_or_else(|p| p.into_inner()) = replicas.into();
    }
}

impl Backend {
    /// Makes one gRPC call of `method` inside a client span, with the trace
    /// context in its metadata and its status recorded on the span. A replica
    /// whose connection fails (UNAVAILABLE) is ejected and the call is tried
    /// on the next one, so a dead replica still in DNS costs no failed call.
    /// For a streaming call the span covers the call's start, up to the
    /// response headers. Its success or failure is noted on the backend
    /// (a streak of failures is logged once). Only the typed clients call
    /// this.
    pub(crate) async fn call<M: Clone, T>(
        &self,
        method: &'static str,
        call: impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let replica = match self.pick().await {
                Ok(replica) => replica,
                Err(status) => return self.note(Err(status)),
            };
            let result = self
                .call_replica(&replica, method, &call, message.clone())
                .await;
            // Up to one try per replica (at most 4), counted only on a failure:
            // a call that succeeds takes the replica list once, in `pick`.
            if matches!(&result, Err(status) if status.code() == tonic::Code::Unavailable)
                && attempt < self.current().len().clamp(1, 4)
            {
                tracing::debug!(backend = self.name(), replica = %replica.label, "unavailable; trying another replica");
                self.balancer
                    .settings
                    .metrics
                    .retried(self.balancer.service.grpc);
                continue;
            }
            return self.note(result);
        }
    }

    /// [`Self::call`] for a call whose request cannot be sent twice (a
    /// client stream): one replica, one attempt; the caller's backoff retries.
    pub(crate) async fn call_once<M, T>(
        &self,
        method: &'static str,
        call: impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        let result = match self.pick().await {
            Ok(replica) => self.call_replica(&replica, method, &call, message).await,
            Err(status) => Err(status),
        };
        self.note(result)
    }

    async fn call_replica<M, T>(
        &self,
        replica: &Replica,
        method: &'static str,
        call: &impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        let service = self.balancer.service.grpc;
        let span = crate::telemetry::grpc_client_span(service, method, &replica.host, replica.port);
        let started = Instant::now();
        // The span is not entered around the call: nothing inside logs,
        // and entering it at every poll cost the worker about 4% of its
        // instructions per unit (callgrind). It times the call all the same.
        let mut request = tonic::Request::new(message);
        crate::telemetry::inject(&span, &mut request);
        let result = call(replica.channel(), request).await;
        crate::telemetry::record_grpc_result(&span, &result);
        let metrics = &self.balancer.settings.metrics;
        if crate::metrics::enabled() {
            let status = result
                .as_ref()
                .map_or_else(tonic::Status::code, |_| tonic::Code::Ok);
            let trace = TraceExemplar::of(&span);
            metrics.observe(
                (service, method),
                &replica.label,
                status,
                started.elapsed(),
                trace,
            );
        }
        match &result {
            Ok(response) => {
                let served_by = response
                    .metadata()
                    .get(crate::protocol::SERVED_BY)
                    .and_then(|value| value.to_str().ok());
                self.count_served(served_by, replica);
            }
            // The connection failed: no more calls to this replica for a while.
            Err(status) if status.code() == tonic::Code::Unavailable => {
                replica.eject();
                metrics.ejected(service, &replica.label);
            }
            Err(_) => {}
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_are_refused_with_the_backend_name() {
        let settings = PoolSettings::default();
        let hasher = Service {
            name: "hasher",
            grpc: "test.Hasher",
            port: 8002,
        };
        let new = |url| Backend::new(hasher, url, &settings, system_resolver());
        let error = new("not a url").unwrap_err().to_string();
        assert!(error.contains("invalid hasher URL"), "{error}");
        // The example has the backend's own port.
        assert!(error.contains("http://hasher:8002"), "{error}");
        assert!(new("http://hasher:8002").is_ok());
    }
}
