//! How a balancer reaches its service: its connections, the deadline of its
//! calls, how it spreads them, when it sets a replica aside, what it may
//! spend on retries, and where it measures all this. Each default is a
//! `DEFAULT_*` constant here, used by the command line's flags and by every
//! constructor alike. The outlier rule's and the retry budget's own settings
//! live beside their rules ([`super::outlier`], [`super::retry`]), as do
//! `weighted_round_robin`'s ([`super::weighted`]).

use super::{ClientCalls, OutlierSettings, Policy, RetrySettings, WeightedSettings};
use std::time::Duration;
use tonic::transport::Endpoint;

/// How a balancer reaches its service's replicas.
#[derive(Clone, Debug)]
pub struct BalancerSettings {
    /// HTTP/2 connections per replica (one connection serialises its
    /// streams on a lock in h2).
    pub channels: usize,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Deadline of each call, queueing in the backend included: a unary
    /// call sends it as `grpc-timeout`, so the backend gives up when the
    /// caller does; a stream must start within it, and each message of a
    /// streamed reply come within it.
    pub call_timeout: Duration,
    /// How calls are spread over the replicas.
    pub policy: Policy,
    /// How often a balancer resolves its name again.
    pub resolve_interval: Duration,
    /// How `weighted_round_robin` weighs the replicas' load reports.
    pub weighted: WeightedSettings,
    /// When a replica failing its calls is set aside.
    pub outlier: OutlierSettings,
    /// Retries, hedges, and the budget they share.
    pub retry: RetrySettings,
    /// The CA (and client identity) for `https://` URLs; required for them.
    pub tls: Option<crate::tls::ClientTls>,
    /// Where each call, retry and ejection is measured (by default, for
    /// nobody: the caller registers it to serve it on `/metrics`).
    pub metrics: ClientCalls,
}

/// HTTP/2 connections per replica unless told otherwise.
pub const DEFAULT_CHANNELS: usize = 2;

/// Bound on connecting to a replica unless told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1000;

/// Deadline of each call unless told otherwise: long enough for a classroom
/// rng's queue of ten workers (about 1 s), short enough to notice a hang.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 5000;

/// How often a balanced client resolves the name again unless told otherwise.
pub const DEFAULT_RESOLVE_MS: u64 = 5000;

/// Resolving more often than this is refused: a DNS server is not a spin lock.
pub const MIN_RESOLVE_INTERVAL: Duration = Duration::from_millis(100);

impl Default for BalancerSettings {
    fn default() -> Self {
        Self {
            channels: DEFAULT_CHANNELS,
            connect_timeout: Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
            call_timeout: Duration::from_millis(DEFAULT_CALL_TIMEOUT_MS),
            policy: Policy::default(),
            resolve_interval: Duration::from_millis(DEFAULT_RESOLVE_MS),
            weighted: WeightedSettings::default(),
            outlier: OutlierSettings::default(),
            retry: RetrySettings::default(),
            tls: None,
            metrics: ClientCalls::default(),
        }
    }
}

/// Each connection's settings: timeouts, TCP_NODELAY, keepalive (`bench`'s
/// floor uses them too). The endpoint's timeout is a backstop: each call
/// carries its own deadline.
pub(crate) fn configure(endpoint: Endpoint, settings: &BalancerSettings) -> Endpoint {
    endpoint
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.call_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
}
