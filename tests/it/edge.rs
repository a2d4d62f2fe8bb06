//! `edge`, Compose's published ports: each connection goes to one replica,
//! in turn; a dead replica is skipped; plain HTTP and gRPC both pass.

use crate::support::{Spawned, http1, spawn_rng};
use dockercoins::{
    client::balancer::Resolver,
    edge::{self, Route},
    pb::{InfoRequest, replica_client::ReplicaClient as ReplicaStub},
    rng::RngConfig,
    server::connections::ConnectionLimits,
};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

struct Edge {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// `edge` on a free port, forwarding to whatever `addrs` holds.
async fn start_edge(addrs: &Arc<Mutex<Vec<SocketAddr>>>) -> Edge {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let route: Route = format!("{addr}=rng:8001").parse().unwrap();
    let answer = addrs.clone();
    let resolver: Resolver = Arc::new(move |host, port| {
        assert_eq!((host.as_str(), port), ("rng", 8001));
        let addrs = answer.lock().unwrap().clone();
        Box::pin(async move { Ok(addrs) })
    });
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(edge::serve(
        vec![(listener, route)],
        resolver,
        ConnectionLimits::default(),
        async {
            let _ = stopped.await;
        },
    ));
    Edge { addr, stop, task }
}

async fn three_replicas() -> (Vec<Spawned>, Arc<Mutex<Vec<SocketAddr>>>) {
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(spawn_rng(RngConfig::turbo()).await);
    }
    let addrs = replicas.iter().map(|r| r.addr).collect();
    (replicas, Arc::new(Mutex::new(addrs)))
}

/// Who served `GET /8` through the edge, on a fresh connection.
async fn served_by(edge: SocketAddr) -> String {
    let (status, headers, body) = http1(edge, "GET", "/8", "").await;
    assert!(status.is_success(), "{status}");
    assert_eq!(body.len(), 8);
    headers["x-served-by"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn connections_take_turns_over_every_replica() {
    let (replicas, addrs) = three_replicas().await;
    let edge = start_edge(&addrs).await;
    let mut spread = BTreeMap::<String, usize>::new();
    for _ in 0..9 {
        *spread.entry(served_by(edge.addr).await).or_default() += 1;
    }
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(spread.values().all(|&n| n == 3), "{spread:?}");
    drop(replicas);
}

#[tokio::test]
async fn grpc_passes_and_stays_on_its_replica() {
    let (_replicas, addrs) = three_replicas().await;
    let edge = start_edge(&addrs).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", edge.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ReplicaStub::new(channel);
    let mut instances = Vec::new();
    for _ in 0..5 {
        instances.push(
            client
                .info(InfoRequest {})
                .await
                .unwrap()
                .into_inner()
                .instance,
        );
    }
    instances.dedup();
    // One HTTP/2 connection, one replica: the trap the worker avoids by
    // balancing per call instead of going through edge.
    assert_eq!(instances.len(), 1, "{instances:?}");
}

#[tokio::test]
async fn a_dead_replica_still_in_dns_is_skipped() {
    let (mut replicas, addrs) = three_replicas().await;
    let edge = start_edge(&addrs).await;
    let dead = replicas.remove(1);
    let dead_addr = dead.addr;
    dead.stop().await.unwrap();
    let mut spread = BTreeMap::<String, usize>::new();
    for _ in 0..6 {
        *spread.entry(served_by(edge.addr).await).or_default() += 1;
    }
    assert_eq!(spread.len(), 2, "{spread:?}");
    assert!(
        !spread
            .keys()
            .any(|who| who.ends_with(&format!(":{}", dead_addr.port()))),
        "{spread:?}"
    );
}

#[tokio::test]
async fn no_replica_closes_the_connection_and_edge_keeps_serving() {
    let addrs = Arc::new(Mutex::new(Vec::new()));
    let edge = start_edge(&addrs).await;
    // Nothing to forward to: the client sees the connection closed, at once.
    let mut stream = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
    )
    .await
    .expect("edge held a connection it cannot forward");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // A replica appears: the next connection is served.
    let replica = spawn_rng(RngConfig::turbo()).await;
    addrs.lock().unwrap().push(replica.addr);
    served_by(edge.addr).await;
}

#[tokio::test]
async fn stops_promptly_with_a_connection_open() {
    let (_replicas, addrs) = three_replicas().await;
    let edge = start_edge(&addrs).await;
    // An idle keep-alive connection that never closes by itself.
    let idle = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    served_by(edge.addr).await;
    edge.stop.send(()).unwrap();
    tokio::time::timeout(
        dockercoins::shutdown::DRAIN_TIMEOUT + Duration::from_secs(5),
        edge.task,
    )
    .await
    .expect("edge did not stop")
    .unwrap();
    // The listener is closed.
    assert!(tokio::net::TcpStream::connect(edge.addr).await.is_err());
    drop(idle);
}
