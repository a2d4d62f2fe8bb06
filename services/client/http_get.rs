//! One plain HTTP/1.1 GET, for the commands that read a server's HTTP API
//! (the healthcheck's `http://` probe, `traces` reading Jaeger): no TLS, no
//! redirects, no connection kept.

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

/// Bodies larger than this are refused: a Jaeger answer for a minute of a
/// classroom is a few megabytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// Why a GET did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("not an http:// URL: {0:?}")]
    Url(String),
    #[error("cannot connect to {authority}: {error}")]
    Connect {
        authority: String,
        error: std::io::Error,
    },
    #[error("{0}")]
    Http(String),
}

/// `GET url` (`http://host[:port]/path?query`): the status and the body.
pub async fn get(url: &str) -> Result<(hyper::StatusCode, bytes::Bytes), GetError> {
    let uri: hyper::Uri = url.parse().map_err(|_| GetError::Url(url.to_owned()))?;
    if uri.scheme_str() != Some("http") {
        return Err(GetError::Url(url.to_owned()));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| GetError::Url(url.to_owned()))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(|error| GetError::Connect {
            authority: authority.to_string(),
            error,
        })?;
    let http = |error: &dyn std::fmt::Display| GetError::Http(error.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(&e))?;
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority.as_str())
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| http(&e))?;
    let response = sender.send_request(request).await.map_err(|e| http(&e))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| http(&e))?
        .to_bytes();
    Ok((status, body))
}
