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

pub mod flood;
pub mod floor;
pub mod limit;

use crate::{
    pb::{
        GenerateRequest, HashRequest, hasher_client::HasherClient as HasherStub,
        rng_client::RngClient as RngStub,
    },
    store::Store,
    store::private_redis::PrivateRedis,
    telemetry::fields,
};
use serde::Serialize;
use std::{
    collections::BTreeMap,
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::oneshot,
};
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

/// Latency percentiles of one hop, client-observed, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub calls: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |q: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_secs_f64() * 1e6
        };
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
pub struct Hop {
    pub light: Latency,
    pub saturated: Latency,
    /// The light-load numbers, at the top for scripts.
    pub p50_us: f64,
    pub p99_us: f64,
}

/// One process's memory (kB, from /proc: VmRSS idle, VmHWM peak) and CPU.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Usage {
    pub idle_rss_kb: u64,
    pub peak_rss_kb: u64,
    pub cpu_seconds: f64,
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
    pub hops: BTreeMap<&'static str, Hop>,
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

/// A child `dockercoins` process, its pid and the address it listens on.
struct Service {
    child: Child,
    /// stderr lines after the start-up line.
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

async fn spawn(args: &[&str]) -> Result<(Service, String), BenchError> {
    let exe = std::env::current_exe().map_err(failed)?;
    let mut child = Command::new(exe)
        .args(args)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        // OTEL_* pass through: `OTEL_EXPORTER_OTLP_ENDPOINT=... dockercoins
        // bench` measures what tracing costs.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(failed)?;
    let mut stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
    let started = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = stderr.next_line().await {
            let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let logged = &value["fields"];
            if let Some(listen) = logged[fields::LISTEN].as_str() {
                return Some(listen.to_owned());
            }
            if logged["message"].as_str() == Some(fields::WORKER_MINING) {
                return Some(String::new());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| failed(format!("`dockercoins {}` did not start", args.join(" "))))?;
    let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            let _ = tx.send(line);
        }
    });
    Ok((Service { child, lines }, started))
}

/// (utime + stime) in seconds, from /proc/<pid>/stat (USER_HZ = 100 on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// A `/proc/<pid>/status` field in kB (`VmRSS:`, `VmHWM:`...); 0 when the
/// process or the field is not there.
pub fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
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

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{} cores, {cpu}", limit::cores())
}

/// rng and hasher as child processes in turbo, and the private Redis.
struct Mesh {
    redis: PrivateRedis,
    rng: Service,
    hasher: Service,
    rng_addr: String,
    hasher_addr: String,
}

impl Mesh {
    async fn start() -> Result<Self, BenchError> {
        let redis = PrivateRedis::start()
            .await
            .map_err(failed)?
            .ok_or(BenchError::NoRedis)?;
        let (rng, rng_addr) = spawn(&[
            "rng",
            "--listen",
            "127.0.0.1:0",
            "--delay-ms",
            "0",
            "--lanes",
            "0",
        ])
        .await?;
        let (hasher, hasher_addr) =
            spawn(&["hasher", "--listen", "127.0.0.1:0", "--delay-ms", "0"]).await?;
        Ok(Self {
            redis,
            rng,
            hasher,
            rng_addr,
            hasher_addr,
        })
    }

    /// The worker under test, mining flat out.
    async fn start_worker(&self, config: &BenchConfig) -> Result<Service, BenchError> {
        let batch = match config.mode {
            Mode::Unary => "0".to_owned(),
            Mode::Batch => config.batch.to_string(),
        };
        let (rng_url, hasher_url) = (
            format!("http://{}", self.rng_addr),
            format!("http://{}", self.hasher_addr),
        );
        let (worker, _) = spawn(&[
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
            &config.concurrency.to_string(),
            "--batch",
            &batch,
            "--grpc-channels",
            &config.channels.to_string(),
            "--wallet-cap",
            &crate::worker::TURBO_WALLET_CAP.to_string(),
        ])
        .await?;
        Ok(worker)
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
}

/// Stops the worker as docker would, and reads its last words: the hashes
/// it did, those Redis acknowledged, and the coins it found.
async fn stop_worker(mut worker: Service, pid: u32) -> Result<LastWords, BenchError> {
    // Already gone is what the lines below find out: no error of its own.
    let _ = crate::shutdown::terminate(pid);
    let mut counted = None;
    // Every line up to the end of its stderr, which comes when it exits: a
    // line still in the pipe when it exits is read, not missed.
    let last_words = async {
        while let Some(line) = worker.lines.recv().await {
            let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let logged = &value["fields"];
            if let (Some(hashes_done), Some(hashes_flushed), Some(coins_found)) = (
                logged[fields::HASHES_DONE].as_u64(),
                logged[fields::HASHES_FLUSHED].as_u64(),
                logged[fields::COINS_FOUND].as_u64(),
            ) {
                counted = Some(LastWords {
                    hashes_done,
                    hashes_flushed,
                    coins_found,
                });
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), last_words).await;
    // Its stderr closed: it has exited, or is about to; dropped, it is killed.
    let _ = tokio::time::timeout(Duration::from_secs(1), worker.child.wait()).await;
    counted.ok_or_else(|| {
        failed(format!(
            "the worker's last log line has no {}",
            fields::HASHES_DONE
        ))
    })
}

fn hop(light: Vec<Duration>, saturated: Vec<Duration>) -> Hop {
    let light = Latency::of(light);
    Hop {
        p50_us: light.p50_us,
        p99_us: light.p99_us,
        light,
        saturated: Latency::of(saturated),
    }
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

/// Runs the bench and returns its report.
pub async fn run(config: &BenchConfig) -> Result<Report, BenchError> {
    let references = References::measure(config).await?;
    let mesh = Mesh::start().await?;
    let rng_pid = mesh.rng.child.id().unwrap_or(0);
    let hasher_pid = mesh.hasher.child.id().unwrap_or(0);
    let redis_pid = mesh.redis.pid().unwrap_or(0);
    let channels = (
        channel(&mesh.rng_addr).await?,
        channel(&mesh.hasher_addr).await?,
    );

    // Light load: the probe alone.
    let (rng_light, hasher_light) =
        probe(channels.0.clone(), channels.1.clone(), config.probes, None).await;
    let idle = |pid| status_kb(pid, "VmRSS:");
    // The worker is never idle: it mines from its first breath.
    let idle_rss = [idle(rng_pid), idle(hasher_pid), 0, idle(redis_pid)];

    let worker = mesh.start_worker(config).await?;
    let worker_pid = worker.child.id().unwrap_or(0);
    let store = Store::redis(&mesh.redis.url, Duration::from_secs(2)).map_err(failed)?;
    tokio::time::sleep(config.warmup).await;
    let pids = [rng_pid, hasher_pid, worker_pid, redis_pid];
    let window = measure(config, &store, channels, pids).await?;
    let peak_rss = pids.map(|pid| status_kb(pid, "VmHWM:"));

    let last_words = stop_worker(worker, worker_pid).await?;
    let held = store.score().await.map_err(failed)?;
    let (counted_hashes, flushed_hashes) = (last_words.hashes_done, last_words.hashes_flushed);
    let Mesh {
        redis, rng, hasher, ..
    } = mesh;
    drop((rng, hasher));
    redis.stop().await;

    let processes = usages(idle_rss, peak_rss, &window.cpu);
    let cpu: f64 = window.cpu.iter().sum();
    let hops = BTreeMap::from([
        ("rng", hop(rng_light, window.rng_saturated)),
        ("hasher", hop(hasher_light, window.hasher_saturated)),
    ]);
    let slower_p50 = hops.values().map(|hop| hop.p50_us).fold(0.0, f64::max);
    let hashes_per_second = window.hashes as f64 / window.seconds;
    Ok(Report {
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
        counted_coins: last_words.coins_found,
        redis_coins: held.coins,
        cross_check: counted_hashes == held.hashes
            && counted_hashes == flushed_hashes
            && last_words.coins_found == held.coins,
        hops,
        processes,
        cpu_seconds_per_million_hashes: if window.hashes > 0 {
            cpu / window.hashes as f64 * 1e6
        } else {
            0.0
        },
        machine: machine(),
        against: references.against(hashes_per_second, slower_p50),
    })
}

/// Each process's memory and CPU, by name.
fn usages(idle_rss: [u64; 4], peak_rss: [u64; 4], cpu: &[f64]) -> BTreeMap<&'static str, Usage> {
    let names = ["rng", "hasher", "worker", "redis"];
    (0..names.len())
        .map(|i| {
            let usage = Usage {
                idle_rss_kb: idle_rss[i],
                peak_rss_kb: peak_rss[i],
                cpu_seconds: cpu[i],
            };
            (names[i], usage)
        })
        .collect()
}

impl Report {
    /// The table for humans.
    pub fn table(&self) -> String {
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
        // Each mode against its own reference; `--json` has both.
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
        out += &format!("  against them    {against}\n");
        out += &format!(
            "                  light-load p50 {:.2}x the floor's (goal 1.5x)\n",
            self.against.light_p50_over_floor
        );
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
        out += "  hop (unary call)  load        p50 us   p99 us  p99.9 us   calls\n";
        for (name, hop) in &self.hops {
            for (load, l) in [("light", hop.light), ("saturated", hop.saturated)] {
                out += &format!(
                    "  {name:<17} {load:<10} {:>7.0}  {:>7.0}  {:>8.0}  {:>6}\n",
                    l.p50_us, l.p99_us, l.p999_us, l.calls
                );
            }
        }
        out += "\n  process   idle RSS MB   peak RSS MB   CPU s\n";
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
