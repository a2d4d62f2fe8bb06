//! The command line, and nothing else: every setting of every command, its
//! flag, its environment variable, and the default that the service's own
//! module defines (`rng::DEFAULT_DELAY_MS`...). Parsed once by clap in
//! `main` and turned here into the typed configs the services take; library
//! code never reads the environment, so tests build configs directly.
//!
//! docs/settings.md's table is checked against these definitions by a test.
//!
//! One file per family of commands, so a change to one command touches one
//! file: `servers` (rng, hasher, edge), `clients` (worker, webui, and the
//! balancer's settings every client shares), `up`, `bench` (bench, flood,
//! floor) and `inspect` (traces, top, doctor, healthcheck); `env` names
//! every environment variable. Here: the top-level `Cli` and `Command`,
//! and the re-exports that keep `cli::XArgs` one path for every command.

mod bench;
mod clients;
pub mod env;
mod inspect;
mod servers;
mod up;

pub use bench::{BenchArgs, FloodArgs, FloorCommand, FloorLoadArgs};
pub use clients::{BalancerArgs, ClientArgs, ClientTlsArgs, WebuiArgs, WorkerArgs};
pub use inspect::{DoctorArgs, HealthcheckArgs, TopArgs, TracesArgs};
pub use servers::{EdgeArgs, HasherArgs, RngArgs, ServerTlsArgs};
pub use up::UpArgs;

/// The `dockercoins` command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "dockercoins",
    version,
    about = "dockercoins, the Docker classroom demo, as a Rust gRPC mesh",
    long_about = "dockercoins, the Docker classroom demo, as a Rust gRPC mesh.\n\n\
        Each subcommand runs one service. Every flag can also be set by the \
        environment variable shown in its help.",
    after_help = "Examples:\n  \
        dockercoins rng                       # classroom rng on 0.0.0.0:8001\n  \
        dockercoins rng --delay-ms 0 --lanes 0  # turbo rng\n  \
        dockercoins hasher --listen 127.0.0.1:8002"
)]
pub struct Cli {
    /// Log line format (the level is set by RUST_LOG, default `info`).
    #[arg(long, global = true, env = env::LOG_FORMAT, value_enum, default_value_t)]
    pub log_format: crate::telemetry::LogFormat,
    /// Measure nothing: `/metrics` stays empty and webui's per-hop view has
    /// no latencies. For measuring what metrics cost (`dockercoins bench`).
    #[arg(long, global = true, env = env::METRICS_DISABLED)]
    pub metrics_disabled: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// One subcommand per service, and `up` for all of them at once.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve random bytes (gRPC dockercoins.v1.Rng, and HTTP `GET /<n>`).
    Rng(RngArgs),
    /// Serve SHA-256 (gRPC dockercoins.v1.Hasher, and HTTP `POST /`).
    Hasher(HasherArgs),
    /// Mine DockerCoins forever: rng -> hasher -> Redis.
    Worker(WorkerArgs),
    /// Serve the web page, /json, and an HTTP gateway to rng and hasher.
    Webui(WebuiArgs),
    /// Run the whole mesh in this process: rng, hasher, webui and workers.
    // Boxed: its settings outweigh every other command's.
    Up(Box<UpArgs>),
    /// Publish rng and hasher on fixed ports in Compose: forward each TCP
    /// connection to one replica, round robin.
    Edge(EdgeArgs),
    /// Check a service's health, for container healthchecks (exit 0: healthy).
    Healthcheck(HealthcheckArgs),
    /// Measure the mesh in turbo: hashes/s, per-hop latency, memory, CPU.
    Bench(BenchArgs),
    /// Floods rng, hasher, webui and edge (each a child process with its
    /// classroom settings) with idle connections, then with requests held
    /// at once, while a well-behaved client asks every 100 ms; reports
    /// each server's memory, the client's worst wait and the exit status on
    /// SIGTERM (exit 1 when a server misses a goal).
    Flood(FloodArgs),
    /// Check this machine before the lab: ports, Docker and Compose, the
    /// stack's images, cores, memory, disk (exit 0: the lab can run).
    Doctor(DoctorArgs),
    /// Where the time goes: each hop's count, p50 and p99, read from Jaeger
    /// (exit 1 when no trace arrives or a hop is missing).
    Traces(TracesArgs),
    /// webui's page in a terminal: hashes/s and its history, each hop's
    /// latency, rng's queue, replicas and policy, every second (q quits).
    Top(TopArgs),
    /// `bench`'s floor: a bare tonic echo server, or its load. `bench` runs
    /// both with its own settings; hidden, as a part of `bench`.
    #[command(subcommand, hide = true)]
    Floor(FloorCommand),
}

impl Command {
    /// The service this command runs, for logs and traces.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Rng(_) => "rng",
            Self::Hasher(_) => "hasher",
            Self::Worker(_) => "worker",
            Self::Webui(_) => "webui",
            Self::Up(_) => "up",
            Self::Edge(_) => "edge",
            Self::Healthcheck(_) => "healthcheck",
            Self::Bench(_) => "bench",
            Self::Flood(_) => "flood",
            Self::Traces(_) => "traces",
            Self::Doctor(_) => "doctor",
            Self::Top(_) => "top",
            Self::Floor(_) => "floor",
        }
    }
}
