//! `/metrics` on every service: OpenMetrics text that a real Prometheus
//! scrapes (the independent parser), with rng's lane, every hop's calls,
//! the worker's tally, and exemplars that name a trace.

use crate::support::{
    Prometheus, RedisServer, RunningWorker, http1, prometheus_built, spawn_hasher, spawn_rng,
    spawn_webui, start_binary, urlencode,
};
use dockercoins::{hasher::HasherConfig, rng::RngConfig, store::Store, worker::WorkerConfig};
use std::{net::SocketAddr, time::Duration};

/// `GET /metrics` on `addr`: the content type and the text.
async fn scrape(addr: SocketAddr) -> (String, String) {
    let (status, headers, body) = http1(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200, "GET /metrics on {addr}");
    let content_type = headers[axum::http::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    (content_type, String::from_utf8(body.to_vec()).unwrap())
}

/// The value of the sample `series` (name and labels exactly as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

const LANE_SUM: &str = "rng_lane_wait_seconds_sum";
const LANE_COUNT: &str = "rng_lane_wait_seconds_count";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_classroom_workers_wait_over_half_a_second_in_the_lane_on_metrics_and_the_page() {
    let rng = spawn_rng(RngConfig::classroom()).await;
    let hasher = spawn_hasher(HasherConfig::classroom()).await;
    let store = Store::memory();
    let webui = spawn_webui(store.clone(), &rng.url(), &hasher.url()).await;
    let workers: Vec<_> = (0..10)
        .map(|_| {
            RunningWorker::start(
                WorkerConfig::classroom(),
                &rng.url(),
                &hasher.url(),
                store.clone(),
            )
        })
        .collect();
    // The queue fills within a worker's first cycle (about a second):
    // polled, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let text = loop {
        let (content_type, text) = scrape(rng.addr).await;
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        if sample(&text, "rng_lane_queue_depth").unwrap_or(0.0) >= 5.0 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rng's queue never reached 5 with 10 workers within 15 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (sum0, count0) = (
        sample(&text, LANE_SUM).unwrap(),
        sample(&text, LANE_COUNT).unwrap(),
    );
    // Then the mean wait over the next 20 turns (about 2 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let text = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, text) = scrape(rng.addr).await;
        if sample(&text, LANE_COUNT).unwrap() - count0 >= 20.0 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than 20 turns of rng's lane in 15 s:\n{text}"
        );
    };
    let turns = sample(&text, LANE_COUNT).unwrap() - count0;
    let mean = (sample(&text, LANE_SUM).unwrap() - sum0) / turns;
    // Each worker's cycle is about 1 s (100 ms sleep, the wait, 100 ms in
    // rng, 100 ms in hasher): about 7 of the 10 are ahead in the queue.
    assert!(
        (0.5..1.0).contains(&mean),
        "mean lane wait {mean:.3} s over {turns} turns, expected 0.5-1.0 s"
    );
    // rng's own call duration includes that wait.
    let generate = r#"rpc_server_call_duration_seconds_count{rpc_method="dockercoins.v1.Rng/Generate",rpc_response_status_code="OK"}"#;
    assert!(sample(&text, generate).unwrap() >= turns, "{text}");

    // The page's per-hop view says the same, from rng's own measurements:
    // its calls (wait included) near 800 ms, hasher's near 100 ms.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let hops = loop {
        let (status, _, body) = http1(webui.addr, "GET", "/api/hops", "").await;
        assert_eq!(status, 200);
        let hops: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let ready = hops["rng"][0]["p50_ms"].as_f64().is_some()
            && hops["hasher"][0]["p50_ms"].as_f64().is_some();
        if ready {
            break hops;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/api/hops had no latency for rng and hasher within 20 s: {hops}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (rng_hop, hasher_hop) = (&hops["rng"][0], &hops["hasher"][0]);
    let rng_p50 = rng_hop["p50_ms"].as_f64().unwrap();
    assert!(
        (600.0..1100.0).contains(&rng_p50),
        "rng p50 {rng_p50} ms: {hops}"
    );
    let hasher_p50 = hasher_hop["p50_ms"].as_f64().unwrap();
    assert!(
        (90.0..200.0).contains(&hasher_p50),
        "hasher p50 {hasher_p50} ms: {hops}"
    );
    for hop in [rng_hop, hasher_hop] {
        let rate = hop["calls_per_second"].as_f64().unwrap();
        assert!((6.0..12.0).contains(&rate), "calls/s {rate}: {hops}");
    }
    assert!(rng_hop["queue"].as_u64().is_some(), "{hops}");
    assert!(hasher_hop.get("queue").is_none(), "{hops}");
    // The slowest recent call of rng names its trace (the test's spans are
    // not sampled: no trace id, so no link either).
    assert!(
        rng_hop["slowest"]
            .get("url")
            .is_none_or(|url| url.is_null()),
        "{hops}"
    );

    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_service_and_keeps_the_traces_of_slow_calls() {
    if !prometheus_built() {
        return;
    }
    let redis = RedisServer::start().await;
    // Traces are sampled only where they are exported: an exporter pointed at
    // a port nobody listens on (taken and let go here) is enough for the
    // exemplars and links; no span needs to arrive.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let collector = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let local = [
        ("RUST_LOG", "warn,dockercoins=info"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
    ];
    let (_rng, rng) = start_binary(&["rng", "--listen", "127.0.0.1:0"], &local).await;
    let (_hasher, hasher) = start_binary(&["hasher", "--listen", "127.0.0.1:0"], &local).await;
    let clients = [
        ("RNG_URL", format!("http://{rng}")),
        ("HASHER_URL", format!("http://{hasher}")),
        ("REDIS_URL", redis.url()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.clone()),
    ];
    let mut envs: Vec<(&str, &str)> = clients.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_worker, worker) =
        start_binary(&["worker", "--health-listen", "127.0.0.1:0"], &envs).await;
    envs.push(("JAEGER_URL", "http://jaeger.example:16686/"));
    let (_webui, webui) = start_binary(&["webui", "--listen", "127.0.0.1:0"], &envs).await;
    // webui's gateway makes a call of its own.
    let webui_addr: SocketAddr = webui.parse().unwrap();
    let (status, _, _) = http1(webui_addr, "GET", "/api/rng/8", "").await;
    assert_eq!(status, 200);

    let prometheus = Prometheus::start(&[
        ("rng", &rng),
        ("hasher", &hasher),
        ("worker", &worker),
        ("webui", &webui),
    ])
    .await;
    // Every target scraped and parsed: Prometheus's own OpenMetrics parser
    // found nothing to refuse.
    let targets = prometheus
        .wait_for(
            "/api/v1/targets",
            |json| {
                json["data"]["activeTargets"]
                    .as_array()
                    .is_some_and(|targets| {
                        targets.len() == 4 && targets.iter().all(|t| t["health"] == "up")
                    })
            },
            "every target up",
        )
        .await;
    for target in targets["data"]["activeTargets"].as_array().unwrap() {
        assert_eq!(target["lastError"], "", "{target}");
    }
    for (promql, what) in [
        (r#"rng_lane_wait_seconds_count{job="rng"}"#, "rng's lane"),
        (
            r#"sum(rpc_server_call_duration_seconds_count{job="hasher",rpc_method="dockercoins.v1.Hasher/Hash"})"#,
            "hasher's calls",
        ),
        (
            r#"worker_hashes_total{job="worker"}"#,
            "the worker's hashes",
        ),
        (
            r#"sum(rpc_client_call_duration_seconds_count{job="worker",rpc_method="dockercoins.v1.Rng/Generate"})"#,
            "the worker's calls to rng",
        ),
        (
            r#"redis_update_duration_seconds_count{job="worker"}"#,
            "Redis updates",
        ),
        (
            r#"sum(rpc_client_call_duration_seconds_count{job="webui"})"#,
            "webui's gateway call",
        ),
    ] {
        let value = prometheus.value(&format!("{promql} > 0")).await;
        assert!(value > 0.0, "{what}: {promql} = {value}");
    }
    // A slow bucket leads to a trace: rng's calls carry their trace ids.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let path = format!(
        "/api/v1/query_exemplars?query={}&start={}&end={}",
        urlencode(r#"rpc_server_call_duration_seconds_bucket{job="rng"}"#),
        now - 600,
        now + 600
    );
    let exemplars = prometheus
        .wait_for(
            &path,
            |json| json["data"].as_array().is_some_and(|d| !d.is_empty()),
            "exemplars of rng's calls",
        )
        .await;
    let trace_id = exemplars["data"][0]["exemplars"][0]["labels"]["trace_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(is_trace_id(&trace_id), "{exemplars}");

    // The page links rng's slowest recent call to its trace in Jaeger.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let url = loop {
        let (_, _, body) = http1(webui_addr, "GET", "/api/hops", "").await;
        let hops: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if let Some(url) = hops["rng"][0]["slowest"]["url"].as_str() {
            break url.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no link to rng's slowest trace within 20 s: {hops}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let id = url
        .strip_prefix("http://jaeger.example:16686/trace/")
        .unwrap_or_else(|| panic!("{url}"));
    assert!(is_trace_id(id), "{url}");
}

fn is_trace_id(id: &str) -> bool {
    id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit())
}

/// `METRICS_DISABLED=true`: the process measures nothing (what `bench`
/// compares against), and says nothing false: `/metrics` still answers.
#[tokio::test]
async fn metrics_disabled_measures_nothing() {
    let off = [("METRICS_DISABLED", "true")];
    let (_rng, addr) = start_binary(&["rng", "--listen", "127.0.0.1:0"], &off).await;
    let addr: SocketAddr = addr.parse().unwrap();
    // Two calls through the lane, over HTTP/1.1 and gRPC alike.
    let (status, _, _) = http1(addr, "GET", "/8", "").await;
    assert_eq!(status, 200);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    dockercoins::pb::rng_client::RngClient::new(channel)
        .generate(dockercoins::pb::GenerateRequest { size: 8 })
        .await
        .unwrap();
    let (content_type, text) = scrape(addr).await;
    assert!(content_type.starts_with("application/openmetrics-text"));
    assert_eq!(sample(&text, LANE_COUNT), Some(0.0), "{text}");
    assert!(
        !text.contains("rpc_server_call_duration_seconds_count{"),
        "{text}"
    );
}

/// One Prometheus release everywhere: what compose and Kubernetes pull is
/// what `tests/build-stack-tools.sh` builds and the test above runs.
#[test]
fn compose_kubernetes_and_the_build_pin_one_prometheus() {
    let tag = |text: &str| -> Option<String> {
        text.lines().find_map(|line| {
            let tag = line.trim().strip_prefix("image: prom/prometheus:v")?;
            Some(tag.to_owned())
        })
    };
    let compose =
        tag(include_str!("../../docker-compose.yaml")).expect("compose's prometheus image");
    let k8s = tag(include_str!("../../deploy/k8s/base/prometheus.yaml"));
    assert_eq!(k8s, Some(compose.clone()));
    assert!(
        include_str!("../build-stack-tools.sh").contains(&format!("PROMETHEUS_RELEASE={compose} ")),
        "tests/build-stack-tools.sh does not build Prometheus {compose}"
    );
}
