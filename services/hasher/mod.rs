//! hasher: SHA-256 over gRPC (`dockercoins.v1.Hasher`) and over the original
//! plain-HTTP routes (`GET /`, `POST /`) on the same port.
//!
//! Each request (or stream message) pays the configured delay, but requests
//! are served concurrently: hasher is never the lab's bottleneck.
//!
//! A gRPC request whose deadline (`grpc-timeout`) cannot be met is refused
//! with DEADLINE_EXCEEDED before its delay is paid
//! (`hasher_deadline_expired_total`). Injected faults (`--fail-rate`,
//! `--extra-delay`) strike before the work too, see [`HasherService`].
//! What hasher measures of its own is in [`metrics`].

pub mod metrics;

use crate::{
    pb::{
        DigestBatch, HashBatch, HashRequest, HashResponse,
        hasher_server::{Hasher as HasherApi, HasherServer},
    },
    protocol::{DIGEST_BYTES, HASHER_PORT},
    server::deadline::DeadlineMetrics,
    server::deadline::{self, Expired},
    server::faults::Injector,
    server::limits::{MAX_BATCH_BLOCKS, MAX_BLOCK_BYTES, MAX_GRPC_MESSAGE_BYTES},
    server::load_report::{Busy, Occupancy, Occupied},
    server::overload::{self, Overloaded, Refusals},
    server::streamed::{Streamed, streamed},
    server::{GrpcServer, ServeError, ServerSettings},
    telemetry::hostname,
    telemetry::metrics::{Counter, Registry},
};
use axum::{
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::BytesMut;
use metrics::HasherMetrics;
use sha2::{Digest, Sha256};
use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tonic::{Request, Status, Streaming};

/// Where `dockercoins hasher` listens unless told otherwise.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, HASHER_PORT));

/// The classroom's cost of a request: the original's `sleep 0.1`.
pub const DEFAULT_DELAY_MS: u64 = 100;

/// Data hasher works on at once, by default, in MiB: a request holds its
/// data for its delay, and past this budget the next is refused at once.
/// The classroom's 32-byte requests count 1 KiB each (32,768 at once);
/// turbo's batches are 256 KiB; and the budget keeps a flood of 1 MiB
/// requests inside the container's 128 MB.
pub const DEFAULT_MAX_WORK_MIB: u32 = 32;

/// The least a refused caller is told to wait: in turbo the delay is 0.
const LEAST_PUSHBACK: Duration = Duration::from_millis(10);

/// What the hasher service needs to run.
#[derive(Clone, Debug)]
pub struct HasherConfig {
    /// Cost of one request (or one stream message); requests overlap.
    pub delay: Duration,
    /// Data worked on at once, in MiB; past it requests are refused at once
    /// (RESOURCE_EXHAUSTED, HTTP 503).
    pub max_work_mib: u32,
    /// TLS, injected faults and connection bounds, as rng has them.
    pub server: ServerSettings,
}

impl HasherConfig {
    /// The original lab: 100 ms a request.
    pub fn classroom() -> Self {
        Self {
            delay: Duration::from_millis(DEFAULT_DELAY_MS),
            max_work_mib: DEFAULT_MAX_WORK_MIB,
            server: ServerSettings::default(),
        }
    }

    /// No delay.
    pub fn turbo() -> Self {
        Self {
            delay: Duration::ZERO,
            max_work_mib: DEFAULT_MAX_WORK_MIB,
            server: ServerSettings::default(),
        }
    }
}

impl std::fmt::Display for HasherConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ms a request, concurrent", self.delay.as_millis())?;
        write!(f, "{}", self.server)
    }
}

/// Runs hasher on `listener` until `shutdown` resolves, over TLS when the
/// config says so.
pub async fn serve(
    listener: TcpListener,
    config: HasherConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut registry = Registry::default();
    let metrics = HasherMetrics::register(&mut registry);
    let service = HasherService::measured(&config, metrics);
    let legacy = service.legacy_routes(hostname());
    GrpcServer::new("hasher", legacy, &config.server, registry)
        .with_busy(service.busy())
        .add_service(service.into_server())
        .serve(listener, config.to_string(), shutdown)
        .await
}

/// Why a hash batch is refused. Every variant is the caller's mistake.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HasherError {
    #[error("block size must be between 1 and {MAX_BLOCK_BYTES} bytes, got {0}")]
    BlockSize(u32),
    #[error("{len} bytes of blocks is not a whole number of {size}-byte blocks")]
    Ragged { len: usize, size: usize },
    #[error("a batch holds at most {MAX_BATCH_BLOCKS} blocks, got {0}")]
    TooManyBlocks(usize),
    #[error("a request holds at most {MAX_BLOCK_BYTES} bytes of data, got {0}")]
    TooLarge(usize),
}

impl From<HasherError> for Status {
    fn from(error: HasherError) -> Self {
        Status::invalid_argument(error.to_string())
    }
}

/// Lowercase hex SHA-256 of `data`: what the original hasher answered.
pub fn hex_digest(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Checks the data of a request: at most [`MAX_BLOCK_BYTES`], as `POST /`
/// and the proto promise (the gRPC message limit leaves 4 KiB for framing,
/// which must not become 4 KiB more data).
pub fn check_data(data: &[u8]) -> Result<(), HasherError> {
    if data.len() > MAX_BLOCK_BYTES {
        return Err(HasherError::TooLarge(data.len()));
    }
    Ok(())
}

/// Raw SHA-256 digests of `blocks`, cut into `size`-byte blocks, back to back.
pub fn digest_batch(size: u32, blocks: &[u8]) -> Result<bytes::Bytes, HasherError> {
    check_data(blocks)?;
    let block = usize::try_from(size)
        .ok()
        .filter(|n| (1..=MAX_BLOCK_BYTES).contains(n))
        .ok_or(HasherError::BlockSize(size))?;
    if blocks.len() % block != 0 {
        return Err(HasherError::Ragged {
            len: blocks.len(),
            size: block,
        });
    }
    let count = blocks.len() / block;
    if count > MAX_BATCH_BLOCKS {
        return Err(HasherError::TooManyBlocks(count));
    }
    let mut digests = BytesMut::with_capacity(count * DIGEST_BYTES);
    for chunk in blocks.chunks_exact(block) {
        digests.extend_from_slice(&Sha256::digest(chunk));
    }
    Ok(digests.freeze())
}

/// The `dockercoins.v1.Hasher` gRPC service.
///
/// Faults strike before the work, as the deadline check does: an injected
/// failure answers at once, before the delay (a stream's fate is drawn once,
/// for the whole call: the rate is a share of calls, whatever their kind);
/// an extra delay is paid with the delay, per request or stream message.
#[derive(Clone, Debug)]
pub struct HasherService {
    /// Cost of one request or stream message; requests overlap.
    delay: Duration,
    /// Requests refused because their deadline would pass first.
    expired: DeadlineMetrics,
    /// The failures and extra delays to inject.
    faults: Injector,
    /// The data being worked on, in KiB: each request takes its size (at
    /// least 1 KiB) until it is answered.
    budget: Arc<Semaphore>,
    budget_mib: u32,
    /// The KiB at work over time, for the load reports.
    at_work: Arc<Occupancy>,
    /// Requests refused for a spent budget: counted, and logged at a
    /// bounded rate.
    refused: Counter,
    refusals: Arc<Refusals>,
}

/// hasher's load: its work in flight over its budget.
struct WorkLoad {
    at_work: Arc<Occupancy>,
    budget_kib: f64,
}

impl Busy for WorkLoad {
    fn utilization(&self, now: std::time::Instant) -> f64 {
        self.at_work.mean(now) / self.budget_kib.max(1.0)
    }
}

/// Why a request is refused before hasher's work.
const BEFORE_THE_WORK: &str = "deadline cannot be met before the work";
const DURING_THE_WORK: &str = "deadline passed during the work (an injected extra delay)";

impl HasherService {
    /// The service, measured for nobody (tests, benches).
    pub fn new(config: &HasherConfig) -> Self {
        Self::measured(config, HasherMetrics::unregistered())
    }

    /// The service, its expired deadlines, faults and refusals counted in
    /// `metrics`.
    pub fn measured(config: &HasherConfig, metrics: HasherMetrics) -> Self {
        Self {
            delay: config.delay,
            expired: metrics.expired,
            faults: Injector::new(&config.server.faults, metrics.faults),
            budget: Arc::new(Semaphore::new(config.max_work_mib as usize * 1024)),
            budget_mib: config.max_work_mib,
            at_work: Arc::default(),
            refused: metrics.refused,
            refusals: Arc::default(),
        }
    }

    /// Takes `bytes` of data from the work budget until the permit is
    /// dropped, or refuses at once when they do not fit.
    fn take(&self, bytes: usize) -> Result<(OwnedSemaphorePermit, Occupied), Overloaded> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        let permit = Arc::clone(&self.budget)
            .try_acquire_many_owned(kib)
            .map_err(|_| self.refuse())?;
        Ok((permit, self.at_work.occupy(f64::from(kib))))
    }

    /// How busy it is, for its load reports: the KiB at work over its
    /// budget, over the last second.
    pub fn busy(&self) -> Arc<dyn Busy> {
        Arc::new(WorkLoad {
            at_work: self.at_work.clone(),
            budget_kib: f64::from(self.budget_mib) * 1024.0,
        })
    }

    /// Counts and logs (at a bounded rate) a request refused for a spent
    /// budget; the work in flight is done in about one delay.
    fn refuse(&self) -> Overloaded {
        self.refused.inc();
        let busy = Overloaded {
            why: format!(
                "hasher is overloaded: its {} MiB of work in flight are taken",
                self.budget_mib
            ),
            retry_after: self.delay.max(LEAST_PUSHBACK),
        };
        if let Some(refused) = self.refusals.note() {
            tracing::warn!(
                refused,
                budget_mib = self.budget_mib,
                "hasher's work budget is spent: refusing requests with RESOURCE_EXHAUSTED (HTTP 503); `refused` counts those since the last line like this, hasher_refused_total all of them"
            );
        }
        busy
    }

    /// One batch of a stream: its share of the budget, its delay, its
    /// digests.
    async fn answer(
        &self,
        batch: HashBatch,
        deadline: Option<Instant>,
    ) -> Result<DigestBatch, Status> {
        let _work = self.take(batch.blocks.len())?;
        self.pay_delay(deadline).await?;
        let digests = digest_batch(batch.size, &batch.blocks)?;
        Ok(DigestBatch { digests })
    }

    /// Pays the delay (and any injected extra) of one request, if it can be
    /// done before `deadline`: a request that cannot is refused before its
    /// work. The extra delay is not foreseen (a slow replica does not know
    /// it is slow); a request it makes overrun is answered
    /// DEADLINE_EXCEEDED just before its deadline, not cut off by tonic.
    async fn pay_delay(&self, deadline: Option<Instant>) -> Result<(), Expired> {
        let started = Instant::now();
        let expired = |reason, stage| {
            self.expired.expired(stage);
            Expired {
                reason,
                waited: started.elapsed(),
            }
        };
        if let Some(deadline) = deadline
            && deadline::latest_start(deadline, self.delay).is_none()
        {
            return Err(expired(BEFORE_THE_WORK, "waiting"));
        }
        let extra = self.faults.extra_delay();
        // The delay fits (checked above); only an extra delay can make the
        // work overrun, and then it takes until it is too late.
        deadline::pay(self.delay, extra, deadline)
            .await
            .map_err(|_| expired(DURING_THE_WORK, "working"))
    }

    /// The service wrapped for tonic, with explicit message limits: a request
    /// holds at most one maximal block, a reply at most a batch of digests.
    pub fn into_server(self) -> HasherServer<Self> {
        HasherServer::new(self)
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
    }

    /// The original lab's plain-HTTP routes.
    pub fn legacy_routes(&self, hostname: String) -> axum::Router {
        let state = LegacyState {
            service: self.clone(),
            banner: format!("HASHER running on {hostname}\n"),
        };
        axum::Router::new()
            .route("/", get(legacy_index).post(legacy_hash))
            .with_state(state)
    }
}

#[tonic::async_trait]
impl HasherApi for HasherService {
    async fn hash(
        &self,
        request: Request<HashRequest>,
    ) -> Result<tonic::Response<HashResponse>, Status> {
        let deadline = deadline::of(&request);
        self.faults.failure()?;
        check_data(&request.get_ref().data)?;
        let _work = self.take(request.get_ref().data.len())?;
        self.pay_delay(deadline).await?;
        let hex = hex_digest(&request.get_ref().data);
        Ok(tonic::Response::new(HashResponse { hex }))
    }

    type HashStreamStream = Streamed<DigestBatch>;

    async fn hash_stream(
        &self,
        request: Request<Streaming<HashBatch>>,
    ) -> Result<tonic::Response<Self::HashStreamStream>, Status> {
        // The call's deadline bounds the whole stream: each message must be
        // answered before it.
        let deadline = deadline::of(&request);
        self.faults.failure()?;
        let mut inbound = request.into_inner();
        let service = self.clone();
        Ok(streamed(move |tx| async move {
            loop {
                let batch = tokio::select! {
                    batch = inbound.message() => batch,
                    () = tx.closed() => return,
                };
                let reply = match batch {
                    // A message that cannot be answered (in time, within
                    // the budget, or at all) ends the stream.
                    Ok(Some(batch)) => service.answer(batch, deadline).await,
                    // The client closed its side: every batch has its reply.
                    Ok(None) => return,
                    // Bad framing, oversize message or reset: tell the client
                    // if it still listens, and stop.
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        }))
    }
}

/// State of the legacy routes.
#[derive(Clone)]
struct LegacyState {
    service: HasherService,
    /// `HASHER running on <hostname>`, as the original said.
    banner: String,
}

/// `GET /`: who is running.
async fn legacy_index(State(state): State<LegacyState>) -> String {
    state.banner.clone()
}

/// `POST /` with any body: its hex SHA-256, as `text/plain`.
async fn legacy_hash(
    State(state): State<LegacyState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match overload::whole_body(body) {
        Ok(body) => body,
        Err(unread) => return unread.into_response(),
    };
    let _work = match state.service.take(body.len()) {
        Ok(work) => work,
        Err(busy) => return busy.into_response(),
    };
    // HTTP states no deadline: nothing expires.
    let _ = state.service.pay_delay(None).await;
    ([(header::CONTENT_TYPE, "text/plain")], hex_digest(&body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digest_matches_known_sha256() {
        assert_eq!(
            hex_digest(b"hello"),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            hex_digest(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn batches_give_one_digest_per_block_in_order() {
        let blocks = [b"aaaa".as_slice(), b"bbbb", b"cccc"].concat();
        let digests = digest_batch(4, &blocks).unwrap();
        assert_eq!(digests.len(), 3 * DIGEST_BYTES);
        for (i, block) in blocks.chunks(4).enumerate() {
            let digest = &digests[i * DIGEST_BYTES..(i + 1) * DIGEST_BYTES];
            assert_eq!(hex::encode(digest), hex_digest(block));
        }
        assert_eq!(digest_batch(4, &[]).unwrap().len(), 0);
    }

    #[test]
    fn bad_batches_are_refused() {
        assert_eq!(digest_batch(0, b"abc"), Err(HasherError::BlockSize(0)));
        assert_eq!(
            digest_batch(MAX_BLOCK_BYTES as u32 + 1, b"abc"),
            Err(HasherError::BlockSize(MAX_BLOCK_BYTES as u32 + 1))
        );
        assert_eq!(
            digest_batch(4, b"abcde"),
            Err(HasherError::Ragged { len: 5, size: 4 })
        );
        let many = vec![0u8; MAX_BATCH_BLOCKS + 1];
        assert_eq!(
            digest_batch(1, &many),
            Err(HasherError::TooManyBlocks(MAX_BATCH_BLOCKS + 1))
        );
    }
}

/// Property tests: whatever batch a client sends, it gets one digest per
/// whole block or a refusal, never a panic and never a partial answer.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A block size and that many bytes of blocks, near every limit: small
    /// blocks up to past [`MAX_BATCH_BLOCKS`] and past 1 MiB, maximal
    /// blocks, ragged tails, sizes that are not sizes.
    fn batch() -> impl Strategy<Value = (u32, usize)> {
        let max = MAX_BLOCK_BYTES as u32;
        prop_oneof![
            (1u32..=128, 0..=MAX_BATCH_BLOCKS + 2, 0usize..=2)
                .prop_map(|(size, n, tail)| (size, size as usize * n + tail)),
            (max - 2..=max + 2, 0usize..=2, 0usize..=2)
                .prop_map(|(size, n, tail)| (size, size as usize * n + tail)),
            (any::<u32>(), 0usize..=256),
            (Just(0u32), 0usize..=64),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn a_batch_gets_a_digest_per_whole_block_or_a_refusal(
            (size, len) in batch(),
            fill in any::<u8>(),
        ) {
            let blocks: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ fill).collect();
            let block = size as usize;
            let valid = (1..=MAX_BLOCK_BYTES).contains(&block)
                && len % block == 0
                && len / block <= MAX_BATCH_BLOCKS
                && len <= MAX_BLOCK_BYTES;
            let result = digest_batch(size, &blocks);
            prop_assert_eq!(result.is_ok(), valid, "{:?}", result.as_ref().err());
            if let Ok(digests) = result {
                prop_assert_eq!(digests.len(), len / block * DIGEST_BYTES);
                // First and last digests against sha2 directly.
                for i in [0, (len / block).saturating_sub(1)] {
                    if len > 0 {
                        let expected = Sha256::digest(&blocks[i * block..(i + 1) * block]);
                        prop_assert_eq!(&digests[i * DIGEST_BYTES..(i + 1) * DIGEST_BYTES], &expected[..]);
                    }
                }
            }
        }

        #[test]
        fn data_is_accepted_up_to_the_block_limit_only(len in prop_oneof![
            0..=4096usize,
            MAX_BLOCK_BYTES - 8..=MAX_BLOCK_BYTES + 8,
        ]) {
            let data = vec![0u8; len];
            prop_assert_eq!(check_data(&data).is_ok(), len <= MAX_BLOCK_BYTES);
        }
    }
}
