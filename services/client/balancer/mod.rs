//! The balancer under the typed clients of [`crate::client`]: one
//! [`Balancer`] per service, spreading calls over every replica that the
//! service's name resolves to, each call traced, bounded by a deadline that
//! travels with it (`grpc-timeout`), and its success or failure noted.
//! Callers back off themselves (the worker with [`crate::client::backoff::Backoff`]).
//! Here the handle and its replicas; the call path (attempts, retries,
//! hedges, the deadline) is [`call`], the settings [`settings`], the log of
//! a streak of failures [`streak`], what is measured [`metrics`].
//!
//! Why not one channel to the name: HTTP/2 keeps a connection for as long as
//! it can, so a client that resolved `rng` once stays pinned to the replica it
//! found, and replicas added later sit idle (the best-known trap of gRPC
//! behind DNS). A balanced client re-resolves the name every few seconds
//! ([`resolve`]) and keeps connections per address; [`Policy`] says how it
//! picks a replica for each call ([`policy`]: round robin, the least loaded
//! of two, the faster of two by their latency, [`ewma`], or by the weights
//! the replicas' own load reports give them, [`weighted`]), and
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
//! Why the balancer calls back into the typed client, which builds its
//! generated stub on the channel the balancer picked
//! (`|channel, request| RngStub::new(channel).generate(request)`), instead
//! of sitting as a tower `Service` under one stub: it retries and hedges a
//! *message*, which it still holds (`M: Clone`), not an HTTP request. Each
//! attempt encodes the message anew on another replica's channel, so
//! tonic's channel, which never retries, is all it needs: nothing buffers
//! an encoded body to replay it, and a client stream, which cannot be sent
//! twice, goes once ([`Balancer::call_once`]) and is never buffered for a
//! second try. And since the balancer chose the channel, it knows which
//! replica each attempt went to, and counts the outcome against it.
//!
//! Why not `tower::balance` (power of two choices over a `Discover` stream
//! of replicas): it spreads the requests of one service by load, but has no
//! retry on another replica (a `tower::retry` around it would clone and
//! replay the HTTP request, and pick again without avoiding the replica
//! that failed), no outlier ejection (gRFC A50), no per-replica pushback
//! (gRFC A6), and watches no replica's health. Nor tonic's
//! `Channel::balance_channel`, the same balancer behind one `Channel`: it
//! balances connections the caller never sees, so the caller cannot tell
//! which replica served a call, retry it elsewhere, or eject that replica.
//!
//! TLS ([`target`]): an `https://` URL encrypts every connection, balanced
//! ones included, although those dial an IP address each: the server's
//! certificate is checked against the URL's host (`rng`), not the address
//! dialled.

mod call;
mod ewma;
mod health;
mod metrics;
mod outlier;
mod policy;
mod replica;
mod resolve;
mod retry;
mod settings;
mod streak;
mod target;
mod weighted;

pub use metrics::ClientCalls;
pub use outlier::{
    DEFAULT_EJECTION_MS, DEFAULT_FAILURE_PERCENT, DEFAULT_INTERVAL_MS as DEFAULT_EJECT_INTERVAL_MS,
    DEFAULT_MAX_EJECTED_PERCENT, DEFAULT_MIN_CALLS, OutlierSettings,
};
pub use policy::Policy;
pub use resolve::{Resolver, system_resolver};
pub use retry::{DEFAULT_BUDGET_PERCENT, RetrySettings};
pub(crate) use settings::configure;
pub use settings::{
    BalancerSettings, DEFAULT_CALL_TIMEOUT_MS, DEFAULT_CHANNELS, DEFAULT_CONNECT_TIMEOUT_MS,
    DEFAULT_RESOLVE_MS, MIN_RESOLVE_INTERVAL,
};
pub use target::InvalidUrl;
pub use weighted::{
    DEFAULT_BLACKOUT_MS, DEFAULT_ERROR_PENALTY, DEFAULT_EXPIRATION_MS, DEFAULT_UPDATE_MS,
    MIN_UPDATE as MIN_WEIGHT_UPDATE, WeightedSettings, shares, utilization_of, weight_of,
};

use replica::Replica;
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, RwLock, atomic::AtomicUsize},
    time::{Duration, Instant},
};
use streak::Streak;
use target::Target;
use tokio::sync::Notify;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Which service a balancer calls, for its logs and its errors.
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
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaState {
    pub address: String,
    /// What its health watch said last.
    pub serving: bool,
    /// Set aside (its connection failed, or it failed too many calls).
    pub ejected: bool,
    pub in_flight: usize,
    /// Under `weighted_round_robin`, its share of the picks at the last
    /// update (0 to 1); `None` under other policies or before any.
    pub share: Option<f64>,
    /// The utilization its last load report said (under
    /// `weighted_round_robin`, which reads them).
    pub utilization: Option<f64>,
}

/// A balancer's state: its replicas and how calls are spread over them,
/// shared by the balancer's clones and its resolver task.
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
    /// `weighted_round_robin`'s weights, and the picks that follow them.
    schedule: weighted::Schedule,
    /// Wakes the resolver early (no replica left to call).
    resolve_now: Notify,
    /// When the outlier rule last ran.
    sweeper: outlier::Sweeper,
    /// What retries and hedges may spend.
    budget: retry::RetryBudget,
    /// Calls answered, by the replica that says it served them.
    served: Mutex<BTreeMap<String, u64>>,
    /// What the logs said of its failures, and how many there were.
    streak: Streak,
}

/// One service's balancer: its replicas, and the calls spread over them.
/// Cheap to clone: the clones share replicas, connections and counts.
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
    /// A balancer of `service` at `url` (`http://host:port`), its replicas
    /// found by `resolver` (balanced) or by the connection itself (pinned).
    /// Nothing connects until the first call. Must be called inside a tokio
    /// runtime (a balanced one resolves in a task).
    pub(crate) fn new(
        service: Service,
        url: &str,
        settings: &BalancerSettings,
        resolver: Resolver,
    ) -> Result<Self, InvalidUrl> {
        let target = Target::parse(service, url)?;
        let tls = target.tls(service, url, settings)?;
        let endpoint = endpoint(service, url, &target, tls.as_ref(), settings)?;
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
            schedule: weighted::Schedule::default(),
            resolve_now: Notify::new(),
            sweeper: outlier::Sweeper::default(),
            budget: retry::RetryBudget::new(&settings.retry),
            served: Mutex::default(),
            streak: Streak::default(),
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

    /// How `weighted_round_robin` weighs the replicas' load reports.
    pub fn weighted_settings(&self) -> WeightedSettings {
        self.shared.settings.weighted
    }

    /// Notes `result`'s success or failure on this balancer, and passes it on.
    pub(crate) fn note<T>(&self, result: Result<T, tonic::Status>) -> Result<T, tonic::Status> {
        let shared = &self.shared;
        match &result {
            Ok(_) => shared.streak.answered(shared.service, &shared.url),
            Err(status) => shared.streak.failed(shared.service, &shared.url, status),
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
        let weighted = self.policy() == Policy::WeightedRoundRobin;
        self.current()
            .iter()
            .map(|replica| ReplicaState {
                address: replica.label.clone(),
                serving: replica.is_serving(),
                ejected: replica.record.is_ejected(now),
                in_flight: replica.in_flight(),
                share: self
                    .shared
                    .schedule
                    .share(&replica.label)
                    .filter(|_| weighted),
                utilization: replica.weight.utilization(),
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
        let stride = self.stride(&replicas);
        let picks = policy::Picks {
            next: &shared.next,
            weighted: stride.as_deref().map(|stride| (&shared.schedule, stride)),
        };
        let picked = policy::pick(shared.settings.policy, &replicas, &picks, avoid);
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

    /// Under `weighted_round_robin`, the picks to follow now (`None`:
    /// round robin). An update's weights are measured, and a share of the
    /// picks that moved a lot is an event on the current span (the call's
    /// caller's, when its trace is kept).
    fn stride(&self, replicas: &Arc<[Arc<Replica>]>) -> Option<Arc<weighted::Stride>> {
        let shared = &self.shared;
        if shared.settings.policy != Policy::WeightedRoundRobin {
            return None;
        }
        let settings = &shared.settings.weighted;
        let (stride, update) = shared.schedule.stride(replicas, settings, Instant::now());
        let Some(update) = update else {
            return stride;
        };
        for (label, weight) in &update.weights {
            shared
                .settings
                .metrics
                .weight(shared.service.grpc, label, *weight);
        }
        let name = shared.service.name;
        for (label, before, now) in &update.moved {
            let (before, now) = (before * 100.0, now * 100.0);
            tracing::debug!(backend = name, replica = %label, share_before_percent = before, share_percent = now, "{name} replica {label}: its share of the picks moved");
            tracing::info!(
                target: crate::telemetry::TARGET,
                replica = %label,
                share_before_percent = before,
                share_percent = now,
                "weight moved: {name} replica {label} now gets {now:.0}% of the picks (was {before:.0}%)"
            );
        }
        stride
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

    /// Calls noted as failed so far.
    pub fn failures(&self) -> u64 {
        self.shared.streak.failures()
    }
}

/// The endpoint of the URL itself, set up as every connection is, with
/// TLS for `https://`.
fn endpoint(
    service: Service,
    url: &str,
    target: &Target,
    tls: Option<&ClientTlsConfig>,
    settings: &BalancerSettings,
) -> Result<Endpoint, InvalidUrl> {
    let endpoint = configure(target.endpoint.clone(), settings);
    let Some(tls) = tls else {
        return Ok(endpoint);
    };
    endpoint
        .tls_config(tls.clone())
        .map_err(|error| InvalidUrl {
            name: service.name,
            url: url.to_owned(),
            reason: format!(
                "cannot set up TLS: {}",
                crate::telemetry::error_chain::describe(&error)
            ),
        })
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
