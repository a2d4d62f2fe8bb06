//! A redis-server child of this process, with no persistence, on a free
//! loopback port: the score of `dockercoins up` when no `REDIS_URL` is
//! given, and the Redis that `dockercoins bench` measures against.

use crate::client::backoff::Backoff;
use std::{future::Future, net::SocketAddr, process::Stdio, time::Duration};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    sync::mpsc,
};

/// How long a private redis-server may take to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a private redis-server did not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisStartError {
    #[error("cannot start redis-server: it exited with {status}: {said}")]
    Exited {
        status: std::process::ExitStatus,
        said: String,
    },
    #[error("cannot start redis-server: not accepting connections on {0} after {START_TIMEOUT:?}")]
    NotAccepting(SocketAddr),
    #[error("cannot start redis-server: {0}")]
    Io(#[from] std::io::Error),
}

/// A redis-server child of this process, with no persistence.
pub struct PrivateRedis {
    child: Child,
    port: u16,
    pub url: String,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free loopback port and waits until it
    /// accepts connections. `Ok(None)` when there is no redis-server on PATH.
    pub async fn start() -> Result<Option<Self>, RedisStartError> {
        let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
        Self::start_on(port).await
    }

    async fn start_on(port: u16) -> Result<Option<Self>, RedisStartError> {
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: Ctrl-C in the terminal reaches only us,
            // and the workers can still flush before we stop it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let output = forward_output(&mut child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_accepting(&mut child, output, addr).await?;
        Ok(Some(Self {
            child,
            port,
            url: format!("redis://{addr}"),
        }))
    }

    /// The child's process id, for reading its CPU time and memory.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the child now.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Keeps the child running until `stopped` resolves, then stops it. A
    /// child that exits (killed, out of memory) is started again on the same
    /// port: the workers still hold what the dead one had not acknowledged.
    pub async fn supervise(mut self, stopped: impl Future<Output = ()>) {
        tokio::pin!(stopped);
        let mut backoff = Backoff::default();
        loop {
            tokio::select! {
                () = &mut stopped => break,
                status = self.child.wait() => {
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    tracing::warn!(url = %self.url, %status, "the private redis-server exited; starting it again (the score restarts from zero)");
                    backoff.wait().await;
                    match Self::start_on(self.port).await {
                        Ok(Some(again)) => self = again,
                        Ok(None) | Err(_) => {
                            tracing::error!(url = %self.url, "cannot restart the private redis-server; the score is no longer kept");
                            stopped.await;
                            return;
                        }
                    }
                }
            }
        }
        let _ = self.child.kill().await;
    }
}

/// Each line the child writes, logged at debug and kept for an error that
/// says why it exited.
fn forward_output(child: &mut Child) -> Vec<mpsc::UnboundedReceiver<String>> {
    let mut output = Vec::new();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let (tx, rx) = mpsc::unbounded_channel();
        output.push(rx);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "redis-server", "{line}");
                let _ = tx.send(line);
            }
        });
    }
    output
}

/// Waits (at most [`START_TIMEOUT`]) until the child accepts on `addr`, or
/// says why it exited first.
async fn wait_accepting(
    child: &mut Child,
    output: Vec<mpsc::UnboundedReceiver<String>>,
    addr: SocketAddr,
) -> Result<(), RedisStartError> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(100));
    loop {
        if let Some(status) = child.try_wait()? {
            let mut said = Vec::new();
            for mut rx in output {
                while let Some(line) = rx.recv().await {
                    said.push(line);
                }
            }
            return Err(RedisStartError::Exited {
                status,
                said: said.join(" / "),
            });
        }
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(RedisStartError::NotAccepting(addr));
        }
        backoff.wait().await;
    }
}
