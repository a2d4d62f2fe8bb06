//! The floor: what a bare tonic unary call costs on this machine, measured
//! the way the unary worker calls rng and hasher, with no work behind it.
//!
//! `dockercoins floor serve` is a tonic server with one method that returns
//! its request, on the same transport settings as rng and hasher (TCP_NODELAY,
//! stream and header limits, keepalive) and nothing else: no tracing, no
//! metrics, no health, no HTTP/1. `dockercoins floor load` is a client
//! process like the worker: the same runtime, the same channel settings,
//! units in flight over connections picked round robin per call, 32 bytes
//! each way. A hash costs the mesh two such calls (rng, then hasher), so
//! unary hashes/s can reach at most half the floor's calls/s.

use super::{BenchConfig, BenchError, failed, report::Latency, spawn};
use crate::{client::balancer, protocol::BLOCK_BYTES, server::http2_settings, telemetry::fields};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::net::TcpListener;
use tonic::{
    Request, Response, Status,
    transport::{Channel, Endpoint, Server, server::TcpIncoming},
};

/// The generated types of `proto/dockercoins/bench/v1/echo.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("dockercoins.bench.v1");
}

use pb::{Payload, echo_client::EchoClient as EchoStub, echo_server::EchoServer};

struct Echo;

#[tonic::async_trait]
impl pb::echo_server::Echo for Echo {
    async fn echo(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        Ok(Response::new(request.into_inner()))
    }
}

/// Serves the echo on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // `bench` waits for this line, as for rng's and hasher's.
    let local = listener.local_addr().map(|addr| addr.to_string());
    tracing::info!(
        { fields::LISTEN } = local.unwrap_or_default(),
        "floor: echo serving"
    );
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // The mesh's HTTP/2 settings, none of its layers.
    http2_settings(Server::builder())
        .add_service(EchoServer::new(Echo))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// What `floor load` does.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// `host:port` of `floor serve`.
    pub target: String,
    /// Calls in flight, as the worker's units.
    pub concurrency: usize,
    /// Connections, as the worker's `--grpc-channels`.
    pub channels: usize,
    pub warmup: Duration,
    pub seconds: f64,
}

/// What `floor load` prints on stdout, as JSON.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Load {
    /// Calls answered in the window.
    pub calls: u64,
    pub seconds: f64,
    /// Calls that failed in the whole run: a floor with failures is no floor.
    pub failed: u64,
}

/// An endpoint set up as the worker's balancer sets up each connection.
fn endpoint(target: &str) -> Result<Endpoint, BenchError> {
    let endpoint = Channel::from_shared(format!("http://{target}")).map_err(failed)?;
    Ok(balancer::configure(
        endpoint,
        &balancer::BalancerSettings::default(),
    ))
}

/// Calls the echo flat out, `config.concurrency` in flight, and counts the
/// answers in the window after the warm-up.
pub async fn load(config: &LoadConfig) -> Result<Load, BenchError> {
    let mut channels = Vec::new();
    for _ in 0..config.channels.max(1) {
        channels.push(endpoint(&config.target)?.connect().await.map_err(failed)?);
    }
    let channels: Arc<[Channel]> = channels.into();
    let next = Arc::new(AtomicUsize::new(0));
    let (calls, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut units = tokio::task::JoinSet::new();
    for _ in 0..config.concurrency.max(1) {
        let (channels, next) = (channels.clone(), next.clone());
        let (calls, failures) = (calls.clone(), failures.clone());
        units.spawn(async move {
            let data = Bytes::from_static(&[0x5a; BLOCK_BYTES]);
            loop {
                // Round robin per call, as the balancer's replica picks a channel.
                let i = next.fetch_add(1, Ordering::Relaxed) % channels.len();
                let mut client = EchoStub::new(channels[i].clone());
                if client.echo(Payload { data: data.clone() }).await.is_err() {
                    // A floor with a failed call is no floor: the unit stops
                    // (a call that fails at once would spin, never yielding).
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    tokio::time::sleep(config.warmup).await;
    let (before, start) = (calls.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(config.seconds)).await;
    let (after, seconds) = (calls.load(Ordering::Relaxed), start.elapsed().as_secs_f64());
    units.abort_all();
    tracing::info!(calls = after - before, "floor load: window closed");
    Ok(Load {
        calls: after - before,
        seconds,
        failed: failures.load(Ordering::Relaxed),
    })
}

/// The floor as `bench` reports it.
#[derive(Clone, Copy, Debug)]
pub struct Floor {
    pub calls_per_second: f64,
    /// Sequential calls, nothing else running: the floor of a hop's p50.
    pub light: Latency,
}

/// Runs `floor serve` and `floor load` as child processes with the unary
/// worker's settings, and probes the echo alone first.
pub async fn measure(config: &BenchConfig, concurrency: usize) -> Result<Floor, BenchError> {
    let (server, addr) = spawn(&["floor", "serve", "--listen", "127.0.0.1:0"]).await?;
    let mut client = EchoStub::new(endpoint(&addr)?.connect().await.map_err(failed)?);
    let data = Bytes::from_static(&[0x5a; BLOCK_BYTES]);
    let mut samples = Vec::with_capacity(config.probes);
    for _ in 0..config.probes {
        let start = Instant::now();
        if client.echo(Payload { data: data.clone() }).await.is_ok() {
            samples.push(start.elapsed());
        }
    }
    let load = run_load(config, concurrency, &addr).await;
    drop(server);
    let load = load?;
    if load.failed > 0 || load.calls == 0 {
        return Err(failed(format!(
            "the floor's echo failed {} calls and answered {} in the window",
            load.failed, load.calls
        )));
    }
    Ok(Floor {
        calls_per_second: load.calls as f64 / load.seconds,
        light: Latency::of(samples),
    })
}

/// `floor load` in its own process, as the worker is; its JSON read back.
async fn run_load(
    config: &BenchConfig,
    concurrency: usize,
    addr: &str,
) -> Result<Load, BenchError> {
    let exe = std::env::current_exe().map_err(failed)?;
    // Its log goes to a file, read back when it fails or hangs.
    let log_path =
        std::env::temp_dir().join(format!("dockercoins-floor-load-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).map_err(failed)?;
    let mut load = tokio::process::Command::new(exe);
    load.args(["floor", "load", "--target", addr])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--channels", &config.channels.to_string()])
        .args(["--warmup-ms", &config.warmup.as_millis().to_string()])
        .args(["--seconds", &config.seconds.to_string()])
        .env("LOG_FORMAT", "json")
        .stdin(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    // The warm-up and the window, and 20 s to connect and to exit.
    let bound = Duration::from_secs_f64(config.seconds) + config.warmup + Duration::from_secs(20);
    let finished = tokio::time::timeout(bound, load.output()).await;
    let logged = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    let last_words = logged.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
    let output = finished
        .map_err(|_| {
            failed(format!(
                "`dockercoins floor load` did not finish within {bound:?}; its last lines: {last_words}"
            ))
        })?
        .map_err(failed)?;
    if !output.status.success() {
        return Err(failed(format!(
            "`dockercoins floor load` failed: {last_words}"
        )));
    }
    serde_json::from_slice(&output.stdout).map_err(|error| {
        failed(format!(
            "`dockercoins floor load` printed no report: {error}"
        ))
    })
}
