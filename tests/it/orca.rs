//! ORCA load reports (gRFC A51) and `weighted_round_robin` (gRFC A58),
//! checked against grpc-go both ways with `orca-interop`
//! (tests/orca-interop, built by tests/build-stack-tools.sh):
//! - grpc-go's own weighted_round_robin over three of our rng replicas of
//!   3, 1 and 1 lanes weighs them from our reports, and its protobuf
//!   decodes our trailer into the fields we meant;
//! - our balancer over three grpc-go servers reporting through grpc-go's
//!   `orca` package weighs them as grpc-go's balancer does.

use crate::support::{Spawned, built, spawn_rng};
use dockercoins::{
    client::BalancedRng,
    client::balancer::{BalancerSettings, Policy, Resolver, WeightedSettings},
    rng::RngConfig,
};
use serde_json::Value;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

const TOOL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/stack-tools/orca-interop"
);

/// The grpc-go program, when built (a failure under CI when not).
fn interop() -> Option<PathBuf> {
    let path = Path::new(TOOL);
    built(path, "tests/build-stack-tools.sh").then(|| path.to_owned())
}

/// grpc-go's weighted_round_robin over `targets` (no blackout, weights
/// updated every 100 ms), its JSON: calls and shares per target, the last
/// report each sent, decoded by grpc-go's protobuf.
async fn grpc_go_client(tool: &Path, targets: &[SocketAddr], concurrency: usize) -> Value {
    let targets: Vec<String> = targets.iter().map(ToString::to_string).collect();
    let output = Command::new(tool)
        .args(["client", "--targets", &targets.join(",")])
        .args([
            "--seconds",
            "4",
            "--warmup",
            "2",
            "--blackout",
            "0s",
            "--update",
            "0.1s",
        ])
        .args(["--concurrency", &concurrency.to_string()])
        .kill_on_drop(true)
        .output();
    // 6 s of calls; 30 s is for a machine busy with other tests.
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("orca-interop client did not finish within 30 s")
        .unwrap();
    assert!(
        output.status.success(),
        "orca-interop client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn share(json: &Value, target: SocketAddr) -> f64 {
    json["share"][target.to_string()].as_f64().unwrap_or(0.0)
}

#[tokio::test]
async fn grpc_go_weighs_our_rng_replicas_by_their_load_reports() {
    let Some(tool) = interop() else { return };
    let lanes = |lanes| RngConfig {
        lanes: Some(lanes),
        delay: Duration::from_millis(20),
        ..RngConfig::classroom()
    };
    let replicas: Vec<Spawned> = vec![
        spawn_rng(lanes(3)).await,
        spawn_rng(lanes(1)).await,
        spawn_rng(lanes(1)).await,
    ];
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let json = grpc_go_client(&tool, &addrs, 4).await;
    assert_eq!(json["errors"], 0, "{json}");
    assert_eq!(json["bad_reports"], 0, "{json}");
    let (three, one_a, one_b) = (
        share(&json, addrs[0]),
        share(&json, addrs[1]),
        share(&json, addrs[2]),
    );
    eprintln!(
        "grpc-go's shares of our rng replicas of 3, 1 and 1 lanes: {three:.3}, {one_a:.3}, {one_b:.3}"
    );
    assert!(
        three >= 2.0 * one_a && three >= 2.0 * one_b,
        "grpc-go's shares: 3 lanes {three:.3}, 1 lane {one_a:.3} and {one_b:.3}: {json}"
    );
    // Each report, as grpc-go's protobuf decodes it: what rng meant.
    for (addr, lanes) in addrs.iter().zip([3.0, 1.0, 1.0]) {
        let report = &json["reports"][addr.to_string()];
        assert!(
            report["application_utilization"].as_f64().unwrap() > 0.0,
            "{report}"
        );
        assert!(report["rps_fractional"].as_f64().unwrap() > 0.0, "{report}");
        assert!(
            report["cpu_utilization"].as_f64().unwrap() >= 0.0,
            "{report}"
        );
        assert_eq!(
            report["named_metrics"]["rng.lanes"].as_f64(),
            Some(lanes),
            "{report}"
        );
        assert!(
            report["named_metrics"]["rng.lane.queue"].as_f64().is_some(),
            "{report}"
        );
    }
    for replica in replicas {
        replica.stop().await.unwrap();
    }
}

/// A grpc-go server answering `Rng/Generate` with a fixed ORCA report
/// (from grpc-go's `orca` package), killed when dropped.
struct GoServer {
    _child: Child,
    addr: SocketAddr,
}

impl GoServer {
    async fn start(tool: &Path, report: &[&str]) -> Self {
        let mut child = Command::new(tool)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(report)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("orca-interop serve did not say where it listens within 10 s")
            .unwrap()
            .unwrap_or_default();
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("orca-interop serve said {line:?}"));
        Self {
            _child: child,
            addr,
        }
    }
}

#[tokio::test]
async fn our_weighted_round_robin_weighs_grpc_go_reports_as_grpc_go_does() {
    let Some(tool) = interop() else { return };
    // A58 weights 600, 200 and 100 (100 / (0.5 + 50/100)).
    let servers = [
        GoServer::start(&tool, &["--qps", "300", "--utilization", "0.5"]).await,
        GoServer::start(&tool, &["--qps", "100", "--utilization", "0.5"]).await,
        GoServer::start(
            &tool,
            &["--qps", "100", "--utilization", "0.5", "--eps", "50"],
        )
        .await,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let theirs = grpc_go_client(&tool, &addrs, 4).await;

    let answer = addrs.clone();
    let resolver: Resolver = Arc::new(move |_host, _port| {
        let answer = answer.clone();
        Box::pin(async move { Ok(answer) })
    });
    let settings = BalancerSettings {
        policy: Policy::WeightedRoundRobin,
        weighted: WeightedSettings {
            blackout: Duration::ZERO,
            update_period: Duration::from_millis(100),
            ..WeightedSettings::default()
        },
        ..BalancerSettings::default()
    };
    let rng = BalancedRng::with_resolver("http://rng:8001", &settings, resolver).unwrap();
    // Calls until every replica has reported and an update has passed,
    // then 3,000 counted.
    let warm = tokio::time::Instant::now() + Duration::from_millis(300);
    while tokio::time::Instant::now() < warm {
        rng.generate(8).await.unwrap();
    }
    let before = rng.balancer().served();
    for _ in 0..3000 {
        rng.generate(8).await.unwrap();
    }
    let after = rng.balancer().served();
    let counted = |addr: SocketAddr| {
        let key = addr.to_string();
        after.get(&key).copied().unwrap_or(0) - before.get(&key).copied().unwrap_or(0)
    };
    let total: u64 = addrs.iter().map(|&a| counted(a)).sum();
    for (addr, want) in addrs
        .iter()
        .zip([600.0 / 900.0, 200.0 / 900.0, 100.0 / 900.0])
    {
        let ours = counted(*addr) as f64 / total as f64;
        let go = share(&theirs, *addr);
        eprintln!("{addr}: our share {ours:.3}, grpc-go's {go:.3}, A58's {want:.3}");
        assert!(
            (ours - go).abs() <= 0.1 * go,
            "{addr}: our share {ours:.3}, grpc-go's {go:.3} (A58 says {want:.3}): {theirs}"
        );
    }
    // The balancer says the same shares.
    for state in rng.balancer().replica_states() {
        let i = addrs
            .iter()
            .position(|a| a.to_string() == state.address)
            .unwrap();
        let go = share(&theirs, addrs[i]);
        let share = state.share.expect("a share under weighted_round_robin");
        assert!(
            (share - go).abs() <= 0.1 * go,
            "{}: {share:.3} against grpc-go's {go:.3}",
            state.address
        );
    }
}
