//! `dockercoins healthcheck`: the container healthcheck, built in because the
//! runtime image has no shell and no curl. A real `grpc.health.v1/Check` for
//! rng and hasher (over TLS for `grpcs://`, with a client certificate for
//! mutual TLS), an HTTP GET for webui; exit 0 when healthy.

use crate::client::http_get::GetError;
use crate::{
    telemetry::error_chain::{describe, status_reason},
    tls::{ClientTls, TlsError},
};
use std::time::Duration;
use tonic::transport::Endpoint;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Why a target is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error(
        "invalid target {0:?}: expected grpc://host:port, grpcs://host:port or http://host:port/path"
    )]
    Target(String),
    #[error(
        "{0}: grpcs:// needs the CA that signed the server's certificate: set {ca}",
        ca = crate::tls::setting::TLS_CA
    )]
    NoCa(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("no answer from {target} within {timeout:?}")]
    Timeout { target: String, timeout: Duration },
    #[error("{target}: {reason}")]
    Failed { target: String, reason: String },
}

/// What to check, and how.
#[derive(Clone, Debug)]
pub struct Probe {
    /// `grpc://host:port` asks grpc.health.v1 about `service`;
    /// `grpcs://host:port` does the same over TLS; `http://host:port/path`
    /// wants a 2xx.
    pub target: String,
    /// The gRPC service to ask about; `""` is the whole server.
    pub service: String,
    /// Bound on the whole check.
    pub timeout: Duration,
    /// For `grpcs://`: the CA to verify the server's certificate with, and
    /// the client certificate to present (mutual TLS), if any.
    pub tls: Option<ClientTls>,
    /// For `grpcs://`: the name the server's certificate must carry
    /// (default: the target's host).
    pub domain: Option<String>,
}

impl Probe {
    /// A plaintext check of `target`.
    pub fn new(target: &str, service: &str, timeout: Duration) -> Self {
        Self {
            target: target.to_owned(),
            service: service.to_owned(),
            timeout,
            tls: None,
            domain: None,
        }
    }
}

/// Checks `probe.target`; what the check saw when healthy.
pub async fn check(probe: &Probe) -> Result<String, Unhealthy> {
    let (target, service) = (probe.target.as_str(), probe.service.as_str());
    let work = async {
        if let Some(authority) = target.strip_prefix("grpc://") {
            grpc(target, format!("http://{authority}"), service, None).await
        } else if let Some(authority) = target.strip_prefix("grpcs://") {
            let tls = probe
                .tls
                .as_ref()
                .ok_or_else(|| Unhealthy::NoCa(target.to_owned()))?;
            let url = format!("https://{authority}");
            let host = url
                .parse::<hyper::Uri>()
                .ok()
                .and_then(|uri| uri.host().map(str::to_owned))
                .ok_or_else(|| Unhealthy::Target(target.to_owned()))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let config = tls.config(probe.domain.as_deref().unwrap_or(host));
            grpc(target, url, service, Some(config)).await
        } else if target.starts_with("http://") {
            http(target).await
        } else {
            Err(Unhealthy::Target(target.to_owned()))
        }
    };
    tokio::time::timeout(probe.timeout, work)
        .await
        .map_err(|_| Unhealthy::Timeout {
            target: target.to_owned(),
            timeout: probe.timeout,
        })?
}

fn failed(target: &str, reason: impl ToString) -> Unhealthy {
    Unhealthy::Failed {
        target: target.to_owned(),
        reason: reason.to_string(),
    }
}

async fn grpc(
    target: &str,
    url: String,
    service: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<String, Unhealthy> {
    let mut endpoint =
        Endpoint::from_shared(url).map_err(|_| Unhealthy::Target(target.to_owned()))?;
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|error| failed(target, format!("cannot set up TLS: {}", describe(&error))))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| failed(target, format!("cannot connect: {}", describe(&error))))?;
    // Over TLS 1.3 a server that refuses the client's certificate says so
    // after the handshake: the reason comes with the call.
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| failed(target, status_reason(&status)))?;
    match reply.into_inner().status() {
        ServingStatus::Serving => Ok(format!("{target} {service:?}: SERVING")),
        other => Err(failed(
            target,
            format!("{service:?} is {}", other.as_str_name()),
        )),
    }
}

async fn http(target: &str) -> Result<String, Unhealthy> {
    let (status, _) = crate::client::http_get::get(target)
        .await
        .map_err(|error| match error {
            GetError::Url(_) => Unhealthy::Target(target.to_owned()),
            GetError::Connect { error, .. } => failed(target, format!("cannot connect: {error}")),
            GetError::Http(reason) => failed(target, reason),
        })?;
    if status.is_success() {
        Ok(format!("{target}: {status}"))
    } else {
        Err(failed(target, status))
    }
}
