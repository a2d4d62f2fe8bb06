//! `dockercoins up`'s command line: the whole mesh in one process, the
//! classroom or turbo presets, and each setting that overrides them. The
//! balancer's settings are the clients' (`clients::BalancerArgs`).

use super::{BalancerArgs, env};
use crate::{
    hasher::HasherConfig,
    rng::RngConfig,
    up::{self, UpConfig, replica::ReplicaSettings},
    worker::WorkerConfig,
};
use std::{net::SocketAddr, time::Duration};

/// `dockercoins up`: the whole mesh in one process, classroom timings unless
/// `--turbo` or an individual setting says otherwise.
#[derive(Clone, Debug, clap::Args)]
pub struct UpArgs {
    /// Workers to run.
    #[arg(long, env = env::UP_WORKERS, default_value_t = up::DEFAULT_WORKERS)]
    pub workers: usize,
    /// rng servers to run, on --rng-listen's port, then +10, +20... The
    /// lab's fix: with `balanced` clients, 3 replicas triple the rate.
    #[arg(long, env = env::UP_RNG_REPLICAS, default_value_t = up::DEFAULT_REPLICAS)]
    pub rng_replicas: usize,
    /// hasher servers to run, on --hasher-listen's port, then +10, +20...
    #[arg(long, env = env::UP_HASHER_REPLICAS, default_value_t = up::DEFAULT_REPLICAS)]
    pub hasher_replicas: usize,
    /// How the last rng replica differs from the others, `KEY=VALUE,...`
    /// with keys delay-ms, lanes, fail-rate, fail-code, extra-delay: e.g.
    /// `delay-ms=300`, one slow replica among good ones. Unset: as the others.
    #[arg(long, env = env::UP_RNG_LAST_REPLICA, value_parser = ReplicaSettings::parse_rng)]
    pub rng_last_replica: Option<ReplicaSettings>,
    /// How the last hasher replica differs from the others, `KEY=VALUE,...`
    /// with keys delay-ms, fail-rate, fail-code, extra-delay. Unset: as the
    /// others.
    #[arg(long, env = env::UP_HASHER_LAST_REPLICA, value_parser = ReplicaSettings::parse_hasher)]
    pub hasher_last_replica: Option<ReplicaSettings>,
    /// No delays, no lane, workers in batch mode: how fast the mesh really is.
    #[arg(long, env = env::TURBO)]
    pub turbo: bool,
    /// Redis URL. Without it, a private redis-server is started when one is
    /// on PATH, else an in-process store stands in.
    #[arg(long = "redis", env = env::REDIS_URL, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// rng's address.
    #[arg(long, env = env::RNG_LISTEN, default_value_t = up::DEFAULT_RNG_LISTEN)]
    pub rng_listen: SocketAddr,
    /// hasher's address.
    #[arg(long, env = env::HASHER_LISTEN, default_value_t = up::DEFAULT_HASHER_LISTEN)]
    pub hasher_listen: SocketAddr,
    /// webui's address.
    #[arg(long, env = env::WEBUI_LISTEN, default_value_t = up::DEFAULT_WEBUI_LISTEN)]
    pub webui_listen: SocketAddr,
    /// rng's delay per request in ms [default: 100, turbo: 0].
    #[arg(long, env = env::RNG_DELAY_MS)]
    pub rng_delay_ms: Option<u64>,
    /// rng's lanes, 0 = unlimited [default: 1, turbo: 0].
    #[arg(long, env = env::RNG_LANES)]
    pub rng_lanes: Option<usize>,
    /// hasher's delay per request in ms [default: 100, turbo: 0].
    #[arg(long, env = env::HASHER_DELAY_MS)]
    pub hasher_delay_ms: Option<u64>,
    /// Each worker's sleep before a unit in ms [default: 100, turbo: 0].
    #[arg(long, env = env::WORKER_DELAY_MS)]
    pub worker_delay_ms: Option<u64>,
    /// Units in flight per worker [default: 1, turbo: 4].
    #[arg(long, env = env::WORKER_CONCURRENCY)]
    pub concurrency: Option<usize>,
    /// Blocks per batch, 0 = unary calls [default: 0, turbo: 8192].
    #[arg(long, env = env::WORKER_BATCH)]
    pub batch: Option<usize>,
    /// Most coins the wallet keeps, 0 = all [default: 0, turbo: 1000].
    #[arg(long, env = env::WALLET_CAP)]
    pub wallet_cap: Option<usize>,
    #[command(flatten)]
    pub connections: BalancerArgs,
}

impl UpArgs {
    /// What `up` runs: classroom or turbo presets, overridden by any
    /// setting given.
    pub fn config(&self) -> UpConfig {
        let (mut rng, mut hasher, mut worker) = if self.turbo {
            (
                RngConfig::turbo(),
                HasherConfig::turbo(),
                WorkerConfig::turbo(),
            )
        } else {
            (
                RngConfig::classroom(),
                HasherConfig::classroom(),
                WorkerConfig::classroom(),
            )
        };
        if let Some(ms) = self.rng_delay_ms {
            rng.delay = Duration::from_millis(ms);
        }
        if let Some(lanes) = self.rng_lanes {
            rng.lanes = (lanes > 0).then_some(lanes);
        }
        if let Some(ms) = self.hasher_delay_ms {
            hasher.delay = Duration::from_millis(ms);
        }
        if let Some(ms) = self.worker_delay_ms {
            worker.delay = Duration::from_millis(ms);
        }
        if let Some(concurrency) = self.concurrency {
            worker.concurrency = concurrency;
        }
        if let Some(batch) = self.batch {
            worker.batch = batch;
        }
        if let Some(cap) = self.wallet_cap {
            worker.wallet_cap = cap;
        }
        UpConfig {
            workers: self.workers,
            rng,
            hasher,
            rng_last_replica: self.rng_last_replica.clone().unwrap_or_default(),
            hasher_last_replica: self.hasher_last_replica.clone().unwrap_or_default(),
            worker,
            balancer: self.connections.balancer(),
            redis_timeout: self.connections.redis_timeout(),
            redis_url: self.redis_url.clone(),
        }
    }
}
