//! One mining loop: a unit of work after another, unary or batch, each in a
//! trace of its own, and the checks every reply goes through before anything
//! is counted. A reply that is not exactly what was asked for is refused
//! whole, and nothing of a failed unit is counted.

use super::{WorkerConfig, liveness::Liveness, tally::Tally};
use crate::{
    client::backoff::Backoff,
    client::{BalancedHasher, BalancedRng},
    pb::HashBatch,
    protocol::{BLOCK_BYTES, DIGEST_BYTES},
    store::Coin,
    telemetry::sampling,
};
use bytes::Bytes;
use std::sync::Arc;
use tonic::Status;

/// Why a unit of work failed. Nothing of a failed unit is counted.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("rng: {0}")]
    Rng(Status),
    #[error("hasher: {0}")]
    Hasher(Status),
    #[error("bad reply from {backend}: {reason}")]
    BadReply {
        backend: &'static str,
        reason: String,
    },
}

impl UnitError {
    fn bad_reply(backend: &'static str, reason: impl Into<String>) -> Self {
        Self::BadReply {
            backend,
            reason: reason.into(),
        }
    }
}

/// Checks a block from rng's unary reply.
pub fn check_block(data: &[u8]) -> Result<(), UnitError> {
    if data.len() == BLOCK_BYTES {
        Ok(())
    } else {
        Err(UnitError::bad_reply(
            "rng",
            format!("{} bytes instead of {BLOCK_BYTES}", data.len()),
        ))
    }
}

/// Checks hasher's unary reply: 64 lowercase hex digits.
pub fn check_hex(hex: &str) -> Result<(), UnitError> {
    let valid = hex.len() == 2 * DIGEST_BYTES
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if valid {
        Ok(())
    } else {
        Err(UnitError::bad_reply(
            "hasher",
            format!("not a SHA-256 in hex: {hex:.80?}"),
        ))
    }
}

/// Checks a message of rng's stream: whole `BLOCK_BYTES` blocks, not more
/// than `left` of them. Returns how many blocks it holds.
pub fn check_blocks(size: u32, blocks: &[u8], left: usize) -> Result<usize, UnitError> {
    if size as usize != BLOCK_BYTES {
        return Err(UnitError::bad_reply(
            "rng",
            format!("blocks of {size} bytes instead of {BLOCK_BYTES}"),
        ));
    }
    if blocks.is_empty() || blocks.len() % BLOCK_BYTES != 0 {
        return Err(UnitError::bad_reply(
            "rng",
            format!("{} bytes is not whole blocks", blocks.len()),
        ));
    }
    let count = blocks.len() / BLOCK_BYTES;
    if count > left {
        return Err(UnitError::bad_reply(
            "rng",
            format!("{count} blocks when {left} were left"),
        ));
    }
    Ok(count)
}

/// The coins among `blocks` given their raw `digests` (32 bytes each, same
/// order). A digest batch of the wrong length is refused whole.
pub fn coins_in_batch(blocks: &Bytes, digests: &[u8]) -> Result<Vec<Coin>, UnitError> {
    let count = blocks.len() / BLOCK_BYTES;
    if digests.len() != count * DIGEST_BYTES {
        return Err(UnitError::bad_reply(
            "hasher",
            format!(
                "{} bytes of digests for {count} blocks (expected {})",
                digests.len(),
                count * DIGEST_BYTES
            ),
        ));
    }
    Ok(digests
        .chunks_exact(DIGEST_BYTES)
        .enumerate()
        // A hex digest starts with '0' when the first byte's high nibble is 0.
        .filter(|(_, digest)| digest[0] < 0x10)
        .map(|(i, digest)| Coin {
            digest: digest.try_into().expect("chunks of DIGEST_BYTES"),
            bytes: blocks[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES]
                .try_into()
                .expect("blocks of BLOCK_BYTES"),
        })
        .collect())
}

/// One mining loop's view of the world.
pub(super) struct Miner {
    pub(super) config: WorkerConfig,
    pub(super) rng: BalancedRng,
    pub(super) hasher: BalancedHasher,
    pub(super) tally: Arc<Tally>,
    pub(super) liveness: Arc<Liveness>,
}

impl Miner {
    /// Mines unit after unit, backing off after a failure, until aborted.
    pub(super) async fn mine(self: Arc<Self>) {
        let mut backoff = Backoff::default();
        loop {
            self.liveness.turn();
            if !self.config.delay.is_zero() {
                tokio::time::sleep(self.config.delay).await;
            }
            if self.tally.backlog_full() {
                backoff.wait().await;
                continue;
            }
            match self.traced_unit().await {
                Ok(()) => backoff.reset(),
                Err(_) => backoff.wait().await,
            }
        }
    }

    /// One unit of work in its own trace, paced by the open loop: whether it
    /// was counted. Refused while the counts waiting for Redis are at their
    /// bound, as the closed loop pauses then.
    pub(super) async fn open_loop_unit(&self) -> bool {
        self.liveness.turn();
        if self.tally.backlog_full() {
            return false;
        }
        self.traced_unit().await.is_ok()
    }

    /// One unit of work, as one trace: its root span when sampled.
    async fn traced_unit(&self) -> Result<(), UnitError> {
        // One trace per unit of work: its root span (when the trace is
        // sampled) is a root whatever encloses it.
        let name = if self.config.batch == 0 {
            "mine one block"
        } else {
            "mine a batch"
        };
        let head = sampling::new_trace(name);
        let span = || {
            tracing::info_span!(
                target: crate::telemetry::TARGET,
                "worker.unit",
                otel.name = name,
                worker.batch = self.config.batch,
                otel.status_code = tracing::field::Empty,
            )
        };
        let unit = async {
            let result = if self.config.batch == 0 {
                self.unary_unit().await
            } else {
                self.batch_unit(self.config.batch).await
            };
            // The logs do not format the unit's span (see
            // `telemetry::init`): its lines say its trace id themselves.
            if let Err(error) = &result {
                tracing::Span::current().record("otel.status_code", "ERROR");
                // A failed call is noted (and logged once a streak) by
                // its client; a reply that lies is this loop's to say.
                if let UnitError::BadReply { .. } = error {
                    let trace_id = crate::telemetry::current_trace_id();
                    tracing::warn!(%error, trace_id, "unit of work refused, not counted");
                }
            }
            result
        };
        sampling::traced(head, span, unit).await
    }

    /// The original unit: 32 random bytes, their hash, maybe a coin.
    async fn unary_unit(&self) -> Result<(), UnitError> {
        let data = self
            .rng
            .generate(BLOCK_BYTES as u32)
            .await
            .map_err(UnitError::Rng)?;
        check_block(&data)?;
        let hex = self
            .hasher
            .hash(data.clone())
            .await
            .map_err(UnitError::Hasher)?;
        check_hex(&hex)?;
        let coins = if hex.starts_with('0') {
            let trace_id = crate::telemetry::current_trace_id();
            tracing::info!(trace_id, "Coin found: {}...", &hex[..8]);
            let mut coin = Coin {
                digest: [0; 32],
                bytes: data[..].try_into().expect("checked: 32 bytes"),
            };
            hex::decode_to_slice(&hex, &mut coin.digest)
                .map_err(|_| UnitError::bad_reply("hasher", "not hex"))?;
            vec![coin]
        } else {
            Vec::new()
        };
        self.tally.add(1, coins);
        Ok(())
    }

    /// A batch: rng's stream of blocks piped into hasher's stream, one
    /// message at a time; each message's hashes count once its digests
    /// arrive and check out.
    async fn batch_unit(&self, count: usize) -> Result<(), UnitError> {
        let mut blocks = self
            .rng
            .generate_stream(BLOCK_BYTES as u32, count as u32)
            .await
            .map_err(UnitError::Rng)?;
        let mut hasher = self.hasher.hash_stream().await.map_err(UnitError::Hasher)?;
        let mut left = count;
        while left > 0 {
            let message = blocks
                .message()
                .await
                .map_err(UnitError::Rng)?
                .ok_or_else(|| {
                    UnitError::bad_reply("rng", format!("stream ended with {left} blocks missing"))
                })?;
            let n = check_blocks(message.size, &message.blocks, left)?;
            left -= n;
            let batch = HashBatch {
                size: message.size,
                blocks: message.blocks.clone(),
            };
            let digests = hasher
                .hash(batch)
                .await
                .map_err(UnitError::Hasher)?
                .ok_or_else(|| UnitError::bad_reply("hasher", "stream ended before its digests"))?;
            let coins = coins_in_batch(&message.blocks, &digests)?;
            for coin in &coins {
                let trace_id = crate::telemetry::current_trace_id;
                tracing::debug!(trace_id = trace_id(), "Coin found: {}...", &coin.hex()[..8]);
            }
            self.tally.add(n as u64, coins);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn blocks_of_the_wrong_size_are_refused() {
        assert!(check_block(&[0; 32]).is_ok());
        assert!(check_block(&[0; 31]).is_err());
        assert!(check_block(&[]).is_err());
        assert_eq!(check_blocks(32, &[0; 64], 2).unwrap(), 2);
        assert!(check_blocks(32, &[0; 64], 1).is_err(), "more than asked");
        assert!(check_blocks(16, &[0; 64], 4).is_err(), "wrong block size");
        assert!(check_blocks(32, &[0; 33], 4).is_err(), "ragged");
        assert!(check_blocks(32, &[], 4).is_err(), "empty");
    }

    #[test]
    fn only_real_hex_digests_pass() {
        let good = hex::encode(Sha256::digest(b"x"));
        assert!(check_hex(&good).is_ok());
        assert!(check_hex(&good.to_uppercase()).is_err());
        assert!(check_hex(&good[..63]).is_err());
        assert!(check_hex(&format!("{}g", &good[..63])).is_err());
        assert!(check_hex("").is_err());
    }

    #[test]
    fn coins_are_digests_starting_with_zero() {
        let blocks: Vec<u8> = (0..32 * 64).map(|i| (i * 7 % 256) as u8).collect();
        let blocks = Bytes::from(blocks);
        let digests: Vec<u8> = blocks
            .chunks(32)
            .flat_map(|block| Sha256::digest(block).to_vec())
            .collect();
        let coins = coins_in_batch(&blocks, &digests).unwrap();
        let expected = blocks
            .chunks(32)
            .filter(|block| hex::encode(Sha256::digest(block)).starts_with('0'))
            .count();
        assert_eq!(coins.len(), expected);
        for coin in coins {
            assert!(coin.hex().starts_with('0'));
            assert_eq!(coin.hex(), hex::encode(Sha256::digest(coin.bytes)));
        }
        assert!(coins_in_batch(&blocks, &digests[..digests.len() - 1]).is_err());
        assert!(coins_in_batch(&blocks, &[]).is_err());
    }
}

/// Property tests on the checks every reply goes through: a reply that is
/// not exactly what was asked for is refused whole, and the checks never
/// panic on it (a panic would kill a mining loop silently).
#[cfg(test)]
mod properties {

    use super::*;
    use proptest::prelude::*;

    /// What a hasher might answer instead of a digest: real digests, near
    /// misses (length, case, one bad character), and any text at all.
    fn hex_reply() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9a-f]{64}",
            "[0-9a-f]{60,68}",
            "[0-9a-fA-F]{64}",
            "[0-9a-f]{0,63}[^0-9a-f][0-9a-f]{0,63}",
            // Multi-byte characters: 64 bytes that are not 64 characters.
            "0[0-9a-f]{6}[é€😀][0-9a-f]{50,60}",
            "\\PC{0,80}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn an_rng_block_passes_only_at_its_exact_size(data in proptest::collection::vec(any::<u8>(), 0..=100)) {
            prop_assert_eq!(check_block(&data).is_ok(), data.len() == BLOCK_BYTES);
        }

        /// Exactly 64 lowercase hex digits pass, and what passes is safe for
        /// what the worker does next: slice the first 8 characters, decode.
        #[test]
        fn only_64_lowercase_hex_digits_pass_as_a_digest(hex in hex_reply()) {
            let expected = hex.len() == 64
                && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            prop_assert_eq!(check_hex(&hex).is_ok(), expected);
            if expected {
                prop_assert!(hex.is_char_boundary(8));
                let mut digest = [0u8; DIGEST_BYTES];
                prop_assert!(hex::decode_to_slice(&hex, &mut digest).is_ok());
            }
        }

        /// A stream message passes only as whole 32-byte blocks, at least
        /// one, and no more than were still expected.
        #[test]
        fn a_stream_message_passes_only_as_whole_blocks_within_the_count(
            size in prop_oneof![Just(BLOCK_BYTES as u32), any::<u32>(), 0u32..=64],
            len in prop_oneof![0usize..=200, (0usize..=8).prop_map(|n| n * BLOCK_BYTES)],
            left in 0usize..=8,
        ) {
            let blocks = vec![7u8; len];
            let valid = size as usize == BLOCK_BYTES
                && len > 0
                && len % BLOCK_BYTES == 0
                && len / BLOCK_BYTES <= left;
            let result = check_blocks(size, &blocks, left);
            prop_assert_eq!(result.is_ok(), valid);
            if let Ok(count) = result {
                prop_assert_eq!(count, len / BLOCK_BYTES);
            }
        }

        /// Digests of the wrong length are refused whole: no coin comes out
        /// of a batch whose digests do not match its blocks one for one.
        /// The coins that do come out are exactly the blocks whose digest
        /// starts with a 0 nibble, each with its own block's bytes.
        #[test]
        fn coins_come_only_from_a_full_set_of_digests(
            count in 0usize..=16,
            digests in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..=16 * DIGEST_BYTES + 40),
                (0usize..=16).prop_flat_map(|n| proptest::collection::vec(0u8..=0x20, n * DIGEST_BYTES)),
            ],
        ) {
            let blocks: Bytes = (0..count * BLOCK_BYTES).map(|i| (i / BLOCK_BYTES) as u8).collect();
            let result = coins_in_batch(&blocks, &digests);
            prop_assert_eq!(result.is_ok(), digests.len() == count * DIGEST_BYTES);
            if let Ok(coins) = result {
                let expected: Vec<usize> = (0..count).filter(|i| digests[i * DIGEST_BYTES] < 0x10).collect();
                prop_assert_eq!(coins.len(), expected.len());
                for (coin, i) in coins.iter().zip(expected) {
                    prop_assert_eq!(&coin.digest[..], &digests[i * DIGEST_BYTES..(i + 1) * DIGEST_BYTES]);
                    prop_assert_eq!(&coin.bytes[..], &blocks[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES]);
                    prop_assert!(coin.hex().starts_with('0'));
                }
            }
        }
    }
}
