//! The balancer under the typed clients of [`crate::client`]: one
//! [`Balancer`] per service, spreading calls over every replica that the
//! service's name resolves to, each call traced, bounded by a deadline that
//! travels with it (`grpc-timeout`), and its success or failure noted.
//! Callers back off themselves (the worker with [`crate::client::backoff::Backoff`]).
//!
//! Why not one channel to the name: HTTP/2 keeps a connection for as long as
//! it can, so a client that resolved `rng` once stays pinned to the replica it
//! found, and replicas added later sit idle (the best-known trap of gRPC
//! behind DNS). A balanced client re-resolves the name every few seconds
//! ([`resolve`]) and keeps connections per address; [`Policy`] says how it
//! picks a replica for each call ([`policy`]: round robin, the least loaded
//! of two, or the faster of two by their latency, [`ewma`]), and
//! [`Policy::Pinned`] is the naive client, kept so the lab can show the
//! trap.
//!
//! A balanced client also keeps away from replicas that should not get
//! calls: one whose health watch says NOT_SERVING ([`health`]: a replica
//! that is stopping drains without a failed call), one whose connection
//! failed (for [`outlier::CONNECTION_EJECTION`]), and one that fails too
//! many of its calls ([`outlier`]: gRFC A50's failure-percentage rule).
//! A call that finds a replica UNAVAILABLE is tried again on another, and a
//! slow unary call may be hedged on another; both are paid from a retry
//! budget ([`retry`]).
//!
//! TLS ([`target`]): an `https://` URL encrypts every connection, balanced
//! ones included, although those dial an IP address each: the server's
//! certificate is checked against the URL's host (`rng`), not the address
//! dialled.

mod ewma;
mod health;
mod metrics;
mod outlier;
mod policy;
mod replica;
mod resolve;
mod retry;
mod target;

pub use metrics::ClientCalls;
pub use outlier::{
    DEFAULT_EJECTION_MS, DEFAULT_FAILURE_PERCENT, DEFAULT_INTERVAL_MS as DEFAULT_EJECT_INTERVAL_MS,
    DEFAULT_MAX_EJECTED_PERCENT, DEFAULT_MIN_CALLS, OutlierSettings,
};
pub use policy::Policy;
pub use resolve::{Resolver, system_resolver};
pub use retry::{DEFAULT_BUDGET_PERCENT, RetrySettings};
pub use target::InvalidUrl;

use crate::{telemetry::error_chain::status_reason, telemetry::metrics::TraceExemplar};
use replica::Replica;
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use target::Target;
use tokio::sync::Notify;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tracing::Span;

/// How a client reaches its backends.
#[derive(Clone, Debug)]
pub struct BalancerSettings {
    /// HTTP/2 connections per replica (one connection serialises its
    /// streams on a lock in h2).
    pub channels: usize,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Deadline of each call, queueing in the backend included: a unary
    /// call sends it as `grpc-timeout`, so the backend gives up when the
    /// caller does; a stream must start within it, and each message of a
    /// streamed reply come within it.
    pub call_timeout: Duration,
    /// How calls are spread over the replicas.
    pub policy: Policy,
    /// How often a balanced backend resolves its name again.
    pub resolve_interval: Duration,
    /// When a replica failing its calls is set aside.
    pub outlier: OutlierSettings,
    /// Retries, hedges, and the budget they share.
    pub retry: RetrySettings,
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

/// Deadline of each call unless told otherwise: long enough for a classroom
/// rng's queue of ten workers (about 1 s), short enough to notice a hang.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 5000;

/// How often a balanced client resolves the name again unless told otherwise.
pub const DEFAULT_RESOLVE_MS: u64 = 5000;

/// Resolving more often than this is refused: a DNS server is not a spin lock.
pub const MIN_RESOLVE_INTERVAL: Duration = Duration::from_millis(100);

/// A backend's failures are said at warn at most this often (the others at
/// debug, counted in the next warn line).
const SAY_FAILURES_EVERY: Duration = Duration::from_secs(5);

/// Tries of one chain of attempts at most (the first and its retries); a
/// hedged call runs two chains.
const MAX_ATTEMPTS: usize = 4;

impl Default for BalancerSettings {
    fn default() -> Self {
        Self {
            channels: DEFAULT_CHANNELS,
            connect_timeout: Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
            call_timeout: Duration::from_millis(DEFAULT_CALL_TIMEOUT_MS),
            policy: Policy::default(),
            resolve_interval: Duration::from_millis(DEFAULT_RESOLVE_MS),
            outlier: OutlierSettings::default(),
            retry: RetrySettings::default(),
            tls: None,
            metrics: ClientCalls::default(),
        }
    }
}

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

/// A replica as the balancer sees it now, for the page and for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaState {
    pub address: String,
    /// What its health watch said last.
    pub serving: bool,
    /// Set aside (its connection failed, or it failed too many calls).
    pub ejected: bool,
    pub in_flight: usize,
}

/// Why an attempt of a call is made: on a span, `dockercoins.attempt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    First,
    /// Again on another replica, after UNAVAILABLE.
    Retry,
    /// A second attempt of a slow call, racing the first.
    Hedge,
}

/// Which calls carry their deadline on the wire and may be hedged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Bounded as a whole by its deadline, sent as `grpc-timeout`.
    Unary,
    /// Started within the deadline, then each message bounded by the client
    /// (a batch's length is the caller's choice: a whole-stream deadline of
    /// 5 s would fail every long classroom batch).
    Stream,
}

/// A backend's balancer: its replicas and how calls are spread over
/// them, shared by the backend's clones and its resolver task.
struct Shared {
    service: Service,
    url: String,
    endpoint: Endpoint,
    scheme: String,
    /// `https://`: TLS for every replica, the certificate checked against
    /// the URL's host.
    tls: Option<ClientTlsConfig>,
    host: String,
    port: u16,
    settings: BalancerSettings,
    resolver: Resolver,
    /// The current replicas, swapped whole when the name resolves anew.
    replicas: RwLock<Arc<[Arc<Replica>]>>,
    /// The round-robin counter.
    next: AtomicUsize,
    /// Wakes the resolver early (no replica left to call).
    resolve_now: Notify,
    /// When the outlier rule last ran.
    sweeper: outlier::Sweeper,
    /// What retries and hedges may spend.
    budget: retry::RetryBudget,
    /// Calls answered, by the replica that says it served them.
    served: Mutex<BTreeMap<String, u64>>,
    /// Whether the last call failed: the logs say "down" once and "back" once.
    down: AtomicBool,
    /// When a failure was last said at warn, and the failures not said
    /// since: a backend failing every other call (deadlines, injected
    /// faults) must not fill a classroom's terminal.
    said: Mutex<(Option<Instant>, u64)>,
    /// Whether the current streak of failures was said (so its end is).
    said_down: AtomicBool,
    /// Calls that failed after every retry: units of work lost to this backend.
    failures: std::sync::atomic::AtomicU64,
}

/// The replicas of one backend service.
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.shared.service.name, self.shared.url)
    }
}

impl Balancer {
    /// A backend of `service` at `url` (`http://host:port`), its replicas
    /// found by `resolver` (balanced) or by the connection itself (pinned).
    /// Nothing connects until the first call. Must be called inside a tokio
    /// runtime (a balanced backend resolves in a task).
    pub(crate) fn new(
        service: Service,
        url: &str,
        settings: &BalancerSettings,
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
                        crate::telemetry::error_chain::describe(&error)
                    ),
                })?;
        }
        let pinned = settings.policy == Policy::Pinned;
        let replicas: Arc<[Arc<Replica>]> = if pinned {
            // The naive client: one connection to the name, resolved by the
            // connection itself when it (re)connects.
            let channel = endpoint.connect_lazy();
            let replica = Replica::new(
                url.to_owned(),
                target.host.clone(),
                target.port,
                vec![channel],
            );
            Arc::new([Arc::new(replica)])
        } else {
            Arc::new([])
        };
        log_policy(service, url, settings);
        settings
            .metrics
            .policy(service.grpc, settings.policy.name());
        let shared = Arc::new(Shared {
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
            sweeper: outlier::Sweeper::default(),
            budget: retry::RetryBudget::new(&settings.retry),
            served: Mutex::default(),
            down: AtomicBool::new(false),
            said: Mutex::new((None, 0)),
            said_down: AtomicBool::new(false),
            failures: Default::default(),
        });
        if !pinned {
            tokio::spawn(resolve::resolve_forever(Arc::downgrade(&shared)));
        }
        Ok(Self { shared })
    }

    /// Which service this is.
    pub fn service(&self) -> Service {
        self.shared.service
    }

    /// The deadline of each call (and the bound on each message of a
    /// streamed reply).
    pub fn call_timeout(&self) -> Duration {
        self.shared.settings.call_timeout
    }

    /// How calls are spread.
    pub fn policy(&self) -> Policy {
        self.shared.settings.policy
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
        self.shared.service.name
    }

    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// The replicas' labels (addresses), in order.
    pub fn replicas(&self) -> Vec<String> {
        self.current().iter().map(|r| r.label.clone()).collect()
    }

    /// Each replica's health, ejection and calls in flight, in order.
    pub fn replica_states(&self) -> Vec<ReplicaState> {
        let now = Instant::now();
        self.current()
            .iter()
            .map(|replica| ReplicaState {
                address: replica.label.clone(),
                serving: replica.is_serving(),
                ejected: replica.record.is_ejected(now),
                in_flight: replica.in_flight(),
            })
            .collect()
    }

    /// A channel to each current replica, with its label.
    pub async fn replica_channels(&self) -> Vec<(String, Channel)> {
        if self.current().is_empty() {
            resolve::resolve_once(&self.shared).await;
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

    /// The replica for the next call, by the policy, avoiding `avoid` when
    /// another will do.
    async fn pick(&self, avoid: Option<&Replica>) -> Result<Arc<Replica>, tonic::Status> {
        let mut replicas = self.current();
        if replicas.is_empty() {
            // The first call, or the name resolves to nothing: resolve now.
            resolve::resolve_once(&self.shared).await;
            replicas = self.current();
        }
        let shared = &self.shared;
        let picked = policy::pick(shared.settings.policy, &replicas, &shared.next, avoid);
        let Some(replica) = picked else {
            shared.resolve_now.notify_one();
            return Err(tonic::Status::unavailable(format!(
                "{}: {}:{} resolves to no address",
                shared.service.name, shared.host, shared.port
            )));
        };
        if replica.record.is_ejected(Instant::now()) {
            // Every replica is set aside: perhaps the name lists new ones.
            shared.resolve_now.notify_one();
        }
        Ok(replica)
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
    fn note_failure(&self, status: &tonic::Status) {
        let shared = &self.shared;
        shared.failures.fetch_add(1, Ordering::Relaxed);
        let new_streak = !shared.down.swap(true, Ordering::Relaxed);
        let unsaid = {
            let mut said = shared.said.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if new_streak
                && said
                    .0
                    .is_none_or(|at| now.duration_since(at) >= SAY_FAILURES_EVERY)
            {
                let unsaid = said.1;
                *said = (Some(now), 0);
                Some(unsaid)
            } else {
                said.1 += 1;
                None
            }
        };
        if let Some(unsaid) = unsaid {
            shared.said_down.store(true, Ordering::Relaxed);
            let since = match unsaid {
                0 => String::new(),
                n => format!(" ({n} more failed since the last line like this)"),
            };
            tracing::warn!(
                backend = shared.service.name,
                url = %shared.url,
                code = ?status.code(),
                error = %status_reason(status),
                trace_id = crate::telemetry::current_trace_id(),
                failures_unsaid = unsaid,
                "{} call failed; said again when it answers{since}",
                shared.service.name
            );
        } else {
            tracing::debug!(backend = shared.service.name, code = ?status.code(), error = %status_reason(status), "call failed");
        }
    }

    /// Calls noted as failed so far.
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// Notes a call that succeeded; logs the end of a failure streak.
    fn note_success(&self) {
        let shared = &self.shared;
        if shared.down.load(Ordering::Relaxed)
            && shared.down.swap(false, Ordering::Relaxed)
            && shared.said_down.swap(false, Ordering::Relaxed)
        {
            tracing::info!(backend = shared.service.name, url = %shared.url, trace_id = crate::telemetry::current_trace_id(), "{} is answering again", shared.service.name);
        }
    }
}

/// Says once per process which policy a service's clients use (ten
/// workers in `up` are one line, not ten).
fn log_policy(service: Service, url: &str, settings: &BalancerSettings) {
    static SAID: Mutex<Vec<(&str, Policy)>> = Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if said.contains(&(service.name, settings.policy)) {
        return;
    }
    said.push((service.name, settings.policy));
    let hedge_ms = settings
        .retry
        .hedge_after
        .map_or(0, |d| d.as_millis() as u64);
    tracing::info!(
        backend = service.name,
        url,
        policy = settings.policy.name(),
        deadline_ms = settings.call_timeout.as_millis() as u64,
        retry_budget_percent = retry::RetryBudget::effective_percent(settings.retry.budget_percent),
        hedge_ms,
        "{} calls: {}",
        service.name,
        settings.policy.name()
    );
}

/// Each connection's settings: timeouts, TCP_NODELAY, keepalive (`bench`'s
/// floor uses them too). The endpoint's timeout is a backstop: each call
/// carries its own deadline.
pub(crate) fn configure(endpoint: Endpoint, settings: &BalancerSettings) -> Endpoint {
    endpoint
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.call_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
}

impl Balancer {
    /// Makes one unary gRPC call of `method`: see [`Self::call_with`]; a
    /// call still unanswered after the hedging delay is sent again to
    /// another replica, and the first answer wins.
    pub(crate) async fn call<M: Clone, T>(
        &self,
        method: &'static str,
        call: impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        self.call_with(method, &call, message, Kind::Unary).await
    }

    /// Starts a server-streaming call of `method`: see [`Self::call_with`];
    /// never hedged (two streams of the same blocks would be paid twice).
    pub(crate) async fn call_stream<M: Clone, T>(
        &self,
        method: &'static str,
        call: impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        self.call_with(method, &call, message, Kind::Stream).await
    }

    /// One call, under one deadline for all its attempts: each attempt is a
    /// client span with the trace context and the time left (`grpc-timeout`)
    /// in its metadata. A replica that answers UNAVAILABLE is avoided and the
    /// call tried on another, so a dead replica still in DNS costs no failed
    /// call; retries and hedges are paid from the backend's budget. For a
    /// streaming call the span covers the call's start, up to the response
    /// headers. Its success or failure is noted on the backend (a streak of
    /// failures is logged once). Only the typed clients call this.
    async fn call_with<M: Clone, T>(
        &self,
        method: &'static str,
        call: &impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
        kind: Kind,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        let started = Instant::now();
        let deadline = started + self.shared.settings.call_timeout;
        self.shared.budget.deposit();
        let result = match self.pick(None).await {
            Err(status) => Err(status),
            Ok(replica) => match self.shared.settings.retry.hedge_after {
                Some(after) if kind == Kind::Unary => {
                    self.hedged(method, call, message, deadline, replica, after)
                        .await
                }
                _ => {
                    let first = (Attempt::First, kind);
                    self.with_retries(method, call, message, deadline, replica, first)
                        .await
                }
            },
        };
        if crate::telemetry::metrics::enabled() {
            let code = result
                .as_ref()
                .map_or_else(tonic::Status::code, |_| tonic::Code::Ok);
            let service = self.shared.service.grpc;
            self.shared
                .settings
                .metrics
                .observe_call((service, method), code, started.elapsed());
        }
        self.note(result)
    }

    /// An attempt on `replica`, then, while it answers UNAVAILABLE (or its
    /// connection failed), more on other replicas, each avoiding the one
    /// that just failed: at most [`MAX_ATTEMPTS`] and one per replica in
    /// all, before the deadline, as long as the budget allows.
    async fn with_retries<M: Clone, T>(
        &self,
        method: &'static str,
        call: &impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
        deadline: Instant,
        mut replica: Arc<Replica>,
        (mut attempt, kind): (Attempt, Kind),
    ) -> Result<tonic::Response<T>, tonic::Status> {
        let metrics = &self.shared.settings.metrics;
        let service = self.shared.service.grpc;
        for tries in 1.. {
            let result = self
                .call_replica(
                    &replica,
                    method,
                    call,
                    message.clone(),
                    deadline,
                    (attempt, kind),
                )
                .await;
            // Counted only on a failure: a call that succeeds takes the
            // replica list once, in `pick`.
            // Refused before any work was done: safe to send elsewhere.
            let unavailable = matches!(&result, Err(status)
                if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::ResourceExhausted)
                    || connection_failed(status));
            if !unavailable
                || tries >= self.current().len().clamp(1, MAX_ATTEMPTS)
                || Instant::now() >= deadline
            {
                return result;
            }
            if !self.shared.budget.withdraw() {
                metrics.throttled(service);
                return result;
            }
            tracing::debug!(backend = self.name(), replica = %replica.label, "unavailable; trying another replica");
            metrics.retried(service);
            replica = self.pick(Some(&replica)).await?;
            attempt = Attempt::Retry;
        }
        unreachable!("the loop returns")
    }

    /// `with_retries` on `replica`, and, when it has not answered after
    /// `after`, a twin on another replica if the budget allows: the first
    /// success wins and the other attempt is abandoned (its span says
    /// CANCELLED); a failure waits for the other attempt.
    async fn hedged<M: Clone, T>(
        &self,
        method: &'static str,
        call: &impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
        deadline: Instant,
        replica: Arc<Replica>,
        after: Duration,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        let first = self.with_retries(
            method,
            call,
            message.clone(),
            deadline,
            replica.clone(),
            (Attempt::First, Kind::Unary),
        );
        tokio::pin!(first);
        tokio::select! {
            result = &mut first => return result,
            () = tokio::time::sleep(after) => {}
        }
        let service = self.shared.service.grpc;
        if self.current().len() < 2 {
            return first.await;
        }
        if !self.shared.budget.withdraw() {
            self.shared.settings.metrics.throttled(service);
            return first.await;
        }
        let twin = match self.pick(Some(&replica)).await {
            Ok(twin) => twin,
            Err(_) => return first.await,
        };
        self.shared.settings.metrics.hedged(service);
        let hedge = (Attempt::Hedge, Kind::Unary);
        let second = self.with_retries(method, call, message, deadline, twin, hedge);
        tokio::pin!(second);
        tokio::select! {
            result = &mut first => match result {
                Ok(_) => result,
                Err(_) => second.await,
            },
            result = &mut second => match result {
                Ok(_) => result,
                Err(_) => first.await,
            },
        }
    }

    /// [`Self::call_with`] for a call whose request cannot be sent twice (a
    /// client stream): one replica, one attempt; the caller's backoff retries.
    pub(crate) async fn call_once<M, T>(
        &self,
        method: &'static str,
        call: impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        let deadline = Instant::now() + self.shared.settings.call_timeout;
        let result = match self.pick(None).await {
            Ok(replica) => {
                let first = (Attempt::First, Kind::Stream);
                self.call_replica(&replica, method, &call, message, deadline, first)
                    .await
            }
            Err(status) => Err(status),
        };
        self.note(result)
    }

    /// One attempt on one replica, in its own client span; its outcome is
    /// measured, counted against the replica, and may trip the outlier rule.
    async fn call_replica<M, T>(
        &self,
        replica: &Replica,
        method: &'static str,
        call: &impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
        deadline: Instant,
        (attempt, kind): (Attempt, Kind),
    ) -> Result<tonic::Response<T>, tonic::Status> {
        let service = self.shared.service.grpc;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(tonic::Status::deadline_exceeded(format!(
                "{}: the call's deadline passed before this attempt",
                self.name()
            )));
        }
        let span = crate::telemetry::grpc_client_span(service, method, &replica.host, replica.port);
        if attempt != Attempt::First {
            self.say_attempt(&span, attempt);
        }
        let started = Instant::now();
        let _in_flight = replica.start_call();
        // The span is not entered around the call: nothing inside logs,
        // and entering it at every poll cost the worker about 4% of its
        // instructions per unit (callgrind). It times the call all the same.
        let mut request = tonic::Request::new(message);
        if kind == Kind::Unary {
            request.set_timeout(left);
        }
        crate::telemetry::inject(&span, &mut request);
        let ewma = self.shared.settings.policy == Policy::Ewma;
        let abandoned = Abandoned::new(&span, ewma.then_some((replica, started)));
        // The deadline bounds the wait for a connection too, which tonic's
        // own timer, started once the request leaves its buffer, does not.
        let result = tokio::time::timeout_at(deadline.into(), call(replica.channel(), request))
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(format!(
                    "{}: no answer within the call's deadline",
                    self.name()
                )))
            });
        abandoned.answered();
        self.settle(replica, method, &span, started, &result);
        self.sweep(&span);
        result
    }

    /// An attempt's outcome, noted everywhere it counts: its span, the
    /// replica's outlier record and latency, the metrics, the calls served,
    /// and an ejection if its connection failed.
    fn settle<T>(
        &self,
        replica: &Replica,
        method: &'static str,
        span: &Span,
        started: Instant,
        result: &Result<tonic::Response<T>, tonic::Status>,
    ) {
        let service = self.shared.service.grpc;
        crate::telemetry::record_grpc_result(span, result);
        let code = result
            .as_ref()
            .map_or_else(tonic::Status::code, |_| tonic::Code::Ok);
        replica.record.note(code);
        if self.shared.settings.policy == Policy::Ewma {
            let failed = outlier::is_replica_failure(code);
            replica
                .latency
                .observe(started.elapsed(), failed, Instant::now());
        }
        let metrics = &self.shared.settings.metrics;
        if crate::telemetry::metrics::enabled() {
            let trace = TraceExemplar::of(span);
            metrics.observe(
                (service, method),
                &replica.label,
                code,
                started.elapsed(),
                trace,
            );
        }
        match result {
            Ok(response) => {
                let served_by = response
                    .metadata()
                    .get(crate::protocol::SERVED_BY)
                    .and_then(|value| value.to_str().ok());
                self.count_served(served_by, replica);
            }
            // No calls to it for a while.
            Err(status) if connection_failed(status) => {
                replica
                    .record
                    .eject_for(Instant::now(), outlier::CONNECTION_EJECTION);
                metrics.ejected(service, &replica.label, "connection");
            }
            // An overloaded replica said when to ask again (gRFC A6's
            // pushback): no new call until then, while another can take it.
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                if let Some(pushback) = crate::server::overload::asked(status) {
                    replica.record.eject_for(Instant::now(), pushback);
                    metrics.ejected(service, &replica.label, "pushback");
                }
            }
            Err(_) => {}
        }
    }

    /// Says on a retry's or hedge's span why it was made.
    fn say_attempt(&self, span: &Span, attempt: Attempt) {
        let (name, why) = match attempt {
            Attempt::Retry => (
                "retry",
                "retried: the previous attempt found its replica UNAVAILABLE or its lane full",
            ),
            Attempt::Hedge => (
                "hedge",
                "hedged: the first attempt had not answered in time",
            ),
            Attempt::First => return,
        };
        span.record("dockercoins.attempt", name);
        span.in_scope(|| tracing::info!(target: crate::telemetry::TARGET, "{why}"));
    }

    /// Applies the outlier rule when an interval has passed; its ejections
    /// are logged, counted, and events on `span` (the call that ran it).
    fn sweep(&self, span: &Span) {
        let shared = &self.shared;
        let settings = &shared.settings.outlier;
        let now = Instant::now();
        if !shared.sweeper.is_due(settings, now) {
            return;
        }
        let replicas = self.current();
        let records: Vec<&outlier::Record> = replicas.iter().map(|r| &r.record).collect();
        for ejected in outlier::sweep(settings, &records, now) {
            let replica = &replicas[ejected.replica];
            let name = shared.service.name;
            let (failures, calls, seconds) =
                (ejected.failures, ejected.calls, ejected.time.as_secs_f64());
            tracing::warn!(
                backend = name,
                replica = %replica.label,
                failures,
                calls,
                ejected_s = seconds,
                "{name} replica {} ejected for {seconds:.0} s: {failures} of its last {calls} calls failed",
                replica.label
            );
            span.in_scope(|| {
                tracing::info!(
                    target: crate::telemetry::TARGET,
                    replica = %replica.label,
                    failures,
                    calls,
                    ejected_s = seconds,
                    "outlier ejected: {} failed {failures} of {calls} calls",
                    replica.label
                );
            });
            shared
                .settings
                .metrics
                .ejected(shared.service.grpc, &replica.label, "failure_rate");
        }
    }
}

/// Whether the connection failed, not the call: a status made by the
/// client from a transport error (UNAVAILABLE: it could not connect or the
/// stream was refused; CANCELLED: the connection closed before the request
/// was sent), never one a replica sent. Such a call may be sent again.
fn connection_failed(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Cancelled
    ) && std::error::Error::source(status).is_some()
        && !timed_out(status)
}

/// Whether the client's own timer ended the call (tonic answers CANCELLED
/// with a `TimeoutExpired` under it): the replica was slow, not unreachable.
fn timed_out(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// An attempt's span until it is answered: an attempt abandoned by its
/// caller (the hedged twin answered first, or the caller gave up) ends
/// CANCELLED instead of without a status; under `ewma`, the time it was
/// given counts as its latency at least (a replica always beaten by a
/// hedge must not look fast for want of answers).
struct Abandoned<'a> {
    span: &'a Span,
    latency: Option<(&'a Replica, Instant)>,
    answered: bool,
}

impl<'a> Abandoned<'a> {
    fn new(span: &'a Span, latency: Option<(&'a Replica, Instant)>) -> Self {
        Self {
            span,
            latency,
            answered: false,
        }
    }

    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        self.span.record("rpc.response.status_code", "CANCELLED");
        self.span.in_scope(|| {
            tracing::info!(
                target: crate::telemetry::TARGET,
                "abandoned: the caller stopped waiting (a hedged twin answered first)"
            );
        });
        if let Some((replica, started)) = self.latency {
            let now = Instant::now();
            replica.latency.observe(now - started, false, now);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_are_refused_with_the_backend_name() {
        let settings = BalancerSettings::default();
        let hasher = Service {
            name: "hasher",
            grpc: "test.Hasher",
            port: 8002,
        };
        let new = |url| Balancer::new(hasher, url, &settings, system_resolver());
        let error = new("not a url").unwrap_err().to_string();
        assert!(error.contains("invalid hasher URL"), "{error}");
        // The example has the backend's own port.
        assert!(error.contains("http://hasher:8002"), "{error}");
        assert!(new("http://hasher:8002").is_ok());
    }
}
