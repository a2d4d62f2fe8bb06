//! The bounds on the connections a server holds (`dockercoins::server::connections`),
//! over real sockets: a server full of idle connections still serves a
//! newcomer at once, one full of busy connections refuses newcomers at once,
//! a connection that never sends a request or stays idle is closed after its
//! bound, and one with a call in flight is not.

use super::http_wire::{get_request, parse_response};
use crate::support::{
    Spawned, assert_pushed_back, hasher_client, http1, metric, rng_client, spawn_hasher, spawn_rng,
    spawn_webui_limited, watch_rng_health,
};
use bytes::Bytes;
use dockercoins::{
    client::balancer::Resolver,
    edge::{self, Route},
    hasher::HasherConfig,
    pb::{GenerateRequest, HashRequest},
    rng::RngConfig,
    server::connections::{ConnectionLimits, HANDSHAKE_TIMEOUT, IDLE_TIMEOUT},
    server::limits::HTTP1_HEADER_READ_TIMEOUT,
    store::Store,
    webui::WebuiError,
};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

/// The cap the tests set: small, so that filling it is quick.
const CAP: usize = 8;

/// How long a well-behaved client may wait for its answer.
const SERVED_WITHIN: Duration = Duration::from_secs(1);

/// The client preface of HTTP/2, which every HTTP/2 connection begins with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An empty SETTINGS frame: what a client sends after the preface.
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Whether the server closes `stream` within `bound`: reads, dropping
/// whatever the server says first (its own SETTINGS), until the end of the
/// stream or an error (a reset).
async fn closed_within(stream: &mut TcpStream, bound: Duration) -> bool {
    let mut sink = [0u8; 4096];
    tokio::time::timeout(bound, async {
        while let Ok(1..) = stream.read(&mut sink).await {}
    })
    .await
    .is_ok()
}

/// Asserts that the server closes `stream` `bound` after `start`, within a
/// second more (paused clock: the time is exact).
async fn assert_closed_after(
    stream: &mut TcpStream,
    start: tokio::time::Instant,
    bound: Duration,
    what: &str,
) {
    assert!(closed_within(stream, bound * 2).await, "{what}: still open");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= bound && elapsed <= bound + Duration::from_secs(1),
        "{what}: closed after {elapsed:?}"
    );
}

/// `count` connections to `addr` that send `opening` and then nothing.
async fn silent_connections(addr: SocketAddr, count: usize, opening: &[u8]) -> Vec<TcpStream> {
    let mut silent = Vec::new();
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(opening).await.unwrap();
        silent.push(stream);
    }
    silent
}

fn rng_limited(limits: ConnectionLimits) -> RngConfig {
    RngConfig {
        server: dockercoins::server::ServerSettings {
            connections: limits,
            ..Default::default()
        },
        ..RngConfig::turbo()
    }
}

fn hasher_limited(limits: ConnectionLimits) -> HasherConfig {
    HasherConfig {
        server: dockercoins::server::ServerSettings {
            connections: limits,
            ..Default::default()
        },
        ..HasherConfig::turbo()
    }
}

/// rng, hasher and a webui in front of them, each holding at most `limits`.
struct LimitedMesh {
    rng: Spawned,
    hasher: Spawned,
    webui: Spawned<WebuiError>,
}

impl LimitedMesh {
    async fn start(limits: ConnectionLimits) -> Self {
        let rng = spawn_rng(rng_limited(limits)).await;
        let hasher = spawn_hasher(hasher_limited(limits)).await;
        let webui = spawn_webui_limited(limits, Store::memory(), &rng.url(), &hasher.url()).await;
        Self { rng, hasher, webui }
    }

    async fn stop(self) {
        self.webui.stop().await.unwrap();
        self.rng.stop().await.unwrap();
        self.hasher.stop().await.unwrap();
    }
}

#[derive(Clone, Copy)]
enum Server {
    Rng,
    Hasher,
}

/// One well-behaved call to `server` on a fresh connection, and how long
/// it took from the connect to the answer.
async fn served_in(server: Server, spawned: &Spawned) -> Duration {
    let start = Instant::now();
    match server {
        Server::Rng => {
            let reply = rng_client(spawned)
                .await
                .generate(GenerateRequest { size: 8 })
                .await
                .unwrap();
            assert_eq!(reply.into_inner().data.len(), 8);
        }
        Server::Hasher => {
            let reply = hasher_client(spawned)
                .await
                .hash(HashRequest {
                    data: Bytes::from_static(b"dockercoins"),
                })
                .await
                .unwrap();
            assert_eq!(reply.into_inner().hex.len(), 64);
        }
    }
    start.elapsed()
}

#[tokio::test]
async fn a_server_full_of_idle_connections_closes_the_idlest_for_a_newcomer() {
    let mesh = LimitedMesh::start(ConnectionLimits::at_most(CAP)).await;
    for (name, addr, served) in [
        ("rng", mesh.rng.addr, Some((Server::Rng, &mesh.rng))),
        (
            "hasher",
            mesh.hasher.addr,
            Some((Server::Hasher, &mesh.hasher)),
        ),
        ("webui", mesh.webui.addr, None),
    ] {
        // Full: half an HTTP/2 preface on every connection, the attack that
        // nothing in hyper or tonic times out.
        let mut silent = silent_connections(addr, CAP, &PREFACE[..10]).await;
        let took = match served {
            Some((server, spawned)) => served_in(server, spawned).await,
            None => {
                let start = Instant::now();
                let (status, _, body) = http1(addr, "GET", "/healthz", "").await;
                assert_eq!((status.as_u16(), &body[..]), (200, &b"ok\n"[..]), "{name}");
                start.elapsed()
            }
        };
        assert!(took < SERVED_WITHIN, "{name}: served in {took:?}");
        assert!(
            closed_within(&mut silent[0], SERVED_WITHIN).await,
            "{name}: the idlest connection is still open"
        );
        assert!(
            !closed_within(&mut silent[CAP - 1], Duration::from_millis(200)).await,
            "{name}: the newest idle connection was closed too"
        );
        let evicted = metric(addr, "connections_closed_total{reason=\"evicted\"}").await;
        assert!(evicted >= Some(1.0), "{name}: {evicted:?} evicted");
    }
    mesh.stop().await;
}

#[tokio::test]
async fn a_server_full_of_busy_connections_refuses_newcomers_at_once_then_serves_again() {
    let rng = spawn_rng(rng_limited(ConnectionLimits::at_most(2))).await;
    // Two connections, each with a call in flight: a health Watch, as every
    // pool keeps one per replica (its first answer read: it is in flight).
    let first = watch_rng_health(rng.channel().await).await;
    let second = watch_rng_health(rng.channel().await).await;
    let mut newcomer = TcpStream::connect(rng.addr).await.unwrap();
    newcomer.write_all(PREFACE).await.unwrap();
    assert!(
        closed_within(&mut newcomer, SERVED_WITHIN).await,
        "a newcomer to a server full of busy connections was kept"
    );
    drop(first);
    served_again(|| generate_8(&rng)).await;
    drop(second);
    assert!(metric(rng.addr, "connections_closed_total{reason=\"refused\"}").await >= Some(1.0));
    rng.stop().await.unwrap();
}

/// Paused clock: the bounds pass at once and the times are exact.
#[tokio::test(start_paused = true)]
async fn a_connection_without_a_request_is_closed_after_the_handshake_bound() {
    let mesh = LimitedMesh::start(ConnectionLimits::default()).await;
    let preface_and_settings = [PREFACE, EMPTY_SETTINGS].concat();
    let half_a_head = b"GET / HTTP/1.1\r\nHost: test\r\nX-Half: ".as_slice();
    let grpc_openings: [(&str, &[u8]); 4] = [
        ("nothing", b""),
        ("half the HTTP/2 preface", &PREFACE[..10]),
        ("the preface and SETTINGS", &preface_and_settings),
        ("half an HTTP/1.1 head", half_a_head),
    ];
    let http1_openings = [
        ("nothing", b"".as_slice()),
        ("half an HTTP/1.1 head", half_a_head),
    ];
    for (name, addr, openings) in [
        ("rng", mesh.rng.addr, &grpc_openings[..]),
        ("hasher", mesh.hasher.addr, &grpc_openings[..]),
        ("webui", mesh.webui.addr, &http1_openings[..]),
    ] {
        for (opening, bytes) in openings {
            let start = tokio::time::Instant::now();
            let mut stream = silent_connections(addr, 1, bytes).await.remove(0);
            let what = format!("{name}, {opening}");
            assert_closed_after(&mut stream, start, HANDSHAKE_TIMEOUT, &what).await;
        }
        let handshake = metric(addr, "connections_closed_total{reason=\"handshake\"}").await;
        assert_eq!(handshake, Some(openings.len() as f64), "{name}");
    }
    mesh.stop().await;
}

/// An HTTP/2 connection that made a call and then stays quiet (it answers
/// the server's keepalive pings, as every client does) is closed after the
/// idle bound. Paused clock.
#[tokio::test(start_paused = true)]
async fn an_idle_http2_connection_is_closed_after_the_idle_bound() {
    let mesh = LimitedMesh::start(ConnectionLimits::default()).await;
    for (name, spawned) in [("rng", &mesh.rng), ("hasher", &mesh.hasher)] {
        let (mut send, connection) = http2_connection(spawned.addr).await;
        let check = axum::http::Request::post(format!(
            "http://{}/grpc.health.v1.Health/Check",
            spawned.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
        let response = send.send_request(check).await.unwrap();
        let trailers = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .trailers()
            .cloned();
        assert_eq!(trailers.unwrap()["grpc-status"], "0", "{name}");
        let idle_from = tokio::time::Instant::now();
        tokio::time::timeout(IDLE_TIMEOUT * 2, connection)
            .await
            .unwrap_or_else(|_| panic!("{name}: an idle connection still open"))
            .unwrap()
            .ok();
        let elapsed = idle_from.elapsed();
        assert!(
            elapsed >= IDLE_TIMEOUT && elapsed <= IDLE_TIMEOUT + Duration::from_secs(1),
            "{name}: closed after {elapsed:?}"
        );
        let idle = metric(spawned.addr, "connections_closed_total{reason=\"idle\"}").await;
        assert_eq!(idle, Some(1.0), "{name}");
    }
    mesh.stop().await;
}

/// A connection with a stream open (the pool's health Watch) is busy
/// however quiet it is: not closed for idleness. Paused clock.
#[tokio::test(start_paused = true)]
async fn a_connection_with_a_call_in_flight_is_never_idle() {
    let rng = spawn_rng(RngConfig::turbo()).await;
    let channel = rng.channel().await;
    let mut watch = watch_rng_health(channel.clone()).await;
    tokio::time::sleep(IDLE_TIMEOUT * 3).await;
    // Still the same stream, and the same connection serves calls.
    rng_client_on(channel).await;
    let closed = tokio::time::timeout(Duration::from_millis(10), watch.message()).await;
    assert!(closed.is_err(), "the Watch ended: {closed:?}");
    assert_eq!(
        metric(rng.addr, "connections_closed_total{reason=\"idle\"}").await,
        None
    );
    rng.stop().await.unwrap();
}

async fn rng_client_on(channel: tonic::transport::Channel) {
    dockercoins::pb::rng_client::RngClient::new(channel)
        .generate(GenerateRequest { size: 8 })
        .await
        .unwrap();
}

/// HTTP1_HEADER_READ_TIMEOUT: a keep-alive client that sends half of its
/// next request is disconnected once hyper's timeout has passed (it fires
/// before the idle bound), by every server with an HTTP/1.1 port, and each
/// serves on. Paused clock.
#[tokio::test(start_paused = true)]
async fn half_a_second_request_is_disconnected_after_the_header_read_timeout() {
    let mesh = LimitedMesh::start(ConnectionLimits::default()).await;
    for (name, addr) in [
        ("rng", mesh.rng.addr),
        ("hasher", mesh.hasher.addr),
        ("webui", mesh.webui.addr),
    ] {
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /no/where HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"not found\n") {
            assert_ne!(slow.read_buf(&mut answer).await.unwrap(), 0, "{name}");
        }
        assert_eq!(parse_response(&answer).unwrap().status, 404, "{name}");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nX-Half: ")
            .await
            .unwrap();
        let start = tokio::time::Instant::now();
        assert_closed_after(&mut slow, start, HTTP1_HEADER_READ_TIMEOUT, name).await;
        let response = super::http_wire::raw_http(addr, &get_request("GET", "/no/where"))
            .await
            .unwrap();
        assert_eq!(response.status, 404, "{name}");
    }
    mesh.stop().await;
}

/// `edge`, full of connections that move no bytes, closes the idlest for a
/// newcomer, whose bytes go through at once.
#[tokio::test]
async fn edge_full_of_idle_connections_closes_the_idlest_for_a_newcomer() {
    // The target: echoes what each connection sends.
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        while let Ok((stream, _)) = target.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge_addr = listener.local_addr().unwrap();
    let route: Route = format!("{edge_addr}=target:9").parse().unwrap();
    let resolver: Resolver = Arc::new(move |_, _| Box::pin(async move { Ok(vec![target_addr]) }));
    let (stop, stopped) = oneshot::channel::<()>();
    let edge = tokio::spawn(edge::serve(
        vec![(listener, route)],
        resolver,
        ConnectionLimits::at_most(CAP),
        async {
            let _ = stopped.await;
        },
    ));
    let mut silent = silent_connections(edge_addr, CAP, b"").await;
    let start = Instant::now();
    let mut newcomer = TcpStream::connect(edge_addr).await.unwrap();
    newcomer.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    newcomer.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    assert!(
        start.elapsed() < SERVED_WITHIN,
        "served in {:?}",
        start.elapsed()
    );
    assert!(
        closed_within(&mut silent[0], SERVED_WITHIN).await,
        "the idlest connection is still open"
    );
    assert!(
        !closed_within(&mut silent[CAP - 1], Duration::from_millis(200)).await,
        "the newest idle connection was closed too"
    );
    drop((silent, newcomer));
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), edge)
        .await
        .expect("edge did not stop")
        .unwrap();
    echo.abort();
}

/// Past the calls a server holds in flight, a call is refused on its
/// headers (RESOURCE_EXHAUSTED with a pushback; HTTP 503 with
/// `Retry-After`), and served again once a call ends.
#[tokio::test]
async fn a_server_holding_its_most_calls_refuses_the_next_at_once() {
    let limits = ConnectionLimits {
        calls: 2,
        ..ConnectionLimits::default()
    };
    let rng = spawn_rng(rng_limited(limits)).await;
    let first = watch_rng_health(rng.channel().await).await;
    let second = watch_rng_health(rng.channel().await).await;
    let refused = generate_8(&rng).await.unwrap_err();
    assert_pushed_back(&refused, "1000");
    let (status, headers, _) = http1(rng.addr, "GET", "/8", "").await;
    assert_eq!(status.as_u16(), 503);
    assert_eq!(headers["retry-after"], "1");
    drop(first);
    served_again(|| generate_8(&rng)).await;
    drop(second);
    rng.stop().await.unwrap();
}

/// Past the request data a server holds, a call is refused when its
/// message's prefix arrives, before the message is buffered: a client
/// sending large messages slowly cannot make a server hold them all.
#[tokio::test]
async fn a_server_holding_its_most_request_data_refuses_more_before_buffering_it() {
    let limits = ConnectionLimits {
        received_bytes: 64 * 1024,
        ..ConnectionLimits::default()
    };
    let hasher = spawn_hasher(hasher_limited(limits)).await;
    // A Hash call that declares a 48 KiB message and sends 1 KiB of it.
    let (mut send, _connection) = http2_connection(hasher.addr).await;
    let (slow, body) = tokio::sync::mpsc::channel::<Bytes>(1);
    let body = http_body_util::StreamBody::new(Box::pin(futures_util::stream::unfold(
        body,
        |mut body| async move {
            let data = body.recv().await?;
            Some((
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(data)),
                body,
            ))
        },
    )));
    let request =
        axum::http::Request::post(format!("http://{}/dockercoins.v1.Hasher/Hash", hasher.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .unwrap();
    let slow_call = tokio::spawn(async move { send.send_request(request).await });
    let mut opening = vec![0];
    opening.extend((48 * 1024u32).to_be_bytes());
    opening.extend([7u8; 1024]);
    slow.send(Bytes::from(opening)).await.unwrap();
    let hash_32_kib = || async {
        hasher_client(&hasher)
            .await
            .hash(HashRequest {
                data: Bytes::from(vec![7u8; 32 * 1024]),
            })
            .await
    };
    // The slow call's prefix reaches the server in a moment: until then the
    // other call still fits. For 5 s at most.
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        match hash_32_kib().await {
            Err(status) => break status,
            Ok(_) => assert!(Instant::now() < deadline, "never refused"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_pushed_back(&refused, "1000");
    let (status, headers, _) = http1(hasher.addr, "POST", "/", vec![7u8; 32 * 1024]).await;
    assert_eq!(status.as_u16(), 503);
    assert_eq!(headers["retry-after"], "1");
    // The slow call gives up: its data is given back.
    drop(slow);
    let _ = slow_call.await;
    served_again(|| async { hash_32_kib().await.map(drop) }).await;
    let refused = metric(hasher.addr, "calls_refused_total").await;
    assert!(refused >= Some(2.0), "{refused:?}");
    hasher.stop().await.unwrap();
}

/// `Rng/Generate` of 8 bytes on a new connection.
async fn generate_8(rng: &Spawned) -> Result<(), tonic::Status> {
    rng_client(rng)
        .await
        .generate(GenerateRequest { size: 8 })
        .await
        .map(drop)
}

/// A bare HTTP/2 connection to `addr`, run in a task that ends when the
/// connection closes.
async fn http2_connection<B>(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    (send, tokio::spawn(connection))
}

/// Calls `call` until it succeeds: the server learns that a call ended
/// when its reset stream arrives. For 5 s at most.
async fn served_again<F, T>(call: impl Fn() -> F)
where
    F: std::future::Future<Output = Result<(), T>>,
    T: std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match call().await {
            Ok(()) => return,
            Err(error) => assert!(
                Instant::now() < deadline,
                "not served 5 s after a call ended: {error:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
