//! `dockercoins doctor`: a classroom machine checked before the lab, in plain
//! words, each problem with what to do about it: the ports the stack
//! publishes, Docker's engine and Compose, the stack's images, and the
//! machine (cores, memory, disk). Exit code 0 when the lab can run.
//!
//! It reads, it never changes anything: no image is pulled, no port taken
//! for longer than a bind.

use std::{net::TcpListener, path::Path, process::Stdio, time::Duration};
use tokio::process::Command;

/// The host ports `docker-compose.yaml` publishes: webui, rng and hasher
/// (through edge), Jaeger's UI, Prometheus.
pub const STACK_PORTS: [u16; 5] = [8000, 8001, 8002, 16686, 9090];

/// The images `docker-compose.yaml` runs (a test holds this list to it).
pub const STACK_IMAGES: [&str; 5] = [
    "dockercoins:dev",
    "redis:7.2.7-bookworm",
    "otel/opentelemetry-collector-contrib:0.144.0",
    "jaegertracing/jaeger:2.13.0",
    "prom/prometheus:v3.6.0",
];

/// Bound on each question asked of Docker: an engine that hangs is a
/// finding, not a hang.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Below this, ten workers and the tracing stack are cramped.
const MIN_MEMORY_MIB: u64 = 2048;
const MIN_DISK_MIB: u64 = 4096;

/// What to check.
#[derive(Clone, Debug)]
pub struct DoctorConfig {
    pub ports: Vec<u16>,
    /// The Docker command (`docker`).
    pub docker: String,
}

impl Default for DoctorConfig {
    fn default() -> Self {
        Self {
            ports: STACK_PORTS.to_vec(),
            docker: "docker".into(),
        }
    }
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    /// The lab runs, less well or after a step (a build, a pull).
    Warn,
    /// The lab cannot run until this is fixed.
    Fail,
}

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Finding {
    pub verdict: Verdict,
    pub what: String,
    /// What to do, for a warning or a failure.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Ok,
            what: what.into(),
            fix: None,
        }
    }

    fn problem(verdict: Verdict, what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            verdict,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every check, in the order a trainer fixes things.
pub async fn examine(config: &DoctorConfig) -> Vec<Finding> {
    let mut findings = check_ports(&config.ports);
    findings.extend(check_docker(&config.docker).await);
    findings.extend(check_machine().await);
    findings
}

/// The report as printed, and the exit code: 0 unless a check failed.
pub fn report(findings: &[Finding]) -> (String, i32) {
    let mut text = String::new();
    for finding in findings {
        let mark = match finding.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        text.push_str(&format!("{mark}  {}\n", finding.what));
        if let Some(fix) = &finding.fix {
            text.push_str(&format!("      -> {fix}\n"));
        }
    }
    let failed = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .count();
    if failed == 0 {
        text.push_str("The lab can run on this machine.\n");
    } else {
        text.push_str(&format!(
            "{failed} problem(s) to fix before the lab, said above.\n"
        ));
    }
    (text, i32::from(failed > 0))
}

/// Each port bound for an instant, on every address, as Docker would.
fn check_ports(ports: &[u16]) -> Vec<Finding> {
    let taken: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|&port| TcpListener::bind(("0.0.0.0", port)).is_err())
        .collect();
    if taken.is_empty() {
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        return vec![Finding::ok(format!("ports {} are free", list.join(", ")))];
    }
    taken
        .into_iter()
        .map(|port| {
            Finding::problem(
                Verdict::Fail,
                format!("port {port} is taken by another program (the stack publishes it)"),
                format!(
                    "find it with `sudo ss -ltnp 'sport = :{port}'` and stop it \
                     (a previous lab: `docker compose down` in its folder)"
                ),
            )
        })
        .collect()
}

/// Runs `docker args...` with a bound; `Err` says why it gave nothing.
async fn docker(docker: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(docker)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(DOCKER_TIMEOUT, output).await {
        Err(_) => Err(format!("no answer within {DOCKER_TIMEOUT:?}")),
        Ok(Err(error)) => Err(error.to_string()),
        Ok(Ok(output)) if output.status.success() => {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        }
        Ok(Ok(output)) => Err(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
    }
}

/// The engine, Compose, and the stack's images.
async fn check_docker(command: &str) -> Vec<Finding> {
    let server = docker(command, &["version", "--format", "{{.Server.Version}}"]).await;
    let version = match server {
        Ok(version) => version,
        Err(reason) => {
            let installed = docker(command, &["--version"]).await.is_ok();
            return vec![if installed {
                Finding::problem(
                    Verdict::Fail,
                    format!("Docker's engine does not answer ({reason})"),
                    "start it (`sudo systemctl start docker`), and check that you may use it \
                     (`sudo usermod -aG docker $USER`, then log in again)",
                )
            } else {
                Finding::problem(
                    Verdict::Fail,
                    "Docker is not installed (no `docker` command)",
                    "install Docker's engine and Compose (`sudo apt-get install docker.io \
                     docker-compose`), or run the lab without Docker: \
                     `cargo run --release -- up --workers 10`",
                )
            }];
        }
    };
    let mut findings = vec![engine_finding(&version)];
    findings.push(compose_finding(command).await);
    findings.extend(image_findings(command).await);
    findings
}

fn engine_finding(version: &str) -> Finding {
    if version.starts_with("20.10") {
        return Finding::problem(
            Verdict::Warn,
            format!("Docker engine {version}"),
            "20.10 can keep a stale endpoint when containers are scaled down and up: if \
             `docker compose up` says \"endpoint with name ... already exists\", run \
             `docker compose down` then `sudo systemctl restart docker`",
        );
    }
    Finding::ok(format!("Docker engine {version}"))
}

async fn compose_finding(command: &str) -> Finding {
    if let Ok(version) = docker(command, &["compose", "version", "--short"]).await {
        return Finding::ok(format!("Docker Compose v2 ({version})"));
    }
    match docker("docker-compose", &["version", "--short"]).await {
        Ok(version) => Finding::problem(
            Verdict::Warn,
            format!("only Compose v1 (docker-compose {version})"),
            "the base file runs, but the lab's overrides (`-f docker-compose.slow-rng.yaml`) \
             need Compose v2: `sudo apt-get install docker-compose-plugin` (Docker's \
             repository) or the plugin binary in ~/.docker/cli-plugins",
        ),
        Err(_) => Finding::problem(
            Verdict::Fail,
            "no Docker Compose (neither `docker compose` nor `docker-compose`)",
            "install the Compose plugin: `sudo apt-get install docker-compose-plugin`, or \
             `docker-compose`",
        ),
    }
}

async fn image_findings(command: &str) -> Vec<Finding> {
    let mut missing = Vec::new();
    for image in STACK_IMAGES {
        if docker(command, &["image", "inspect", "--format", "{{.Id}}", image])
            .await
            .is_err()
        {
            missing.push(image);
        }
    }
    if missing.is_empty() {
        return vec![Finding::ok(format!(
            "the stack's {} images are here",
            STACK_IMAGES.len()
        ))];
    }
    vec![Finding::problem(
        Verdict::Warn,
        format!("images not on this machine yet: {}", missing.join(", ")),
        "online: `docker compose build` and `docker compose pull` before the class \
         (minutes; the dockercoins image is a Rust build); offline, from a machine that \
         has them: `deploy/offline.sh save` there, `deploy/offline.sh load` here \
         (docs/offline.md)",
    )]
}

/// Cores, architecture, memory and disk.
async fn check_machine() -> Vec<Finding> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut findings = vec![Finding::ok(format!(
        "{cores} core(s), {}",
        std::env::consts::ARCH
    ))];
    if let Some(mib) = available_memory_mib() {
        findings.push(enough(
            mib,
            MIN_MEMORY_MIB,
            "of memory available",
            "close other programs, or run the lab without the tracing stack: \
             `cargo run --release -- up --workers 10`",
        ));
    }
    if let Some(mib) = free_disk_mib(Path::new(".")).await {
        findings.push(enough(
            mib,
            MIN_DISK_MIB,
            "of disk free here",
            "the images and a build need a few GiB: `docker system prune` frees old ones",
        ));
    }
    findings
}

/// `mib` MiB `what`: fine from `min` on, a warning with `fix` below.
fn enough(mib: u64, min: u64, what: &str, fix: &str) -> Finding {
    if mib >= min {
        Finding::ok(format!("{mib} MiB {what}"))
    } else {
        Finding::problem(Verdict::Warn, format!("only {mib} MiB {what}"), fix)
    }
}

/// `MemAvailable` from /proc/meminfo (Linux); `None` elsewhere.
fn available_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Free space where `path` is, from POSIX `df -Pk` (no unsafe statvfs here).
async fn free_disk_mib(path: &Path) -> Option<u64> {
    let output = Command::new("df")
        .arg("-Pk")
        .arg(path)
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_fails_only_on_a_failure() {
        let warn = Finding::problem(Verdict::Warn, "old", "update");
        let (text, code) = report(&[Finding::ok("fine"), warn.clone()]);
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("warn  old\n      -> update"), "{text}");
        let fail = Finding::problem(Verdict::Fail, "broken", "mend");
        let (text, code) = report(&[warn, fail]);
        assert_eq!(code, 1);
        assert!(text.contains("1 problem(s)"), "{text}");
    }

    #[test]
    fn docker_20_10_gets_the_stale_endpoint_hint() {
        assert_eq!(engine_finding("20.10.24").verdict, Verdict::Warn);
        assert_eq!(engine_finding("28.2.2").verdict, Verdict::Ok);
    }
}
