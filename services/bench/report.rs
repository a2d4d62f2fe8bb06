//! What `bench` reports, and its table for humans; `--json` prints the same
//! structs serialized. The measuring is in `bench` itself.

use super::Mode;
use crate::telemetry::latency::nearest_rank;
use serde::Serialize;
use std::{collections::BTreeMap, time::Duration};

/// Latency percentiles of one hop, client-observed, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub calls: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

impl Latency {
    pub(super) fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |q: f64| nearest_rank(&samples, q).map_or(0.0, |d| d.as_secs_f64() * 1e6);
        Self {
            calls: samples.len(),
            p50_us: at(0.50),
            p99_us: at(0.99),
            p999_us: at(0.999),
        }
    }
}

/// One hop at light load and at saturation.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct HopLatency {
    pub light: Latency,
    pub saturated: Latency,
    /// The light-load numbers, at the top for scripts.
    pub p50_us: f64,
    pub p99_us: f64,
}

impl HopLatency {
    pub(super) fn of(light: Vec<Duration>, saturated: Vec<Duration>) -> Self {
        let light = Latency::of(light);
        Self {
            p50_us: light.p50_us,
            p99_us: light.p99_us,
            light,
            saturated: Latency::of(saturated),
        }
    }
}

/// One process's memory (kB, from /proc: VmRSS idle, VmHWM peak) and CPU.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Usage {
    pub idle_rss_kb: u64,
    pub peak_rss_kb: u64,
    pub cpu_seconds: f64,
}

/// The processes of [`usages`], in the order of their arrays.
pub(super) const PROCESSES: [&str; 4] = ["rng", "hasher", "worker", "redis"];

/// Each process's memory and CPU, by name.
pub(super) fn usages(
    idle_rss: [u64; 4],
    peak_rss: [u64; 4],
    cpu: &[f64],
) -> BTreeMap<&'static str, Usage> {
    (0..PROCESSES.len())
        .map(|i| {
            let usage = Usage {
                idle_rss_kb: idle_rss[i],
                peak_rss_kb: peak_rss[i],
                cpu_seconds: cpu[i],
            };
            (PROCESSES[i], usage)
        })
        .collect()
}

/// What `bench` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub batch: usize,
    pub concurrency: usize,
    pub seconds: f64,
    /// Redis `hashes` delta over the window, per second.
    pub hashes_per_second: f64,
    /// The worker's own count of hashes done, read from its last log line.
    pub counted_hashes: u64,
    /// Of those, what it saw Redis acknowledge.
    pub flushed_hashes: u64,
    /// Redis `hashes` after the worker stopped.
    pub redis_hashes: u64,
    /// The worker's own count of coins found, from its last log line.
    pub counted_coins: u64,
    /// Redis `coins` after the worker stopped (the wallet is capped at
    /// `worker::TURBO_WALLET_CAP`: a sample).
    pub redis_coins: u64,
    /// `counted_hashes == redis_hashes == flushed_hashes` and
    /// `counted_coins == redis_coins`.
    pub cross_check: bool,
    pub hops: BTreeMap<&'static str, HopLatency>,
    pub processes: BTreeMap<&'static str, Usage>,
    /// CPU of rng, hasher, worker and Redis over the window, per million
    /// hashes done in it.
    pub cpu_seconds_per_million_hashes: f64,
    pub machine: String,
    /// The machine's floor and limit, and the mesh against them (top-level
    /// fields in the JSON).
    #[serde(flatten)]
    pub against: Against,
}

/// The reference lines of one run, and the mesh's ratios to them.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Against {
    /// The floor: a bare tonic unary echo, client and server processes, with
    /// the unary worker's concurrency and connections; calls per second.
    pub floor_rpc_per_second: f64,
    /// The floor's p50 at light load (sequential calls), in microseconds.
    pub floor_p50_us: f64,
    /// Calls in flight in the floor's load.
    pub floor_concurrency: usize,
    /// The limit: SHA-256 digests of 32-byte blocks per second, one core.
    pub sha256_per_second_one_core: f64,
    pub cores: usize,
    /// `hashes_per_second / floor_rpc_per_second`. A hash costs two calls,
    /// so 0.5 is the ceiling; unary mode's measure.
    pub floor_ratio: f64,
    /// `hashes_per_second / (sha256_per_second_one_core * cores)`; batch
    /// mode's measure.
    pub sha256_ratio: f64,
    /// The slower hop's light-load p50 over the floor's p50.
    pub light_p50_over_floor: f64,
}

impl Report {
    /// The table for humans.
    pub fn table(&self) -> String {
        self.summary() + &self.hop_table() + &self.process_table()
    }

    /// The run, its references, the mesh against them, the cross-check.
    fn summary(&self) -> String {
        let mut out = String::new();
        let mode = match self.mode {
            Mode::Unary => format!("unary, {} in flight", self.concurrency),
            Mode::Batch => format!("batch of {}, {} in flight", self.batch, self.concurrency),
        };
        out += &format!(
            "dockercoins bench: {mode}, {:.1} s on {}\n\n",
            self.seconds, self.machine
        );
        out += &format!(
            "  floor           {:>14.0} calls/s   bare tonic echo, {} in flight; light p50 {:.0} us\n",
            self.against.floor_rpc_per_second,
            self.against.floor_concurrency,
            self.against.floor_p50_us
        );
        out += &format!(
            "  SHA-256 limit   {:>14.0} digests/s one core, x {} cores\n",
            self.against.sha256_per_second_one_core, self.against.cores
        );
        out += &format!(
            "  end to end      {:>14.0} hashes/s\n",
            self.hashes_per_second
        );
        out += &self.against_lines();
        out += &format!(
            "  cross-check     worker counted {} hashes and {} coins, Redis holds {} and {}: {}\n",
            self.counted_hashes,
            self.counted_coins,
            self.redis_hashes,
            self.redis_coins,
            if self.cross_check {
                "equal"
            } else {
                "MISMATCH"
            }
        );
        out += &format!(
            "  CPU             {:.3} s per million hashes (rng + hasher + worker + Redis)\n\n",
            self.cpu_seconds_per_million_hashes
        );
        out
    }

    /// Each mode against its own reference (`--json` has both), and the
    /// light-load p50 against the floor's.
    fn against_lines(&self) -> String {
        let against = match self.mode {
            Mode::Unary => format!(
                "{:.3} of the floor (ceiling 0.5: two calls a hash; goal 0.35)",
                self.against.floor_ratio
            ),
            Mode::Batch => format!(
                "{:.1}% of the SHA-256 limit of {} cores (goal 50%)",
                self.against.sha256_ratio * 100.0,
                self.against.cores
            ),
        };
        format!(
            "  against them    {against}\n                  light-load p50 {:.2}x the floor's (goal 1.5x)\n",
            self.against.light_p50_over_floor
        )
    }

    fn hop_table(&self) -> String {
        let mut out =
            String::from("  hop (unary call)  load        p50 us   p99 us  p99.9 us   calls\n");
        for (name, hop) in &self.hops {
            for (load, l) in [("light", hop.light), ("saturated", hop.saturated)] {
                out += &format!(
                    "  {name:<17} {load:<10} {:>7.0}  {:>7.0}  {:>8.0}  {:>6}\n",
                    l.p50_us, l.p99_us, l.p999_us, l.calls
                );
            }
        }
        out
    }

    fn process_table(&self) -> String {
        let mut out = String::from("\n  process   idle RSS MB   peak RSS MB   CPU s\n");
        for (name, usage) in &self.processes {
            let idle = match usage.idle_rss_kb {
                0 => "-".to_owned(),
                kb => format!("{:.1}", kb as f64 / 1024.0),
            };
            out += &format!(
                "  {name:<9} {idle:>11}   {:>11.1}   {:>5.2}\n",
                usage.peak_rss_kb as f64 / 1024.0,
                usage.cpu_seconds
            );
        }
        out
    }
}
