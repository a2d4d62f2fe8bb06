//! rng over gRPC and legacy HTTP: sizes, streams, the classroom lane, bad input.

use crate::support::{assert_pushed_back, assert_told_to_retry, http1, rng_client, spawn_rng};
use dockercoins::{
    pb::{GenerateRequest, GenerateStreamRequest, rng_server::Rng},
    rng::RngConfig,
    rng::RngService,
    server::limits::{MAX_BLOCK_BYTES, MAX_STREAM_BLOCKS},
};
use std::time::Duration;
use tokio::{task::JoinSet, time::Instant};
use tonic::{Code, Request};
use tower::ServiceExt;

#[tokio::test]
async fn generate_returns_the_asked_number_of_random_bytes() {
    let server = spawn_rng(RngConfig::turbo()).await;
    let mut client = rng_client(&server).await;
    let a = client
        .generate(GenerateRequest { size: 32 })
        .await
        .unwrap()
        .into_inner()
        .data;
    let b = client
        .generate(GenerateRequest { size: 32 })
        .await
        .unwrap()
        .into_inner()
        .data;
    assert_eq!(a.len(), 32);
    assert_ne!(a, b, "two draws of 32 random bytes were equal");
    let big = client
        .generate(GenerateRequest {
            size: MAX_BLOCK_BYTES as u32,
        })
        .await
        .unwrap()
        .into_inner()
        .data;
    assert_eq!(big.len(), MAX_BLOCK_BYTES);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn generate_stream_sends_count_blocks_batched_in_few_messages() {
    let server = spawn_rng(RngConfig::turbo()).await;
    let mut client = rng_client(&server).await;
    let mut stream = client
        .generate_stream(GenerateStreamRequest {
            size: 32,
            count: 10_000,
        })
        .await
        .unwrap()
        .into_inner();
    let (mut blocks, mut messages) = (0, 0);
    while let Some(message) = stream.message().await.unwrap() {
        assert_eq!(message.size, 32);
        assert_eq!(message.blocks.len() % 32, 0);
        assert!(!message.blocks.is_empty());
        blocks += message.blocks.len() / 32;
        messages += 1;
    }
    assert_eq!(blocks, 10_000);
    assert!(
        messages <= 10,
        "{messages} messages for 10,000 blocks: not batched"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_sizes_and_counts_are_invalid_argument() {
    let server = spawn_rng(RngConfig::turbo()).await;
    let mut client = rng_client(&server).await;
    for size in [0, MAX_BLOCK_BYTES as u32 + 1, u32::MAX] {
        let status = client.generate(GenerateRequest { size }).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "size {size}");
        assert!(status.message().contains("size must be between 1 and"));
    }
    for (size, count) in [
        (32, 0),
        (32, MAX_STREAM_BLOCKS as u32 + 1),
        (0, 10),
        (MAX_BLOCK_BYTES as u32, 1000),
    ] {
        let status = client
            .generate_stream(GenerateStreamRequest { size, count })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "size {size} count {count}"
        );
    }
    // Still serving after all that.
    client.generate(GenerateRequest { size: 8 }).await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn legacy_routes_answer_like_the_original() {
    let server = spawn_rng(RngConfig::turbo()).await;
    let (status, _, body) = http1(server.addr, "GET", "/", "").await;
    assert_eq!(status, 200);
    let banner = String::from_utf8(body.to_vec()).unwrap();
    assert!(banner.starts_with("RNG running on "), "{banner:?}");
    assert!(banner.ends_with('\n'));

    let (status, headers, body) = http1(server.addr, "GET", "/32", "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert_eq!(body.len(), 32);

    for path in ["/abc", "/99999999999", "/0", "/-1", "/1048577"] {
        let (status, _, body) = http1(server.addr, "GET", path, "").await;
        assert_eq!(status, 400, "{path}");
        let reason = String::from_utf8(body.to_vec()).unwrap();
        assert_eq!(reason.lines().count(), 1, "{path}: {reason:?}");
        assert!(reason.contains("size must be"), "{path}: {reason:?}");
    }
    let (status, _, _) = http1(server.addr, "GET", "/nope/deeper", "").await;
    assert_eq!(status, 404);
    let (status, _, _) = http1(server.addr, "POST", "/32", "x").await;
    assert_eq!(status, 405);
    server.stop().await.unwrap();
}

/// The lesson of the lab: with one lane, N concurrent requests take N delays
/// in all, served one after the other. Paused clock: exact and instant.
#[tokio::test(start_paused = true)]
async fn classroom_lane_serves_one_request_at_a_time() {
    let service = RngService::new(&RngConfig::classroom());
    let start = Instant::now();
    let mut calls = JoinSet::new();
    for _ in 0..5 {
        let service = service.clone();
        calls.spawn(async move {
            service
                .generate(Request::new(GenerateRequest { size: 32 }))
                .await
                .unwrap();
            start.elapsed()
        });
    }
    let mut done: Vec<_> = calls.join_all().await;
    done.sort();
    let expected: Vec<_> = (1..=5).map(|n| Duration::from_millis(100 * n)).collect();
    assert_eq!(done, expected);
}

#[tokio::test(start_paused = true)]
async fn unlimited_lanes_serve_requests_together() {
    let config = RngConfig {
        lanes: None,
        ..RngConfig::classroom()
    };
    let service = RngService::new(&config);
    let start = Instant::now();
    let mut calls = JoinSet::new();
    for _ in 0..5 {
        let service = service.clone();
        calls.spawn(async move {
            service
                .generate(Request::new(GenerateRequest { size: 32 }))
                .await
                .unwrap();
        });
    }
    calls.join_all().await;
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

/// A streamed batch pays the delay once per message, in the lane.
#[tokio::test(start_paused = true)]
async fn a_streamed_batch_pays_the_delay_per_message() {
    let service = RngService::new(&RngConfig::classroom());
    let start = Instant::now();
    // 64 KiB blocks: one block per message, so 3 messages.
    let mut stream = service
        .generate_stream(Request::new(GenerateStreamRequest {
            size: 64 * 1024,
            count: 3,
        }))
        .await
        .unwrap()
        .into_inner();
    let mut arrivals = Vec::new();
    while let Some(message) = tokio_stream::StreamExt::next(&mut stream).await {
        message.unwrap();
        arrivals.push(start.elapsed());
    }
    let expected: Vec<_> = (1..=3).map(|n| Duration::from_millis(100 * n)).collect();
    assert_eq!(arrivals, expected);
}

/// `n` Generate calls of 32 bytes, spawned: each takes its place in the
/// lane at the test's next yield, and must be served.
fn calls_in_the_lane(service: &RngService, n: usize) -> JoinSet<()> {
    let mut calls = JoinSet::new();
    for _ in 0..n {
        let service = service.clone();
        calls.spawn(async move {
            service
                .generate(Request::new(GenerateRequest { size: 32 }))
                .await
                .unwrap();
        });
    }
    calls
}

/// The legacy `GET /`, through the service's own router.
async fn get_index(service: &RngService) -> axum::response::Response {
    service
        .legacy_routes("test".into())
        .oneshot(
            axum::http::Request::get("/")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap()
}

/// `GET /` is cheap but waits in the same lane as the gRPC calls, so httping
/// shows the queue the workers are in.
#[tokio::test(start_paused = true)]
async fn legacy_index_waits_in_the_lane_behind_grpc_calls() {
    let service = RngService::new(&RngConfig::classroom());
    let start = Instant::now();
    let calls = calls_in_the_lane(&service, 3);
    // Let the three calls take their places in the queue first.
    tokio::task::yield_now().await;
    let response = get_index(&service).await;
    assert_eq!(response.status(), 200);
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    calls.join_all().await;
}

/// The same lesson over real sockets, with bounds that cannot flake: one lane
/// can never serve 4 requests of 50 ms in less than 200 ms.
#[tokio::test]
async fn the_lane_holds_over_the_network_whichever_protocol() {
    let config = RngConfig {
        delay: Duration::from_millis(50),
        lanes: Some(1),
        ..RngConfig::classroom()
    };
    let server = spawn_rng(config).await;
    let client = rng_client(&server).await;
    let start = std::time::Instant::now();
    let mut calls = JoinSet::new();
    for _ in 0..3 {
        let mut client = client.clone();
        calls.spawn(async move {
            client.generate(GenerateRequest { size: 32 }).await.unwrap();
        });
    }
    let addr = server.addr;
    calls.spawn(async move {
        let (status, _, body) = http1(addr, "GET", "/32", "").await;
        assert_eq!((status.as_u16(), body.len()), (200, 32));
    });
    calls.join_all().await;
    assert!(start.elapsed() >= Duration::from_millis(200));
    server.stop().await.unwrap();
}

/// A full queue refuses at once, gRPC and HTTP alike, says when to ask
/// again (the time the queue takes to drain), and the lane serves again
/// once it has drained: an overloaded rng tells its callers to back off
/// instead of answering nobody in time.
#[tokio::test(start_paused = true)]
async fn a_full_lane_refuses_at_once_and_serves_again_once_drained() {
    // One lane of 100 ms, two places in its queue.
    let config = RngConfig {
        queue: 2,
        ..RngConfig::classroom()
    };
    let service = RngService::new(&config);
    let start = Instant::now();
    let calls = calls_in_the_lane(&service, 3);
    // Let the three calls take the lane and the two places first.
    tokio::task::yield_now().await;
    let refused = service
        .generate(Request::new(GenerateRequest { size: 32 }))
        .await
        .unwrap_err();
    // The two waiting and the one served: 3 turns of 100 ms.
    assert_pushed_back(&refused, "300");
    let response = get_index(&service).await;
    assert_told_to_retry(&response, "1");
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "refused at once, not after a wait"
    );
    calls.join_all().await;
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    service
        .generate(Request::new(GenerateRequest { size: 32 }))
        .await
        .expect("served again once the queue drained");
    assert_eq!(start.elapsed(), Duration::from_millis(400));
}
