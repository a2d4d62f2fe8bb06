//! The worker against spawned rng and hasher and a real redis-server of the
//! test's own: counts, coins, the original keys, and faults survived.

use crate::helpers::{RedisServer, RunningWorker, sha256_hex, spawn_hasher, spawn_rng};
use dockercoins::{
    config::{HasherConfig, RngConfig},
    store::Store,
    worker::{Report, WorkerConfig},
};
use std::time::Duration;

fn turbo_unary() -> WorkerConfig {
    WorkerConfig {
        delay: Duration::ZERO,
        concurrency: 4,
        batch: 0,
        call_timeout: Duration::from_secs(2),
    }
}

fn turbo_batch() -> WorkerConfig {
    WorkerConfig {
        batch: 4096,
        concurrency: 2,
        ..turbo_unary()
    }
}

fn store(redis: &RedisServer) -> Store {
    Store::redis(&redis.url(), Duration::from_millis(500)).unwrap()
}

/// Every hash the worker did is in `hashes`, every coin in `wallet` is real,
/// and there are no other keys.
async fn check_books(redis: &RedisServer, report: Report) {
    assert_eq!(report.hashes_done, report.hashes_flushed, "{report:?}");
    assert_eq!(report.coins_unflushed, 0, "{report:?}");
    assert_eq!(redis.hashes().await, report.hashes_done);
    let wallet = redis.wallet().await;
    assert_eq!(wallet.len() as u64, report.coins_found);
    assert!(
        !wallet.is_empty(),
        "no coin in {} hashes",
        report.hashes_done
    );
    for (hex, bytes) in &wallet {
        assert_eq!(bytes.len(), 32);
        assert!(hex.starts_with('0'), "{hex} is no coin");
        assert_eq!(
            &sha256_hex(bytes),
            hex,
            "wallet entry is not the hash of its bytes"
        );
    }
    assert_eq!(redis.keys().await, ["hashes", "wallet"]);
}

#[tokio::test]
async fn unary_mining_counts_every_hash_and_keeps_real_coins() {
    let redis = RedisServer::start().await;
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let worker = RunningWorker::start(turbo_unary(), &rng.url(), &hasher.url(), store(&redis));
    redis.wait_for_hashes(400, Duration::from_secs(30)).await;
    let report = worker.stop().await;
    check_books(&redis, report).await;
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

#[tokio::test]
async fn batch_mining_counts_every_hash_and_keeps_real_coins() {
    let redis = RedisServer::start().await;
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let worker = RunningWorker::start(turbo_batch(), &rng.url(), &hasher.url(), store(&redis));
    redis.wait_for_hashes(20_000, Duration::from_secs(30)).await;
    let report = worker.stop().await;
    assert!(report.hashes_done >= 20_000);
    check_books(&redis, report).await;
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

/// Redis stopped and started again mid-run: the hashes done while it was
/// away are sent when it is back, none lost and none twice.
#[tokio::test]
async fn counts_survive_a_redis_restart() {
    let mut redis = RedisServer::start().await;
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let worker = RunningWorker::start(turbo_unary(), &rng.url(), &hasher.url(), store(&redis));
    let before = redis.wait_for_hashes(1, Duration::from_secs(30)).await;
    redis.stop().await;
    // Keep Redis away across at least one update of the worker.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart().await;
    let after = redis.hashes().await;
    assert!(after >= before, "Redis lost its data: {after} < {before}");
    redis
        .wait_for_hashes(after + 1, Duration::from_secs(10))
        .await;
    let report = worker.stop().await;
    check_books(&redis, report).await;
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

/// rng goes away and comes back on the same address: the worker backs off,
/// does not crash, and mines again once rng answers.
#[tokio::test]
async fn the_worker_recovers_when_rng_comes_back() {
    let redis = RedisServer::start().await;
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let rng_addr = rng.addr;
    let worker = RunningWorker::start(turbo_unary(), &rng.url(), &hasher.url(), store(&redis));
    redis.wait_for_hashes(1, Duration::from_secs(30)).await;
    rng.stop().await.unwrap();
    // Let the worker's next update land, then nothing can move the counter.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stalled = redis.hashes().await;

    let listener = tokio::net::TcpListener::bind(rng_addr).await.unwrap();
    let (stop_rng, rng_stopped) = tokio::sync::oneshot::channel::<()>();
    let rng_again = tokio::spawn(dockercoins::rng::serve(
        listener,
        RngConfig::turbo(),
        async {
            let _ = rng_stopped.await;
        },
    ));
    redis
        .wait_for_hashes(stalled + 1, Duration::from_secs(10))
        .await;
    let report = worker.stop().await;
    check_books(&redis, report).await;
    let _ = stop_rng.send(());
    rng_again.await.unwrap().unwrap();
    hasher.stop().await.unwrap();
}

/// The lab's lesson with the real workers, scaled down (20 ms instead of
/// 100): ten workers are capped by rng's single lane, one request per delay.
/// The cap is a hard upper bound (a lane cannot serve faster), so this cannot
/// flake on a slow machine; the lower bound is generous.
#[tokio::test]
async fn ten_workers_are_capped_by_rngs_lane() {
    let delay = Duration::from_millis(20);
    let redis = RedisServer::start().await;
    let rng = spawn_rng(RngConfig {
        delay,
        lanes: Some(1),
    })
    .await;
    let hasher = spawn_hasher(HasherConfig { delay }).await;
    let config = WorkerConfig {
        delay,
        ..WorkerConfig::classroom()
    };
    let start = std::time::Instant::now();
    let workers: Vec<_> = (0..10)
        .map(|_| RunningWorker::start(config.clone(), &rng.url(), &hasher.url(), store(&redis)))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut done = 0;
    for worker in workers {
        done += worker.stop().await.hashes_done;
    }
    let cap = (start.elapsed().as_millis() / delay.as_millis()) as u64;
    // Ten free-running workers would do 10 x 2 s / 60 ms = 333.
    assert!(
        done <= cap,
        "{done} hashes, but one lane serves at most {cap}"
    );
    assert!(done >= cap / 3, "{done} hashes, far below the lane's {cap}");
    assert_eq!(redis.hashes().await, done);
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

/// A Redis that applies an update slowly (here 1.5 s, past redis-rs's own
/// 500 ms default) must not make it look failed: it would be sent again and
/// counted twice. bench found exactly that at 1.7M hashes/s. CLIENT PAUSE
/// WRITE holds only writes: the pool's ping and connection set-up go
/// through, the update waits.
#[tokio::test]
async fn a_slow_redis_answer_is_not_a_failure_and_counts_once() {
    use dockercoins::store::Coin;
    let redis = RedisServer::start().await;
    let store = store(&redis);
    store.record(1, &[]).await.unwrap();
    let mut admin = redis.connection().await.unwrap();
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let coin = Coin {
        digest: [0; 32],
        bytes: [1; 32],
    };
    let started = std::time::Instant::now();
    store.record(41, &[coin]).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "Redis was not slow"
    );
    assert_eq!(redis.hashes().await, 42);
    assert_eq!(redis.wallet().await.len(), 1);
}
