//! The servers' command lines: `rng`, `hasher` and `edge`, and the TLS
//! settings a gRPC server takes. Each turns into its service's config here;
//! the clients' side (worker, webui) lives in `clients`.

use super::env;
use crate::{
    hasher::{self, HasherConfig},
    rng::{self, RngConfig},
    server::ServerSettings,
    server::connections::{self, ConnectionLimits},
    server::faults::{self, ExtraDelay, FailCode, FailRate, Faults},
    tls::{ServerTls, TlsError},
};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

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
            server: server_settings(
                &self.tls,
                faults(self.fail_rate, self.fail_code, &self.extra_delay),
                self.max_connections,
            )?,
        })
    }
}

impl HasherArgs {
    /// hasher's config, its TLS files read and checked.
    pub fn config(&self) -> Result<HasherConfig, TlsError> {
        Ok(HasherConfig {
            delay: Duration::from_millis(self.delay_ms),
            max_work_mib: self.max_work_mib,
            server: server_settings(
                &self.tls,
                faults(self.fail_rate, self.fail_code, &self.extra_delay),
                self.max_connections,
            )?,
        })
    }
}

/// What rng and hasher each set of the server they run on: TLS, faults
/// and the connection bound, under their own flags.
fn server_settings(
    tls: &ServerTlsArgs,
    faults: Faults,
    max_connections: usize,
) -> Result<ServerSettings, TlsError> {
    Ok(ServerSettings {
        tls: tls.load()?,
        faults,
        connections: ConnectionLimits::at_most(max_connections),
    })
}

/// The faults rng or hasher injects: each has the three settings under its
/// own environment variables, so they cannot be one flattened struct.
fn faults(fail_rate: FailRate, fail_code: FailCode, extra_delay: &ExtraDelay) -> Faults {
    Faults {
        fail_rate,
        fail_code,
        extra_delay: extra_delay.clone(),
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
