//! `dockercoins up`: the whole mesh in one process, for a laptop without
//! Docker. rng, hasher, webui and N workers run as tasks; Redis is the one at
//! `REDIS_URL` when given, else a private `redis-server` child on a free port
//! when one is on PATH, else the in-process store (said loudly in the log).
//!
//! Shutdown is one signal fanned out to every service; the private Redis is
//! stopped last, after the workers' final flush.

use crate::{
    config::{HasherConfig, RngConfig},
    pool::{Backend, InvalidUrl, PoolSettings},
    server::ServeError,
    store::{Store, StoreError},
    webui::Webui,
    worker::WorkerConfig,
};
use std::{future::Future, net::SocketAddr, process::Stdio, time::Duration};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    sync::watch,
    task::JoinSet,
};
use tracing::Instrument;

/// How long a private redis-server may take to accept connections.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);

/// What `up` runs.
#[derive(Clone, Debug)]
pub struct UpConfig {
    pub workers: usize,
    pub rng: RngConfig,
    pub hasher: HasherConfig,
    pub worker: WorkerConfig,
    pub pool: PoolSettings,
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
fn fixed_resolver(addrs: Vec<SocketAddr>) -> crate::pool::Resolver {
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
    Webui(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Url(#[from] InvalidUrl),
    #[error("cannot start redis-server: {0}")]
    RedisStart(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A redis-server child of this process, with no persistence.
pub struct PrivateRedis {
    child: Child,
    port: u16,
    pub url: String,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free loopback port and waits until it
    /// accepts connections. `Ok(None)` when there is no redis-server on PATH.
    pub async fn start() -> Result<Option<Self>, UpError> {
        let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
        Self::start_on(port).await
    }

    async fn start_on(port: u16) -> Result<Option<Self>, UpError> {
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: Ctrl-C in the terminal reaches only us,
            // and the workers can still flush before we stop it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(UpError::RedisStart(error.to_string())),
        };
        let mut output = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            output.push(rx);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "redis-server", "{line}");
                    let _ = tx.send(line);
                }
            });
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = tokio::time::Instant::now() + REDIS_START_TIMEOUT;
        let mut backoff =
            crate::pool::Backoff::new(Duration::from_millis(5), Duration::from_millis(100));
        loop {
            if let Some(status) = child.try_wait()? {
                let mut said = Vec::new();
                for mut rx in output {
                    while let Some(line) = rx.recv().await {
                        said.push(line);
                    }
                }
                return Err(UpError::RedisStart(format!(
                    "it exited with {status}: {}",
                    said.join(" / ")
                )));
            }
            if TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(UpError::RedisStart(format!(
                    "not accepting connections on {addr} after {REDIS_START_TIMEOUT:?}"
                )));
            }
            backoff.wait().await;
        }
        Ok(Some(Self {
            child,
            port,
            url: format!("redis://{addr}"),
        }))
    }

    /// The child's process id, for reading its CPU time and memory.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the child now.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Keeps the child running until `stopped` resolves, then stops it. A
    /// child that exits (killed, out of memory) is started again on the same
    /// port: the workers still hold what the dead one had not acknowledged.
    pub async fn supervise(mut self, stopped: impl Future<Output = ()>) {
        tokio::pin!(stopped);
        let mut backoff = crate::pool::Backoff::default();
        loop {
            tokio::select! {
                () = &mut stopped => break,
                status = self.child.wait() => {
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    tracing::warn!(url = %self.url, %status, "the private redis-server exited; starting it again (the score restarts from zero)");
                    backoff.wait().await;
                    match Self::start_on(self.port).await {
                        Ok(Some(again)) => self = again,
                        Ok(None) | Err(_) => {
                            tracing::error!(url = %self.url, "cannot restart the private redis-server; the score is no longer kept");
                            stopped.await;
                            return;
                        }
                    }
                }
            }
        }
        let _ = self.child.kill().await;
    }
}

/// Runs the mesh until `shutdown` resolves (or a service fails), then stops
/// every service, the workers' last flush before the private Redis goes.
pub async fn run(
    config: UpConfig,
    listeners: Listeners,
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
    let result = run_services(config, listeners, addrs, store, shutdown).await;
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

async fn run_services(
    config: UpConfig,
    listeners: Listeners,
    addrs: Addrs,
    store: Store,
    shutdown: impl Future<Output = ()>,
) -> Result<(), UpError> {
    let (stop, stopped) = watch::channel(false);
    let signal = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|&stop| stop).await;
        }
    };
    let rng_url = local_url(addrs.rng[0]);
    let hasher_url = local_url(addrs.hasher[0]);
    let webui_addr = addrs.webui;
    let mut tasks: JoinSet<Result<(), UpError>> = JoinSet::new();
    for (n, listener) in listeners.rng.into_iter().enumerate() {
        let rng = crate::rng::serve(listener, config.rng.clone(), signal());
        let span = tracing::info_span!("rng", replica = n + 1);
        tasks.spawn(async move { Ok(rng.await?) }.instrument(span));
    }
    for (n, listener) in listeners.hasher.into_iter().enumerate() {
        let hasher = crate::hasher::serve(listener, config.hasher.clone(), signal());
        let span = tracing::info_span!("hasher", replica = n + 1);
        tasks.spawn(async move { Ok(hasher.await?) }.instrument(span));
    }
    // Balanced clients see every replica (pinned ones keep the first).
    let backends = || -> Result<(Backend, Backend), UpError> {
        Ok((
            Backend::with_resolver(
                "rng",
                &rng_url,
                &config.pool,
                fixed_resolver(addrs.rng.clone()),
            )?,
            Backend::with_resolver(
                "hasher",
                &hasher_url,
                &config.pool,
                fixed_resolver(addrs.hasher.clone()),
            )?,
        ))
    };
    let (rng, hasher) = backends()?;
    let webui = Webui::new(store.clone(), rng, hasher);
    let webui_signal = signal();
    tasks.spawn(
        async move {
            crate::webui::serve(listeners.webui, webui, webui_signal)
                .await
                .map_err(UpError::Webui)
        }
        .instrument(tracing::info_span!("webui")),
    );
    for n in 1..=config.workers.max(1) {
        let (rng, hasher) = backends()?;
        let worker =
            crate::worker::run(config.worker.clone(), rng, hasher, store.clone(), signal());
        tasks.spawn(
            async move {
                worker.await;
                Ok(())
            }
            .instrument(tracing::info_span!("worker", n)),
        );
    }
    tracing::info!(
        webui = %local_url(webui_addr),
        rng = ?addrs.rng,
        hasher = ?addrs.hasher,
        store = %store.describe(),
        workers = config.workers,
        "dockercoins is up: open {} (Ctrl-C stops everything)",
        local_url(webui_addr)
    );

    let mut result = Ok(());
    tokio::select! {
        () = shutdown => {}
        // Services run until told to stop: one that ends early failed.
        Some(joined) = tasks.join_next() => result = flatten(joined),
    }
    let _ = stop.send(true);
    while let Some(joined) = tasks.join_next().await {
        if let (Ok(()), Err(error)) = (&result, flatten(joined)) {
            result = Err(error);
        }
    }
    result
}

fn flatten(joined: Result<Result<(), UpError>, tokio::task::JoinError>) -> Result<(), UpError> {
    joined.map_err(|error| UpError::Io(std::io::Error::other(error)))?
}
