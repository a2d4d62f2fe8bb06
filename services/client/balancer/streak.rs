//! A balancer's failures as its logs tell them. A service that is down
//! fails every call, and a worker makes hundreds a second: the first
//! failure of a streak is said at warn (a new streak at most once per
//! [`SAY_FAILURES_EVERY`], the failures in between counted into the next
//! line), its end once, at info, and every other failure at debug. What a
//! failure does to the replica that served it (ejection, metrics) is the
//! call path's business, in [`super::call`].

use super::Service;
use crate::telemetry::{error_chain::status_reason, throttle::Throttle};
use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

/// A balancer's failures are said at warn at most this often (the others at
/// debug, counted in the next warn line).
const SAY_FAILURES_EVERY: Duration = Duration::from_secs(5);

/// Whether a balancer's calls are failing, and what its logs said of it.
#[derive(Debug)]
pub(super) struct Streak {
    /// Whether the last call failed: the logs say "down" once and "back" once.
    down: AtomicBool,
    /// When a failure was last said at warn, and the failures not said
    /// since: a balancer failing every other call (deadlines, injected
    /// faults) must not fill a classroom's terminal.
    said: Throttle,
    /// Whether the current streak of failures was said (so its end is).
    said_down: AtomicBool,
    /// Calls that failed after every retry: units of work lost to this service.
    failures: AtomicU64,
}

impl Default for Streak {
    fn default() -> Self {
        Self {
            down: AtomicBool::new(false),
            said: Throttle::new(SAY_FAILURES_EVERY),
            said_down: AtomicBool::new(false),
            failures: AtomicU64::new(0),
        }
    }
}

impl Streak {
    /// Notes a call that failed; logs the first failure of a streak at warn.
    pub(super) fn failed(&self, service: Service, url: &str, status: &tonic::Status) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let new_streak = !self.down.swap(true, Ordering::Relaxed);
        let unsaid = if new_streak {
            self.said.note()
        } else {
            self.said.hold();
            None
        };
        let Some(unsaid) = unsaid else {
            tracing::debug!(backend = service.name, code = ?status.code(), error = %status_reason(status), "call failed");
            return;
        };
        self.said_down.store(true, Ordering::Relaxed);
        let since = match unsaid {
            0 => String::new(),
            n => format!(" ({n} more failed since the last line like this)"),
        };
        tracing::warn!(
            backend = service.name,
            url = %url,
            code = ?status.code(),
            error = %status_reason(status),
            trace_id = crate::telemetry::current_trace_id(),
            failures_unsaid = unsaid,
            "{} call failed; said again when it answers{since}",
            service.name
        );
    }

    /// Notes a call that succeeded; logs the end of a failure streak.
    pub(super) fn answered(&self, service: Service, url: &str) {
        if self.down.load(Ordering::Relaxed)
            && self.down.swap(false, Ordering::Relaxed)
            && self.said_down.swap(false, Ordering::Relaxed)
        {
            tracing::info!(backend = service.name, url = %url, trace_id = crate::telemetry::current_trace_id(), "{} is answering again", service.name);
        }
    }

    /// Calls noted as failed so far.
    pub(super) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const RNG: Service = Service {
        name: "rng",
        grpc: "test.Rng",
        port: 8001,
    };

    /// The lines logged at info and above, as text.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(&mut self.0.lock().unwrap())).unwrap()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_streak_is_said_once_and_a_new_one_at_most_once_a_period() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let streak = Streak::default();
        let down = tonic::Status::unavailable("down");
        let failed = || streak.failed(RNG, "http://rng:8001", &down);

        failed();
        failed();
        let said = lines.take();
        assert_eq!(said.matches("rng call failed").count(), 1, "{said}");
        assert!(said.contains("failures_unsaid=0"), "{said}");
        streak.answered(RNG, "http://rng:8001");
        assert!(lines.take().contains("rng is answering again"));

        // A new streak within the period: counted, not said, nor its end.
        failed();
        streak.answered(RNG, "http://rng:8001");
        assert_eq!(lines.take(), "");

        tokio::time::advance(SAY_FAILURES_EVERY).await;
        failed();
        let said = lines.take();
        assert!(said.contains("failures_unsaid=2"), "{said}");
        assert!(
            said.contains("(2 more failed since the last line like this)"),
            "{said}"
        );
        assert_eq!(streak.failures(), 4);
    }
}
