//! A log line said at most once a period. A server refusing a flood, a
//! balancer whose replica is down, a worker that cannot reach Redis: each
//! meets the same event thousands of times a second, and one line with a
//! count says as much as a thousand lines without drowning the others.

use std::{sync::Mutex, time::Duration};
use tokio::time::Instant;

/// When a line was last said, and how many occurrences were held back
/// since. tokio's clock, so tests step over the period on a paused clock.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    said: Mutex<Said>,
}

#[derive(Debug, Default)]
struct Said {
    at: Option<Instant>,
    held: u64,
}

impl Throttle {
    /// Says at most once every `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            said: Mutex::new(Said { at: None, held: 0 }),
        }
    }

    /// One more occurrence. `Some(held)` when it is to be said now (the
    /// first at once, then at most once a period), `held` being how many
    /// went unsaid since the last line.
    pub fn note(&self) -> Option<u64> {
        let mut said = self.lock();
        if said.at.is_some_and(|at| at.elapsed() < self.every) {
            said.held += 1;
            return None;
        }
        Some(said.say())
    }

    /// One more occurrence, counted for the next line but not said now.
    pub fn hold(&self) {
        self.lock().held += 1;
    }

    /// One occurrence said now whatever the period (the start of a new
    /// streak): how many went unsaid since the last line.
    pub fn say(&self) -> u64 {
        self.lock().say()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Said> {
        // A panic elsewhere while holding a counter leaves a usable counter.
        self.said
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Said {
    fn say(&mut self) -> u64 {
        self.at = Some(Instant::now());
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn the_first_is_said_at_once_then_at_most_once_a_period() {
        let throttle = Throttle::new(EVERY);
        assert_eq!(throttle.note(), Some(0));
        assert_eq!(throttle.note(), None);
        throttle.hold();
        tokio::time::advance(EVERY - Duration::from_millis(1)).await;
        assert_eq!(throttle.note(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(throttle.note(), Some(3));
        assert_eq!(throttle.note(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_streak_is_said_whatever_the_period() {
        let throttle = Throttle::new(EVERY);
        assert_eq!(throttle.note(), Some(0));
        throttle.hold();
        assert_eq!(throttle.say(), 1);
        assert_eq!(throttle.note(), None, "the period runs from the last line");
    }
}
