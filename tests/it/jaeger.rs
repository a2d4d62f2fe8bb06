//! The real trace backend, as students use it: rng, hasher, the workers and
//! webui as processes export to the OpenTelemetry Collector (built from
//! `deploy/otel/builder.yaml`, running the project's `collector.yaml` with
//! only its addresses changed), which exports to Jaeger v2 (built from its Go
//! module, memory storage). Everything is read back through Jaeger's HTTP API
//! v3, what its UI shows. `tests/build-stack-tools.sh` builds both; without
//! them the test skips with a message, under CI it fails.

use crate::support::{
    Prometheus, RedisServer, built, http1, prometheus_built, restartable_port, sigterm,
    start_binary, urlencode,
};
use dockercoins::traces::SEARCH_DEPTH;
use serde_json::Value;
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::process::{Child, Command};

const TOOLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/stack-tools");
const COLLECTOR_CONFIG: &str = include_str!("../../deploy/otel/collector.yaml");
const JAEGER_CONFIG: &str = include_str!("../../deploy/otel/jaeger.yaml");

/// Jaeger and the Collector, built by `tests/build-stack-tools.sh`; `None`
/// (and a message) when they are not, a failure under CI.
fn tools() -> Option<(PathBuf, PathBuf)> {
    let (jaeger, otelcol) = (
        Path::new(TOOLS).join("jaeger"),
        Path::new(TOOLS).join("otelcol"),
    );
    let made_by = "tests/build-stack-tools.sh";
    (built(&jaeger, made_by) && built(&otelcol, made_by)).then_some((jaeger, otelcol))
}

/// Jaeger and the Collector, running on free ports, killed when dropped;
/// with Prometheus scraping the Collector's span metrics when
/// tests/build-stack-tools.sh has built it (required under CI), for Jaeger's Monitor tab.
struct Backend {
    _jaeger: Child,
    _collector: Child,
    prometheus: Option<Prometheus>,
    /// The configs and logs, removed when dropped.
    _dir: tempfile::TempDir,
    /// Jaeger's query API (the UI's port, 16686 in compose).
    query: SocketAddr,
    /// Where the services send their spans: the Collector's OTLP/gRPC.
    otlp: String,
}

/// Waits until `GET http://addr/path` answers 200: bounded, and the failure
/// says which server did not come up.
async fn wait_healthy(what: &str, addr: SocketAddr, path: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answered = tokio::time::timeout(Duration::from_secs(2), async {
            tokio::net::TcpStream::connect(addr).await.ok()?;
            Some(http1(addr, "GET", path, "").await.0)
        })
        .await;
        if let Ok(Some(status)) = answered
            && status == 200
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not answer 200 on http://{addr}{path} within 30 s (its log is in the test's temp dir)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_backend(jaeger: &Path, otelcol: &Path) -> Backend {
    let temp = tempfile::Builder::new()
        .prefix("dockercoins-jaeger-")
        .tempdir()
        .unwrap();
    let dir = temp.path().to_owned();
    let [
        otlp,
        otlp_http,
        http,
        grpc,
        health,
        in_grpc,
        in_http,
        in_health,
        span_metrics,
    ] = std::array::from_fn(|_| restartable_port());
    let prometheus = if prometheus_built() {
        let target = format!("127.0.0.1:{span_metrics}");
        Some(Prometheus::start(&[("spanmetrics", &target)]).await)
    } else {
        None
    };
    // The project's own configs, their addresses moved to this test's.
    let listen = "${env:JAEGER_LISTEN_HOST:-localhost}";
    let mut jaeger_config = JAEGER_CONFIG.to_owned();
    for (port, moved) in [
        (4317, otlp),
        (4318, otlp_http),
        (16686, http),
        (16685, grpc),
        (13133, health),
    ] {
        let from = format!("{listen}:{port}");
        assert!(jaeger_config.contains(&from), "jaeger.yaml has no {from}");
        jaeger_config = jaeger_config.replace(&from, &format!("127.0.0.1:{moved}"));
    }
    let prometheus_url = prometheus
        .as_ref()
        .map_or("http://127.0.0.1:9".to_owned(), |p| {
            format!("http://{}", p.addr)
        });
    jaeger_config = jaeger_config.replace("http://prometheus:9090", &prometheus_url);
    std::fs::write(dir.join("jaeger.yaml"), jaeger_config).unwrap();
    let collector = COLLECTOR_CONFIG
        .replace("jaeger:4317", &format!("127.0.0.1:{otlp}"))
        .replace("0.0.0.0:4317", &format!("127.0.0.1:{in_grpc}"))
        .replace("0.0.0.0:4318", &format!("127.0.0.1:{in_http}"))
        .replace("0.0.0.0:13133", &format!("127.0.0.1:{in_health}"))
        .replace("0.0.0.0:8889", &format!("127.0.0.1:{span_metrics}"));
    assert!(
        !collector
            .lines()
            .any(|line| !line.trim_start().starts_with('#') && line.contains("0.0.0.0")),
        "collector.yaml has an address the test did not move:\n{collector}"
    );
    std::fs::write(dir.join("collector.yaml"), collector).unwrap();
    let spawn = |program: &Path, config: &str, log: &str| {
        Command::new(program)
            .arg("--config")
            .arg(dir.join(config))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(log)).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let backend = Backend {
        _jaeger: spawn(jaeger, "jaeger.yaml", "jaeger.log"),
        _collector: spawn(otelcol, "collector.yaml", "collector.log"),
        prometheus,
        query: SocketAddr::from(([127, 0, 0, 1], http)),
        otlp: format!("http://127.0.0.1:{in_grpc}"),
        _dir: temp,
    };
    wait_healthy(
        "jaeger",
        SocketAddr::from(([127, 0, 0, 1], health)),
        "/status",
    )
    .await;
    wait_healthy(
        "otelcol",
        SocketAddr::from(([127, 0, 0, 1], in_health)),
        "/",
    )
    .await;
    backend
}

/// A span as Jaeger returns it.
#[derive(Clone, Debug)]
struct JaegerSpan {
    service: String,
    trace: String,
    id: String,
    parent: Option<String>,
    name: String,
    start_ns: u64,
    duration: Duration,
}

/// Every span of the traces that touch `service`, from Jaeger's API v3.
async fn spans_of(query: SocketAddr, service: &str) -> Vec<JaegerSpan> {
    // A fresh Jaeger holds only this test's spans: any window will do.
    let path = format!(
        "/api/v3/traces?query.service_name={service}&query.start_time_min=2020-01-01T00:00:00Z\
         &query.start_time_max=2100-01-01T00:00:00Z&query.num_traces={SEARCH_DEPTH}"
    );
    let (status, _, body) = http1(query, "GET", &path, "").await;
    if status == 404 {
        return Vec::new(); // no trace yet
    }
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let body: Value = serde_json::from_slice(&body).unwrap();
    let mut spans = Vec::new();
    for resource in body["result"]["resourceSpans"].as_array().unwrap() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv["key"] == "service.name")
            .and_then(|kv| kv["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_owned();
        for scope in resource["scopeSpans"].as_array().unwrap() {
            for span in scope["spans"].as_array().unwrap() {
                let ns = |key: &str| span[key].as_str().unwrap().parse::<u64>().unwrap();
                spans.push(JaegerSpan {
                    service: service.clone(),
                    trace: span["traceId"].as_str().unwrap().to_owned(),
                    id: span["spanId"].as_str().unwrap().to_owned(),
                    parent: span["parentSpanId"]
                        .as_str()
                        .filter(|id| !id.is_empty())
                        .map(str::to_owned),
                    name: span["name"].as_str().unwrap().to_owned(),
                    start_ns: ns("startTimeUnixNano"),
                    duration: Duration::from_nanos(
                        ns("endTimeUnixNano").saturating_sub(ns("startTimeUnixNano")),
                    ),
                });
            }
        }
    }
    spans
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn median(mut durations: Vec<Duration>) -> Duration {
    assert!(!durations.is_empty(), "no spans to take a median of");
    durations.sort();
    durations[durations.len() / 2]
}

/// Checks every trace that ended before the stop (none of its spans started
/// after `stopping`: a unit in flight when SIGTERM came may lose spans that
/// had no time to be exported): one root, no span whose parent is missing;
/// and each rooted at a worker's unit of work: a client span per call, the
/// server span of rng and hasher under each, rng's lane wait inside rng's
/// server span. Returns the lane waits and hasher's server spans of the
/// units that started in `[from, until)` (nanoseconds since the epoch).
fn check_units(
    spans: &[JaegerSpan],
    (from, until): (u64, u64),
    stopping: u64,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut traces: BTreeMap<&str, Vec<&JaegerSpan>> = BTreeMap::new();
    for span in spans {
        traces.entry(&span.trace).or_default().push(span);
    }
    let (mut lane_waits, mut hasher_spans) = (Vec::new(), Vec::new());
    for (trace, spans) in traces {
        if spans.iter().any(|s| s.start_ns >= stopping) {
            continue;
        }
        let by_id: HashMap<&str, &JaegerSpan> = spans.iter().map(|s| (s.id.as_str(), *s)).collect();
        let roots: Vec<_> = spans.iter().filter(|s| s.parent.is_none()).collect();
        assert_eq!(roots.len(), 1, "trace {trace} has {} roots", roots.len());
        for span in &spans {
            if let Some(parent) = &span.parent {
                assert!(
                    by_id.contains_key(parent.as_str()),
                    "trace {trace}: {} ({}) has a missing parent",
                    span.name,
                    span.service
                );
            }
        }
        let root = roots[0];
        if root.name != "mine one block" {
            continue; // a Redis update
        }
        assert_eq!(root.service, "worker", "trace {trace}");
        let children = |parent: &JaegerSpan, name: &str, service: &str| -> Vec<&JaegerSpan> {
            spans
                .iter()
                .copied()
                .filter(|s| {
                    s.parent.as_deref() == Some(parent.id.as_str())
                        && s.name == name
                        && s.service == service
                })
                .collect()
        };
        for (method, server) in [
            ("dockercoins.v1.Rng/Generate", "rng"),
            ("dockercoins.v1.Hasher/Hash", "hasher"),
        ] {
            let clients = children(root, method, "worker");
            // A unit cut short by the stop has no hasher call yet.
            if clients.is_empty() && server == "hasher" {
                continue;
            }
            assert_eq!(clients.len(), 1, "trace {trace}: {method} client spans");
            let servers = children(clients[0], method, server);
            assert_eq!(servers.len(), 1, "trace {trace}: {server}'s server span");
            let counted = (from..until).contains(&root.start_ns);
            if server == "rng" {
                let waits = children(servers[0], "rng.lane.wait", "rng");
                assert_eq!(waits.len(), 1, "trace {trace}: rng.lane.wait in rng's span");
                if counted {
                    lane_waits.push(waits[0].duration);
                }
            } else if counted {
                hasher_spans.push(servers[0].duration);
            }
        }
    }
    (lane_waits, hasher_spans)
}

/// `dockercoins traces` against `jaeger`: exit code, stdout, stderr.
async fn traces(jaeger: &str) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_dockercoins"))
        .args(["traces", "--jaeger", jaeger, "--since", "60s"])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .await
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The services in classroom timings, exporting to the Collector: the names
/// compose gives them, spans sent every 200 ms so the test need not wait.
/// Returns the child and the address it listens on (none for a worker).
async fn start_service(args: &[&str], name: &str, otlp: &str) -> (Child, String) {
    let envs = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
        ("OTEL_SERVICE_NAME", name),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    start_binary(args, &envs).await
}

/// The lesson, read from Jaeger: with one classroom worker rng's lane is
/// free; with ten, each call waits behind the others (each worker's cycle
/// is about a second: 100 ms sleep, the wait, 100 ms in rng, 100 ms in
/// hasher), while hasher stays near its 100 ms.
#[tokio::test]
async fn jaeger_shows_every_hop_and_where_ten_workers_wait() {
    let Some((jaeger, otelcol)) = tools() else {
        return;
    };
    let backend = start_backend(&jaeger, &otelcol).await;
    let jaeger_url = format!("http://{}", backend.query);
    // The preflight before anything runs: no trace, exit 1, and why.
    let (code, _, stderr) = traces(&jaeger_url).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no trace from the worker"), "{stderr}");
    let redis = RedisServer::start().await;
    let otlp = backend.otlp.as_str();
    let (mut rng, rng_addr) = start_service(&["rng", "--listen", "127.0.0.1:0"], "rng", otlp).await;
    let (mut hasher, hasher_addr) =
        start_service(&["hasher", "--listen", "127.0.0.1:0"], "hasher", otlp).await;
    let (rng_url, hasher_url, redis_url) = (
        format!("http://{rng_addr}"),
        format!("http://{hasher_addr}"),
        redis.url(),
    );
    let client = [
        "--rng",
        &rng_url,
        "--hasher",
        &hasher_url,
        "--redis",
        &redis_url,
    ];
    let webui_args = [&["webui", "--listen", "127.0.0.1:0"][..], &client].concat();
    let (mut webui, webui_addr) = start_service(&webui_args, "webui", otlp).await;
    let worker_args = [&["worker"][..], &client].concat();
    let mut workers = vec![start_service(&worker_args, "worker", otlp).await.0];

    // One worker: nobody else in rng's lane.
    let one_from = now_ns();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let one_until = now_ns();
    // Ten: nine more join; the queue settles within a cycle or two.
    for _ in 0..9 {
        workers.push(start_service(&worker_args, "worker", otlp).await.0);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ten_from = now_ns();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (status, _, _) = http1(webui_addr.parse().unwrap(), "GET", "/json", "").await;
    assert_eq!(status, 200);
    // A unit takes about a second with ten workers: those begun in the last
    // two may be cut short by the stop.
    let stopping = now_ns() - 2_000_000_000;
    for child in workers.iter().chain([&rng, &hasher, &webui]) {
        sigterm(child).await;
    }
    for child in workers
        .iter_mut()
        .chain([&mut rng, &mut hasher, &mut webui])
    {
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }

    // The last spans reach Jaeger through the Collector's 1 s batch.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let services = loop {
        let (_, _, body) = http1(backend.query, "GET", "/api/v3/services", "").await;
        let services: Value = serde_json::from_slice(&body).unwrap();
        let mut names: Vec<String> = services["services"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        // Jaeger's own traces, if any, are not the mesh's.
        names.retain(|name| name != "jaeger");
        names.sort();
        if names.len() >= 4 || tokio::time::Instant::now() > deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        services,
        ["hasher", "rng", "webui", "worker"],
        "Jaeger's services"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spans = spans_of(backend.query, "worker").await;
    assert!(
        spans.iter().any(|s| s.name == "update the score")
            && spans
                .iter()
                .any(|s| s.service == "worker" && s.name.contains("EXEC")),
        "no Redis update in Jaeger"
    );

    // What a student runs: where the time goes.
    let (code, table, stderr) = traces(&jaeger_url).await;
    println!("dockercoins traces --jaeger {jaeger_url} --since 60s\n{table}");
    assert_eq!(code, Some(0), "{stderr}");
    for hop in [
        "worker unit",
        "rng lane wait",
        "rng ",
        "hasher",
        "Redis update",
    ] {
        assert!(table.contains(hop), "no {hop} row:\n{table}");
    }
    let (one_waits, _) = check_units(&spans, (one_from, one_until), stopping);
    let (ten_waits, ten_hasher) = check_units(&spans, (ten_from, u64::MAX), stopping);
    let p = |durations: &[Duration], q: f64| {
        let mut sorted = durations.to_vec();
        sorted.sort();
        sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
    };
    println!(
        "from Jaeger: 1 worker: {} units, lane wait p50 {:?} p99 {:?}; \
         10 workers: {} units, lane wait p50 {:?} p99 {:?}, hasher p50 {:?}",
        one_waits.len(),
        p(&one_waits, 0.5),
        p(&one_waits, 0.99),
        ten_waits.len(),
        p(&ten_waits, 0.5),
        p(&ten_waits, 0.99),
        p(&ten_hasher, 0.5),
    );
    // One worker makes about 3 units a second, ten together about 10.
    assert!(
        one_waits.len() >= 8,
        "{} units with 1 worker",
        one_waits.len()
    );
    assert!(
        ten_waits.len() >= 50,
        "{} units with 10 workers",
        ten_waits.len()
    );
    assert!(median(one_waits) < Duration::from_millis(20));
    let wait = median(ten_waits);
    assert!(
        (Duration::from_millis(500)..=Duration::from_millis(900)).contains(&wait),
        "10 workers: lane wait median {wait:?}"
    );
    let hasher = median(ten_hasher);
    assert!(
        (Duration::from_millis(95)..=Duration::from_millis(200)).contains(&hasher),
        "10 workers: hasher's server span median {hasher:?}"
    );
    if let Some(prometheus) = &backend.prometheus {
        monitor_tab_shows_rng_slower_than_hasher(backend.query, prometheus.addr).await;
    }
}

/// Jaeger's Monitor tab (its metrics API), fed by the Collector's span
/// metrics through Prometheus: rng's server calls, queue included, well
/// over hasher's.
async fn monitor_tab_shows_rng_slower_than_hasher(query: SocketAddr, prometheus: SocketAddr) {
    let p95 = |service: &str| {
        let end = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        format!(
            "/api/metrics/latencies?service={}&quantile=0.95&spanKind=server&endTs={end}&lookback=60000&step=5000&ratePer=60000",
            urlencode(service)
        )
    };
    let latest = |body: &Value| -> Option<f64> {
        body["metrics"][0]["metricPoints"]
            .as_array()?
            .iter()
            .rev()
            .filter_map(|point| point["gaugeValue"]["doubleValue"].as_f64())
            .find(|v| v.is_finite())
    };
    let mut values = BTreeMap::new();
    for service in ["rng", "hasher"] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let value = loop {
            let (status, _, body) = http1(query, "GET", &p95(service), "").await;
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if status == 200
                && let Some(value) = latest(&body)
            {
                break value;
            }
            if tokio::time::Instant::now() > deadline {
                let names = "/api/v1/label/__name__/values";
                let (_, _, held) = http1(prometheus, "GET", names, "").await;
                panic!(
                    "Jaeger's Monitor tab has no p95 for {service} within 30 s: HTTP {status} {body}\n\
                     Prometheus holds: {}",
                    String::from_utf8_lossy(&held)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        values.insert(service, value);
    }
    println!("Jaeger's Monitor tab, server p95: {values:?} (ms)");
    assert!(
        values["rng"] > 400.0 && values["hasher"] < 400.0,
        "{values:?}"
    );
}

/// `dockercoins traces` searches less deep than the traces Jaeger keeps:
/// its memory store refuses a search as deep as its `max_traces`.
#[test]
fn traces_search_less_deep_than_jaeger_keeps() {
    let max_traces: usize = JAEGER_CONFIG
        .lines()
        .find_map(|line| line.trim().strip_prefix("max_traces:"))
        .expect("deploy/otel/jaeger.yaml sets max_traces")
        .trim()
        .parse()
        .unwrap();
    assert!(SEARCH_DEPTH < max_traces, "{SEARCH_DEPTH} >= {max_traces}");
}

/// One Jaeger release and one Collector release everywhere: what compose
/// and Kubernetes pull is what `tests/build-stack-tools.sh` builds and the
/// test above runs.
#[test]
fn compose_kubernetes_and_the_build_pin_one_jaeger_and_one_collector() {
    let tag = |text: &str, image: &str| -> Option<String> {
        text.lines()
            .find_map(|line| line.trim().strip_prefix("image: ")?.strip_prefix(image))
            .map(str::to_owned)
    };
    let compose = include_str!("../../docker-compose.yaml");
    let jaeger = tag(compose, "jaegertracing/jaeger:").expect("compose's jaeger image");
    let k8s = include_str!("../../deploy/k8s/base/jaeger.yaml");
    assert_eq!(tag(k8s, "jaegertracing/jaeger:"), Some(jaeger.clone()));
    let build = include_str!("../build-stack-tools.sh");
    assert!(
        build.contains(&format!("JAEGER_RELEASE={jaeger} ")),
        "tests/build-stack-tools.sh does not build Jaeger {jaeger}"
    );
    let contrib = "otel/opentelemetry-collector-contrib:";
    let collector = tag(compose, contrib).expect("compose's collector image");
    let k8s = include_str!("../../deploy/k8s/base/otel-collector.yaml");
    assert_eq!(tag(k8s, contrib), Some(collector.clone()));
    let manifest = include_str!("../../deploy/otel/builder.yaml");
    assert!(manifest.contains(&format!("version: {collector}")));
    // Components at the contrib release; the confmap providers are 1.x.
    for line in manifest.lines().filter(|line| line.contains("gomod:")) {
        let version = line.rsplit(' ').next().unwrap();
        assert!(
            version == format!("v{collector}") || line.contains("/confmap/provider/"),
            "deploy/otel/builder.yaml: {line}"
        );
    }
}
