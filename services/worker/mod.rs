//! worker: mines DockerCoins forever. Each unit of work gets random bytes from
//! rng, has hasher hash them, and keeps a digest starting with `0` (in hex)
//! as a coin. About once a second it adds the hashes done to Redis
//! (`INCRBY hashes`, from running totals so that an update sent again counts
//! once) with the coins found (`HSET wallet`), in one transaction.
//!
//! Two modes: unary (the original, one `Rng/Generate` and one `Hasher/Hash`
//! per unit, after the loop delay) and batch (`Rng/GenerateStream` piped into
//! `Hasher/HashStream`, a batch per unit). Counted work is never dropped: what
//! Redis has not acknowledged is kept and sent with the next update, and a
//! stop flushes before it returns.
//!
//! Layout: [`mining`] is a mining loop and the checks on every reply,
//! [`tally`] the books and their updates to Redis, [`metrics`] what the
//! tally measures, [`liveness`] the optional status port (liveness and
//! metrics), [`open_loop`] units started at a given rate instead of loops
//! (`--rate`, for `bench`'s tail latency); this file holds the config, what a worker [`Mined`], and
//! [`run`], which ties them together.

mod liveness;
pub mod metrics;
mod mining;
mod open_loop;
mod tally;

pub use liveness::{LIVENESS_STALE, Liveness};
pub use mining::{UnitError, check_block, check_blocks, check_hex, coins_in_batch};
pub use open_loop::{OpenLoopReport, Pace};
pub use tally::{
    COIN_FLUSH_AT, COIN_FLUSH_MAX, FINAL_FLUSH_TIMEOUT, FLUSH_INTERVAL, MAX_PENDING_COINS,
};

use crate::{
    client::{BalancedHasher, BalancedRng},
    store::Store,
    telemetry::fields,
    telemetry::metrics::{Exposition, Registry},
};
use metrics::TallyMetrics;
use mining::Miner;
use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};
use tally::{Flusher, Tally};
use tokio::{
    net::TcpListener,
    sync::oneshot,
    task::{JoinHandle, JoinSet},
    time::Instant,
};
use tracing::Instrument;

/// The original worker's sleep before each unit: `time.sleep(0.1)`.
pub const DEFAULT_DELAY_MS: u64 = 100;

/// Units in flight at once, as the original: one.
pub const DEFAULT_CONCURRENCY: usize = 1;

/// 0: unary calls, one `Rng/Generate` and one `Hasher/Hash` per unit, as
/// the original's two HTTP requests.
pub const DEFAULT_BATCH: usize = 0;

/// Turbo's units in flight: enough batches to keep two cores busy.
pub const TURBO_CONCURRENCY: usize = 4;

/// Turbo's blocks per batch: large enough that a message's cost hides the
/// per-call cost, small enough for the worker's memory to stay flat.
pub const TURBO_BATCH: usize = 8192;

/// 0: the wallet keeps every coin, as the original.
pub const DEFAULT_WALLET_CAP: usize = 0;

/// Turbo's wallet: a sample of this many coins, the newest most likely in
/// it, while `coins` counts them all. Turbo finds hundreds of thousands of
/// coins a second; kept, they fill a laptop's memory in minutes.
pub const TURBO_WALLET_CAP: usize = 1000;

/// How the worker mines.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Sleep before each unit, as the original's `time.sleep(0.1)`.
    pub delay: Duration,
    /// Units in flight at once.
    pub concurrency: usize,
    /// 0: unary calls, one block per unit. N: streams of N blocks per unit.
    pub batch: usize,
    /// The most coins the wallet keeps (0: all, as the original).
    pub wallet_cap: usize,
    /// `None`: `concurrency` loops, each starting a unit when its last one
    /// ends. `Some`: units started at this rate instead (open loop), at
    /// most `concurrency` at once.
    pub pace: Option<Pace>,
}

impl WorkerConfig {
    /// The original worker.
    pub fn classroom() -> Self {
        Self {
            delay: Duration::from_millis(DEFAULT_DELAY_MS),
            concurrency: DEFAULT_CONCURRENCY,
            batch: DEFAULT_BATCH,
            wallet_cap: DEFAULT_WALLET_CAP,
            pace: None,
        }
    }

    /// No delay, several batches in flight.
    pub fn turbo() -> Self {
        Self {
            delay: Duration::ZERO,
            concurrency: TURBO_CONCURRENCY,
            batch: TURBO_BATCH,
            wallet_cap: TURBO_WALLET_CAP,
            pace: None,
        }
    }
}

/// What a worker did, reported when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mined {
    /// Hashes done, each with a valid digest.
    pub hashes_done: u64,
    /// Of those, how many Redis acknowledged.
    pub hashes_flushed: u64,
    /// Coins found.
    pub coins_found: u64,
    /// Of those, how many Redis counted in `coins`.
    pub coins_flushed: u64,
    /// Coins found but not acknowledged by Redis.
    pub coins_unflushed: u64,
}

/// What a worker talks to, made by the caller.
pub struct Backends {
    pub rng: BalancedRng,
    pub hasher: BalancedHasher,
    pub store: Store,
}

/// The worker's optional port: `/healthz` (liveness) and `/metrics`.
pub struct StatusPort {
    pub listener: TcpListener,
    /// What the caller registered (its clients' calls); the worker adds its
    /// tally.
    pub metrics: Registry,
}

/// Mines with `config` until `shutdown` resolves, then stops its loops,
/// flushes what it counted (for at most [`FINAL_FLUSH_TIMEOUT`]) and
/// returns what it did. Logs that report as its last line. With a `status`
/// port, serves liveness and metrics there until it returns.
pub async fn run(
    config: WorkerConfig,
    backends: Backends,
    status: Option<StatusPort>,
    shutdown: impl Future<Output = ()>,
) -> Mined {
    let Backends { rng, hasher, store } = backends;
    let turns = Arc::new(Liveness::default());
    let (tally, probe) = open_books(status, &turns, config.wallet_cap);
    tracing::info!(
        rng = %rng.balancer().url(),
        hasher = %hasher.balancer().url(),
        store = %store.describe(),
        delay_ms = config.delay.as_millis() as u64,
        concurrency = config.concurrency,
        batch = config.batch,
        wallet_cap = config.wallet_cap,
        rate = config.pace.map(|pace| pace.rate),
        "{}", fields::WORKER_MINING
    );
    let tally = Arc::new(tally);
    let miner = Arc::new(Miner {
        config: config.clone(),
        rng,
        hasher,
        tally: tally.clone(),
        liveness: turns,
    });
    let mining = Mining::start(&miner, &config);
    let mut flusher = Flusher::new(tally.clone(), store);
    let mut ticks = 0u64;
    flusher
        .keep_books(shutdown, || {
            ticks += 1;
            if ticks % 10 == 0 {
                tracing::info!(rng = ?miner.rng.balancer().served(), hasher = ?miner.hasher.balancer().served(), "calls per replica");
            }
        })
        .await;
    let open_loop = mining.stop().await;
    let stop_began = Instant::now();
    flusher
        .close_books(FINAL_FLUSH_TIMEOUT.saturating_sub(stop_began.elapsed()))
        .await;
    let report = Mined {
        hashes_done: tally.done.load(Ordering::Relaxed),
        hashes_flushed: flusher.flushed,
        coins_found: tally.coins_found.load(Ordering::Relaxed),
        coins_flushed: flusher.coins_flushed,
        coins_unflushed: tally.coins_held.load(Ordering::Relaxed) as u64,
    };
    if let Some(open_loop) = open_loop {
        open_loop.log();
    }
    report.log(&miner);
    if let Some(probe) = probe {
        probe.abort();
    }
    report
}

/// The units being mined: `concurrency` loops, or the open loop.
struct Mining {
    loops: JoinSet<()>,
    /// The open loop's stop, and the task that reports its latency.
    open_loop: Option<(oneshot::Sender<()>, JoinHandle<OpenLoopReport>)>,
}

impl Mining {
    fn start(miner: &Arc<Miner>, config: &WorkerConfig) -> Self {
        let mut loops = JoinSet::new();
        let Some(pace) = config.pace else {
            for _ in 0..config.concurrency.max(1) {
                loops.spawn(miner.clone().mine().in_current_span());
            }
            return Self {
                loops,
                open_loop: None,
            };
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let drive = open_loop::drive(miner.clone(), pace, config.concurrency, stopped);
        Self {
            loops,
            open_loop: Some((stop, tokio::spawn(drive.in_current_span()))),
        }
    }

    /// Stops mining. The open loop's units in flight finish first (for a
    /// bounded time), so that what they count still has the final flush's
    /// whole time; the loops are aborted.
    async fn stop(mut self) -> Option<OpenLoopReport> {
        let report = match self.open_loop {
            Some((stop, report)) => {
                let _ = stop.send(());
                report.await.ok()
            }
            None => None,
        };
        self.loops.abort_all();
        while self.loops.join_next().await.is_some() {}
        report
    }
}

/// The tally, measured on the `status` port if there is one, and the task
/// that serves that port (its liveness from `turns`).
fn open_books(
    status: Option<StatusPort>,
    turns: &Arc<Liveness>,
    wallet_cap: usize,
) -> (Tally, Option<JoinHandle<()>>) {
    let Some(StatusPort {
        listener,
        mut metrics,
    }) = status
    else {
        return (Tally::new(TallyMetrics::unregistered(), wallet_cap), None);
    };
    let tally = Tally::new(TallyMetrics::register(&mut metrics), wallet_cap);
    let probe = liveness::start(listener, turns.clone(), Exposition::new(metrics));
    (tally, Some(probe))
}

impl Mined {
    /// The worker's last line: what `bench` and the tests read back.
    fn log(&self, miner: &Miner) {
        if self.hashes_done == self.hashes_flushed
            && self.coins_found == self.coins_flushed
            && self.coins_unflushed == 0
        {
            tracing::info!(
                { fields::HASHES_DONE } = self.hashes_done,
                { fields::HASHES_FLUSHED } = self.hashes_flushed,
                { fields::COINS_FOUND } = self.coins_found,
                { fields::COINS_FLUSHED } = self.coins_flushed,
                rng_calls = ?miner.rng.balancer().served(),
                hasher_calls = ?miner.hasher.balancer().served(),
                "worker stopped; every hash counted in Redis"
            );
        } else {
            tracing::warn!(
                { fields::HASHES_DONE } = self.hashes_done,
                { fields::HASHES_FLUSHED } = self.hashes_flushed,
                { fields::COINS_FOUND } = self.coins_found,
                { fields::COINS_FLUSHED } = self.coins_flushed,
                coins_unflushed = self.coins_unflushed,
                "worker stopped; Redis did not acknowledge everything"
            );
        }
    }
}
