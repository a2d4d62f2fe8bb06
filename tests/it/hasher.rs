//! hasher over gRPC and legacy HTTP: digests, batches, concurrency, bad input.

use crate::support::{
    assert_pushed_back, assert_told_to_retry, hasher_client, http1, sha256_hex, spawn_hasher,
};
use dockercoins::{
    hasher::HasherConfig,
    hasher::HasherService,
    pb::{HashBatch, HashRequest, hasher_server::Hasher},
    protocol::DIGEST_BYTES,
    server::limits::{MAX_BATCH_BLOCKS, MAX_BLOCK_BYTES},
};
use std::time::Duration;
use tokio::{sync::mpsc, task::JoinSet, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};

#[tokio::test]
async fn hash_returns_lowercase_hex_sha256() {
    let server = spawn_hasher(HasherConfig::turbo()).await;
    let mut client = hasher_client(&server).await;
    for data in [&b"hello"[..], b"", &[0xff; 4096]] {
        let hex = client
            .hash(HashRequest {
                data: data.to_vec().into(),
            })
            .await
            .unwrap()
            .into_inner()
            .hex;
        assert_eq!(hex, sha256_hex(data));
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn hash_stream_answers_each_batch_in_order() {
    let server = spawn_hasher(HasherConfig::turbo()).await;
    let mut client = hasher_client(&server).await;
    let (tx, rx) = mpsc::channel(8);
    let mut replies = client
        .hash_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for round in 0..3u8 {
        let blocks: Vec<u8> = (0..32 * 1000).map(|i| (i % 251) as u8 ^ round).collect();
        tx.send(HashBatch {
            size: 32,
            blocks: blocks.clone().into(),
        })
        .await
        .unwrap();
        let digests = replies.message().await.unwrap().unwrap().digests;
        assert_eq!(digests.len(), 1000 * DIGEST_BYTES);
        for (block, digest) in blocks.chunks(32).zip(digests.chunks(DIGEST_BYTES)) {
            assert_eq!(hex::encode(digest), sha256_hex(block));
        }
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_batches_end_the_stream_with_invalid_argument() {
    let server = spawn_hasher(HasherConfig::turbo()).await;
    let mut client = hasher_client(&server).await;
    let bad = [
        HashBatch {
            size: 0,
            blocks: vec![1; 10].into(),
        },
        HashBatch {
            size: 32,
            blocks: vec![1; 33].into(),
        },
        HashBatch {
            size: 1,
            blocks: vec![1; MAX_BATCH_BLOCKS + 1].into(),
        },
    ];
    for batch in bad {
        let (tx, rx) = mpsc::channel(1);
        tx.send(batch).await.unwrap();
        let mut replies = client
            .hash_stream(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let status = replies.message().await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_over_the_limit_is_a_grpc_error_not_a_crash() {
    let server = spawn_hasher(HasherConfig::turbo()).await;
    let mut client = hasher_client(&server).await;
    let status = client
        .hash(HashRequest {
            data: vec![7; MAX_BLOCK_BYTES + 64 * 1024].into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    // The largest allowed block still works, on the same connection.
    let data = vec![7; MAX_BLOCK_BYTES];
    let hex = client
        .hash(HashRequest {
            data: data.clone().into(),
        })
        .await
        .unwrap()
        .into_inner()
        .hex;
    assert_eq!(hex, sha256_hex(&data));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn legacy_routes_answer_like_the_original() {
    let server = spawn_hasher(HasherConfig::turbo()).await;
    let (status, _, body) = http1(server.addr, "GET", "/", "").await;
    assert_eq!(status, 200);
    assert!(body.starts_with(b"HASHER running on "));

    let (status, headers, body) = http1(server.addr, "POST", "/", "hello").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(body, sha256_hex(b"hello").as_bytes());

    let (status, _, _) = http1(server.addr, "POST", "/", vec![0u8; MAX_BLOCK_BYTES + 1]).await;
    assert_eq!(status, 413);
    let (status, _, body) = http1(server.addr, "POST", "/", vec![0u8; MAX_BLOCK_BYTES]).await;
    assert_eq!(status, 200);
    assert_eq!(body, sha256_hex(&vec![0u8; MAX_BLOCK_BYTES]).as_bytes());
    server.stop().await.unwrap();
}

/// hasher pays its delay per request but serves requests concurrently.
#[tokio::test(start_paused = true)]
async fn classroom_hasher_serves_requests_concurrently() {
    let service = HasherService::new(&HasherConfig::classroom());
    let start = Instant::now();
    let mut calls = JoinSet::new();
    for _ in 0..5 {
        let service = service.clone();
        calls.spawn(async move {
            service
                .hash(Request::new(HashRequest {
                    data: b"x".to_vec().into(),
                }))
                .await
                .unwrap();
        });
    }
    calls.join_all().await;
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

/// The same over real sockets, with a bound far from any race: five 200 ms
/// calls in a row would take a second; overlapping, they take about 200 ms.
#[tokio::test]
async fn hasher_calls_overlap_over_the_network() {
    let config = HasherConfig {
        delay: Duration::from_millis(200),
        ..HasherConfig::classroom()
    };
    let server = spawn_hasher(config).await;
    let client = hasher_client(&server).await;
    let start = std::time::Instant::now();
    let mut calls = JoinSet::new();
    for _ in 0..5 {
        let mut client = client.clone();
        calls.spawn(async move {
            client
                .hash(HashRequest {
                    data: b"x".to_vec().into(),
                })
                .await
                .unwrap();
        });
    }
    calls.join_all().await;
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(200));
    assert!(took < Duration::from_millis(900), "took {took:?}");
    server.stop().await.unwrap();
}

/// hasher's work budget: past it a request is refused at once, gRPC and
/// HTTP alike, told to come back after one delay, and served again once
/// the work in flight is done. A budget of 1 MiB is one maximal request.
#[tokio::test(start_paused = true)]
async fn a_spent_work_budget_refuses_at_once_and_serves_again_once_done() {
    use tower::ServiceExt;
    let service = HasherService::new(&HasherConfig {
        max_work_mib: 1,
        ..HasherConfig::classroom()
    });
    let start = Instant::now();
    let big = {
        let service = service.clone();
        tokio::spawn(async move {
            service
                .hash(Request::new(HashRequest {
                    data: vec![7; MAX_BLOCK_BYTES].into(),
                }))
                .await
        })
    };
    tokio::task::yield_now().await;
    let small = || {
        Request::new(HashRequest {
            data: b"x".to_vec().into(),
        })
    };
    let refused = service.hash(small()).await.unwrap_err();
    assert_pushed_back(&refused, "100");
    let response = service
        .legacy_routes("test".into())
        .oneshot(
            axum::http::Request::post("/")
                .body(axum::body::Body::from("hello"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_told_to_retry(&response, "1");
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "refused at once, not after a wait"
    );
    big.await
        .unwrap()
        .expect("the request in the budget is served");
    service
        .hash(small())
        .await
        .expect("served again once the work is done");
    assert_eq!(start.elapsed(), Duration::from_millis(200));
}
