//! The worker's liveness, for a Kubernetes liveness probe: when a mining
//! loop last turned. A worker whose loops are stuck, not one whose backends
//! are down, is one to restart. Its port also serves the worker's metrics.

use crate::{telemetry::fields, telemetry::metrics::Exposition};
use axum::{http::StatusCode, routing::get};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{net::TcpListener, task::JoinHandle, time::Instant};

/// How long the mining loops may go without turning before the worker says
/// it is not alive. A turn takes at most a call timeout per backend plus a
/// backoff step (2 s), whatever rng, hasher or Redis are doing.
pub const LIVENESS_STALE: Duration = Duration::from_secs(30);

/// When a mining loop last turned (a unit done, failed, or a backoff step),
/// for a liveness probe: a worker whose loops are stuck, not one whose
/// backends are down, is one to restart.
#[derive(Debug)]
pub struct Liveness {
    start: Instant,
    last_turn_ms: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_turn_ms: AtomicU64::new(0),
        }
    }
}

impl Liveness {
    pub(super) fn turn(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_turn_ms.store(now, Ordering::Relaxed);
    }

    /// Time since a mining loop last turned (since start-up before the first).
    pub fn since_last_turn(&self) -> Duration {
        let last = Duration::from_millis(self.last_turn_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    pub fn is_alive(&self) -> bool {
        self.since_last_turn() <= LIVENESS_STALE
    }
}

/// Serves `GET /healthz` and `GET /metrics` on `listener`, in a task of its
/// own, until the task is aborted: 200 while the mining loops turn, 503 once
/// they have not for [`LIVENESS_STALE`]. Says where it listens now, before
/// the worker's first line, so that a script waiting for an address finds it.
pub(super) fn start(
    listener: TcpListener,
    liveness: Arc<Liveness>,
    metrics: Exposition,
) -> JoinHandle<()> {
    match listener.local_addr() {
        Ok(addr) => {
            tracing::info!({ fields::LISTEN } = %addr, "serving the worker's liveness on /healthz, its metrics on /metrics")
        }
        Err(error) => tracing::warn!(%error, "the liveness listener has no address"),
    }
    let router = axum::Router::new()
        .route("/metrics", metrics.route())
        .route(
            "/healthz",
            get(move || async move {
                let since = liveness.since_last_turn().as_millis();
                if liveness.is_alive() {
                    (
                        StatusCode::OK,
                        format!("alive: a mining loop turned {since} ms ago\n"),
                    )
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("stuck: no mining loop turned for {since} ms\n"),
                    )
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::warn!(%error, "the liveness probe stopped serving");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn liveness_goes_stale_when_the_loops_stop_turning() {
        let liveness = Liveness::default();
        assert!(liveness.is_alive());
        tokio::time::advance(LIVENESS_STALE + std::time::Duration::from_secs(1)).await;
        assert!(!liveness.is_alive(), "{:?}", liveness.since_last_turn());
        liveness.turn();
        assert!(liveness.is_alive());
    }
}
