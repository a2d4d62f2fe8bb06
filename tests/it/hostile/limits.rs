//! Limits on everything a client can make a server hold in memory. Those
//! already tested elsewhere are not tested again:
//! - rng `size` over 1 MiB (gRPC): `rng::bad_sizes_and_counts_are_invalid_argument`,
//!   `rng::tests::sizes_outside_the_limits_are_refused`; `GET /<n>`:
//!   `rng::legacy_routes_answer_like_the_original`.
//! - MAX_STREAM_BLOCKS, MAX_STREAM_BYTES: `rng::tests::stream_limits_are_enforced`,
//!   `rng::bad_sizes_and_counts_are_invalid_argument`.
//! - MAX_BATCH_BLOCKS, block size, whole blocks: `hasher::tests::bad_batches_are_refused`,
//!   `hasher::bad_batches_end_the_stream_with_invalid_argument`.
//! - hasher's message limit, far over: `hasher::a_message_over_the_limit_is_a_grpc_error_not_a_crash`.
//! - hasher `POST /` over 1 MiB with a Content-Length: `hasher::legacy_routes_answer_like_the_original`.
//! - MAX_PENDING_COINS: `worker::tally::tests::coins_in_a_failing_update_still_pause_mining`.
//! - bytes that are neither HTTP/1.1 nor HTTP/2: `server::garbage_on_the_port_drops_the_connection_only`.

use super::{
    cases::CASE_TIMEOUT,
    grpc_wire::{HASHER_METHODS, RNG_METHODS, message, raw_grpc, varint},
    http_wire::{get_request, parse_response, post, raw_http},
    mesh::{mesh, stop_mesh},
};
use crate::support::{hasher_client, http1, rng_client, sha256_hex, spawn_hasher, spawn_rng};
use dockercoins::{
    hasher::HasherConfig,
    pb::{GenerateRequest, HashBatch, HashRequest},
    rng::RngConfig,
    server::limits::{MAX_BLOCK_BYTES, MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_BYTES},
};
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

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
    use dockercoins::pb::hasher_client::HasherClient as HasherStub;
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
        let mut client = HasherStub::new(channel.clone());
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
