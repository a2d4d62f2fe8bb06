//! What every gRPC server of dockercoins shares: the plain-HTTP routes of the
//! original lab on the same port as gRPC, gRPC health and server reflection
//! (v1 and v1alpha), `GET /metrics` with every call measured, explicit
//! limits, and one graceful shutdown with a bound.
//!
//! The services themselves (`rng`, `hasher`) only bring their gRPC service and
//! their legacy HTTP routes.
//!
//! Here, [`GrpcServer`] assembles them; beside it, the layers in front of a
//! service, one idea each: [`connections`] (how many a server holds, and for
//! how long), [`call_meter`] (every call measured), [`guarded`] (a guard held
//! until a response body ends, which both use), [`deadline`] (a call's
//! deadline and the delay paid before it), [`overload`] (how a full server
//! says no), [`load_report`] (the ORCA load report in every response's
//! trailers), [`faults`] (what the resilience lab injects) and [`limits`]
//! (every size limit on outside input).

pub mod call_meter;
pub mod connections;
pub mod deadline;
pub mod faults;
pub mod guarded;
pub mod limits;
pub mod load_report;
pub mod overload;
pub mod streamed;

use self::{
    call_meter::CallMeterLayer,
    connections::{Activity, ConnectionLimits, Connections, InFlightLayer},
    faults::Faults,
    load_report::{Busy, LoadReportLayer, LoadReporter},
};
use crate::{
    pb::{
        InfoRequest, InfoResponse,
        hasher_server::SERVICE_NAME as HASHER_SERVICE,
        replica_server::{Replica, ReplicaServer},
        rng_server::SERVICE_NAME as RNG_SERVICE,
    },
    protocol::SERVED_BY,
    server::call_meter::metrics::ServerCalls,
    server::connections::metrics::ConnectionMetrics,
    shutdown::DRAIN_TIMEOUT,
    telemetry::metrics::{Exposition, Registry},
    telemetry::{
        fields, hostname, is_grpc, record_response, record_trailers, sampling::IncomingTraceLayer,
        server_span,
    },
    tls::ServerTls,
};
use axum::{
    extract::Request,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use prometheus_client::metrics::gauge::Gauge;
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use std::{convert::Infallible, future::Future, time::Duration};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{server::NamedService, service::Routes, transport::Server};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower_http::{
    limit::RequestBodyLimitLayer, set_header::SetResponseHeaderLayer, trace::TraceLayer,
};

/// Connections older than this are closed gracefully, so clients that keep
/// one connection for ever (a naive gRPC client) still move to new replicas.
/// Long enough that the lab can show the pinned trap first.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);

/// Calls in flight on a connection past its age get this long to finish.
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(10);

/// How long a stopping server keeps serving normally after it reports
/// NOT_SERVING, before it stops accepting (GOAWAY): a lame duck. Clients
/// that watch `grpc.health.v1.Health/Watch` (or probe it) hear it and stop
/// sending new calls there, so no call of theirs meets a closed listener.
/// Short, because it counts against [`DRAIN_TIMEOUT`]: a stop still takes at
/// most that long (`docker stop` users expect about a second).
pub const DRAIN_NOTICE: Duration = Duration::from_millis(250);

/// What rng and hasher are told alike, beside their own work: TLS, the
/// faults to inject, and their bounds on connections. Each one's config
/// holds one, as `server`; [`GrpcServer::new`] takes it whole.
#[derive(Clone, Debug, Default)]
pub struct ServerSettings {
    /// TLS (and mutual TLS) when set; plaintext, HTTP/1.1 routes included,
    /// otherwise.
    pub tls: Option<ServerTls>,
    /// Failures and extra delays to inject, for the resilience lab; none
    /// by default.
    pub faults: Faults,
    /// How many connections it holds at once, and for how long.
    pub connections: ConnectionLimits,
}

/// What the settings add to a service's own, on the line that says it
/// serves: its injected faults, if any (TLS and the connection bound are
/// fields of that line).
impl std::fmt::Display for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.faults.is_none() {
            write!(f, "; injected faults: {}", self.faults)?;
        }
        Ok(())
    }
}

/// Why a server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read the listener's address: {0}")]
    Listener(#[from] std::io::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A gRPC server under construction: health and the legacy HTTP routes are in
/// from the start, services are added with [`Self::add_service`], and
/// reflection listing exactly those services is added by [`Self::serve`].
pub struct GrpcServer {
    /// The service's name (`rng`, `hasher`), for its log lines.
    name: &'static str,
    /// Every route of the port: gRPC services by path, legacy HTTP beside them.
    routes: Routes,
    /// Turned to NOT_SERVING for every name in `services` once shutdown begins.
    health: HealthReporter,
    /// The gRPC services added, whose health is reported by name.
    services: Vec<&'static str>,
    /// TLS (and mutual TLS) when set; plaintext otherwise.
    tls: Option<ServerTls>,
    /// Where the calls to `services` are measured.
    calls: ServerCalls,
    /// A queue in front of the service (rng's lane), said in `Replica/Info`.
    queue: Option<Gauge>,
    /// The faults the service injects, for people (empty: none), said in
    /// `Replica/Info`.
    faults: String,
    /// How busy the service is by its own measure, in its load reports.
    busy: Option<Arc<dyn Busy>>,
    /// How many connections it holds, and for how long.
    connection_limits: ConnectionLimits,
    connection_metrics: ConnectionMetrics,
}

/// The services whose calls a replica counts for `Replica/Info`: the
/// mesh's work, not health checks, reflection or `Replica/Info` itself.
const COUNTED_SERVICES: [&str; 2] = [RNG_SERVICE, HASHER_SERVICE];

impl GrpcServer {
    /// The server of `name`, whose non-gRPC requests go to `legacy` (HTTP/1.1
    /// routes of the original lab; request bodies there are capped at
    /// [`limits::MAX_BLOCK_BYTES`]), as `settings` say: over TLS when set,
    /// its faults said in `Replica/Info`, its connections bounded. Over TLS the
    /// port negotiates HTTP/2 only (tonic's acceptor offers ALPN `h2` alone),
    /// so the legacy routes answer HTTP/2 clients there, not HTTP/1.1 ones.
    /// `GET /metrics` serves `registry`, the server's calls added to what
    /// the service registered there.
    pub fn new(
        name: &'static str,
        legacy: axum::Router,
        settings: &ServerSettings,
        mut registry: Registry,
    ) -> Self {
        let tls = settings.tls.clone();
        let calls = ServerCalls::register(&mut registry);
        let connection_metrics = ConnectionMetrics::register(&mut registry);
        let legacy = legacy
            .route("/metrics", Exposition::new(registry).route())
            .fallback(not_found)
            .layer(RequestBodyLimitLayer::new(limits::MAX_BLOCK_BYTES));
        let (health, health_service) = tonic_health::server::health_reporter();
        // Health, Replica and reflection requests are a name at most.
        let health_service =
            health_service.max_decoding_message_size(limits::MAX_SMALL_REQUEST_BYTES);
        if let Some(tls) = &tls {
            tls.log(name);
        }
        Self {
            name,
            routes: Routes::from(legacy),
            health,
            services: Vec::new(),
            tls,
            calls,
            queue: None,
            faults: settings.faults.to_string(),
            busy: None,
            connection_limits: settings.connections,
            connection_metrics,
        }
        .add_service(health_service)
    }

    /// Adds a gRPC service and reports it SERVING by name once serving starts.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<
                axum::http::Request<tonic::body::Body>,
                Error = Infallible,
                Response: IntoResponse,
                Future: Send + 'static,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
    {
        self.routes = self.routes.add_service(service);
        self.services.push(S::NAME);
        self
    }

    /// Says `depth` (how many requests wait for the service) in
    /// `Replica/Info`.
    pub fn with_queue(mut self, depth: Gauge) -> Self {
        self.queue = Some(depth);
        self
    }

    /// Says how busy the service is, by its own measure, in the load
    /// report of every response (without it, reports have CPU and rates
    /// only).
    pub fn with_busy(mut self, busy: Arc<dyn Busy>) -> Self {
        self.busy = Some(busy);
        self
    }

    /// Server reflection in both versions (grpcurl before 1.8.8 and older
    /// grpcui speak only v1alpha), listing exactly the services of this server.
    fn with_reflection(mut self) -> Result<Self, ServeError> {
        let builder = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .include_reflection_service(false)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                )
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection");
            for name in &self.services {
                builder = builder.with_service_name(*name);
            }
            builder
        };
        let (v1, v1alpha) = (
            builder()
                .build_v1()?
                .max_decoding_message_size(limits::MAX_SMALL_REQUEST_BYTES),
            builder()
                .build_v1alpha()?
                .max_decoding_message_size(limits::MAX_SMALL_REQUEST_BYTES),
        );
        self.routes = self.routes.add_service(v1).add_service(v1alpha);
        Ok(self)
    }

    /// The `Replica` service every server answers (who it is, what it
    /// served), as `instance`, counting its calls in `calls_served`.
    fn with_replica(self, instance: &str, calls_served: Arc<AtomicU64>) -> Self {
        let replica = ReplicaService {
            instance: instance.to_owned(),
            calls: calls_served,
            measured: self.calls.clone(),
            queue: self.queue.clone(),
            faults: self.faults.clone(),
        };
        self.add_service(
            ReplicaServer::new(replica).max_decoding_message_size(limits::MAX_SMALL_REQUEST_BYTES),
        )
    }

    /// Serves gRPC (HTTP/2) and the legacy routes (HTTP/1.1) on `listener`
    /// until `shutdown` resolves; then reports NOT_SERVING, keeps serving for
    /// [`DRAIN_NOTICE`], stops accepting, lets in-flight calls finish, and
    /// returns: [`DRAIN_TIMEOUT`] after `shutdown` at the latest.
    /// `settings` are logged with the line that says it serves.
    pub async fn serve(
        self,
        listener: TcpListener,
        settings: String,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let local = listener.local_addr()?;
        let instance = format!("{}:{}", hostname(), local.port());
        let calls_served = Arc::new(AtomicU64::new(0));
        let this = self
            .with_replica(&instance, calls_served.clone())
            .with_reflection()?;
        let connections = Connections::new(
            this.name,
            this.connection_limits,
            Activity::Calls,
            this.connection_metrics.clone(),
        );
        let Self {
            name,
            routes,
            health,
            services,
            tls,
            calls,
            busy,
            ..
        } = this;
        report(&health, &services, ServingStatus::Serving).await;
        tracing::info!(
            { fields::LISTEN } = %local,
            tls = tls.is_some(),
            max_connections = connections.limits().max,
            "{name} serving {} ({settings})",
            if tls.is_some() { "gRPC and HTTP/2 over TLS" } else { "gRPC and HTTP/1.1" }
        );
        let (drain_tx, drain_rx) = oneshot::channel::<()>();
        let layers = Layers {
            instance: &instance,
            replica_calls: calls_served,
            meter: CallMeterLayer::new(calls, &services),
            load: LoadReportLayer::new(LoadReporter::new(&COUNTED_SERVICES, busy)),
        };
        let server = transport(
            routes,
            tls.as_ref(),
            layers,
            connections,
            listener,
            drain_rx,
        )?;
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return Ok(result?),
            () = shutdown => {}
        }
        stop(server, &health, &services, drain_tx).await
    }
}

/// Stops `server` once its shutdown has begun: health NOT_SERVING first, so
/// that a balancer or probe stops sending new work before the listener
/// closes; serving on for [`DRAIN_NOTICE`]; then `drain` (no new
/// connections), in-flight calls finishing within [`DRAIN_TIMEOUT`].
async fn stop(
    mut server: std::pin::Pin<&mut impl Future<Output = Result<(), tonic::transport::Error>>>,
    health: &HealthReporter,
    services: &[&'static str],
    drain: oneshot::Sender<()>,
) -> Result<(), ServeError> {
    report(health, services, ServingStatus::NotServing).await;
    tracing::info!(
        notice_ms = DRAIN_NOTICE.as_millis() as u64,
        "health NOT_SERVING; serving on a little before draining"
    );
    let stopping = tokio::time::Instant::now();
    tokio::select! {
        result = &mut server => return Ok(result?),
        () = tokio::time::sleep(DRAIN_NOTICE) => {}
    }
    tracing::info!("draining in-flight calls");
    let _ = drain.send(());
    match tokio::time::timeout_at(stopping + DRAIN_TIMEOUT, server).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!(
            drain_ms = DRAIN_TIMEOUT.as_millis() as u64,
            "calls still in flight after the drain timeout; closing their connections"
        ),
    }
    tracing::info!("stopped");
    Ok(())
}

/// What the layers of a server's transport need.
struct Layers<'a> {
    /// `host:port`, said in `x-served-by`.
    instance: &'a str,
    /// The calls counted for `Replica/Info`.
    replica_calls: Arc<AtomicU64>,
    meter: CallMeterLayer,
    load: LoadReportLayer,
}

/// The transport under a server: the routes, behind the layers every
/// server here has (call counting, tracing, metrics, `x-served-by`) and its
/// limits, served on `listener` until `drain` fires (or for ever if its
/// sender is dropped without firing), holding `connections`.
fn transport(
    routes: Routes,
    tls: Option<&ServerTls>,
    layers: Layers<'_>,
    connections: Connections,
    listener: TcpListener,
    drain: oneshot::Receiver<()>,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>>, ServeError> {
    let served_by = axum::http::HeaderValue::from_str(layers.instance)
        .unwrap_or_else(|_| axum::http::HeaderValue::from_static("unknown"));
    let incoming = connections.incoming(listener);
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.config())?;
    }
    let server = builder
        // Outermost, so a call counts on its connection as long as any
        // layer holds it.
        .layer(InFlightLayer)
        .layer(count_calls(layers.replica_calls))
        // Whether the call's trace is kept, decided before its span is made.
        .layer(IncomingTraceLayer)
        .layer(
            TraceLayer::new_for_grpc()
                .make_span_with(server_span)
                .on_request(())
                .on_response(record_response)
                .on_eos(record_trailers)
                .on_failure(()),
        )
        // Inside the server span: a sampled call's trace is its exemplar.
        .layer(layers.meter)
        // Every gRPC answer says how loaded this replica is (gRFC A51).
        .layer(layers.load)
        // Says which replica answered: clients count calls per replica.
        .layer(SetResponseHeaderLayer::overriding(
            axum::http::HeaderName::from_static(SERVED_BY),
            served_by,
        ))
        .accept_http1(true)
        // A backstop for clients that do not balance: they reconnect (and
        // resolve the name again) at least this often.
        .max_connection_age(MAX_CONNECTION_AGE)
        .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE);
    Ok(http2_settings(server)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async {
            // A dropped sender (no shutdown ever) must not stop the server.
            if drain.await.is_err() {
                std::future::pending::<()>().await;
            }
        }))
}

/// The HTTP/2 settings every gRPC server here has, and `bench`'s floor,
/// which must differ from them only in doing nothing: stream and header
/// limits, keepalive.
pub fn http2_settings<L>(server: Server<L>) -> Server<L> {
    server
        .max_concurrent_streams(limits::MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(limits::MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
}

/// Reports every service of the server (and, when it stops, the server as a
/// whole: the empty name) with `status`.
async fn report(health: &HealthReporter, services: &[&'static str], status: ServingStatus) {
    let whole = (status == ServingStatus::NotServing).then_some("");
    for name in services.iter().copied().chain(whole) {
        health.set_service_status(name, status).await;
    }
}

/// Counts the calls to [`COUNTED_SERVICES`] this replica serves, for
/// `Replica/Info`.
fn count_calls(
    calls: Arc<AtomicU64>,
) -> tower::util::MapRequestLayer<
    impl Fn(axum::http::Request<tonic::body::Body>) -> axum::http::Request<tonic::body::Body> + Clone,
> {
    tower::util::MapRequestLayer::new(move |request: axum::http::Request<tonic::body::Body>| {
        let service = request.uri().path().split('/').nth(1).unwrap_or_default();
        if COUNTED_SERVICES.contains(&service) {
            calls.fetch_add(1, Ordering::Relaxed);
        }
        request
    })
}

/// `dockercoins.v1.Replica`: who this replica is, how many calls it served,
/// and how long they took.
struct ReplicaService {
    instance: String,
    calls: Arc<AtomicU64>,
    measured: ServerCalls,
    /// rng's lane: how many wait now.
    queue: Option<Gauge>,
    /// The faults injected, for people.
    faults: String,
}

#[tonic::async_trait]
impl Replica for ReplicaService {
    async fn info(
        &self,
        _request: tonic::Request<InfoRequest>,
    ) -> Result<tonic::Response<InfoResponse>, tonic::Status> {
        Ok(tonic::Response::new(InfoResponse {
            instance: self.instance.clone(),
            calls: self.calls.load(Ordering::Relaxed),
            methods: self.measured.latencies().report(&COUNTED_SERVICES),
            lane_queue: self.queue.as_ref().map_or(0, |q| q.get().max(0) as u64),
            faults: self.faults.clone(),
        }))
    }
}

/// Unknown routes: a gRPC UNIMPLEMENTED status for gRPC clients, a plain 404
/// for everyone else.
async fn not_found(request: Request) -> Response {
    if is_grpc(request.headers()) {
        tonic::Status::unimplemented(format!("unknown method {}", request.uri().path()))
            .into_http::<axum::body::Body>()
    } else {
        (StatusCode::NOT_FOUND, "not found\n").into_response()
    }
}
