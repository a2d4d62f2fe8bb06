//! webui: the page with the live hashes/second chart, the original `/json`,
//! a status endpoint for the page, and a small HTTP gateway to the gRPC
//! backends for people without a gRPC client.
//!
//! The page's assets are compiled into the binary (classrooms are often
//! offline) and served by fixed routes only: no path reaches the filesystem.
//! [`hops`] is the per-hop view (`/api/hops`): each hop's latency as its
//! servers measure it.

mod assets;
mod hops;

pub use assets::{Assets, AssetsError};

use crate::{
    client::balancer::{self, Balancer},
    client::{BalancedHasher, BalancedRng},
    pb::{InfoRequest, replica_client::ReplicaClient as ReplicaStub},
    protocol::webui::{
        BackendStatus, RedisState, RedisStatus, ReplicaStatus, ScoreUnavailable, StatusView,
        TimedScore,
    },
    protocol::{WEBUI_PORT, load_report},
    rng::parse_size,
    server::connections::metrics::ConnectionMetrics,
    server::connections::{Activity, ConnectionLimits, Connections, InFlight},
    server::limits::{HTTP1_HEADER_READ_TIMEOUT, MAX_BLOCK_BYTES},
    server::overload,
    shutdown::DRAIN_TIMEOUT,
    store::Store,
    telemetry::metrics::{Exposition, Registry},
    telemetry::{fields, record_response, sampling::IncomingTraceLayer, server_span},
};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State, rejection::BytesRejection},
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hops::Hops;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use serde_json::{Value, json};
use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tokio::{net::TcpListener, task::JoinSet};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tower_http::trace::TraceLayer;

/// The page may load only its own assets and talk only to its own origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// Where `dockercoins webui` listens unless told otherwise.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, WEBUI_PORT));

/// Why the webui stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WebuiError {
    #[error("cannot read the listener's address: {0}")]
    Listener(#[from] std::io::Error),
}

/// Headers on every answer: the page may load and frame nothing but its own
/// assets, and browsers must not sniff types or send referrers.
const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    // frame-ancestors 'none' in the CSP, for browsers without CSP 2.
    (header::X_FRAME_OPTIONS, "DENY"),
];

/// Adds [`SECURITY_HEADERS`] to an answer, and `no-store` unless it says
/// how to cache (the assets do).
async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Bound on each health check and gateway call from the webui.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(2);

/// What the webui talks to.
#[derive(Clone)]
pub struct Webui {
    pub store: Store,
    pub rng: BalancedRng,
    pub hasher: BalancedHasher,
    /// Whether the last `/json` failed on Redis: log a streak once.
    redis_failing: Arc<AtomicBool>,
    /// What `/metrics` serves: the gateway's calls, when registered.
    metrics: Exposition,
    /// Each hop's calls and latency as its servers measure them.
    hops: Hops,
    /// The page: compiled in, or read from `WEBUI_ASSETS_DIR`.
    assets: Assets,
    /// How many connections it holds at once, and for how long.
    connection_limits: ConnectionLimits,
    connection_metrics: ConnectionMetrics,
}

impl Webui {
    pub fn new(store: Store, rng: BalancedRng, hasher: BalancedHasher) -> Self {
        let mut registry = Registry::default();
        let connection_metrics = ConnectionMetrics::register(&mut registry);
        Self {
            store,
            rng,
            hasher,
            redis_failing: Arc::default(),
            metrics: Exposition::new(registry),
            hops: Hops::new(None),
            assets: Assets::built_in(),
            connection_limits: ConnectionLimits::default(),
            connection_metrics,
        }
    }

    /// Holds connections within `limits` (the defaults otherwise).
    pub fn with_connection_limits(self, connection_limits: ConnectionLimits) -> Self {
        Self {
            connection_limits,
            ..self
        }
    }

    /// Serves the page from `assets` (the lab's "update a service" step).
    pub fn with_assets(self, assets: Assets) -> Self {
        Self { assets, ..self }
    }

    /// Links the slowest recent calls to their traces in the Jaeger UI at
    /// `url` (as the page's reader reaches it).
    pub fn with_jaeger_url(self, url: Option<String>) -> Self {
        Self {
            hops: Hops::new(url),
            ..self
        }
    }

    /// Serves `metrics` on `/metrics` (the clients' calls registered there),
    /// with the server's connections.
    pub fn with_metrics(self, mut metrics: Registry) -> Self {
        let connection_metrics = ConnectionMetrics::register(&mut metrics);
        Self {
            metrics: Exposition::new(metrics),
            connection_metrics,
            ..self
        }
    }
}

/// Every route of the webui; a test calls it without a socket.
pub fn router(webui: Webui) -> Router {
    Router::new()
        .merge(webui.assets.routes())
        .route("/json", get(score_json))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", webui.metrics.clone().route())
        // Browsers ask for it on their own; no icon, and no 404 in the console.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/status", get(status))
        .route(
            "/api/hops",
            get(|State(webui): State<Webui>| async move { Json(webui.hops.view()) }),
        )
        .route("/api/rng/{size}", get(gateway_rng))
        .route("/api/hash", post(gateway_hash))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(DefaultBodyLimit::max(MAX_BLOCK_BYTES))
        // Traced: the score and the gateway, the calls that reach a backend.
        // Not the page, its assets, the probes or the status poll.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<_>| {
                    let path = request.uri().path();
                    if path == "/json" || (path.starts_with("/api/") && path != "/api/status") {
                        server_span(request)
                    } else {
                        tracing::Span::none()
                    }
                })
                .on_request(())
                .on_response(record_response)
                .on_failure(()),
        )
        // Whether a request's trace is kept, decided before its span is made.
        .layer(IncomingTraceLayer)
        .layer(axum::middleware::map_response(secure))
        .with_state(webui)
}

/// Serves the webui on `listener` until `shutdown` resolves, then stops
/// accepting and lets open requests finish for at most [`DRAIN_TIMEOUT`].
///
/// Not `axum::serve`: it installs no timer, so hyper's HTTP/1 header read
/// timeout never fires and a client that sends half a request keeps its
/// connection forever (tokio-rs/axum#2741). This is axum's accept loop with
/// [`HTTP1_HEADER_READ_TIMEOUT`] on, as tonic has it for rng and hasher.
pub async fn serve(
    listener: TcpListener,
    webui: Webui,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebuiError> {
    tracing::info!(
        { fields::LISTEN } = %listener.local_addr()?,
        store = %webui.store.describe(),
        rng = %webui.rng.balancer().url(),
        hasher = %webui.hasher.balancer().url(),
        "webui serving HTTP"
    );
    // The per-hop view's sampler lives as long as the server: the set
    // aborts it when dropped, however this function returns.
    let mut sampler = JoinSet::new();
    sampler.spawn(webui.hops.clone().sample_forever(
        webui.rng.balancer().clone(),
        webui.hasher.balancer().clone(),
        webui.store.clone(),
    ));
    let connections = Connections::new(
        "webui",
        webui.connection_limits,
        Activity::Calls,
        webui.connection_metrics.clone(),
    );
    serve_connections(listener, connections, router(webui), shutdown).await;
    tracing::info!("webui stopped");
    Ok(())
}

/// Serves each admitted connection over HTTP/1 until `shutdown`, then
/// drains them (bounded).
async fn serve_connections(
    listener: TcpListener,
    connections: Connections,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HTTP1_HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let mut open = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let admitted = tokio::select! {
            _ = &mut shutdown => break,
            admitted = connections.accept(&listener) => admitted,
        };
        let peer = admitted.get_ref().peer_addr().ok();
        let service = TowerToHyperService::new(InFlight::on(app.clone(), admitted.connection()));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(admitted), service));
        open.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(?peer, %error, "connection closed on an error");
            }
        });
        // Reap finished connections so the set does not grow without bound.
        while open.try_join_next().is_some() {}
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still open after the drain timeout; closing them");
    }
    // Dropping the set aborts the connections still open.
    drop(open);
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `GET /json`: `{"coins", "hashes", "now"}`, as the original; 503 with a
/// JSON error when Redis does not answer.
async fn score_json(State(webui): State<Webui>) -> Response {
    match webui.store.score().await {
        Ok(score) => {
            if webui.redis_failing.swap(false, Ordering::Relaxed) {
                tracing::info!("Redis is answering again");
            }
            Json(TimedScore {
                coins: score.coins,
                hashes: score.hashes,
                now: unix_now(),
            })
            .into_response()
        }
        Err(error) => {
            if !webui.redis_failing.swap(true, Ordering::Relaxed) {
                tracing::warn!(%error, store = %webui.store.describe(), "cannot read the score");
            }
            let body = ScoreUnavailable {
                error: format!("Redis unavailable: {error}"),
                now: unix_now(),
            };
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// `GET /api/status`: each backend's gRPC health and Redis, with the latency
/// webui sees.
async fn status(State(webui): State<Webui>) -> Json<StatusView> {
    let (rng, hasher, redis) = tokio::join!(
        grpc_health(webui.rng.balancer()),
        grpc_health(webui.hasher.balancer()),
        webui.store.ping(),
    );
    let state = match redis {
        Ok(latency) => RedisState {
            status: "UP".to_owned(),
            latency_ms: Some(ms(latency)),
            error: None,
        },
        Err(error) => RedisState {
            status: "DOWN".to_owned(),
            latency_ms: None,
            error: Some(error.to_string()),
        },
    };
    Json(StatusView {
        rng,
        hasher,
        redis: RedisStatus {
            url: webui.store.describe(),
            state,
        },
    })
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e5).round() / 100.0
}

/// A backend as webui sees it: each replica's health, latency, identity and
/// calls served; the backend's own status is its best replica's; and the
/// policy webui's clients spread calls with (`up` and the compose file give
/// the workers the same one), for `dockercoins top`. Each replica's weight
/// is the one webui's own settings would give it (the compose file gives
/// the workers the same ones).
async fn grpc_health(backend: &Balancer) -> BackendStatus {
    let replicas = backend.replica_channels().await;
    let penalty = backend.weighted_settings().error_penalty;
    let checks = replicas.into_iter().map(|(address, channel)| {
        replica_health(backend.service().grpc, address, channel, penalty)
    });
    let mut replicas: Vec<ReplicaStatus> = futures_util::future::join_all(checks).await;
    let weights: Vec<f64> = replicas.iter().map(|r| r.weight.unwrap_or(0.0)).collect();
    if let Some(shares) = balancer::shares(&weights) {
        for (replica, share) in replicas.iter_mut().zip(shares) {
            replica.share = Some(share);
        }
    }
    let best = replicas
        .iter()
        .find(|r| r.status == "SERVING")
        .or_else(|| replicas.first())
        .cloned()
        .unwrap_or_else(|| unreachable(String::new(), "no address".to_owned()));
    BackendStatus {
        url: backend.url().to_string(),
        policy: Some(backend.policy().name().to_owned()),
        status: best.status,
        latency_ms: best.latency_ms,
        error: best.error,
        replicas,
    }
}

/// One replica's gRPC health, and its identity and calls when it tells them.
async fn replica_health(
    service: &'static str,
    address: String,
    channel: tonic::transport::Channel,
    error_penalty: f64,
) -> ReplicaStatus {
    let start = Instant::now();
    let request = HealthCheckRequest {
        service: service.into(),
    };
    let check = async {
        let health = HealthClient::new(channel.clone()).check(request).await?;
        let info = ReplicaStub::new(channel).info(InfoRequest {}).await.ok();
        Ok::<_, tonic::Status>((health.into_inner().status(), info))
    };
    match tokio::time::timeout(BACKEND_TIMEOUT, check).await {
        Ok(Ok((status, info))) => {
            // `Replica/Info` comes back with the replica's load report.
            let report = info
                .as_ref()
                .and_then(|info| load_report::decode(info.metadata()));
            let info = info.map(tonic::Response::into_inner);
            ReplicaStatus {
                utilization: report.as_ref().map(balancer::utilization_of),
                weight: report
                    .as_ref()
                    .and_then(|r| balancer::weight_of(r, error_penalty)),
                share: None,
                address,
                status: status.as_str_name().to_owned(),
                latency_ms: Some(ms(start.elapsed())),
                instance: Some(info.as_ref().map(|i| i.instance.clone())),
                calls: Some(info.map(|i| i.calls)),
                error: None,
            }
        }
        Ok(Err(status)) => unreachable(address, status.message().to_owned()),
        Err(_) => unreachable(address, "no answer in 2 s".to_owned()),
    }
}

fn unreachable(address: String, error: String) -> ReplicaStatus {
    ReplicaStatus {
        address,
        status: "UNREACHABLE".to_owned(),
        error: Some(error),
        ..ReplicaStatus::default()
    }
}

/// A gateway failure, answered as JSON.
#[derive(Debug, thiserror::Error)]
enum GatewayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{backend}: {status}")]
    Backend {
        backend: &'static str,
        status: tonic::Status,
    },
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let (code, body) = match &self {
            Self::BadRequest(reason) => (StatusCode::BAD_REQUEST, json!({"error": reason})),
            Self::Backend { backend, status } => {
                let code = match status.code() {
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                    tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                    _ => StatusCode::BAD_GATEWAY,
                };
                let body = json!({
                    "error": format!("{backend} failed: {}", status.message()),
                    "backend": backend,
                    "grpc_status": format!("{:?}", status.code()),
                });
                // An overloaded backend's pause, passed on to the browser.
                if let Some(pause) = overload::asked(status) {
                    let retry_after = overload::retry_after_header(pause);
                    return (code, [retry_after], Json(body)).into_response();
                }
                (code, body)
            }
        };
        (code, Json(body)).into_response()
    }
}

/// The reply of a gateway call to `backend`, within [`BACKEND_TIMEOUT`].
async fn answer<T>(
    backend: &Balancer,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, GatewayError> {
    tokio::time::timeout(BACKEND_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in 2 s")))
        .map_err(|status| GatewayError::Backend {
            backend: backend.name(),
            status,
        })
}

/// `GET /api/rng/<n>`: `Rng/Generate`, the bytes as hex.
async fn gateway_rng(
    State(webui): State<Webui>,
    Path(size): Path<String>,
) -> Result<Json<Value>, GatewayError> {
    let size = parse_size(&size).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    let data = answer(webui.rng.balancer(), webui.rng.generate(size as u32)).await?;
    Ok(Json(json!({"size": data.len(), "hex": hex::encode(&data)})))
}

/// `POST /api/hash` with any body: `Hasher/Hash`, `{"hex": ...}`.
async fn gateway_hash(State(webui): State<Webui>, body: Result<Bytes, BytesRejection>) -> Response {
    match overload::whole_body(body) {
        Ok(body) => gateway_hash_of(webui, body).await.into_response(),
        Err(unread) => unread.into_response(),
    }
}

async fn gateway_hash_of(webui: Webui, body: Bytes) -> Result<Json<Value>, GatewayError> {
    let hex = answer(webui.hasher.balancer(), webui.hasher.hash(body)).await?;
    Ok(Json(json!({"hex": hex})))
}
