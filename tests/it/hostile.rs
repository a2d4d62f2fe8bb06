//! Hostile input. Whatever a client sends (or, to the worker, whatever a
//! backend answers), the result is a right answer or a well-formed refusal:
//! never a 5xx, a panic, a hang, or memory without bound.
//!
//! - Property tests (proptest, bounded case counts) drive every parser of
//!   outside input over real sockets: the legacy HTTP routes, every gRPC
//!   method with arbitrary bytes as its message (and arbitrary framing), and
//!   the worker fed lying backends. The pure parsers have their own property
//!   tests next to them (`rng::properties`, `hasher::properties`,
//!   `worker::properties`).
//! - Each limit of `dockercoins::limits` that bounds memory has a test here,
//!   or, where one already existed, in the module the limits section names.
//! - webui serves only its own routes, with its security headers on every
//!   answer.

use crate::helpers::{
    RedisServer, RunningWorker, Spawned, hasher_client, http1, rng_client, sha256_hex,
    spawn_hasher, spawn_rng,
};
use axum::http::{self, HeaderMap, StatusCode};
use bytes::Bytes;
use dockercoins::{
    config::{HasherConfig, RngConfig},
    limits::{
        HTTP1_HEADER_READ_TIMEOUT, MAX_BLOCK_BYTES, MAX_CONCURRENT_STREAMS, MAX_GRPC_MESSAGE_BYTES,
        MAX_HEADER_LIST_BYTES, MAX_SMALL_REQUEST_BYTES,
    },
    pb::{
        DigestBatch, GenerateRequest, GenerateResponse, GenerateStreamRequest,
        GenerateStreamResponse, HashBatch, HashRequest, HashResponse,
    },
    pool::{Backend, PoolSettings},
    store::Store,
    webui::Webui,
};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper_util::rt::TokioIo;
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, TestCaseError, TestRunner},
};
use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};

/// Longest any single case may take: past it, the case is a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `cases` cases of `strategy` through the async `check`, on `rt`
/// (where the test's servers run). A case that takes longer than
/// [`CASE_TIMEOUT`] fails as a hang. Failures are shrunk and reported with
/// the smallest input found.
fn check_cases<S, F, Fut>(rt: &tokio::runtime::Runtime, cases: u32, strategy: S, check: F)
where
    S: Strategy,
    F: Fn(S::Value) -> Fut,
    Fut: Future<Output = Result<(), TestCaseError>>,
{
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    };
    let result = TestRunner::new(config).run(&strategy, |value| {
        rt.block_on(async {
            tokio::time::timeout(CASE_TIMEOUT, check(value))
                .await
                .unwrap_or_else(|_| Err(TestCaseError::fail("no answer in 10 s: a hang")))
        })
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

/// `n` values drawn from `strategy` (no shrinking): inputs for a test that
/// runs them all at once.
fn sample<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::default();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1: what a hostile client writes, byte for byte.

#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Writes `request` as is on a fresh connection and reads until the server
/// closes it (requests here say `Connection: close`).
async fn raw_http(addr: SocketAddr, request: &[u8]) -> Result<RawResponse, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    parse_response(&answer)
}

fn parse_response(answer: &[u8]) -> Result<RawResponse, String> {
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

fn get_request(method: &str, target: &str) -> Vec<u8> {
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
async fn post(
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

// ---------------------------------------------------------------------------
// webui on a real socket.

struct WebuiServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl WebuiServer {
    async fn start(rng: &Spawned, hasher: &Spawned) -> Self {
        let pool = PoolSettings {
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let webui = Webui::new(
            Store::memory(),
            Backend::new("rng", &rng.url(), &pool).unwrap(),
            Backend::new("hasher", &hasher.url(), &pool).unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(dockercoins::webui::serve(listener, webui, async {
            let _ = stopped.await;
        }));
        Self { addr, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("webui did not stop")
            .unwrap()
            .unwrap();
    }
}

/// rng and hasher without delays, and a webui in front of them.
async fn mesh() -> (Spawned, Spawned, WebuiServer) {
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let webui = WebuiServer::start(&rng, &hasher).await;
    (rng, hasher, webui)
}

/// Stops what [`mesh`] started, each within its own bound.
async fn stop_mesh(rng: Spawned, hasher: Spawned, webui: WebuiServer) {
    webui.stop().await;
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

// ---------------------------------------------------------------------------
// (a) The legacy HTTP routes and webui's gateway: arbitrary paths and bodies.

/// Decodes %XX as axum's `Path` does; a `%` not followed by two hex digits
/// stays as it is.
fn percent_decode(text: &str) -> Vec<u8> {
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

/// What `GET /<segment>` must answer, worked out independently of
/// `parse_size`: the decoded segment is an optional `+` and ASCII digits
/// whose value is 1 to MAX_BLOCK_BYTES, or the answer is 400.
fn expected_size(segment: &str) -> Option<usize> {
    let decoded = String::from_utf8(percent_decode(segment)).ok()?;
    let digits = decoded.strip_prefix('+').unwrap_or(&decoded);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > 7 {
        return None;
    }
    let value: usize = significant.parse().unwrap_or(0);
    (1..=MAX_BLOCK_BYTES).contains(&value).then_some(value)
}

/// A size as a client may write it in a URL: numbers near the limits,
/// leading zeros, signs, overflow, percent-encoded digits, trailing garbage.
fn size_segment() -> impl Strategy<Value = String> {
    let max = MAX_BLOCK_BYTES as u64;
    prop_oneof![
        (1..=max).prop_map(|n| n.to_string()),
        (max - 2..=max + 2).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[+-]?0{0,20}[0-9]{1,22}",
        "(%3[0-9]){1,4}",
        "%2[bB]?[0-9]{1,3}(%[0-9a-fA-F]{2})?",
        "[0-9]{1,5}[a-zA-Z.~_-]{1,3}",
        "[a-zA-Z.~_-]{1,4}[0-9]{0,3}",
        "(%20|%09|%0[aA])?[0-9]{1,4}(%20|%09)?",
    ]
}

/// `GET /<n>` answers exactly n random bytes when n is a size in range, and
/// 400 with a one-line reason otherwise; over a real socket.
#[test]
fn rng_get_size_answers_exactly_the_sizes_in_range() {
    let rt = runtime();
    let rng = rt.block_on(spawn_rng(RngConfig::turbo()));
    let addr = rng.addr;
    check_cases(&rt, 64, size_segment(), |segment| async move {
        let response = raw_http(addr, &get_request("GET", &format!("/{segment}")))
            .await
            .map_err(TestCaseError::fail)?;
        match expected_size(&segment) {
            Some(size) => {
                prop_assert_eq!(response.status, 200, "/{}: {:?}", segment, response.head);
                prop_assert_eq!(response.body.len(), size);
                prop_assert_eq!(
                    response.header("content-type"),
                    Some("application/octet-stream")
                );
            }
            None => {
                prop_assert_eq!(response.status, 400, "/{}: {:?}", segment, response.head);
                let reason = String::from_utf8_lossy(&response.body);
                prop_assert_eq!(reason.lines().count(), 1, "{:?}", reason);
            }
        }
        Ok(())
    });
    rt.block_on(rng.stop()).unwrap();
}

/// Any request target a client may write: path segments of every sort
/// (dots, percent-encoding, NUL, non-ASCII, spaces), queries, and the odd
/// forms (`*`, absolute URLs, `//`).
fn request_target() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        4 => size_segment(),
        2 => "[a-zA-Z0-9._~!$&'()*+,;=:@-]{0,12}",
        2 => "(%[0-9a-fA-F]{2}){1,4}",
        1 => prop::sample::select(vec![
            "..", ".", "%2e%2e", "%2E%2E", "%2f", "%00", "%ff%fe", "%", "%zz", "static",
            "api", "rng", "hash", "json", "app.js", "etc", "passwd",
        ]).prop_map(str::to_owned),
        1 => "\\PC{1,6}",
    ];
    let prefix = prop::sample::select(vec!["", "", "", "/static", "/api"]);
    let path = (
        prefix,
        prop_oneof![
            3 => segment.clone().prop_map(|s| vec![s]),
            1 => prop::collection::vec(segment, 0..=3),
        ],
        prop::option::weighted(0.3, "[a-z=&%0-9]{0,10}"),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(prefix, segments, query, trailing)| {
            let mut path = format!("{prefix}/{}", segments.join("/"));
            if trailing && !segments.is_empty() {
                path.push('/');
            }
            if let Some(query) = query {
                path = format!("{path}?{query}");
            }
            path
        });
    prop_oneof![
        8 => path,
        1 => prop::sample::select(vec![
            "*", "http://evil.example/32", "//32", "/./32", "/api/rng/../../32",
            "/api//rng/32", "/api/rng/", "/api/rng/32/", "/static//app.js",
        ]).prop_map(str::to_owned),
    ]
}

/// Every server here answers any request target with a well-formed 2xx or
/// 4xx, never a 5xx and never a hang; and a 200 is never more than the
/// largest block (or its hex, through webui's gateway).
#[test]
fn any_request_target_gets_a_2xx_or_4xx_from_every_http_server() {
    let rt = runtime();
    let (rng, hasher, webui) = rt.block_on(mesh());
    let targets = [
        ("rng", rng.addr),
        ("hasher", hasher.addr),
        ("webui", webui.addr),
    ];
    let methods = prop::sample::select(vec![
        "GET", "GET", "GET", "GET", "GET", "POST", "HEAD", "PUT", "BREW",
    ]);
    // Half of webui's requests go under `/api/rng/`, where its gateway
    // parses them, rather than to the 404 fallback.
    let strategy = (
        prop::sample::select(targets.to_vec()),
        methods,
        request_target(),
        any::<bool>(),
    )
        .prop_map(|((name, addr), method, target, gateway)| {
            let target = if name == "webui" && gateway && target.starts_with('/') {
                format!("/api/rng{target}")
            } else {
                target
            };
            ((name, addr), method, target)
        });
    check_cases(
        &rt,
        192,
        strategy,
        |((name, addr), method, target)| async move {
            let response = raw_http(addr, &get_request(method, &target))
                .await
                .map_err(|e| TestCaseError::fail(format!("{name} {method} {target}: {e}")))?;
            prop_assert!(
                (200..300).contains(&response.status) || (400..500).contains(&response.status),
                "{} {} {}: {:?}",
                name,
                method,
                target,
                response.head
            );
            prop_assert!(response.body.len() <= 2 * MAX_BLOCK_BYTES + 64);
            Ok(())
        },
    );
    // Every server still serves after all that.
    rt.block_on(async {
        for (name, addr) in targets {
            let response = raw_http(addr, &get_request("GET", "/")).await.unwrap();
            assert_eq!(response.status, 200, "{name}");
        }
        stop_mesh(rng, hasher, webui).await;
    });
}

/// A body for `POST`: small and arbitrary, or within a few bytes of the
/// 1 MiB limit either side; sent with a length or chunked.
fn post_body() -> impl Strategy<Value = (Vec<u8>, bool)> {
    let body = prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..=512),
        1 => (MAX_BLOCK_BYTES - 4..=MAX_BLOCK_BYTES + 4, any::<u8>())
            .prop_map(|(len, seed)| (0..len).map(|i| (i as u8).wrapping_mul(seed | 1)).collect()),
    ];
    (body, any::<bool>())
}

/// hasher's `POST /` and webui's `POST /api/hash`: any body up to 1 MiB gets
/// its SHA-256, anything longer 413, whether its length was announced or not.
#[test]
fn post_bodies_get_their_sha256_or_413_over_the_limit() {
    let rt = runtime();
    let (rng, hasher, webui) = rt.block_on(mesh());
    let targets = vec![(hasher.addr, "/"), (webui.addr, "/api/hash")];
    let strategy = (prop::sample::select(targets), post_body());
    check_cases(
        &rt,
        40,
        strategy,
        |((addr, path), (body, chunked))| async move {
            let len = body.len();
            let expected = sha256_hex(&body);
            let (status, _, answer) = post(addr, path, body, chunked)
                .await
                .map_err(|e| TestCaseError::fail(format!("{path} {len} bytes: {e}")))?;
            if len > MAX_BLOCK_BYTES {
                prop_assert_eq!(
                    status,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "{} {} bytes",
                    path,
                    len
                );
            } else {
                prop_assert_eq!(status, StatusCode::OK, "{} {} bytes", path, len);
                let answer = String::from_utf8_lossy(&answer);
                prop_assert!(answer.contains(&expected), "{}: {}", path, answer);
            }
            Ok(())
        },
    );
    rt.block_on(stop_mesh(rng, hasher, webui));
}

// ---------------------------------------------------------------------------
// (b) Every gRPC method with arbitrary bytes as its message, and arbitrary
// framing around it, sent as raw HTTP/2 requests through a tonic Channel:
// the answer is always a well-formed gRPC status, and the server serves on.

/// How a gRPC call ended, as read from the wire.
#[derive(Debug)]
struct GrpcOutcome {
    code: tonic::Code,
    message: String,
}

/// Reads more than this of a streamed reply, and the call is going fine:
/// stop there (a valid `GenerateStream` may ask for 256 MiB).
const READ_CAP: usize = 2 * 1024 * 1024;

fn grpc_status(headers: &HeaderMap) -> Option<GrpcOutcome> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(|m| String::from_utf8_lossy(&percent_decode(m)).into_owned())
        .unwrap_or_default();
    Some(GrpcOutcome {
        code: tonic::Code::from(code),
        message,
    })
}

/// POSTs `body` as the whole request body of the gRPC method `path`. An
/// answer that is not a gRPC status (a reset stream, a dropped connection,
/// an HTTP error) is an `Err`: the server did not answer as a gRPC server.
async fn raw_grpc(
    channel: &tonic::transport::Channel,
    path: &str,
    body: Bytes,
) -> Result<GrpcOutcome, String> {
    use tower::{Service, ServiceExt};
    let request = http::Request::post(format!("http://dockercoins{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(body)))
        .unwrap();
    let mut channel = channel.clone();
    let response = channel
        .ready()
        .await
        .map_err(|e| format!("channel: {e}"))?
        .call(request)
        .await
        .map_err(|e| format!("no response: {e}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!("HTTP {}", response.status()));
    }
    // Trailers-only: the status comes with the headers.
    if let Some(outcome) = grpc_status(response.headers()) {
        return Ok(outcome);
    }
    let mut body = response.into_body();
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reply body: {e}"))?;
        match frame.into_data() {
            Ok(data) => {
                read += data.len();
                if read > READ_CAP {
                    return Ok(GrpcOutcome {
                        code: tonic::Code::Ok,
                        message: format!("still streaming after {read} bytes"),
                    });
                }
            }
            Err(frame) => {
                let trailers = frame.into_trailers().map_err(|_| "an unknown frame")?;
                return grpc_status(&trailers).ok_or_else(|| "trailers without grpc-status".into());
            }
        }
    }
    Err("the reply ended without a gRPC status".into())
}

/// A gRPC message frame: compressed flag, declared length, payload.
fn frame(flag: u8, declared: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![flag];
    frame.extend_from_slice(&declared.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn message(payload: &[u8]) -> Vec<u8> {
    frame(0, payload.len() as u32, payload)
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A protobuf field as a hostile client may write it: a known or unknown
/// field number with any wire type (valid or not) and any value.
#[derive(Clone, Debug)]
enum Field {
    Varint(u32, u64),
    Bytes(u32, Vec<u8>),
    /// A length-delimited field that claims more bytes than follow.
    ShortBytes(u32, u64, Vec<u8>),
    Fixed32(u32, u32),
    Fixed64(u32, u64),
    /// Group markers (3, 4) and the wire types that do not exist (6, 7).
    Odd(u32, u8),
}

/// A varint as a client may set it: small, near the limits, or anything.
fn field_value() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        0u64..=64,
        0u64..=70_000,
        prop::sample::select(vec![
            0,
            1,
            32,
            MAX_BLOCK_BYTES as u64,
            MAX_BLOCK_BYTES as u64 + 1,
            u32::MAX as u64,
            u32::MAX as u64 + 33,
            u64::MAX,
        ]),
        any::<u64>(),
    ]
}

/// Any field: any number, any wire type, any value.
fn field() -> impl Strategy<Value = Field> {
    let number = prop_oneof![4 => 1u32..=3, 1 => 4u32..=20, 1 => any::<u32>()];
    let value = field_value();
    prop_oneof![
        4 => (number.clone(), value.clone()).prop_map(|(n, v)| Field::Varint(n, v)),
        2 => (number.clone(), prop::collection::vec(any::<u8>(), 0..=96))
            .prop_map(|(n, b)| Field::Bytes(n, b)),
        1 => (number.clone(), value, prop::collection::vec(any::<u8>(), 0..=8))
            .prop_map(|(n, claim, b)| Field::ShortBytes(n, claim.max(b.len() as u64 + 1), b)),
        1 => (number.clone(), any::<u32>()).prop_map(|(n, v)| Field::Fixed32(n, v)),
        1 => (number.clone(), any::<u64>()).prop_map(|(n, v)| Field::Fixed64(n, v)),
        1 => (number, prop::sample::select(vec![3u8, 4, 6, 7])).prop_map(|(n, w)| Field::Odd(n, w)),
    ]
}

fn encode(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    let tag =
        |n: u32, wire: u8, out: &mut Vec<u8>| varint((u64::from(n) << 3) | u64::from(wire), out);
    for field in fields {
        match field {
            Field::Varint(n, v) => {
                tag(*n, 0, &mut out);
                varint(*v, &mut out);
            }
            Field::Bytes(n, b) => {
                tag(*n, 2, &mut out);
                varint(b.len() as u64, &mut out);
                out.extend_from_slice(b);
            }
            Field::ShortBytes(n, claim, b) => {
                tag(*n, 2, &mut out);
                varint(*claim, &mut out);
                out.extend_from_slice(b);
            }
            Field::Fixed32(n, v) => {
                tag(*n, 5, &mut out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Field::Fixed64(n, v) => {
                tag(*n, 1, &mut out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Field::Odd(n, wire) => tag(*n, *wire, &mut out),
        }
    }
    out
}

/// A whole request body for a gRPC call.
#[derive(Clone, Debug)]
enum GrpcBody {
    /// One well-framed message of anything: protobuf-like fields or bytes.
    Message(Vec<u8>),
    /// Several well-framed messages back to back.
    Messages(Vec<Vec<u8>>),
    /// Bytes with no framing at all.
    Raw(Vec<u8>),
    /// A message whose compressed flag is set (no grpc-encoding was
    /// announced) or is not a flag at all.
    Flagged(u8, Vec<u8>),
    /// A frame that declares more bytes than the body holds.
    Truncated(u32, Vec<u8>),
    /// A frame that declares more than the method's message limit, followed
    /// by a few bytes only: it must be refused on its header.
    Oversize(u32),
    /// No message at all.
    Empty,
}

impl GrpcBody {
    fn bytes(&self, limit: usize) -> Bytes {
        let bytes = match self {
            Self::Message(payload) => message(payload),
            Self::Messages(payloads) => payloads.iter().flat_map(|p| message(p)).collect(),
            Self::Raw(raw) => raw.clone(),
            Self::Flagged(flag, payload) => frame(*flag, payload.len() as u32, payload),
            Self::Truncated(missing, payload) => frame(0, payload.len() as u32 + missing, payload),
            Self::Oversize(over) => frame(0, (limit as u32).saturating_add(*over), &[0; 16]),
            Self::Empty => Vec::new(),
        };
        Bytes::from(bytes)
    }

    /// The status this body must get whatever the method, when only one
    /// is right.
    fn required(&self, streaming_request: bool) -> Option<tonic::Code> {
        match self {
            // tonic's decoder quirk: a frame whose 5-byte header arrived but
            // none of its payload looks like a clean end to a client stream
            // (the header is consumed, the buffer is empty at EOF), so that
            // call ends OK with every complete message answered. Harmless:
            // nothing is buffered, nothing is counted.
            Self::Truncated(_, payload) if streaming_request && payload.is_empty() => None,
            Self::Flagged(..) | Self::Truncated(..) => Some(tonic::Code::Internal),
            Self::Oversize(_) => Some(tonic::Code::OutOfRange),
            // A unary request needs its message; a client stream may be empty.
            Self::Empty if !streaming_request => Some(tonic::Code::Internal),
            Self::Empty => Some(tonic::Code::Ok),
            _ => None,
        }
    }
}

/// A field that decodes: the known numbers (1, 2) as varints or bytes, and
/// unknown numbers with a valid wire type (skipped by the decoder).
fn typed_field() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => (1u32..=2, prop_oneof![1u64..=64, field_value()]).prop_map(|(n, v)| Field::Varint(n, v)),
        2 => (1u32..=2, prop::collection::vec(any::<u8>(), 0..=96)).prop_map(|(n, b)| Field::Bytes(n, b)),
        1 => (4u32..=20, any::<u32>()).prop_map(|(n, v)| Field::Fixed32(n, v)),
        1 => (4u32..=20, prop::collection::vec(any::<u8>(), 0..=16)).prop_map(|(n, b)| Field::Bytes(n, b)),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(field(), 0..=5).prop_map(|f| encode(&f)),
        3 => prop::collection::vec(typed_field(), 0..=3).prop_map(|f| encode(&f)),
        1 => prop::collection::vec(any::<u8>(), 0..=128),
    ]
}

fn grpc_body() -> impl Strategy<Value = GrpcBody> {
    prop_oneof![
        6 => payload().prop_map(GrpcBody::Message),
        4 => prop::collection::vec(typed_field(), 1..=3)
            .prop_map(|f| GrpcBody::Message(encode(&f))),
        // Two numbers, as in a real request: `size` (and `count`).
        2 => (prop_oneof![1u64..=4096, field_value()], prop_oneof![1u64..=4096, field_value()])
            .prop_map(|(a, b)| GrpcBody::Message(encode(&[Field::Varint(1, a), Field::Varint(2, b)]))),
        2 => prop::collection::vec(payload(), 2..=4).prop_map(GrpcBody::Messages),
        2 => prop::collection::vec(any::<u8>(), 1..=64).prop_map(GrpcBody::Raw),
        1 => (prop_oneof![Just(1u8), 2u8..=255], payload()).prop_map(|(f, p)| GrpcBody::Flagged(f, p)),
        1 => (1u32..=1024, payload()).prop_map(|(m, p)| GrpcBody::Truncated(m, p)),
        1 => prop_oneof![Just(1u32), 2u32..=1024, Just(u32::MAX)].prop_map(GrpcBody::Oversize),
        1 => Just(GrpcBody::Empty),
    ]
}

/// One gRPC method, its request message limit, and whether its requests
/// are a stream.
#[derive(Clone, Copy, Debug)]
struct Method {
    path: &'static str,
    limit: usize,
    streaming_request: bool,
    /// `Health/Check` answers NOT_FOUND for a service name it does not know.
    not_found_ok: bool,
}

const RNG_METHODS: [Method; 4] = [
    Method {
        path: "/dockercoins.v1.Rng/Generate",
        limit: MAX_SMALL_REQUEST_BYTES,
        streaming_request: false,
        not_found_ok: false,
    },
    Method {
        path: "/dockercoins.v1.Rng/GenerateStream",
        limit: MAX_SMALL_REQUEST_BYTES,
        streaming_request: false,
        not_found_ok: false,
    },
    Method {
        path: "/dockercoins.v1.Replica/Info",
        limit: MAX_SMALL_REQUEST_BYTES,
        streaming_request: false,
        not_found_ok: false,
    },
    Method {
        path: "/grpc.health.v1.Health/Check",
        limit: MAX_SMALL_REQUEST_BYTES,
        streaming_request: false,
        not_found_ok: true,
    },
];

const HASHER_METHODS: [Method; 3] = [
    Method {
        path: "/dockercoins.v1.Hasher/Hash",
        limit: MAX_GRPC_MESSAGE_BYTES,
        streaming_request: false,
        not_found_ok: false,
    },
    Method {
        path: "/dockercoins.v1.Hasher/HashStream",
        limit: MAX_GRPC_MESSAGE_BYTES,
        streaming_request: true,
        not_found_ok: false,
    },
    Method {
        path: "/dockercoins.v1.Replica/Info",
        limit: MAX_SMALL_REQUEST_BYTES,
        streaming_request: false,
        not_found_ok: false,
    },
];

/// Every method of rng and hasher, unary and streaming, gets arbitrary
/// request bodies: the answer is a gRPC status (OK, INVALID_ARGUMENT from
/// the service, INTERNAL for what does not decode, OUT_OF_RANGE over the
/// limit), never a reset stream or a dropped connection; one connection per
/// server carries all the cases, and a normal call works after them.
#[test]
fn any_bytes_to_any_grpc_method_get_a_grpc_status() {
    let rt = runtime();
    let rng = rt.block_on(spawn_rng(RngConfig::turbo()));
    let hasher = rt.block_on(spawn_hasher(HasherConfig::turbo()));
    let rng_channel = rt.block_on(rng.channel());
    let hasher_channel = rt.block_on(hasher.channel());
    let methods: Vec<_> = RNG_METHODS
        .iter()
        .map(|m| (*m, rng_channel.clone()))
        .chain(HASHER_METHODS.iter().map(|m| (*m, hasher_channel.clone())))
        .collect();
    let strategy = (prop::sample::select(methods), grpc_body());
    check_cases(&rt, 384, strategy, |((method, channel), body)| async move {
        let outcome = raw_grpc(&channel, method.path, body.bytes(method.limit))
            .await
            .map_err(|e| TestCaseError::fail(format!("{}: {e}", method.path)))?;
        use tonic::Code;
        let allowed = matches!(
            outcome.code,
            Code::Ok | Code::InvalidArgument | Code::Internal | Code::OutOfRange
        ) || (method.not_found_ok && outcome.code == Code::NotFound);
        prop_assert!(allowed, "{}: {:?}", method.path, outcome);
        if let Some(required) = body.required(method.streaming_request) {
            prop_assert_eq!(outcome.code, required, "{}: {:?}", method.path, outcome);
        }
        if let GrpcBody::Oversize(_) = body {
            // Refused on the frame's header, by this method's own limit.
            let limit = format!("the limit is: {} bytes", method.limit);
            prop_assert!(
                outcome.message.contains(&limit),
                "{}: {:?}",
                method.path,
                outcome
            );
        }
        Ok(())
    });
    rt.block_on(async {
        let mut rng_client = dockercoins::pb::rng_client::RngClient::new(rng_channel);
        let data = rng_client
            .generate(dockercoins::pb::GenerateRequest { size: 32 })
            .await
            .unwrap()
            .into_inner()
            .data;
        assert_eq!(data.len(), 32);
        let mut hasher_client = dockercoins::pb::hasher_client::HasherClient::new(hasher_channel);
        let hex = hasher_client
            .hash(dockercoins::pb::HashRequest { data: data.clone() })
            .await
            .unwrap()
            .into_inner()
            .hex;
        assert_eq!(hex, sha256_hex(&data));
        rng.stop().await.unwrap();
        hasher.stop().await.unwrap();
    });
}

// ---------------------------------------------------------------------------
// (c) The worker fed lying backends: a reply that is not exactly what was
// asked for is refused, not hashed, not counted, not stored, and the worker
// keeps mining (no panic kills its loop).

/// How a fake backend lies. Where rng lies, hasher answers as if every
/// block were a coin, so that a bad block that got through would show.
#[derive(Clone, Debug)]
enum Lie {
    /// Both honest (every digest a coin): the control, which must count.
    None,
    /// rng's unary reply: `len` bytes instead of 32.
    BlockOf(usize),
    /// hasher's unary reply: this text instead of 64 lowercase hex digits.
    Hex(String),
    /// hasher's unary reply: text drawn from a generator, a new one each call.
    HexDrawn(Vec<String>),
    /// rng's stream: blocks of 16 bytes.
    StreamBlockSize,
    /// rng's stream: one byte more than whole blocks.
    StreamRagged,
    /// rng's stream: one block more than asked.
    StreamTooMany,
    /// rng's stream: a message with no block.
    StreamEmpty,
    /// rng's stream: ends without a message.
    StreamEndsEarly,
    /// hasher's stream: digests one byte short, one digest too many, none.
    DigestsShort,
    DigestsLong,
    DigestsNone,
}

impl Lie {
    fn by_rng(&self) -> bool {
        matches!(
            self,
            Self::BlockOf(_)
                | Self::StreamBlockSize
                | Self::StreamRagged
                | Self::StreamTooMany
                | Self::StreamEmpty
                | Self::StreamEndsEarly
        )
    }
}

#[derive(Clone)]
struct Fake {
    lie: Lie,
    /// rng calls received.
    asked: Arc<AtomicUsize>,
    /// Blocks hasher was given to hash (unary calls and stream batches).
    hashed: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl dockercoins::pb::rng_server::Rng for Fake {
    async fn generate(
        &self,
        request: tonic::Request<GenerateRequest>,
    ) -> Result<tonic::Response<GenerateResponse>, tonic::Status> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let len = match self.lie {
            Lie::BlockOf(len) => len,
            _ => request.get_ref().size as usize,
        };
        Ok(tonic::Response::new(GenerateResponse {
            data: vec![0x5a; len].into(),
        }))
    }

    type GenerateStreamStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<GenerateStreamResponse, tonic::Status>>>;

    async fn generate_stream(
        &self,
        request: tonic::Request<GenerateStreamRequest>,
    ) -> Result<tonic::Response<Self::GenerateStreamStream>, tonic::Status> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let count = request.get_ref().count as usize;
        let (size, len) = match self.lie {
            Lie::StreamBlockSize => (16, 16 * count),
            Lie::StreamRagged => (32, 32 * count + 1),
            Lie::StreamTooMany => (32, 32 * (count + 1)),
            Lie::StreamEmpty => (32, 0),
            _ => (32, 32 * count),
        };
        let messages = match self.lie {
            Lie::StreamEndsEarly => Vec::new(),
            _ => vec![Ok(GenerateStreamResponse {
                size,
                blocks: (0..len).map(|i| i as u8).collect::<Vec<u8>>().into(),
            })],
        };
        Ok(tonic::Response::new(tokio_stream::iter(messages)))
    }
}

#[tonic::async_trait]
impl dockercoins::pb::hasher_server::Hasher for Fake {
    async fn hash(
        &self,
        request: tonic::Request<HashRequest>,
    ) -> Result<tonic::Response<HashResponse>, tonic::Status> {
        let n = self.hashed.fetch_add(1, Ordering::SeqCst);
        let real = sha256_hex(&request.get_ref().data);
        let hex = match &self.lie {
            Lie::Hex(hex) => hex.clone(),
            Lie::HexDrawn(drawn) => drawn[n % drawn.len()].clone(),
            // Honest, and a coin.
            _ => format!("0{}", &real[1..]),
        };
        Ok(tonic::Response::new(HashResponse { hex }))
    }

    type HashStreamStream =
        tokio_stream::wrappers::ReceiverStream<Result<DigestBatch, tonic::Status>>;

    async fn hash_stream(
        &self,
        request: tonic::Request<tonic::Streaming<HashBatch>>,
    ) -> Result<tonic::Response<Self::HashStreamStream>, tonic::Status> {
        let mut batches = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(batch)) = batches.message().await {
                let blocks = batch.blocks.len() / 32;
                this.hashed.fetch_add(blocks, Ordering::SeqCst);
                // Every digest all zeros: every block a coin, if accepted.
                let len = match this.lie {
                    Lie::DigestsShort => 32 * blocks - 1,
                    Lie::DigestsLong => 32 * (blocks + 1),
                    Lie::DigestsNone => 0,
                    _ => 32 * blocks,
                };
                let reply = DigestBatch {
                    digests: vec![0; len].into(),
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

/// A fake rng and hasher (one server serving both) telling `lie`.
async fn spawn_fake(lie: Lie) -> (Fake, String, oneshot::Sender<()>) {
    let fake = Fake {
        lie,
        asked: Arc::default(),
        hashed: Arc::default(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(dockercoins::pb::rng_server::RngServer::new(fake.clone()))
        .add_service(dockercoins::pb::hasher_server::HasherServer::new(
            fake.clone(),
        ))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = stopped.await;
            },
        );
    tokio::spawn(server);
    (fake, url, stop)
}

/// What a hasher may send instead of a digest (never 64 lowercase hex
/// digits): near misses and any text.
fn not_a_digest() -> impl Strategy<Value = String> {
    prop_oneof![
        "0[0-9a-f]{62}",
        "0[0-9a-f]{64}",
        "0[0-9a-f]{30}[A-F][0-9a-f]{32}",
        "0[0-9a-f]{0,62}[^0-9a-f]+[0-9a-f]{0,30}",
        "0000000[é€😀][0-9a-f]{50,60}",
        "\\PC{0,70}",
    ]
    .prop_filter("a real digest", |hex| {
        !(hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    })
}

/// Every lie of rng and hasher, unary and batch, each to a worker of its
/// own, all against one Redis: nothing is counted or stored, what rng got
/// wrong never reaches hasher, and each worker keeps asking (its loop is
/// alive). The honest controls, on an in-memory store, do count: the fakes
/// can be told apart from the checks.
#[tokio::test]
async fn the_worker_counts_nothing_from_lying_backends() {
    use dockercoins::worker::WorkerConfig;
    let redis = RedisServer::start().await;
    let unary = WorkerConfig {
        delay: Duration::ZERO,
        concurrency: 1,
        batch: 0,
        call_timeout: Duration::from_secs(2),
    };
    let batch = WorkerConfig {
        batch: 64,
        ..unary.clone()
    };
    let scenarios = vec![
        (unary.clone(), Lie::BlockOf(0)),
        (unary.clone(), Lie::BlockOf(31)),
        (unary.clone(), Lie::BlockOf(33)),
        (unary.clone(), Lie::BlockOf(64 * 1024)),
        (unary.clone(), Lie::Hex("0".repeat(63))),
        (unary.clone(), Lie::Hex("0".repeat(65))),
        (
            unary.clone(),
            Lie::Hex(format!("0{}", "AB".repeat(31) + "C")),
        ),
        (unary.clone(), Lie::Hex(format!("0{}g", "0".repeat(62)))),
        // 64 bytes, but the 8th character is cut in the middle.
        (
            unary.clone(),
            Lie::Hex(format!("0000000é{}", "0".repeat(55))),
        ),
        (unary.clone(), Lie::Hex(String::new())),
        // A few loops, to go through more of the drawn lies.
        (
            WorkerConfig {
                concurrency: 4,
                ..unary.clone()
            },
            Lie::HexDrawn(sample(not_a_digest(), 64)),
        ),
        (batch.clone(), Lie::StreamBlockSize),
        (batch.clone(), Lie::StreamRagged),
        (batch.clone(), Lie::StreamTooMany),
        (batch.clone(), Lie::StreamEmpty),
        (batch.clone(), Lie::StreamEndsEarly),
        (batch.clone(), Lie::DigestsShort),
        (batch.clone(), Lie::DigestsLong),
        (batch.clone(), Lie::DigestsNone),
    ];
    let mut running = Vec::new();
    for (config, lie) in scenarios {
        let (fake, url, stop) = spawn_fake(lie).await;
        let store = Store::redis(&redis.url(), Duration::from_millis(500)).unwrap();
        let worker = RunningWorker::start(config, &url, &url, store);
        running.push((fake, worker, stop));
    }
    let mut controls = Vec::new();
    for config in [unary, batch] {
        let (fake, url, stop) = spawn_fake(Lie::None).await;
        let worker = RunningWorker::start(config, &url, &url, Store::memory());
        controls.push((fake, worker, stop));
    }
    // Each liar asked at least 4 times: the worker backed off and tried
    // again, its loop still alive after each refusal.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for (fake, _, _) in &running {
        while fake.asked.load(Ordering::SeqCst) < 4 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}: the worker stopped asking after {} calls",
                fake.lie,
                fake.asked.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (fake, worker, stop) in running {
        let report = worker.stop().await;
        assert_eq!(report, Default::default(), "{:?}: counted", fake.lie);
        if fake.lie.by_rng() {
            assert_eq!(
                fake.hashed.load(Ordering::SeqCst),
                0,
                "{:?}: a bad block was sent to hasher",
                fake.lie
            );
        }
        let _ = stop.send(());
    }
    for (fake, worker, stop) in controls {
        let report = worker.stop().await;
        assert!(
            report.hashes_done > 0 && report.coins_found == report.hashes_done,
            "{:?}: the honest control counted {report:?}",
            fake.lie
        );
        let _ = stop.send(());
    }
    assert!(redis.keys().await.is_empty(), "{:?}", redis.keys().await);
}

// ---------------------------------------------------------------------------
// Limits on everything a client can make a server hold in memory. Those
// already tested elsewhere are not tested again:
// - rng `size` over 1 MiB (gRPC): `rng::bad_sizes_and_counts_are_invalid_argument`,
//   `rng::tests::sizes_outside_the_limits_are_refused`; `GET /<n>`:
//   `rng::legacy_routes_answer_like_the_original`.
// - MAX_STREAM_BLOCKS, MAX_STREAM_BYTES: `rng::tests::stream_limits_are_enforced`,
//   `rng::bad_sizes_and_counts_are_invalid_argument`.
// - MAX_BATCH_BLOCKS, block size, whole blocks: `hasher::tests::bad_batches_are_refused`,
//   `hasher::bad_batches_end_the_stream_with_invalid_argument`.
// - hasher's message limit, far over: `hasher::a_message_over_the_limit_is_a_grpc_error_not_a_crash`.
// - hasher `POST /` over 1 MiB with a Content-Length: `hasher::legacy_routes_answer_like_the_original`.
// - MAX_PENDING_COINS: `worker::tests::coins_in_a_failing_update_still_pause_mining`.
// - bytes that are neither HTTP/1.1 nor HTTP/2: `server::garbage_on_the_port_drops_the_connection_only`.

/// The server's own HTTP/2 SETTINGS, read off the wire after a bare preface.
async fn h2_settings(addr: SocketAddr) -> Vec<(u16, u32)> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The preface, then an empty SETTINGS frame.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    loop {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await.unwrap();
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0; len];
        stream.read_exact(&mut payload).await.unwrap();
        let (kind, ack) = (header[3], header[4] & 1 == 1);
        if kind == 4 && !ack {
            return payload
                .chunks_exact(6)
                .map(|e| {
                    let id = u16::from_be_bytes([e[0], e[1]]);
                    (id, u32::from_be_bytes([e[2], e[3], e[4], e[5]]))
                })
                .collect();
        }
    }
}

/// rng and hasher announce both HTTP/2 limits to every client, so a
/// well-behaved client never exceeds them.
#[tokio::test]
async fn grpc_servers_announce_the_stream_and_header_limits() {
    const MAX_CONCURRENT_STREAMS_ID: u16 = 0x3;
    const MAX_HEADER_LIST_SIZE_ID: u16 = 0x6;
    for server in [
        spawn_rng(RngConfig::turbo()).await,
        spawn_hasher(HasherConfig::turbo()).await,
    ] {
        let settings = h2_settings(server.addr).await;
        let get = |id| settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
        assert_eq!(
            get(MAX_CONCURRENT_STREAMS_ID),
            Some(MAX_CONCURRENT_STREAMS),
            "{settings:?}"
        );
        assert_eq!(
            get(MAX_HEADER_LIST_SIZE_ID),
            Some(MAX_HEADER_LIST_BYTES),
            "{settings:?}"
        );
        server.stop().await.unwrap();
    }
}

/// MAX_CONCURRENT_STREAMS: on one connection, exactly that many calls are
/// open at once; the calls beyond it wait for a free stream (they are
/// neither refused nor failed), and every call completes once streams free
/// up.
#[tokio::test]
async fn calls_over_the_stream_limit_wait_for_a_free_stream() {
    use dockercoins::pb::hasher_client::HasherClient;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    // One connection for them all.
    let channel = hasher.channel().await;
    let limit = MAX_CONCURRENT_STREAMS as usize;
    let extra = 24;
    let opened = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..limit + extra {
        let (tx, rx) = tokio::sync::mpsc::channel::<HashBatch>(1);
        senders.push(tx);
        let mut client = HasherClient::new(channel.clone());
        let opened = opened.clone();
        calls.push(tokio::spawn(async move {
            // A client stream held open: the stream stays in use.
            let mut replies = client
                .hash_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            opened.fetch_add(1, Ordering::SeqCst);
            let mut digests = 0;
            while let Some(reply) = replies.message().await? {
                digests += reply.digests.len() / 32;
            }
            Ok::<_, tonic::Status>(digests)
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while opened.load(Ordering::SeqCst) < limit {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} streams opened",
            opened.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time for a stream beyond the limit to open, if it could.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        opened.load(Ordering::SeqCst),
        limit,
        "open at once on one connection"
    );
    assert!(
        calls.iter().all(|call| !call.is_finished()),
        "a call over the limit ended instead of waiting"
    );
    // One batch on every stream, then each client stream ends: the open
    // calls finish, and the waiting ones get their streams.
    for tx in senders {
        tx.send(HashBatch {
            size: 32,
            blocks: vec![1; 32].into(),
        })
        .await
        .unwrap();
    }
    for call in calls {
        let digests = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("a waiting call never got its stream")
            .unwrap()
            .unwrap();
        assert_eq!(digests, 1);
    }
    assert_eq!(opened.load(Ordering::SeqCst), limit + extra);
    hasher.stop().await.unwrap();
}

/// MAX_HEADER_LIST_BYTES: a call whose metadata is over the limit is
/// refused: just over, with HTTP/2's 431 on that stream alone; far over
/// (more than fits a frame), the connection is closed with GOAWAY
/// ENHANCE_YOUR_CALM rather than the headers buffered. Either way the
/// server serves the next call.
#[tokio::test]
async fn a_call_with_metadata_over_the_limit_is_refused() {
    let rng = spawn_rng(RngConfig::turbo()).await;
    let mut client = rng_client(&rng).await;
    let limit = MAX_HEADER_LIST_BYTES as usize;
    let call = |padding: usize| {
        let mut request = tonic::Request::new(GenerateRequest { size: 8 });
        request
            .metadata_mut()
            .insert("x-padding", "p".repeat(padding).parse().unwrap());
        request
    };
    // Well under the limit (pseudo-headers and the rest take a few hundred bytes).
    client.generate(call(limit - 1024)).await.unwrap();
    let status = client.generate(call(limit)).await.unwrap_err();
    assert!(status.message().contains("431"), "{status:?}");
    client.generate(call(8)).await.unwrap();
    let status = client.generate(call(4 * limit)).await.unwrap_err();
    let source = format!("{:?}", std::error::Error::source(&status));
    assert!(source.contains("ENHANCE_YOUR_CALM"), "{status:?}");
    let data = client.generate(call(8)).await.unwrap().into_inner().data;
    assert_eq!(data.len(), 8);
    rng.stop().await.unwrap();
}

/// A message of exactly `total` encoded bytes: one unknown field (15) of
/// padding, which every decoder skips.
fn padding_message(total: usize) -> Vec<u8> {
    (0..total)
        .rev()
        .find_map(|n| {
            let mut message = vec![0x7a];
            varint(n as u64, &mut message);
            (message.len() + n == total).then(|| {
                message.resize(total, 0);
                message
            })
        })
        .unwrap()
}

/// The per-message limit of every method: a message of exactly the limit is
/// decoded (and answered by the service), one byte more is OUT_OF_RANGE,
/// refused on the frame's header before its bytes are buffered.
#[tokio::test]
async fn every_method_decodes_up_to_its_message_limit_and_refuses_one_byte_more() {
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let methods = RNG_METHODS
        .iter()
        .map(|m| (*m, rng.addr))
        .chain(HASHER_METHODS.iter().map(|m| (*m, hasher.addr)));
    for (method, addr) in methods {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let at_limit = message(&padding_message(method.limit));
        let outcome = raw_grpc(&channel, method.path, at_limit.into())
            .await
            .unwrap();
        assert_ne!(
            outcome.code,
            tonic::Code::OutOfRange,
            "{}: {outcome:?}",
            method.path
        );
        assert_ne!(
            outcome.code,
            tonic::Code::Internal,
            "{}: {outcome:?}",
            method.path
        );
        let over = message(&padding_message(method.limit + 1));
        let outcome = raw_grpc(&channel, method.path, over.into()).await.unwrap();
        assert_eq!(
            outcome.code,
            tonic::Code::OutOfRange,
            "{}: {outcome:?}",
            method.path
        );
        let limit = format!("the limit is: {} bytes", method.limit);
        assert!(
            outcome.message.contains(&limit),
            "{}: {outcome:?}",
            method.path
        );
    }
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

/// Found by these tests: hasher's gRPC message limit leaves 4 KiB for
/// framing, and `Hash` used to hash up to 4 KiB more than the 1 MiB that
/// the proto promises and that `POST /` enforces (413). Now both ways of
/// asking agree, and so does a stream batch.
#[tokio::test]
async fn hasher_refuses_data_over_1_mib_however_it_is_sent() {
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let mut client = hasher_client(&hasher).await;
    let data = vec![3u8; MAX_BLOCK_BYTES + 1];
    let status = client
        .hash(HashRequest {
            data: data.clone().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let (status, _, _) = http1(hasher.addr, "POST", "/", data.clone()).await;
    assert_eq!(status, 413);
    // A batch of whole blocks, under the block count, over 1 MiB in all.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(HashBatch {
        size: 1000,
        blocks: vec![3; 1000 * 1049].into(),
    })
    .await
    .unwrap();
    let status = client
        .hash_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // Exactly 1 MiB is served.
    let hex = client
        .hash(HashRequest {
            data: data[..MAX_BLOCK_BYTES].to_vec().into(),
        })
        .await
        .unwrap()
        .into_inner()
        .hex;
    assert_eq!(hex, sha256_hex(&data[..MAX_BLOCK_BYTES]));
    hasher.stop().await.unwrap();
}

/// Request bodies on the HTTP routes (hasher's `POST /`, webui's `POST
/// /api/hash`): 1 MiB is served, one byte more is 413, whether the length
/// was announced (refused before reading) or the body came chunked (refused
/// as soon as it passes the limit).
#[tokio::test]
async fn request_bodies_over_1_mib_are_413_with_or_without_a_length() {
    let (rng, hasher, webui) = mesh().await;
    for (addr, path) in [(hasher.addr, "/"), (webui.addr, "/api/hash")] {
        for chunked in [false, true] {
            let at = vec![9u8; MAX_BLOCK_BYTES];
            let (status, _, body) = post(addr, path, at.clone(), chunked).await.unwrap();
            assert_eq!(status, 200, "{path} chunked={chunked}");
            assert!(String::from_utf8_lossy(&body).contains(&sha256_hex(&at)));
            let over = vec![9u8; MAX_BLOCK_BYTES + 1];
            let (status, _, _) = post(addr, path, over, chunked).await.unwrap();
            assert_eq!(status, 413, "{path} chunked={chunked}");
        }
    }
    stop_mesh(rng, hasher, webui).await;
}

/// HTTP/1.1 headers are not buffered without bound either: a 512 KiB header
/// line gets 431 (or the connection closed) instead of an answer, from
/// every server with an HTTP/1.1 port, and each serves on.
#[tokio::test]
async fn http1_headers_past_the_buffer_limit_are_refused() {
    let (rng, hasher, webui) = mesh().await;
    for (name, addr) in [
        ("rng", rng.addr),
        ("hasher", hasher.addr),
        ("webui", webui.addr),
    ] {
        let mut request = b"GET / HTTP/1.1\r\nHost: test\r\nX-Padding: ".to_vec();
        request.resize(request.len() + 512 * 1024, b'p');
        request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let (mut reader, mut writer) = stream.split();
        // The server may stop reading and answer before the request is all
        // written: write and read at once.
        let write = async {
            let _ = writer.write_all(&request).await;
        };
        let read = async {
            let mut answer = Vec::new();
            let _ = reader.read_to_end(&mut answer).await;
            answer
        };
        let ((), answer) = tokio::time::timeout(CASE_TIMEOUT, async { tokio::join!(write, read) })
            .await
            .unwrap_or_else(|_| panic!("{name}: a hang"));
        if !answer.is_empty() {
            let response = parse_response(&answer).unwrap();
            assert_eq!(response.status, 431, "{name}: {:?}", response.head);
        }
        let response = raw_http(addr, &get_request("GET", "/")).await.unwrap();
        assert_eq!(response.status, 200, "{name}");
    }
    stop_mesh(rng, hasher, webui).await;
}

/// HTTP1_HEADER_READ_TIMEOUT: a client that sends half a request and then
/// nothing is disconnected once the timeout has passed, by every server with
/// an HTTP/1.1 port, and each serves on. Paused clock: the 30 s pass at once
/// and the elapsed time is exact (a server without the timeout would keep the
/// connection past the 2x bound below).
#[tokio::test(start_paused = true)]
async fn half_a_request_is_disconnected_after_the_header_read_timeout() {
    let (rng, hasher, webui) = mesh().await;
    for (name, addr) in [
        ("rng", rng.addr),
        ("hasher", hasher.addr),
        ("webui", webui.addr),
    ] {
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nX-Half: ")
            .await
            .unwrap();
        let start = tokio::time::Instant::now();
        let mut answer = Vec::new();
        let closed =
            tokio::time::timeout(HTTP1_HEADER_READ_TIMEOUT * 2, slow.read_to_end(&mut answer))
                .await;
        let elapsed = start.elapsed();
        assert!(closed.is_ok(), "{name}: still open after {elapsed:?}");
        assert!(
            elapsed >= HTTP1_HEADER_READ_TIMEOUT
                && elapsed <= HTTP1_HEADER_READ_TIMEOUT + Duration::from_secs(1),
            "{name}: closed after {elapsed:?}"
        );
        let response = raw_http(addr, &get_request("GET", "/")).await.unwrap();
        assert_eq!(response.status, 200, "{name}");
    }
    stop_mesh(rng, hasher, webui).await;
}

/// MAX_EDGE_CONNECTIONS: `edge` forwards that many connections at once; the
/// next ones wait (in the listen backlog) and are forwarded as soon as one
/// closes, none dropped.
#[tokio::test]
async fn edge_forwards_at_most_its_connection_limit_at_once() {
    use dockercoins::limits::MAX_EDGE_CONNECTIONS;
    // Four sockets a connection (client, edge's two sides, the target), in
    // one process with the other tests: past a soft limit of 1024 open files.
    let soft_limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<u64>().ok()
        });
    if soft_limit.is_some_and(|n| n < 8 * MAX_EDGE_CONNECTIONS as u64) {
        eprintln!(
            "SKIPPED: needs `ulimit -n` of at least {}, have {soft_limit:?}",
            8 * MAX_EDGE_CONNECTIONS
        );
        return;
    }
    // The target: counts the connections it accepts, holds each until its
    // client closes, then closes too (as a server does).
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let target_task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = target.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink).await;
            });
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge_addr = listener.local_addr().unwrap();
    let route: dockercoins::edge::Route = format!("{edge_addr}=target:9").parse().unwrap();
    let resolver: dockercoins::pool::Resolver =
        Arc::new(move |_, _| Box::pin(async move { Ok(vec![target_addr]) }));
    let (stop, stopped) = oneshot::channel::<()>();
    let edge = tokio::spawn(dockercoins::edge::serve(
        vec![(listener, route)],
        resolver,
        async {
            let _ = stopped.await;
        },
    ));
    let extra = 8;
    let mut clients = Vec::new();
    for _ in 0..MAX_EDGE_CONNECTIONS + extra {
        clients.push(TcpStream::connect(edge_addr).await.unwrap());
    }
    let wait_for = |n: usize| {
        let accepted = accepted.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while accepted.load(Ordering::SeqCst) < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} of {n} connections forwarded",
                    accepted.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(MAX_EDGE_CONNECTIONS).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), MAX_EDGE_CONNECTIONS);
    // Close some forwarded connections: the waiting ones go through.
    drop(clients.drain(..extra));
    wait_for(MAX_EDGE_CONNECTIONS + extra).await;
    drop(clients);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), edge)
        .await
        .expect("edge did not stop")
        .unwrap();
    target_task.abort();
}

// ---------------------------------------------------------------------------
// webui: only its own routes, and its security headers on every answer.

/// Text that would show a file of this machine or of the source tree.
const FILE_MARKERS: [&str; 6] = [
    "[package]",
    "root:",
    "pub mod",
    "//!",
    "#!/",
    "[dependencies]",
];

/// Path traversal, written as a client may send it (raw on the wire, so
/// nothing normalises it on the way): every server answers 404 or 400, and
/// never with the content of a file.
#[tokio::test]
async fn path_traversal_never_reaches_a_file() {
    let (rng, hasher, webui) = mesh().await;
    let targets = [
        "/../Cargo.toml",
        "/..%2fCargo.toml",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/static/../../services/lib.rs",
        "/static/%2e%2e/%2e%2e/services/lib.rs",
        "/static/..%2f..%2fCargo.toml",
        "/static/%252e%252e/Cargo.toml",
        "/static/....//....//etc/passwd",
        "/static/app.js/../../../Cargo.toml",
        "/static/app.js%00.txt",
        "/static/.%2e/.%2e/Cargo.toml",
        "/static//etc/passwd",
        "/static/%c0%ae%c0%ae/Cargo.toml",
        "/static/..\\..\\Cargo.toml",
        "/services/lib.rs",
        "/Cargo.toml",
        "/api/rng/../../Cargo.toml",
        "/api/../static/../Cargo.toml",
        "//etc/passwd",
        "/./Cargo.toml",
        "/webui/index.html",
        "/services/webui/app.js",
        "/static/index.html",
    ];
    for (name, addr) in [
        ("webui", webui.addr),
        ("rng", rng.addr),
        ("hasher", hasher.addr),
    ] {
        for target in targets {
            let response = raw_http(addr, &get_request("GET", target)).await.unwrap();
            assert!(
                [400, 404].contains(&response.status),
                "{name} {target}: {:?}",
                response.head
            );
            let body = String::from_utf8_lossy(&response.body);
            for marker in FILE_MARKERS {
                assert!(
                    !body.contains(marker),
                    "{name} {target} showed a file: {body:.200}"
                );
            }
        }
    }
    stop_mesh(rng, hasher, webui).await;
}

/// Checks a Content-Security-Policy: `default-src` is `'none'` or `'self'`,
/// every source list holds only `'self'` or `'none'` (no inline code, no
/// eval, no other origin, no scheme), and nobody may frame the page.
fn check_csp(csp: &str) {
    let directives: Vec<(&str, Vec<&str>)> = csp
        .split(';')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            let mut words = d.split_whitespace();
            (words.next().unwrap(), words.collect())
        })
        .collect();
    let get = |name: &str| directives.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
    let default = get("default-src").expect("no default-src");
    assert!(
        *default == ["'none'"] || *default == ["'self'"],
        "default-src {default:?}"
    );
    for (name, sources) in &directives {
        for source in sources {
            assert!(
                ["'self'", "'none'"].contains(source),
                "{name} allows {source}: {csp}"
            );
        }
    }
    assert_eq!(
        get("frame-ancestors").map(|v| v.as_slice()),
        Some(&["'none'"][..])
    );
    assert_eq!(get("base-uri").map(|v| v.as_slice()), Some(&["'none'"][..]));
}

/// Every answer of webui (the page, its assets, the JSON, the gateway, and
/// its errors: 404, 400, 405, 413) carries the same security headers: a CSP
/// that lets the page load only its own assets, nosniff, no referrer, no
/// framing. And the page works under that CSP: no inline script, style or
/// event handler that the policy would block.
#[tokio::test]
async fn every_webui_answer_carries_the_security_headers() {
    let (rng, hasher, webui) = mesh().await;
    let mut answers = Vec::new();
    for (method, target, status) in [
        ("GET", "/", 200),
        ("GET", "/static/app.js", 200),
        ("GET", "/static/style.css", 200),
        ("GET", "/json", 200),
        ("GET", "/healthz", 200),
        ("GET", "/api/status", 200),
        ("GET", "/api/rng/8", 200),
        ("GET", "/favicon.ico", 204),
        ("GET", "/nope", 404),
        ("GET", "/api/rng/abc", 400),
        ("POST", "/json", 405),
    ] {
        let response = raw_http(webui.addr, &get_request(method, target))
            .await
            .unwrap();
        assert_eq!(
            response.status, status,
            "{method} {target}: {:?}",
            response.head
        );
        answers.push((format!("{method} {target}"), response));
    }
    let mut headers: Vec<(String, Vec<(String, String)>)> = answers
        .iter()
        .map(|(what, response)| {
            let fields = response
                .head
                .lines()
                .skip(1)
                .filter_map(|line| line.split_once(':'))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            (what.clone(), fields)
        })
        .collect();
    let (status, too_large, _) = post(webui.addr, "/api/hash", vec![0; MAX_BLOCK_BYTES + 1], false)
        .await
        .unwrap();
    assert_eq!(status, 413);
    let fields = too_large
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.push(("POST /api/hash (413)".to_owned(), fields));
    for (what, fields) in &headers {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        check_csp(get("content-security-policy").unwrap_or_else(|| panic!("{what}: no CSP")));
        assert_eq!(get("x-content-type-options"), Some("nosniff"), "{what}");
        assert_eq!(get("referrer-policy"), Some("no-referrer"), "{what}");
        assert_eq!(get("x-frame-options"), Some("DENY"), "{what}");
    }
    // The page under its own CSP: scripts and styles from files only.
    let page = String::from_utf8(answers[0].1.body.clone())
        .unwrap()
        .to_lowercase();
    for element in page.split("<script").skip(1) {
        let (tag, rest) = element.split_once('>').unwrap();
        assert!(
            tag.contains("src=\"/"),
            "a script not from a file: <script{tag}>"
        );
        assert!(
            rest.starts_with("</script>"),
            "inline code in <script{tag}>"
        );
    }
    assert!(!page.contains("<style"), "an inline stylesheet");
    assert!(!page.contains(" style="), "an inline style attribute");
    assert!(!page.contains("javascript:"), "a javascript: URL");
    for handler in [
        " onload=",
        " onclick=",
        " onerror=",
        " onmouseover=",
        " onsubmit=",
    ] {
        assert!(
            !page.contains(handler),
            "an inline event handler: {handler}"
        );
    }
    stop_mesh(rng, hasher, webui).await;
}
