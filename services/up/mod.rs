//! `dockercoins up`: the whole mesh in one process, for a laptop without
//! Docker. rng, hasher, webui and N workers run as tasks; Redis is the one at
//! `REDIS_URL` when given, else a private `redis-server` child on a free port
//! when one is on PATH, else the in-process store (said loudly in the log).
//!
//! Shutdown is one signal fanned out to every service; the private Redis is
//! stopped last, after the workers' final flush.
//!
//! Two things a laptop lab needs beyond that: the last replica of rng or
//! hasher can run other settings than the rest ([`replica`]: one slow or
//! failing replica among good ones), and the backends can be restarted one
//! replica at a time while the workers mine ([`restart`]).

pub mod replica;
pub mod restart;

use crate::{
    client::balancer::{BalancerSettings, ClientCalls, InvalidUrl, Resolver},
    client::{BalancedHasher, BalancedRng},
    hasher::HasherConfig,
    protocol::{HASHER_PORT, RNG_PORT, WEBUI_PORT},
    rng::RngConfig,
    server::ServeError,
    store::private_redis::{PrivateRedis, RedisStartError},
    store::{Store, StoreError},
    telemetry::metrics::Registry,
    webui::{Webui, WebuiError},
    worker::{Backends, WorkerConfig},
};
use replica::ReplicaSettings;
use restart::{RestartRequests, Slot, SlotError};
use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinSet,
};
use tracing::Instrument;

/// Where `up`'s first rng listens unless told otherwise: loopback, the
/// lab's port (a laptop's mesh is not for the network).
pub const DEFAULT_RNG_LISTEN: SocketAddr = loopback(RNG_PORT);

/// Where `up`'s first hasher listens unless told otherwise.
pub const DEFAULT_HASHER_LISTEN: SocketAddr = loopback(HASHER_PORT);

/// Where `up`'s webui listens unless told otherwise.
pub const DEFAULT_WEBUI_LISTEN: SocketAddr = loopback(WEBUI_PORT);

/// Workers unless told otherwise: the lab's first step.
pub const DEFAULT_WORKERS: usize = 1;

/// Replicas of rng and of hasher unless told otherwise.
pub const DEFAULT_REPLICAS: usize = 1;

/// The port of each replica after the first: +10, +20... above it.
pub const REPLICA_PORT_STEP: u16 = 10;

const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Where `replicas` replicas listen: `first`, then its port +10, +20...
/// (port 0 stays 0: every replica gets a free port). At least one.
pub fn replica_addrs(first: SocketAddr, replicas: usize) -> Result<Vec<SocketAddr>, UpError> {
    (0..replicas.max(1))
        .map(|n| {
            let mut addr = first;
            if first.port() != 0 {
                let port = u16::try_from(n)
                    .ok()
                    .and_then(|n| n.checked_mul(REPLICA_PORT_STEP))
                    .and_then(|step| first.port().checked_add(step))
                    .ok_or(UpError::TooManyReplicas { first, replicas })?;
                addr.set_port(port);
            }
            Ok(addr)
        })
        .collect()
}

/// What `up` runs.
#[derive(Clone, Debug)]
pub struct UpConfig {
    pub workers: usize,
    pub rng: RngConfig,
    pub hasher: HasherConfig,
    /// How the last rng replica differs from the others (default: not).
    pub rng_last_replica: ReplicaSettings,
    /// How the last hasher replica differs from the others (default: not).
    pub hasher_last_replica: ReplicaSettings,
    pub worker: WorkerConfig,
    pub balancer: BalancerSettings,
    pub redis_timeout: Duration,
    /// `None`: a private redis-server if on PATH, else the in-process store.
    pub redis_url: Option<String>,
}

/// The ports `up` serves on, bound by the caller: one per rng and hasher
/// replica, and webui's.
pub struct Listeners {
    pub rng: Vec<TcpListener>,
    pub hasher: Vec<TcpListener>,
    pub webui: TcpListener,
}

/// A resolver that always answers `addrs`: how `up`'s clients find every
/// local replica, as Docker's DNS would list every container.
fn fixed_resolver(addrs: Vec<SocketAddr>) -> Resolver {
    std::sync::Arc::new(move |_host, _port| {
        let addrs = addrs.clone();
        Box::pin(async move { Ok(addrs) })
    })
}

/// Why `up` could not run.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("webui failed: {0}")]
    Webui(#[from] WebuiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Url(#[from] InvalidUrl),
    #[error(transparent)]
    RedisStart(#[from] RedisStartError),
    #[error(transparent)]
    Replica(#[from] SlotError),
    #[error("{replicas} replicas from {first} go past the last port (65535)")]
    TooManyReplicas { first: SocketAddr, replicas: usize },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs the mesh until `shutdown` resolves (or a service fails), then stops
/// every service, the workers' last flush before the private Redis goes.
/// Each request on `restarts` restarts the backends, one replica at a time
/// ([`restart::restart_channel`]; [`RestartRequests::none`] for never).
pub async fn run(
    config: UpConfig,
    listeners: Listeners,
    restarts: RestartRequests,
    shutdown: impl Future<Output = ()>,
) -> Result<(), UpError> {
    let addrs = Addrs {
        rng: addrs_of(&listeners.rng)?,
        hasher: addrs_of(&listeners.hasher)?,
        webui: listeners.webui.local_addr()?,
    };
    let (store, private_redis) = match &config.redis_url {
        Some(url) => (Store::redis(url, config.redis_timeout)?, None),
        None => match PrivateRedis::start().await? {
            Some(redis) => {
                tracing::info!(url = %redis.url, "started a private redis-server for this run (no persistence)");
                (Store::redis(&redis.url, config.redis_timeout)?, Some(redis))
            }
            None => {
                tracing::warn!(
                    "no REDIS_URL and no redis-server on PATH: using an in-process store \
                     with the same keys; the score is gone when this process stops"
                );
                (Store::memory(), None)
            }
        },
    };
    // The private Redis outlives the services: the workers' last flush needs it.
    let (stop_redis, redis_stopped) = tokio::sync::oneshot::channel::<()>();
    let supervisor = private_redis.map(|redis| {
        tokio::spawn(redis.supervise(async {
            let _ = redis_stopped.await;
        }))
    });
    let result = run_services(config, listeners, addrs, store, restarts, shutdown).await;
    let _ = stop_redis.send(());
    if let Some(supervisor) = supervisor {
        let _ = supervisor.await;
    }
    result
}

struct Addrs {
    rng: Vec<SocketAddr>,
    hasher: Vec<SocketAddr>,
    webui: SocketAddr,
}

fn addrs_of(listeners: &[TcpListener]) -> std::io::Result<Vec<SocketAddr>> {
    listeners.iter().map(TcpListener::local_addr).collect()
}

fn local_url(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("http://localhost:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}

/// Spawns every service, then waits for `shutdown` (or a service that
/// ends, which failed: services run until told to stop) and stops them all.
async fn run_services(
    config: UpConfig,
    listeners: Listeners,
    addrs: Addrs,
    store: Store,
    restarts: RestartRequests,
    shutdown: impl Future<Output = ()>,
) -> Result<(), UpError> {
    let (stop, stopped) = watch::channel(false);
    let mut services = Services {
        tasks: JoinSet::new(),
        stopped,
    };
    let slots = services.spawn_backends(&config, listeners.rng, listeners.hasher)?;
    // Not one of the services: it ends when they do, and ending is no failure.
    let restarter = tokio::spawn(restart::rolling_restarts(restarts, slots));
    spawn_clients(&mut services, &config, listeners.webui, &addrs, &store)?;
    tracing::info!(
        webui = %local_url(addrs.webui),
        rng = ?addrs.rng,
        hasher = ?addrs.hasher,
        store = %store.describe(),
        workers = config.workers,
        "dockercoins is up: open {} (Ctrl-C stops everything)",
        local_url(addrs.webui)
    );
    let mut result = Ok(());
    tokio::select! {
        () = shutdown => {}
        // Services run until told to stop: one that ends early failed.
        Some(joined) = services.tasks.join_next() => result = flatten(joined),
    }
    restarter.abort();
    let _ = stop.send(true);
    while let Some(joined) = services.tasks.join_next().await {
        if let (Ok(()), Err(error)) = (&result, flatten(joined)) {
            result = Err(error);
        }
    }
    result
}

/// Spawns the services that call rng and hasher: webui and the workers,
/// their clients finding every local replica.
fn spawn_clients(
    services: &mut Services,
    config: &UpConfig,
    webui_listener: TcpListener,
    addrs: &Addrs,
    store: &Store,
) -> Result<(), UpError> {
    // Balanced clients see every replica (pinned ones keep the first).
    let clients = |balancer: &BalancerSettings| -> Result<(BalancedRng, BalancedHasher), UpError> {
        Ok((
            BalancedRng::with_resolver(
                &local_url(addrs.rng[0]),
                balancer,
                fixed_resolver(addrs.rng.clone()),
            )?,
            BalancedHasher::with_resolver(
                &local_url(addrs.hasher[0]),
                balancer,
                fixed_resolver(addrs.hasher.clone()),
            )?,
        ))
    };
    // webui's gateway calls on its /metrics, as in Compose; and, with a
    // `worker_` prefix, every worker's calls together (in Compose each worker
    // serves its own): what the lab and `benches/policies.sh` read.
    let mut webui_metrics = Registry::default();
    let webui_balancer = BalancerSettings {
        metrics: ClientCalls::register(&mut webui_metrics),
        ..config.balancer.clone()
    };
    let worker_balancer = BalancerSettings {
        metrics: ClientCalls::register(webui_metrics.sub_registry_with_prefix("worker")),
        ..config.balancer.clone()
    };
    let (rng, hasher) = clients(&webui_balancer)?;
    let webui = Webui::new(store.clone(), rng, hasher).with_metrics(webui_metrics);
    services.spawn_webui(webui_listener, webui);
    // One balancer for every worker, as one process shares its channels: its
    // balancer sees all their calls in flight (what `least_request`
    // compares), where in Compose each worker sees only its own one.
    let (rng, hasher) = clients(&worker_balancer)?;
    for n in 1..=config.workers.max(1) {
        let backends = Backends {
            rng: rng.clone(),
            hasher: hasher.clone(),
            store: store.clone(),
        };
        services.spawn_worker(n, config.worker.clone(), backends);
    }
    Ok(())
}

/// The settings of replica `n` (from 0) of `replicas`: `base`, or for the
/// last one `base` with `last`'s differences (said in the log).
fn replica_settings<C: Clone + std::fmt::Display>(
    service: &str,
    (n, replicas): (usize, usize),
    base: &C,
    last: &ReplicaSettings,
    apply: impl Fn(&C) -> C,
) -> C {
    if n + 1 < replicas || last.is_empty() {
        return base.clone();
    }
    let settings = apply(base);
    tracing::info!(
        replica = n + 1,
        "{service} replica {} of {replicas} differs: {last} ({settings})",
        n + 1
    );
    settings
}

/// The services of the mesh as tasks, each stopped by one signal.
struct Services {
    tasks: JoinSet<Result<(), UpError>>,
    /// Turns true when every service is to stop.
    stopped: watch::Receiver<bool>,
}

impl Services {
    /// A future that resolves when every service is to stop.
    fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stopped.clone();
        async move {
            let _ = stopped.wait_for(|&stop| stop).await;
        }
    }

    /// Every replica of rng and hasher, each in a slot that a rolling
    /// restart can restart; the slots, in the order a restart goes.
    fn spawn_backends(
        &mut self,
        config: &UpConfig,
        rng: Vec<TcpListener>,
        hasher: Vec<TcpListener>,
    ) -> Result<Vec<Slot>, UpError> {
        let mut slots = Vec::new();
        let replicas = rng.len();
        for (n, listener) in rng.into_iter().enumerate() {
            let last = &config.rng_last_replica;
            let settings = replica_settings("rng", (n, replicas), &config.rng, last, |base| {
                last.rng(base)
            });
            let serve = move |listener, stop: tokio::sync::oneshot::Receiver<()>| {
                crate::rng::serve(listener, settings.clone(), async {
                    let _ = stop.await;
                })
            };
            slots.push(self.spawn_slot("rng", n + 1, listener, serve)?);
        }
        let replicas = hasher.len();
        for (n, listener) in hasher.into_iter().enumerate() {
            let last = &config.hasher_last_replica;
            let settings =
                replica_settings("hasher", (n, replicas), &config.hasher, last, |base| {
                    last.hasher(base)
                });
            let serve = move |listener, stop: tokio::sync::oneshot::Receiver<()>| {
                crate::hasher::serve(listener, settings.clone(), async {
                    let _ = stop.await;
                })
            };
            slots.push(self.spawn_slot("hasher", n + 1, listener, serve)?);
        }
        Ok(slots)
    }

    /// Runs replica `replica` of `service` with `serve` on `listener`, as a
    /// service of the mesh that a rolling restart can restart.
    fn spawn_slot<F>(
        &mut self,
        service: &'static str,
        replica: usize,
        listener: TcpListener,
        serve: impl Fn(TcpListener, tokio::sync::oneshot::Receiver<()>) -> F + Send + 'static,
    ) -> Result<Slot, UpError>
    where
        F: Future<Output = Result<(), ServeError>> + Send + 'static,
    {
        let addr = listener.local_addr()?;
        let (restart, restarts) = mpsc::channel(1);
        let slot = restart::slot(listener, serve, restarts, self.stopped.clone());
        // Log lines read `rng{replica=2}: ...`, as before slots.
        let span = match service {
            "rng" => tracing::info_span!("rng", replica),
            _ => tracing::info_span!("hasher", replica),
        };
        self.tasks
            .spawn(async move { Ok(slot.await?) }.instrument(span));
        Ok(Slot {
            service,
            replica,
            addr,
            restart,
        })
    }

    fn spawn_webui(&mut self, listener: TcpListener, webui: Webui) {
        let webui = crate::webui::serve(listener, webui, self.signal());
        self.tasks
            .spawn(async move { Ok(webui.await?) }.instrument(tracing::info_span!("webui")));
    }

    fn spawn_worker(&mut self, n: usize, config: WorkerConfig, backends: Backends) {
        let worker = crate::worker::run(config, backends, None, self.signal());
        self.tasks.spawn(
            async move {
                worker.await;
                Ok(())
            }
            .instrument(tracing::info_span!("worker", n)),
        );
    }
}

fn flatten(joined: Result<Result<(), UpError>, tokio::task::JoinError>) -> Result<(), UpError> {
    joined.map_err(|error| UpError::Io(std::io::Error::other(error)))?
}
