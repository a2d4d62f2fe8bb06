//! Quantities summed over time and read per second over the last
//! [`WINDOW`]: calls and errors (counts), and an occupancy (a level held
//! for a while: requests in rng's lane, bytes in hasher's work). Two
//! buckets of one window each, the older weighed by how much of it is
//! still inside the window (a sliding window), so the rate moves smoothly
//! instead of jumping at each bucket's end.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How far back a load report looks: long enough that a classroom rng (10
/// calls a second) reports a steady rate, short enough that a client sees a
/// change within A58's weight update period (1 s) or two.
pub const WINDOW: Duration = Duration::from_secs(1);

/// A sum over time, in two buckets of [`WINDOW`].
#[derive(Debug)]
struct Sliding {
    /// Where the current bucket starts.
    start: Instant,
    current: f64,
    previous: f64,
}

impl Sliding {
    fn new(now: Instant) -> Self {
        Self {
            start: now,
            current: 0.0,
            previous: 0.0,
        }
    }

    /// Adds `level` held from `from` to `to` (a level of 0 only moves the
    /// buckets on), split at the buckets' ends.
    fn hold(&mut self, mut from: Instant, to: Instant, level: f64) {
        loop {
            let end = self.start + WINDOW;
            if to < end {
                self.current += level * to.saturating_duration_since(from).as_secs_f64();
                return;
            }
            self.current += level * end.saturating_duration_since(from).as_secs_f64();
            let passed = to.duration_since(self.start).as_nanos() / WINDOW.as_nanos();
            if passed >= 2 {
                // Whole windows went by (an idle server): the level held
                // through the last of them.
                self.start += WINDOW * (passed as u32);
                self.previous = level * WINDOW.as_secs_f64();
            } else {
                self.start = end;
                self.previous = self.current;
            }
            self.current = 0.0;
            from = self.start;
        }
    }

    /// The sum over the last window, per second.
    fn per_second(&self, now: Instant) -> f64 {
        let into = now.saturating_duration_since(self.start).as_secs_f64() / WINDOW.as_secs_f64();
        (self.previous * (1.0 - into.min(1.0)) + self.current) / WINDOW.as_secs_f64()
    }
}

/// Calls ended and calls failed, per second over the last window.
#[derive(Debug)]
pub struct Rates(Mutex<(Sliding, Sliding)>);

impl Default for Rates {
    fn default() -> Self {
        let now = Instant::now();
        Self(Mutex::new((Sliding::new(now), Sliding::new(now))))
    }
}

impl Rates {
    /// A call ended at `now` (`failed`: not OK); then the calls and the
    /// failures per second, this one included.
    pub fn ended(&self, failed: bool, now: Instant) -> (f64, f64) {
        let mut rates = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (calls, errors) = &mut *rates;
        calls.hold(now, now, 0.0);
        errors.hold(now, now, 0.0);
        calls.current += 1.0;
        if failed {
            errors.current += 1.0;
        }
        (calls.per_second(now), errors.per_second(now))
    }

    /// The calls and the failures per second, no call added.
    pub fn read(&self, now: Instant) -> (f64, f64) {
        let mut rates = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (calls, errors) = &mut *rates;
        calls.hold(now, now, 0.0);
        errors.hold(now, now, 0.0);
        (calls.per_second(now), errors.per_second(now))
    }
}

/// A level over time (requests in a lane, bytes at work), read as its mean
/// over the last window: a client weighing replicas wants how busy a
/// replica has been, not whether the call that carries the report happened
/// to find it empty.
#[derive(Debug)]
pub struct Occupancy(Mutex<Level>);

#[derive(Debug)]
struct Level {
    now: f64,
    since: Instant,
    held: Sliding,
}

impl Default for Occupancy {
    fn default() -> Self {
        let now = Instant::now();
        Self(Mutex::new(Level {
            now: 0.0,
            since: now,
            held: Sliding::new(now),
        }))
    }
}

impl Occupancy {
    /// `amount` more from now until the guard drops.
    pub fn occupy(self: &Arc<Self>, amount: f64) -> Occupied {
        self.change(amount, Instant::now());
        Occupied {
            occupancy: self.clone(),
            amount,
        }
    }

    fn change(&self, by: f64, now: Instant) {
        let mut level = self.0.lock().unwrap_or_else(|p| p.into_inner());
        level.advance(now);
        // Never below 0, whatever rounding did.
        level.now = (level.now + by).max(0.0);
    }

    /// The mean level over the last window, up to `now`.
    pub fn mean(&self, now: Instant) -> f64 {
        let mut level = self.0.lock().unwrap_or_else(|p| p.into_inner());
        level.advance(now);
        level.held.per_second(now)
    }
}

impl Level {
    /// The current level held from its last change up to `now`.
    fn advance(&mut self, now: Instant) {
        self.held.hold(self.since, now, self.now);
        self.since = now;
    }
}

/// An amount held in an [`Occupancy`] until dropped.
pub struct Occupied {
    occupancy: Arc<Occupancy>,
    amount: f64,
}

impl Drop for Occupied {
    fn drop(&mut self) {
        self.occupancy.change(-self.amount, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_steady_rate_reads_as_itself_and_fades_when_calls_stop() {
        let rates = Rates::default();
        let t0 = Instant::now();
        let mut last = (0.0, 0.0);
        // 10 calls a second for 3 s, one in five failing.
        for i in 0..30 {
            last = rates.ended(i % 5 == 0, t0 + ms(100 * i + 50));
        }
        assert!((9.0..=11.0).contains(&last.0), "{last:?}");
        assert!((1.5..=2.5).contains(&last.1), "{last:?}");
        // Two idle windows later, one call: the rate is that call's.
        let (calls, errors) = rates.ended(false, t0 + ms(6000));
        assert!(calls <= 1.0 + 1e-9, "{calls}");
        assert_eq!(errors, 0.0);
    }

    #[test]
    fn occupancy_is_the_mean_level_over_the_window() {
        let occupancy = Occupancy::default();
        let t0 = Instant::now();
        // 3 held for a window, then 1.
        occupancy.change(3.0, t0);
        occupancy.change(-2.0, t0 + WINDOW);
        // Half a window later: half of the older window (3) still counts,
        // and half a window at 1.
        let mean = occupancy.mean(t0 + WINDOW + ms(500));
        assert!((mean - 2.0).abs() < 0.01, "{mean}");
        let mean = occupancy.mean(t0 + WINDOW * 2);
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        // Hours idle at 0, then read: 0.
        occupancy.change(-1.0, t0 + WINDOW * 3);
        assert_eq!(occupancy.mean(t0 + Duration::from_secs(3600)), 0.0);
    }

    #[test]
    fn a_guard_holds_its_amount_until_dropped() {
        let occupancy = Arc::new(Occupancy::default());
        let held = occupancy.occupy(2.0);
        assert_eq!(occupancy.0.lock().unwrap().now, 2.0);
        drop(held);
        assert_eq!(occupancy.0.lock().unwrap().now, 0.0);
    }
}
