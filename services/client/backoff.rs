//! Capped exponential backoff with jitter, for every loop that waits on
//! something down: the worker's mining loops, the private redis-server's
//! start-up and restarts.

use rand::Rng as _;
use std::time::Duration;

/// Capped exponential backoff with jitter: never a busy loop, and many
/// clients that failed together do not come back in lockstep.
#[derive(Debug)]
pub struct Backoff {
    /// Next wait, before jitter.
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(50), Duration::from_secs(2))
    }
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    /// Back to the shortest wait, after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The next wait (between half and all of the current step), doubling
    /// the step up to the cap.
    pub fn step(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// Sleeps for the next wait.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.step()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let waits: Vec<_> = (0..5).map(|_| backoff.step()).collect();
        let caps = [100, 200, 400, 400, 400].map(Duration::from_millis);
        for (wait, cap) in waits.iter().zip(caps) {
            assert!(*wait <= cap && *wait >= cap / 2, "{wait:?} vs {cap:?}");
        }
        backoff.reset();
        assert!(backoff.step() <= Duration::from_millis(100));
    }
}
