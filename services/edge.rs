//! `dockercoins edge`: the host's door to rng and hasher in Compose.
//!
//! A scaled service cannot publish a fixed host port (the second replica
//! clashes on it), and a host port range gives replicas ports that change from
//! one `up` to the next. So in Compose, rng and hasher publish nothing, and
//! `edge` publishes the lab's ports (8001, 8002) and forwards each TCP
//! connection to one replica of the service, round robin over the addresses
//! the name resolves to at that moment: what Swarm's routing mesh does for a
//! published port. It forwards bytes, so plain HTTP (`httping`, `curl`) and
//! gRPC (`grpcurl`) both pass, and every connection stays on the replica it
//! was given (a gRPC connection through `edge` is pinned, as through any L4
//! balancer; the worker does not use `edge`, it balances per call itself).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

use crate::{
    client::balancer::Resolver,
    server::connections::metrics::ConnectionMetrics,
    server::connections::{Activity, Admitted, ConnectionLimits, Connections},
    shutdown::DRAIN_TIMEOUT,
};

/// How long `edge` tries one replica before it tries the next.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One published port: `LISTEN=HOST:PORT`, as in `0.0.0.0:8001=rng:8001`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub listen: SocketAddr,
    pub host: String,
    pub port: u16,
}

impl Route {
    /// `host:port` of the target.
    pub fn target(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.listen, self.target())
    }
}

impl std::str::FromStr for Route {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = "expected LISTEN=HOST:PORT, like 0.0.0.0:8001=rng:8001";
        let (listen, target) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: no '=' ({expected})"))?;
        let listen = listen
            .trim()
            .parse()
            .map_err(|e| format!("{listen:?}: not an address to listen on: {e} ({expected})"))?;
        let (host, port) = target
            .trim()
            .rsplit_once(':')
            .ok_or_else(|| format!("{target:?}: no port ({expected})"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{target:?}: no host ({expected})"));
        }
        let port = port
            .parse()
            .ok()
            .filter(|&port: &u16| port != 0)
            .ok_or_else(|| format!("{target:?}: {port:?} is not a port ({expected})"))?;
        Ok(Self {
            listen,
            host: host.to_owned(),
            port,
        })
    }
}

/// Forwards every connection accepted on each listener to its route's
/// target, holding at most `limits` over all routes, until `shutdown`
/// resolves; then stops accepting, gives open connections
/// [`DRAIN_TIMEOUT`], and returns.
pub async fn serve(
    routes: Vec<(TcpListener, Route)>,
    resolver: Resolver,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    // Edge sees bytes, not calls: a connection is idle when none move.
    let connections = Connections::new(
        "edge",
        limits,
        Activity::Bytes,
        ConnectionMetrics::unregistered(),
    );
    let mut accepting = JoinSet::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for (listener, route) in routes {
        tracing::info!(
            listen = %listener.local_addr().map_or(route.listen, |a| a),
            target = %route.target(),
            "forwarding connections, round robin over the target's addresses",
        );
        let forward = Forward {
            route: Arc::new(route),
            resolver: resolver.clone(),
            next: Arc::new(AtomicUsize::new(0)),
        };
        accepting.spawn(accept_loop(
            listener,
            forward,
            connections.clone(),
            stop_rx.clone(),
        ));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    let mut open = Vec::new();
    while let Some(done) = accepting.join_next().await {
        open.extend(done.ok());
    }
    let count: usize = open.iter().map(JoinSet::len).sum();
    if count > 0 {
        tracing::info!(open = count, "waiting for open connections to finish");
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            for set in &mut open {
                while set.join_next().await.is_some() {}
            }
        })
        .await;
        if drained.is_err() {
            let count: usize = open.iter().map(JoinSet::len).sum();
            tracing::info!(
                open = count,
                "closing connections still open after {DRAIN_TIMEOUT:?}"
            );
        }
        // Dropping a JoinSet aborts what is left in it.
    }
    tracing::info!("stopped");
}

#[derive(Clone)]
struct Forward {
    route: Arc<Route>,
    resolver: Resolver,
    /// Round robin over the target's addresses, across connections.
    next: Arc<AtomicUsize>,
}

/// Accepts until told to stop, and returns the connections still open.
async fn accept_loop(
    listener: TcpListener,
    forward: Forward,
    connections: Connections,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut open = JoinSet::new();
    loop {
        let client = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            client = connections.accept(&listener) => client,
        };
        let forward = forward.clone();
        open.spawn(async move { forward.connection(client).await });
        // Reap finished connections so the set does not grow without bound.
        while open.try_join_next().is_some() {}
    }
    open
}

impl Forward {
    async fn connection(&self, mut client: Admitted<TcpStream>) {
        let Ok(peer) = client.get_ref().peer_addr() else {
            return;
        };
        let Some((mut upstream, replica)) = self.connect(peer).await else {
            return;
        };
        tracing::debug!(%peer, %replica, target = %self.route.target(), "forwarding");
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => {
                tracing::debug!(%peer, %replica, bytes_up = up, bytes_down = down, "closed");
            }
            Err(error) => tracing::debug!(%peer, %replica, %error, "connection reset"),
        }
    }

    /// Resolves the target now and connects to one of its addresses, the
    /// next in turn first, then the others.
    async fn connect(&self, peer: SocketAddr) -> Option<(TcpStream, SocketAddr)> {
        let target = self.route.target();
        let mut addrs = match (self.resolver)(self.route.host.clone(), self.route.port).await {
            Ok(addrs) if !addrs.is_empty() => addrs,
            Ok(_) => {
                tracing::warn!(%peer, %target, "cannot forward: the name resolves to no address");
                return None;
            }
            Err(error) => {
                tracing::warn!(%peer, %target, %error, "cannot forward: the name does not resolve");
                return None;
            }
        };
        // The resolver's order is not stable (Docker's DNS shuffles, glibc
        // sorts): take turns over a sorted list.
        addrs.sort_unstable();
        addrs.dedup();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % addrs.len();
        let mut errors = Vec::new();
        for i in 0..addrs.len() {
            let addr = addrs[(first + i) % addrs.len()];
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(upstream)) => {
                    let _ = upstream.set_nodelay(true);
                    return Some((upstream, addr));
                }
                Ok(Err(error)) => errors.push(format!("{addr}: {error}")),
                Err(_) => errors.push(format!("{addr}: no answer within {CONNECT_TIMEOUT:?}")),
            }
        }
        tracing::warn!(
            %peer,
            %target,
            tried = %errors.join("; "),
            "cannot forward: no replica accepted the connection",
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::Route;

    #[test]
    fn routes_parse_or_say_why() {
        let route: Route = "0.0.0.0:8001=rng:8001".parse().unwrap();
        assert_eq!(route.listen, "0.0.0.0:8001".parse().unwrap());
        assert_eq!((route.host.as_str(), route.port), ("rng", 8001));
        assert_eq!(route.to_string(), "0.0.0.0:8001=rng:8001");
        let v6: Route = "[::]:8002=[::1]:8002".parse().unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8002));
        for bad in [
            "rng:8001",
            "8001=rng:8001",
            "0.0.0.0:8001=rng",
            "0.0.0.0:8001=:8001",
            "0.0.0.0:8001=rng:0",
            "0.0.0.0:8001=rng:http",
        ] {
            let error = bad.parse::<Route>().unwrap_err();
            assert!(error.contains("LISTEN=HOST:PORT"), "{bad}: {error}");
        }
    }
}
