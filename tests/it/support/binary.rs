//! The `dockercoins` binary as a child process of the test, read to its
//! readiness line by the binary's own harness (`dockercoins::bench::child`),
//! its log in text as people read it.

use dockercoins::bench::child::{self, Process};
use std::time::Duration;
use tokio::process::{Child, Command};

/// Starts `dockercoins <args>` and waits for its start-up log line; returns
/// the address it listens on (empty for the worker, which listens on none).
pub async fn start_binary(args: &[&str], envs: &[(&str, &str)]) -> (Child, String) {
    let (child, listen, _log) = start_binary_logged(args, envs).await;
    (child, listen)
}

/// Every stderr line of a child, as it comes.
pub type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// How long the binary may take to say it is ready.
const START_WITHIN: Duration = Duration::from_secs(30);

/// [`start_binary`], keeping the child's stderr lines.
pub async fn start_binary_logged(args: &[&str], envs: &[(&str, &str)]) -> (Child, String, Log) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dockercoins"));
    command
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("LOG_FORMAT")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(envs.iter().copied());
    let Process {
        child,
        listen,
        mut lines,
    } = child::start(command, START_WITHIN)
        .await
        .unwrap_or_else(|error| panic!("`dockercoins {}`: {error}", args.join(" ")));
    // The lines up to the readiness line are in the log when this returns;
    // the rest as they come.
    let log = Log::default();
    while let Ok(line) = lines.try_recv() {
        log.lock().unwrap().push(line);
    }
    let kept = log.clone();
    tokio::spawn(async move {
        while let Some(line) = lines.recv().await {
            kept.lock().unwrap().push(line);
        }
    });
    (child, listen, log)
}

pub async fn sigterm(child: &Child) {
    child::sigterm(child).unwrap();
}
