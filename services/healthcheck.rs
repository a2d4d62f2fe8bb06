//! `dockercoins healthcheck`: the container healthcheck, built in because the
//! runtime image has no shell and no curl. A real `grpc.health.v1/Check` for
//! rng and hasher (over TLS for `grpcs://`, with a client certificate for
//! mutual TLS), an HTTP GET for webui; exit 0 when healthy.

use crate::{
    config::HealthcheckArgs,
    tls::{ClientTls, TlsError, error_chain},
};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
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

/// The healthcheck subcommand: the TLS files are read only for a `grpcs://`
/// target, so a container whose environment names them can still probe
/// `http://` (webui) with the same line as before.
pub async fn run(args: &HealthcheckArgs) -> Result<String, Unhealthy> {
    let tls = if args.target.starts_with("grpcs://") {
        args.tls.load()?
    } else {
        None
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    check_with_tls(
        &args.target,
        &args.service,
        timeout,
        tls.as_ref(),
        args.tls_domain.as_deref(),
    )
    .await
}

/// Checks `target`: `grpc://host:port` asks grpc.health.v1 about `service`
/// (`""` is the whole server); `http://host:port/path` wants a 2xx.
pub async fn check(target: &str, service: &str, timeout: Duration) -> Result<String, Unhealthy> {
    check_with_tls(target, service, timeout, None, None).await
}

/// [`check`], and `grpcs://host:port`: the same gRPC check over TLS,
/// verifying the server's certificate with `tls`'s CA against `domain`
/// (default: the host), and presenting `tls`'s client certificate if any.
pub async fn check_with_tls(
    target: &str,
    service: &str,
    timeout: Duration,
    tls: Option<&ClientTls>,
    domain: Option<&str>,
) -> Result<String, Unhealthy> {
    let work = async {
        if let Some(authority) = target.strip_prefix("grpc://") {
            grpc(target, format!("http://{authority}"), service, None).await
        } else if let Some(authority) = target.strip_prefix("grpcs://") {
            let tls = tls.ok_or_else(|| Unhealthy::NoCa(target.to_owned()))?;
            let url = format!("https://{authority}");
            let host = url
                .parse::<hyper::Uri>()
                .ok()
                .and_then(|uri| uri.host().map(str::to_owned))
                .ok_or_else(|| Unhealthy::Target(target.to_owned()))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let config = tls.config(domain.unwrap_or(host));
            grpc(target, url, service, Some(config)).await
        } else if target.starts_with("http://") {
            http(target).await
        } else {
            Err(Unhealthy::Target(target.to_owned()))
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| Unhealthy::Timeout {
            target: target.to_owned(),
            timeout,
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
        endpoint = endpoint.tls_config(tls).map_err(|error| {
            failed(
                target,
                format!("cannot set up TLS: {}", error_chain(&error)),
            )
        })?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| failed(target, format!("cannot connect: {}", error_chain(&error))))?;
    // Over TLS 1.3 a server that refuses the client's certificate says so
    // after the handshake: the reason comes with the call.
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| failed(target, crate::pool::status_reason(&status)))?;
    match reply.into_inner().status() {
        ServingStatus::Serving => Ok(format!("{target} {service:?}: SERVING")),
        other => Err(failed(
            target,
            format!("{service:?} is {}", other.as_str_name()),
        )),
    }
}

async fn http(target: &str) -> Result<String, Unhealthy> {
    let uri: hyper::Uri = target
        .parse()
        .map_err(|_| Unhealthy::Target(target.to_owned()))?;
    let host = uri
        .authority()
        .ok_or_else(|| Unhealthy::Target(target.to_owned()))?
        .clone();
    let port = host.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.host(), port))
        .await
        .map_err(|error| failed(target, format!("cannot connect: {error}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| failed(target, error))?;
    tokio::spawn(connection);
    let request = hyper::Request::get(uri.path())
        .header(hyper::header::HOST, host.as_str())
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|error| failed(target, error))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| failed(target, error))?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    if status.is_success() {
        Ok(format!("{target}: {status}"))
    } else {
        Err(failed(target, status))
    }
}
