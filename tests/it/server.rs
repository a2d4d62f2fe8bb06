//! What every server shares: health, reflection, garbage on the port, and
//! graceful shutdown.

use crate::support::{Spawned, rng_client, spawn_hasher, spawn_rng, watch_rng_health};
use dockercoins::{
    hasher::HasherConfig,
    pb::{GenerateRequest, GenerateStreamRequest},
    rng::RngConfig,
    server::DRAIN_NOTICE,
    shutdown::DRAIN_TIMEOUT,
};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn health_of(server: &Spawned, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(server.channel().await);
    let reply = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(reply.into_inner().status())
}

#[tokio::test]
async fn health_reports_each_service_by_name() {
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    assert_eq!(health_of(&rng, "").await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        health_of(&rng, "dockercoins.v1.Rng").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        health_of(&hasher, "dockercoins.v1.Hasher").await.unwrap(),
        ServingStatus::Serving
    );
    let unknown = health_of(&rng, "dockercoins.v1.Hasher").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

/// Lists services through reflection v1 and v1alpha (older grpcurl/grpcui).
#[tokio::test]
async fn reflection_lists_the_servers_own_services_in_both_versions() {
    let rng = spawn_rng(RngConfig::turbo()).await;
    let expected = vec![
        "dockercoins.v1.Replica",
        "dockercoins.v1.Rng",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];

    use tonic_reflection::pb::v1;
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(rng.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("not a list: {reply:?}");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, expected);

    use tonic_reflection::pb::v1alpha;
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(rng.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("not a list: {reply:?}");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, expected);
    rng.stop().await.unwrap();
}

#[tokio::test]
async fn an_unknown_grpc_method_is_unimplemented() {
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    // An rng client against hasher: the path /dockercoins.v1.Rng/... is unknown there.
    let mut client = dockercoins::pb::rng_client::RngClient::new(hasher.channel().await);
    let status = client
        .generate(GenerateRequest { size: 32 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    hasher.stop().await.unwrap();
}

/// Garbage bytes, as HTTP/1 and after an HTTP/2 preface: the server drops
/// that connection and keeps serving everyone else.
#[tokio::test]
async fn garbage_on_the_port_drops_the_connection_only() {
    let rng = spawn_rng(RngConfig::turbo()).await;
    let garbage: [&[u8]; 3] = [
        b"\x00\x01\x02\xff\xfe garbage \r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ],
    ];
    for bytes in garbage {
        let mut stream = tokio::net::TcpStream::connect(rng.addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink))
            .await
            .expect("the server kept a garbage connection open");
        // Closed: cleanly (EOF) or by reset, either way not kept.
        if let Ok(n) = read {
            assert!(n < 4096);
        }
    }
    let mut client = rng_client(&rng).await;
    client.generate(GenerateRequest { size: 32 }).await.unwrap();
    rng.stop().await.unwrap();
}

/// Shutdown: health turns NOT_SERVING at once, a call in flight finishes,
/// and the server returns within the drain bound.
#[tokio::test]
async fn shutdown_reports_not_serving_and_drains_calls_in_flight() {
    let config = RngConfig {
        delay: Duration::from_millis(200),
        lanes: Some(1),
        ..RngConfig::classroom()
    };
    let mut rng = spawn_rng(config).await;
    let mut watch = watch_rng_health(rng.channel().await).await;
    // A stream of two messages (one 64 KiB block each, 200 ms each): once the
    // first has arrived, the call is surely in flight.
    let mut stream = rng_client(&rng)
        .await
        .generate_stream(GenerateStreamRequest {
            size: 64 * 1024,
            count: 2,
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();

    let begun = std::time::Instant::now();
    rng.begin_stop();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    // The call in flight finishes normally.
    let last = stream.message().await.unwrap().unwrap();
    assert_eq!(last.blocks.len(), 64 * 1024);
    assert!(stream.message().await.unwrap().is_none());
    rng.join(Duration::from_secs(5)).await.unwrap();
    assert!(begun.elapsed() < DRAIN_TIMEOUT + Duration::from_millis(250));
}

/// A call longer than the drain bound does not hold shutdown up.
#[tokio::test]
async fn shutdown_is_bounded_when_calls_run_long() {
    let config = RngConfig {
        delay: Duration::from_millis(300),
        lanes: Some(1),
        ..RngConfig::classroom()
    };
    let mut rng = spawn_rng(config).await;
    let mut stream = rng_client(&rng)
        .await
        .generate_stream(GenerateStreamRequest {
            size: 64 * 1024,
            count: 20,
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    let begun = std::time::Instant::now();
    rng.begin_stop();
    rng.join(Duration::from_secs(5)).await.unwrap();
    let took = begun.elapsed();
    assert!(
        took >= DRAIN_TIMEOUT,
        "returned before the drain bound: {took:?}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    drop(stream);
}

/// Lame duck: once health says NOT_SERVING the server still serves, new
/// calls and new connections alike, for [`DRAIN_NOTICE`]; then it stops,
/// the whole stop within the drain bound.
#[tokio::test]
async fn a_stopping_server_serves_on_for_a_short_notice_after_not_serving() {
    let mut rng = spawn_rng(RngConfig::turbo()).await;
    let channel = rng.channel().await;
    let mut watch = watch_rng_health(channel.clone()).await;
    let begun = std::time::Instant::now();
    rng.begin_stop();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    // Within the notice: an existing connection and a new one are served.
    let mut existing = dockercoins::pb::rng_client::RngClient::new(channel);
    existing
        .generate(GenerateRequest { size: 32 })
        .await
        .unwrap();
    rng_client(&rng)
        .await
        .generate(GenerateRequest { size: 32 })
        .await
        .unwrap();
    let served_within = begun.elapsed();
    rng.join(Duration::from_secs(5)).await.unwrap();
    let stopped = begun.elapsed();
    println!("served {served_within:?} after the stop began; stopped after {stopped:?}");
    assert!(served_within < DRAIN_NOTICE, "{served_within:?}");
    assert!(stopped >= DRAIN_NOTICE, "stopped at once: {stopped:?}");
    assert!(
        stopped < DRAIN_TIMEOUT + Duration::from_millis(250),
        "{stopped:?}"
    );
}
