//! The clients' command lines: `worker` and `webui`, and what every client
//! of rng, hasher and Redis shares: their addresses, TLS towards them, and
//! the balancer's connections, timeouts, retries and ejection (also taken
//! by `up`). `healthcheck` borrows the TLS settings.

use super::env;
use crate::{
    client::balancer::{self, BalancerSettings},
    client::{BalancedHasher, BalancedRng},
    server::connections,
    store,
    tls::{ClientTls, TlsError},
    webui,
    worker::{self, WorkerConfig},
};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

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

/// How a client reaches rng, hasher and Redis (worker and webui).
#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// rng's gRPC address; `https://` for TLS (needs --tls-ca).
    #[arg(long = "rng", env = env::RNG_URL, default_value_t = BalancedRng::default_url())]
    pub rng_url: String,
    /// hasher's gRPC address; `https://` for TLS (needs --tls-ca).
    #[arg(long = "hasher", env = env::HASHER_URL, default_value_t = BalancedHasher::default_url())]
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
    pub connections: BalancerArgs,
}

impl ClientArgs {
    /// How to reach rng and hasher: connections, timeouts, policy, and the
    /// TLS files read and checked.
    pub fn balancer(&self) -> Result<BalancerSettings, TlsError> {
        Ok(BalancerSettings {
            tls: self.tls.load()?,
            ..self.connections.balancer()
        })
    }
}

/// Connections and timeouts towards the backends.
#[derive(Clone, Debug, clap::Args)]
pub struct BalancerArgs {
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
    /// calls in flight), `weighted_round_robin` (each replica in proportion
    /// to the weight its own load reports give it, gRFC A58), or `pinned`
    /// (one connection, as a naive gRPC client: it stays on the replica it
    /// first reached, the lab's trap).
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
    /// weighted_round_robin: a replica's weight counts only this long after
    /// its first load report (its rate is still climbing), in milliseconds;
    /// 0: at once.
    #[arg(long, env = env::GRPC_WRR_BLACKOUT_MS, default_value_t = balancer::DEFAULT_BLACKOUT_MS)]
    pub wrr_blackout_ms: u64,
    /// weighted_round_robin: a replica whose last load report is this old
    /// loses its weight (and takes the others' mean), in milliseconds.
    #[arg(long, env = env::GRPC_WRR_EXPIRATION_MS, default_value_t = balancer::DEFAULT_EXPIRATION_MS)]
    pub wrr_expiration_ms: u64,
    /// weighted_round_robin: how often the weights are taken anew, in
    /// milliseconds (at least 100).
    #[arg(long, env = env::GRPC_WRR_UPDATE_MS, default_value_t = balancer::DEFAULT_UPDATE_MS)]
    pub wrr_update_ms: u64,
    /// weighted_round_robin: how much a replica's errors lower its weight
    /// (weight = qps / (utilization + errors per call × this)).
    #[arg(long, env = env::GRPC_WRR_ERROR_PENALTY, default_value_t = balancer::DEFAULT_ERROR_PENALTY,
          value_parser = non_negative)]
    pub wrr_error_penalty: f64,
}

/// A number at least 0 (and finite).
fn non_negative(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err(format!("must be a number at least 0, got {text:?}")),
    }
}

impl BalancerArgs {
    pub fn balancer(&self) -> BalancerSettings {
        BalancerSettings {
            channels: self.grpc_channels,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            policy: self.grpc_policy,
            resolve_interval: Duration::from_millis(self.resolve_ms)
                .max(balancer::MIN_RESOLVE_INTERVAL),
            weighted: balancer::WeightedSettings {
                blackout: Duration::from_millis(self.wrr_blackout_ms),
                expiration: Duration::from_millis(self.wrr_expiration_ms),
                update_period: Duration::from_millis(self.wrr_update_ms)
                    .max(balancer::MIN_WEIGHT_UPDATE),
                error_penalty: self.wrr_error_penalty,
            },
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
    /// Start units of work at this rate (per second, at random gaps as
    /// independent arrivals), each timed from when it was due, instead of
    /// loops that wait for the last one (open loop; `--concurrency` caps the
    /// units in flight, `--delay-ms` is not used). Unset: the loops.
    #[arg(long, env = env::WORKER_RATE, value_parser = positive_number)]
    pub rate: Option<f64>,
    /// Open loop: units due in this first stretch are not timed.
    #[arg(long, env = env::WORKER_RATE_WARMUP_MS, default_value_t = 0, requires = "rate")]
    pub rate_warmup_ms: u64,
}

/// A rate, a target: a finite number above zero.
pub(super) fn positive_number(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(number) if number.is_finite() && number > 0.0 => Ok(number),
        _ => Err(format!("{value:?} is not a number above 0")),
    }
}

impl WorkerArgs {
    pub fn config(&self) -> WorkerConfig {
        WorkerConfig {
            delay: Duration::from_millis(self.delay_ms),
            concurrency: self.concurrency,
            batch: self.batch,
            wallet_cap: self.wallet_cap,
            pace: self.rate.map(|rate| worker::Pace {
                rate,
                warmup: Duration::from_millis(self.rate_warmup_ms),
            }),
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
