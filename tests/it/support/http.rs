//! HTTP/1.1 on a fresh connection, and reading one series of a `/metrics`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// One HTTP/1.1 request on a fresh connection.
pub async fn http1(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, Bytes) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(body.into()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// The value of the series `line` (`name{labels}`) on the `/metrics` of
/// the server at `addr`.
pub async fn metric(addr: SocketAddr, line: &str) -> Option<f64> {
    let (_, _, body) = http1(addr, "GET", "/metrics", "").await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' '))
        .map(|value| value.split_whitespace().next().unwrap().parse().unwrap())
}
