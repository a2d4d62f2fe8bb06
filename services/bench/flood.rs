//! `dockercoins flood`: what a flood does to each server, measured.
//!
//! Each target runs as a child process of this binary with its classroom
//! settings and default bounds (for webui and edge, behind their own rng
//! and hasher children), and is flooded the way an attacker or an
//! over-eager load test would:
//! 1. idle connections (15,000 by default), opened one after another and
//!    held: half send the HTTP/2 preface alone, half half an HTTP/1.1
//!    request;
//! 2. then requests held in flight at once (8,000 by default): gRPC calls
//!    multiplexed on a few connections for rng (`Generate` of 1 MiB: the
//!    lane) and hasher (`Hash` of 16 KiB: the work budget), one HTTP/1.1
//!    request a connection for webui (`GET /api/rng/1048576`, through the
//!    gateway to rng's lane) and edge (`GET /1048576` forwarded to rng).
//!
//! Throughout, a well-behaved client makes a new connection and one request
//! every 100 ms (a gRPC health check; webui: `GET /healthz`). At the end the
//! target gets SIGTERM. The report gives the target's memory (idle, and
//! peak: VmHWM), what the flood met, the probe's worst answer time, and
//! the exit status; `flood` exits 1 when a server missed a goal: peak
//! memory under 128 MB (the compose file's limit), every probe served
//! within a second, exit 0 on SIGTERM.

use super::{
    BenchError,
    child::{Process, sigterm},
    failed, spawn,
};
use crate::pb::{
    GenerateRequest, HashRequest, hasher_client::HasherClient as HasherStub,
    rng_client::RngClient as RngStub,
};
use crate::telemetry::procfs::status_kb;
use bytes::Bytes;
use serde::Serialize;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    task::JoinSet,
};
use tonic::transport::Channel;

/// Idle connections a flood opens, by default: the measure, which
/// took rng to 263 MB before connections were bounded.
pub const DEFAULT_IDLE: usize = 15_000;

/// Requests a flood holds in flight at once, by default.
pub const DEFAULT_QUEUED: usize = 8_000;

/// The compose file's memory limit for rng, hasher and webui.
pub const MEMORY_GOAL_MB: f64 = 128.0;

/// The longest a well-behaved request may wait for its answer.
pub const PROBE_GOAL: Duration = Duration::from_secs(1);

/// How often the well-behaved client asks.
const PROBE_EVERY: Duration = Duration::from_millis(100);

/// The gRPC calls multiplexed on one connection in the queued phase (the
/// servers allow 1,024 streams a connection).
const CALLS_PER_CONNECTION: usize = 1000;

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Half an HTTP/1.1 request head.
const HALF_A_HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: dockercoins\r\nX-Half: ";

/// A server to flood.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Rng,
    Hasher,
    Webui,
    Edge,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct FloodConfig {
    pub targets: Vec<Target>,
    pub idle: usize,
    pub queued: usize,
}

/// What one flood did to one server.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetReport {
    pub target: String,
    /// The server's resident memory before the flood, and its peak, in kB.
    pub idle_rss_kb: u64,
    pub peak_rss_kb: u64,
    /// Idle connections opened, and those the server closed before the
    /// phase ended.
    pub idle_opened: usize,
    pub idle_closed_by_server: usize,
    /// Requests of the queued phase: answered with their data, refused for
    /// overload (RESOURCE_EXHAUSTED, HTTP 503), their connection closed
    /// unanswered (refused at the door), anything else.
    pub queued_ok: usize,
    pub queued_refused: usize,
    pub queued_closed: usize,
    pub queued_other: usize,
    /// Seconds the queued phase took, until every request had its answer.
    pub queued_seconds: f64,
    /// Well-behaved requests, those not served within [`PROBE_GOAL`], and
    /// the slowest answer, in milliseconds.
    pub probes: usize,
    pub probes_failed: usize,
    pub probe_max_ms: f64,
    /// Why probes failed: each distinct reason once, the first few.
    pub probe_failures: Vec<String>,
    /// The exit code after SIGTERM (`None`: killed, or still running after
    /// 10 s), and how long the stop took.
    pub exit_code: Option<i32>,
    pub stop_ms: f64,
}

impl TargetReport {
    /// Whether the server met every goal.
    pub fn passed(&self) -> bool {
        (self.peak_rss_kb as f64 / 1024.0) < MEMORY_GOAL_MB
            && self.probes > 0
            && self.probes_failed == 0
            && self.exit_code == Some(0)
    }
}

/// Floods each target in turn.
pub async fn run(config: &FloodConfig) -> Result<Vec<TargetReport>, BenchError> {
    check_open_files(config)?;
    let mut reports = Vec::new();
    for target in &config.targets {
        reports.push(flood(*target, config).await?);
    }
    Ok(reports)
}

/// The flood holds `idle` sockets at once, then up to `queued`: refuse to
/// start where the open-file limit would cut it short.
fn check_open_files(config: &FloodConfig) -> Result<(), BenchError> {
    let needed = config.idle.max(config.queued) as u64 + 1024;
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match limit {
        Some(limit) if limit < needed => Err(failed(format!(
            "flood needs {needed} open files, `ulimit -n` allows {limit}: raise it or lower \
             --idle / --queued"
        ))),
        _ => Ok(()),
    }
}

/// The target and the children it stands on, killed when dropped.
struct Running {
    target: Process,
    addr: SocketAddr,
    _backends: Vec<Process>,
}

async fn start(target: Target) -> Result<Running, BenchError> {
    let listen = ["--listen", "127.0.0.1:0"];
    let (service, addr, backends) = match target {
        Target::Rng => {
            let (rng, addr) = spawn(&[&["rng"][..], &listen].concat()).await?;
            (rng, addr, Vec::new())
        }
        Target::Hasher => {
            let (hasher, addr) = spawn(&[&["hasher"][..], &listen].concat()).await?;
            (hasher, addr, Vec::new())
        }
        Target::Webui => {
            let (rng, rng_addr) = spawn(&[&["rng"][..], &listen].concat()).await?;
            let (hasher, hasher_addr) = spawn(&[&["hasher"][..], &listen].concat()).await?;
            let (rng_url, hasher_url) = (
                format!("http://{rng_addr}"),
                format!("http://{hasher_addr}"),
            );
            let (webui, addr) = spawn(&[
                "webui",
                "--listen",
                "127.0.0.1:0",
                "--rng",
                &rng_url,
                "--hasher",
                &hasher_url,
                // No Redis: the flood does not ask for the score.
                "--redis",
                "redis://127.0.0.1:1",
            ])
            .await?;
            (webui, addr, vec![rng, hasher])
        }
        Target::Edge => {
            let (rng, rng_addr) = spawn(&[&["rng"][..], &listen].concat()).await?;
            let route = format!("127.0.0.1:0={rng_addr}");
            let (edge, addr) = spawn(&["edge", "--route", &route]).await?;
            (edge, addr, vec![rng])
        }
    };
    let addr = addr.parse().map_err(failed)?;
    Ok(Running {
        target: service,
        addr,
        _backends: backends,
    })
}

async fn flood(target: Target, config: &FloodConfig) -> Result<TargetReport, BenchError> {
    let mut running = start(target).await?;
    let pid = running.target.child.id().ok_or_else(|| failed("no pid"))?;
    let mut report = TargetReport {
        target: format!("{target:?}").to_lowercase(),
        idle_rss_kb: status_kb(pid, "VmRSS:"),
        ..TargetReport::default()
    };
    let (phase, probing) = watch::channel(Phase::Idle);
    let prober = tokio::spawn(probe(target, running.addr, probing));
    (report.idle_opened, report.idle_closed_by_server) =
        idle_connections(running.addr, config.idle).await;
    let _ = phase.send(Phase::Requests);
    let started = Instant::now();
    let answers = match target {
        Target::Rng | Target::Hasher => grpc_calls(target, running.addr, config.queued).await?,
        Target::Webui => http1_requests(running.addr, "/api/rng/1048576", config.queued).await,
        Target::Edge => http1_requests(running.addr, "/1048576", config.queued).await,
    };
    report.queued_seconds = started.elapsed().as_secs_f64();
    for answer in answers {
        match answer {
            Answer::Ok => report.queued_ok += 1,
            Answer::Refused => report.queued_refused += 1,
            Answer::Closed => report.queued_closed += 1,
            Answer::Other => report.queued_other += 1,
        }
    }
    let _ = phase.send(Phase::Done);
    let probed = prober.await.map_err(failed)?;
    report.probes = probed.len();
    for outcome in &probed {
        let failure = match outcome {
            (_, Ok(took)) if *took < PROBE_GOAL => continue,
            (phase, Ok(took)) => format!("{phase:?}: served in {} ms", took.as_millis()),
            (phase, Err(why)) => format!("{phase:?}: {why}"),
        };
        report.probes_failed += 1;
        if report.probe_failures.len() < 5 && !report.probe_failures.contains(&failure) {
            report.probe_failures.push(failure);
        }
    }
    report.probe_max_ms = probed
        .iter()
        .filter_map(|(_, took)| took.as_ref().ok())
        .map(|took| took.as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);
    report.peak_rss_kb = status_kb(pid, "VmHWM:");
    let stopping = Instant::now();
    sigterm(&running.target.child).map_err(failed)?;
    let status = tokio::time::timeout(Duration::from_secs(10), running.target.child.wait()).await;
    report.stop_ms = stopping.elapsed().as_secs_f64() * 1000.0;
    report.exit_code = status.ok().and_then(Result::ok).and_then(|s| s.code());
    Ok(report)
}

/// Opens `count` connections one after another, each sending the preface
/// alone or half a request head, and holds them until all are open; returns
/// how many opened and how many the server closed meanwhile.
async fn idle_connections(addr: SocketAddr, count: usize) -> (usize, usize) {
    let closed = Arc::new(AtomicUsize::new(0));
    let (release, held) = watch::channel(false);
    let mut holders = JoinSet::new();
    let mut opened = 0;
    for i in 0..count {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            continue;
        };
        opened += 1;
        let opening = if i % 2 == 0 { PREFACE } else { HALF_A_HEAD };
        let (closed, mut held) = (closed.clone(), held.clone());
        holders.spawn(async move {
            if stream.write_all(opening).await.is_err() {
                closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let mut sink = [0u8; 512];
            tokio::select! {
                _ = held.wait_for(|release| *release) => {}
                () = async { while let Ok(1..) = stream.read(&mut sink).await {} } => {
                    closed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let _ = release.send(true);
    while holders.join_next().await.is_some() {}
    (opened, closed.load(Ordering::Relaxed))
}

/// How one request of the queued phase ended.
enum Answer {
    Ok,
    Refused,
    Closed,
    Other,
}

/// `count` gRPC calls at once, [`CALLS_PER_CONNECTION`] to a connection.
async fn grpc_calls(
    target: Target,
    addr: SocketAddr,
    count: usize,
) -> Result<Vec<Answer>, BenchError> {
    let mut calls = JoinSet::new();
    let mut channel = None;
    for i in 0..count {
        if i % CALLS_PER_CONNECTION == 0 {
            channel = Some(
                Channel::from_shared(format!("http://{addr}"))
                    .map_err(failed)?
                    .connect()
                    .await
                    .map_err(failed)?,
            );
        }
        let channel = channel.clone().expect("set above");
        calls.spawn(async move {
            let result = match target {
                Target::Hasher => HasherStub::new(channel)
                    .hash(HashRequest {
                        data: Bytes::from(vec![7u8; 16 * 1024]),
                    })
                    .await
                    .map(drop),
                _ => RngStub::new(channel)
                    .max_decoding_message_size(2 * 1024 * 1024)
                    .generate(GenerateRequest { size: 1024 * 1024 })
                    .await
                    .map(drop),
            };
            match result {
                Ok(()) => Answer::Ok,
                Err(status) if status.code() == tonic::Code::ResourceExhausted => Answer::Refused,
                Err(status) if status.code() == tonic::Code::Unavailable => Answer::Closed,
                Err(_) => Answer::Other,
            }
        });
    }
    Ok(calls.join_all().await)
}

/// `count` HTTP/1.1 `GET path` at once, one to a connection, each read to
/// its status line.
async fn http1_requests(addr: SocketAddr, path: &str, count: usize) -> Vec<Answer> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: dockercoins\r\nConnection: close\r\n\r\n");
    let request = Bytes::from(request);
    let mut requests = JoinSet::new();
    for _ in 0..count {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            requests.spawn(async { Answer::Closed });
            continue;
        };
        let request = request.clone();
        requests.spawn(async move {
            if stream.write_all(&request).await.is_err() {
                return Answer::Closed;
            }
            let mut head = [0u8; 12];
            match stream.read_exact(&mut head).await {
                Ok(_) if head.starts_with(b"HTTP/1.1 200") => Answer::Ok,
                Ok(_) if head.starts_with(b"HTTP/1.1 503") => Answer::Refused,
                Ok(_) => Answer::Other,
                Err(_) => Answer::Closed,
            }
        });
    }
    requests.join_all().await
}

/// What the flood is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Opening and holding idle connections.
    Idle,
    /// Holding requests in flight.
    Requests,
    Done,
}

/// A new connection and one well-behaved request every [`PROBE_EVERY`]
/// until the flood is done: in which phase, and how long each took to be
/// served or why it was not.
async fn probe(
    target: Target,
    addr: SocketAddr,
    mut phase: watch::Receiver<Phase>,
) -> Vec<(Phase, Result<Duration, String>)> {
    let mut taken = Vec::new();
    let mut every = tokio::time::interval(PROBE_EVERY);
    loop {
        tokio::select! {
            _ = phase.wait_for(|phase| *phase == Phase::Done) => return taken,
            _ = every.tick() => {}
        }
        let during = *phase.borrow();
        let start = Instant::now();
        let served = tokio::time::timeout(PROBE_GOAL * 5, async {
            match target {
                Target::Webui => probe_http(addr).await,
                _ => probe_grpc(addr).await,
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer in {} s", (PROBE_GOAL * 5).as_secs())));
        taken.push((during, served.map(|()| start.elapsed())));
    }
}

/// A gRPC health check on a new connection: served when SERVING.
async fn probe_grpc(addr: SocketAddr) -> Result<(), String> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid address")
        .connect()
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    match reply.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// `GET /healthz` on a new connection: served when 200.
async fn probe_http(addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let request = b"GET /healthz HTTP/1.1\r\nHost: dockercoins\r\nConnection: close\r\n\r\n";
    stream
        .write_all(request)
        .await
        .map_err(|error| format!("send: {error}"))?;
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|error| format!("read: {error}"))?;
    match head.starts_with(b"HTTP/1.1 200") {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&head).into_owned()),
    }
}

/// The report as a table, one line a target.
pub fn table(reports: &[TargetReport], config: &FloodConfig) -> String {
    let mut out = format!(
        "dockercoins flood: {} idle connections, then {} requests at once, against each server\n\n",
        config.idle, config.queued
    );
    out += "  server  idle MB  peak MB  idle closed/opened  queued ok/refused/closed/other  in s   probes  failed  max ms  exit  stop ms\n";
    for r in reports {
        out += &format!(
            "  {:<6}  {:>7.1}  {:>7.1}  {:>8}/{:<9}  {:>6}/{:>7}/{:>6}/{:<6}         {:>5.1}  {:>6}  {:>6}  {:>6.0}  {:>4}  {:>7.0}\n",
            r.target,
            r.idle_rss_kb as f64 / 1024.0,
            r.peak_rss_kb as f64 / 1024.0,
            r.idle_closed_by_server,
            r.idle_opened,
            r.queued_ok,
            r.queued_refused,
            r.queued_closed,
            r.queued_other,
            r.queued_seconds,
            r.probes,
            r.probes_failed,
            r.probe_max_ms,
            r.exit_code.map_or("-".to_owned(), |code| code.to_string()),
            r.stop_ms,
        );
        for failure in &r.probe_failures {
            out += &format!("          probe failed: {failure}\n");
        }
    }
    out += &format!(
        "\n  goals: peak under {MEMORY_GOAL_MB:.0} MB, every probe served within {} ms, exit 0 on SIGTERM\n",
        PROBE_GOAL.as_millis()
    );
    out
}
