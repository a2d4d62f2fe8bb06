//! Spawning services on port 0 and talking to them over real sockets.

use bytes::Bytes;
use dockercoins::{
    config::{HasherConfig, RngConfig},
    pb::{hasher_client::HasherClient, rng_client::RngClient},
    server::ServeError,
};
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::{net::SocketAddr, time::Duration};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};
use tonic::transport::Channel;

/// A service running in this test's runtime.
pub struct Spawned {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Spawned {
    async fn start<F>(serve: impl FnOnce(TcpListener, oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = Result<(), ServeError>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, stopped));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    }

    /// Begins shutdown and does not wait for it.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Begins shutdown and waits for the server to return.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.begin_stop();
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("server did not stop within 5 s")
            .unwrap()
    }

    /// Waits for a server whose shutdown has begun.
    pub async fn join(&mut self, within: Duration) -> Result<(), ServeError> {
        tokio::time::timeout(within, &mut self.task)
            .await
            .expect("server did not stop in time")
            .unwrap()
    }
}

pub async fn spawn_rng(config: RngConfig) -> Spawned {
    Spawned::start(|listener, stop| async move {
        dockercoins::rng::serve(listener, config, async {
            let _ = stop.await;
        })
        .await
    })
    .await
}

pub async fn spawn_hasher(config: HasherConfig) -> Spawned {
    Spawned::start(|listener, stop| async move {
        dockercoins::hasher::serve(listener, config, async {
            let _ = stop.await;
        })
        .await
    })
    .await
}

pub async fn rng_client(server: &Spawned) -> RngClient<Channel> {
    RngClient::new(server.channel().await)
}

pub async fn hasher_client(server: &Spawned) -> HasherClient<Channel> {
    HasherClient::new(server.channel().await).max_encoding_message_size(64 * 1024 * 1024)
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn http1(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, Bytes) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(body.into()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// Lowercase hex SHA-256, computed here independently of the service.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
