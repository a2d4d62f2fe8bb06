//! The worker against spawned rng and hasher and a real redis-server of the
//! test's own: counts, coins, the original keys, and faults survived.

use crate::support::{RedisServer, RunningWorker, sha256_hex, spawn_hasher, spawn_rng};
use dockercoins::{
    hasher::HasherConfig,
    rng::RngConfig,
    store::Store,
    worker::{Mined, WorkerConfig},
};
use std::time::Duration;

fn turbo_unary() -> WorkerConfig {
    WorkerConfig {
        delay: Duration::ZERO,
        concurrency: 4,
        batch: 0,
        wallet_cap: 0,
        pace: None,
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
/// and the only other key is the worker's running total.
async fn check_books(redis: &RedisServer, report: Mined) {
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
    assert_eq!(redis.number("coins").await, report.coins_found);
    // The original keys and the coin counter, and this worker's running
    // totals, equal to them.
    let keys = redis.keys().await;
    let (workers, shared): (Vec<_>, Vec<_>) = keys
        .iter()
        .partition(|key| key.starts_with(dockercoins::store::WORKER_KEY_PREFIX));
    assert_eq!(shared, ["coins", "hashes", "wallet"]);
    assert_eq!(workers.len(), 2, "{keys:?}");
    let (hashes, coins) = (workers[0], workers[1]);
    assert!(coins.ends_with(":coins"), "{keys:?}");
    assert_eq!(redis.number(hashes).await, report.hashes_done);
    assert_eq!(redis.number(coins).await, report.coins_found);
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

/// Turbo's capped wallet fills to its cap and stays there while the score
/// goes on: `hashes` advances between every two looks (1.5 s apart: each
/// spans a once-a-second update), Redis's memory stops growing, and `coins`
/// counts every coin found. Uncapped, this worker adds megabytes a second.
#[tokio::test]
async fn a_capped_wallet_stays_at_its_cap_while_the_score_advances() {
    const CAP: usize = 200;
    let redis = RedisServer::start().await;
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let config = WorkerConfig {
        wallet_cap: CAP,
        ..turbo_batch()
    };
    let worker = RunningWorker::start(config, &rng.url(), &hasher.url(), store(&redis));
    redis.wait_for_hashes(1, Duration::from_secs(30)).await;
    let mut admin = redis.connection().await.unwrap();
    let mut looks = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (wallet, info): (usize, String) = redis::pipe()
            .hlen("wallet")
            .cmd("INFO")
            .arg("memory")
            .query_async(&mut admin)
            .await
            .unwrap();
        let used: u64 = info
            .lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .and_then(|bytes| bytes.trim().parse().ok())
            .expect("INFO memory has used_memory");
        looks.push((redis.hashes().await, wallet, used));
    }
    let report = worker.stop().await;
    for pair in looks.windows(2) {
        assert!(pair[1].0 > pair[0].0, "hashes stood still: {looks:?}");
    }
    assert!(looks.iter().all(|look| look.1 <= CAP), "{looks:?}");
    let grown = looks[4].2 as i64 - looks[1].2 as i64;
    assert!(grown < 1 << 20, "Redis grew by {grown} bytes: {looks:?}");
    assert!(report.coins_found > 2 * CAP as u64, "{report:?}");
    assert_eq!(redis.number("coins").await, report.coins_found);
    assert_eq!(redis.hashes().await, report.hashes_done);
    let wallet = redis.wallet().await;
    assert_eq!(wallet.len(), CAP);
    for (hex, bytes) in &wallet {
        assert_eq!(&sha256_hex(bytes), hex, "a wallet entry is no coin");
    }
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
        ..RngConfig::classroom()
    })
    .await;
    let hasher = spawn_hasher(HasherConfig {
        delay,
        ..HasherConfig::classroom()
    })
    .await;
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
    use dockercoins::store::{Coin, Totals, WorkerTotals};
    let redis = RedisServer::start().await;
    let store = store(&redis);
    let counter = |acknowledged, total, coins| WorkerTotals {
        worker: "slow",
        hashes: Totals {
            acknowledged,
            total,
        },
        coins,
    };
    store
        .record(&counter(0, 1, Totals::default()), &[], 0)
        .await
        .unwrap();
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
    let one_coin = Totals {
        acknowledged: 0,
        total: 1,
    };
    store
        .record(&counter(1, 42, one_coin), &[coin], 0)
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "Redis was not slow"
    );
    assert_eq!(redis.hashes().await, 42);
    assert_eq!(redis.wallet().await.len(), 1);
    assert_eq!(redis.number("coins").await, 1);
}

/// The one case a timeout cannot cover: Redis applies an update and dies
/// before its reply leaves, so the worker sends it again. Updates are running
/// totals per worker, so the second one adds nothing; when Redis comes back
/// empty, only what the worker had not seen confirmed is counted.
#[tokio::test]
async fn an_update_sent_again_counts_once() {
    use dockercoins::store::{Coin, Totals, WORKER_KEY_PREFIX, WorkerTotals};
    let mut redis = RedisServer::start_ephemeral().await;
    let store = store(&redis);
    // One coin found with hashes 10 to 25, none before or after.
    let counter = |acknowledged: u64, total: u64| WorkerTotals {
        worker: "w-1",
        hashes: Totals {
            acknowledged,
            total,
        },
        coins: Totals {
            acknowledged: u64::from(acknowledged >= 25),
            total: u64::from(total >= 25),
        },
    };
    let coin = Coin {
        digest: [0; 32],
        bytes: [1; 32],
    };
    store.record(&counter(0, 10), &[], 0).await.unwrap();
    // Applied, but the worker never saw the reply: it sends it again, and
    // then its next one, both from the last total it saw confirmed (10).
    store.record(&counter(10, 25), &[coin], 0).await.unwrap();
    store.record(&counter(10, 25), &[coin], 0).await.unwrap();
    assert_eq!(redis.hashes().await, 25);
    store.record(&counter(10, 30), &[], 0).await.unwrap();
    assert_eq!(redis.hashes().await, 30);
    assert_eq!(redis.wallet().await.len(), 1);
    assert_eq!(redis.number("coins").await, 1, "the coin counted once");
    // Another worker's totals are its own.
    let other = WorkerTotals {
        worker: "w-2",
        hashes: Totals {
            acknowledged: 0,
            total: 3,
        },
        coins: Totals::default(),
    };
    store.record(&other, &[], 0).await.unwrap();
    assert_eq!(redis.hashes().await, 33);
    // The per-worker key expires a day after its last update.
    let mut admin = redis.connection().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{WORKER_KEY_PREFIX}w-1"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!((86_000..=86_400).contains(&ttl), "TTL {ttl}");

    // Redis restarts empty (no persistence): what it held is gone, and the
    // worker's next update counts only what came after its last confirmed 30.
    redis.crash().await;
    redis.restart().await;
    let mut tries = 0;
    while let Err(error) = store.record(&counter(30, 34), &[], 0).await {
        tries += 1;
        assert!(tries < 5, "Redis is back but the store fails: {error}");
    }
    assert_eq!(redis.hashes().await, 4);
}

/// Redis credentials come only from the URL: with the right password the
/// worker mines; with a wrong one it says so; and neither password ever
/// appears in a log line or in `--help`.
#[tokio::test]
async fn a_redis_password_works_and_never_reaches_the_logs() {
    use crate::support::{sigterm, start_binary_logged};
    let redis = RedisServer::start().await;
    let mut admin = redis.connection().await.unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("right-pw-7f3a")
        .query_async(&mut admin)
        .await
        .unwrap();
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let (rng_url, hasher_url) = (rng.url(), hasher.url());
    let url = |password: &str| format!("redis://:{password}@127.0.0.1:{}", redis.port);
    let mut workers = Vec::new();
    for password in ["right-pw-7f3a", "wrong-pw-91c2"] {
        let redis_url = url(password);
        let envs = [("REDIS_URL", redis_url.as_str()), ("WORKER_DELAY_MS", "0")];
        let args = ["worker", "--rng", &rng_url, "--hasher", &hasher_url];
        workers.push(start_binary_logged(&args, &envs).await);
    }
    // The right password: hashes arrive.
    let authed = redis::Client::open(url("right-pw-7f3a")).unwrap();
    let mut authed = authed.get_multiplexed_async_connection().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let hashes: Option<u64> = redis::cmd("GET")
            .arg("hashes")
            .query_async(&mut authed)
            .await
            .unwrap();
        if hashes.is_some_and(|h| h > 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no hashes with the right password"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The wrong one: a warning that names the masked URL.
    let (_, _, wrong_log) = &workers[1];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !wrong_log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("cannot update Redis"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no warning with a wrong password"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (child, _, _) in &mut workers {
        sigterm(child).await;
        child.wait().await.unwrap();
    }
    let mut lines: Vec<String> = Vec::new();
    for (_, _, log) in &workers {
        lines.extend(log.lock().unwrap().iter().cloned());
    }
    assert!(
        lines.iter().any(|l| l.contains(":***@127.0.0.1")),
        "the masked URL is logged"
    );
    for line in &lines {
        assert!(
            !line.contains("right-pw-7f3a") && !line.contains("wrong-pw-91c2"),
            "{line}"
        );
    }
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_dockercoins"))
        .args(["worker", "--help"])
        .env("REDIS_URL", url("right-pw-7f3a"))
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("REDIS_URL"), "{help}");
    assert!(
        !help.contains("right-pw-7f3a"),
        "--help shows the password:\n{help}"
    );
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

/// WORKER_HEALTH_LISTEN: the worker answers its liveness probe while it
/// mines, and still while its backends are down (their outage is no reason
/// to restart it).
#[tokio::test]
async fn the_worker_answers_its_liveness_probe() {
    use crate::support::{http1, sigterm, start_binary};
    let redis = RedisServer::start().await;
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let (rng_url, hasher_url, redis_url) = (rng.url(), hasher.url(), redis.url());
    let args = [
        "worker",
        "--rng",
        &rng_url,
        "--hasher",
        &hasher_url,
        "--redis",
        &redis_url,
    ];
    let (mut worker, listen) =
        start_binary(&args, &[("WORKER_HEALTH_LISTEN", "127.0.0.1:0")]).await;
    let addr: std::net::SocketAddr = listen
        .parse()
        .expect("the liveness address is logged first");
    let (status, _, body) = http1(addr, "GET", "/healthz", "").await;
    assert_eq!(status, 200, "{body:?}");
    assert!(
        String::from_utf8_lossy(&body).starts_with("alive"),
        "{body:?}"
    );
    rng.stop().await.unwrap();
    // rng gone: the loops back off, and keep turning.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(http1(addr, "GET", "/healthz", "").await.0, 200);
    sigterm(&worker).await;
    assert!(worker.wait().await.unwrap().success());
    hasher.stop().await.unwrap();
}
