//! The static-stride scheduler of gRFC A58 (as grpc-go and gRPC C++ pick):
//! picks spread over the replicas in proportion to their weights, from one
//! shared counter and a table of weights fixed until the next update; no
//! lock, no heap, and a replica's picks evenly spaced.
//!
//! The counter's value is read as a replica (its remainder by the number
//! of replicas) and a round through them (its quotient). Weights are
//! scaled so the largest is [`MAX`]; a replica of weight `w` is picked in
//! `w` rounds of every [`MAX`], the rounds chosen by `w × round` modulo
//! [`MAX`] (evenly spaced), shifted by half of [`MAX`] per replica so two
//! heavy neighbours are not skipped in the same rounds.

use std::sync::atomic::{AtomicU32, Ordering};

/// The largest scaled weight.
const MAX: u64 = u16::MAX as u64;

/// Picks, in proportion to fixed weights.
#[derive(Debug)]
pub struct Stride {
    /// Each replica's weight, scaled to at most [`MAX`], at least 1.
    scaled: Vec<u64>,
}

impl Stride {
    /// The scheduler of `weights` (each > 0), or `None` when they are all
    /// alike once scaled: round robin does the same for less.
    pub fn new(weights: &[f64]) -> Option<Self> {
        let max = weights.iter().copied().fold(0.0, f64::max);
        if weights.len() < 2 || max <= 0.0 {
            return None;
        }
        let scaled: Vec<u64> = weights
            .iter()
            .map(|w| ((w / max * MAX as f64).round() as u64).clamp(1, MAX))
            .collect();
        if scaled.iter().all(|&w| w == scaled[0]) {
            return None;
        }
        Some(Self { scaled })
    }

    /// The next replica's index, drawn from `counter` (shared by every
    /// caller; it wraps at 2³², harmlessly).
    pub fn next(&self, counter: &AtomicU32) -> usize {
        let n = self.scaled.len() as u64;
        loop {
            let sequence = u64::from(counter.fetch_add(1, Ordering::Relaxed));
            let (replica, round) = (sequence % n, sequence / n);
            let weight = self.scaled[replica as usize];
            // Picked in `weight` of every MAX rounds, evenly spaced.
            if (weight * round + replica * (MAX / 2)) % MAX >= MAX - weight {
                return replica as usize;
            }
        }
    }

    /// The scaled weights, for tests.
    #[cfg(test)]
    fn scaled(&self) -> &[u64] {
        &self.scaled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(weights: &[f64], picks: usize) -> Vec<f64> {
        let stride = Stride::new(weights).unwrap();
        let counter = AtomicU32::new(0);
        let mut counts = vec![0usize; weights.len()];
        for _ in 0..picks {
            counts[stride.next(&counter)] += 1;
        }
        counts.iter().map(|&c| c as f64 / picks as f64).collect()
    }

    #[test]
    fn picks_follow_the_weights() {
        let got = shares(&[600.0, 200.0, 200.0], 10_000);
        for (got, want) in got.iter().zip([0.6, 0.2, 0.2]) {
            assert!((got - want).abs() < 0.01, "{got} against {want}");
        }
        let got = shares(&[1.0, 9.0], 10_000);
        assert!((got[1] - 0.9).abs() < 0.01, "{got:?}");
    }

    #[test]
    fn a_heavy_replica_is_not_picked_in_bursts_alone() {
        // 3:1:1 over 50 picks: the light ones come back within every 10.
        let stride = Stride::new(&[3.0, 1.0, 1.0]).unwrap();
        let counter = AtomicU32::new(0);
        let picks: Vec<usize> = (0..50).map(|_| stride.next(&counter)).collect();
        for window in picks.windows(10) {
            assert!(window.contains(&1) && window.contains(&2), "{picks:?}");
        }
    }

    #[test]
    fn equal_or_single_weights_need_no_scheduler() {
        assert!(Stride::new(&[5.0, 5.0, 5.0]).is_none());
        assert!(Stride::new(&[5.0]).is_none());
        // A tiny weight still gets picked now and then.
        let stride = Stride::new(&[1e-9, 1.0]).unwrap();
        assert_eq!(stride.scaled(), &[1, MAX]);
    }
}
