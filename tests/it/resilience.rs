//! The balancer's lessons beyond spreading calls, against real servers on
//! port 0 found through an injected resolver: least_request against a slow
//! replica, hedging, the retry budget, draining by health watch, outlier
//! ejection, deadlines that travel, and a rolling restart that loses nothing.

use crate::helpers::{Spawned, restartable_port, spawn_rng};
use dockercoins::{
    clients::RngClient,
    metrics::{ClientCalls, Exposition, Registry},
    pool::{Policy, PoolSettings, Resolver, RetrySettings},
    rng::RngConfig,
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
    settings: PoolSettings,
    registry: &mut Registry,
) -> (RngClient, Arc<Mutex<Vec<SocketAddr>>>) {
    let addrs = Arc::new(Mutex::new(servers.iter().map(|s| s.addr).collect()));
    let settings = PoolSettings {
        metrics: ClientCalls::register(registry),
        connect_timeout: Duration::from_millis(500),
        ..settings
    };
    let rng = RngClient::with_resolver("http://rng:8001", &settings, resolver(&addrs)).unwrap();
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
async fn load(rng: &RngClient, callers: usize, calls: usize) -> Vec<Result<usize, tonic::Status>> {
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

/// Of a fast replica and one three times slower, least_request sends the
/// fast one at least twice the calls; round robin, the same number.
#[tokio::test]
async fn least_request_sends_a_fast_replica_at_least_twice_the_calls_of_a_slow_one() {
    let fast = spawn_rng(rng_taking(Duration::from_millis(20))).await;
    let slow = spawn_rng(rng_taking(Duration::from_millis(60))).await;
    for (policy, at_least, at_most) in [
        (Policy::LeastRequest, 2.0, f64::MAX),
        (Policy::RoundRobin, 0.8, 1.25),
    ] {
        let settings = PoolSettings {
            policy,
            ..PoolSettings::default()
        };
        let (rng, _) = client(&[&fast, &slow], settings, &mut Registry::default());
        let results = load(&rng, 16, 20).await;
        assert!(results.iter().all(Result::is_ok), "{policy}: a call failed");
        let served = rng.backend().served();
        let ratio = served_on(&served, fast.addr.port()) as f64
            / served_on(&served, slow.addr.port()).max(1) as f64;
        eprintln!("{policy}: fast/slow = {ratio:.2} {served:?}");
        assert!(
            (at_least..=at_most).contains(&ratio),
            "{policy}: fast/slow = {ratio:.2}, expected {at_least}..={at_most}: {served:?}"
        );
    }
    fast.stop().await.unwrap();
    slow.stop().await.unwrap();
}

/// A call stuck on a slow replica is sent again to the other after the
/// hedging delay, and the first answer wins: no call waits for the slow
/// one, and the hedges are counted.
#[tokio::test]
async fn a_slow_unary_call_is_hedged_on_another_replica() {
    let fast = spawn_rng(RngConfig::turbo()).await;
    let slow = spawn_rng(rng_taking(Duration::from_millis(1500))).await;
    let settings = PoolSettings {
        policy: Policy::RoundRobin,
        retry: RetrySettings {
            hedge_after: Some(Duration::from_millis(50)),
            // Every slow call may be hedged.
            budget_percent: 100,
            ..RetrySettings::default()
        },
        ..PoolSettings::default()
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
    let settings = PoolSettings {
        metrics: ClientCalls::register(&mut registry),
        connect_timeout: Duration::from_millis(200),
        ..PoolSettings::default()
    };
    let rng = RngClient::with_resolver("http://rng:8001", &settings, resolver(&addrs)).unwrap();
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
