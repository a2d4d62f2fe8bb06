//! `dockercoins top`, as a user runs it: one reading as JSON from a running
//! mesh's webui; the live screen in a pseudo-terminal, quit by `q` or
//! Ctrl-C with the terminal given back; webui unreachable, retried on the
//! screen and a one-line error for `--once`.

use crate::{
    pty::Pty,
    support::{
        RedisServer, RunningWorker, Spawned, http1, restartable_port, spawn_hasher, spawn_rng,
        spawn_webui, spawn_webui_on,
    },
};
use dockercoins::{
    hasher::HasherConfig, rng::RngConfig, store::Store, webui::WebuiError, worker::WorkerConfig,
};
use rustix::termios::LocalModes;
use serde_json::Value;
use std::{
    net::SocketAddr,
    process::{ExitStatus, Output},
    time::{Duration, Instant},
};
use tokio::process::{Child, Command};

/// A mesh of the test's own: rng with one lane and 10 ms a call (the slow
/// hop, as in the classroom, only faster), a turbo hasher, a worker making
/// unary calls, webui, and a redis-server when the test needs Redis's hop.
struct Mesh {
    rng: Spawned,
    hasher: Spawned,
    worker: RunningWorker,
    webui: Spawned<WebuiError>,
    _redis: Option<RedisServer>,
}

impl Mesh {
    async fn start(with_redis: bool) -> Self {
        let rng = spawn_rng(RngConfig {
            delay: Duration::from_millis(10),
            lanes: Some(1),
            ..RngConfig::turbo()
        })
        .await;
        let hasher = spawn_hasher(HasherConfig::turbo()).await;
        let redis = match with_redis {
            true => Some(RedisServer::start_ephemeral().await),
            false => None,
        };
        let store = || match &redis {
            Some(redis) => Store::redis(&redis.url(), Duration::from_millis(500)).unwrap(),
            None => Store::memory(),
        };
        let worker = WorkerConfig {
            concurrency: 2,
            batch: 0,
            ..WorkerConfig::turbo()
        };
        let worker = RunningWorker::start(worker, &rng.url(), &hasher.url(), store());
        let webui = spawn_webui(store(), &rng.url(), &hasher.url()).await;
        Self {
            rng,
            hasher,
            worker,
            webui,
            _redis: redis,
        }
    }

    /// Waits (bounded) until webui's per-hop view has a p50 for rng and
    /// hasher: its sampler has asked them twice.
    async fn wait_for_hops(&self) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, _, body) = http1(self.webui.addr, "GET", "/api/hops", "").await;
            let hops: Value = serde_json::from_slice(&body).unwrap_or_default();
            let measured = |hop: &str| hops[hop][0]["p50_ms"].is_number();
            if measured("rng") && measured("hasher") {
                return hops;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "webui's /api/hops had no p50 for rng and hasher within 20 s: {hops}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.worker.stop().await;
        self.webui.stop().await.unwrap();
        self.rng.stop().await.unwrap();
        self.hasher.stop().await.unwrap();
    }
}

/// `dockercoins top <args>`, none of its settings taken from the
/// environment of whoever runs the tests.
fn top(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dockercoins"));
    command.arg("top").args(args);
    for name in ["TOP_WEBUI", "TOP_INTERVAL_MS", "TOP_ONCE", "TOP_JSON"] {
        command.env_remove(name);
    }
    command
}

async fn output_within(command: &mut Command, within: Duration) -> Output {
    tokio::time::timeout(within, command.output())
        .await
        .unwrap_or_else(|_| panic!("no exit within {within:?}"))
        .unwrap()
}

/// A loopback URL where nothing listens.
fn dead_webui() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    format!("http://{addr}")
}

/// What the scripts get: one JSON object, with every field documented in
/// docs/top.md, read from a running mesh.
#[tokio::test]
async fn once_json_reads_the_running_mesh() {
    let mesh = Mesh::start(true).await;
    mesh.wait_for_hops().await;
    let url = mesh.webui.url();
    let begun = Instant::now();
    let output = output_within(
        &mut top(&["--once", "--json", "--webui", &url]),
        Duration::from_secs(30),
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.trim_end().lines().count(), 1, "one object: {stdout}");
    let reading: Value = serde_json::from_str(&stdout).unwrap();
    println!("--once --json took {:?}: {reading:#}", begun.elapsed());
    assert_eq!(reading["webui"], url.as_str());
    assert!(reading["unreachable"].is_null(), "{reading}");
    assert!(reading["score_error"].is_null(), "{reading}");
    assert!(reading["hashes"].as_u64().unwrap() > 0, "{reading}");
    assert!(reading["coins"].is_u64(), "{reading}");
    assert!(
        reading["hashes_per_second"].as_f64().unwrap() > 0.0,
        "{reading}"
    );
    let history = reading["history"].as_array().unwrap();
    assert!(!history.is_empty(), "{reading}");
    assert!(history.iter().all(|point| {
        point["t"].is_f64()
            && point["hashes_per_second"]
                .as_f64()
                .is_some_and(|r| r >= 0.0)
    }));
    assert_eq!(reading["hops_window_seconds"], 5.0);
    for hop in ["rng", "hasher", "redis"] {
        let row = reading["hops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["hop"] == hop)
            .unwrap_or_else(|| panic!("no {hop} row: {reading}"));
        for field in ["calls_per_second", "p50_ms", "p99_ms"] {
            assert!(row[field].is_number(), "{hop} {field}: {reading}");
        }
        let state = if hop == "redis" { "UP" } else { "SERVING" };
        assert_eq!(row["state"], state, "{reading}");
        // The load each replica reports with its answers (ORCA), read by
        // webui's health check; Redis sends none. One replica per backend:
        // round robin, so no weighted share.
        let load = &row["utilization"];
        match hop {
            "redis" => assert!(load.is_null(), "{hop} utilization: {reading}"),
            _ => assert!(
                load.as_f64().is_some_and(|u| u >= 0.0),
                "{hop} utilization: {reading}"
            ),
        }
        assert!(row["share"].is_null(), "{hop} share: {reading}");
    }
    assert_eq!(reading["hops"][0]["replica"], mesh.rng.addr.to_string());
    assert!(reading["hops"][0]["queue"].is_u64(), "{reading}");
    assert!(reading["rng_queue"].is_u64(), "{reading}");
    assert_eq!(reading["slow_hop"], "rng", "{reading}");
    assert_eq!(
        reading["replicas"],
        serde_json::json!({"rng": 1, "hasher": 1})
    );
    assert_eq!(reading["policy"], "round_robin");
    mesh.stop().await;
}

/// Whether the output shows `hashes/s` with a number after it.
fn rate_drawn(screen: &str) -> bool {
    screen
        .match_indices("hashes/s ")
        .any(|(at, found)| screen[at + found.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// Raw mode on (no line editing, no echo), and the alternate screen.
fn assert_taken(pty: &Pty) {
    let modes = pty.local_modes();
    assert!(
        !modes.intersects(LocalModes::ICANON | LocalModes::ECHO),
        "not in raw mode: {modes:?}"
    );
    assert!(pty.output().contains("\x1b[?1049h"), "no alternate screen");
}

/// `top` exits 0 within 5 s of a key, and gives the terminal back: cursor
/// shown, the main screen back, line editing and echo on again.
async fn assert_quits_and_restores(pty: &Pty, mut top: Child, key: &[u8]) -> ExitStatus {
    pty.send(key);
    let status = tokio::time::timeout(Duration::from_secs(5), top.wait())
        .await
        .unwrap_or_else(|_| panic!("top did not quit within 5 s of {key:?}"))
        .unwrap();
    // The child has written its last bytes; the pty's reader may not have
    // read them yet.
    pty.wait_for(
        "the main screen and the cursor restored",
        Duration::from_secs(5),
        |output| {
            let entered = output.rfind("\x1b[?1049h").unwrap_or(0);
            let after = &output[entered..];
            after.contains("\x1b[?1049l") && after.contains("\x1b[?25h")
        },
    )
    .await;
    let modes = pty.local_modes();
    assert!(
        modes.contains(LocalModes::ICANON | LocalModes::ECHO),
        "terminal left in raw mode: {modes:?}"
    );
    status
}

/// The row starting with `start` as last drawn, to the next escape sequence.
fn last_row<'a>(screen: &'a str, start: &str) -> Option<&'a str> {
    let at = screen.rfind(start)?;
    let row = &screen[at..];
    Some(&row[..row.find('\x1b').unwrap_or(row.len())])
}

/// The live screen in an 80x24 terminal: hashes/s and each hop as the page
/// shows them, with the load each replica reports; `q` quits.
#[tokio::test]
async fn the_live_screen_shows_the_mesh_and_q_restores_the_terminal() {
    let mesh = Mesh::start(false).await;
    let pty = Pty::open(80, 24);
    let begun = Instant::now();
    let top = pty.spawn(&["top", "--webui", &mesh.webui.url()]);
    let rng_row = format!("rng    {}", mesh.rng.addr);
    let hasher_row = format!("hasher {}", mesh.hasher.addr);
    pty.wait_for(
        "hashes/s with a number, rng's and hasher's rows, the verdict",
        Duration::from_secs(20),
        |screen| {
            rate_drawn(screen)
                && screen.contains(&rng_row)
                && screen.contains(&hasher_row)
                && screen.contains("SERVING")
                && screen.contains("rng is the slow hop")
                && screen.contains("policy: round_robin")
                && screen.contains("waiting  load share")
                // rng's load as a percentage; its share `–` (one replica).
                && last_row(screen, &rng_row).is_some_and(|row| row.ends_with("%     –"))
        },
    )
    .await;
    println!("screen complete after {:?}", begun.elapsed());
    assert_taken(&pty);
    let status = assert_quits_and_restores(&pty, top, b"q").await;
    assert!(status.success(), "{status}");
    mesh.stop().await;
}

/// webui not there: said on the screen, asked again until it answers;
/// Ctrl-C (a byte in raw mode, not a signal) quits.
#[tokio::test]
async fn an_unreachable_webui_is_retried_on_screen_and_ctrl_c_restores_the_terminal() {
    let addr = SocketAddr::from(([127, 0, 0, 1], restartable_port()));
    let url = format!("http://{addr}");
    let pty = Pty::open(80, 24);
    let top = pty.spawn(&["top", "--webui", &url, "--interval-ms", "200"]);
    pty.wait_for("the unreachable line", Duration::from_secs(10), |screen| {
        screen.contains(&format!("webui at {url} unreachable: cannot connect"))
            && screen.contains("retrying")
    })
    .await;
    assert_taken(&pty);
    // webui comes up where top looks: its score appears (0 in a new store).
    let dead = "http://127.0.0.1:1";
    let webui = spawn_webui_on(addr, Store::memory(), dead, dead).await;
    pty.wait_for(
        "the score, once webui is up",
        Duration::from_secs(10),
        |screen| screen.contains("hashes 0 "),
    )
    .await;
    let status = assert_quits_and_restores(&pty, top, b"\x03").await;
    assert!(status.success(), "{status}");
    webui.stop().await.unwrap();
}

/// A script gets a non-zero exit and one line saying what is wrong.
#[tokio::test]
async fn once_against_an_unreachable_webui_fails_in_one_line() {
    let url = dead_webui();
    for args in [vec!["--once"], vec!["--once", "--json"]] {
        let mut command = top(&args);
        command.args(["--webui", &url]);
        let output = output_within(&mut command, Duration::from_secs(10)).await;
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!(
                "dockercoins top: webui at {url} unreachable: cannot connect to"
            )),
            "{stderr}"
        );
    }
}

/// Into a pipe, the live screen would be escape codes in a file: refused,
/// with what to use instead.
#[tokio::test]
async fn without_a_terminal_top_says_to_use_once() {
    let output = output_within(
        &mut top(&["--webui", &dead_webui()]),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("stdout is not a terminal"), "{stderr}");
    assert!(stderr.contains("--once --json"), "{stderr}");
}
