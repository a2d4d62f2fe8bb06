//! Client-side balancing over replicas, without real DNS: an injected
//! resolver answers what the test says, while a worker mines against three
//! rng servers. And the system resolver, on a name that resolves to loopback.

use crate::support::{
    RedisServer, RunningWorker, Spawned, generate_through, spawn_hasher, spawn_rng,
};
use dockercoins::{
    client::balancer::{BalancerSettings, Policy, Resolver},
    client::{BalancedHasher, BalancedRng},
    hasher::HasherConfig,
    rng::RngConfig,
    store::Store,
    worker::WorkerConfig,
};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

const PERIOD: Duration = Duration::from_millis(500);

/// A resolver that answers the list the test holds.
fn resolver(addrs: &Arc<Mutex<Vec<SocketAddr>>>) -> Resolver {
    let addrs = addrs.clone();
    Arc::new(move |_host, _port| {
        let answer = addrs.lock().unwrap().clone();
        Box::pin(async move { Ok(answer) })
    })
}

/// Three turbo rng servers, and the address list a resolver will answer.
async fn three_rng_replicas() -> (Vec<Spawned>, Arc<Mutex<Vec<SocketAddr>>>) {
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(spawn_rng(RngConfig::turbo()).await);
    }
    let addrs = replicas.iter().map(|r: &Spawned| r.addr).collect();
    (replicas, Arc::new(Mutex::new(addrs)))
}

/// `calls` Rng/Generate calls through the client, one after the other.
async fn generate(rng: &BalancedRng, calls: usize) {
    for _ in 0..calls {
        generate_through(rng).await.unwrap();
    }
}

fn settings(policy: Policy) -> BalancerSettings {
    BalancerSettings {
        policy,
        resolve_interval: PERIOD,
        connect_timeout: Duration::from_millis(500),
        ..BalancerSettings::default()
    }
}

/// Calls served so far by the replica listening on `port`.
fn served_on(served: &BTreeMap<String, u64>, port: u16) -> u64 {
    served
        .iter()
        .filter(|(who, _)| who.ends_with(&format!(":{port}")))
        .map(|(_, n)| n)
        .sum()
}

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn unary() -> WorkerConfig {
    WorkerConfig {
        delay: Duration::ZERO,
        concurrency: 6,
        batch: 0,
        wallet_cap: 0,
        pace: None,
    }
}

#[tokio::test]
async fn balanced_calls_spread_follow_the_replicas_and_survive_a_dead_one() {
    let redis = RedisServer::start().await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let (mut replicas, addrs) = three_rng_replicas().await;
    // The name in the URL is never looked up: the resolver answers.
    let rng = BalancedRng::with_resolver(
        "http://rng:8001",
        &settings(Policy::RoundRobin),
        resolver(&addrs),
    )
    .unwrap();
    let hasher_backend = BalancedHasher::new(&hasher.url(), &BalancerSettings::default()).unwrap();
    let store = Store::redis(&redis.url(), Duration::from_millis(500)).unwrap();
    let worker = RunningWorker::with_backends(unary(), rng.clone(), hasher_backend, store);

    // 1. Every replica gets a fair share: a third each, within 10 points.
    wait_until("600 calls", Duration::from_secs(30), || {
        rng.balancer().served().values().sum::<u64>() >= 600
    })
    .await;
    let served = rng.balancer().served();
    let total: u64 = served.values().sum();
    for replica in &replicas {
        let share = served_on(&served, replica.addr.port()) as f64 / total as f64;
        assert!(
            (0.23..=0.43).contains(&share),
            "share {share:.2} for {}: {served:?}",
            replica.addr
        );
    }

    // 2. A replica dies but stays in "DNS": it stops getting calls, and no
    // unit of work fails (the call is retried on another replica).
    let dead = replicas.remove(2);
    let dead_port = dead.addr.port();
    dead.stop().await.unwrap();
    let failures = rng.balancer().failures();
    let before = rng.balancer().served();
    wait_until("300 more calls", Duration::from_secs(30), || {
        rng.balancer().served().values().sum::<u64>() >= before.values().sum::<u64>() + 300
    })
    .await;
    // At most the calls it already had in flight when it stopped (their
    // replies may land after the snapshot); no new ones.
    let late = served_on(&rng.balancer().served(), dead_port) - served_on(&before, dead_port);
    assert!(
        late <= unary().concurrency as u64,
        "{late} calls on the dead replica"
    );
    assert_eq!(
        rng.balancer().failures(),
        failures,
        "a unit of work failed on the dead replica"
    );

    // 3. DNS drops the dead one and lists a new replica: it gets calls within
    // two resolution periods.
    let fresh = spawn_rng(RngConfig::turbo()).await;
    let fresh_port = fresh.addr.port();
    *addrs.lock().unwrap() = vec![replicas[0].addr, replicas[1].addr, fresh.addr];
    let listed = std::time::Instant::now();
    wait_until(
        "calls on the new replica",
        2 * PERIOD + Duration::from_millis(200),
        || served_on(&rng.balancer().served(), fresh_port) > 0,
    )
    .await;
    eprintln!("new replica served after {:?}", listed.elapsed());
    assert!(
        !rng.balancer()
            .replicas()
            .contains(&format!("127.0.0.1:{dead_port}"))
    );

    let report = worker.stop().await;
    assert_eq!(report.hashes_done, report.hashes_flushed);
    assert_eq!(redis.hashes().await, report.hashes_done);
    for replica in replicas {
        replica.stop().await.unwrap();
    }
    fresh.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

/// The naive client: one connection, every call to the replica it reached,
/// whatever the name resolves to.
#[tokio::test]
async fn pinned_stays_on_one_replica() {
    let (replicas, addrs) = three_rng_replicas().await;
    let rng = BalancedRng::with_resolver(
        &replicas[0].url(),
        &settings(Policy::Pinned),
        resolver(&addrs),
    )
    .unwrap();
    generate(&rng, 60).await;
    let served = rng.balancer().served();
    assert_eq!(served.len(), 1, "{served:?}");
    assert_eq!(served_on(&served, replicas[0].addr.port()), 60);
    for replica in replicas {
        replica.stop().await.unwrap();
    }
}

/// The system resolver, on `localhost`: it resolves, the replica it finds on
/// 127.0.0.1 serves, and an address with nobody listening (`::1`, where the
/// machine has it) is ejected without failing a call.
#[tokio::test]
async fn the_system_resolver_finds_replicas_by_name() {
    let rng_server = spawn_rng(RngConfig::turbo()).await;
    let url = format!("http://localhost:{}", rng_server.addr.port());
    let rng = BalancedRng::new(&url, &settings(Policy::RoundRobin)).unwrap();
    generate(&rng, 20).await;
    assert!(
        rng.balancer()
            .replicas()
            .contains(&rng_server.addr.to_string()),
        "{:?}",
        rng.balancer().replicas()
    );
    assert_eq!(
        served_on(&rng.balancer().served(), rng_server.addr.port()),
        20
    );
    rng_server.stop().await.unwrap();
}
