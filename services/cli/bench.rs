//! The measuring commands' command lines: `bench`, `flood`, and the hidden
//! `floor` that `bench` runs as a child. Each starts its own servers as child
//! processes, so none takes a client's settings.

use super::env;
use crate::bench::{
    self, BenchConfig,
    flood::{self, FloodConfig},
    open,
};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// `dockercoins bench`: rng, hasher and a worker as child processes with
/// turbo settings, and a private redis-server.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// `unary` (two RPCs per hash) or `batch` (streams).
    #[arg(long, env = env::BENCH_MODE, value_enum, default_value = "batch")]
    pub mode: bench::Mode,
    /// Length of the measured window.
    #[arg(long, env = env::BENCH_SECONDS, default_value_t = BenchConfig::DEFAULT.seconds)]
    pub seconds: f64,
    /// Blocks per batch in batch mode.
    #[arg(long, env = env::BENCH_BATCH, default_value_t = BenchConfig::DEFAULT.batch)]
    pub batch: usize,
    /// Units of work in flight in the worker [default: 64 unary, 4 batch].
    #[arg(long, env = env::BENCH_CONCURRENCY)]
    pub concurrency: Option<usize>,
    /// gRPC connections per backend in the worker.
    #[arg(long, env = env::BENCH_CHANNELS, default_value_t = BenchConfig::DEFAULT.channels)]
    pub channels: usize,
    /// Time the worker runs before the window opens, in milliseconds.
    #[arg(long, env = env::BENCH_WARMUP_MS, default_value_t = BenchConfig::DEFAULT.warmup.as_millis() as u64)]
    pub warmup_ms: u64,
    /// Sequential probe calls per hop for the light-load latency.
    #[arg(long, env = env::BENCH_PROBES, default_value_t = BenchConfig::DEFAULT.probes)]
    pub probes: usize,
    /// Print the report as JSON instead of a table.
    #[arg(long, env = env::BENCH_JSON)]
    pub json: bool,
    /// Open loop: start units of work at this rate (per second, Poisson
    /// arrivals), each timed from when it was due, and report the latency
    /// it gets (p50, p99, p99.9, max) and the rate achieved.
    #[arg(long, env = env::BENCH_RATE, value_name = "UNITS_PER_SECOND", conflicts_with = "sweep",
          value_parser = super::clients::positive_number)]
    pub rate: Option<f64>,
    /// Open loop, rate after rate (each `--seconds` long), from a tenth of
    /// the mode's ceiling up, to find the knee: the highest rate whose p99
    /// stays under `--p99-target-ms`. Draws the curve to `--plot`.
    #[arg(long, env = env::BENCH_SWEEP)]
    pub sweep: bool,
    /// The p99 a sweep's rate must stay under, in milliseconds.
    #[arg(long, env = env::BENCH_P99_TARGET_MS, default_value_t = open::DEFAULT_P99_TARGET_MS,
          value_parser = super::clients::positive_number)]
    pub p99_target_ms: f64,
    /// Where `--sweep` writes its plot (SVG).
    #[arg(long, env = env::BENCH_PLOT, default_value = open::DEFAULT_PLOT)]
    pub plot: PathBuf,
}

/// `dockercoins flood`: see `bench::flood`.
#[derive(Clone, Debug, clap::Args)]
pub struct FloodArgs {
    /// The servers to flood, comma-separated, one after another.
    #[arg(long, env = env::FLOOD_TARGETS, value_enum, value_delimiter = ',',
          default_value = "rng,hasher,webui,edge")]
    pub targets: Vec<flood::Target>,
    /// Idle connections opened and held (needs `ulimit -n` above it).
    #[arg(long, env = env::FLOOD_IDLE, default_value_t = flood::DEFAULT_IDLE)]
    pub idle: usize,
    /// Requests held in flight at once, after the idle connections.
    #[arg(long, env = env::FLOOD_QUEUED, default_value_t = flood::DEFAULT_QUEUED)]
    pub queued: usize,
    /// Print the report as JSON instead of a table.
    #[arg(long, env = env::FLOOD_JSON)]
    pub json: bool,
}

impl FloodArgs {
    pub fn config(&self) -> FloodConfig {
        FloodConfig {
            targets: self.targets.clone(),
            idle: self.idle,
            queued: self.queued,
        }
    }
}

impl BenchArgs {
    /// What `--sweep` looks for, when asked.
    pub fn sweep(&self) -> Option<open::Sweep> {
        self.sweep.then(|| open::Sweep {
            p99_target: Duration::from_secs_f64(self.p99_target_ms / 1e3),
            plot: self.plot.clone(),
        })
    }

    pub fn config(&self) -> BenchConfig {
        let concurrency = match self.mode {
            bench::Mode::Unary => BenchConfig::UNARY_CONCURRENCY,
            bench::Mode::Batch => BenchConfig::DEFAULT.concurrency,
        };
        BenchConfig {
            mode: self.mode,
            seconds: self.seconds.max(0.1),
            batch: self.batch.max(1),
            concurrency: self.concurrency.unwrap_or(concurrency),
            channels: self.channels.max(1),
            warmup: Duration::from_millis(self.warmup_ms),
            probes: self.probes,
        }
    }
}

/// `dockercoins floor serve|load`, run by `bench` (see `bench::floor`).
#[derive(Clone, Debug, clap::Subcommand)]
pub enum FloorCommand {
    /// Serve the echo.
    Serve {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Call the echo flat out and print the calls answered in the window,
    /// as JSON.
    Load(FloorLoadArgs),
}

/// `dockercoins floor load`.
#[derive(Clone, Debug, clap::Args)]
pub struct FloorLoadArgs {
    /// `host:port` of `floor serve`.
    #[arg(long)]
    pub target: String,
    #[arg(long, default_value_t = BenchConfig::UNARY_CONCURRENCY)]
    pub concurrency: usize,
    #[arg(long, default_value_t = BenchConfig::DEFAULT.channels)]
    pub channels: usize,
    #[arg(long, default_value_t = BenchConfig::DEFAULT.warmup.as_millis() as u64)]
    pub warmup_ms: u64,
    #[arg(long, default_value_t = BenchConfig::DEFAULT.seconds)]
    pub seconds: f64,
}

impl FloorLoadArgs {
    pub fn config(&self) -> bench::floor::LoadConfig {
        bench::floor::LoadConfig {
            target: self.target.clone(),
            concurrency: self.concurrency,
            channels: self.channels,
            warmup: Duration::from_millis(self.warmup_ms),
            seconds: self.seconds.max(0.1),
        }
    }
}
