//! (c) The worker fed lying backends: a reply that is not exactly what was
//! asked for is refused, not hashed, not counted, not stored, and the worker
//! keeps mining (no panic kills its loop).

use super::{
    cases::sample,
    fake_backend::{Lie, spawn_fake},
};
use crate::support::{RedisServer, RunningWorker};
use dockercoins::store::Store;
use proptest::prelude::*;
use std::{sync::atomic::Ordering, time::Duration};

/// What a hasher may send instead of a digest (never 64 lowercase hex
/// digits): near misses and any text.
fn not_a_digest() -> impl Strategy<Value = String> {
    prop_oneof![
        "0[0-9a-f]{62}",
        "0[0-9a-f]{64}",
        "0[0-9a-f]{30}[A-F][0-9a-f]{32}",
        "0[0-9a-f]{0,62}[^0-9a-f]+[0-9a-f]{0,30}",
        "0000000[é€😀][0-9a-f]{50,60}",
        "\\PC{0,70}",
    ]
    .prop_filter("a real digest", |hex| {
        !(hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    })
}

/// Every lie of rng and hasher, unary and batch, each to a worker of its
/// own, all against one Redis: nothing is counted or stored, what rng got
/// wrong never reaches hasher, and each worker keeps asking (its loop is
/// alive). The honest controls, on an in-memory store, do count: the fakes
/// can be told apart from the checks.
#[tokio::test]
async fn the_worker_counts_nothing_from_lying_backends() {
    use dockercoins::worker::WorkerConfig;
    let redis = RedisServer::start().await;
    let unary = WorkerConfig {
        delay: Duration::ZERO,
        concurrency: 1,
        batch: 0,
        wallet_cap: 0,
        pace: None,
    };
    let batch = WorkerConfig {
        batch: 64,
        ..unary.clone()
    };
    let scenarios = vec![
        (unary.clone(), Lie::BlockOf(0)),
        (unary.clone(), Lie::BlockOf(31)),
        (unary.clone(), Lie::BlockOf(33)),
        (unary.clone(), Lie::BlockOf(64 * 1024)),
        (unary.clone(), Lie::Hex("0".repeat(63))),
        (unary.clone(), Lie::Hex("0".repeat(65))),
        (
            unary.clone(),
            Lie::Hex(format!("0{}", "AB".repeat(31) + "C")),
        ),
        (unary.clone(), Lie::Hex(format!("0{}g", "0".repeat(62)))),
        // 64 bytes, but the 8th character is cut in the middle.
        (
            unary.clone(),
            Lie::Hex(format!("0000000é{}", "0".repeat(55))),
        ),
        (unary.clone(), Lie::Hex(String::new())),
        // A few loops, to go through more of the drawn lies.
        (
            WorkerConfig {
                concurrency: 4,
                ..unary.clone()
            },
            Lie::HexDrawn(sample(not_a_digest(), 64)),
        ),
        (batch.clone(), Lie::StreamBlockSize),
        (batch.clone(), Lie::StreamRagged),
        (batch.clone(), Lie::StreamTooMany),
        (batch.clone(), Lie::StreamEmpty),
        (batch.clone(), Lie::StreamEndsEarly),
        (batch.clone(), Lie::DigestsShort),
        (batch.clone(), Lie::DigestsLong),
        (batch.clone(), Lie::DigestsNone),
    ];
    let mut running = Vec::new();
    for (config, lie) in scenarios {
        let (fake, url, stop) = spawn_fake(lie).await;
        let store = Store::redis(&redis.url(), Duration::from_millis(500)).unwrap();
        let worker = RunningWorker::start(config, &url, &url, store);
        running.push((fake, worker, stop));
    }
    let mut controls = Vec::new();
    for config in [unary, batch] {
        let (fake, url, stop) = spawn_fake(Lie::None).await;
        let worker = RunningWorker::start(config, &url, &url, Store::memory());
        controls.push((fake, worker, stop));
    }
    // Each liar asked at least 4 times: the worker backed off and tried
    // again, its loop still alive after each refusal.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for (fake, _, _) in &running {
        while fake.asked.load(Ordering::SeqCst) < 4 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}: the worker stopped asking after {} calls",
                fake.lie,
                fake.asked.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (fake, worker, stop) in running {
        let report = worker.stop().await;
        assert_eq!(report, Default::default(), "{:?}: counted", fake.lie);
        if fake.lie.by_rng() {
            assert_eq!(
                fake.hashed.load(Ordering::SeqCst),
                0,
                "{:?}: a bad block was sent to hasher",
                fake.lie
            );
        }
        let _ = stop.send(());
    }
    for (fake, worker, stop) in controls {
        let report = worker.stop().await;
        assert!(
            report.hashes_done > 0 && report.coins_found == report.hashes_done,
            "{:?}: the honest control counted {report:?}",
            fake.lie
        );
        let _ = stop.send(());
    }
    assert!(redis.keys().await.is_empty(), "{:?}", redis.keys().await);
}
