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
