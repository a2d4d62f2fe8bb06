//! docs/metrics.md held to what each `/metrics` serves: every family its
//! table documents for a service is served there, and every family served
//! is documented. The services run as the binary does (one registry a
//! process), after one event of each kind, since a family with labels has
//! no series (and is not served) until its first: calls, injected faults,
//! a call whose deadline passes first, a connection closed for its bound.

use crate::support::{RedisServer, http1, start_binary};
use dockercoins::pb::{
    GenerateRequest, HashRequest, hasher_client::HasherClient as HasherStub,
    rng_client::RngClient as RngStub,
};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Duration,
};
use tokio::{io::AsyncReadExt, net::TcpStream};
use tonic::transport::Channel;

/// Families of the worker's and webui's clients that only a replica failing
/// over and over provokes (another replica tried, one set aside, a retry
/// budget spent, a hedge sent), or a policy this run does not use (a
/// replica's weight, under weighted_round_robin): this short run with one
/// replica a hop and the default policy provokes none, so they are held to
/// the doc one way only, served ⊂ doc.
const NOT_IN_THIS_RUN: [&str; 5] = [
    "rpc_client_retries",
    "rpc_client_ejections",
    "rpc_client_retries_throttled",
    "rpc_client_hedges",
    "rpc_client_replica_weight",
];

/// How long any event of the run may take to come.
const BOUND: Duration = Duration::from_secs(30);

/// Injected faults, so that their families have a sample: a share of calls
/// failed, a share delayed.
const FAULTS: [&str; 4] = ["--fail-rate", "10%", "--extra-delay", "50%=1ms"];

/// The services the table's "where" column names.
const SERVICES: [&str; 4] = ["rng", "hasher", "webui", "worker"];

/// A sample's or a documented name's family: the name without the suffix
/// OpenMetrics adds to a counter's or a histogram's series.
fn family(name: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count", "_created"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// The families docs/metrics.md documents, by service. A row naming one
/// family per service (`rng_deadline_expired_total, hasher_...`) gives each
/// service the one prefixed with its own name.
fn documented() -> BTreeMap<&'static str, BTreeSet<String>> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let mut families: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for row in doc.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (names, places) = (cells[1], cells[4]);
        let names: Vec<&str> = names.split('`').skip(1).step_by(2).collect();
        for place in places.split(',').map(str::trim) {
            let service = *SERVICES
                .iter()
                .find(|service| **service == place)
                .unwrap_or_else(|| panic!("docs/metrics.md: no service {place:?} in {row}"));
            let owned_by = |name: &str| {
                SERVICES
                    .iter()
                    .find(|other| name.starts_with(&format!("{other}_")))
            };
            for name in &names {
                if owned_by(name).is_none_or(|owner| *owner == service) {
                    let entry = families.entry(service).or_default();
                    entry.insert(family(name).to_owned());
                }
            }
        }
    }
    families
}

/// The families `/metrics` on `addr` serves: its `# TYPE` lines and its
/// samples' names.
async fn served(addr: SocketAddr) -> BTreeSet<String> {
    let (status, _, body) = http1(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200, "GET /metrics on {addr}");
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(typed) => typed.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        };
        if let Some(name) = name.filter(|name| !name.is_empty()) {
            families.insert(family(name).to_owned());
        }
    }
    families
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_metrics_md_names_every_family_each_service_serves() {
    let redis = RedisServer::start().await;
    let local = [("RUST_LOG", "warn,dockercoins=info")];
    let listen = ["--listen", "127.0.0.1:0"];
    let (_rng, rng) = start_binary(&[&["rng"][..], &listen, &FAULTS].concat(), &local).await;
    let (_hasher, hasher) =
        start_binary(&[&["hasher"][..], &listen, &FAULTS].concat(), &local).await;
    let (rng, hasher): (SocketAddr, SocketAddr) = (rng.parse().unwrap(), hasher.parse().unwrap());
    let clients = [
        ("RNG_URL", format!("http://{rng}")),
        ("HASHER_URL", format!("http://{hasher}")),
        ("REDIS_URL", redis.url()),
    ];
    let envs: Vec<(&str, &str)> = clients.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_worker, worker) =
        start_binary(&["worker", "--health-listen", "127.0.0.1:0"], &envs).await;
    let (_webui, webui) = start_binary(&["webui", "--listen", "127.0.0.1:0"], &envs).await;
    let webui: SocketAddr = webui.parse().unwrap();
    // One event of each kind: the worker's hashes reach Redis (its calls to
    // rng and hasher, faults among them, its update); webui's gateway calls
    // rng; a call each whose deadline passes in the lane; a connection each
    // that sends nothing, closed at the servers' handshake bound (10 s).
    tokio::join!(
        redis.wait_for_hashes(10, BOUND),
        closed_by_the_server(rng),
        closed_by_the_server(hasher),
        closed_by_the_server(webui),
        async {
            let mut rng_called = false;
            while !rng_called {
                let (status, _, _) = http1(webui, "GET", "/api/rng/8", "").await;
                // An injected failure is an answer too; one success is the sample.
                rng_called = status == 200;
            }
        },
        deadline_passes(rng, hasher),
    );

    let documented = documented();
    let mut disagreements = Vec::new();
    let worker: SocketAddr = worker.parse().unwrap();
    for (service, addr) in [
        ("rng", rng),
        ("hasher", hasher),
        ("worker", worker),
        ("webui", webui),
    ] {
        let documented = &documented[service];
        let provoked = |family: &&String| !NOT_IN_THIS_RUN.contains(&family.as_str());
        let wanted = documented.iter().filter(provoked).cloned().collect();
        let served = served_with(addr, &wanted).await;
        for missing in wanted.difference(&served) {
            disagreements.push(format!("{service}: documented, not served: {missing}"));
        }
        for extra in served.difference(documented) {
            disagreements.push(format!("{service}: served, not documented: {extra}"));
        }
    }
    assert!(
        disagreements.is_empty(),
        "docs/metrics.md and /metrics disagree:\n{}",
        disagreements.join("\n")
    );
}

/// Opens a connection to `addr`, sends nothing, and waits (bounded) until
/// the server closes it.
async fn closed_by_the_server(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut sink = [0u8; 256];
    tokio::time::timeout(BOUND, async {
        while let Ok(1..) = stream.read(&mut sink).await {}
    })
    .await
    .unwrap_or_else(|_| panic!("{addr} kept a silent connection open for 30 s"));
}

/// Calls to rng and to hasher whose `grpc-timeout` (10 ms) would pass before
/// their 100 ms delay, until each counts one given up on with
/// DEADLINE_EXCEEDED (an injected failure answers some first).
async fn deadline_passes(rng: SocketAddr, hasher: SocketAddr) {
    let channel = |addr: SocketAddr| async move {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    let short = Duration::from_millis(10);
    let (mut rng_stub, mut hasher_stub) = (
        RngStub::new(channel(rng).await),
        HasherStub::new(channel(hasher).await),
    );
    let until = tokio::time::Instant::now() + BOUND;
    while !served(rng).await.contains("rng_deadline_expired") {
        assert!(
            tokio::time::Instant::now() < until,
            "rng never gave up on a deadline"
        );
        let mut call = tonic::Request::new(GenerateRequest { size: 8 });
        call.set_timeout(short);
        let answer = rng_stub.generate(call).await;
        assert!(answer.is_err(), "rng answered within {short:?}");
    }
    while !served(hasher).await.contains("hasher_deadline_expired") {
        assert!(
            tokio::time::Instant::now() < until,
            "hasher never gave up on a deadline"
        );
        let mut call = tonic::Request::new(HashRequest {
            data: vec![7u8; 8].into(),
        });
        call.set_timeout(short);
        let answer = hasher_stub.hash(call).await;
        assert!(answer.is_err(), "hasher answered within {short:?}");
    }
}

/// `/metrics` on `addr` once it serves every family of `wanted` (each comes
/// with its first event: a fault is injected in a share of calls), or as it
/// is after [`BOUND`].
async fn served_with(addr: SocketAddr, wanted: &BTreeSet<String>) -> BTreeSet<String> {
    let until = tokio::time::Instant::now() + BOUND;
    loop {
        let served = served(addr).await;
        let all = wanted.iter().all(|family| served.contains(family));
        if all || tokio::time::Instant::now() > until {
            return served;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
