//! `dockercoins up`: the whole mesh in one process, with its own private
//! redis-server, serving `/json` with growing hashes; its last replica with
//! settings of its own; and rolling restarts of its backends while the
//! workers mine.

use dockercoins::{
    client::balancer::BalancerSettings,
    hasher::HasherConfig,
    pb::{
        GenerateRequest, InfoRequest, replica_client::ReplicaClient as ReplicaStub,
        rng_client::RngClient as RngStub,
    },
    rng::RngConfig,
    up::{
        Listeners, UpConfig,
        replica::ReplicaSettings,
        restart::{RestartRequests, RestartTrigger, restart_channel},
    },
    worker::WorkerConfig,
};
use serde_json::Value;
use std::{net::SocketAddr, time::Duration};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn hashes(webui: std::net::SocketAddr) -> u64 {
    let (status, _, body) = crate::support::http1(webui, "GET", "/json", "").await;
    assert_eq!(status, 200, "{body:?}");
    let score: Value = serde_json::from_slice(&body).unwrap();
    score["hashes"].as_u64().unwrap()
}

/// One turbo worker in batches of 256, turbo backends, the private
/// redis-server (none given), a short connect bound.
fn turbo_up() -> UpConfig {
    UpConfig {
        workers: 1,
        rng: RngConfig::turbo(),
        hasher: HasherConfig::turbo(),
        rng_last_replica: ReplicaSettings::default(),
        hasher_last_replica: ReplicaSettings::default(),
        worker: WorkerConfig {
            batch: 256,
            concurrency: 1,
            ..WorkerConfig::turbo()
        },
        balancer: BalancerSettings {
            connect_timeout: Duration::from_millis(500),
            ..BalancerSettings::default()
        },
        redis_timeout: Duration::from_millis(500),
        redis_url: None,
    }
}

#[tokio::test]
async fn up_runs_the_mesh_and_json_grows() {
    let listeners = Listeners {
        rng: vec![
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ],
        hasher: vec![TcpListener::bind("127.0.0.1:0").await.unwrap()],
        webui: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let webui = listeners.webui.local_addr().unwrap();
    // The private redis-server path (redis-server is on PATH in CI).
    let config = UpConfig {
        workers: 2,
        balancer: BalancerSettings::default(),
        ..turbo_up()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let up = tokio::spawn(dockercoins::up::run(
        config,
        listeners,
        RestartRequests::none(),
        async {
            let _ = stopped.await;
        },
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let now = hashes(webui).await;
        if seen.last().is_none_or(|&last| now > last) {
            seen.push(now);
        }
        // Two rises seen: the workers mine and the counter moves.
        if seen.len() >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hashes did not grow: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both rng replicas serve: the workers balance over them.
    let (status, _, body) = crate::support::http1(webui, "GET", "/api/status", "").await;
    assert_eq!(status, 200);
    let report: Value = serde_json::from_slice(&body).unwrap();
    let replicas = report["rng"]["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{report}");
    for replica in replicas {
        assert_eq!(replica["status"], "SERVING", "{report}");
        assert!(
            replica["calls"].as_u64().unwrap() > 0,
            "idle replica: {report}"
        );
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(3), up)
        .await
        .expect("up did not stop within 3 s")
        .unwrap()
        .unwrap();
}

/// `up` running in this test, on port 0 everywhere.
struct RunningUp {
    rng: Vec<SocketAddr>,
    hasher: Vec<SocketAddr>,
    webui: SocketAddr,
    restart: RestartTrigger,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), dockercoins::up::UpError>>,
}

impl RunningUp {
    /// Turbo backends (changed by `config`), one batch worker, the
    /// in-process store: the fastest mesh to start and to stop.
    async fn start(rng: usize, config: impl FnOnce(&mut UpConfig)) -> Self {
        let mut listeners = Listeners {
            rng: Vec::new(),
            hasher: vec![TcpListener::bind("127.0.0.1:0").await.unwrap()],
            webui: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        for _ in 0..rng {
            listeners
                .rng
                .push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs = |l: &[TcpListener]| -> Vec<SocketAddr> {
            l.iter().map(|l| l.local_addr().unwrap()).collect()
        };
        let (rng, hasher) = (addrs(&listeners.rng), addrs(&listeners.hasher));
        let webui = listeners.webui.local_addr().unwrap();
        let mut up = turbo_up();
        config(&mut up);
        let (restart, restarts) = restart_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(dockercoins::up::run(up, listeners, restarts, async {
            let _ = stopped.await;
        }));
        Self {
            rng,
            hasher,
            webui,
            restart,
            stop,
            task,
        }
    }

    /// Waits (bounded) until `/json` counts more than `than` hashes.
    async fn hashes_above(&self, than: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = hashes(self.webui).await;
            if now > than {
                return now;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "hashes stayed at {now}, not above {than}, for 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("up did not stop within 5 s")
            .unwrap()
            .unwrap();
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
}

/// The last rng replica runs its own settings (slower, and saying what it
/// injects); the others run the common ones.
#[tokio::test]
async fn the_last_replica_runs_settings_of_its_own() {
    let last = ReplicaSettings::parse_rng("delay-ms=200,extra-delay=100%=50ms").unwrap();
    let up = RunningUp::start(2, |config| config.rng_last_replica = last).await;
    let info = |addr| async move {
        ReplicaStub::new(channel(addr).await)
            .info(InfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .faults
    };
    assert_eq!(info(up.rng[0]).await, "");
    assert_eq!(info(up.rng[1]).await, "+50ms for 100%");
    let timed = |addr| async move {
        let mut client = RngStub::new(channel(addr).await);
        let begun = std::time::Instant::now();
        client.generate(GenerateRequest { size: 32 }).await.unwrap();
        begun.elapsed()
    };
    let slow = timed(up.rng[1]).await;
    assert!(
        slow >= Duration::from_millis(250),
        "the last replica: {slow:?}"
    );
    up.hashes_above(0).await;
    up.stop().await;
}

/// A rolling restart while the worker mines: rng's replicas, then hasher's,
/// one at a time, each NOT_SERVING first (a watcher hears it), each back on
/// its own port; the worker mines on afterwards.
#[tokio::test]
async fn a_rolling_restart_brings_every_replica_back_on_its_port() {
    let up = RunningUp::start(3, |_| {}).await;
    let before = up.hashes_above(0).await;
    // A watcher of the second replica, as a health-checking client would.
    let mut watch = crate::support::watch_rng_health(channel(up.rng[1]).await).await;
    let report = tokio::time::timeout(Duration::from_secs(30), up.restart.restart())
        .await
        .expect("the rolling restart did not end within 30 s")
        .expect("up is running");
    let order: Vec<_> = report
        .restarted
        .iter()
        .map(|r| (r.service, r.replica, r.addr))
        .collect();
    assert_eq!(
        order,
        [
            ("rng", 1, up.rng[0]),
            ("rng", 2, up.rng[1]),
            ("rng", 3, up.rng[2]),
            ("hasher", 1, up.hasher[0]),
        ]
    );
    for restarted in &report.restarted {
        println!("{restarted:?}");
        // The lame duck at least: stopped gracefully, not killed.
        assert!(
            restarted.took >= dockercoins::server::DRAIN_NOTICE,
            "{restarted:?}"
        );
    }
    // The watcher heard the replica go NOT_SERVING before it went.
    let heard = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the watch neither heard nor ended");
    assert!(
        matches!(&heard, Ok(Some(m)) if m.status() == ServingStatus::NotServing),
        "{heard:?}"
    );
    // Every replica serves again on its port, health SERVING.
    for &addr in up.rng.iter() {
        let channel = channel(addr).await;
        RngStub::new(channel.clone())
            .generate(GenerateRequest { size: 32 })
            .await
            .unwrap();
        let health = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(health.status(), ServingStatus::Serving, "{addr}");
    }
    // And the worker mines on.
    let after = hashes(up.webui).await;
    up.hashes_above(after.max(before)).await;
    up.stop().await;
}
