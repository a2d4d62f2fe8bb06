//! rng: random bytes, over gRPC (`dockercoins.v1.Rng`) and over the original
//! plain-HTTP routes (`GET /`, `GET /<n>`) on the same port.
//!
//! The lab's bottleneck lives here: every request waits for a [`Lane`], then
//! pays the configured delay while holding it. With one lane (the classroom
//! default) rng serves strictly one request at a time, whichever protocol it
//! came by, so ten workers queue behind each other. Its queue depth and each
//! request's wait are on `/metrics` (`rng_lane_queue_depth`,
//! `rng_lane_wait_seconds`).
//!
//! A gRPC request that states a deadline (`grpc-timeout`) is served only if
//! it can be in time: the lane gives up on it, with DEADLINE_EXCEEDED, as
//! soon as its wait plus the delay would overrun, and it leaves the queue
//! (`rng_deadline_expired_total`). Injected faults (`--fail-rate`,
//! `--extra-delay`) strike here too, see [`Lane::serve`] and
//! [`RngService`].
//!
//! Layout: `lane.rs` is the lane (the queue, its deadlines, its refusals),
//! [`metrics`] what rng measures of its own; this file holds the config,
//! [`serve`], the gRPC service and the legacy HTTP routes.

mod lane;
pub mod metrics;

pub use lane::{Lane, Refused, Turn};
use metrics::RngMetrics;

use crate::{
    pb::{
        GenerateRequest, GenerateResponse, GenerateStreamRequest, GenerateStreamResponse,
        rng_server::{Rng as RngApi, RngServer},
    },
    protocol::RNG_PORT,
    server::deadline::{self, Expired},
    server::faults::Injector,
    server::limits::{MAX_BLOCK_BYTES, MAX_STREAM_BLOCKS, MAX_STREAM_BYTES, STREAM_MESSAGE_BYTES},
    server::overload::Overloaded,
    server::streamed::{Streamed, streamed},
    server::{GrpcServer, ServeError, ServerSettings},
    telemetry::hostname,
    telemetry::metrics::Registry,
};
use axum::{
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::{Bytes, BytesMut};
use rand::RngCore;
use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};
use tokio::net::TcpListener;
use tonic::{Request, Status};

/// Where `dockercoins rng` listens unless told otherwise.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, RNG_PORT));

/// The classroom's cost of a request: the original's `time.sleep(0.1)`.
pub const DEFAULT_DELAY_MS: u64 = 100;

/// The classroom's lanes: one request at a time, the lab's bottleneck.
/// (0 on the command line means unlimited.)
pub const DEFAULT_LANES: usize = 1;

/// Requests that may wait for a lane; the next are refused at once. Room for
/// the lesson (ten workers, a class's httping, grpcurl) many times over,
/// and a bound on what a flood can pin: 256 waiting requests hold a few MB.
pub const DEFAULT_LANE_QUEUE: usize = 256;

/// What the rng service needs to run.
#[derive(Clone, Debug)]
pub struct RngConfig {
    /// Cost of one request (or one stream message) once it holds a lane.
    pub delay: Duration,
    /// How many requests hold a lane at once; `None` is unlimited.
    pub lanes: Option<usize>,
    /// How many may wait for a lane; the next are refused at once
    /// (RESOURCE_EXHAUSTED, HTTP 503). Unused when lanes are unlimited.
    pub queue: usize,
    /// TLS, injected faults and connection bounds, as hasher has them.
    pub server: ServerSettings,
}

impl RngConfig {
    /// The original lab: 100 ms a request, one request at a time.
    pub fn classroom() -> Self {
        Self {
            delay: Duration::from_millis(DEFAULT_DELAY_MS),
            lanes: Some(DEFAULT_LANES),
            queue: DEFAULT_LANE_QUEUE,
            server: ServerSettings::default(),
        }
    }

    /// No delay, no queue: how fast the mesh really is.
    pub fn turbo() -> Self {
        Self {
            delay: Duration::ZERO,
            lanes: None,
            queue: DEFAULT_LANE_QUEUE,
            server: ServerSettings::default(),
        }
    }
}

impl std::fmt::Display for RngConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ms a request, ", self.delay.as_millis())?;
        match self.lanes {
            Some(1) => write!(f, "1 lane")?,
            Some(lanes) => write!(f, "{lanes} lanes")?,
            None => write!(f, "unlimited lanes")?,
        }
        if self.lanes.is_some() {
            write!(f, ", at most {} waiting", self.queue)?;
        }
        write!(f, "{}", self.server)
    }
}

/// Runs rng on `listener` until `shutdown` resolves, over TLS when the
/// config says so.
pub async fn serve(
    listener: TcpListener,
    config: RngConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut registry = Registry::default();
    let metrics = RngMetrics::register(&mut registry);
    let queue = metrics.lane.queue.clone();
    let service = RngService::measured(&config, metrics);
    let legacy = service.legacy_routes(hostname());
    GrpcServer::new("rng", legacy, &config.server, registry)
        .with_queue(queue)
        .with_busy(service.lane.clone())
        .add_service(service.into_server())
        .serve(listener, config.to_string(), shutdown)
        .await
}

/// Why an rng request is refused. Every variant is the caller's mistake.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RngError {
    #[error("size must be between 1 and {MAX_BLOCK_BYTES} bytes, got {0}")]
    Size(u64),
    #[error("count must be between 1 and {MAX_STREAM_BLOCKS}, got {0}")]
    Count(u64),
    #[error("size * count must be at most {MAX_STREAM_BYTES} bytes, got {0}")]
    StreamBytes(u64),
    #[error("size must be a whole number of bytes, got {0:?}")]
    NotANumber(String),
    /// Never over HTTP, which states no deadline; here so that the lane's
    /// answer has one type whatever the protocol.
    #[error(transparent)]
    Expired(#[from] Expired),
    /// Not the caller's mistake: rng is overloaded, and says when to ask
    /// again.
    #[error(transparent)]
    Full(#[from] Overloaded),
}

impl From<Refused> for RngError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Expired(expired) => expired.into(),
            Refused::Full(full) => full.into(),
        }
    }
}

impl From<Refused> for Status {
    fn from(refused: Refused) -> Self {
        RngError::from(refused).into()
    }
}

impl From<RngError> for Status {
    fn from(error: RngError) -> Self {
        match error {
            RngError::Expired(expired) => expired.into(),
            RngError::Full(full) => full.into(),
            other => Status::invalid_argument(other.to_string()),
        }
    }
}

impl IntoResponse for RngError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Expired(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Full(full) => return full.into_response(),
            _ => StatusCode::BAD_REQUEST,
        };
        (status, format!("{self}\n")).into_response()
    }
}

/// Checks a block size asked for by a client.
pub fn check_size(size: u64) -> Result<usize, RngError> {
    match usize::try_from(size) {
        Ok(n) if (1..=MAX_BLOCK_BYTES).contains(&n) => Ok(n),
        _ => Err(RngError::Size(size)),
    }
}

/// Parses and checks a size written in a URL path (`GET /32`).
pub fn parse_size(text: &str) -> Result<usize, RngError> {
    let size = text
        .parse::<u64>()
        .map_err(|_| RngError::NotANumber(text.to_owned()))?;
    check_size(size)
}

/// How a `GenerateStream` call is cut into messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamPlan {
    /// Bytes per block.
    pub size: usize,
    /// Blocks in the whole stream.
    pub count: usize,
    /// Blocks per message (the last message may carry fewer).
    pub per_message: usize,
}

impl StreamPlan {
    /// Checks a stream request against the limits and plans its messages.
    pub fn new(size: u64, count: u64) -> Result<Self, RngError> {
        let size = check_size(size)?;
        let count = match usize::try_from(count) {
            Ok(n) if (1..=MAX_STREAM_BLOCKS).contains(&n) => n,
            _ => return Err(RngError::Count(count)),
        };
        let total = size as u64 * count as u64;
        if total > MAX_STREAM_BYTES as u64 {
            return Err(RngError::StreamBytes(total));
        }
        let per_message = (STREAM_MESSAGE_BYTES / size).clamp(1, count);
        Ok(Self {
            size,
            count,
            per_message,
        })
    }

    /// Blocks in each message, in order.
    pub fn messages(self) -> impl Iterator<Item = usize> {
        (0..self.count)
            .step_by(self.per_message)
            .map(move |start| self.per_message.min(self.count - start))
    }
}

/// Random bytes made at once, per thread, and handed out in slices: one
/// allocation and one pass of the generator for 2,048 unary calls, rather
/// than one each (the slices share the reserve, freed when the last goes).
const RESERVE_BYTES: usize = 64 * 1024;

thread_local! {
    static RESERVE: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// `len` random bytes from the thread-local CSPRNG (ChaCha, seeded by the
/// OS); a request under [`RESERVE_BYTES`] is cut from the thread's reserve.
pub fn random_bytes(len: usize) -> Bytes {
    let fresh = |len| {
        let mut buf = BytesMut::zeroed(len);
        rand::rng().fill_bytes(&mut buf);
        buf
    };
    if len >= RESERVE_BYTES {
        return fresh(len).freeze();
    }
    RESERVE.with_borrow_mut(|reserve| {
        if reserve.len() < len {
            *reserve = fresh(RESERVE_BYTES);
        }
        reserve.split_to(len).freeze()
    })
}

/// The `dockercoins.v1.Rng` gRPC service.
///
/// An injected failure answers at once, before the call takes a place in
/// the lane: a failing replica fails fast, and costs the calls queued there
/// nothing. A stream's fate is drawn once, for the whole call (the rate is
/// a share of calls, whatever their kind); its extra delays, paid per
/// message in the lane as its delay is.
#[derive(Clone, Debug)]
pub struct RngService {
    /// Shared with the legacy HTTP routes: one queue whatever the protocol.
    lane: Arc<Lane>,
    /// The failures to inject (gRPC calls only: their codes are gRPC's).
    faults: Injector,
}

impl RngService {
    /// The service, its lane measured for nobody (tests, benches).
    pub fn new(config: &RngConfig) -> Self {
        Self::measured(config, RngMetrics::unregistered())
    }

    /// The service, its lane, its deadlines and its faults measured in
    /// `metrics`.
    pub fn measured(config: &RngConfig, metrics: RngMetrics) -> Self {
        let lane = Lane::new(config, metrics);
        Self {
            faults: lane.faults.clone(),
            lane: Arc::new(lane),
        }
    }

    /// The service wrapped for tonic, with explicit message limits: requests
    /// are a few bytes, replies at most one maximal block.
    pub fn into_server(self) -> RngServer<Self> {
        RngServer::new(self)
            .max_decoding_message_size(crate::server::limits::MAX_SMALL_REQUEST_BYTES)
            .max_encoding_message_size(crate::server::limits::MAX_GRPC_MESSAGE_BYTES)
    }

    /// The original lab's plain-HTTP routes, sharing this service's lane.
    pub fn legacy_routes(&self, hostname: String) -> axum::Router {
        let state = LegacyState {
            lane: self.lane.clone(),
            banner: format!("RNG running on {hostname}\n"),
        };
        axum::Router::new()
            .route("/", get(legacy_index))
            .route("/{size}", get(legacy_bytes))
            .with_state(state)
    }
}

#[tonic::async_trait]
impl RngApi for RngService {
    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<tonic::Response<GenerateResponse>, Status> {
        let deadline = deadline::of(&request);
        self.faults.failure()?;
        let size = check_size(request.get_ref().size.into())?;
        let data = self.lane.serve(deadline, || random_bytes(size)).await?;
        Ok(tonic::Response::new(GenerateResponse { data }))
    }

    type GenerateStreamStream = Streamed<GenerateStreamResponse>;

    async fn generate_stream(
        &self,
        request: Request<GenerateStreamRequest>,
    ) -> Result<tonic::Response<Self::GenerateStreamStream>, Status> {
        // The call's deadline bounds the whole stream (tonic's own timer
        // stops at the response's headers, so the lane is the only bound).
        let deadline = deadline::of(&request);
        self.faults.failure()?;
        let request = request.get_ref();
        let plan = StreamPlan::new(request.size.into(), request.count.into())?;
        let lane = self.lane.clone();
        Ok(streamed(move |tx| async move {
            for blocks in plan.messages() {
                let work = lane.serve(deadline, || random_bytes(blocks * plan.size));
                // A client that goes away gives its place in the lane back.
                let blocks = tokio::select! {
                    blocks = work => blocks,
                    () = tx.closed() => return,
                };
                // A message that cannot be served in time ends the stream.
                let blocks = match blocks {
                    Ok(blocks) => blocks,
                    Err(expired) => {
                        let _ = tx.send(Err(expired.into())).await;
                        return;
                    }
                };
                let message = GenerateStreamResponse {
                    size: plan.size as u32,
                    blocks,
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        }))
    }
}

/// State of the legacy routes.
#[derive(Clone)]
struct LegacyState {
    lane: Arc<Lane>,
    /// `RNG running on <hostname>`, as the original said.
    banner: String,
}

/// `GET /`: cheap, but it still waits for its turn in the lane, so httping on
/// rng's port shows the queue the workers are in.
async fn legacy_index(State(state): State<LegacyState>) -> Result<String, RngError> {
    // HTTP states no deadline: the wait cannot expire, but a full queue
    // refuses it (503 with Retry-After).
    let _turn = state.lane.wait_turn(None).await?;
    Ok(state.banner.clone())
}

/// `GET /<n>`: `n` random bytes.
async fn legacy_bytes(
    State(state): State<LegacyState>,
    Path(size): Path<String>,
) -> Result<Response, RngError> {
    let size = parse_size(&size)?;
    // No deadline over HTTP: nothing expires.
    let data = state
        .lane
        .serve(None, || random_bytes(size))
        .await
        .map_err(RngError::from)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_outside_the_limits_are_refused() {
        assert_eq!(check_size(0), Err(RngError::Size(0)));
        assert_eq!(check_size(1), Ok(1));
        assert_eq!(check_size(MAX_BLOCK_BYTES as u64), Ok(MAX_BLOCK_BYTES));
        let over = MAX_BLOCK_BYTES as u64 + 1;
        assert_eq!(check_size(over), Err(RngError::Size(over)));
        assert_eq!(check_size(u64::MAX), Err(RngError::Size(u64::MAX)));
    }

    #[test]
    fn streams_are_cut_into_messages_that_add_up() {
        let plan = StreamPlan::new(32, 5000).unwrap();
        assert_eq!(plan.per_message, STREAM_MESSAGE_BYTES / 32);
        let messages: Vec<_> = plan.messages().collect();
        assert_eq!(messages.iter().sum::<usize>(), 5000);
        assert!(messages.iter().all(|&n| n <= plan.per_message));

        let big = StreamPlan::new(MAX_BLOCK_BYTES as u64, 3).unwrap();
        assert_eq!(big.messages().collect::<Vec<_>>(), vec![1, 1, 1]);

        let small = StreamPlan::new(32, 1).unwrap();
        assert_eq!(small.messages().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn stream_limits_are_enforced() {
        assert_eq!(StreamPlan::new(32, 0), Err(RngError::Count(0)));
        let over = MAX_STREAM_BLOCKS as u64 + 1;
        assert_eq!(StreamPlan::new(32, over), Err(RngError::Count(over)));
        assert_eq!(StreamPlan::new(0, 10), Err(RngError::Size(0)));
        let bytes = MAX_BLOCK_BYTES as u64 * 1024;
        assert_eq!(
            StreamPlan::new(MAX_BLOCK_BYTES as u64, 1024),
            Err(RngError::StreamBytes(bytes))
        );
    }

    #[test]
    fn random_bytes_have_the_asked_length_and_vary() {
        let a = random_bytes(32);
        let b = random_bytes(32);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        // Across reserves: every slice has its length and none repeats the
        // one before (the reserve is refilled, not reused as it was).
        let slices: Vec<Bytes> = (0..3 * RESERVE_BYTES / 1000)
            .map(|_| random_bytes(1000))
            .collect();
        assert!(slices.iter().all(|slice| slice.len() == 1000));
        assert!(slices.windows(2).all(|pair| pair[0] != pair[1]));
        assert_eq!(random_bytes(RESERVE_BYTES + 1).len(), RESERVE_BYTES + 1);
    }
}

/// Property tests: whatever text or numbers a client sends, the parsers
/// accept exactly what the limits allow and never panic.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// What a client may write after `GET /`: numbers near every boundary,
    /// signs, leading zeros, overflow, trailing garbage, any Unicode.
    fn size_text() -> impl Strategy<Value = String> {
        let max = MAX_BLOCK_BYTES as u64;
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            (0..=max + 2).prop_map(|n| n.to_string()),
            (max - 2..=max + 2).prop_map(|n| n.to_string()),
            "[+-]?0{0,30}[0-9]{0,25}",
            "[0-9]{1,7}[ a-zA-Z.eE_,x%+-]{1,3}[0-9]{0,3}",
            "[ \t]?[0-9]{1,4}[ \t]?",
            "[０-９٠-٩]{1,4}",
            "\\PC{0,12}",
        ]
    }

    /// The oracle, written independently of `parse_size`: an optional `+`,
    /// ASCII digits only, a value that fits in u64 and lies in range.
    fn expected(text: &str) -> Result<usize, RngError> {
        let digits = text.strip_prefix('+').unwrap_or(text);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RngError::NotANumber(text.to_owned()));
        }
        let significant = digits.trim_start_matches('0');
        // 20 digits or more can exceed u64: not a number for u64 either.
        let value: u128 = if significant.is_empty() {
            0
        } else if significant.len() > 20 {
            u128::MAX
        } else {
            significant.parse().unwrap()
        };
        match u64::try_from(value) {
            Err(_) => Err(RngError::NotANumber(text.to_owned())),
            Ok(v) if (1..=MAX_BLOCK_BYTES as u64).contains(&v) => Ok(v as usize),
            Ok(v) => Err(RngError::Size(v)),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn parse_size_accepts_exactly_the_sizes_in_range(text in size_text()) {
            prop_assert_eq!(parse_size(&text), expected(&text));
        }

        #[test]
        fn a_size_in_a_url_means_what_the_same_number_means_in_grpc(size in any::<u64>()) {
            prop_assert_eq!(parse_size(&size.to_string()), check_size(size));
        }

        /// Every stream request is refused or cut into messages that add up
        /// to exactly `count` blocks, none over the gRPC message limit.
        #[test]
        fn stream_plans_add_up_and_respect_every_limit(
            (size, count) in prop_oneof![
                (any::<u32>(), any::<u32>()).prop_map(|(s, c)| (u64::from(s), u64::from(c))),
                (any::<u64>(), any::<u64>()),
                (0..=MAX_BLOCK_BYTES as u64 + 1, 0..=MAX_STREAM_BLOCKS as u64 + 1),
                // Around size * count = MAX_STREAM_BYTES.
                (1..=MAX_BLOCK_BYTES as u64, -1i64..=1).prop_map(|(s, d)| {
                    (s, (MAX_STREAM_BYTES as u64 / s).saturating_add_signed(d))
                }),
            ]
        ) {
            let valid = (1..=MAX_BLOCK_BYTES as u64).contains(&size)
                && (1..=MAX_STREAM_BLOCKS as u64).contains(&count)
                && u128::from(size) * u128::from(count) <= MAX_STREAM_BYTES as u128;
            let plan = StreamPlan::new(size, count);
            prop_assert_eq!(plan.is_ok(), valid, "{:?}", plan);
            if let Ok(plan) = plan {
                let mut blocks = 0;
                for n in plan.messages() {
                    prop_assert!(n >= 1 && n <= plan.per_message);
                    prop_assert!(n == 1 || n * plan.size <= STREAM_MESSAGE_BYTES);
                    prop_assert!(n * plan.size + 16 <= crate::server::limits::MAX_GRPC_MESSAGE_BYTES);
                    blocks += n;
                }
                prop_assert_eq!(blocks as u64, count);
            }
        }
    }
}
