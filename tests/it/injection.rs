//! Fault knobs, for the resilience lab: a replica told to fail a share of
//! its calls, or to be slow for a share of them, does so, counts it, and
//! says so (start-up line, `/metrics`, `Replica/Info`, webui's page); bad
//! knob values are refused at start-up with the setting named.

use crate::support::{RedisServer, hasher_client, http1, rng_client, spawn_hasher, spawn_rng};
use dockercoins::{
    hasher::HasherConfig,
    pb::{
        GenerateRequest, GenerateStreamRequest, HashRequest, InfoRequest,
        replica_client::ReplicaClient as ReplicaStub,
    },
    rng::RngConfig,
    server::faults::{FailCode, Faults},
    store::Store,
};
use serde_json::Value;
use std::{net::SocketAddr, time::Duration};
use tonic::Code;

fn faults(fail_rate: &str, extra_delay: &str) -> Faults {
    Faults {
        fail_rate: fail_rate.parse().unwrap(),
        fail_code: FailCode::Unavailable,
        extra_delay: extra_delay.parse().unwrap(),
    }
}

fn rng_with(faults: Faults) -> RngConfig {
    RngConfig {
        server: dockercoins::server::ServerSettings {
            faults,
            ..Default::default()
        },
        ..RngConfig::turbo()
    }
}

/// `/metrics`, as text.
async fn metrics(addr: SocketAddr) -> String {
    let (status, _, body) = http1(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn a_fail_rate_of_1_fails_every_call_at_once_and_counts_them() {
    let rng = spawn_rng(rng_with(faults("1", "none"))).await;
    let mut client = rng_client(&rng).await;
    for _ in 0..20 {
        let status = client
            .generate(GenerateRequest { size: 32 })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("injected"), "{status:?}");
    }
    let status = client
        .generate_stream(GenerateStreamRequest {
            size: 32,
            count: 10,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let text = metrics(rng.addr).await;
    for line in [
        r#"faults_failures_total{rpc_response_status_code="UNAVAILABLE"} 21"#,
        "faults_fail_rate 1.0",
        r#"rpc_server_call_duration_seconds_count{rpc_method="dockercoins.v1.Rng/Generate",rpc_response_status_code="UNAVAILABLE"} 20"#,
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    rng.stop().await.unwrap();
}

#[tokio::test]
async fn a_fail_rate_of_half_fails_about_half_the_calls_with_the_chosen_code() {
    let config = HasherConfig {
        server: dockercoins::server::ServerSettings {
            faults: Faults {
                fail_code: FailCode::Internal,
                ..faults("50%", "none")
            },
            ..Default::default()
        },
        ..HasherConfig::turbo()
    };
    let hasher = spawn_hasher(config).await;
    let mut client = hasher_client(&hasher).await;
    let mut failed = 0;
    for _ in 0..100 {
        match client.hash(HashRequest { data: "x".into() }).await {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::Internal, "{status:?}");
                failed += 1;
            }
        }
    }
    println!("{failed} of 100 failed");
    // Binomial(100, 0.5): outside 25..=75 about once in 10^6 runs.
    assert!((25..=75).contains(&failed), "{failed} of 100 failed");
    let text = metrics(hasher.addr).await;
    let line = format!(r#"faults_failures_total{{rpc_response_status_code="INTERNAL"}} {failed}"#);
    assert!(text.contains(&line), "{line} not in\n{text}");
    assert!(text.contains("faults_fail_rate 0.5"), "{text}");
    hasher.stop().await.unwrap();
}

#[tokio::test]
async fn an_extra_delay_for_every_call_makes_each_take_that_long() {
    let rng = spawn_rng(rng_with(faults("0", "100%=200ms"))).await;
    let hasher = spawn_hasher(HasherConfig {
        server: dockercoins::server::ServerSettings {
            faults: faults("0", "100%=200ms"),
            ..Default::default()
        },
        ..HasherConfig::turbo()
    })
    .await;
    let mut rng_calls = rng_client(&rng).await;
    let mut hasher_calls = hasher_client(&hasher).await;
    for _ in 0..3 {
        let begun = std::time::Instant::now();
        rng_calls
            .generate(GenerateRequest { size: 32 })
            .await
            .unwrap();
        assert!(begun.elapsed() >= Duration::from_millis(200), "rng");
        let begun = std::time::Instant::now();
        hasher_calls
            .hash(HashRequest { data: "x".into() })
            .await
            .unwrap();
        assert!(begun.elapsed() >= Duration::from_millis(200), "hasher");
    }
    for addr in [rng.addr, hasher.addr] {
        let text = metrics(addr).await;
        for line in [
            r#"faults_delayed_total{extra_delay_seconds="0.2"} 3"#,
            r#"faults_extra_delay_share{extra_delay_seconds="0.2"} 1.0"#,
            "faults_fail_rate 0.0",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

/// `Replica/Info` says what a replica injects (nothing, for a normal one),
/// and webui's per-hop view passes it on, per replica.
#[tokio::test]
async fn replica_info_and_the_webui_json_show_the_knobs() {
    let knobs = faults("20%", "10%=300ms,1%=2s");
    let rng = spawn_rng(rng_with(knobs)).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let info = |addr: SocketAddr| async move {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        ReplicaStub::new(channel)
            .info(InfoRequest {})
            .await
            .unwrap()
            .into_inner()
    };
    let summary = "fails 20% UNAVAILABLE; +300ms for 10%, +2s for 1%";
    assert_eq!(info(rng.addr).await.faults, summary);
    assert_eq!(info(hasher.addr).await.faults, "");

    let redis = RedisServer::start_ephemeral().await;
    let store = Store::redis(&redis.url(), Duration::from_millis(500)).unwrap();
    let webui = crate::support::spawn_webui(store, &rng.url(), &hasher.url()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let hops = loop {
        let (_, _, body) = http1(webui.addr, "GET", "/api/hops", "").await;
        let hops: Value = serde_json::from_slice(&body).unwrap();
        let seen = hops["rng"].as_array().is_some_and(|r| !r.is_empty())
            && hops["hasher"].as_array().is_some_and(|r| !r.is_empty());
        if seen {
            break hops;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replica in /api/hops within 10 s: {hops}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(hops["rng"][0]["faults"], summary, "{hops}");
    assert!(hops["hasher"][0].get("faults").is_none(), "{hops}");
    webui.stop().await.unwrap();
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

/// The knobs on the command line: a start-up line that says them, and bad
/// values refused (exit 2) naming the flag and showing an example.
#[tokio::test]
async fn the_knobs_are_flags_and_variables_said_at_start_and_checked() {
    let (mut child, _, log) = crate::support::start_binary_logged(
        &["rng", "--listen", "127.0.0.1:0", "--fail-rate", "0.25"],
        &[("RNG_EXTRA_DELAY", "10%=300ms")],
    )
    .await;
    let serving = log
        .lock()
        .unwrap()
        .iter()
        .find(|line| line.contains("rng serving"))
        .cloned()
        .unwrap();
    assert!(
        serving.contains("injected faults: fails 25% UNAVAILABLE; +300ms for 10%"),
        "{serving}"
    );
    crate::support::sigterm(&child).await;
    child.wait().await.unwrap();

    for (args, env, flag, hint) in [
        (
            &["rng", "--extra-delay", "10%"][..],
            None,
            "--extra-delay",
            "10%=300ms,1%=2s",
        ),
        (
            &["hasher"][..],
            Some(("HASHER_EXTRA_DELAY", "60%=1s,50%=2s")),
            "--extra-delay",
            "add up to 110%",
        ),
        (
            &["hasher", "--fail-rate", "1.5"][..],
            None,
            "--fail-rate",
            "like 0.2 or 20%",
        ),
        (
            &["rng"][..],
            Some(("RNG_FAIL_CODE", "aborted")),
            "--fail-code",
            "unavailable",
        ),
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dockercoins"));
        command.args(args);
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(stderr.contains(hint), "{args:?}: {stderr}");
    }
}
