//! The worker's books: work counted and not yet acknowledged by Redis (the
//! [`Tally`], shared by the mining loops), and the [`Flusher`] that sends it
//! about once a second. Updates are running totals, so one sent again counts
//! once; what Redis did not take is kept for the next update, and mining
//! pauses before the coins kept outgrow their bound. With a capped wallet
//! (turbo), only the newest coins are kept to be sent; every coin is still
//! counted.

use crate::{
    store::{Coin, Store, StoreError, Totals, WorkerTotals},
    telemetry::hostname,
    telemetry::sampling,
    telemetry::throttle::Throttle,
    worker::metrics::TallyMetrics,
};
use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::time::Instant;

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

/// Work counted and not yet acknowledged by Redis.
pub(super) struct Tally {
    /// Hashes done since start, each with a valid digest.
    pub(super) done: AtomicU64,
    /// Coins found since start.
    pub(super) coins_found: AtomicU64,
    /// Coins waiting to be sent.
    pending_coins: Mutex<Vec<Coin>>,
    /// Coins found and not yet acknowledged by Redis: waiting or being sent.
    /// What bounds memory (mining pauses at [`MAX_PENDING_COINS`]); counting
    /// only the waiting ones would miss those in a failing update.
    pub(super) coins_held: AtomicUsize,
    /// Wakes the flusher when [`COIN_FLUSH_AT`] coins wait.
    coins_waiting: tokio::sync::Notify,
    /// The same counts for `/metrics`, and each Redis update's duration.
    metrics: TallyMetrics,
    /// The most coins the wallet keeps (0: all): no more wait to be sent.
    wallet_cap: usize,
}

impl Tally {
    pub(super) fn new(metrics: TallyMetrics, wallet_cap: usize) -> Self {
        Self {
            wallet_cap,
            done: AtomicU64::default(),
            coins_found: AtomicU64::default(),
            pending_coins: Mutex::default(),
            coins_held: AtomicUsize::default(),
            coins_waiting: tokio::sync::Notify::new(),
            metrics,
        }
    }

    pub(super) fn add(&self, hashes: u64, coins: Vec<Coin>) {
        let measured = crate::telemetry::metrics::enabled();
        if measured {
            self.metrics.hashes.inc_by(hashes);
        }
        if !coins.is_empty() {
            if measured {
                self.metrics.coins.inc_by(coins.len() as u64);
            }
            self.coins_found
                .fetch_add(coins.len() as u64, Ordering::Relaxed);
            self.coins_held.fetch_add(coins.len(), Ordering::Relaxed);
            let mut pending = self.coins();
            pending.extend(coins);
            // A capped wallet would evict the older ones anyway: they are
            // counted, and not sent.
            let over = match self.wallet_cap {
                0 => 0,
                cap => pending.len().saturating_sub(cap),
            };
            if over > 0 {
                pending.drain(..over);
                self.coins_held.fetch_sub(over, Ordering::Relaxed);
            }
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

    pub(super) fn backlog_full(&self) -> bool {
        self.coins_held.load(Ordering::Relaxed) >= MAX_PENDING_COINS
    }

    /// Up to [`COIN_FLUSH_MAX`] waiting coins, taken out to be sent.
    fn take_coins(&self) -> Vec<Coin> {
        let mut pending = self.coins();
        let keep = pending.len().saturating_sub(COIN_FLUSH_MAX);
        pending.split_off(keep)
    }

    /// Coins Redis did not take go back to wait.
    /// They are older than any found meanwhile: in front, so that a capped
    /// wallet's trim still drops the oldest.
    fn put_back(&self, coins: Vec<Coin>) {
        let mut pending = self.coins();
        pending.splice(0..0, coins);
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
pub(super) struct Flusher {
    tally: Arc<Tally>,
    store: Store,
    /// This worker's name in the store, unique per process: its updates are
    /// running totals (see [`WorkerTotals`]), so one sent again counts once.
    id: String,
    /// Hashes Redis acknowledged.
    pub(super) flushed: u64,
    /// Coins found that Redis counted in `coins`.
    pub(super) coins_flushed: u64,
    /// Whether the last flush failed: log a streak once...
    failing: bool,
    /// ...and remind at most every [`FAILING_REMINDER`] while it lasts.
    reminder: Throttle,
}

/// How often a worker that cannot update Redis says so again.
const FAILING_REMINDER: Duration = Duration::from_secs(30);

impl Flusher {
    /// One update of Redis, its duration measured.
    async fn record(&self, counter: &WorkerTotals<'_>, coins: &[Coin]) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self
            .store
            .record(counter, coins, self.tally.wallet_cap)
            .await;
        if crate::telemetry::metrics::enabled() {
            (self.tally.metrics.redis_update).observe(started.elapsed().as_secs_f64(), None, None);
        }
        result
    }

    /// Sends the coins waiting, and nothing of the counter (that is once a
    /// second, as in the original).
    async fn flush_coins(&mut self) -> Result<(), StoreError> {
        let coins = self.tally.take_coins();
        if coins.is_empty() {
            return Ok(());
        }
        let counter = WorkerTotals {
            worker: &self.id,
            hashes: Totals::settled(self.flushed),
            coins: Totals::settled(self.coins_flushed),
        };
        let result = self.record(&counter, &coins).await;
        match &result {
            Ok(()) => self.tally.acknowledged(coins.len()),
            // Kept for the next update, as every other failure.
            Err(_) => self.tally.put_back(coins),
        }
        result
    }

    async fn flush(&mut self) -> Result<(), StoreError> {
        let done = self.tally.done.load(Ordering::Relaxed);
        let found = self.tally.coins_found.load(Ordering::Relaxed);
        let coins = self.tally.take_coins();
        let hashes = done - self.flushed;
        if hashes == 0 && found == self.coins_flushed && coins.is_empty() {
            return Ok(());
        }
        if self.failing {
            tracing::debug!("{hashes} units of work waiting, trying Redis again");
        } else {
            tracing::info!("{hashes} units of work done, updating hash counter");
        }
        let counter = WorkerTotals {
            worker: &self.id,
            hashes: Totals {
                acknowledged: self.flushed,
                total: done,
            },
            coins: Totals {
                acknowledged: self.coins_flushed,
                total: found,
            },
        };
        match self.record(&counter, &coins).await {
            Ok(()) => {
                self.flushed = done;
                self.coins_flushed = found;
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
                // A new streak is said at once, whatever the period.
                let said = if self.failing {
                    self.reminder.note().is_some()
                } else {
                    self.reminder.say();
                    true
                };
                if said {
                    self.failing = true;
                    tracing::warn!(%error, store = %self.store.describe(), hashes_waiting = hashes, coins_waiting, "cannot update Redis; keeping the work for the next update");
                } else {
                    tracing::debug!(%error, "Redis still unavailable");
                }
                Err(error)
            }
        }
    }
}

impl Flusher {
    pub(super) fn new(tally: Arc<Tally>, store: Store) -> Self {
        Self {
            tally,
            store,
            id: format!("{}:{:016x}", hostname(), rand::random::<u64>()),
            flushed: 0,
            coins_flushed: 0,
            failing: false,
            reminder: Throttle::new(FAILING_REMINDER),
        }
    }

    /// Keeps the books until `shutdown`: the counter (and coins) every
    /// [`FLUSH_INTERVAL`], coins alone as soon as [`COIN_FLUSH_AT`] wait.
    /// `each_tick` runs before each counter update.
    pub(super) async fn keep_books(
        &mut self,
        shutdown: impl Future<Output = ()>,
        mut each_tick: impl FnMut(),
    ) {
        let mut ticker = tokio::time::interval_at(Instant::now() + FLUSH_INTERVAL, FLUSH_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let tally = self.tally.clone();
        loop {
            let counter_too = tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = tally.coins_waiting.notified() => false,
                _ = ticker.tick() => true,
            };
            if counter_too {
                each_tick();
            }
            let update = async {
                if counter_too {
                    self.flush().await
                } else {
                    self.flush_coins().await
                }
            };
            let update = traced_flush(update);
            tokio::pin!(update);
            tokio::select! {
                // An error is logged by the flusher, and retried next time.
                _ = &mut update => {}
                () = &mut shutdown => {
                    // An update already sent is not dropped lightly: Redis may
                    // apply it, and sending it again would count it twice. It
                    // gets the stop's bound to finish, then the stop goes on.
                    let _ = tokio::time::timeout(FINAL_FLUSH_TIMEOUT, update).await;
                    return;
                }
            }
        }
    }

    /// The last updates of a stop, within `bound`: the counter, then what an
    /// outage left waiting, a chunk at a time.
    pub(super) async fn close_books(&mut self, bound: Duration) {
        let last_updates = async {
            self.flush().await?;
            while !self.tally.coins().is_empty() {
                self.flush_coins().await?;
            }
            Ok::<(), StoreError>(())
        };
        if tokio::time::timeout(bound, traced_flush(last_updates))
            .await
            .is_err()
        {
            tracing::warn!("Redis did not acknowledge the last update in time");
        }
    }
}

/// An update to Redis as its own trace: when sampled, a root span with the
/// Redis command under it.
fn traced_flush<F: Future>(update: F) -> impl Future<Output = F::Output> {
    let name = "update the score";
    let span = || {
        tracing::info_span!(
            target: crate::telemetry::TARGET,
            "worker.flush",
            otel.name = name,
        )
    };
    sampling::traced(sampling::new_trace(name), span, update)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Coins being sent still count against the bound: a failing update
    /// must not let mining run on and memory grow (it reached 2 GB when only
    /// the waiting coins were counted).
    #[test]
    fn coins_in_a_failing_update_still_pause_mining() {
        let tally = Tally::new(TallyMetrics::unregistered(), 0);
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

    /// A capped wallet: the newest coins wait, no more than the cap, and
    /// every coin is counted.
    #[test]
    fn a_capped_wallet_keeps_the_newest_coins_and_counts_all() {
        let tally = Tally::new(TallyMetrics::unregistered(), 3);
        let coin = |i: u8| Coin {
            digest: [i; 32],
            bytes: [i; 32],
        };
        tally.add(10, (0..5).map(coin).collect());
        tally.add(10, vec![coin(5)]);
        assert_eq!(*tally.coins(), [coin(3), coin(4), coin(5)]);
        assert_eq!(tally.coins_found.load(Ordering::Relaxed), 6);
        assert_eq!(tally.coins_held.load(Ordering::Relaxed), 3);
        // An update fails while a coin is found: the older ones go back in
        // front, and the next trim drops the oldest.
        let failed = tally.take_coins();
        tally.add(1, vec![coin(6)]);
        tally.put_back(failed);
        tally.add(1, vec![coin(7)]);
        assert_eq!(*tally.coins(), [coin(5), coin(6), coin(7)]);
        assert_eq!(tally.coins_held.load(Ordering::Relaxed), 3);
        let sent = tally.take_coins();
        tally.acknowledged(sent.len());
        assert_eq!(tally.coins_held.load(Ordering::Relaxed), 0);
    }
}
