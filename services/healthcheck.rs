//! `dockercoins healthcheck`: the container healthcheck, built in because the
//! runtime image has no shell and no curl. A real `grpc.health.v1/Check` for
//! rng and hasher, an HTTP GET for webui; exit 0 when healthy.

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
    #[error("invalid target {0:?}: expected grpc://host:port or http://host:port/path")]
    Target(String),
    #[error("no answer from {target} within {timeout:?}")]
    Timeout { target: String, timeout: Duration },
    #[error("{target}: {reason}")]
    Failed { target: String, reason: String },
}

/// Checks `target`: `grpc://host:port` asks grpc.health.v1 about `service`
/// (`""` is the whole server); `http://host:port/path` wants a 2xx.
pub async fn check(target: &str, service: &str, timeout: Duration) -> Result<String, Unhealthy> {
    let work = async {
        if let Some(authority) = target.strip_prefix("grpc://") {
            grpc(authority, service).await
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

async fn grpc(authority: &str, service: &str) -> Result<String, Unhealthy> {
    let target = format!("grpc://{authority}");
    let channel = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|_| Unhealthy::Target(target.clone()))?
        .connect()
        .await
        .map_err(|error| failed(&target, format!("cannot connect: {error}")))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| failed(&target, status.message()))?;
    match reply.into_inner().status() {
        ServingStatus::Serving => Ok(format!("{target} {service:?}: SERVING")),
        other => Err(failed(
            &target,
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
