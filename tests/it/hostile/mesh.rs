//! rng and hasher without delays, and a webui in front of them, each on a
//! real socket.

use crate::helpers::{Spawned, spawn_hasher, spawn_rng};
use dockercoins::{
    config::{HasherConfig, RngConfig},
    pool::{Backend, PoolSettings},
    store::Store,
    webui::Webui,
};
use std::{net::SocketAddr, time::Duration};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub(super) struct WebuiServer {
    pub(super) addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl WebuiServer {
    async fn start(rng: &Spawned, hasher: &Spawned) -> Self {
        let pool = PoolSettings {
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let webui = Webui::new(
            Store::memory(),
            Backend::new("rng", &rng.url(), &pool).unwrap(),
            Backend::new("hasher", &hasher.url(), &pool).unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(dockercoins::webui::serve(listener, webui, async {
            let _ = stopped.await;
        }));
        Self { addr, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("webui did not stop")
            .unwrap()
            .unwrap();
    }
}

/// rng and hasher without delays, and a webui in front of them.
pub(super) async fn mesh() -> (Spawned, Spawned, WebuiServer) {
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let webui = WebuiServer::start(&rng, &hasher).await;
    (rng, hasher, webui)
}

/// Stops what [`mesh`] started, each within its own bound.
pub(super) async fn stop_mesh(rng: Spawned, hasher: Spawned, webui: WebuiServer) {
    webui.stop().await;
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}
