//! Faults, survived: Redis, rng and hasher killed and restarted under a
//! running worker, SIGTERM under load, a backend slower than the call
//! timeout, and 200 clients at once. Each test bounds its own time and stops
//! what it started. RELIABILITY.md says what each one shows.

use crate::support::{
    Log, RedisServer, RunningWorker, one_lane_no_queue, restartable_port, sha256_hex, spawn_hasher,
    spawn_rng, spawn_webui, start_binary, start_binary_logged,
};
use dockercoins::{
    hasher::HasherConfig,
    pb::{
        GenerateRequest, GenerateStreamRequest, HashBatch, HashRequest, InfoRequest,
        hasher_client::HasherClient as HasherStub, replica_client::ReplicaClient as ReplicaStub,
        rng_client::RngClient as RngStub,
    },
    rng::RngConfig,
    server::limits,
    store::Store,
    telemetry::fields,
    worker::{Mined, WorkerConfig},
};
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::process::Child;
use tonic::transport::Channel;

fn turbo(concurrency: usize, batch: usize) -> WorkerConfig {
    WorkerConfig {
        delay: Duration::ZERO,
        concurrency,
        batch,
        wallet_cap: 0,
        pace: None,
    }
}

fn store(redis: &RedisServer) -> Store {
    Store::redis(&redis.url(), Duration::from_millis(500)).unwrap()
}

/// Every coin in `wallet` is the SHA-256 of its bytes and starts with `0`.
async fn wallet_holds_only_real_coins(redis: &RedisServer) -> usize {
    let wallet = redis.wallet().await;
    for (hex, bytes) in &wallet {
        assert!(hex.starts_with('0'), "{hex} is no coin");
        assert_eq!(
            &sha256_hex(bytes),
            hex,
            "a wallet entry is not the hash of its bytes"
        );
    }
    wallet.len()
}

/// The webui's `/json` status code, on a fresh connection.
async fn json_status(webui: SocketAddr) -> u16 {
    crate::support::http1(webui, "GET", "/json", "")
        .await
        .0
        .as_u16()
}

/// Redis killed (SIGKILL) and restarted twice while two workers (one unary,
/// one batch) mine and webui serves `/json`: nobody crashes, and after the
/// workers' stop Redis holds exactly the hashes they did, not one lost, none
/// twice (Redis runs with an append-only file fsynced on every write).
#[tokio::test]
async fn redis_killed_twice_nothing_lost_nothing_counted_twice() {
    let mut redis = RedisServer::start().await;
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let workers = [
        RunningWorker::start(turbo(4, 0), &rng.url(), &hasher.url(), store(&redis)),
        RunningWorker::start(turbo(2, 1024), &rng.url(), &hasher.url(), store(&redis)),
    ];
    let webui = spawn_webui(store(&redis), &rng.url(), &hasher.url()).await;
    let webui_addr = webui.addr;

    let mut seen = redis.wait_for_hashes(1, Duration::from_secs(30)).await;
    for _ in 0..2 {
        redis.crash().await;
        assert_eq!(json_status(webui_addr).await, 503, "/json with Redis down");
        // Down across at least one of the workers' once-a-second updates.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        redis.restart().await;
        let kept = redis.hashes().await;
        assert!(
            kept >= seen,
            "Redis lost acknowledged hashes: {kept} < {seen}"
        );
        seen = redis
            .wait_for_hashes(kept + 1, Duration::from_secs(10))
            .await;
        assert_eq!(json_status(webui_addr).await, 200, "/json with Redis back");
    }

    let mut done = 0;
    let mut coins = 0;
    for worker in workers {
        let report: Mined = worker.stop().await;
        assert_eq!(report.hashes_done, report.hashes_flushed, "{report:?}");
        assert_eq!(report.coins_unflushed, 0, "{report:?}");
        done += report.hashes_done;
        coins += report.coins_found;
    }
    assert_eq!(redis.hashes().await, done, "Redis != what the workers did");
    assert_eq!(wallet_holds_only_real_coins(&redis).await as u64, coins);
    assert!(webui.is_running(), "webui died");
    webui.stop().await.unwrap();
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

/// Redis without persistence (as in the compose file): a restart empties it.
/// The promise is then: what Redis held at the crash is gone, and everything
/// done after that point is counted, exactly. Writes are paused before the
/// crash so the test knows exactly what Redis held.
#[tokio::test]
async fn without_persistence_a_restart_loses_what_redis_held_and_nothing_else() {
    let mut redis = RedisServer::start_ephemeral().await;
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let worker = RunningWorker::start(turbo(4, 0), &rng.url(), &hasher.url(), store(&redis));
    redis.wait_for_hashes(1, Duration::from_secs(30)).await;

    let mut connection = redis.connection().await.unwrap();
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10000)
        .arg("WRITE")
        .query_async(&mut connection)
        .await
        .unwrap();
    let held = redis.hashes().await;
    redis.crash().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    redis.restart().await;
    assert_eq!(redis.hashes().await, 0, "an ephemeral Redis kept its data");
    redis.wait_for_hashes(1, Duration::from_secs(10)).await;

    let report = worker.stop().await;
    assert_eq!(report.hashes_done, report.hashes_flushed, "{report:?}");
    assert_eq!(redis.hashes().await, report.hashes_done - held);
    wallet_holds_only_real_coins(&redis).await;
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

/// A turbo rng or hasher process on `port` (0: any).
async fn start_service(service: &str, port: u16) -> (Child, SocketAddr) {
    let listen = format!("127.0.0.1:{port}");
    let (child, addr) = start_binary(
        &[service, "--listen", &listen, "--delay-ms", "0"],
        &[("RNG_LANES", "0")],
    )
    .await;
    (child, addr.parse().unwrap())
}

async fn kill(mut child: Child) {
    child.start_kill().unwrap();
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the process did not die")
        .unwrap();
}

/// Calls a replica has served (Replica/Info), or `None` if it does not answer.
async fn calls_served(addr: SocketAddr) -> Option<u64> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .ok()?;
    let info = ReplicaStub::new(channel).info(InfoRequest {}).await.ok()?;
    Some(info.into_inner().calls)
}

/// rng, then hasher, killed with SIGKILL and started again on the same port
/// under a running worker: the worker is back within 2 s of the service's
/// return (its backoff never waits longer than 2 s), and the books balance
/// exactly: no unit counted that did not get its digest.
#[tokio::test]
async fn rng_and_hasher_killed_and_restarted_the_worker_comes_back() {
    let redis = RedisServer::start().await;
    let (rng, rng_addr) = start_service("rng", restartable_port()).await;
    let (hasher, hasher_addr) = start_service("hasher", restartable_port()).await;
    let worker = RunningWorker::start(
        turbo(4, 0),
        &format!("http://{rng_addr}"),
        &format!("http://{hasher_addr}"),
        store(&redis),
    );
    let mut processes = [
        ("rng", Some(rng), rng_addr),
        ("hasher", Some(hasher), hasher_addr),
    ];
    redis.wait_for_hashes(1, Duration::from_secs(30)).await;
    for (service, child, addr) in &mut processes {
        kill(child.take().unwrap()).await;
        // Down long enough for the worker's backoff to grow to its cap.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (again, _) = start_service(service, addr.port()).await;
        let back = Instant::now();
        *child = Some(again);
        loop {
            if calls_served(*addr).await.is_some_and(|calls| calls > 0) {
                break;
            }
            // The promise is 2 s; the bound leaves room for a loaded machine.
            assert!(
                back.elapsed() < Duration::from_secs(4),
                "the worker did not call {service} again within 4 s of its return"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "{service}: the worker called again {:?} after its return",
            back.elapsed()
        );
    }
    let stalled = redis.hashes().await;
    redis
        .wait_for_hashes(stalled + 1, Duration::from_secs(10))
        .await;
    let report = worker.stop().await;
    assert_eq!(report.hashes_done, report.hashes_flushed, "{report:?}");
    assert_eq!(redis.hashes().await, report.hashes_done);
    assert_eq!(
        wallet_holds_only_real_coins(&redis).await as u64,
        report.coins_found
    );
    for (_, child, _) in processes {
        kill(child.unwrap()).await;
    }
}

/// Resident memory of a process, in bytes, from /proc.
fn rss(pid: u32) -> u64 {
    dockercoins::telemetry::procfs::status_kb(pid, "VmRSS:") * 1024
}

/// SIGTERM, then how long the process took to exit, and its exit code.
async fn stop_timed(child: &mut Child) -> (Duration, Option<i32>) {
    let start = Instant::now();
    crate::support::sigterm(child).await;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("no exit within 10 s of SIGTERM")
        .unwrap();
    (start.elapsed(), status.code())
}

/// Reads a streaming call's replies to the end: `Ok` once the stream ends
/// well, the status of the call or of the first failed message otherwise.
async fn read_all<T>(
    call: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> Result<(), tonic::Status> {
    let mut stream = call?.into_inner();
    while stream.message().await?.is_some() {}
    Ok(())
}

/// A client that calls rng's stream (or hasher's) in a loop until a call
/// fails; returns the failing status.
fn streaming_client(
    rng: SocketAddr,
    hasher: SocketAddr,
    n: usize,
) -> tokio::task::JoinHandle<tonic::Status> {
    let addr = if n % 2 == 0 { rng } else { hasher };
    tokio::spawn(async move {
        loop {
            let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
            else {
                return tonic::Status::unavailable("connect");
            };
            let result = if n % 2 == 0 {
                let request = GenerateStreamRequest {
                    size: 32,
                    count: 50_000,
                };
                read_all(RngStub::new(channel).generate_stream(request).await).await
            } else {
                let batches = futures_util::stream::iter((0..200).map(|_| HashBatch {
                    size: 32,
                    blocks: vec![7u8; 32 * 1024].into(),
                }));
                read_all(HasherStub::new(channel).hash_stream(batches).await).await
            };
            if let Err(status) = result {
                return status;
            }
        }
    })
}

/// Every service gets SIGTERM while the mesh runs flat out (a turbo worker,
/// plus streams from outside on rng and hasher): each exits 0 within its
/// second, streams in flight end with a status rather than hang, and the
/// worker's last line (`hashes_done`, `hashes_flushed`) matches Redis.
#[tokio::test]
async fn sigterm_under_turbo_load_every_service_exits_0_promptly() {
    let redis = RedisServer::start().await;
    let (mut rng, rng_addr) = start_service("rng", 0).await;
    let (mut hasher, hasher_addr) = start_service("hasher", 0).await;
    let (rng_url, hasher_url) = (
        format!("http://{rng_addr}"),
        format!("http://{hasher_addr}"),
    );
    let backends = [
        "--rng",
        &rng_url,
        "--hasher",
        &hasher_url,
        "--redis",
        &redis.url(),
    ];
    let (mut webui, _) = start_binary(
        &[&["webui", "--listen", "127.0.0.1:0"][..], &backends].concat(),
        &[],
    )
    .await;
    let (mut worker, _, worker_log): (Child, String, Log) = start_binary_logged(
        &[
            &["worker", "--delay-ms", "0", "--concurrency", "8"][..],
            &backends,
        ]
        .concat(),
        &[("LOG_FORMAT", "json")],
    )
    .await;
    let clients: Vec<_> = (0..4)
        .map(|n| streaming_client(rng_addr, hasher_addr, n))
        .collect();
    redis.wait_for_hashes(200, Duration::from_secs(30)).await;

    // The worker first, while rng and hasher answer flat out: its last update
    // must land, and its last line must say so.
    let limit = Duration::from_secs(2);
    let (took, code) = stop_timed(&mut worker).await;
    println!("worker: exit {code:?} {took:?} after SIGTERM");
    assert_eq!(code, Some(0), "worker exit code");
    assert!(took < limit, "worker took {took:?} to stop");
    // Drained by the log task once the pipe closes.
    let last = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let line = worker_log
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|line| line.contains(fields::HASHES_DONE))
                .cloned();
            if let Some(line) = line {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no last line with hashes_done from the worker");
    let last: serde_json::Value = serde_json::from_str(&last).unwrap();
    let done = last["fields"][fields::HASHES_DONE].as_u64().unwrap();
    assert!(done >= 200, "{last}");
    assert_eq!(
        last["fields"][fields::HASHES_FLUSHED].as_u64(),
        Some(done),
        "{last}"
    );
    assert_eq!(redis.hashes().await, done);

    // Then the servers, with the outside streams still running on them.
    for (name, child) in [
        ("rng", &mut rng),
        ("hasher", &mut hasher),
        ("webui", &mut webui),
    ] {
        let (took, code) = stop_timed(child).await;
        println!("{name}: exit {code:?} {took:?} after SIGTERM");
        assert_eq!(code, Some(0), "{name} exit code");
        // The promise is 1 s (750 ms of drain at most); the bound leaves room
        // for a loaded machine.
        assert!(took < limit, "{name} took {took:?} to stop");
    }
    for client in clients {
        let status = tokio::time::timeout(limit, client)
            .await
            .expect("a stream hung after its server stopped")
            .unwrap();
        println!(
            "a client's stream ended with {:?}: {}",
            status.code(),
            status.message()
        );
    }
}

/// rng slower than the worker's call timeout: every call times out, the
/// worker backs off instead of piling calls up, counts nothing, and the calls
/// it gave up on leave rng's queue (a fresh call waits for at most the one
/// being served, not for everything abandoned before it).
#[tokio::test]
async fn a_backend_slower_than_the_call_timeout_costs_bounded_calls() {
    let redis = RedisServer::start().await;
    let delay = Duration::from_secs(1);
    let rng = spawn_rng(RngConfig {
        delay,
        lanes: Some(1),
        ..RngConfig::classroom()
    })
    .await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let concurrency = 8;
    let call_timeout = Duration::from_millis(200);
    let config = turbo(concurrency, 0);
    let pool = dockercoins::client::balancer::BalancerSettings {
        call_timeout,
        ..Default::default()
    };
    let worker = RunningWorker::with_backends(
        config,
        dockercoins::client::BalancedRng::new(&rng.url(), &pool).unwrap(),
        dockercoins::client::BalancedHasher::new(&hasher.url(), &pool).unwrap(),
        store(&redis),
    );
    let run = Duration::from_secs(3);
    tokio::time::sleep(run).await;
    let report = worker.stop().await;
    let calls = calls_served(rng.addr).await.unwrap();
    println!("{calls} rng calls in {run:?} from {concurrency} loops, 200 ms timeout: {report:?}");
    assert_eq!(report.hashes_done, 0, "nothing can be done in time");
    assert_eq!(redis.hashes().await, 0);
    // Without backoff, 8 loops retrying every 200 ms would make 120 calls.
    // With it (50 ms doubling, capped at 2 s) each loop makes about 5.
    assert!(
        calls <= 8 * 8,
        "{calls} calls: the worker does not back off"
    );
    let start = Instant::now();
    let mut client = crate::support::rng_client(&rng).await;
    client.generate(GenerateRequest { size: 32 }).await.unwrap();
    let waited = start.elapsed();
    println!("a fresh call after the worker gave up: {waited:?}");
    assert!(
        waited < delay * 3,
        "a fresh call waited {waited:?}: abandoned calls still hold rng's queue"
    );
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

/// Tallies of one load run.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    refused_as_documented: AtomicU64,
    errors: AtomicU64,
}

/// One of the 200 clients: its own connection, calls of its kind in a loop,
/// one call in 25 over a documented limit (must be INVALID_ARGUMENT).
async fn load_client(n: usize, addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut rng = RngStub::new(channel.clone());
    let mut hasher = HasherStub::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let over = i % 25 == 0;
        let result = match (n % 4, over) {
            (0, _) => rng
                .generate(GenerateRequest {
                    size: if over {
                        limits::MAX_BLOCK_BYTES as u32 + 1
                    } else {
                        32
                    },
                })
                .await
                .map(drop),
            (1, _) => {
                read_all(
                    rng.generate_stream(GenerateStreamRequest {
                        size: 32,
                        count: if over {
                            limits::MAX_STREAM_BLOCKS as u32 + 1
                        } else {
                            4096
                        },
                    })
                    .await,
                )
                .await
            }
            (2, _) => hasher
                .hash(HashRequest {
                    data: vec![
                        1u8;
                        if over {
                            limits::MAX_GRPC_MESSAGE_BYTES + 1
                        } else {
                            64
                        }
                    ]
                    .into(),
                })
                .await
                .map(drop),
            _ => {
                let blocks = if over {
                    32 * (limits::MAX_BATCH_BLOCKS + 1)
                } else {
                    32 * 256
                };
                let batch = HashBatch {
                    size: 32,
                    blocks: vec![2u8; blocks].into(),
                };
                read_all(
                    hasher
                        .hash_stream(futures_util::stream::iter([batch.clone(), batch]))
                        .await,
                )
                .await
            }
        };
        match result {
            Ok(()) if !over => tally.ok.fetch_add(1, Ordering::Relaxed),
            Err(status)
                if over
                    && matches!(
                        status.code(),
                        tonic::Code::InvalidArgument
                            | tonic::Code::OutOfRange
                            | tonic::Code::ResourceExhausted
                    ) =>
            {
                tally.refused_as_documented.fetch_add(1, Ordering::Relaxed)
            }
            other => {
                eprintln!("client {n}: unexpected {other:?} (over the limit: {over})");
                tally.errors.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// 200 clients at once, each on its own connection, mixed unary and
/// streaming calls against rng and hasher processes, for 30 s: no error but
/// the documented limits, and memory stays bounded.
#[tokio::test]
async fn two_hundred_clients_for_thirty_seconds() {
    let seconds: u64 = std::env::var("LOAD_TEST_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let (mut rng, rng_addr) = start_service("rng", 0).await;
    let (mut hasher, hasher_addr) = start_service("hasher", 0).await;
    let pids = [rng.id().unwrap(), hasher.id().unwrap()];
    let idle = pids.map(rss);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..200)
        .map(|n| {
            let addr = if n % 4 < 2 { rng_addr } else { hasher_addr };
            tokio::spawn(load_client(n, addr, tally.clone(), stop.clone()))
        })
        .collect();
    let mut peak = idle;
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for (i, pid) in pids.iter().enumerate() {
            peak[i] = peak[i].max(rss(*pid));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .expect("a client hung")
            .unwrap();
    }
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let (ok, refused, errors) = (
        tally.ok.load(Ordering::Relaxed),
        tally.refused_as_documented.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    println!(
        "{seconds} s, 200 clients: {ok} calls ok, {refused} refused at a limit, {errors} errors; \
         RSS idle/peak: rng {:.1}/{:.1} MB, hasher {:.1}/{:.1} MB",
        mb(idle[0]),
        mb(peak[0]),
        mb(idle[1]),
        mb(peak[1])
    );
    assert_eq!(errors, 0, "errors besides the documented limits");
    assert!(ok > 200, "only {ok} calls in {seconds} s");
    assert!(refused > 0, "no call tried a limit");
    for (name, peak) in ["rng", "hasher"].iter().zip(peak) {
        assert!(peak < 128_000_000, "{name}: {:.1} MB resident", mb(peak));
    }
    for child in [&mut rng, &mut hasher] {
        let (_, code) = stop_timed(child).await;
        assert_eq!(code, Some(0));
    }
}

/// A worker whose only rng refuses most of its calls (a lane of 20 ms with
/// no queue, four units in flight) backs off and mines on: every hash it
/// did is in Redis, exactly, and nothing refused is counted.
#[tokio::test]
async fn a_worker_refused_by_a_full_lane_counts_exactly_what_it_did() {
    let redis = RedisServer::start().await;
    let rng = spawn_rng(one_lane_no_queue(Duration::from_millis(20))).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let worker = RunningWorker::start(turbo(4, 0), &rng.url(), &hasher.url(), store(&redis));
    redis.wait_for_hashes(5, Duration::from_secs(30)).await;
    let report = worker.stop().await;
    assert_eq!(report.hashes_done, report.hashes_flushed, "{report:?}");
    assert_eq!(redis.hashes().await, report.hashes_done);
    let refused = crate::support::metric(rng.addr, "rng_lane_refused_total")
        .await
        .expect("rng_lane_refused_total on rng's /metrics");
    assert!(
        refused > 0.0,
        "the lane refused nothing: the test proves nothing"
    );
    rng.stop().await.unwrap();
}
