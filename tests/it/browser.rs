//! The page in a real browser: `dockercoins up --workers 10` (classroom)
//! opened in Debian's Chromium by `tests/browser/page.mjs` (playwright-core),
//! judged on what a student reads: the big number against Redis, the chart,
//! the verdict and the table (with the load each replica reports and its
//! weighted share), no error of any kind, a fit on a projector and on a
//! phone, an accessibility scan; then one worker, where no hop stands out.
//! Screenshots are left in `target/browser/` for a person to look at.

use crate::support::{RedisServer, built, have, http1, restartable_port, sigterm, start_binary};
use serde_json::Value;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::process::Child;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Whether Chromium, Node and the script's packages are here (tests/run.sh
/// installs them); under CI their absence fails the test.
fn browser_ready() -> bool {
    let installed = Path::new(MANIFEST_DIR).join("tests/browser/node_modules/playwright-core");
    built(&installed, "npm ci in tests/browser (tests/run.sh)")
        && have("node", "--version")
        && have("chromium", "--version")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `dockercoins up` with `workers` classroom workers on `redis`, until dropped.
struct Mesh {
    child: Child,
    webui: SocketAddr,
}

impl Mesh {
    async fn start(workers: usize, redis: &RedisServer) -> Self {
        let [rng, hasher, webui] = [(); 3].map(|_| format!("127.0.0.1:{}", restartable_port()));
        let workers = workers.to_string();
        let (child, _) = start_binary(
            &[
                "up",
                "--workers",
                &workers,
                "--redis",
                &redis.url(),
                "--rng-listen",
                &rng,
                "--hasher-listen",
                &hasher,
                "--webui-listen",
                &webui,
            ],
            &[],
        )
        .await;
        let webui: SocketAddr = webui.parse().unwrap();
        // The first server's line made start_binary return: webui may come
        // after it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while http1(webui, "GET", "/json", "").await.0 != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "webui's /json did not answer 200 within 30 s of up's start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, webui }
    }

    async fn stop(mut self) {
        sigterm(&self.child).await;
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("up did not stop within 10 s of SIGTERM")
            .unwrap();
        assert!(status.success(), "up exited with {status}");
    }
}

/// Runs page.mjs in `mode` against `webui`; its report.
async fn open_page(webui: SocketAddr, mode: &str) -> Value {
    let shots = shots_dir();
    std::fs::create_dir_all(&shots).unwrap();
    let run = tokio::process::Command::new("node")
        .current_dir(MANIFEST_DIR)
        .arg("tests/browser/page.mjs")
        .arg(format!("http://{webui}/"))
        .arg(&shots)
        .arg(mode)
        .kill_on_drop(true)
        .output();
    // page.mjs bounds each of its waits by 90 s.
    let output = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("page.mjs did not finish within 240 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "page.mjs {mode}: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "page.mjs printed no report ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// `target/browser`, beside the tests' own temporary folder.
fn shots_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("browser")
}

/// A latency as the page writes it ("750 ms", "98.5 ms", "850 µs"), in ms.
fn page_ms(text: &str) -> Option<f64> {
    let (number, unit) = text.split_once(' ')?;
    let number: f64 = number.parse().ok()?;
    match unit {
        "ms" => Some(number),
        "µs" => Some(number / 1000.0),
        _ => None,
    }
}

/// The p50 of `hop`'s first row, in ms.
fn p50_of(report: &Value, hop: &str) -> f64 {
    let row = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["hop"] == hop)
        .unwrap_or_else(|| panic!("no {hop} row: {report}"));
    page_ms(row["p50"].as_str().unwrap()).unwrap_or_else(|| panic!("{hop}'s p50: {row}"))
}

/// A percentage as the page writes it ("1000%", "60%").
fn page_percent(text: &str) -> Option<u64> {
    text.strip_suffix('%')?.parse().ok()
}

/// The load and share columns: headers that explain themselves; for rng
/// and hasher a percentage or `–` (no report yet; a share needs two
/// replicas with weights), `–` for the share of a backend's only replica;
/// blank for Redis, which sends no report. Returns rng's first load.
fn assert_load_and_share(report: &Value) -> Option<u64> {
    let headers = report["headers"].as_array().unwrap();
    for (header, says) in [("load", "ORCA"), ("share", "weighted_round_robin")] {
        let th = headers
            .iter()
            .find(|th| th["text"] == header)
            .unwrap_or_else(|| panic!("no {header} column: {report}"));
        assert!(
            th["title"].as_str().unwrap().contains(says),
            "{header}'s tooltip: {th}"
        );
    }
    let rows = report["rows"].as_array().unwrap();
    for row in rows {
        let (load, share) = (
            row["load"].as_str().unwrap_or(""),
            row["share"].as_str().unwrap_or(""),
        );
        if row["hop"] == "redis" {
            assert_eq!((load, share), ("", ""), "{row}");
            continue;
        }
        for text in [load, share] {
            assert!(text == "–" || page_percent(text).is_some(), "{row}");
        }
        let replicas = rows.iter().filter(|r| r["hop"] == row["hop"]).count();
        if replicas == 1 {
            assert_eq!(share, "–", "one replica, round robin: {row}");
        }
    }
    let rng = rows.iter().find(|r| r["hop"] == "rng")?;
    page_percent(rng["load"].as_str()?)
}

/// Nothing went wrong in the browser: no console error, failed request or
/// blocked resource.
fn assert_clean(report: &Value) {
    for kind in ["console_errors", "failed_requests", "csp_violations"] {
        assert_eq!(report[kind], serde_json::json!([]), "{kind}: {report}");
    }
}

/// `hashes` in Redis and when it was read (unix seconds).
type RedisSamples = Arc<Mutex<Vec<(f64, u64)>>>;

/// `hashes` in Redis, read every 200 ms, until the task is aborted.
fn sample_redis(redis: &RedisServer) -> (RedisSamples, tokio::task::JoinHandle<()>) {
    let samples = RedisSamples::default();
    let url = redis.url();
    let kept = samples.clone();
    let task = tokio::spawn(async move {
        let mut connection = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        loop {
            let hashes: Option<u64> = redis::cmd("GET")
                .arg("hashes")
                .query_async(&mut connection)
                .await
                .unwrap();
            kept.lock().unwrap().push((unix_now(), hashes.unwrap_or(0)));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (samples, task)
}

/// `hashes` at `t`, between the two samples around it.
fn hashes_at(samples: &[(f64, u64)], t: f64) -> f64 {
    let after = samples
        .iter()
        .position(|s| s.0 >= t)
        .expect("no sample after t");
    assert!(after > 0, "no sample before {t}");
    let ((t0, h0), (t1, h1)) = (samples[after - 1], samples[after]);
    h0 as f64 + (h1 as f64 - h0 as f64) * (t - t0) / (t1 - t0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_a_student_the_lab() {
    if !browser_ready() {
        return;
    }
    // No append-only file: an fsync per write stalled Redis past webui's
    // 500 ms bound on a machine flushing a fresh build to disk (CI), and
    // the page's poll got a 503. The page needs no persistence.
    let redis = RedisServer::start_ephemeral().await;
    let mesh = Mesh::start(10, &redis).await;
    let (samples, sampler) = sample_redis(&redis);
    let report = open_page(mesh.webui, "lab").await;
    sampler.abort();
    mesh.stop().await;
    eprintln!("page report: {report}");
    assert_clean(&report);

    assert!(
        report["chart"]["points"].as_u64().unwrap() >= 10,
        "{report}"
    );
    // The big number is the rate over the page's last 5 s of /json; Redis's
    // over the 5 s before the last poll (up to a second before the reading).
    let samples = samples.lock().unwrap().clone();
    let mut errors: Vec<f64> = report["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|reading| {
            let t = reading["t"].as_f64().unwrap();
            let shown: f64 = reading["text"]
                .as_str()
                .unwrap()
                .replace(',', "")
                .parse()
                .unwrap();
            let redis = (hashes_at(&samples, t - 0.5) - hashes_at(&samples, t - 5.5)) / 5.0;
            eprintln!("big number {shown}, Redis {redis:.2} hashes/s");
            (shown - redis).abs() / redis
        })
        .collect();
    errors.sort_by(f64::total_cmp);
    assert!(
        errors[2] <= 0.15,
        "the big number is off Redis's rate: {errors:?}"
    );

    // The lab's answer: rng waits, hasher does not.
    assert_eq!(report["verdict_names"], "rng", "{report}");
    assert!(
        report["verdict"]
            .as_str()
            .unwrap()
            .contains("requests waiting"),
        "{report}"
    );
    let (rng, hasher) = (p50_of(&report, "rng"), p50_of(&report, "hasher"));
    assert!((600.0..=1100.0).contains(&rng), "rng's p50 {rng} ms");
    assert!((80.0..=200.0).contains(&hasher), "hasher's p50 {hasher} ms");
    // rng says it is over full: its lane busy, requests waiting.
    let load = assert_load_and_share(&report);
    assert!(
        load.is_some_and(|load| load > 100),
        "rng's load {load:?}: {report}"
    );

    // A projector and a phone: no sideways scroll, the big number legible.
    for size in report["viewports"].as_array().unwrap() {
        assert_eq!(size["page_scrolls"], false, "{size}");
        assert_eq!(size["table_scrolls"], false, "{size}");
        assert_eq!(size["rate_visible"], true, "{size}");
        assert!(size["rate_font_px"].as_f64().unwrap() >= 40.0, "{size}");
        assert!(Path::new(size["shot"].as_str().unwrap()).exists(), "{size}");
    }
    let serious: Vec<&Value> = report["axe"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["impact"] == "serious" || v["impact"] == "critical")
        .collect();
    assert!(serious.is_empty(), "axe-core: {serious:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_one_worker_no_hop_stands_out() {
    if !browser_ready() {
        return;
    }
    let redis = RedisServer::start_ephemeral().await;
    let mesh = Mesh::start(1, &redis).await;
    let report = open_page(mesh.webui, "verdict").await;
    mesh.stop().await;
    eprintln!("page report: {report}");
    assert_clean(&report);
    // Classroom: rng and hasher both pay 100 ms; nothing waits in rng's lane.
    let (rng, hasher) = (p50_of(&report, "rng"), p50_of(&report, "hasher"));
    assert!(
        rng.max(hasher) < 1.5 * rng.min(hasher),
        "rng {rng} ms, hasher {hasher} ms"
    );
    assert_eq!(report["verdict_names"], Value::Null, "{report}");
    assert_load_and_share(&report);
    assert!(
        report["verdict"]
            .as_str()
            .unwrap()
            .starts_with("No hop stands out"),
        "{report}"
    );
}
