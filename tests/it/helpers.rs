//! Spawning services on port 0 and talking to them over real sockets.

use bytes::Bytes;
use dockercoins::{
    client::balancer::PoolSettings,
    client::{HasherClient, RngClient},
    hasher::HasherConfig,
    pb::{hasher_client, rng_client},
    rng::RngConfig,
    server::ServeError,
    server::connections::ConnectionLimits,
    store::Store,
    telemetry::fields,
    webui::{Webui, WebuiError},
    worker::{Backends, Mined, WorkerConfig},
};
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::process::Stdio;
use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};
use tonic::transport::Channel;

/// A server running in this test's runtime: rng and hasher (whose errors
/// are [`ServeError`]s), webui ([`WebuiError`]s).
pub struct Spawned<E = ServeError> {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), E>>,
}

impl<E: Send + 'static> Spawned<E> {
    /// Binds 127.0.0.1:0 and runs `serve` on it in a task.
    pub async fn start<F>(serve: impl FnOnce(TcpListener, oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), serve).await
    }

    /// Binds `addr` (a server started again on its port) and runs `serve`
    /// on it in a task.
    pub async fn start_on<F>(
        addr: SocketAddr,
        serve: impl FnOnce(TcpListener, oneshot::Receiver<()>) -> F,
    ) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, stopped));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    }

    /// Whether the server still serves (it has not returned).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Begins shutdown and does not wait for it.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Begins shutdown and waits for the server to return.
    pub async fn stop(mut self) -> Result<(), E> {
        self.begin_stop();
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("server did not stop within 5 s")
            .unwrap()
    }

    /// Waits for a server whose shutdown has begun.
    pub async fn join(&mut self, within: Duration) -> Result<(), E> {
        tokio::time::timeout(within, &mut self.task)
            .await
            .expect("server did not stop in time")
            .unwrap()
    }
}

pub async fn spawn_rng(config: RngConfig) -> Spawned {
    spawn_rng_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
}

/// rng on `addr`: a replica started again on the port it had.
pub async fn spawn_rng_on(addr: SocketAddr, config: RngConfig) -> Spawned {
    Spawned::start_on(addr, |listener, stop| async move {
        dockercoins::rng::serve(listener, config, async {
            let _ = stop.await;
        })
        .await
    })
    .await
}

pub async fn spawn_hasher(config: HasherConfig) -> Spawned {
    Spawned::start(|listener, stop| async move {
        dockercoins::hasher::serve(listener, config, async {
            let _ = stop.await;
        })
        .await
    })
    .await
}

/// A webui in front of `rng` and `hasher`, with `store`.
pub async fn spawn_webui(store: Store, rng: &str, hasher: &str) -> Spawned<WebuiError> {
    spawn_webui_on(SocketAddr::from(([127, 0, 0, 1], 0)), store, rng, hasher).await
}

/// A webui on `addr`: one that comes up where a client already looks.
pub async fn spawn_webui_on(
    addr: SocketAddr,
    store: Store,
    rng: &str,
    hasher: &str,
) -> Spawned<WebuiError> {
    start_webui(addr, webui_of(store, rng, hasher)).await
}

/// A webui that holds connections within `limits`.
pub async fn spawn_webui_limited(
    limits: ConnectionLimits,
    store: Store,
    rng: &str,
    hasher: &str,
) -> Spawned<WebuiError> {
    let webui = webui_of(store, rng, hasher).with_connection_limits(limits);
    start_webui(SocketAddr::from(([127, 0, 0, 1], 0)), webui).await
}

/// A webui in front of `rng` and `hasher`, its clients quick to give up.
fn webui_of(store: Store, rng: &str, hasher: &str) -> Webui {
    let pool = PoolSettings {
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    Webui::new(
        store,
        RngClient::new(rng, &pool).unwrap(),
        HasherClient::new(hasher, &pool).unwrap(),
    )
}

async fn start_webui(addr: SocketAddr, webui: Webui) -> Spawned<WebuiError> {
    Spawned::start_on(addr, |listener, stop| async move {
        dockercoins::webui::serve(listener, webui, async {
            let _ = stop.await;
        })
        .await
    })
    .await
}

/// A `grpc.health.v1` Watch of rng on `channel`, as a balancing client
/// keeps one; its first answer, SERVING, already read.
pub async fn watch_rng_health(
    channel: Channel,
) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "dockercoins.v1.Rng".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    watch
}

/// The generated client on a fresh connection: what any gRPC client sends.
pub async fn rng_client(server: &Spawned) -> rng_client::RngClient<Channel> {
    rng_client::RngClient::new(server.channel().await)
}

/// The generated client on a fresh connection: what any gRPC client sends.
pub async fn hasher_client(server: &Spawned) -> hasher_client::HasherClient<Channel> {
    hasher_client::HasherClient::new(server.channel().await)
        .max_encoding_message_size(64 * 1024 * 1024)
}

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

/// Lowercase hex SHA-256, computed here independently of the service.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A free port for a server a test stops and starts again on the same port.
/// A port from `bind(0)` is in the kernel's ephemeral range, so while the
/// server is down any other socket of the test run (a listener on port 0, an
/// outgoing connection) may be given it. Below that range only an explicit
/// bind takes a port, and each call here picks another one.
pub fn restartable_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32768);
    let span = ephemeral_low.saturating_sub(1024).min(12_000);
    assert!(span >= 100, "no room below the ephemeral port range");
    // Test processes running at once (nextest) start at different places.
    let start = std::process::id() as usize * 7919;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (ephemeral_low - span + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}

/// A redis-server of this test's own, on a free port, with an append-only
/// file in a directory of its own so it can be stopped and started again
/// with its data. Killed when dropped.
pub struct RedisServer {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<tokio::process::Child>,
    /// Append-only file, fsynced on every write: a SIGKILL loses nothing
    /// Redis acknowledged. Without it, a restart starts from empty.
    persistent: bool,
}

impl RedisServer {
    /// A redis-server that keeps its data across restarts (append-only file).
    pub async fn start() -> Self {
        Self::start_with(true).await
    }

    /// A redis-server with no persistence, as the compose file runs it: a
    /// restart starts from empty.
    pub async fn start_ephemeral() -> Self {
        Self::start_with(false).await
    }

    async fn start_with(persistent: bool) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("dockercoins-test-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = restartable_port();
        let mut server = Self {
            port,
            dir,
            child: None,
            persistent,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(if self.persistent {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "no"]
            })
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is needed for these tests (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut connection) = self.connection().await {
                let dir: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("dir")
                    .query_async(&mut connection)
                    .await;
                if let Ok(dir) = dir {
                    // This test's server, not another one on the same port.
                    let ours = std::fs::canonicalize(&self.dir).unwrap();
                    assert_eq!(
                        dir.get(1).map(std::path::PathBuf::from),
                        Some(ours),
                        "port {} is answered by a Redis that is not this test's",
                        self.port
                    );
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the server gracefully (SIGTERM: the append-only file is kept).
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("not running");
        dockercoins::shutdown::terminate(child.id().unwrap()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("redis-server did not stop")
            .unwrap();
    }

    /// Kills the server with SIGKILL: no shutdown, no last write.
    pub async fn crash(&mut self) {
        let mut child = self.child.take().expect("not running");
        child.start_kill().unwrap();
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("redis-server did not die")
            .unwrap();
    }

    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        // Longer than redis-rs's own 500 ms, so a test can make Redis slow.
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// `GET hashes` (0 when absent).
    pub async fn hashes(&self) -> u64 {
        self.number("hashes").await
    }

    /// `GET key` as a number, 0 when absent.
    pub async fn number(&self, key: &str) -> u64 {
        let mut connection = self.connection().await.unwrap();
        let value: Option<u64> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap();
        value.unwrap_or(0)
    }

    /// `HGETALL wallet`.
    pub async fn wallet(&self) -> Vec<(String, Vec<u8>)> {
        let mut connection = self.connection().await.unwrap();
        redis::cmd("HGETALL")
            .arg("wallet")
            .query_async(&mut connection)
            .await
            .unwrap()
    }

    /// Every key in the database.
    pub async fn keys(&self) -> Vec<String> {
        let mut connection = self.connection().await.unwrap();
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut connection)
            .await
            .unwrap();
        keys.sort();
        keys
    }

    /// Waits until `GET hashes` reaches `at_least`, polling (bounded).
    pub async fn wait_for_hashes(&self, at_least: u64, within: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let hashes = self.hashes().await;
            if hashes >= at_least {
                return hashes;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "hashes stayed at {hashes}, wanted {at_least} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How the tests' workers reach their backends: a short connect timeout, and
/// a call timeout that a hang trips well within a test's bounds.
pub fn test_pool() -> PoolSettings {
    PoolSettings {
        connect_timeout: Duration::from_millis(500),
        call_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// A worker running in this test's runtime, stopped by `stop`.
pub struct RunningWorker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Mined>,
}

impl RunningWorker {
    pub fn start(config: WorkerConfig, rng_url: &str, hasher_url: &str, store: Store) -> Self {
        let pool = test_pool();
        let rng = RngClient::new(rng_url, &pool).unwrap();
        let hasher = HasherClient::new(hasher_url, &pool).unwrap();
        Self::with_backends(config, rng, hasher, store)
    }

    /// A worker on clients made by the test (a resolver of its own...).
    pub fn with_backends(
        config: WorkerConfig,
        rng: RngClient,
        hasher: HasherClient,
        store: Store,
    ) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let backends = Backends { rng, hasher, store };
        let task = tokio::spawn(dockercoins::worker::run(config, backends, None, async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    /// Stops the worker (as SIGTERM would) and returns its report; a stop
    /// takes well under a second.
    pub async fn stop(self) -> Mined {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("the worker did not stop within 2 s")
            .unwrap()
    }
}

/// Starts `dockercoins <args>` and waits for its start-up log line; returns
/// the address it listens on (empty for the worker, which listens on none).
pub async fn start_binary(args: &[&str], envs: &[(&str, &str)]) -> (Child, String) {
    let (child, listen, _log) = start_binary_logged(args, envs).await;
    (child, listen)
}

/// Every stderr line of a child, as it comes.
pub type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// [`start_binary`], keeping the child's stderr lines.
pub async fn start_binary_logged(args: &[&str], envs: &[(&str, &str)]) -> (Child, String, Log) {
    let log = Log::default();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dockercoins"))
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("LOG_FORMAT")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(envs.iter().copied())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let kept = log.clone();
    let listen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            kept.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split(&format!("{}=", fields::LISTEN)).nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
            if line.contains(fields::WORKER_MINING) {
                return String::new();
            }
        }
        panic!("the binary exited before serving");
    })
    .await
    .expect("no serving line within 30 s");
    // Keep draining stderr so the child never blocks on a full pipe.
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });
    (child, listen, log)
}

pub async fn sigterm(child: &Child) {
    dockercoins::shutdown::terminate(child.id().expect("the child still runs")).unwrap();
}

/// Whether `tool` is on PATH. Under CI its absence fails the test instead of
/// skipping it: `.ci/run` installs every tool the tests use.
pub fn have(tool: &str, version_flag: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg(version_flag)
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not on PATH (.ci/run installs it)"
        );
        eprintln!("{tool} is not on PATH: skipping");
    }
    found
}

/// Runs `command`, a line of the docs pointed at the test's servers, with `sh`;
/// asserts it succeeds (showing `line`, stdout and stderr if not) and returns
/// its stdout.
pub async fn run_readme_line(line: &str, command: &str) -> String {
    let output = Command::new("sh")
        .args(["-c", command])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{line}\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// One Rng/Generate call of 32 bytes through a client (balancing, retries,
/// TLS: whatever its backend does); the number of bytes it returned.
pub async fn generate_through(rng: &RngClient) -> Result<usize, tonic::Status> {
    rng.generate(32).await.map(|data| data.len())
}

/// A Prometheus of the test's own, on a free port, scraping `targets` (job
/// name and address) every second, with exemplar storage on; killed and its
/// directory removed when dropped.
pub struct Prometheus {
    _child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Prometheus {
    pub async fn start(targets: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "dockercoins-prometheus-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let jobs: String = targets
            .iter()
            .map(|(job, addr)| {
                format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n")
            })
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], restartable_port()));
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start prometheus");
        let this = Self {
            _child: child,
            addr,
            _dir: TempDir(dir),
        };
        this.wait_for("/-/ready", |_| true, "Prometheus ready")
            .await;
        this
    }

    /// GETs `path` until `done` holds for the JSON answer (bounded: 30 s).
    pub async fn wait_for(
        &self,
        path: &str,
        done: impl Fn(&serde_json::Value) -> bool,
        what: &str,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        loop {
            if let Ok(stream) = tokio::net::TcpStream::connect(self.addr).await {
                drop(stream);
                let (status, _, body) = http1(self.addr, "GET", path, "").await;
                last = String::from_utf8_lossy(&body).into_owned();
                if status == 200 {
                    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    if done(&json) {
                        return json;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within 30 s; Prometheus's last answer to {path}: {last}\n(its log: {})",
                std::path::Path::new(&self._dir.0)
                    .join("prometheus.log")
                    .display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The value of the instant query `promql`, once it has one.
    pub async fn value(&self, promql: &str) -> f64 {
        let path = format!("/api/v1/query?query={}", urlencode(promql));
        let json = self
            .wait_for(
                &path,
                |json| {
                    json["data"]["result"]
                        .as_array()
                        .is_some_and(|r| !r.is_empty())
                },
                promql,
            )
            .await;
        json["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

pub fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// An HTTP refusal for overload: 503, with `Retry-After` in whole seconds.
pub fn assert_told_to_retry(response: &axum::response::Response, seconds: &str) {
    assert_eq!(response.status(), 503, "{response:?}");
    assert_eq!(response.headers()["retry-after"], seconds, "{response:?}");
}

/// A gRPC refusal for overload: RESOURCE_EXHAUSTED, with gRFC A6's pushback.
pub fn assert_pushed_back(status: &tonic::Status, millis: &str) {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        millis,
        "{status:?}"
    );
}

/// rng with one lane of `delay` and no queue: busy with one call, it
/// refuses the next at once (RESOURCE_EXHAUSTED with a pushback).
pub fn one_lane_no_queue(delay: Duration) -> RngConfig {
    RngConfig {
        delay,
        lanes: Some(1),
        queue: 0,
        ..RngConfig::classroom()
    }
}

/// Waits until the rng at `addr` serves one gRPC call (the one holding its
/// lane; its /metrics is not in the lane), for `within` at most.
pub async fn wait_for_a_call_in_rngs_lane(addr: SocketAddr, within: Duration) {
    let in_flight = r#"rpc_server_calls_in_flight{rpc_service="dockercoins.v1.Rng"}"#;
    let deadline = tokio::time::Instant::now() + within;
    while metric(addr, in_flight).await != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rng never served the call holding its lane within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
