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

use crate::{
    hasher::DIGEST_BYTES,
    pb::{
        GenerateRequest, GenerateStreamRequest, HashBatch, HashRequest,
        hasher_client::HasherClient, rng_client::RngClient,
    },
    pool::{Backend, Backoff, traced, traced_once},
    store::{Coin, Counter, Store, StoreError},
};
use bytes::Bytes;
use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{sync::mpsc, task::JoinSet, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

/// Bytes of randomness per unit of work, as in the original (`GET /32`).
pub const BLOCK_BYTES: usize = 32;

/// Coins kept while Redis is away before mining pauses: bounds the memory a
/// long Redis outage can take (64 bytes a coin, 12.8 MB in all).
pub const MAX_PENDING_COINS: usize = 200_000;

/// Coins waiting that make the flusher send them before the second is up:
/// keeps every HSET small (about 1.5 MB) and the worker's memory flat in
/// turbo, where a second can find 200,000 coins.
pub const COIN_FLUSH_AT: usize = 16 * 1024;

/// Most coins in one HSET: however many wait (after a Redis outage, up to
/// [`MAX_PENDING_COINS`]), each command stays a few megabytes.
pub const COIN_FLUSH_MAX: usize = 32 * 1024;

/// How often the counter goes to Redis, as in the original.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How long a stop may spend on its last flush.
pub const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_millis(800);

/// How the worker mines.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Sleep before each unit, as the original's `time.sleep(0.1)`.
    pub delay: Duration,
    /// Units in flight at once.
    pub concurrency: usize,
    /// 0: unary calls, one block per unit. N: streams of N blocks per unit.
    pub batch: usize,
    /// Bound on waiting for each reply (or each stream message).
    pub call_timeout: Duration,
}

impl WorkerConfig {
    /// The original worker.
    pub fn classroom() -> Self {
        Self {
            delay: Duration::from_millis(100),
            concurrency: 1,
            batch: 0,
            call_timeout: Duration::from_secs(5),
        }
    }

    /// No delay, several batches in flight.
    pub fn turbo() -> Self {
        Self {
            delay: Duration::ZERO,
            concurrency: 4,
            batch: 8192,
            call_timeout: Duration::from_secs(5),
        }
    }
}

/// What a worker did, reported when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Hashes done, each with a valid digest.
    pub hashes_done: u64,
    /// Of those, how many Redis acknowledged.
    pub hashes_flushed: u64,
    /// Coins found.
    pub coins_found: u64,
    /// Coins found but not acknowledged by Redis.
    pub coins_unflushed: u64,
}

/// Why a unit of work failed. Nothing of a failed unit is counted.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("rng: {0}")]
    Rng(Status),
    #[error("hasher: {0}")]
    Hasher(Status),
    #[error("bad reply from {backend}: {reason}")]
    BadReply {
        backend: &'static str,
        reason: String,
    },
}

fn bad(backend: &'static str, reason: impl Into<String>) -> UnitError {
    UnitError::BadReply {
        backend,
        reason: reason.into(),
    }
}

/// Checks a block from rng's unary reply.
pub fn check_block(data: &[u8]) -> Result<(), UnitError> {
    if data.len() == BLOCK_BYTES {
        Ok(())
    } else {
        Err(bad(
            "rng",
            format!("{} bytes instead of {BLOCK_BYTES}", data.len()),
        ))
    }
}

/// Checks hasher's unary reply: 64 lowercase hex digits.
pub fn check_hex(hex: &str) -> Result<(), UnitError> {
    let valid = hex.len() == 2 * DIGEST_BYTES
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if valid {
        Ok(())
    } else {
        Err(bad("hasher", format!("not a SHA-256 in hex: {hex:.80?}")))
    }
}

/// Checks a message of rng's stream: whole `BLOCK_BYTES` blocks, not more
/// than `left` of them. Returns how many blocks it holds.
pub fn check_blocks(size: u32, blocks: &[u8], left: usize) -> Result<usize, UnitError> {
    if size as usize != BLOCK_BYTES {
        return Err(bad(
            "rng",
            format!("blocks of {size} bytes instead of {BLOCK_BYTES}"),
        ));
    }
    if blocks.is_empty() || blocks.len() % BLOCK_BYTES != 0 {
        return Err(bad(
            "rng",
            format!("{} bytes is not whole blocks", blocks.len()),
        ));
    }
    let count = blocks.len() / BLOCK_BYTES;
    if count > left {
        return Err(bad("rng", format!("{count} blocks when {left} were left")));
    }
    Ok(count)
}

/// The coins among `blocks` given their raw `digests` (32 bytes each, same
/// order). A digest batch of the wrong length is refused whole.
pub fn coins_in_batch(blocks: &Bytes, digests: &[u8]) -> Result<Vec<Coin>, UnitError> {
    let count = blocks.len() / BLOCK_BYTES;
    if digests.len() != count * DIGEST_BYTES {
        return Err(bad(
            "hasher",
            format!(
                "{} bytes of digests for {count} blocks (expected {})",
                digests.len(),
                count * DIGEST_BYTES
            ),
        ));
    }
    Ok(digests
        .chunks_exact(DIGEST_BYTES)
        .enumerate()
        // A hex digest starts with '0' when the first byte's high nibble is 0.
        .filter(|(_, digest)| digest[0] < 0x10)
        .map(|(i, digest)| Coin {
            digest: digest.try_into().expect("chunks of DIGEST_BYTES"),
            bytes: blocks[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES]
                .try_into()
                .expect("blocks of BLOCK_BYTES"),
        })
        .collect())
}

/// Work counted and not yet acknowledged by Redis.
#[derive(Default)]
struct Tally {
    /// Hashes done since start, each with a valid digest.
    done: AtomicU64,
    /// Coins found since start.
    coins_found: AtomicU64,
    /// Coins waiting to be sent.
    pending_coins: Mutex<Vec<Coin>>,
    /// Coins found and not yet acknowledged by Redis: waiting or being sent.
    /// What bounds memory (mining pauses at [`MAX_PENDING_COINS`]); counting
    /// only the waiting ones would miss those in a failing update.
    coins_held: std::sync::atomic::AtomicUsize,
    /// Wakes the flusher when [`COIN_FLUSH_AT`] coins wait.
    coins_waiting: tokio::sync::Notify,
}

impl Tally {
    fn add(&self, hashes: u64, coins: Vec<Coin>) {
        if !coins.is_empty() {
            self.coins_found
                .fetch_add(coins.len() as u64, Ordering::Relaxed);
            self.coins_held.fetch_add(coins.len(), Ordering::Relaxed);
            let mut pending = self.coins();
            pending.extend(coins);
            if pending.len() >= COIN_FLUSH_AT {
                self.coins_waiting.notify_one();
            }
        }
        self.done.fetch_add(hashes, Ordering::Relaxed);
    }

    fn coins(&self) -> std::sync::MutexGuard<'_, Vec<Coin>> {
        self.pending_coins
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn backlog_full(&self) -> bool {
        self.coins_held.load(Ordering::Relaxed) >= MAX_PENDING_COINS
    }

    /// Up to [`COIN_FLUSH_MAX`] waiting coins, taken out to be sent.
    fn take_coins(&self) -> Vec<Coin> {
        let mut pending = self.coins();
        let keep = pending.len().saturating_sub(COIN_FLUSH_MAX);
        pending.split_off(keep)
    }

    /// Coins Redis did not take go back to wait.
    fn put_back(&self, coins: Vec<Coin>) {
        self.coins().extend(coins);
    }

    /// Coins Redis acknowledged are released.
    fn acknowledged(&self, coins: usize) {
        self.coins_held.fetch_sub(coins, Ordering::Relaxed);
        // More waiting (after an outage): wake the flusher again.
        if self.coins().len() >= COIN_FLUSH_AT {
            self.coins_waiting.notify_one();
        }
    }
}

/// Sends the tally to the store; only the flusher calls it.
struct Flusher {
    tally: Arc<Tally>,
    store: Store,
    /// This worker's name in the store, unique per process: its updates are
    /// running totals (see [`Counter`]), so one sent again counts once.
    id: String,
    /// Hashes Redis acknowledged.
    flushed: u64,
    /// Whether the last flush failed: log a streak once...
    failing: bool,
    /// ...and remind every [`FAILING_REMINDER`] while it lasts.
    last_warning: Option<Instant>,
}

/// How often a worker that cannot update Redis says so again.
const FAILING_REMINDER: Duration = Duration::from_secs(30);

impl Flusher {
    /// Sends the coins waiting, and nothing of the counter (that is once a
    /// second, as in the original).
    async fn flush_coins(&mut self) -> Result<(), StoreError> {
        let coins = self.tally.take_coins();
        if coins.is_empty() {
            return Ok(());
        }
        let counter = Counter {
            worker: &self.id,
            acknowledged: self.flushed,
            total: self.flushed,
        };
        let result = self.store.record(&counter, &coins).await;
        match &result {
            Ok(()) => self.tally.acknowledged(coins.len()),
            // Kept for the next update, as every other failure.
            Err(_) => self.tally.put_back(coins),
        }
        result
    }

    async fn flush(&mut self) -> Result<(), StoreError> {
        let done = self.tally.done.load(Ordering::Relaxed);
        let coins = self.tally.take_coins();
        let hashes = done - self.flushed;
        if hashes == 0 && coins.is_empty() {
            return Ok(());
        }
        if self.failing {
            tracing::debug!("{hashes} units of work waiting, trying Redis again");
        } else {
            tracing::info!("{hashes} units of work done, updating hash counter");
        }
        let counter = Counter {
            worker: &self.id,
            acknowledged: self.flushed,
            total: done,
        };
        match self.store.record(&counter, &coins).await {
            Ok(()) => {
                self.flushed = done;
                self.tally.acknowledged(coins.len());
                if self.failing {
                    self.failing = false;
                    tracing::info!(store = %self.store.describe(), "Redis is answering again; counts caught up");
                }
                Ok(())
            }
            Err(error) => {
                // Keep them for the next update: nothing counted is lost.
                self.tally.put_back(coins);
                let coins_waiting = self.tally.coins_held.load(Ordering::Relaxed);
                let remind = self
                    .last_warning
                    .is_none_or(|at| at.elapsed() >= FAILING_REMINDER);
                if !self.failing || remind {
                    self.failing = true;
                    self.last_warning = Some(Instant::now());
                    tracing::warn!(%error, store = %self.store.describe(), hashes_waiting = hashes, coins_waiting, "cannot update Redis; keeping the work for the next update");
                } else {
                    tracing::debug!(%error, "Redis still unavailable");
                }
                Err(error)
            }
        }
    }
}

/// One mining loop's view of the world.
struct Miner {
    config: WorkerConfig,
    rng: Backend,
    hasher: Backend,
    tally: Arc<Tally>,
    liveness: Arc<Liveness>,
}

/// How long the mining loops may go without turning before the worker says
/// it is not alive. A turn takes at most a call timeout per backend plus a
/// backoff step (2 s), whatever rng, hasher or Redis are doing.
pub const LIVENESS_STALE: Duration = Duration::from_secs(30);

/// When a mining loop last turned (a unit done, failed, or a backoff step),
/// for a liveness probe: a worker whose loops are stuck, not one whose
/// backends are down, is one to restart.
#[derive(Debug)]
pub struct Liveness {
    start: Instant,
    last_turn_ms: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_turn_ms: AtomicU64::new(0),
        }
    }
}

impl Liveness {
    fn turn(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_turn_ms.store(now, Ordering::Relaxed);
    }

    /// Time since a mining loop last turned (since start-up before the first).
    pub fn since_last_turn(&self) -> Duration {
        let last = Duration::from_millis(self.last_turn_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    pub fn is_alive(&self) -> bool {
        self.since_last_turn() <= LIVENESS_STALE
    }
}

/// Serves `GET /healthz` on `listener` until `shutdown`: 200 while the mining
/// loops turn, 503 once they have not for [`LIVENESS_STALE`]. The caller logs
/// the address (before the worker's first line, so scripts can find it).
pub async fn serve_liveness(
    listener: tokio::net::TcpListener,
    liveness: Arc<Liveness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::{http::StatusCode, routing::get};
    let router = axum::Router::new().route(
        "/healthz",
        get(move || async move {
            let since = liveness.since_last_turn().as_millis();
            if liveness.is_alive() {
                (
                    StatusCode::OK,
                    format!("alive: a mining loop turned {since} ms ago\n"),
                )
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("stuck: no mining loop turned for {since} ms\n"),
                )
            }
        }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

impl Miner {
    async fn mine(self: Arc<Self>) {
        let mut backoff = Backoff::default();
        loop {
            self.liveness.turn();
            if !self.config.delay.is_zero() {
                tokio::time::sleep(self.config.delay).await;
            }
            if self.tally.backlog_full() {
                backoff.wait().await;
                continue;
            }
            // One trace per unit of work: a root span, whatever encloses it.
            let span = tracing::info_span!(
                target: crate::telemetry::TARGET,
                "worker.unit",
                otel.name = if self.config.batch == 0 { "mine one block" } else { "mine a batch" },
                worker.batch = self.config.batch,
                otel.status_code = tracing::field::Empty,
                trace_id = tracing::field::Empty,
            );
            crate::telemetry::new_trace(&span);
            let unit = async {
                let result = if self.config.batch == 0 {
                    self.unary_unit().await
                } else {
                    self.batch_unit(self.config.batch).await
                };
                // Logged inside the unit's span: the line carries its trace id.
                if let Err(error) = &result {
                    tracing::Span::current().record("otel.status_code", "ERROR");
                    match error {
                        UnitError::Rng(status) => self.rng.note_failure(status),
                        UnitError::Hasher(status) => self.hasher.note_failure(status),
                        UnitError::BadReply { .. } => {
                            tracing::warn!(%error, "unit of work refused, not counted")
                        }
                    }
                }
                result
            };
            match unit.instrument(span).await {
                Ok(()) => backoff.reset(),
                Err(_) => backoff.wait().await,
            }
        }
    }

    /// The original unit: 32 random bytes, their hash, maybe a coin.
    async fn unary_unit(&self) -> Result<(), UnitError> {
        let request = GenerateRequest {
            size: BLOCK_BYTES as u32,
        };
        let data = traced(
            &self.rng,
            RNG,
            "Generate",
            async |channel, request| RngClient::new(channel).generate(request).await,
            request,
        )
        .await
        .map_err(UnitError::Rng)?
        .into_inner()
        .data;
        self.rng.note_success();
        check_block(&data)?;
        let request = HashRequest { data: data.clone() };
        let hex = traced(
            &self.hasher,
            HASHER,
            "Hash",
            async |channel, request| HasherClient::new(channel).hash(request).await,
            request,
        )
        .await
        .map_err(UnitError::Hasher)?
        .into_inner()
        .hex;
        self.hasher.note_success();
        check_hex(&hex)?;
        let coins = if hex.starts_with('0') {
            tracing::info!("Coin found: {}...", &hex[..8]);
            let mut coin = Coin {
                digest: [0; 32],
                bytes: data[..].try_into().expect("checked: 32 bytes"),
            };
            hex::decode_to_slice(&hex, &mut coin.digest).map_err(|_| bad("hasher", "not hex"))?;
            vec![coin]
        } else {
            Vec::new()
        };
        self.tally.add(1, coins);
        Ok(())
    }

    /// A batch: rng's stream of blocks piped into hasher's stream, one
    /// message at a time; each message's hashes count once its digests
    /// arrive and check out.
    async fn batch_unit(&self, count: usize) -> Result<(), UnitError> {
        let wait = self.config.call_timeout;
        let timed_out =
            |what: &str| Status::deadline_exceeded(format!("no {what} within {wait:?}"));
        let request = GenerateStreamRequest {
            size: BLOCK_BYTES as u32,
            count: count as u32,
        };
        let mut blocks = traced(
            &self.rng,
            RNG,
            "GenerateStream",
            async |channel, request| RngClient::new(channel).generate_stream(request).await,
            request,
        )
        .await
        .map_err(UnitError::Rng)?
        .into_inner();
        let (to_hasher, requests) = mpsc::channel(1);
        let mut digests = traced_once(
            &self.hasher,
            HASHER,
            "HashStream",
            async |channel, request| HasherClient::new(channel).hash_stream(request).await,
            ReceiverStream::new(requests),
        )
        .await
        .map_err(UnitError::Hasher)?
        .into_inner();
        let mut left = count;
        while left > 0 {
            let message = tokio::time::timeout(wait, blocks.message())
                .await
                .map_err(|_| UnitError::Rng(timed_out("random blocks")))?
                .map_err(UnitError::Rng)?
                .ok_or_else(|| bad("rng", format!("stream ended with {left} blocks missing")))?;
            self.rng.note_success();
            let n = check_blocks(message.size, &message.blocks, left)?;
            left -= n;
            let batch = HashBatch {
                size: message.size,
                blocks: message.blocks.clone(),
            };
            if to_hasher.send(batch).await.is_err() {
                // The call ended; its status says why.
                let status = digests
                    .message()
                    .await
                    .err()
                    .unwrap_or_else(|| Status::unavailable("hasher stream closed"));
                return Err(UnitError::Hasher(status));
            }
            let reply = tokio::time::timeout(wait, digests.message())
                .await
                .map_err(|_| UnitError::Hasher(timed_out("digests")))?
                .map_err(UnitError::Hasher)?
                .ok_or_else(|| bad("hasher", "stream ended before its digests"))?;
            self.hasher.note_success();
            let coins = coins_in_batch(&message.blocks, &reply.digests)?;
            for coin in &coins {
                tracing::debug!("Coin found: {}...", &coin.hex()[..8]);
            }
            self.tally.add(n as u64, coins);
        }
        Ok(())
    }
}

const RNG: &str = "dockercoins.v1.Rng";
const HASHER: &str = "dockercoins.v1.Hasher";

/// The root span of an update to Redis: its own trace, with the Redis command.
fn flush_span() -> tracing::Span {
    let span = tracing::info_span!(
        target: crate::telemetry::TARGET,
        "worker.flush",
        otel.name = "update the score",
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::new_trace(&span);
    span
}

/// Mines with `config` until `shutdown` resolves, then stops its loops,
/// flushes what it counted (for at most [`FINAL_FLUSH_TIMEOUT`]) and
/// returns what it did. Logs that report as its last line.
pub async fn run(
    config: WorkerConfig,
    rng: Backend,
    hasher: Backend,
    store: Store,
    shutdown: impl Future<Output = ()>,
) -> Report {
    run_with_liveness(config, rng, hasher, store, Arc::default(), shutdown).await
}

/// [`run`], reporting the mining loops' turns to `liveness`.
pub async fn run_with_liveness(
    config: WorkerConfig,
    rng: Backend,
    hasher: Backend,
    store: Store,
    liveness: Arc<Liveness>,
    shutdown: impl Future<Output = ()>,
) -> Report {
    tracing::info!(
        rng = %rng.url(),
        hasher = %hasher.url(),
        store = %store.describe(),
        delay_ms = config.delay.as_millis() as u64,
        concurrency = config.concurrency,
        batch = config.batch,
        "worker mining"
    );
    let tally = Arc::new(Tally::default());
    let miner = Arc::new(Miner {
        config: config.clone(),
        rng,
        hasher,
        tally: tally.clone(),
        liveness,
    });
    let mut loops = JoinSet::new();
    for _ in 0..config.concurrency.max(1) {
        loops.spawn(miner.clone().mine().in_current_span());
    }
    let mut flusher = Flusher {
        tally: tally.clone(),
        store,
        id: format!(
            "{}:{:016x}",
            crate::server::hostname(),
            rand::random::<u64>()
        ),
        flushed: 0,
        failing: false,
        last_warning: None,
    };
    let mut ticker = tokio::time::interval_at(Instant::now() + FLUSH_INTERVAL, FLUSH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut ticks = 0u64;
    loop {
        let counter_too = tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = tally.coins_waiting.notified() => false,
            _ = ticker.tick() => true,
        };
        if counter_too {
            ticks += 1;
            if ticks % 10 == 0 {
                tracing::info!(rng = ?miner.rng.served(), hasher = ?miner.hasher.served(), "calls per replica");
            }
        }
        let update = async {
            if counter_too {
                flusher.flush().await
            } else {
                flusher.flush_coins().await
            }
        }
        .instrument(flush_span());
        tokio::pin!(update);
        tokio::select! {
            // An error is logged by the flusher, and retried next time.
            _ = &mut update => {}
            () = &mut shutdown => {
                // An update already sent is not dropped lightly: Redis may
                // apply it, and sending it again would count it twice. It
                // gets the stop's bound to finish, then the stop goes on.
                let _ = tokio::time::timeout(FINAL_FLUSH_TIMEOUT, update).await;
                break;
            }
        }
    }
    let stop_began = Instant::now();
    loops.abort_all();
    while loops.join_next().await.is_some() {}
    let left = FINAL_FLUSH_TIMEOUT.saturating_sub(stop_began.elapsed());
    let last_updates = async {
        flusher.flush().await?;
        // What an outage left waiting, a chunk at a time.
        while !tally.coins().is_empty() {
            flusher.flush_coins().await?;
        }
        Ok::<(), StoreError>(())
    };
    if tokio::time::timeout(left, last_updates.instrument(flush_span()))
        .await
        .is_err()
    {
        tracing::warn!("Redis did not acknowledge the last update in time");
    }
    let report = Report {
        hashes_done: tally.done.load(Ordering::Relaxed),
        hashes_flushed: flusher.flushed,
        coins_found: tally.coins_found.load(Ordering::Relaxed),
        coins_unflushed: tally.coins_held.load(Ordering::Relaxed) as u64,
    };
    if report.hashes_done == report.hashes_flushed && report.coins_unflushed == 0 {
        tracing::info!(
            hashes_done = report.hashes_done,
            hashes_flushed = report.hashes_flushed,
            coins_found = report.coins_found,
            rng_calls = ?miner.rng.served(),
            hasher_calls = ?miner.hasher.served(),
            "worker stopped; every hash counted in Redis"
        );
    } else {
        tracing::warn!(
            hashes_done = report.hashes_done,
            hashes_flushed = report.hashes_flushed,
            coins_found = report.coins_found,
            coins_unflushed = report.coins_unflushed,
            "worker stopped; Redis did not acknowledge everything"
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[tokio::test(start_paused = true)]
    async fn liveness_goes_stale_when_the_loops_stop_turning() {
        let liveness = Liveness::default();
        assert!(liveness.is_alive());
        tokio::time::advance(LIVENESS_STALE + std::time::Duration::from_secs(1)).await;
        assert!(!liveness.is_alive(), "{:?}", liveness.since_last_turn());
        liveness.turn();
        assert!(liveness.is_alive());
    }

    /// Coins being sent still count against the bound: a failing update
    /// must not let mining run on and memory grow (it reached 2 GB when only
    /// the waiting coins were counted).
    #[test]
    fn coins_in_a_failing_update_still_pause_mining() {
        let tally = Tally::default();
        let coin = Coin {
            digest: [0; 32],
            bytes: [0; 32],
        };
        tally.add(0, vec![coin; MAX_PENDING_COINS]);
        assert!(tally.backlog_full());
        let sending = tally.take_coins();
        assert_eq!(sending.len(), COIN_FLUSH_MAX, "one HSET is capped");
        assert!(tally.backlog_full(), "coins in flight are still held");
        tally.put_back(sending);
        assert!(tally.backlog_full());
        while !tally.coins().is_empty() {
            let sent = tally.take_coins();
            tally.acknowledged(sent.len());
        }
        assert!(!tally.backlog_full());
        assert_eq!(tally.coins_held.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn blocks_of_the_wrong_size_are_refused() {
        assert!(check_block(&[0; 32]).is_ok());
        assert!(check_block(&[0; 31]).is_err());
        assert!(check_block(&[]).is_err());
        assert_eq!(check_blocks(32, &[0; 64], 2).unwrap(), 2);
        assert!(check_blocks(32, &[0; 64], 1).is_err(), "more than asked");
        assert!(check_blocks(16, &[0; 64], 4).is_err(), "wrong block size");
        assert!(check_blocks(32, &[0; 33], 4).is_err(), "ragged");
        assert!(check_blocks(32, &[], 4).is_err(), "empty");
    }

    #[test]
    fn only_real_hex_digests_pass() {
        let good = hex::encode(Sha256::digest(b"x"));
        assert!(check_hex(&good).is_ok());
        assert!(check_hex(&good.to_uppercase()).is_err());
        assert!(check_hex(&good[..63]).is_err());
        assert!(check_hex(&format!("{}g", &good[..63])).is_err());
        assert!(check_hex("").is_err());
    }

    #[test]
    fn coins_are_digests_starting_with_zero() {
        let blocks: Vec<u8> = (0..32 * 64).map(|i| (i * 7 % 256) as u8).collect();
        let blocks = Bytes::from(blocks);
        let digests: Vec<u8> = blocks
            .chunks(32)
            .flat_map(|block| Sha256::digest(block).to_vec())
            .collect();
        let coins = coins_in_batch(&blocks, &digests).unwrap();
        let expected = blocks
            .chunks(32)
            .filter(|block| hex::encode(Sha256::digest(block)).starts_with('0'))
            .count();
        assert_eq!(coins.len(), expected);
        for coin in coins {
            assert!(coin.hex().starts_with('0'));
            assert_eq!(coin.hex(), hex::encode(Sha256::digest(coin.bytes)));
        }
        assert!(coins_in_batch(&blocks, &digests[..digests.len() - 1]).is_err());
        assert!(coins_in_batch(&blocks, &[]).is_err());
    }
}

/// Property tests on the checks every reply goes through: a reply that is
/// not exactly what was asked for is refused whole, and the checks never
/// panic on it (a panic would kill a mining loop silently).
#[cfg(test)]
mod properties {

    use super::*;
    use proptest::prelude::*;

    /// What a hasher might answer instead of a digest: real digests, near
    /// misses (length, case, one bad character), and any text at all.
    fn hex_reply() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9a-f]{64}",
            "[0-9a-f]{60,68}",
            "[0-9a-fA-F]{64}",
            "[0-9a-f]{0,63}[^0-9a-f][0-9a-f]{0,63}",
            // Multi-byte characters: 64 bytes that are not 64 characters.
            "0[0-9a-f]{6}[é€😀][0-9a-f]{50,60}",
            "\\PC{0,80}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn an_rng_block_passes_only_at_its_exact_size(data in proptest::collection::vec(any::<u8>(), 0..=100)) {
            prop_assert_eq!(check_block(&data).is_ok(), data.len() == BLOCK_BYTES);
        }

        /// Exactly 64 lowercase hex digits pass, and what passes is safe for
        /// what the worker does next: slice the first 8 characters, decode.
        #[test]
        fn only_64_lowercase_hex_digits_pass_as_a_digest(hex in hex_reply()) {
            let expected = hex.len() == 64
                && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            prop_assert_eq!(check_hex(&hex).is_ok(), expected);
            if expected {
                prop_assert!(hex.is_char_boundary(8));
                let mut digest = [0u8; DIGEST_BYTES];
                prop_assert!(hex::decode_to_slice(&hex, &mut digest).is_ok());
            }
        }

        /// A stream message passes only as whole 32-byte blocks, at least
        /// one, and no more than were still expected.
        #[test]
        fn a_stream_message_passes_only_as_whole_blocks_within_the_count(
            size in prop_oneof![Just(BLOCK_BYTES as u32), any::<u32>(), 0u32..=64],
            len in prop_oneof![0usize..=200, (0usize..=8).prop_map(|n| n * BLOCK_BYTES)],
            left in 0usize..=8,
        ) {
            let blocks = vec![7u8; len];
            let valid = size as usize == BLOCK_BYTES
                && len > 0
                && len % BLOCK_BYTES == 0
                && len / BLOCK_BYTES <= left;
            let result = check_blocks(size, &blocks, left);
            prop_assert_eq!(result.is_ok(), valid);
            if let Ok(count) = result {
                prop_assert_eq!(count, len / BLOCK_BYTES);
            }
        }

        /// Digests of the wrong length are refused whole: no coin comes out
        /// of a batch whose digests do not match its blocks one for one.
        /// The coins that do come out are exactly the blocks whose digest
        /// starts with a 0 nibble, each with its own block's bytes.
        #[test]
        fn coins_come_only_from_a_full_set_of_digests(
            count in 0usize..=16,
            digests in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..=16 * DIGEST_BYTES + 40),
                (0usize..=16).prop_flat_map(|n| proptest::collection::vec(0u8..=0x20, n * DIGEST_BYTES)),
            ],
        ) {
            let blocks: Bytes = (0..count * BLOCK_BYTES).map(|i| (i / BLOCK_BYTES) as u8).collect();
            let result = coins_in_batch(&blocks, &digests);
            prop_assert_eq!(result.is_ok(), digests.len() == count * DIGEST_BYTES);
            if let Ok(coins) = result {
                let expected: Vec<usize> = (0..count).filter(|i| digests[i * DIGEST_BYTES] < 0x10).collect();
                prop_assert_eq!(coins.len(), expected.len());
                for (coin, i) in coins.iter().zip(expected) {
                    prop_assert_eq!(&coin.digest[..], &digests[i * DIGEST_BYTES..(i + 1) * DIGEST_BYTES]);
                    prop_assert_eq!(&coin.bytes[..], &blocks[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES]);
                    prop_assert!(coin.hex().starts_with('0'));
                }
            }
        }
    }
}
