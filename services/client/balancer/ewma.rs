//! The latency a replica has been answering in, for the `ewma` policy:
//! a "peak EWMA" (Finagle's, as linkerd and tower use it): a slower answer
//! than the estimate replaces it at once, a faster one pulls it down
//! gradually, and between answers the estimate decays towards zero, so a
//! replica judged slow is tried again after a while.
//!
//! Why a policy needs it: `least_request` compares calls in flight, which a
//! client with one call at a time (a classroom worker) does not have; every
//! client, whatever its concurrency, has the latencies of its own calls.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// How fast the estimate forgets: after this long it has moved about two
/// thirds of the way to what the answers say (or towards zero without any).
const DECAY: Duration = Duration::from_secs(10);

/// A failure counts as an answer at least this slow: a replica failing fast
/// must not look like the fastest one.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// A replica's latency estimate, in seconds.
#[derive(Default)]
pub struct Ewma(Mutex<Estimate>);

#[derive(Default)]
struct Estimate {
    seconds: f64,
    at: Option<Instant>,
}

impl Estimate {
    /// The estimate at `now`, decayed since it was last updated.
    fn decayed(&self, now: Instant) -> f64 {
        match self.at {
            Some(at) => {
                let elapsed = now.saturating_duration_since(at).as_secs_f64();
                self.seconds * (-elapsed / DECAY.as_secs_f64()).exp()
            }
            None => 0.0,
        }
    }
}

impl Ewma {
    /// An answer (or a failure) after `took`.
    pub fn observe(&self, took: Duration, failed: bool, now: Instant) {
        let took = if failed {
            took.max(FAILURE_PENALTY)
        } else {
            took
        };
        let sample = took.as_secs_f64();
        let mut estimate = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let current = estimate.decayed(now);
        estimate.seconds = if sample > current {
            sample
        } else {
            let since = estimate
                .at
                .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
            // `current` is the stored estimate already decayed by `keep`.
            let keep = (-since / DECAY.as_secs_f64()).exp();
            current + sample * (1.0 - keep)
        };
        estimate.at = Some(now);
    }

    /// The estimate now, in seconds (0 before any answer: a new replica is
    /// tried first).
    pub fn seconds(&self, now: Instant) -> f64 {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .decayed(now)
    }

    /// What a new call to this replica is expected to cost: the estimate
    /// (at least a millisecond, so that the calls already sent count even
    /// where nothing is known yet) times the calls in flight and this one.
    pub fn cost(&self, in_flight: usize, now: Instant) -> f64 {
        self.seconds(now).max(0.001) * (in_flight + 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_answer_counts_at_once_and_fades_without_new_ones() {
        let ewma = Ewma::default();
        let t0 = Instant::now();
        assert_eq!(ewma.seconds(t0), 0.0);
        ewma.observe(Duration::from_millis(100), false, t0);
        ewma.observe(Duration::from_millis(300), false, t0);
        assert!((ewma.seconds(t0) - 0.3).abs() < 1e-9);
        // A fast answer right after moves it only a little.
        let t1 = t0 + Duration::from_millis(100);
        ewma.observe(Duration::from_millis(10), false, t1);
        assert!(ewma.seconds(t1) > 0.28, "{}", ewma.seconds(t1));
        // Ten seconds of silence: about a third of it left.
        let later = ewma.seconds(t1 + DECAY);
        assert!((0.09..0.12).contains(&later), "{later}");
        // A fast failure is no recommendation.
        ewma.observe(Duration::from_millis(1), true, t1);
        assert!(ewma.seconds(t1) >= 1.0);
    }
}
