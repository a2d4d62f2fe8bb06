//! `dockercoins bench`: the mesh's own numbers, reproducible on any machine.
//!
//! Starts rng, hasher and a worker as child processes of this binary, with
//! turbo settings (no delay, unlimited lanes) on loopback, and a private
//! redis-server; measures per-hop gRPC latency at light load (nothing else
//! running) and at saturation (while the worker runs flat out), end-to-end
//! hashes/s from Redis over a fixed window, each process's memory and CPU; and
//! cross-checks Redis against what the worker says it did once stopped.
//!
//! Before the mesh, two reference lines from the same machine, so that a
//! result reads as a share of what the machine allows rather than as an
//! absolute that does not travel: [`floor`], a bare tonic unary call, and
//! [`limit`], SHA-256 on one core.
//!
//! The run is here; [`child`] starts the children and reads their readiness
//! line (for `floor` and `flood` too), `telemetry::procfs` reads their CPU and memory,
//! [`report`] holds what `bench` prints. [`open`] is the open-loop bench
//! (`--rate`, `--sweep`: tail latency at a given load), [`plot`] its curve.

pub mod child;
pub mod flood;
pub mod floor;
pub mod limit;
pub mod open;
mod plot;
pub mod report;

use crate::telemetry::procfs::{self, cpu_seconds, status_kb};
use crate::{
    pb::{
        GenerateRequest, HashRequest, hasher_client::HasherClient as HasherStub,
        rng_client::RngClient as RngStub,
    },
    store::private_redis::PrivateRedis,
    store::{Score, Store},
    telemetry::fields,
};
use child::Process;
use report::{Against, HopLatency, Report};
use serde::Serialize;
use std::{
    collections::BTreeMap,
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::{process::Command, sync::oneshot};
use tonic::transport::Channel;

/// Unary (two RPCs per hash) or batch (streams).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Unary,
    Batch,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub mode: Mode,
    /// The measured window.
    pub seconds: f64,
    /// Blocks per batch (batch mode).
    pub batch: usize,
    /// Units in flight in the worker.
    pub concurrency: usize,
    /// gRPC connections per backend in the worker.
    pub channels: usize,
    /// Before the window: the worker runs, nothing is measured.
    pub warmup: Duration,
    /// Sequential probe calls per hop at light load.
    pub probes: usize,
}

impl BenchConfig {
    /// What `bench` runs unless told otherwise: turbo's batches, a window
    /// long enough to smooth a second's flushes, two seconds to warm up.
    pub const DEFAULT: Self = Self {
        mode: Mode::Batch,
        seconds: 10.0,
        batch: crate::worker::TURBO_BATCH,
        concurrency: crate::worker::TURBO_CONCURRENCY,
        channels: 4,
        warmup: Duration::from_secs(2),
        probes: 2000,
    };

    /// Units in flight in unary mode unless told otherwise: enough calls in
    /// flight to keep both cores busy despite the round trips.
    pub const UNARY_CONCURRENCY: usize = 64;
}

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench needs redis-server on PATH (apt-get install redis-server)")]
    NoRedis,
    #[error("{0}")]
    Failed(String),
}

fn failed(what: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(what.to_string())
}

/// How long a child of `bench` may take to say it is ready.
const START_WITHIN: Duration = Duration::from_secs(20);

/// `dockercoins <args>` as a child logging JSON, read to its readiness line;
/// the address it listens on (empty for the worker).
async fn spawn(args: &[&str]) -> Result<(Process, String), BenchError> {
    let mut command = Command::new(std::env::current_exe().map_err(failed)?);
    command
        .args(args)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        // OTEL_* pass through: `OTEL_EXPORTER_OTLP_ENDPOINT=... dockercoins
        // bench` measures what tracing costs.
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let process = child::start(command, START_WITHIN)
        .await
        .map_err(|error| match error {
            child::StartError::Spawn(error) => failed(error),
            _ => failed(format!("`dockercoins {}` did not start", args.join(" "))),
        })?;
    let listen = process.listen.clone();
    Ok((process, listen))
}
/// Sequential calls to rng and hasher, each timed, until `stop` or `count`.
async fn probe(
    rng: Channel,
    hasher: Channel,
    count: usize,
    mut stop: Option<oneshot::Receiver<()>>,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut rng_samples, mut hasher_samples) = (Vec::new(), Vec::new());
    let mut rng = RngStub::new(rng);
    let mut hasher = HasherStub::new(hasher);
    for _ in 0..count {
        if let Some(stop) = &mut stop
            && stop.try_recv().is_ok()
        {
            break;
        }
        let start = Instant::now();
        let Ok(reply) = rng.generate(GenerateRequest { size: 32 }).await else {
            continue;
        };
        rng_samples.push(start.elapsed());
        let start = Instant::now();
        if hasher
            .hash(HashRequest {
                data: reply.into_inner().data,
            })
            .await
            .is_ok()
        {
            hasher_samples.push(start.elapsed());
        }
    }
    (rng_samples, hasher_samples)
}

async fn channel(addr: &str) -> Result<Channel, BenchError> {
    Channel::from_shared(format!("http://{addr}"))
        .map_err(failed)?
        .connect()
        .await
        .map_err(failed)
}

/// rng and hasher as child processes in turbo, and the private Redis.
struct Mesh {
    redis: PrivateRedis,
    rng: Process,
    hasher: Process,
}

impl Mesh {
    async fn start() -> Result<Self, BenchError> {
        let redis = PrivateRedis::start()
            .await
            .map_err(failed)?
            .ok_or(BenchError::NoRedis)?;
        let (rng, _) = spawn(&[
            "rng",
            "--listen",
            "127.0.0.1:0",
            "--delay-ms",
            "0",
            "--lanes",
            "0",
        ])
        .await?;
        let (hasher, _) = spawn(&["hasher", "--listen", "127.0.0.1:0", "--delay-ms", "0"]).await?;
        Ok(Self { redis, rng, hasher })
    }

    /// The worker under test: mining flat out, or with `paced` = (rate,
    /// units in flight at most), in open loop, timing units after the
    /// warm-up.
    async fn start_worker(
        &self,
        config: &BenchConfig,
        paced: Option<(f64, usize)>,
    ) -> Result<Process, BenchError> {
        let batch = match config.mode {
            Mode::Unary => "0".to_owned(),
            Mode::Batch => config.batch.to_string(),
        };
        let (rng_url, hasher_url) = (
            format!("http://{}", self.rng.listen),
            format!("http://{}", self.hasher.listen),
        );
        let channels = config.channels.to_string();
        let wallet_cap = crate::worker::TURBO_WALLET_CAP.to_string();
        let concurrency = paced.map_or(config.concurrency, |(_, cap)| cap).to_string();
        let mut args = vec![
            "worker",
            "--rng",
            &rng_url,
            "--hasher",
            &hasher_url,
            "--redis",
            &self.redis.url,
            "--delay-ms",
            "0",
            "--concurrency",
            &concurrency,
            "--batch",
            &batch,
            "--grpc-channels",
            &channels,
            "--wallet-cap",
            &wallet_cap,
        ];
        let (rate, warmup) = (
            paced.map(|(rate, _)| rate.to_string()).unwrap_or_default(),
            config.warmup.as_millis().to_string(),
        );
        if paced.is_some() {
            args.extend(["--rate", &rate, "--rate-warmup-ms", &warmup]);
        }
        let (worker, _) = spawn(&args).await?;
        Ok(worker)
    }

    /// Stops rng and hasher (dropped, they are killed) and Redis.
    async fn stop(self) {
        let Mesh { redis, rng, hasher } = self;
        drop((rng, hasher));
        redis.stop().await;
    }
}

/// What the measured window saw.
struct Window {
    hashes: u64,
    seconds: f64,
    /// CPU seconds of rng, hasher, worker and Redis over the window.
    cpu: Vec<f64>,
    rng_saturated: Vec<Duration>,
    hasher_saturated: Vec<Duration>,
}

/// The window: Redis counter and CPU at both ends, the probe meanwhile.
async fn measure(
    config: &BenchConfig,
    store: &Store,
    (rng, hasher): (Channel, Channel),
    pids: [u32; 4],
) -> Result<Window, BenchError> {
    let cpu_before: Vec<f64> = pids.iter().map(|&pid| cpu_seconds(pid)).collect();
    let start_score = store.score().await.map_err(failed)?;
    let start = Instant::now();
    let (stop_probe, probe_stopped) = oneshot::channel();
    let saturated = tokio::spawn(probe(rng, hasher, usize::MAX, Some(probe_stopped)));
    tokio::time::sleep(Duration::from_secs_f64(config.seconds)).await;
    let end_score = store.score().await.map_err(failed)?;
    let seconds = start.elapsed().as_secs_f64();
    let cpu = pids
        .iter()
        .zip(cpu_before)
        .map(|(&pid, before)| cpu_seconds(pid) - before)
        .collect();
    let _ = stop_probe.send(());
    let (rng_saturated, hasher_saturated) = saturated.await.map_err(failed)?;
    Ok(Window {
        hashes: end_score.hashes.saturating_sub(start_score.hashes),
        seconds,
        cpu,
        rng_saturated,
        hasher_saturated,
    })
}

/// What the worker's last line says it did.
struct LastWords {
    hashes_done: u64,
    hashes_flushed: u64,
    coins_found: u64,
    /// An open-loop worker's latency report.
    open_loop: Option<crate::worker::OpenLoopReport>,
}

/// Stops the worker as docker would, and reads its last words: the hashes
/// it did, those Redis acknowledged, and the coins it found.
async fn stop_worker(mut worker: Process) -> Result<LastWords, BenchError> {
    // Already gone is what the lines below find out: no error of its own.
    let _ = child::sigterm(&worker.child);
    let mut counted = None;
    let mut open_loop = None;
    // Every line up to the end of its stderr, which comes when it exits: a
    // line still in the pipe when it exits is read, not missed.
    let last_words = async {
        while let Some(line) = worker.lines.recv().await {
            let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let logged = &value["fields"];
            if let Some(report) = logged[fields::OPEN_LOOP].as_str() {
                open_loop = serde_json::from_str(report).ok();
            }
            if let (Some(hashes_done), Some(hashes_flushed), Some(coins_found)) = (
                logged[fields::HASHES_DONE].as_u64(),
                logged[fields::HASHES_FLUSHED].as_u64(),
                logged[fields::COINS_FOUND].as_u64(),
            ) {
                counted = Some((hashes_done, hashes_flushed, coins_found));
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), last_words).await;
    // Its stderr closed: it has exited, or is about to; dropped, it is killed.
    let _ = tokio::time::timeout(Duration::from_secs(1), worker.child.wait()).await;
    let (hashes_done, hashes_flushed, coins_found) = counted.ok_or_else(|| {
        failed(format!(
            "the worker's last log line has no {}",
            fields::HASHES_DONE
        ))
    })?;
    Ok(LastWords {
        hashes_done,
        hashes_flushed,
        coins_found,
        open_loop,
    })
}

/// How long the SHA-256 limit is measured.
const LIMIT_SECONDS: Duration = Duration::from_secs(1);

/// The reference lines, measured before the mesh starts.
struct References {
    floor: floor::Floor,
    floor_concurrency: usize,
    sha256_one_core: f64,
    cores: usize,
}

impl References {
    async fn measure(config: &BenchConfig) -> Result<Self, BenchError> {
        let sha256_one_core =
            tokio::task::spawn_blocking(|| limit::sha256_per_second_one_core(LIMIT_SECONDS))
                .await
                .map_err(failed)?;
        // The unary worker's units in flight, whichever mode runs next.
        let floor_concurrency = match config.mode {
            Mode::Unary => config.concurrency,
            Mode::Batch => BenchConfig::UNARY_CONCURRENCY,
        };
        Ok(Self {
            floor: floor::measure(config, floor_concurrency).await?,
            floor_concurrency,
            sha256_one_core,
            cores: limit::cores(),
        })
    }
}

impl References {
    /// The mesh's `hashes_per_second` and slower light-load p50 against them.
    fn against(&self, hashes_per_second: f64, slower_p50_us: f64) -> Against {
        let (floor, limit) = (self.floor, self.sha256_one_core);
        Against {
            floor_rpc_per_second: floor.calls_per_second,
            floor_p50_us: floor.light.p50_us,
            floor_concurrency: self.floor_concurrency,
            sha256_per_second_one_core: limit,
            cores: self.cores,
            floor_ratio: ratio(hashes_per_second, floor.calls_per_second),
            sha256_ratio: ratio(hashes_per_second, limit * self.cores as f64),
            light_p50_over_floor: ratio(slower_p50_us, floor.light.p50_us),
        }
    }
}

/// `part / whole`, 0 when there is no whole.
fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}

/// What the run saw, besides the window.
struct Observed {
    rng_light: Vec<Duration>,
    hasher_light: Vec<Duration>,
    idle_rss: [u64; 4],
    peak_rss: [u64; 4],
    last_words: LastWords,
    /// The score once the worker stopped.
    held: Score,
}

/// Runs the bench and returns its report.
pub async fn run(config: &BenchConfig) -> Result<Report, BenchError> {
    let references = References::measure(config).await?;
    let mesh = Mesh::start().await?;
    let rng_pid = mesh.rng.child.id().unwrap_or(0);
    let hasher_pid = mesh.hasher.child.id().unwrap_or(0);
    let redis_pid = mesh.redis.pid().unwrap_or(0);
    let channels = (
        channel(&mesh.rng.listen).await?,
        channel(&mesh.hasher.listen).await?,
    );

    // Light load: the probe alone.
    let (rng_light, hasher_light) =
        probe(channels.0.clone(), channels.1.clone(), config.probes, None).await;
    let idle = |pid| status_kb(pid, "VmRSS:");
    // The worker is never idle: it mines from its first breath.
    let idle_rss = [idle(rng_pid), idle(hasher_pid), 0, idle(redis_pid)];

    let worker = mesh.start_worker(config, None).await?;
    let worker_pid = worker.child.id().unwrap_or(0);
    let store = Store::redis(&mesh.redis.url, Duration::from_secs(2)).map_err(failed)?;
    tokio::time::sleep(config.warmup).await;
    let pids = [rng_pid, hasher_pid, worker_pid, redis_pid];
    let window = measure(config, &store, channels, pids).await?;
    let peak_rss = pids.map(|pid| status_kb(pid, "VmHWM:"));

    let last_words = stop_worker(worker).await?;
    let held = store.score().await.map_err(failed)?;
    mesh.stop().await;
    let observed = Observed {
        rng_light,
        hasher_light,
        idle_rss,
        peak_rss,
        last_words,
        held,
    };
    Ok(make_report(config, &references, window, observed))
}

/// The report of a run: its numbers, and its numbers against the references.
fn make_report(
    config: &BenchConfig,
    references: &References,
    window: Window,
    seen: Observed,
) -> Report {
    let processes = report::usages(seen.idle_rss, seen.peak_rss, &window.cpu);
    let cpu: f64 = window.cpu.iter().sum();
    let hops = BTreeMap::from([
        ("rng", HopLatency::of(seen.rng_light, window.rng_saturated)),
        (
            "hasher",
            HopLatency::of(seen.hasher_light, window.hasher_saturated),
        ),
    ]);
    let slower_p50 = hops.values().map(|hop| hop.p50_us).fold(0.0, f64::max);
    let hashes_per_second = window.hashes as f64 / window.seconds;
    let (counted_hashes, flushed_hashes) =
        (seen.last_words.hashes_done, seen.last_words.hashes_flushed);
    let (held, counted_coins) = (seen.held, seen.last_words.coins_found);
    Report {
        mode: config.mode,
        batch: if config.mode == Mode::Batch {
            config.batch
        } else {
            0
        },
        concurrency: config.concurrency,
        seconds: window.seconds,
        hashes_per_second,
        counted_hashes,
        flushed_hashes,
        redis_hashes: held.hashes,
        counted_coins,
        redis_coins: held.coins,
        cross_check: counted_hashes == held.hashes
            && counted_hashes == flushed_hashes
            && counted_coins == held.coins,
        hops,
        processes,
        cpu_seconds_per_million_hashes: if window.hashes > 0 {
            cpu / window.hashes as f64 * 1e6
        } else {
            0.0
        },
        machine: procfs::machine(),
        against: references.against(hashes_per_second, slower_p50),
    }
}
