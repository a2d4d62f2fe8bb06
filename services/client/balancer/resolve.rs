//! Finding a backend's replicas: the resolver (the system's, or a closure in
//! tests and `up`), and the task that asks it again every few seconds and
//! swaps in the new set of replicas, keeping the connections of the
//! addresses that stay.

use super::{Shared, configure, health, replica::Replica};
use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Weak},
};
use tonic::transport::{Channel, Endpoint};

/// Turns a host and port into addresses: the system resolver by default, a
/// closure in tests.
pub type Resolver = Arc<
    dyn Fn(String, u16) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
        + Send
        + Sync,
>;

/// The system's resolver (Docker's embedded DNS, a Kubernetes headless
/// Service: one address per replica).
pub fn system_resolver() -> Resolver {
    Arc::new(|host, port| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    })
}

/// Resolves the name every `resolve_interval` (sooner when asked) for as long
/// as the backend exists.
pub(super) async fn resolve_forever(shared: Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let interval = strong.settings.resolve_interval;
        resolve_once(&strong).await;
        let woken = async {
            // The backend is held while waiting: one dropped meanwhile (and
            // its replicas' health watches) goes at the next wake-up, at most
            // 1.25 intervals later.
            strong.resolve_now.notified().await;
        };
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = woken => {
                // Asked early: still at most one resolution a quarter period.
                tokio::time::sleep(interval / 4).await;
            }
        }
        drop(strong);
    }
}

/// Resolves the name once and swaps in the new set of replicas, keeping the
/// connections of addresses that stay.
pub(super) async fn resolve_once(shared: &Shared) {
    let addrs = match (shared.resolver)(shared.host.clone(), shared.port).await {
        Ok(addrs) => addrs,
        Err(error) => {
            tracing::debug!(backend = shared.service.name, host = %shared.host, %error, "cannot resolve");
            Vec::new()
        }
    };
    let mut addrs: Vec<SocketAddr> = addrs;
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        // Keep what we had: a resolver hiccup must not drop live replicas.
        return;
    }
    let old = shared
        .replicas
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let by_label: HashMap<&str, &Arc<Replica>> =
        old.iter().map(|r| (r.label.as_str(), r)).collect();
    let mut changed = old.len() != addrs.len();
    let replicas: Vec<Arc<Replica>> = addrs
        .iter()
        .map(|addr| {
            let label = addr.to_string();
            if let Some(existing) = by_label.get(label.as_str()) {
                return Arc::clone(existing);
            }
            changed = true;
            Arc::new(connect(shared, *addr))
        })
        .collect();
    if changed {
        let labels: Vec<&str> = replicas.iter().map(|r| r.label.as_str()).collect();
        tracing::info!(backend = shared.service.name, host = %shared.host, endpoints = ?labels, "{} endpoints changed", shared.service.name);
        *shared.replicas.write().unwrap_or_else(|p| p.into_inner()) = replicas.into();
    }
}

/// A replica at `addr`, new to the set: its connections (lazy: nothing
/// dials until a call or its health watch does) and its health watch.
fn connect(shared: &Shared, addr: SocketAddr) -> Replica {
    let label = addr.to_string();
    let uri = format!("{}://{label}", shared.scheme);
    let endpoint = Endpoint::from_shared(uri)
        .map(|e| configure(e, &shared.settings))
        .and_then(|e| match &shared.tls {
            // The address is dialled, the URL's host is checked.
            Some(tls) => e.tls_config(tls.clone()),
            None => Ok(e),
        })
        .unwrap_or_else(|error| {
            tracing::warn!(backend = shared.service.name, address = %label, %error, "cannot make an endpoint for this address; using the URL's");
            shared.endpoint.clone()
        });
    let channels: Vec<Channel> = (0..shared.settings.channels.max(1))
        .map(|_| endpoint.connect_lazy())
        .collect();
    let replica = Replica::new(label, addr.ip().to_string(), addr.port(), channels);
    let watch = tokio::spawn(health::watch(health::Watch {
        backend: shared.service.name,
        service: shared.service.grpc,
        replica: replica.label.clone(),
        channel: replica.channel(),
        serving: replica.serving.clone(),
    }));
    replica.watched_by(watch.abort_handle())
}
