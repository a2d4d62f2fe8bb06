//! The limit: how many SHA-256 digests of 32-byte blocks one core makes, in
//! this process, with the crate and the loop the hasher uses for a batch.
//! Batch mode cannot hash faster than this times the cores, and shares those
//! cores with rng, the worker and Redis.

use crate::protocol::{BLOCK_BYTES, DIGEST_BYTES};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// Blocks per round, as a turbo batch: the clock is read once a round.
const ROUND: usize = crate::worker::TURBO_BATCH;

/// Digests per second on one core, hashing for about `length`.
pub fn sha256_per_second_one_core(length: Duration) -> f64 {
    let blocks: Vec<u8> = (0..ROUND * BLOCK_BYTES).map(|i| i as u8).collect();
    let mut digests = Vec::with_capacity(ROUND * DIGEST_BYTES);
    let (start, mut rounds) = (Instant::now(), 0u64);
    while rounds == 0 || start.elapsed() < length {
        digests.clear();
        for block in blocks.chunks_exact(BLOCK_BYTES) {
            digests.extend_from_slice(&Sha256::digest(block));
        }
        std::hint::black_box(&digests);
        rounds += 1;
    }
    (rounds * ROUND as u64) as f64 / start.elapsed().as_secs_f64()
}

/// The cores this process may run on.
pub use crate::telemetry::procfs::cores;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_measure_counts_whole_rounds() {
        let rate = sha256_per_second_one_core(Duration::ZERO);
        assert!(rate > 0.0 && rate.is_finite());
        assert!(cores() >= 1);
    }
}
