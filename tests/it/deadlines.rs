//! Deadlines on the server: a call whose `grpc-timeout` cannot be met is
//! refused with DEADLINE_EXCEEDED, before it is served, and leaves rng's
//! queue; streams are bounded as a whole; HTTP states no deadline.

use crate::support::{hasher_client, http1, metric, rng_client, spawn_hasher, spawn_rng};
use dockercoins::{
    hasher::{HasherConfig, HasherService},
    pb::{
        GenerateRequest, GenerateStreamRequest, HashBatch, HashRequest, hasher_server::Hasher,
        rng_server::Rng,
    },
    rng::{RngConfig, RngService, metrics::RngMetrics},
    telemetry::metrics::{Exposition, Registry},
};
use std::time::Duration;
use tokio::{task::JoinSet, time::Instant};
use tonic::{Code, Request};

fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// One lane of 100 ms, five calls queued at once, each allowed 250 ms: the
/// first two are served (at 100 and 200 ms); the other three could not be
/// (their turn would come at 200 ms at best, and end at 300), so the lane
/// gives them up as soon as that is sure (250 - 100 - 5 ms of margin), and
/// the queue is empty again. Paused clock: exact.
#[tokio::test(start_paused = true)]
async fn the_lane_gives_up_on_calls_it_cannot_serve_in_time() {
    let mut registry = Registry::default();
    let metrics = RngMetrics::register(&mut registry);
    let queue = metrics.lane.queue.clone();
    let service = RngService::measured(&RngConfig::classroom(), metrics);
    let start = Instant::now();
    let mut calls = JoinSet::new();
    for _ in 0..5 {
        let service = service.clone();
        calls.spawn(async move {
            let request = with_timeout(GenerateRequest { size: 32 }, Duration::from_millis(250));
            let result = service.generate(request).await;
            (start.elapsed(), result.map(drop).map_err(|s| s.code()))
        });
    }
    tokio::task::yield_now().await;
    assert_eq!(queue.get(), 4, "four wait behind the first");
    let mut done = calls.join_all().await;
    done.sort_by_key(|(at, _)| *at);
    let ms = Duration::from_millis;
    assert_eq!(
        done,
        [
            (ms(100), Ok(())),
            (ms(145), Err(Code::DeadlineExceeded)),
            (ms(145), Err(Code::DeadlineExceeded)),
            (ms(145), Err(Code::DeadlineExceeded)),
            (ms(200), Ok(())),
        ]
    );
    assert_eq!(queue.get(), 0, "the calls given up left the queue");
    let text = Exposition::new(registry).encode();
    assert!(
        text.contains(r#"rng_deadline_expired_total{stage="waiting"} 3"#),
        "{text}"
    );
    // A call without a deadline still waits as long as it takes.
    let request = Request::new(GenerateRequest { size: 32 });
    service.generate(request).await.unwrap();
}

/// Over the network, with tonic's own timer running too: calls queued past
/// their deadline get DEADLINE_EXCEEDED (rng's answer, before tonic's
/// CANCELLED), are never served, and leave the queue.
#[tokio::test]
async fn queued_calls_past_their_deadline_are_refused_and_never_served() {
    let rng = spawn_rng(RngConfig::classroom()).await;
    let client = rng_client(&rng).await;
    // 100 ms a call, one at a time: of eight calls allowed 350 ms each, about
    // three fit (their turns at 0, 100 and 200 ms); the rest cannot.
    let mut calls = JoinSet::new();
    for _ in 0..8 {
        let mut client = client.clone();
        calls.spawn(async move {
            let request = with_timeout(GenerateRequest { size: 32 }, Duration::from_millis(350));
            client.generate(request).await.map(drop)
        });
    }
    let results = calls.join_all().await;
    let served = results.iter().filter(|r| r.is_ok()).count();
    for result in &results {
        if let Err(status) = result {
            assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        }
    }
    let expired = results.len() - served;
    println!("{served} served, {expired} refused");
    assert!((2..=4).contains(&served), "{served} served");
    let ok = r#"rpc_server_call_duration_seconds_count{rpc_method="dockercoins.v1.Rng/Generate",rpc_response_status_code="OK"}"#;
    assert_eq!(metric(rng.addr, ok).await, Some(served as f64));
    let refused = r#"rng_deadline_expired_total{stage="waiting"}"#;
    assert_eq!(metric(rng.addr, refused).await, Some(expired as f64));
    assert_eq!(metric(rng.addr, "rng_lane_queue_depth").await, Some(0.0));
    // The queue is empty: a fresh call waits for nobody.
    let begun = std::time::Instant::now();
    let mut fresh = client.clone();
    fresh.generate(GenerateRequest { size: 32 }).await.unwrap();
    assert!(begun.elapsed() < Duration::from_millis(1000));
    rng.stop().await.unwrap();
}

/// A stream's deadline bounds it whole: messages are served while they fit,
/// and the first that cannot ends the stream with DEADLINE_EXCEEDED.
#[tokio::test(start_paused = true)]
async fn a_stream_ends_with_deadline_exceeded_at_the_first_message_that_cannot_fit() {
    let service = RngService::new(&RngConfig::classroom());
    let start = Instant::now();
    // 64 KiB blocks: one a message, 100 ms each; 350 ms fit three.
    let request = with_timeout(
        GenerateStreamRequest {
            size: 64 * 1024,
            count: 5,
        },
        Duration::from_millis(350),
    );
    let mut stream = service.generate_stream(request).await.unwrap().into_inner();
    let mut arrivals = Vec::new();
    let end = loop {
        match tokio_stream::StreamExt::next(&mut stream).await {
            Some(Ok(_)) => arrivals.push(start.elapsed()),
            Some(Err(status)) => break Some((status.code(), start.elapsed())),
            None => break None,
        }
    };
    let ms = Duration::from_millis;
    assert_eq!(arrivals, [ms(100), ms(200), ms(300)]);
    assert_eq!(end, Some((Code::DeadlineExceeded, ms(300))));
}

/// hasher refuses, before paying its delay, a call that cannot be answered
/// in time; one that can is answered.
#[tokio::test(start_paused = true)]
async fn hasher_refuses_before_its_work_a_call_it_cannot_answer_in_time() {
    let service = HasherService::new(&HasherConfig::classroom());
    let start = Instant::now();
    let request = with_timeout(
        HashRequest {
            data: "hello".into(),
        },
        Duration::from_millis(50),
    );
    let status = service.hash(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(start.elapsed(), Duration::ZERO, "refused before the work");
    let request = with_timeout(
        HashRequest {
            data: "hello".into(),
        },
        Duration::from_millis(200),
    );
    service.hash(request).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

/// Each HashStream message is checked: 100 ms a batch and 250 ms for the
/// call answer two; the third ends the stream with DEADLINE_EXCEEDED, counted.
#[tokio::test]
async fn each_hash_stream_message_must_fit_the_calls_deadline() {
    let hasher = spawn_hasher(HasherConfig::classroom()).await;
    let mut client = hasher_client(&hasher).await;
    let batches = (0..4).map(|_| HashBatch {
        size: 32,
        blocks: vec![1u8; 32 * 4].into(),
    });
    let request = with_timeout(
        tokio_stream::iter(batches.collect::<Vec<_>>()),
        Duration::from_millis(250),
    );
    let mut replies = client.hash_stream(request).await.unwrap().into_inner();
    let mut answered = 0;
    let status = loop {
        match replies.message().await {
            Ok(Some(_)) => answered += 1,
            Ok(None) => panic!("the stream ended well after {answered} replies"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(answered, 2);
    let refused = r#"hasher_deadline_expired_total{stage="waiting"}"#;
    assert_eq!(metric(hasher.addr, refused).await, Some(1.0));
    hasher.stop().await.unwrap();
}

/// HTTP states no deadline: the legacy routes wait as long as it takes.
#[tokio::test]
async fn legacy_http_has_no_deadline() {
    let config = RngConfig {
        delay: Duration::from_millis(50),
        ..RngConfig::classroom()
    };
    let rng = spawn_rng(config).await;
    let (status, _, body) = http1(rng.addr, "GET", "/32", "").await;
    assert_eq!((status.as_u16(), body.len()), (200, 32));
    rng.stop().await.unwrap();
}

/// An injected extra delay is not foreseen: the call is served, holds the
/// lane, and is answered DEADLINE_EXCEEDED just before its deadline (not cut
/// off by tonic); the call queued behind it waited all that time.
#[tokio::test(start_paused = true)]
async fn an_extra_delay_eats_the_deadline_and_holds_the_lane_until_then() {
    let config = RngConfig {
        delay: Duration::ZERO,
        lanes: Some(1),
        server: dockercoins::server::ServerSettings {
            faults: dockercoins::server::faults::Faults {
                extra_delay: "100%=500ms".parse().unwrap(),
                ..Default::default()
            },
            ..Default::default()
        },
        ..RngConfig::classroom()
    };
    let service = RngService::new(&config);
    let start = Instant::now();
    let first = {
        let service = service.clone();
        tokio::spawn(async move {
            let request = with_timeout(GenerateRequest { size: 32 }, Duration::from_millis(200));
            let result = service.generate(request).await;
            (start.elapsed(), result.map(drop).map_err(|s| s.code()))
        })
    };
    tokio::task::yield_now().await;
    let behind = service
        .generate(Request::new(GenerateRequest { size: 32 }))
        .await;
    assert!(behind.is_ok());
    let ms = Duration::from_millis;
    assert_eq!(start.elapsed(), ms(195 + 500), "it waited for the slow one");
    assert_eq!(first.await.unwrap(), (ms(195), Err(Code::DeadlineExceeded)));
}
