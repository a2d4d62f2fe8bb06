//! rng, hasher and webui running in the test's own runtime on port 0, the
//! generated clients that call them, and the waits on what they serve.

use super::http::metric;
use dockercoins::{
    client::balancer::BalancerSettings,
    client::{BalancedHasher, BalancedRng},
    hasher::HasherConfig,
    pb::{hasher_client::HasherClient as HasherStub, rng_client::RngClient as RngStub},
    rng::RngConfig,
    server::ServeError,
    server::connections::ConnectionLimits,
    store::Store,
    webui::{Webui, WebuiError},
};
use std::{net::SocketAddr, time::Duration};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// A server running in this test's runtime: rng and hasher (whose errors
/// are [`ServeError`]s), webui ([`WebuiError`]s).
pub struct Spawned<E = ServeError> {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), E>>,
}

impl<E: Send + 'static> Spawned<E> {
    /// Binds 127.0.0.1:0 and runs `serve` on it in a task.
    pub async fn start<F>(serve: impl FnOnce(TcpListener, oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), serve).await
    }

    /// Binds `addr` (a server started again on its port) and runs `serve`
    /// on it in a task.
    pub async fn start_on<F>(
        addr: SocketAddr,
        serve: impl FnOnce(TcpListener, oneshot::Receiver<()>) -> F,
    ) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await.unwrap();
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

    /// Whether the server still serves (it has not returned).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Begins shutdown and does not wait for it.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Begins shutdown and waits for the server to return.
    pub async fn stop(mut self) -> Result<(), E> {
        self.begin_stop();
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("server did not stop within 5 s")
            .unwrap()
    }

    /// Waits for a server whose shutdown has begun.
    pub async fn join(&mut self, within: Duration) -> Result<(), E> {
        tokio::time::timeout(within, &mut self.task)
            .await
            .expect("server did not stop in time")
            .unwrap()
    }
}

pub async fn spawn_rng(config: RngConfig) -> Spawned {
    spawn_rng_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
}

/// rng on `addr`: a replica started again on the port it had.
pub async fn spawn_rng_on(addr: SocketAddr, config: RngConfig) -> Spawned {
    Spawned::start_on(addr, |listener, stop| async move {
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

/// A webui in front of `rng` and `hasher`, with `store`.
pub async fn spawn_webui(store: Store, rng: &str, hasher: &str) -> Spawned<WebuiError> {
    spawn_webui_on(SocketAddr::from(([127, 0, 0, 1], 0)), store, rng, hasher).await
}

/// A webui on `addr`: one that comes up where a client already looks.
pub async fn spawn_webui_on(
    addr: SocketAddr,
    store: Store,
    rng: &str,
    hasher: &str,
) -> Spawned<WebuiError> {
    start_webui(addr, webui_of(store, rng, hasher)).await
}

/// A webui that holds connections within `limits`.
pub async fn spawn_webui_limited(
    limits: ConnectionLimits,
    store: Store,
    rng: &str,
    hasher: &str,
) -> Spawned<WebuiError> {
    let webui = webui_of(store, rng, hasher).with_connection_limits(limits);
    start_webui(SocketAddr::from(([127, 0, 0, 1], 0)), webui).await
}

/// A webui in front of `rng` and `hasher`, its clients quick to give up.
fn webui_of(store: Store, rng: &str, hasher: &str) -> Webui {
    let balancer = BalancerSettings {
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    Webui::new(
        store,
        BalancedRng::new(rng, &balancer).unwrap(),
        BalancedHasher::new(hasher, &balancer).unwrap(),
    )
}

async fn start_webui(addr: SocketAddr, webui: Webui) -> Spawned<WebuiError> {
    Spawned::start_on(addr, |listener, stop| async move {
        dockercoins::webui::serve(listener, webui, async {
            let _ = stop.await;
        })
        .await
    })
    .await
}

/// A `grpc.health.v1` Watch of rng on `channel`, as a balancing client
/// keeps one; its first answer, SERVING, already read.
pub async fn watch_rng_health(
    channel: Channel,
) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "dockercoins.v1.Rng".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    watch
}

/// The generated client on a fresh connection: what any gRPC client sends.
pub async fn rng_client(server: &Spawned) -> RngStub<Channel> {
    RngStub::new(server.channel().await)
}

/// The generated client on a fresh connection: what any gRPC client sends.
pub async fn hasher_client(server: &Spawned) -> HasherStub<Channel> {
    HasherStub::new(server.channel().await).max_encoding_message_size(64 * 1024 * 1024)
}

/// One Rng/Generate call of 32 bytes through a client (balancing, retries,
/// TLS: whatever its backend does); the number of bytes it returned.
pub async fn generate_through(rng: &BalancedRng) -> Result<usize, tonic::Status> {
    rng.generate(32).await.map(|data| data.len())
}

/// rng with one lane of `delay` and no queue: busy with one call, it
/// refuses the next at once (RESOURCE_EXHAUSTED with a pushback).
pub fn one_lane_no_queue(delay: Duration) -> RngConfig {
    RngConfig {
        delay,
        lanes: Some(1),
        queue: 0,
        ..RngConfig::classroom()
    }
}

/// Waits until the rng at `addr` serves one gRPC call (the one holding its
/// lane; its /metrics is not in the lane), for `within` at most.
pub async fn wait_for_a_call_in_rngs_lane(addr: SocketAddr, within: Duration) {
    let in_flight = r#"rpc_server_calls_in_flight{rpc_service="dockercoins.v1.Rng"}"#;
    let deadline = tokio::time::Instant::now() + within;
    while metric(addr, in_flight).await != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rng never served the call holding its lane within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
