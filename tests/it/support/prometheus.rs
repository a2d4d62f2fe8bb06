//! A Prometheus of the test's own, scraping the test's servers: the 3.6.0
//! that the stack pins, built by `tests/build-stack-tools.sh`.

use super::{http::http1, ports::restartable_port};
use std::{net::SocketAddr, time::Duration};
use tokio::process::{Child, Command};

/// Where `tests/build-stack-tools.sh` puts Prometheus.
const BINARY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/stack-tools/prometheus");

/// Whether the pinned Prometheus is built; under CI its absence fails the
/// test (`.ci/run` builds it through `tests/run.sh`).
pub fn prometheus_built() -> bool {
    super::tools::built(std::path::Path::new(BINARY), "tests/build-stack-tools.sh")
}

/// A Prometheus of the test's own, on a free port, scraping `targets` (job
/// name and address) every second, with exemplar storage on; killed and its
/// directory removed when dropped.
pub struct Prometheus {
    _child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub async fn start(targets: &[(&str, &str)]) -> Self {
        let temp = tempfile::Builder::new()
            .prefix("dockercoins-prometheus-")
            .tempdir()
            .unwrap();
        let dir = temp.path();
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
        let child = Command::new(BINARY)
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
            dir: temp,
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
                self.dir.path().join("prometheus.log").display()
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
