//! `dockercoins up`: the whole mesh in one process, with its own private
//! redis-server, serving `/json` with growing hashes.

use dockercoins::{
    hasher::HasherConfig,
    pool::PoolSettings,
    rng::RngConfig,
    up::{Listeners, UpConfig},
    worker::WorkerConfig,
};
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpListener;

async fn hashes(webui: std::net::SocketAddr) -> u64 {
    let (status, _, body) = crate::helpers::http1(webui, "GET", "/json", "").await;
    assert_eq!(status, 200, "{body:?}");
    let score: Value = serde_json::from_slice(&body).unwrap();
    score["hashes"].as_u64().unwrap()
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
    let config = UpConfig {
        workers: 2,
        rng: RngConfig::turbo(),
        hasher: HasherConfig::turbo(),
        worker: WorkerConfig {
            batch: 256,
            concurrency: 1,
            ..WorkerConfig::turbo()
        },
        pool: PoolSettings::default(),
        redis_timeout: Duration::from_millis(500),
        // The private redis-server path (redis-server is on PATH in CI).
        redis_url: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let up = tokio::spawn(dockercoins::up::run(config, listeners, async {
        let _ = stopped.await;
    }));
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
    let (status, _, body) = crate::helpers::http1(webui, "GET", "/api/status", "").await;
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
