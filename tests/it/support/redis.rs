//! A redis-server of the test's own, stopped, crashed and started again on
//! its port as a test needs.

use super::ports::restartable_port;
use std::time::Duration;

/// A redis-server of this test's own, on a free port, with an append-only
/// file in a directory of its own so it can be stopped and started again
/// with its data. Killed when dropped.
pub struct RedisServer {
    pub port: u16,
    /// Removed when the server is dropped.
    dir: tempfile::TempDir,
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
        let dir = tempfile::Builder::new()
            .prefix("dockercoins-test-redis-")
            .tempdir()
            .unwrap();
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
            .arg(self.dir.path())
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
                    let ours = std::fs::canonicalize(self.dir.path()).unwrap();
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
    }
}
