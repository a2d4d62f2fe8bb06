//! The balancer's lessons beyond spreading calls, against real servers on
//! port 0 found through an injected resolver: least_request against a slow
//! replica, hedging, the retry budget, draining by health watch, outlier
//! ejection, deadlines that travel, and a rolling restart that loses nothing.

use crate::support::{
    RedisServer, RunningWorker, Spawned, one_lane_no_queue, restartable_port, spawn_hasher,
    spawn_rng, spawn_rng_on, wait_for_a_call_in_rngs_lane,
};
use dockercoins::{
    client::balancer::{
        BalancerSettings, ClientCalls, OutlierSettings, Policy, Resolver, RetrySettings,
    },
    client::{BalancedHasher, BalancedRng},
    hasher::HasherConfig,
    pb::GenerateRequest,
    rng::RngConfig,
    server::DRAIN_NOTICE,
    server::faults::Faults,
    store::Store,
    telemetry::metrics::{Exposition, Registry},
    worker::WorkerConfig,
};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// A resolver that answers the list the test holds.
pub fn resolver(addrs: &Arc<Mutex<Vec<SocketAddr>>>) -> Resolver {
    let addrs = addrs.clone();
    Arc::new(move |_host, _port| {
        let answer = addrs.lock().unwrap().clone();
        Box::pin(async move { Ok(answer) })
    })
}

/// rng replicas that serve every request at once (no lane) after `delay`.
pub fn rng_taking(delay: Duration) -> RngConfig {
    RngConfig {
        delay,
        ..RngConfig::turbo()
    }
}

/// An rng client over `servers`, with `settings`, measured in `registry`.
fn client(
    servers: &[&Spawned],
    settings: BalancerSettings,
    registry: &mut Registry,
) -> (BalancedRng, Arc<Mutex<Vec<SocketAddr>>>) {
    let addrs = Arc::new(Mutex::new(servers.iter().map(|s| s.addr).collect()));
    let settings = BalancerSettings {
        metrics: ClientCalls::register(registry),
        connect_timeout: Duration::from_millis(500),
        ..settings
    };
    let rng = BalancedRng::with_resolver("http://rng:8001", &settings, resolver(&addrs)).unwrap();
    (rng, addrs)
}

/// Calls served so far by the replica listening on `port`.
pub fn served_on(served: &BTreeMap<String, u64>, port: u16) -> u64 {
    served
        .iter()
        .filter(|(who, _)| who.ends_with(&format!(":{port}")))
        .map(|(_, n)| n)
        .sum()
}

/// The sum of a counter's series whose labels contain `labels`.
fn counter(registry: Registry, name: &str, labels: &str) -> u64 {
    Exposition::new(registry)
        .encode()
        .lines()
        .filter(|line| line.starts_with(&format!("{name}_total{{")) && line.contains(labels))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

/// `callers` tasks making `calls` Generate calls each, one after the other.
async fn load(
    rng: &BalancedRng,
    callers: usize,
    calls: usize,
) -> Vec<Result<usize, tonic::Status>> {
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let rng = rng.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                for _ in 0..calls {
                    results.push(rng.generate(32).await.map(|b| b.len()));
                }
                results
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.extend(task.await.unwrap());
    }
    results
}

/// How many more calls a fast replica (20 ms) got than one three times
/// slower (60 ms) under `policy`, from `callers` callers of `calls` calls
/// each, one after the other; every call must succeed.
async fn fast_over_slow(policy: Policy, callers: usize, calls: usize) -> f64 {
    let fast = spawn_rng(rng_taking(Duration::from_millis(20))).await;
    let slow = spawn_rng(rng_taking(Duration::from_millis(60))).await;
    let settings = BalancerSettings {
        policy,
        ..BalancerSettings::default()
    };
    let (rng, _) = client(&[&fast, &slow], settings, &mut Registry::default());
    let results = load(&rng, callers, calls).await;
    assert!(results.iter().all(Result::is_ok), "{policy}: a call failed");
    let served = rng.balancer().served();
    let ratio = served_on(&served, fast.addr.port()) as f64
        / served_on(&served, slow.addr.port()).max(1) as f64;
    eprintln!("{policy}, {callers} callers: fast/slow = {ratio:.2} {served:?}");
    fast.stop().await.unwrap();
    slow.stop().await.unwrap();
    ratio
}

/// Of a fast replica and one three times slower, least_request sends the
/// fast one at least twice the calls; round robin, the same number.
#[tokio::test]
async fn least_request_sends_a_fast_replica_at_least_twice_the_calls_of_a_slow_one() {
    let least_request = fast_over_slow(Policy::LeastRequest, 16, 20).await;
    assert!(
        least_request >= 2.0,
        "least_request: fast/slow = {least_request:.2}"
    );
    let round_robin = fast_over_slow(Policy::RoundRobin, 16, 20).await;
    assert!(
        (0.8..=1.25).contains(&round_robin),
        "round_robin: fast/slow = {round_robin:.2}"
    );
}

/// A call stuck on a slow replica is sent again to the other after the
/// hedging delay, and the first answer wins: no call waits for the slow
/// one, and the hedges are counted.
#[tokio::test]
async fn a_slow_unary_call_is_hedged_on_another_replica() {
    let fast = spawn_rng(RngConfig::turbo()).await;
    let slow = spawn_rng(rng_taking(Duration::from_millis(1500))).await;
    let settings = BalancerSettings {
        policy: Policy::RoundRobin,
        retry: RetrySettings {
            hedge_after: Some(Duration::from_millis(50)),
            // Every slow call may be hedged.
            budget_percent: 100,
            ..RetrySettings::default()
        },
        ..BalancerSettings::default()
    };
    let mut registry = Registry::default();
    let (rng, _) = client(&[&fast, &slow], settings, &mut registry);
    for _ in 0..10 {
        let started = Instant::now();
        rng.generate(32).await.unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_millis(1000), "a call took {took:?}");
    }
    let hedges = counter(registry, "rpc_client_hedges", "dockercoins.v1.Rng");
    // Round robin sends at least every other call to the slow replica (a
    // hedge takes a turn too), and only a call still waiting is hedged.
    assert!((4..=10).contains(&hedges), "{hedges} hedges for 10 calls");
    fast.stop().await.unwrap();
    slow.stop().await.unwrap();
}

/// With every replica refusing connections, each call would be retried on
/// the other: the budget (20% of calls, plus one a second over 10 s) caps
/// the retries, and the rest are counted as throttled.
#[tokio::test]
async fn the_retry_budget_caps_retries() {
    // Two ports nobody listens on.
    let dead: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], restartable_port())))
        .collect();
    let addrs = Arc::new(Mutex::new(dead));
    let mut registry = Registry::default();
    let settings = BalancerSettings {
        metrics: ClientCalls::register(&mut registry),
        connect_timeout: Duration::from_millis(200),
        ..BalancerSettings::default()
    };
    let rng = BalancedRng::with_resolver("http://rng:8001", &settings, resolver(&addrs)).unwrap();
    let calls = 200;
    for _ in 0..calls {
        assert!(rng.generate(32).await.is_err());
    }
    let text = Exposition::new(registry).encode();
    let read = |name: &str| -> u64 {
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}_total{{")))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
            .sum()
    };
    let (retries, throttled) = (
        read("rpc_client_retries"),
        read("rpc_client_retries_throttled"),
    );
    eprintln!("{calls} calls: {retries} retries, {throttled} throttled");
    // 20% of 200, and the reserve of 10: 50 at most.
    assert!(retries <= 50, "{retries} retries for {calls} calls");
    assert!(retries >= 10, "the budget allowed only {retries} retries");
    assert_eq!(retries + throttled, calls, "every call asked for one retry");
}

/// Waits (20 ms steps, at most `within`) until `done`; says what did not
/// happen otherwise.
async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// Calls rng one after the other until told to stop; the failures seen.
fn keep_calling(
    rng: &BalancedRng,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<u64>,
) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let rng = rng.clone();
    let task = tokio::spawn(async move {
        let mut failed = 0;
        while !*stopped.borrow_and_update() {
            if rng.generate(32).await.is_err() {
                failed += 1;
            }
        }
        failed
    });
    (stop, task)
}

/// A replica that starts stopping says NOT_SERVING first: the health watch
/// sees it before its listener closes (within the lame-duck notice), no new
/// call goes there afterwards, and no call fails.
#[tokio::test]
async fn a_replica_turned_not_serving_gets_no_new_call() {
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(spawn_rng(RngConfig::turbo()).await);
    }
    let servers: Vec<&Spawned> = replicas.iter().collect();
    let (rng, _) = client(
        &servers,
        BalancerSettings::default(),
        &mut Registry::default(),
    );
    let (stop, calls) = keep_calling(&rng);
    wait_until("calls on every replica", Duration::from_secs(10), || {
        rng.balancer().served().len() == 3
    })
    .await;

    let mut draining = replicas.remove(1);
    let port = draining.addr.port();
    let address = draining.addr.to_string();
    draining.begin_stop();
    let seen = wait_until("the watch to say NOT_SERVING", DRAIN_NOTICE, || {
        rng.balancer()
            .replica_states()
            .iter()
            .any(|state| state.address == address && !state.serving)
    })
    .await;
    eprintln!("NOT_SERVING seen {seen:?} after the stop began");
    // At most the one call in flight when the watch answered.
    let before = served_on(&rng.balancer().served(), port);
    draining.join(Duration::from_secs(5)).await.unwrap();
    let after = served_on(&rng.balancer().served(), port);
    assert!(
        after <= before + 1,
        "{} calls after NOT_SERVING",
        after - before
    );

    stop.send(true).unwrap();
    assert_eq!(
        calls.await.unwrap(),
        0,
        "a call failed while a replica drained"
    );
    assert_eq!(rng.balancer().failures(), 0);
    for replica in replicas {
        replica.stop().await.unwrap();
    }
}

/// A replica failing every call is ejected by the failure-percentage rule
/// within an interval or two, gets no calls while out, and comes back when
/// its ejection time is up (to be ejected again, for longer). Its calls
/// were retried on the others, so none failed.
#[tokio::test]
async fn a_replica_failing_every_call_is_ejected_and_comes_back_after_its_time() {
    let good = spawn_rng(RngConfig::turbo()).await;
    let also_good = spawn_rng(RngConfig::turbo()).await;
    let failing = spawn_rng(RngConfig {
        server: dockercoins::server::ServerSettings {
            faults: Faults {
                fail_rate: "1".parse().unwrap(),
                ..Faults::default()
            },
            ..Default::default()
        },
        ..RngConfig::turbo()
    })
    .await;
    let settings = BalancerSettings {
        outlier: OutlierSettings {
            interval: Duration::from_millis(300),
            failure_percent: 50,
            min_calls: 3,
            ejection: Duration::from_secs(1),
            max_ejected_percent: 50,
        },
        retry: RetrySettings {
            budget_percent: 100,
            ..RetrySettings::default()
        },
        ..BalancerSettings::default()
    };
    let mut registry = Registry::default();
    let (rng, _) = client(&[&good, &also_good, &failing], settings, &mut registry);
    let address = failing.addr.to_string();
    let ejected = |rng: &BalancedRng| {
        rng.balancer()
            .replica_states()
            .iter()
            .any(|state| state.address == address && state.ejected)
    };
    let (stop, calls) = keep_calling(&rng);
    let out = wait_until(
        "the failing replica ejected",
        Duration::from_secs(2),
        || ejected(&rng),
    )
    .await;
    let back = wait_until("its return", Duration::from_secs(3), || !ejected(&rng)).await;
    eprintln!("ejected after {out:?}, back {back:?} later");
    assert!(
        back >= Duration::from_millis(900),
        "back after {back:?}, not its 1 s"
    );
    // Back, it fails again: ejected again within the interval.
    wait_until("a second ejection", Duration::from_secs(2), || {
        ejected(&rng)
    })
    .await;
    stop.send(true).unwrap();
    assert_eq!(
        calls.await.unwrap(),
        0,
        "a call failed: its retry should have saved it"
    );
    let ejections = counter(registry, "rpc_client_ejections", r#"reason="failure_rate""#);
    assert!(ejections >= 2, "{ejections} ejections counted");
    for server in [good, also_good, failing] {
        server.stop().await.unwrap();
    }
}

/// The pool's deadline travels with each call: a classroom rng (one lane,
/// 100 ms) with six calls queued and a 250 ms deadline serves the two that
/// fit and drops the others unserved (DEADLINE_EXCEEDED), so its queue is
/// empty again at once.
#[tokio::test]
async fn deadlines_travel_with_the_calls_and_rng_drops_what_cannot_fit() {
    let rng_server = spawn_rng(RngConfig::classroom()).await;
    let settings = BalancerSettings {
        call_timeout: Duration::from_millis(250),
        ..BalancerSettings::default()
    };
    let (rng, _) = client(&[&rng_server], settings, &mut Registry::default());
    let results = load(&rng, 6, 1).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let late = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == tonic::Code::DeadlineExceeded))
        .count();
    assert_eq!((ok, late), (2, 4), "{results:?}");
    // What rng says it served is what the client received.
    let (_, _, metrics) = crate::support::http1(rng_server.addr, "GET", "/metrics", "").await;
    let metrics = String::from_utf8_lossy(&metrics);
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not in\n{metrics}"))
            .to_owned()
    };
    assert!(
        line("rng_lane_queue_depth").ends_with(" 0"),
        "{}",
        line("rng_lane_queue_depth")
    );
    assert_eq!(
        served_on(&rng.balancer().served(), rng_server.addr.port()),
        2
    );
    rng_server.stop().await.unwrap();
}

/// A rolling restart under load: each of three rng replicas in turn stops
/// (NOT_SERVING, the lame-duck notice, its in-flight calls drained) and a
/// new one starts on the same port. A worker mining all along loses no
/// unit of work, and every replica serves again at the end.
#[tokio::test]
async fn a_rolling_restart_loses_no_unit_of_work() {
    let redis = RedisServer::start().await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], restartable_port())))
        .collect();
    let mut replicas = Vec::new();
    for addr in &addrs {
        replicas.push(spawn_rng_on(*addr, RngConfig::turbo()).await);
    }
    let servers: Vec<&Spawned> = replicas.iter().collect();
    let (rng, _) = client(
        &servers,
        BalancerSettings::default(),
        &mut Registry::default(),
    );
    let hasher_client = BalancedHasher::new(&hasher.url(), &BalancerSettings::default()).unwrap();
    let store = Store::redis(&redis.url(), Duration::from_millis(500)).unwrap();
    let config = WorkerConfig {
        delay: Duration::ZERO,
        concurrency: 6,
        batch: 0,
        wallet_cap: 0,
        pace: None,
    };
    let worker = RunningWorker::with_backends(config, rng.clone(), hasher_client, store);
    redis.wait_for_hashes(100, Duration::from_secs(10)).await;

    for (n, addr) in addrs.iter().enumerate() {
        replicas.remove(n).stop().await.unwrap();
        replicas.insert(n, spawn_rng_on(*addr, RngConfig::turbo()).await);
        let before = redis.hashes().await;
        redis
            .wait_for_hashes(before + 100, Duration::from_secs(10))
            .await;
    }
    // Every new replica gets calls again.
    let served = rng.balancer().served();
    let before: Vec<u64> = addrs.iter().map(|a| served_on(&served, a.port())).collect();
    wait_until(
        "calls on every restarted replica",
        Duration::from_secs(10),
        || {
            let served = rng.balancer().served();
            addrs
                .iter()
                .zip(&before)
                .all(|(a, was)| served_on(&served, a.port()) > *was)
        },
    )
    .await;

    let report = worker.stop().await;
    assert_eq!(
        rng.balancer().failures(),
        0,
        "a unit of work failed during the restart"
    );
    assert_eq!(report.hashes_done, report.hashes_flushed);
    assert_eq!(redis.hashes().await, report.hashes_done);
    for replica in replicas {
        replica.stop().await.unwrap();
    }
    hasher.stop().await.unwrap();
}

/// One call at a time, least_request has nothing to compare (no replica
/// ever has a call in flight when the next is picked) and spreads evenly;
/// ewma learns from the answers themselves and sends the fast replica at
/// least twice the calls of one three times slower.
#[tokio::test]
async fn one_call_at_a_time_ewma_still_finds_the_fast_replica() {
    let ewma = fast_over_slow(Policy::Ewma, 1, 60).await;
    assert!(ewma >= 2.0, "ewma: fast/slow = {ewma:.2}");
    let least_request = fast_over_slow(Policy::LeastRequest, 1, 60).await;
    assert!(
        (0.33..=3.0).contains(&least_request),
        "least_request, one at a time: fast/slow = {least_request:.2}"
    );
}

/// A replica whose lane is full refuses at once with RESOURCE_EXHAUSTED and
/// a pushback: the pool sends the call to another replica (the caller sees
/// no failure) and sets the refusing one aside for the pause it asked for.
#[tokio::test]
async fn a_full_lane_sends_calls_elsewhere_for_the_pause_it_asks() {
    // One lane of 2 s and no queue: busy with one call, it refuses the next.
    let busy = spawn_rng(one_lane_no_queue(Duration::from_secs(2))).await;
    let free = spawn_rng(RngConfig::turbo()).await;
    let mut registry = Registry::default();
    let (rng, _) = client(&[&busy, &free], BalancerSettings::default(), &mut registry);
    let mut holder = crate::support::rng_client(&busy).await;
    let holding = tokio::spawn(async move { holder.generate(GenerateRequest { size: 32 }).await });
    wait_for_a_call_in_rngs_lane(busy.addr, Duration::from_secs(2)).await;
    let started = Instant::now();
    for _ in 0..4 {
        rng.generate(32)
            .await
            .expect("sent to the free replica instead");
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once and sent elsewhere, not queued: {:?}",
        started.elapsed()
    );
    assert_eq!(
        counter(registry, "rpc_client_ejections", "reason=\"pushback\""),
        1
    );
    holding.abort();
}
