//! The command lines of the commands that look at a mesh or a machine
//! without running a service: `traces` (Jaeger), `top` (webui), `doctor`
//! (this machine) and `healthcheck` (one server, for containers).

use super::{ClientTlsArgs, env};
use crate::{
    doctor::DoctorConfig,
    healthcheck::Probe,
    tls::TlsError,
    top::{self, TopConfig},
    traces::{self, TracesConfig},
};
use std::time::Duration;

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
    pub fn config(&self) -> DoctorConfig {
        DoctorConfig {
            ports: self.ports.clone(),
            docker: self.docker.clone(),
        }
    }
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
