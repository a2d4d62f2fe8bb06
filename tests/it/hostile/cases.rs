//! The property-test runner: bounded cases, each run on a Tokio runtime
//! under a time limit, so that a hang fails as one.

use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, TestCaseError, TestRunner},
};
use std::{future::Future, time::Duration};

/// Longest any single case may take: past it, the case is a hang.
pub(super) const CASE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `cases` cases of `strategy` through the async `check`, on `rt`
/// (where the test's servers run). A case that takes longer than
/// [`CASE_TIMEOUT`] fails as a hang. Failures are shrunk and reported with
/// the smallest input found.
pub(super) fn check_cases<S, F, Fut>(
    rt: &tokio::runtime::Runtime,
    cases: u32,
    strategy: S,
    check: F,
) where
    S: Strategy,
    F: Fn(S::Value) -> Fut,
    Fut: Future<Output = Result<(), TestCaseError>>,
{
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    };
    let result = TestRunner::new(config).run(&strategy, |value| {
        rt.block_on(async {
            tokio::time::timeout(CASE_TIMEOUT, check(value))
                .await
                .unwrap_or_else(|_| Err(TestCaseError::fail("no answer in 10 s: a hang")))
        })
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

/// `n` values drawn from `strategy` (no shrinking): inputs for a test that
/// runs them all at once.
pub(super) fn sample<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::default();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}
