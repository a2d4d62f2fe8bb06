//! A child process of this binary, started and read to its readiness line:
//! the line a server logs with the address it listens on (`listen=...`), or
//! the worker's first "mining" line, as it listens on nothing.
//!
//! `bench`, `floor` and `flood` run the mesh as such children, and so do the
//! integration tests (`dockercoins::bench::child`): one reader of the
//! readiness line, whichever log format the child writes (JSON for `bench`,
//! whose reader also wants the worker's last words; text for the tests,
//! which match log lines as people read them). The caller builds the command
//! (program, arguments, environment, stdin and stdout); the harness owns
//! stderr, which it reads, and kills the child when it is dropped.
//!
//! Not here: the private redis-server (`store::private_redis`), which is
//! ready when it accepts a connection, not when it logs a line, and which
//! `dockercoins up` starts too: plumbing that imports no command.

use crate::telemetry::fields;
use std::{process::Stdio, time::Duration};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// Why a child never said it was ready.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start it: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("it exited before its readiness line")]
    Exited,
    #[error("no readiness line within {0:?}")]
    Silent(Duration),
}

/// A running child, past its readiness line; killed when dropped.
pub struct Process {
    pub child: Child,
    /// The address of its readiness line; empty for the worker, which
    /// listens on none.
    pub listen: String,
    /// Every stderr line, from its first (the readiness line included)
    /// until stderr closes, which comes when the child exits: a line still
    /// in the pipe when it exits is read, not missed.
    pub lines: mpsc::UnboundedReceiver<String>,
}

/// Spawns `command` with stderr piped and kill-on-drop, and reads stderr
/// until its readiness line, for `within` at most.
pub async fn start(mut command: Command, within: Duration) -> Result<Process, StartError> {
    let mut child = command.stderr(Stdio::piped()).kill_on_drop(true).spawn()?;
    let mut stderr = BufReader::new(child.stderr.take().expect("piped above")).lines();
    let (said, lines) = mpsc::unbounded_channel();
    let listen = tokio::time::timeout(within, async {
        while let Ok(Some(line)) = stderr.next_line().await {
            let ready = readiness(&line);
            let _ = said.send(line);
            if ready.is_some() {
                return ready;
            }
        }
        None
    })
    .await
    .map_err(|_| StartError::Silent(within))?
    .ok_or(StartError::Exited)?;
    // Keep draining stderr, read or not, so the child never blocks on a
    // full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            let _ = said.send(line);
        }
    });
    Ok(Process {
        child,
        listen,
        lines,
    })
}

/// SIGTERM to `child`, as docker and kubernetes stop a container.
pub fn sigterm(child: &Child) -> std::io::Result<()> {
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("the child has already exited"))?;
    crate::shutdown::terminate(pid)
}

/// The address of a readiness line (empty for the worker's), `None` for
/// any other line; JSON lines by their fields, text lines by `listen=`.
fn readiness(line: &str) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(value) if value.is_object() => {
            let logged = &value["fields"];
            if let Some(listen) = logged[fields::LISTEN].as_str() {
                return Some(listen.to_owned());
            }
            (logged["message"].as_str() == Some(fields::WORKER_MINING)).then(String::new)
        }
        _ => {
            if let Some(rest) = line.split(&format!("{}=", fields::LISTEN)).nth(1) {
                return rest.split_whitespace().next().map(str::to_owned);
            }
            line.contains(fields::WORKER_MINING).then(String::new)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readiness_line_is_read_in_either_format() {
        let json = format!(
            r#"{{"level":"INFO","fields":{{"message":"rng: serving","{}":"127.0.0.1:4000"}}}}"#,
            fields::LISTEN
        );
        assert_eq!(readiness(&json).as_deref(), Some("127.0.0.1:4000"));
        let text = format!(
            "2026-01-01T00:00:00Z  INFO dockercoins::rng: serving {}=127.0.0.1:4001 lanes=4",
            fields::LISTEN
        );
        assert_eq!(readiness(&text).as_deref(), Some("127.0.0.1:4001"));
        let mining = format!(
            r#"{{"fields":{{"message":"{}","concurrency":8}}}}"#,
            fields::WORKER_MINING
        );
        assert_eq!(readiness(&mining).as_deref(), Some(""));
        let mining = format!("2026  INFO dockercoins::worker: {}", fields::WORKER_MINING);
        assert_eq!(readiness(&mining).as_deref(), Some(""));
        assert_eq!(readiness(r#"{"fields":{"message":"starting"}}"#), None);
        assert_eq!(readiness("2026  INFO starting"), None);
    }
}
