//! Traces end to end: rng, hasher and a worker as real processes export over
//! OTLP/gRPC to a receiver started here (opentelemetry-proto's tonic server:
//! a real OTLP endpoint, not a mock of the exporter), with a real Redis.

use crate::support::{Log, RedisServer, sigterm, start_binary, start_binary_logged};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind},
};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::process::Child;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

/// A span as received, with its service's resource attributes.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    instance: Option<String>,
    span: Span,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.unwrap_or_default();
            let service = attribute(&resource.attributes, "service.name").unwrap_or_default();
            let instance = attribute(&resource.attributes, "service.instance.id");
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        instance: instance.clone(),
                        span,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start() -> (Self, SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let receiver = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            });
        tokio::spawn(server);
        (receiver, addr, stop)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

/// rng, hasher and one worker, all exporting to `endpoint` with `ratio`.
struct Mesh {
    rng: Child,
    hasher: Child,
    worker: Child,
    /// The worker's log lines.
    worker_log: Log,
}

impl Mesh {
    async fn start(redis: &RedisServer, endpoint: &str, ratio: &str) -> Self {
        let otel = |service| {
            [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                ("OTEL_SERVICE_NAME", service),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", ratio),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ]
        };
        let (rng, rng_addr) = start_binary(
            &[
                "rng",
                "--listen",
                "127.0.0.1:0",
                "--delay-ms",
                "0",
                "--lanes",
                "1",
            ],
            &otel("rng"),
        )
        .await;
        let (hasher, hasher_addr) = start_binary(
            &["hasher", "--listen", "127.0.0.1:0", "--delay-ms", "0"],
            &otel("hasher"),
        )
        .await;
        let (rng_url, hasher_url) = (
            format!("http://{rng_addr}"),
            format!("http://{hasher_addr}"),
        );
        let redis_url = redis.url();
        let worker_args = [
            "worker",
            "--rng",
            &rng_url,
            "--hasher",
            &hasher_url,
            "--redis",
            &redis_url,
            "--delay-ms",
            "20",
        ];
        let (worker, _, worker_log) = start_binary_logged(&worker_args, &otel("worker")).await;
        Self {
            rng,
            hasher,
            worker,
            worker_log,
        }
    }

    /// SIGTERM to each, worker first; each must exit 0 within a second,
    /// having flushed its spans.
    async fn stop(mut self) {
        for (name, child) in [
            ("worker", &mut self.worker),
            ("rng", &mut self.rng),
            ("hasher", &mut self.hasher),
        ] {
            let begun = std::time::Instant::now();
            sigterm(child).await;
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .unwrap_or_else(|_| panic!("{name} did not exit"))
                .unwrap();
            assert!(status.success(), "{name}: {status}");
            assert!(
                begun.elapsed() < Duration::from_secs(1),
                "{name} took {:?}",
                begun.elapsed()
            );
        }
    }
}

fn find(spans: &[Received], pred: impl Fn(&Received) -> bool) -> Vec<&Received> {
    spans.iter().filter(|r| pred(r)).collect()
}

#[tokio::test]
async fn every_hop_is_one_trace_with_the_right_parents() {
    let redis = RedisServer::start().await;
    let (receiver, addr, stop_receiver) = Receiver::start().await;
    let mesh = Mesh::start(&redis, &format!("http://{addr}"), "1.0").await;
    redis.wait_for_hashes(5, Duration::from_secs(30)).await;
    mesh.stop().await;
    let spans = receiver.spans();
    let _ = stop_receiver.send(());

    // A worker root span per unit of work.
    let roots = find(&spans, |r| {
        r.service == "worker" && r.span.name == "mine one block" && r.span.parent_span_id.is_empty()
    });
    assert!(
        !roots.is_empty(),
        "no worker root span among {} spans",
        spans.len()
    );
    // Take a unit that completed: it has both client spans.
    let complete = roots.iter().find_map(|root| {
        let children = find(&spans, |r| {
            r.span.trace_id == root.span.trace_id && r.span.parent_span_id == root.span.span_id
        });
        let rng = children
            .iter()
            .find(|c| c.span.name == "dockercoins.v1.Rng/Generate")?;
        let hasher = children
            .iter()
            .find(|c| c.span.name == "dockercoins.v1.Hasher/Hash")?;
        Some((root, *rng, *hasher))
    });
    let (root, rng_client, hasher_client) = complete.expect("no unit with both client spans");

    for (client, service, method, server_service) in [
        (rng_client, "dockercoins.v1.Rng", "Generate", "rng"),
        (hasher_client, "dockercoins.v1.Hasher", "Hash", "hasher"),
    ] {
        let attrs = &client.span.attributes;
        assert_eq!(client.span.kind, SpanKind::Client as i32);
        // The stable RPC conventions (semconv 1.45), and none of the
        // experimental attributes they replace.
        let full_method = format!("{service}/{method}");
        assert_eq!(attribute(attrs, "rpc.system.name").as_deref(), Some("grpc"));
        assert_eq!(
            attribute(attrs, "rpc.method").as_deref(),
            Some(full_method.as_str())
        );
        assert_eq!(
            attribute(attrs, "server.address").as_deref(),
            Some("127.0.0.1")
        );
        assert!(
            attrs.iter().any(|kv| kv.key == "server.port"
                && matches!(
                    kv.value.as_ref().and_then(|v| v.value.as_ref()),
                    Some(Value::IntValue(_))
                )),
            "server.port is not an integer: {attrs:?}"
        );
        assert_eq!(
            attribute(attrs, "rpc.response.status_code").as_deref(),
            Some("OK")
        );
        // Nor tracing's own bookkeeping.
        for old in [
            "rpc.system",
            "rpc.service",
            "rpc.grpc.status_code",
            "busy_ns",
            "idle_ns",
            "target",
        ] {
            assert_eq!(attribute(attrs, old), None, "{old} on {full_method}");
        }
        // The server span: same trace, child of the client span, in the
        // other process.
        let server = find(&spans, |r| {
            r.span.trace_id == root.span.trace_id && r.span.parent_span_id == client.span.span_id
        });
        let server = server
            .first()
            .unwrap_or_else(|| panic!("no server span under {service}/{method}"));
        assert_eq!(server.service, server_service);
        assert_eq!(server.span.kind, SpanKind::Server as i32);
        assert_eq!(server.span.name, full_method);
        assert_eq!(
            attribute(&server.span.attributes, "rpc.method").as_deref(),
            Some(full_method.as_str())
        );
        assert_eq!(
            attribute(&server.span.attributes, "rpc.system.name").as_deref(),
            Some("grpc")
        );
        assert_eq!(
            attribute(&server.span.attributes, "rpc.response.status_code").as_deref(),
            Some("OK")
        );
        assert!(
            server.instance.is_some(),
            "no service.instance.id on {server_service}"
        );
        if server_service == "rng" {
            let wait = find(&spans, |r| r.span.parent_span_id == server.span.span_id);
            assert!(
                wait.iter().any(|r| r.span.name == "rng.lane.wait"),
                "rng's lane wait is not a span of its own"
            );
        }
    }

    // Redis: the worker's updates, each a span with db.system.
    let redis_spans = find(&spans, |r| {
        r.service == "worker"
            && attribute(&r.span.attributes, "db.system").as_deref() == Some("redis")
    });
    assert!(!redis_spans.is_empty(), "no Redis span");
    let update = redis_spans[0];
    let parent = find(&spans, |r| r.span.span_id == update.span.parent_span_id);
    assert_eq!(
        parent.first().map(|r| r.span.name.as_str()),
        Some("update the score")
    );

    // Nothing of the transport or of health checks.
    assert!(
        spans
            .iter()
            .all(|r| !r.span.name.contains("grpc.health") && !r.span.name.starts_with("h2")),
        "unexpected spans"
    );
}

/// No trace kept: nothing exported, and the logs still say which trace a
/// line belongs to (a coin's line carries its unit's trace id).
#[tokio::test]
async fn sampling_ratio_zero_exports_nothing_and_logs_keep_trace_ids() {
    let redis = RedisServer::start().await;
    let (receiver, addr, stop_receiver) = Receiver::start().await;
    let mesh = Mesh::start(&redis, &format!("http://{addr}"), "0").await;
    let log = mesh.worker_log.clone();
    let coin_line = || {
        log.lock()
            .unwrap()
            .iter()
            .find(|line| line.contains("Coin found"))
            .cloned()
    };
    // A coin is one hash in 16: this waits for about 16 units at 20 ms.
    let waited = std::time::Instant::now();
    while coin_line().is_none() && waited.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mesh.stop().await;
    let line = coin_line().expect("no coin found by the worker within 30 s");
    let trace_id = line
        .split("trace_id=")
        .nth(1)
        .map(|rest| rest.trim_start_matches('"'))
        .and_then(|rest| rest.get(..32))
        .unwrap_or_else(|| panic!("no trace_id in {line:?}"));
    assert!(
        trace_id.chars().all(|c| c.is_ascii_hexdigit()) && trace_id != "0".repeat(32),
        "{line:?}"
    );
    assert_eq!(receiver.spans().len(), 0);
    let _ = stop_receiver.send(());
}

/// Half the traces kept, decided once at the head: every exported span
/// belongs to a trace whose root the worker exported (rng and hasher follow
/// the worker's decision, so an unsampled unit exports nothing anywhere),
/// and the kept ones still have every hop.
#[tokio::test]
async fn an_unsampled_trace_exports_nothing_and_a_sampled_one_every_hop() {
    let redis = RedisServer::start().await;
    let (receiver, addr, stop_receiver) = Receiver::start().await;
    let mesh = Mesh::start(&redis, &format!("http://{addr}"), "0.5").await;
    redis.wait_for_hashes(40, Duration::from_secs(30)).await;
    mesh.stop().await;
    let units = redis.hashes().await;
    let spans = receiver.spans();
    let _ = stop_receiver.send(());

    let roots = find(&spans, |r| r.span.parent_span_id.is_empty());
    assert!(
        roots.iter().all(|r| r.service == "worker"),
        "a root span outside the worker: {:?}",
        roots
            .iter()
            .map(|r| (&r.service, &r.span.name))
            .collect::<Vec<_>>()
    );
    let kept: std::collections::HashSet<&[u8]> =
        roots.iter().map(|r| r.span.trace_id.as_slice()).collect();
    for span in &spans {
        assert!(
            kept.contains(span.span.trace_id.as_slice()),
            "{} `{}` belongs to a trace whose root was not exported",
            span.service,
            span.span.name
        );
    }
    let unit_roots: Vec<_> = roots
        .iter()
        .filter(|r| r.span.name == "mine one block")
        .collect();
    assert!(
        !unit_roots.is_empty() && (unit_roots.len() as u64) < units,
        "{} unit traces exported for {units} units at a ratio of 0.5",
        unit_roots.len()
    );
    // A kept unit has its two calls, each with the server's span under it.
    let whole = unit_roots.iter().filter(|root| {
        let calls = find(&spans, |r| r.span.parent_span_id == root.span.span_id);
        calls.len() == 2
            && calls.iter().all(|call| {
                spans
                    .iter()
                    .any(|r| r.span.parent_span_id == call.span.span_id && r.service != "worker")
            })
    });
    // Bar the unit cut short when the worker stopped.
    let whole = whole.count();
    assert!(
        whole + 1 >= unit_roots.len(),
        "{whole} of {} kept units have every hop",
        unit_roots.len()
    );
}

/// A collector that is not there: the mesh mines as usual and still stops
/// within a second.
#[tokio::test]
async fn an_unreachable_collector_blocks_nothing() {
    let redis = RedisServer::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mesh = Mesh::start(&redis, &endpoint, "1.0").await;
    redis.wait_for_hashes(5, Duration::from_secs(30)).await;
    mesh.stop().await;
}

/// A call the lane gives up on for its deadline says so in its trace: an
/// event on its `rng.lane.wait` span, with how long it waited.
#[tokio::test]
async fn a_call_given_up_for_its_deadline_says_so_on_its_lane_wait() {
    let (receiver, addr, stop_receiver) = Receiver::start().await;
    let endpoint = format!("http://{addr}");
    let (mut rng, rng_addr) = start_binary(
        &["rng", "--listen", "127.0.0.1:0"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "rng"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{rng_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // One lane of 100 ms, four calls allowed 250 ms: two cannot be served.
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let mut client = dockercoins::pb::rng_client::RngClient::new(channel.clone());
            tokio::spawn(async move {
                let mut request = Request::new(dockercoins::pb::GenerateRequest { size: 32 });
                request.set_timeout(Duration::from_millis(250));
                client.generate(request).await.map(drop)
            })
        })
        .collect();
    let mut expired = 0;
    for call in calls {
        if let Err(status) = call.await.unwrap() {
            assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
            expired += 1;
        }
    }
    assert!(expired > 0, "every call was served");
    sigterm(&rng).await;
    assert!(rng.wait().await.unwrap().success());
    let spans = receiver.spans();
    let given_up: Vec<_> = find(&spans, |r| r.span.name == "rng.lane.wait")
        .into_iter()
        .flat_map(|r| &r.span.events)
        .filter(|e| e.name == "deadline passed in the lane")
        .collect();
    assert_eq!(given_up.len(), expired, "{given_up:?}");
    for event in given_up {
        let waited: u64 = attribute(&event.attributes, "waited_ms")
            .expect("waited_ms on the event")
            .parse()
            .unwrap();
        assert!((100..250).contains(&waited), "waited {waited} ms");
    }
    let _ = stop_receiver.send(());
}

/// `dockercoins up <flags>` on free ports, every span kept and exported
/// to the receiver at `receiver` within 100 ms.
async fn up_traced(flags: &[&str], receiver: SocketAddr) -> Child {
    let endpoint = format!("http://{receiver}");
    let listen = [
        "--rng-listen",
        "127.0.0.1:0",
        "--hasher-listen",
        "127.0.0.1:0",
        "--webui-listen",
        "127.0.0.1:0",
    ];
    let args: Vec<&str> = ["up"]
        .into_iter()
        .chain(flags.iter().copied())
        .chain(listen)
        .collect();
    let envs = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_TRACES_SAMPLER", "always_on"),
    ];
    start_binary(&args, &envs).await.0
}

/// Stops `up` and waits for it: it stops its own redis-server on the way
/// out, which a kill on drop would leave running.
async fn stop_up(child: &mut Child) {
    sigterm(child).await;
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("up did not stop within 10 s of SIGTERM")
        .unwrap();
}

/// A hedged call, as Jaeger shows it: `up` with a fast and a slow rng and
/// hedging after 50 ms. The twin is a sibling of the first attempt, says
/// it is a hedge (attribute and event), and the attempt it beat ends
/// CANCELLED rather than without a status.
#[tokio::test]
async fn a_hedged_call_shows_its_twin_and_the_abandoned_attempt() {
    let (receiver, addr, stop_receiver) = Receiver::start().await;
    let args = [
        "--workers",
        "1",
        "--rng-replicas",
        "2",
        "--rng-lanes",
        "0",
        "--rng-delay-ms",
        "0",
        "--hasher-delay-ms",
        "0",
        "--worker-delay-ms",
        "20",
        "--rng-last-replica",
        "delay-ms=400",
        "--hedge-ms",
        "50",
    ];
    let mut child = up_traced(&args, addr).await;
    let is_hedge = |r: &Received| {
        attribute(&r.span.attributes, "dockercoins.attempt").as_deref() == Some("hedge")
    };
    // Half the units start on the slow replica: a hedge comes within a
    // second or so; 20 s is for a loaded machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (hedge, first) = loop {
        let spans = receiver.spans();
        let pair = spans.iter().filter(|r| is_hedge(r)).find_map(|hedge| {
            let first = spans.iter().find(|r| {
                r.span.parent_span_id == hedge.span.parent_span_id
                    && r.span.span_id != hedge.span.span_id
                    && r.span.name == hedge.span.name
            })?;
            Some((hedge.clone(), first.clone()))
        });
        if let Some(pair) = pair {
            break pair;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no hedged call with its first attempt exported within 20 s ({} spans)",
            spans.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop_up(&mut child).await;
    let _ = stop_receiver.send(());
    assert_eq!(hedge.span.name, "dockercoins.v1.Rng/Generate");
    assert_eq!(
        attribute(&hedge.span.attributes, "rpc.response.status_code").as_deref(),
        Some("OK")
    );
    assert!(
        hedge
            .span
            .events
            .iter()
            .any(|e| e.name.starts_with("hedged")),
        "no hedge event: {:?}",
        hedge.span.events
    );
    assert_eq!(
        attribute(&first.span.attributes, "rpc.response.status_code").as_deref(),
        Some("CANCELLED"),
        "the attempt the hedge beat: {:?}",
        first.span.attributes
    );
}

/// Weights that move, as Jaeger shows them: `up` with two rng replicas
/// of 1 and 3 lanes under weighted_round_robin (no blackout, weights every
/// 100 ms). Once the reports give the 3-lane replica most of the picks, a
/// worker's span carries the event that says so.
#[tokio::test]
async fn a_weight_that_moves_is_an_event_on_the_calling_span() {
    let (receiver, addr, stop_receiver) = Receiver::start().await;
    let args = [
        "--workers",
        "4",
        "--rng-replicas",
        "2",
        "--rng-delay-ms",
        "20",
        "--hasher-delay-ms",
        "0",
        "--worker-delay-ms",
        "0",
        "--rng-last-replica",
        "lanes=3",
        "--grpc-policy",
        "weighted_round_robin",
        "--wrr-blackout-ms",
        "0",
        "--wrr-update-ms",
        "100",
    ];
    let mut child = up_traced(&args, addr).await;
    let moved = |r: &Received| {
        r.span
            .events
            .iter()
            .any(|e| e.name.starts_with("weight moved"))
    };
    // The first reports come within a few calls, the update 100 ms later;
    // 20 s is for a loaded machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let span = loop {
        if let Some(span) = receiver.spans().into_iter().find(|r| moved(r)) {
            break span;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no span with a `weight moved` event within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop_up(&mut child).await;
    let _ = stop_receiver.send(());
    // The worker's unit, whose call picked the replica when the weights
    // were taken.
    assert_eq!(span.span.name, "mine one block", "{span:?}");
    let event = span
        .span
        .events
        .iter()
        .find(|e| e.name.starts_with("weight moved"))
        .unwrap();
    assert!(event.name.contains("rng replica"), "{}", event.name);
    let share: f64 = attribute(&event.attributes, "share_percent")
        .expect("share_percent on the event")
        .parse()
        .unwrap();
    assert!((0.0..=100.0).contains(&share), "{share}");
}
