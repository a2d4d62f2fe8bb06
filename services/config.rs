//! Every setting of every command: its flag, its environment variable and its
//! default. Parsed once by clap in `main`; library code takes the typed configs
//! and never reads the environment, so tests build configs directly.
//!
//! The README's settings table is checked against these definitions by a test.

use std::{net::SocketAddr, time::Duration};

/// Environment variable names, one per setting.
pub mod env {
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
    pub const RNG_LISTEN: &str = "RNG_LISTEN";
    pub const RNG_DELAY_MS: &str = "RNG_DELAY_MS";
    pub const RNG_LANES: &str = "RNG_LANES";
    pub const HASHER_LISTEN: &str = "HASHER_LISTEN";
    pub const HASHER_DELAY_MS: &str = "HASHER_DELAY_MS";
}

/// `dockercoins rng`: the random-bytes service.
#[derive(Clone, Debug, clap::Args)]
pub struct RngArgs {
    /// Address to listen on, for gRPC and the legacy HTTP routes alike.
    #[arg(long, env = env::RNG_LISTEN, default_value = "0.0.0.0:8001")]
    pub listen: SocketAddr,
    /// Time each request takes once it is its turn, in milliseconds
    /// (classroom: 100; turbo: 0). A streamed batch pays it once per message.
    #[arg(long, env = env::RNG_DELAY_MS, default_value_t = 100)]
    pub delay_ms: u64,
    /// Requests served at the same time; the others queue in order.
    /// 1 is the classroom bottleneck; 0 means unlimited.
    #[arg(long, env = env::RNG_LANES, default_value_t = 1)]
    pub lanes: usize,
}

/// `dockercoins hasher`: the SHA-256 service.
#[derive(Clone, Debug, clap::Args)]
pub struct HasherArgs {
    /// Address to listen on, for gRPC and the legacy HTTP routes alike.
    #[arg(long, env = env::HASHER_LISTEN, default_value = "0.0.0.0:8002")]
    pub listen: SocketAddr,
    /// Time each request (or stream message) takes, in milliseconds
    /// (classroom: 100; turbo: 0). Requests are served concurrently.
    #[arg(long, env = env::HASHER_DELAY_MS, default_value_t = 100)]
    pub delay_ms: u64,
}

/// What the rng service needs to run.
#[derive(Clone, Debug)]
pub struct RngConfig {
    /// Cost of one request (or one stream message) once it holds a lane.
    pub delay: Duration,
    /// How many requests hold a lane at once; `None` is unlimited.
    pub lanes: Option<usize>,
}

impl RngConfig {
    /// The original lab: 100 ms a request, one request at a time.
    pub fn classroom() -> Self {
        Self {
            delay: Duration::from_millis(100),
            lanes: Some(1),
        }
    }

    /// No delay, no queue: how fast the mesh really is.
    pub fn turbo() -> Self {
        Self {
            delay: Duration::ZERO,
            lanes: None,
        }
    }
}

impl From<&RngArgs> for RngConfig {
    fn from(args: &RngArgs) -> Self {
        Self {
            delay: Duration::from_millis(args.delay_ms),
            lanes: (args.lanes > 0).then_some(args.lanes),
        }
    }
}

/// What the hasher service needs to run.
#[derive(Clone, Debug)]
pub struct HasherConfig {
    /// Cost of one request (or one stream message); requests overlap.
    pub delay: Duration,
}

impl HasherConfig {
    /// The original lab: 100 ms a request.
    pub fn classroom() -> Self {
        Self {
            delay: Duration::from_millis(100),
        }
    }

    /// No delay.
    pub fn turbo() -> Self {
        Self {
            delay: Duration::ZERO,
        }
    }
}

impl From<&HasherArgs> for HasherConfig {
    fn from(args: &HasherArgs) -> Self {
        Self {
            delay: Duration::from_millis(args.delay_ms),
        }
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
    #[command(subcommand)]
    pub command: Command,
}

/// One subcommand per service.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve random bytes (gRPC dockercoins.v1.Rng, and HTTP `GET /<n>`).
    Rng(RngArgs),
    /// Serve SHA-256 (gRPC dockercoins.v1.Hasher, and HTTP `POST /`).
    Hasher(HasherArgs),
}
