//! rng and hasher without delays, and a webui in front of them, each on a
//! real socket.

use crate::support::{Spawned, spawn_hasher, spawn_rng, spawn_webui};
use dockercoins::{hasher::HasherConfig, rng::RngConfig, store::Store, webui::WebuiError};

/// rng and hasher without delays, and a webui in front of them.
pub(super) async fn mesh() -> (Spawned, Spawned, Spawned<WebuiError>) {
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let webui = spawn_webui(Store::memory(), &rng.url(), &hasher.url()).await;
    (rng, hasher, webui)
}

/// Stops what [`mesh`] started, each within its own bound.
pub(super) async fn stop_mesh(rng: Spawned, hasher: Spawned, webui: Spawned<WebuiError>) {
    webui.stop().await.unwrap();
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}
