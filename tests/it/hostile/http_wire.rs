//! Raw HTTP/1.1: what a hostile client writes, byte for byte, and a parser
//! for what comes back; and one POST through hyper, with or without a length.

use axum::http::{self, HeaderMap, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper_util::rt::TokioIo;
use std::{convert::Infallible, net::SocketAddr};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[derive(Debug)]
pub(super) struct RawResponse {
    pub(super) status: u16,
    pub(super) head: String,
    pub(super) body: Vec<u8>,
}

impl RawResponse {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Writes `request` as is on a fresh connection and reads until the server
/// closes it (requests here say `Connection: close`).
pub(super) async fn raw_http(addr: SocketAddr, request: &[u8]) -> Result<RawResponse, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    parse_response(&answer)
}

pub(super) fn parse_response(answer: &[u8]) -> Result<RawResponse, String> {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete head in {:?}", String::from_utf8_lossy(answer)))?;
    let head = String::from_utf8(answer[..end].to_vec()).map_err(|e| e.to_string())?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP/1.1 status line: {head:?}"))?;
    let mut response = RawResponse {
        status,
        head,
        body: answer[end + 4..].to_vec(),
    };
    if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        response.body = dechunk(&response.body)?;
    }
    Ok(response)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk")?;
        let size = std::str::from_utf8(&data[..line])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or("bad chunk size")?;
        data = &data[line + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(data.get(..size).ok_or("truncated chunk")?);
        data = data.get(size + 2..).ok_or("truncated chunk")?;
    }
}

pub(super) fn get_request(method: &str, target: &str) -> Vec<u8> {
    let length = if method == "POST" || method == "PUT" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    format!("{method} {target} HTTP/1.1\r\nHost: test\r\n{length}Connection: close\r\n\r\n")
        .into_bytes()
}

/// One POST on a fresh connection with hyper, the body sent with a
/// Content-Length or chunked (no length: the server learns the size only by
/// reading).
pub(super) async fn post(
    addr: SocketAddr,
    path: &str,
    body: Vec<u8>,
    chunked: bool,
) -> Result<(StatusCode, HeaderMap, Bytes), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<
        _,
        BoxBody<Bytes, Infallible>,
    >(TokioIo::new(stream))
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let body = if chunked {
        let chunks: Vec<_> = body
            .chunks(48 * 1024)
            .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        StreamBody::new(tokio_stream::iter(chunks)).boxed()
    } else {
        Full::new(Bytes::from(body)).boxed()
    };
    let request = http::Request::post(path)
        .header("host", addr.to_string())
        .body(body)
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("sending: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading: {e}"))?
        .to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// Decodes %XX as axum's `Path` does; a `%` not followed by two hex digits
/// stays as it is.
pub(super) fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}
