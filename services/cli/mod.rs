//! The command line, and nothing else: every setting of every command, its
//! flag, its environment variable, and the default that the service's own
//! module defines (`rng::DEFAULT_DELAY_MS`...). Parsed once by clap in
//! `main` and turned here into the typed configs the services take; library
//! code never reads the environment, so tests build configs directly.
//!
//! docs/settings.md's table is checked against these definitions by a test.

use crate::{
    bench::{
        self, BenchConfig,
        flood::{self, FloodConfig},
    },
    client::balancer::{self, PoolSettings},
    client::{HasherClient, RngClient},
    hasher::{self, HasherConfig},
    healthcheck::Probe,
    rng::{self, RngConfig},
    server::ServerSettings,
    server::connections::{self, ConnectionLimits},
    server::faults::{self, ExtraDelay, FailCode, FailRate, Faults},
    store,
    tls::{ClientTls, ServerTls, TlsError},
    top::{self, TopConfig},
    traces::{self, TracesConfig},
    up::{self, UpConfig, replica::ReplicaSettings},
    webui,
    worker::{self, WorkerConfig},
};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// Environment variable names, one per setting.
pub mod env {
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
    pub const RNG_LISTEN: &str = "RNG_LISTEN";
    pub const RNG_DELAY_MS: &str = "RNG_DELAY_MS";
    pub const RNG_LANES: &str = "RNG_LANES";
    pub const RNG_LANE_QUEUE: &str = "RNG_LANE_QUEUE";
    pub const HASHER_MAX_WORK_MIB: &str = "HASHER_MAX_WORK_MIB";
    pub const RNG_MAX_CONNECTIONS: &str = "RNG_MAX_CONNECTIONS";
    pub const HASHER_MAX_CONNECTIONS: &str = "HASHER_MAX_CONNECTIONS";
    pub const WEBUI_MAX_CONNECTIONS: &str = "WEBUI_MAX_CONNECTIONS";
    pub const EDGE_MAX_CONNECTIONS: &str = "EDGE_MAX_CONNECTIONS";
    pub const RNG_FAIL_RATE: &str = "RNG_FAIL_RATE";
    pub const RNG_FAIL_CODE: &str = "RNG_FAIL_CODE";
    pub const RNG_EXTRA_DELAY: &str = "RNG_EXTRA_DELAY";
    pub const HASHER_LISTEN: &str = "HASHER_LISTEN";
    pub const HASHER_DELAY_MS: &str = "HASHER_DELAY_MS";
    pub const HASHER_FAIL_RATE: &str = "HASHER_FAIL_RATE";
    pub const HASHER_FAIL_CODE: &str = "HASHER_FAIL_CODE";
    pub const HASHER_EXTRA_DELAY: &str = "HASHER_EXTRA_DELAY";
    pub const RNG_URL: &str = "RNG_URL";
    pub const HASHER_URL: &str = "HASHER_URL";
    pub const REDIS_URL: &str = "REDIS_URL";
    pub const REDIS_TIMEOUT_MS: &str = "REDIS_TIMEOUT_MS";
    pub const GRPC_CHANNELS: &str = "GRPC_CHANNELS";
    pub const GRPC_CONNECT_TIMEOUT_MS: &str = "GRPC_CONNECT_TIMEOUT_MS";
    pub const GRPC_TIMEOUT_MS: &str = "GRPC_TIMEOUT_MS";
    pub const GRPC_POLICY: &str = "GRPC_POLICY";
    pub const GRPC_RESOLVE_MS: &str = "GRPC_RESOLVE_MS";
    pub const GRPC_HEDGE_MS: &str = "GRPC_HEDGE_MS";
    pub const GRPC_RETRY_BUDGET_PERCENT: &str = "GRPC_RETRY_BUDGET_PERCENT";
    pub const GRPC_EJECT_INTERVAL_MS: &str = "GRPC_EJECT_INTERVAL_MS";
    pub const GRPC_EJECT_FAILURE_PERCENT: &str = "GRPC_EJECT_FAILURE_PERCENT";
    pub const GRPC_EJECT_MIN_CALLS: &str = "GRPC_EJECT_MIN_CALLS";
    pub const GRPC_EJECT_MS: &str = "GRPC_EJECT_MS";
    pub const GRPC_EJECT_MAX_PERCENT: &str = "GRPC_EJECT_MAX_PERCENT";
    pub const WORKER_DELAY_MS: &str = "WORKER_DELAY_MS";
    pub const WORKER_CONCURRENCY: &str = "WORKER_CONCURRENCY";
    pub const WORKER_BATCH: &str = "WORKER_BATCH";
    pub const WALLET_CAP: &str = "WALLET_CAP";
    pub const WORKER_HEALTH_LISTEN: &str = "WORKER_HEALTH_LISTEN";
    pub const WEBUI_LISTEN: &str = "WEBUI_LISTEN";
    pub const WEBUI_ASSETS_DIR: &str = "WEBUI_ASSETS_DIR";
    pub const EDGE_ROUTES: &str = "EDGE_ROUTES";
    pub const UP_WORKERS: &str = "UP_WORKERS";
    pub const UP_RNG_REPLICAS: &str = "UP_RNG_REPLICAS";
    pub const UP_HASHER_REPLICAS: &str = "UP_HASHER_REPLICAS";
    pub const UP_RNG_LAST_REPLICA: &str = "UP_RNG_LAST_REPLICA";
    pub const UP_HASHER_LAST_REPLICA: &str = "UP_HASHER_LAST_REPLICA";
    pub const TURBO: &str = "TURBO";
    pub const BENCH_MODE: &str = "BENCH_MODE";
    pub const BENCH_SECONDS: &str = "BENCH_SECONDS";
    pub const BENCH_BATCH: &str = "BENCH_BATCH";
    pub const BENCH_CONCURRENCY: &str = "BENCH_CONCURRENCY";
    pub const BENCH_CHANNELS: &str = "BENCH_CHANNELS";
    pub const BENCH_WARMUP_MS: &str = "BENCH_WARMUP_MS";
    pub const BENCH_PROBES: &str = "BENCH_PROBES";
    pub const BENCH_JSON: &str = "BENCH_JSON";
    pub const FLOOD_TARGETS: &str = "FLOOD_TARGETS";
    pub const FLOOD_IDLE: &str = "FLOOD_IDLE";
    pub const FLOOD_QUEUED: &str = "FLOOD_QUEUED";
    pub const FLOOD_JSON: &str = "FLOOD_JSON";
    pub const JAEGER_URL: &str = "JAEGER_URL";
    pub const DOCTOR_PORTS: &str = "DOCTOR_PORTS";
    pub const DOCTOR_DOCKER: &str = "DOCTOR_DOCKER";
    pub const METRICS_DISABLED: &str = "METRICS_DISABLED";
    pub const TRACES_SINCE: &str = "TRACES_SINCE";
    pub const TOP_WEBUI: &str = "TOP_WEBUI";
    pub const TOP_INTERVAL_MS: &str = "TOP_INTERVAL_MS";
    pub const TOP_ONCE: &str = "TOP_ONCE";
    pub const TOP_JSON: &str = "TOP_JSON";
    pub const TLS_CERT: &str = "TLS_CERT";
    pub const TLS_KEY: &str = "TLS_KEY";
    pub const TLS_CLIENT_CA: &str = "TLS_CLIENT_CA";
    pub const TLS_CA: &str = "TLS_CA";
    pub const TLS_CLIENT_CERT: &str = "TLS_CLIENT_CERT";
    pub const TLS_CLIENT_KEY: &str = "TLS_CLIENT_KEY";
}

/// TLS for a gRPC server (rng, hasher). Nothing set: plaintext, HTTP/1.1
/// routes included.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate (chain) to serve TLS with; needs --tls-key. Over TLS
    /// the port speaks HTTP/2 only (gRPC, and the legacy routes to HTTP/2
    /// clients).
    #[arg(long, env = env::TLS_CERT, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (unencrypted PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = env::TLS_KEY, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): clients must present a certificate signed by
    /// one of them (mutual TLS). Needs --tls-cert and --tls-key.
    #[arg(long, env = env::TLS_CLIENT_CA, value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// Reads and checks the files: `None` means plaintext.
    pub fn load(&self) -> Result<Option<ServerTls>, TlsError> {
        ServerTls::load(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_client_ca.as_deref(),
        )
    }
}

/// TLS towards rng and hasher (worker, webui, healthcheck): on for
/// `https://` URLs (`grpcs://` for the healthcheck).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// PEM CA certificate(s) to verify rng's and hasher's certificates with;
    /// required for https:// URLs (no system roots are built in).
    #[arg(long, env = env::TLS_CA, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate to present, for servers that require one
    /// (mutual TLS); needs --tls-client-key and --tls-ca.
    #[arg(long, env = env::TLS_CLIENT_CERT, value_name = "PEM")]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of --tls-client-cert.
    #[arg(long, env = env::TLS_CLIENT_KEY, value_name = "PEM")]
    pub tls_client_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// Reads and checks the files: `None` when no TLS setting is given.
    pub fn load(&self) -> Result<Option<ClientTls>, TlsError> {
        ClientTls::load(
            self.tls_ca.as_deref(),
            self.tls_client_cert.as_deref(),
            self.tls_client_key.as_deref(),
        )
    }
}

/// `dockercoins rng`: the random-bytes service.
#[derive(Clone, Debug, clap::Args)]
pub struct RngArgs {
    /// Address to listen on, for gRPC and the legacy HTTP routes alike.
    #[arg(long, env = env::RNG_LISTEN, default_value_t = rng::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Time each request takes once it is its turn, in milliseconds
    /// (classroom: 100; turbo: 0). A streamed batch pays it once per message.
    #[arg(long, env = env::RNG_DELAY_MS, default_value_t = rng::DEFAULT_DELAY_MS)]
    pub delay_ms: u64,
    /// Requests served at the same time; the others queue in order.
    /// 1 is the classroom bottleneck; 0 means unlimited.
    #[arg(long, env = env::RNG_LANES, default_value_t = rng::DEFAULT_LANES)]
    pub lanes: usize,
    /// Requests that may wait for a lane; the next are refused at once
    /// (gRPC RESOURCE_EXHAUSTED with a retry hint, HTTP 503 with
    /// Retry-After). 0: none wait.
    #[arg(long, env = env::RNG_LANE_QUEUE, default_value_t = rng::DEFAULT_LANE_QUEUE)]
    pub lane_queue: usize,
    /// Connections held at once. When full, the one idle the longest is
    /// closed for a newcomer; when all are busy, the newcomer is refused.
    /// Connections with no request within 10 s, or idle for 60 s, are closed.
    #[arg(long, env = env::RNG_MAX_CONNECTIONS, default_value_t = connections::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,
    /// Share of gRPC calls answered at once with --fail-code, without taking
    /// a lane: `0.2` or `20%` (resilience lab; 0 = off).
    #[arg(long, env = env::RNG_FAIL_RATE, default_value = faults::DEFAULT_FAIL_RATE)]
    pub fail_rate: FailRate,
    /// The code of an injected failure.
    #[arg(long, env = env::RNG_FAIL_CODE, value_enum, default_value_t)]
    pub fail_code: FailCode,
    /// Extra delay for a share of requests (stream messages), paid in the
    /// lane on top of --delay-ms: `SHARE=DELAY,...` like `10%=300ms,1%=2s`
    /// (resilience lab; `none` = off).
    #[arg(long, env = env::RNG_EXTRA_DELAY, default_value = faults::DEFAULT_EXTRA_DELAY)]
    pub extra_delay: ExtraDelay,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
}

/// `dockercoins hasher`: the SHA-256 service.
#[derive(Clone, Debug, clap::Args)]
pub struct HasherArgs {
    /// Address to listen on, for gRPC and the legacy HTTP routes alike.
    #[arg(long, env = env::HASHER_LISTEN, default_value_t = hasher::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Time each request (or stream message) takes, in milliseconds
    /// (classroom: 100; turbo: 0). Requests are served concurrently.
    #[arg(long, env = env::HASHER_DELAY_MS, default_value_t = hasher::DEFAULT_DELAY_MS)]
    pub delay_ms: u64,
    /// Data worked on at once, in MiB (each request counts its size, at
    /// least 1 KiB); past it the next are refused at once (gRPC
    /// RESOURCE_EXHAUSTED with a retry hint, HTTP 503 with Retry-After).
    #[arg(long, env = env::HASHER_MAX_WORK_MIB, default_value_t = hasher::DEFAULT_MAX_WORK_MIB,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_work_mib: u32,
    /// Connections held at once. When full, the one idle the longest is
    /// closed for a newcomer; when all are busy, the newcomer is refused.
    /// Connections with no request within 10 s, or idle for 60 s, are closed.
    #[arg(long, env = env::HASHER_MAX_CONNECTIONS, default_value_t = connections::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,
    /// Share of gRPC calls answered at once with --fail-code: `0.2` or
    /// `20%` (resilience lab; 0 = off).
    #[arg(long, env = env::HASHER_FAIL_RATE, default_value = faults::DEFAULT_FAIL_RATE)]
    pub fail_rate: FailRate,
    /// The code of an injected failure.
    #[arg(long, env = env::HASHER_FAIL_CODE, value_enum, default_value_t)]
    pub fail_code: FailCode,
    /// Extra delay for a share of requests (stream messages), on top of
    /// --delay-ms: `SHARE=DELAY,...` like `10%=300ms,1%=2s` (resilience lab;
    /// `none` = off).
    #[arg(long, env = env::HASHER_EXTRA_DELAY, default_value = faults::DEFAULT_EXTRA_DELAY)]
    pub extra_delay: ExtraDelay,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
}

impl RngArgs {
    /// rng's config, its TLS files read and checked.
    pub fn config(&self) -> Result<RngConfig, TlsError> {
        Ok(RngConfig {
            delay: Duration::from_millis(self.delay_ms),
            lanes: (self.lanes > 0).then_some(self.lanes),
            queue: self.lane_queue,
            server: ServerSettings {
                tls: self.tls.load()?,
                faults: Faults {
                    fail_rate: self.fail_rate,
                    fail_code: self.fail_code,
                    extra_delay: self.extra_delay.clone(),
                },
                connections: ConnectionLimits::at_most(self.max_connections),
            },
        })
    }
}

impl HasherArgs {
    /// hasher's config, its TLS files read and checked.
    pub fn config(&self) -> Result<HasherConfig, TlsError> {
        Ok(HasherConfig {
            delay: Duration::from_millis(self.delay_ms),
            max_work_mib: self.max_work_mib,
            server: ServerSettings {
                tls: self.tls.load()?,
                faults: Faults {
                    fail_rate: self.fail_rate,
                    fail_code: self.fail_code,
                    extra_delay: self.extra_delay.clone(),
                },
                connections: ConnectionLimits::at_most(self.max_connections),
            },
        })
    }
}

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

/// `dockercoins traces`: the worker's traces of the last minute, per hop.
#[derive(Clone, Debug, clap::Args)]
pub struct TracesArgs {
    /// Jaeger's query address (its UI's), `http://host:port`.
    #[arg(long, env = env::JAEGER_URL, default_value = traces::DEFAULT_JAEGER)]
    pub jaeger: String,
    /// How far back to read: `90`, `60s`, `5m`, `1h`.
    #[arg(long, env = env::TRACES_SINCE, default_value = traces::DEFAULT_SINCE, value_parser = traces::parse_since)]
    pub since: Duration,
}

impl TracesArgs {
    pub fn config(&self) -> TracesConfig {
        TracesConfig {
            jaeger: self.jaeger.clone(),
            since: self.since,
        }
    }
}

/// `dockercoins top`: webui's page in a terminal.
#[derive(Clone, Debug, clap::Args)]
#[command(after_help = "Keys: q or Ctrl-C quits (the terminal is restored).\n\
    Without --once, stdout must be a terminal.")]
pub struct TopArgs {
    /// webui's address, `http://host:port` (what a browser would open).
    #[arg(long, env = env::TOP_WEBUI, default_value = top::DEFAULT_WEBUI)]
    pub webui: String,
    /// How often to read webui and redraw, in milliseconds.
    #[arg(long, env = env::TOP_INTERVAL_MS, default_value_t = top::DEFAULT_INTERVAL.as_millis() as u64,
        value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub interval_ms: u64,
    /// Print one reading and exit (it takes the 5 s the hashes/s rate is
    /// measured over); exit 1 when webui is unreachable.
    #[arg(long, env = env::TOP_ONCE)]
    pub once: bool,
    /// With --once: print the reading as one JSON object, for scripts.
    #[arg(long, env = env::TOP_JSON, requires = "once")]
    pub json: bool,
}

impl TopArgs {
    pub fn config(&self) -> TopConfig {
        TopConfig {
            webui: self.webui.trim_end_matches('/').to_owned(),
            interval: Duration::from_millis(self.interval_ms),
        }
    }
}

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

/// `dockercoins doctor`: a classroom machine checked before the lab.
#[derive(Clone, Debug, clap::Args)]
pub struct DoctorArgs {
    /// Host ports that must be free, comma-separated: those the compose
    /// stack publishes.
    #[arg(long, env = env::DOCTOR_PORTS, value_delimiter = ',', default_value = "8000,8001,8002,16686,9090")]
    pub ports: Vec<u16>,
    /// The Docker command to ask.
    #[arg(long, env = env::DOCTOR_DOCKER, default_value = "docker")]
    pub docker: String,
}

impl DoctorArgs {
    pub fn config(&self) -> crate::doctor::DoctorConfig {
        crate::doctor::DoctorConfig {
            ports: self.ports.clone(),
            docker: self.docker.clone(),
        }
    }
}

/// `dockercoins edge`: the host's ports for rng and hasher in Compose.
#[derive(Clone, Debug, clap::Args)]
pub struct EdgeArgs {
    /// What to forward: `LISTEN=HOST:PORT`, comma-separated. Each connection
    /// goes to one of the addresses HOST resolves to, in turn.
    #[arg(
        long = "route",
        env = env::EDGE_ROUTES,
        value_delimiter = ',',
        default_value = "0.0.0.0:8001=rng:8001,0.0.0.0:8002=hasher:8002"
    )]
    pub routes: Vec<crate::edge::Route>,
    /// Connections forwarded at once, over all routes. When full, the one
    /// idle the longest (no byte either way) is closed for a newcomer.
    /// Connections with no byte either way for 60 s are closed.
    #[arg(long, env = env::EDGE_MAX_CONNECTIONS, default_value_t = connections::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,
}

/// `dockercoins healthcheck`: exit 0 when the target is healthy, 1 when not.
#[derive(Clone, Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// `grpc://host:port` (a grpc.health.v1 Check), `grpcs://host:port` (the
    /// same over TLS: needs --tls-ca, and a client certificate for mutual
    /// TLS) or `http://host:port/path` (a GET that must answer 2xx).
    pub target: String,
    /// The gRPC service to ask about; empty means the whole server.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Bound on the whole check, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// The name the server's certificate must carry, for grpcs:// [default:
    /// the target's host].
    #[arg(long)]
    pub tls_domain: Option<String>,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

impl HealthcheckArgs {
    /// The check to make. The TLS files are read only for a `grpcs://`
    /// target, so a container whose environment names them can still probe
    /// `http://` (webui) with the same line as before.
    pub fn probe(&self) -> Result<Probe, TlsError> {
        let tls = if self.target.starts_with("grpcs://") {
            self.tls.load()?
        } else {
            None
        };
        Ok(Probe {
            tls,
            domain: self.tls_domain.clone(),
            ..Probe::new(
                &self.target,
                &self.service,
                Duration::from_millis(self.timeout_ms),
            )
        })
    }
}

/// How a client reaches rng, hasher and Redis (worker and webui).
#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// rng's gRPC address; `https://` for TLS (needs --tls-ca).
    #[arg(long = "rng", env = env::RNG_URL, default_value_t = RngClient::default_url())]
    pub rng_url: String,
    /// hasher's gRPC address; `https://` for TLS (needs --tls-ca).
    #[arg(long = "hasher", env = env::HASHER_URL, default_value_t = HasherClient::default_url())]
    pub hasher_url: String,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Redis URL, `redis://[:password@]host:port[/db]`; the password is never logged.
    // hide_env_values: `--help` would otherwise print REDIS_URL's value,
    // password included.
    #[arg(
        long = "redis",
        env = env::REDIS_URL,
        default_value = store::DEFAULT_URL,
        hide_env_values = true
    )]
    pub redis_url: String,
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

/// Connections and timeouts towards the backends.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnectionArgs {
    /// Bound on each Redis checkout and command, in milliseconds.
    #[arg(long, env = env::REDIS_TIMEOUT_MS, default_value_t = store::DEFAULT_TIMEOUT_MS)]
    pub redis_timeout_ms: u64,
    /// HTTP/2 connections per gRPC backend.
    #[arg(long, env = env::GRPC_CHANNELS, default_value_t = balancer::DEFAULT_CHANNELS)]
    pub grpc_channels: usize,
    /// Bound on connecting to a gRPC backend, in milliseconds.
    #[arg(long, env = env::GRPC_CONNECT_TIMEOUT_MS, default_value_t = balancer::DEFAULT_CONNECT_TIMEOUT_MS)]
    pub connect_timeout_ms: u64,
    /// Deadline of each unary gRPC call (queueing in rng's lane included),
    /// sent with it (`grpc-timeout`) so the server gives up too; a stream must
    /// start within it, and each of its messages come within it, in
    /// milliseconds.
    #[arg(long, env = env::GRPC_TIMEOUT_MS, default_value_t = balancer::DEFAULT_CALL_TIMEOUT_MS)]
    pub call_timeout_ms: u64,
    /// How calls are spread over the replicas the name resolves to (re-resolved
    /// periodically): `round_robin` (alias `balanced`), `least_request` (of
    /// two replicas drawn at random, the one with fewer calls in flight),
    /// `ewma` (of two, the one with the lower latency estimate times its
    /// calls in flight), or `pinned` (one connection, as a naive gRPC client:
    /// it stays on the replica it first reached, the lab's trap).
    #[arg(long, env = env::GRPC_POLICY, value_enum, default_value_t)]
    pub grpc_policy: balancer::Policy,
    /// How often a balanced client resolves rng's and hasher's names again,
    /// in milliseconds.
    #[arg(long, env = env::GRPC_RESOLVE_MS, default_value_t = balancer::DEFAULT_RESOLVE_MS)]
    pub resolve_ms: u64,
    /// Send a second attempt of a unary call that has not answered after
    /// this many milliseconds to another replica; the first answer wins.
    /// 0: no hedging.
    #[arg(long, env = env::GRPC_HEDGE_MS, default_value_t = 0)]
    pub hedge_ms: u64,
    /// Retries and hedges together, at most this percentage of calls (over
    /// 10 s, plus one a second): a backend in trouble gets no retry storm.
    /// Taken as one retry per N calls, N = 100 / the percentage, rounded
    /// down (20: 1 in 5; 30: 1 in 3).
    #[arg(long, env = env::GRPC_RETRY_BUDGET_PERCENT, default_value_t = balancer::DEFAULT_BUDGET_PERCENT)]
    pub retry_budget_percent: u32,
    /// Outlier ejection: how often the rule is applied, in milliseconds.
    #[arg(long, env = env::GRPC_EJECT_INTERVAL_MS, default_value_t = balancer::DEFAULT_EJECT_INTERVAL_MS)]
    pub eject_interval_ms: u64,
    /// Outlier ejection: a replica failing this percentage of its calls in
    /// an interval or more is set aside; 0 turns the rule off.
    #[arg(long, env = env::GRPC_EJECT_FAILURE_PERCENT, default_value_t = balancer::DEFAULT_FAILURE_PERCENT,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub eject_failure_percent: u32,
    /// Outlier ejection: calls a replica must have taken in the interval to
    /// be judged.
    #[arg(long, env = env::GRPC_EJECT_MIN_CALLS, default_value_t = balancer::DEFAULT_MIN_CALLS)]
    pub eject_min_calls: u64,
    /// Outlier ejection: how long a first ejection lasts, in milliseconds;
    /// a repeat offender's lasts that many times more (at most 10).
    #[arg(long, env = env::GRPC_EJECT_MS, default_value_t = balancer::DEFAULT_EJECTION_MS)]
    pub eject_ms: u64,
    /// Outlier ejection: the most replicas set aside at once, as a
    /// percentage of them.
    #[arg(long, env = env::GRPC_EJECT_MAX_PERCENT, default_value_t = balancer::DEFAULT_MAX_EJECTED_PERCENT,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub eject_max_percent: u32,
}

impl ConnectionArgs {
    pub fn pool(&self) -> PoolSettings {
        PoolSettings {
            channels: self.grpc_channels,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            policy: self.grpc_policy,
            resolve_interval: Duration::from_millis(self.resolve_ms)
                .max(balancer::MIN_RESOLVE_INTERVAL),
            outlier: balancer::OutlierSettings {
                interval: Duration::from_millis(self.eject_interval_ms)
                    .max(balancer::MIN_RESOLVE_INTERVAL),
                failure_percent: self.eject_failure_percent,
                min_calls: self.eject_min_calls,
                ejection: Duration::from_millis(self.eject_ms),
                max_ejected_percent: self.eject_max_percent,
            },
            retry: balancer::RetrySettings {
                budget_percent: self.retry_budget_percent,
                hedge_after: (self.hedge_ms > 0).then(|| Duration::from_millis(self.hedge_ms)),
                ..balancer::RetrySettings::default()
            },
            tls: None,
            metrics: Default::default(),
        }
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
}

/// `dockercoins worker`: the miner.
#[derive(Clone, Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Sleep before each unit of work, in milliseconds (classroom: 100; turbo: 0).
    #[arg(long, env = env::WORKER_DELAY_MS, default_value_t = worker::DEFAULT_DELAY_MS)]
    pub delay_ms: u64,
    /// Units of work in flight at once.
    #[arg(long, env = env::WORKER_CONCURRENCY, default_value_t = worker::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// 0: one unary call to rng and hasher per hash (the original). N: stream
    /// batches of N blocks (Rng/GenerateStream piped into Hasher/HashStream).
    #[arg(long, env = env::WORKER_BATCH, default_value_t = worker::DEFAULT_BATCH)]
    pub batch: usize,
    /// The most coins the `wallet` hash keeps; 0 keeps every coin, as the
    /// original. Capped, it is a sample (random coins evicted), and `coins`
    /// still counts every one. Turbo finds hundreds of thousands a second.
    #[arg(long, env = env::WALLET_CAP, default_value_t = worker::DEFAULT_WALLET_CAP)]
    pub wallet_cap: usize,
    /// Serve the worker's liveness (`GET /healthz`: 200 while its mining
    /// loops turn) on this address, for a Kubernetes liveness probe. Unset:
    /// no listener, the worker serves nothing.
    #[arg(long, env = env::WORKER_HEALTH_LISTEN)]
    pub health_listen: Option<SocketAddr>,
}

impl WorkerArgs {
    pub fn config(&self) -> WorkerConfig {
        WorkerConfig {
            delay: Duration::from_millis(self.delay_ms),
            concurrency: self.concurrency,
            batch: self.batch,
            wallet_cap: self.wallet_cap,
        }
    }
}

/// `dockercoins webui`: the page and the gateway.
#[derive(Clone, Debug, clap::Args)]
pub struct WebuiArgs {
    /// Address to serve HTTP on.
    #[arg(long, env = env::WEBUI_LISTEN, default_value_t = webui::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Jaeger's UI as the page's readers reach it (`http://localhost:16686`):
    /// the slowest recent call of each replica links to its trace there.
    /// Unset: no links.
    #[arg(long = "jaeger", env = env::JAEGER_URL)]
    pub jaeger_url: Option<String>,
    /// Serve the page (index.html, app.js, style.css) from this directory,
    /// read at each request, instead of the copy compiled in: edit
    /// `services/webui/style.css`, reload, see it. Unset: the compiled copy.
    #[arg(long, env = env::WEBUI_ASSETS_DIR, value_name = "DIR")]
    pub assets_dir: Option<PathBuf>,
    /// Connections held at once. When full, the one idle the longest is
    /// closed for a newcomer; when all are busy, the newcomer is refused.
    /// Connections with no request within 10 s, or idle for 60 s, are closed.
    #[arg(long, env = env::WEBUI_MAX_CONNECTIONS, default_value_t = connections::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `dockercoins up`: the whole mesh in one process, classroom timings unless
/// `--turbo` or an individual setting says otherwise.
#[derive(Clone, Debug, clap::Args)]
pub struct UpArgs {
    /// Workers to run.
    #[arg(long, env = env::UP_WORKERS, default_value_t = up::DEFAULT_WORKERS)]
    pub workers: usize,
    /// rng servers to run, on --rng-listen's port, then +10, +20... The
    /// lab's fix: with `balanced` clients, 3 replicas triple the rate.
    #[arg(long, env = env::UP_RNG_REPLICAS, default_value_t = up::DEFAULT_REPLICAS)]
    pub rng_replicas: usize,
    /// hasher servers to run, on --hasher-listen's port, then +10, +20...
    #[arg(long, env = env::UP_HASHER_REPLICAS, default_value_t = up::DEFAULT_REPLICAS)]
    pub hasher_replicas: usize,
    /// How the last rng replica differs from the others, `KEY=VALUE,...`
    /// with keys delay-ms, lanes, fail-rate, fail-code, extra-delay: e.g.
    /// `delay-ms=300`, one slow replica among good ones. Unset: as the others.
    #[arg(long, env = env::UP_RNG_LAST_REPLICA, value_parser = ReplicaSettings::parse_rng)]
    pub rng_last_replica: Option<ReplicaSettings>,
    /// How the last hasher replica differs from the others, `KEY=VALUE,...`
    /// with keys delay-ms, fail-rate, fail-code, extra-delay. Unset: as the
    /// others.
    #[arg(long, env = env::UP_HASHER_LAST_REPLICA, value_parser = ReplicaSettings::parse_hasher)]
    pub hasher_last_replica: Option<ReplicaSettings>,
    /// No delays, no lane, workers in batch mode: how fast the mesh really is.
    #[arg(long, env = env::TURBO)]
    pub turbo: bool,
    /// Redis URL. Without it, a private redis-server is started when one is
    /// on PATH, else an in-process store stands in.
    #[arg(long = "redis", env = env::REDIS_URL, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// rng's address.
    #[arg(long, env = env::RNG_LISTEN, default_value_t = up::DEFAULT_RNG_LISTEN)]
    pub rng_listen: SocketAddr,
    /// hasher's address.
    #[arg(long, env = env::HASHER_LISTEN, default_value_t = up::DEFAULT_HASHER_LISTEN)]
    pub hasher_listen: SocketAddr,
    /// webui's address.
    #[arg(long, env = env::WEBUI_LISTEN, default_value_t = up::DEFAULT_WEBUI_LISTEN)]
    pub webui_listen: SocketAddr,
    /// rng's delay per request in ms [default: 100, turbo: 0].
    #[arg(long, env = env::RNG_DELAY_MS)]
    pub rng_delay_ms: Option<u64>,
    /// rng's lanes, 0 = unlimited [default: 1, turbo: 0].
    #[arg(long, env = env::RNG_LANES)]
    pub rng_lanes: Option<usize>,
    /// hasher's delay per request in ms [default: 100, turbo: 0].
    #[arg(long, env = env::HASHER_DELAY_MS)]
    pub hasher_delay_ms: Option<u64>,
    /// Each worker's sleep before a unit in ms [default: 100, turbo: 0].
    #[arg(long, env = env::WORKER_DELAY_MS)]
    pub worker_delay_ms: Option<u64>,
    /// Units in flight per worker [default: 1, turbo: 4].
    #[arg(long, env = env::WORKER_CONCURRENCY)]
    pub concurrency: Option<usize>,
    /// Blocks per batch, 0 = unary calls [default: 0, turbo: 8192].
    #[arg(long, env = env::WORKER_BATCH)]
    pub batch: Option<usize>,
    /// Most coins the wallet keeps, 0 = all [default: 0, turbo: 1000].
    #[arg(long, env = env::WALLET_CAP)]
    pub wallet_cap: Option<usize>,
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

impl UpArgs {
    /// What `up` runs: classroom or turbo presets, overridden by any
    /// setting given.
    pub fn config(&self) -> UpConfig {
        let (mut rng, mut hasher, mut worker) = if self.turbo {
            (
                RngConfig::turbo(),
                HasherConfig::turbo(),
                WorkerConfig::turbo(),
            )
        } else {
            (
                RngConfig::classroom(),
                HasherConfig::classroom(),
                WorkerConfig::classroom(),
            )
        };
        if let Some(ms) = self.rng_delay_ms {
            rng.delay = Duration::from_millis(ms);
        }
        if let Some(lanes) = self.rng_lanes {
            rng.lanes = (lanes > 0).then_some(lanes);
        }
        if let Some(ms) = self.hasher_delay_ms {
            hasher.delay = Duration::from_millis(ms);
        }
        if let Some(ms) = self.worker_delay_ms {
            worker.delay = Duration::from_millis(ms);
        }
        if let Some(concurrency) = self.concurrency {
            worker.concurrency = concurrency;
        }
        if let Some(batch) = self.batch {
            worker.batch = batch;
        }
        if let Some(cap) = self.wallet_cap {
            worker.wallet_cap = cap;
        }
        UpConfig {
            workers: self.workers,
            rng,
            hasher,
            rng_last_replica: self.rng_last_replica.clone().unwrap_or_default(),
            hasher_last_replica: self.hasher_last_replica.clone().unwrap_or_default(),
            worker,
            pool: self.connections.pool(),
            redis_timeout: self.connections.redis_timeout(),
            redis_url: self.redis_url.clone(),
        }
    }
}

impl ClientArgs {
    /// How to reach rng and hasher: connections, timeouts, policy, and the
    /// TLS files read and checked.
    pub fn pool(&self) -> Result<PoolSettings, TlsError> {
        Ok(PoolSettings {
            tls: self.tls.load()?,
            ..self.connections.pool()
        })
    }
}
