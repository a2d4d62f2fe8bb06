//! Where the score is kept, with the original dockercoins data model so the
//! original tools can read it: `hashes`, a string counter (`INCRBY`), and
//! `wallet`, a hash of hex digest -> the 32 random bytes that gave it. Next
//! to them, `coins` counts every coin found: with the original's unbounded
//! wallet it equals `HLEN wallet`; with a capped wallet (turbo, see
//! [`Store::record`]) it carries the total the wallet no longer can. Two more
//! keys per running worker, `dockercoins:worker:<id>` and `...:coins`, make
//! sending an update twice harmless (see [`WorkerTotals`]); they expire a day
//! after the worker's last update.
//!
//! [`Store::Redis`] is a real Redis through deadpool-redis, with a timeout on
//! every checkout and every command. [`Store::Memory`] is an in-process store
//! with the same semantics, used only by `dockercoins up` on a machine with
//! neither `REDIS_URL` nor `redis-server`.
//!
//! [`private_redis`] is the redis-server child that `up` and `bench` start
//! when no Redis is given.

pub mod private_redis;

use bytes::Bytes;
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tracing::Instrument;

/// Where Redis is in Compose: its service name and port.
pub const DEFAULT_URL: &str = "redis://redis:6379";

/// Bound on each checkout and command unless told otherwise, in
/// milliseconds: a Redis that is down is noticed within a flush interval.
pub const DEFAULT_TIMEOUT_MS: u64 = 500;

/// The least time a command already sent to Redis gets to answer.
pub const MIN_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

fn command_timeout(timeout: Duration) -> Duration {
    timeout.max(MIN_COMMAND_TIMEOUT)
}

/// The counter of hashes done, as in the original.
pub const HASHES_KEY: &str = "hashes";
/// The coins found, as in the original; all of them, or a sample when capped.
pub const WALLET_KEY: &str = "wallet";
/// Every coin found, counted: what the score shows.
pub const COINS_KEY: &str = "coins";

/// Prefix of the key holding one worker's running total, as Redis applied it.
pub const WORKER_KEY_PREFIX: &str = "dockercoins:worker:";
/// A worker key outlives the worker's last update by this long.
pub const WORKER_KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// One worker's counts, sent as running totals rather than as increments,
/// so that an update sent again (its first reply was lost: Redis died after
/// applying it) adds nothing twice. Redis keeps the totals it applied for
/// each worker and adds only what a new total has over them. When Redis has
/// no such total (it restarted empty, or the key expired), it adds
/// `total - acknowledged`: what the worker did since the last update Redis
/// confirmed.
#[derive(Clone, Copy, Debug)]
pub struct WorkerTotals<'a> {
    /// Unique per worker process.
    pub worker: &'a str,
    /// Hashes done, for `hashes`.
    pub hashes: Totals,
    /// Coins found, for `coins`.
    pub coins: Totals,
}

/// A running total and the part of it Redis has acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// The total of the last update Redis acknowledged to this worker.
    pub acknowledged: u64,
    /// Everything this worker has done; at least `acknowledged`.
    pub total: u64,
}

impl Totals {
    /// Nothing new since the last acknowledged update.
    pub fn settled(total: u64) -> Self {
        Self {
            acknowledged: total,
            total,
        }
    }

    fn advanced(&self) -> bool {
        self.total > self.acknowledged
    }
}

impl WorkerTotals<'_> {
    fn hashes_key(&self) -> String {
        format!("{WORKER_KEY_PREFIX}{}", self.worker)
    }

    fn coins_key(&self) -> String {
        format!("{WORKER_KEY_PREFIX}{}:coins", self.worker)
    }
}

/// Brings `hashes` (KEYS[1]) and `coins` (KEYS[2]) up to this worker's
/// totals (ARGV[1], ARGV[3]): adds what each has over the total Redis last
/// applied for the worker (KEYS[4], KEYS[5]; ARGV[2], ARGV[4] when absent),
/// and keeps the new totals for ARGV[5] seconds. A Redis with a wallet but no
/// `coins` (filled by the original worker, or by an older dockercoins) starts
/// the counter from `HLEN wallet` (KEYS[3]): this runs before the update's
/// HSET, so no coin is counted twice. Run inside MULTI with the HSET: all or
/// nothing. Lua's numbers are doubles, exact below 2^53: a worker reaches
/// that total after 57 years at 5 million hashes a second.
const COUNTER_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], redis.call('HLEN', KEYS[3]))
end
local function add(counter, applied, total, acknowledged)
  local last = tonumber(redis.call('GET', applied) or acknowledged)
  if tonumber(total) > last then
    redis.call('INCRBY', counter, tonumber(total) - last)
    redis.call('SET', applied, total, 'EX', ARGV[5])
  end
end
add(KEYS[1], KEYS[4], ARGV[1], ARGV[2])
add(KEYS[2], KEYS[5], ARGV[3], ARGV[4])
return 0
"#;

/// Evicts random fields of the wallet (KEYS[1]) until it holds at most
/// ARGV[1]: run after an update's HSET, it keeps the wallet a bounded sample
/// of the coins, the newest most likely in it. In chunks: Lua's `unpack`
/// takes a few thousand values at most.
const WALLET_CAP_SCRIPT: &str = r#"
local over = redis.call('HLEN', KEYS[1]) - tonumber(ARGV[1])
while over > 0 do
  local fields = redis.call('HRANDFIELD', KEYS[1], math.min(over, 1000))
  redis.call('HDEL', KEYS[1], unpack(fields))
  over = over - #fields
end
return 0
"#;

/// A digest that starts with `0` in hex, and the bytes that hashed to it.
/// Both inline: a coin waiting for Redis pins no buffer and costs no
/// allocation (at a million hashes a second, about 60,000 coins a second).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coin {
    /// SHA-256 of `bytes`; its lowercase hex is the wallet's field.
    pub digest: [u8; 32],
    /// The random bytes: the wallet's value.
    pub bytes: [u8; 32],
}

impl Coin {
    /// The wallet's field: the digest in lowercase hex.
    pub fn hex(&self) -> String {
        hex::encode(self.digest)
    }
}

/// What the webui shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Score {
    pub hashes: u64,
    pub coins: u64,
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid Redis URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("no Redis connection: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis key {0} does not hold a number: {1:?}")]
    NotACounter(&'static str, String),
}

/// The score keeper: a real Redis or the in-process stand-in.
#[derive(Clone)]
pub enum Store {
    Redis(RedisStore),
    Memory(MemoryStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Store {
    /// A Redis store for `url` (`redis://[:password@]host:port[/db]`). No
    /// connection is made yet: a Redis that is down now is retried later.
    pub fn redis(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::Url {
            url: mask_password(url),
            reason,
        };
        // redis-rs has its own response timeout (500 ms by default): it must
        // be the command timeout, or a big update that Redis applies after
        // 500 ms looks failed, is sent again, and is counted twice.
        let connection = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(command_timeout(timeout)));
        let manager = deadpool_redis::Manager::new_with_config(url, connection)
            .map_err(|error| invalid(error.to_string()))?;
        let pool = Pool::builder(manager)
            .config(PoolConfig {
                max_size: 4,
                timeouts: Timeouts {
                    wait: Some(timeout),
                    create: Some(timeout),
                    recycle: Some(timeout),
                },
                ..PoolConfig::default()
            })
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|error| invalid(error.to_string()))?;
        Ok(Self::Redis(RedisStore {
            pool,
            timeout,
            url: mask_password(url),
        }))
    }

    /// An in-process store, empty.
    pub fn memory() -> Self {
        Self::Memory(MemoryStore::default())
    }

    /// Where the score goes, safe to log (the password is masked).
    pub fn describe(&self) -> String {
        match self {
            Self::Redis(redis) => redis.url.clone(),
            Self::Memory(_) => "in-process store (no Redis)".to_owned(),
        }
    }

    /// Brings the counters up to `counter`'s totals and puts `coins` in the
    /// wallet, all or nothing (one MULTI/EXEC transaction). With a
    /// `wallet_cap` (0: none, the original), the wallet then loses random
    /// coins down to that many. Sending the same update again changes
    /// nothing: the wallet is keyed by digest and the counters by running
    /// totals.
    pub async fn record(
        &self,
        counter: &WorkerTotals<'_>,
        coins: &[Coin],
        wallet_cap: usize,
    ) -> Result<(), StoreError> {
        match self {
            Self::Redis(redis) => redis.record(counter, coins, wallet_cap).await,
            Self::Memory(memory) => {
                memory.record(counter, coins, wallet_cap);
                Ok(())
            }
        }
    }

    /// `GET hashes` (0 when absent), and `GET coins` or, in a Redis the
    /// original worker filled, `HLEN wallet`.
    pub async fn score(&self) -> Result<Score, StoreError> {
        match self {
            Self::Redis(redis) => redis.score().await,
            Self::Memory(memory) => Ok(memory.score()),
        }
    }

    /// What Redis itself measured of the workers' updates (each one
    /// transaction, `EXEC`); `None` for the in-process store.
    pub async fn update_stats(&self) -> Result<Option<UpdateStats>, StoreError> {
        match self {
            Self::Redis(redis) => redis.update_stats().await.map(Some),
            Self::Memory(_) => Ok(None),
        }
    }

    /// One round trip, timed.
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let start = Instant::now();
        match self {
            Self::Redis(redis) => redis.ping().await?,
            Self::Memory(_) => {}
        }
        Ok(start.elapsed())
    }
}

/// The workers' updates as Redis counts them (`INFO commandstats` and
/// `INFO latencystats`, for `EXEC`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UpdateStats {
    /// Updates since Redis started (or its stats were reset).
    pub calls: u64,
    /// Redis 7's latency tracking over the same span; `None` before Redis 7
    /// or with `latency-tracking no`.
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

impl UpdateStats {
    /// From the `INFO commandstats latencystats` reply.
    fn parse(info: &redis::InfoDict) -> Self {
        // `calls=12,usec=40,...` and `p50=3.007,p99=12.031,p99.9=20.095`.
        let field = |key: &str, name: &str| -> Option<f64> {
            let value: String = info.get(key)?;
            value.split(',').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == name).then(|| v.parse().ok()).flatten()
            })
        };
        let micros = |name| {
            field("latency_percentiles_usec_exec", name)
                .map(|us: f64| Duration::from_secs_f64(us / 1e6))
        };
        Self {
            calls: field("cmdstat_exec", "calls").map_or(0, |calls| calls as u64),
            p50: micros("p50"),
            p99: micros("p99"),
        }
    }
}

/// A real Redis, through a small pool of multiplexed connections.
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    /// Bound on each checkout and each command.
    timeout: Duration,
    /// The URL with its password masked, for logs and errors.
    url: String,
}

impl RedisStore {
    /// Runs `pipeline` (named `operation` in its span) with the timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        pipeline: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let span = crate::telemetry::redis_span(operation, &self.url);
        let work = async {
            // Bounded by the pool's own timeouts (wait, create, recycle).
            let mut connection = self.pool.get().await?;
            // Once sent, a command gets longer: giving up on a slow but live
            // Redis would leave us not knowing whether it applied the update,
            // and sending it again could count it twice.
            let command_timeout = command_timeout(self.timeout);
            tokio::time::timeout(command_timeout, pipeline.query_async(&mut connection))
                .await
                .map_err(|_| StoreError::Timeout(command_timeout))?
                .map_err(StoreError::from)
        };
        let result = work.instrument(span.clone()).await;
        if let Err(error) = &result {
            span.record("otel.status_code", "ERROR");
            span.record("error.message", error.to_string());
        }
        result
    }

    async fn record(
        &self,
        counter: &WorkerTotals<'_>,
        coins: &[Coin],
        wallet_cap: usize,
    ) -> Result<(), StoreError> {
        if !counter.hashes.advanced() && !counter.coins.advanced() && coins.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        // Always first, coins or not: it starts `coins` before any HSET.
        pipeline
            .cmd("EVAL")
            .arg(COUNTER_SCRIPT)
            .arg(5)
            .arg(HASHES_KEY)
            .arg(COINS_KEY)
            .arg(WALLET_KEY)
            .arg(counter.hashes_key())
            .arg(counter.coins_key())
            .arg(counter.hashes.total)
            .arg(counter.hashes.acknowledged)
            .arg(counter.coins.total)
            .arg(counter.coins.acknowledged)
            .arg(WORKER_KEY_TTL.as_secs())
            .ignore();
        if !coins.is_empty() {
            // HSET wallet hex bytes hex bytes..., the hex made on the stack:
            // no allocation per coin (a million hashes a second is about
            // 60,000 coins a second).
            let mut hset = redis::cmd("HSET");
            hset.arg(WALLET_KEY);
            let mut hex = [0u8; 64];
            for coin in coins {
                hex::encode_to_slice(coin.digest, &mut hex).expect("64 bytes of hex");
                hset.arg(&hex[..]).arg(&coin.bytes[..]);
            }
            pipeline.add_command(hset).ignore();
            if wallet_cap > 0 {
                pipeline
                    .cmd("EVAL")
                    .arg(WALLET_CAP_SCRIPT)
                    .arg(1)
                    .arg(WALLET_KEY)
                    .arg(wallet_cap)
                    .ignore();
            }
        }
        self.run::<()>("MULTI EVAL HSET EXEC", &pipeline).await
    }

    async fn score(&self) -> Result<Score, StoreError> {
        let mut pipeline = redis::pipe();
        pipeline.get(HASHES_KEY).get(COINS_KEY).hlen(WALLET_KEY);
        let (hashes, coins, wallet): (Option<String>, Option<String>, u64) =
            self.run("GET GET HLEN", &pipeline).await?;
        let number = |text: Option<String>, key| match text {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| StoreError::NotACounter(key, text)),
        };
        Ok(Score {
            hashes: number(hashes, HASHES_KEY)?.unwrap_or(0),
            coins: number(coins, COINS_KEY)?.unwrap_or(wallet),
        })
    }

    /// Not traced: webui asks every second, and a span a second of its own
    /// would only bury the workers' traces.
    async fn update_stats(&self) -> Result<UpdateStats, StoreError> {
        let mut connection = self.pool.get().await?;
        let info: redis::InfoDict = tokio::time::timeout(
            self.timeout,
            redis::cmd("INFO")
                .arg("commandstats")
                .arg("latencystats")
                .query_async(&mut connection),
        )
        .await
        .map_err(|_| StoreError::Timeout(self.timeout))??;
        Ok(UpdateStats::parse(&info))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut pipeline = redis::pipe();
        pipeline.cmd("PING");
        self.run::<(String,)>("PING", &pipeline).await.map(drop)
    }
}

/// The in-process stand-in: same keys, same semantics, gone on exit.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<MemoryData>>,
}

#[derive(Default)]
struct MemoryData {
    hashes: u64,
    /// `None` until the first update, as the key in Redis.
    coins: Option<u64>,
    wallet: HashMap<String, Bytes>,
    /// Each worker's totals as applied, as Redis keeps them.
    workers: HashMap<String, Applied>,
}

/// A worker's totals as applied: `None` until its first update that added.
#[derive(Default)]
struct Applied {
    hashes: Option<u64>,
    coins: Option<u64>,
}

/// Adds to `counter` what `totals` has over `applied` (or over
/// `acknowledged` when nothing was applied), as the counter script does.
fn apply(counter: &mut u64, applied: &mut Option<u64>, totals: Totals) {
    let last = applied.unwrap_or(totals.acknowledged);
    if totals.total > last {
        *counter += totals.total - last;
        *applied = Some(totals.total);
    }
}

impl MemoryStore {
    fn record(&self, counter: &WorkerTotals<'_>, coins: &[Coin], wallet_cap: usize) {
        let mut data = self
            .inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let data = &mut *data;
        let mut total_coins = data.coins.unwrap_or(data.wallet.len() as u64);
        let applied = data.workers.entry(counter.worker.to_owned()).or_default();
        apply(&mut data.hashes, &mut applied.hashes, counter.hashes);
        apply(&mut total_coins, &mut applied.coins, counter.coins);
        data.coins = Some(total_coins);
        for coin in coins {
            data.wallet
                .insert(coin.hex(), Bytes::copy_from_slice(&coin.bytes));
        }
        if wallet_cap > 0 && data.wallet.len() > wallet_cap {
            // A HashMap's order is random enough for a sample.
            let over: Vec<String> = data
                .wallet
                .keys()
                .take(data.wallet.len() - wallet_cap)
                .cloned()
                .collect();
            for key in over {
                data.wallet.remove(&key);
            }
        }
    }

    fn score(&self) -> Score {
        let data = self
            .inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        Score {
            hashes: data.hashes,
            coins: data.coins.unwrap_or(data.wallet.len() as u64),
        }
    }
}

/// `url` with any password replaced by `***`, safe to log.
pub fn mask_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        // Unparseable: show only the scheme, in case a password is in there.
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://(unparseable URL)"),
            None => "(unparseable URL)".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            mask_password("redis://:s3cret@redis:6379/0"),
            "redis://:***@redis:6379/0"
        );
        assert_eq!(
            mask_password("redis://user:s3cret@redis:6379"),
            "redis://user:***@redis:6379"
        );
        assert_eq!(mask_password("redis://redis:6379"), "redis://redis:6379");
        assert!(!mask_password("redis://:s3cret@[bad").contains("s3cret"));
    }

    #[tokio::test]
    async fn the_memory_store_counts_and_keeps_coins() {
        let store = Store::memory();
        assert_eq!(store.score().await.unwrap(), Score::default());
        let coin = Coin {
            digest: [0; 32],
            bytes: [7; 32],
        };
        let counter = |acknowledged, total, coins| WorkerTotals {
            worker: "w1",
            hashes: Totals {
                acknowledged,
                total,
            },
            coins: Totals {
                acknowledged: 0,
                total: coins,
            },
        };
        store
            .record(&counter(0, 5, 1), std::slice::from_ref(&coin), 0)
            .await
            .unwrap();
        // The same update again (its reply was lost): nothing twice.
        store
            .record(&counter(0, 5, 1), std::slice::from_ref(&coin), 0)
            .await
            .unwrap();
        store.record(&counter(0, 7, 1), &[coin], 0).await.unwrap();
        assert_eq!(
            store.score().await.unwrap(),
            Score {
                hashes: 7,
                coins: 1
            }
        );
        // A capped wallet keeps a sample; the counter keeps the total.
        let more: Vec<Coin> = (1..=10u8)
            .map(|i| Coin {
                digest: [i; 32],
                bytes: [i; 32],
            })
            .collect();
        store.record(&counter(0, 20, 11), &more, 4).await.unwrap();
        assert_eq!(store.score().await.unwrap().coins, 11);
        let Store::Memory(memory) = &store else {
            unreachable!()
        };
        assert_eq!(memory.inner.lock().unwrap().wallet.len(), 4);
    }
}
