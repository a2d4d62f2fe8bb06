//! A worker running in the test's own runtime, on clients made the way the
//! tests' workers reach their backends.

use dockercoins::{
    client::balancer::BalancerSettings,
    client::{BalancedHasher, BalancedRng},
    store::Store,
    worker::{Backends, Mined, WorkerConfig},
};
use std::time::Duration;
use tokio::{sync::oneshot, task::JoinHandle};

/// How the tests' workers reach their backends: a short connect timeout, and
/// a call timeout that a hang trips well within a test's bounds.
fn test_pool() -> BalancerSettings {
    BalancerSettings {
        connect_timeout: Duration::from_millis(500),
        call_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// A worker running in this test's runtime, stopped by `stop`.
pub struct RunningWorker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Mined>,
}

impl RunningWorker {
    pub fn start(config: WorkerConfig, rng_url: &str, hasher_url: &str, store: Store) -> Self {
        let pool = test_pool();
        let rng = BalancedRng::new(rng_url, &pool).unwrap();
        let hasher = BalancedHasher::new(hasher_url, &pool).unwrap();
        Self::with_backends(config, rng, hasher, store)
    }

    /// A worker on clients made by the test (a resolver of its own...).
    pub fn with_backends(
        config: WorkerConfig,
        rng: BalancedRng,
        hasher: BalancedHasher,
        store: Store,
    ) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let backends = Backends { rng, hasher, store };
        let task = tokio::spawn(dockercoins::worker::run(config, backends, None, async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    /// Stops the worker (as SIGTERM would) and returns its report; a stop
    /// takes well under a second.
    pub async fn stop(self) -> Mined {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("the worker did not stop within 2 s")
            .unwrap()
    }
}
