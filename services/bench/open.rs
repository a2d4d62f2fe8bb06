//! `bench --rate` and `bench --sweep`: the mesh in open loop.
//!
//! The closed-loop bench keeps a fixed number of units in flight and says
//! how fast the mesh goes; it cannot say what latency a given load gets,
//! because a slow mesh slows its own load down. Here the worker starts
//! units at a steady random rate (`worker --rate`, see
//! `worker::open_loop`), each timed from when it was due, so a queue shows
//! as latency. `--rate` runs one rate; `--sweep` raises the rate step by
//! step and reports the knee: the highest rate whose p99 stays under the
//! target while the mesh keeps up. Each step is a worker of its own against
//! the same rng, hasher and Redis, and each is cross-checked against Redis.

use super::{BenchConfig, BenchError, Mesh, Mode, References, failed, stop_worker};
use crate::telemetry::procfs::{self, cpu_seconds};
use crate::{store::Store, worker::OpenLoopReport};
use serde::Serialize;
use std::{path::PathBuf, time::Duration};

/// What `--sweep` looks for, and where it draws the curve.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// The p99 a rate must stay under to count.
    pub p99_target: Duration,
    /// The SVG plot of latency against rate.
    pub plot: PathBuf,
}

/// The p99 a sweep's knee must stay under unless told otherwise.
pub const DEFAULT_P99_TARGET_MS: f64 = 5.0;
/// Where `--sweep` writes its plot unless told otherwise.
pub const DEFAULT_PLOT: &str = "dockercoins-sweep.svg";

/// The sweep's first rate, as a share of the mode's ceiling (the floor's
/// calls over two in unary, the SHA-256 limit in batch).
const FIRST_STEP: f64 = 0.1;
/// Each step's rate over the last one's.
const STEP_FACTOR: f64 = 1.25;
/// A sweep stops after this many steps even if every one kept up.
const MAX_STEPS: usize = 24;
/// Steps between the last good rate and the first bad one, halving the gap.
const REFINEMENTS: usize = 2;
/// A step keeps up when it finishes at least this share of the rate asked.
const KEPT_UP: f64 = 0.95;
/// Units in flight at most: enough that the cap is not what limits the
/// rate, few enough that a batch's blocks stay within memory (8192 blocks
/// are half a megabyte in flight).
const UNARY_IN_FLIGHT: usize = 4096;
const BATCH_IN_FLIGHT: usize = 64;

/// One rate, in open loop.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// Units of work per second asked for, and finished.
    pub asked_per_second: f64,
    pub achieved_per_second: f64,
    /// Latency from a unit's due time to its count, milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Units timed, failed (or refused), and cut short by the stop.
    pub units: u64,
    pub failed: u64,
    pub unfinished: u64,
    /// Hashes per second in Redis over the window.
    pub hashes_per_second: f64,
    /// CPU of rng, hasher, worker and Redis per million hashes.
    pub cpu_seconds_per_million_hashes: f64,
    /// The worker's count against what Redis gained while it ran.
    pub counted_hashes: u64,
    pub redis_hashes: u64,
    pub cross_check: bool,
}

impl Step {
    /// Whether this rate counts: the mesh kept up, nothing failed, and the
    /// p99 is under `target`.
    fn within(&self, target: Duration) -> bool {
        self.achieved_per_second >= KEPT_UP * self.asked_per_second
            && self.failed == 0
            && self.p99_ms < target.as_secs_f64() * 1e3
    }

    fn line(&self, target: Option<Duration>) -> String {
        let verdict = match target {
            Some(target) if self.within(target) => "  ok",
            Some(_) => "  over",
            None => "",
        };
        format!(
            "  {:>10.0} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>9.3}{verdict}\n",
            self.asked_per_second,
            self.achieved_per_second,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.failed,
            self.cpu_seconds_per_million_hashes,
        )
    }
}

const STEP_HEADER: &str =
    "       asked   achieved   p50 ms   p99 ms  p99.9 ms  max ms  failed  CPU s/Mh\n";

/// `bench --rate`: one rate.
#[derive(Clone, Debug, Serialize)]
pub struct RateReport {
    pub mode: Mode,
    pub batch: usize,
    pub seconds: f64,
    pub step: Step,
    pub machine: String,
}

impl RateReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "dockercoins bench --rate {:.0}: {}, open loop, {:.1} s on {}\n\n",
            self.step.asked_per_second,
            mode_name(self.mode, self.batch),
            self.seconds,
            self.machine
        );
        out += STEP_HEADER;
        out += &self.step.line(None);
        out += &unfinished_line(std::slice::from_ref(&self.step));
        out += &cross_check_line(std::slice::from_ref(&self.step));
        out
    }

    pub fn cross_check(&self) -> bool {
        self.step.cross_check
    }
}

/// `bench --sweep`: the steps, and the knee.
#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    pub mode: Mode,
    pub batch: usize,
    /// Each step's measured window.
    pub seconds: f64,
    pub p99_target_ms: f64,
    /// The references: the bare tonic echo's calls/s, SHA-256 on all cores.
    pub floor_rpc_per_second: f64,
    pub sha256_per_second: f64,
    pub steps: Vec<Step>,
    /// The highest rate within the target, if any.
    pub knee: Option<Step>,
    /// Unary: the knee's units/s over the floor's calls/s (ceiling 0.5, two
    /// calls a unit). Batch: the knee's hashes/s over the SHA-256 limit.
    pub knee_ratio: f64,
    pub plot: String,
    pub machine: String,
}

impl SweepReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "dockercoins bench --sweep: {}, open loop, {:.1} s a step on {}\n\n",
            mode_name(self.mode, self.batch),
            self.seconds,
            self.machine
        );
        out += &format!(
            "  floor {:.0} calls/s, SHA-256 limit {:.0} digests/s; target p99 < {} ms\n\n",
            self.floor_rpc_per_second, self.sha256_per_second, self.p99_target_ms
        );
        out += STEP_HEADER;
        let target = Duration::from_secs_f64(self.p99_target_ms / 1e3);
        let mut steps: Vec<&Step> = self.steps.iter().collect();
        steps.sort_by(|a, b| a.asked_per_second.total_cmp(&b.asked_per_second));
        for step in steps {
            out += &step.line(Some(target));
        }
        out += "\n";
        out += &match &self.knee {
            Some(knee) => match self.mode {
                Mode::Unary => format!(
                    "  knee            {:.0} units/s with p99 {:.2} ms: {:.3} of the floor (ceiling 0.5; goal 0.30)\n",
                    knee.asked_per_second, knee.p99_ms, self.knee_ratio
                ),
                Mode::Batch => format!(
                    "  knee            {:.1} batches/s with p99 {:.2} ms: {:.1}% of the SHA-256 limit\n",
                    knee.asked_per_second,
                    knee.p99_ms,
                    self.knee_ratio * 100.0
                ),
            },
            None => format!(
                "  knee            none: even the first rate missed p99 < {} ms\n",
                self.p99_target_ms
            ),
        };
        out += &unfinished_line(&self.steps);
        out += &cross_check_line(&self.steps);
        out += &format!("  plot            {}\n", self.plot);
        out
    }

    pub fn cross_check(&self) -> bool {
        self.steps.iter().all(|step| step.cross_check)
    }
}

fn mode_name(mode: Mode, batch: usize) -> String {
    match mode {
        Mode::Unary => "unary".to_owned(),
        Mode::Batch => format!("batch of {batch}"),
    }
}

/// The units due and not done when their worker stopped, when there were
/// any: not timed, so the percentiles do not include them; said, so that a
/// mesh far behind cannot hide them.
fn unfinished_line(steps: &[Step]) -> String {
    match steps.iter().map(|step| step.unfinished).sum::<u64>() {
        0 => String::new(),
        n => format!(
            "  unfinished      {n} units due and not done when the worker stopped (running, or never started: the mesh was behind), not timed\n"
        ),
    }
}

fn cross_check_line(steps: &[Step]) -> String {
    let counted: u64 = steps.iter().map(|step| step.counted_hashes).sum();
    let held: u64 = steps.iter().map(|step| step.redis_hashes).sum();
    let equal = steps.iter().all(|step| step.cross_check);
    format!(
        "  cross-check     workers counted {counted} hashes, Redis gained {held}: {}\n",
        if equal { "equal" } else { "MISMATCH" }
    )
}

/// `bench --rate RATE`.
pub async fn rate(config: &BenchConfig, rate: f64) -> Result<RateReport, BenchError> {
    let mesh = Mesh::start().await?;
    let store = Store::redis(&mesh.redis.url, Duration::from_secs(2)).map_err(failed)?;
    let step = step(&mesh, &store, config, rate).await;
    mesh.stop().await;
    Ok(RateReport {
        mode: config.mode,
        batch: batch_of(config),
        seconds: config.seconds,
        step: step?,
        machine: procfs::machine(),
    })
}

/// `bench --sweep`: the references, then rates from a tenth of the mode's
/// ceiling up by a quarter each step until one misses the target, then two
/// steps halving the gap between the last rate that met it and that one.
pub async fn sweep(config: &BenchConfig, sweep: &Sweep) -> Result<SweepReport, BenchError> {
    let references = References::measure(config).await?;
    let sha256_per_second = references.sha256_one_core * references.cores as f64;
    let ceiling = match config.mode {
        Mode::Unary => references.floor.calls_per_second / 2.0,
        Mode::Batch => sha256_per_second / config.batch.max(1) as f64,
    };
    let mesh = Mesh::start().await?;
    let store = Store::redis(&mesh.redis.url, Duration::from_secs(2)).map_err(failed)?;
    let steps = climb(&mesh, &store, config, sweep.p99_target, ceiling).await;
    mesh.stop().await;
    let steps = steps?;
    let knee = steps
        .iter()
        .filter(|step| step.within(sweep.p99_target))
        .max_by(|a, b| a.asked_per_second.total_cmp(&b.asked_per_second))
        .cloned();
    let knee_ratio = knee.as_ref().map_or(0.0, |knee| match config.mode {
        Mode::Unary => knee.achieved_per_second / references.floor.calls_per_second,
        Mode::Batch => knee.hashes_per_second / sha256_per_second,
    });
    let report = SweepReport {
        mode: config.mode,
        batch: batch_of(config),
        seconds: config.seconds,
        p99_target_ms: sweep.p99_target.as_secs_f64() * 1e3,
        floor_rpc_per_second: references.floor.calls_per_second,
        sha256_per_second,
        steps,
        knee,
        knee_ratio,
        plot: sweep.plot.display().to_string(),
        machine: procfs::machine(),
    };
    super::plot::latency_against_rate(&report, &sweep.plot)
        .map_err(|error| failed(format!("the plot {}: {error}", sweep.plot.display())))?;
    Ok(report)
}

/// The steps up, then the refinements.
async fn climb(
    mesh: &Mesh,
    store: &Store,
    config: &BenchConfig,
    target: Duration,
    ceiling: f64,
) -> Result<Vec<Step>, BenchError> {
    let mut steps = Vec::new();
    let mut rate = ceiling * FIRST_STEP;
    let mut good: Option<f64> = None;
    let mut bad: Option<f64> = None;
    for _ in 0..MAX_STEPS {
        let measured = step(mesh, store, config, rate).await?;
        eprintln!(
            "bench --sweep: {:.0}/s asked, p99 {:.2} ms",
            rate, measured.p99_ms
        );
        let within = measured.within(target);
        steps.push(measured);
        if !within {
            bad = Some(rate);
            break;
        }
        good = Some(rate);
        rate *= STEP_FACTOR;
    }
    let (Some(mut low), Some(mut high)) = (good, bad) else {
        return Ok(steps);
    };
    for _ in 0..REFINEMENTS {
        let rate = (low + high) / 2.0;
        let measured = step(mesh, store, config, rate).await?;
        eprintln!(
            "bench --sweep: {:.0}/s asked, p99 {:.2} ms",
            rate, measured.p99_ms
        );
        if measured.within(target) {
            low = rate;
        } else {
            high = rate;
        }
        steps.push(measured);
    }
    Ok(steps)
}

fn batch_of(config: &BenchConfig) -> usize {
    match config.mode {
        Mode::Unary => 0,
        Mode::Batch => config.batch,
    }
}

/// One worker at `rate` for the warm-up and the window, then stopped and
/// checked against what Redis gained meanwhile.
async fn step(
    mesh: &Mesh,
    store: &Store,
    config: &BenchConfig,
    rate: f64,
) -> Result<Step, BenchError> {
    let in_flight = match config.mode {
        Mode::Unary => UNARY_IN_FLIGHT,
        Mode::Batch => BATCH_IN_FLIGHT,
    };
    let held_before = store.score().await.map_err(failed)?.hashes;
    let worker = mesh.start_worker(config, Some((rate, in_flight))).await?;
    tokio::time::sleep(config.warmup).await;
    let pids = [
        mesh.rng.child.id().unwrap_or(0),
        mesh.hasher.child.id().unwrap_or(0),
        worker.child.id().unwrap_or(0),
        mesh.redis.pid().unwrap_or(0),
    ];
    let cpu_before: f64 = pids.iter().map(|&pid| cpu_seconds(pid)).sum();
    let window_start = store.score().await.map_err(failed)?.hashes;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(config.seconds)).await;
    let window_end = store.score().await.map_err(failed)?.hashes;
    let seconds = started.elapsed().as_secs_f64();
    let cpu: f64 = pids.iter().map(|&pid| cpu_seconds(pid)).sum::<f64>() - cpu_before;
    let last_words = stop_worker(worker).await?;
    let held_after = store.score().await.map_err(failed)?.hashes;
    let report: OpenLoopReport = last_words
        .open_loop
        .ok_or_else(|| failed("the open-loop worker did not report its latency"))?;
    let hashes = window_end.saturating_sub(window_start);
    let gained = held_after.saturating_sub(held_before);
    let ms = |us: u64| us as f64 / 1e3;
    Ok(Step {
        asked_per_second: rate,
        achieved_per_second: report.achieved_per_second,
        p50_ms: ms(report.p50_us),
        p99_ms: ms(report.p99_us),
        p999_ms: ms(report.p999_us),
        max_ms: ms(report.max_us),
        units: report.units,
        failed: report.failed,
        unfinished: report.unfinished,
        hashes_per_second: hashes as f64 / seconds,
        cpu_seconds_per_million_hashes: if hashes > 0 {
            cpu / hashes as f64 * 1e6
        } else {
            0.0
        },
        counted_hashes: last_words.hashes_done,
        redis_hashes: gained,
        cross_check: last_words.hashes_done == gained
            && last_words.hashes_done == last_words.hashes_flushed,
    })
}
