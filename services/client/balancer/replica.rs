//! One replica of a backend as its balancer sees it: its connections, the
//! calls it has in flight (what `least_request` compares), what its health
//! watch last said, its outlier record (calls, failures, ejection), its
//! latency estimate (what `ewma` compares) and its weight from its load
//! reports (what `weighted_round_robin` follows).

use super::{ewma::Ewma, outlier::Record, weighted::Weight};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Instant,
};
use tonic::transport::Channel;

/// One replica: an address (or, pinned, the name) and its connections.
pub(super) struct Replica {
    /// The address, or the URL when pinned; for logs, spans and counts.
    pub label: String,
    /// The host part, for `server.address` on spans.
    pub host: String,
    pub port: u16,
    channels: Vec<Channel>,
    next: AtomicUsize,
    /// Calls sent to it and not answered yet (or given up); a stream counts
    /// until its response headers.
    in_flight: AtomicUsize,
    /// What its `grpc.health.v1` Watch said last: SERVING until told
    /// otherwise, so a replica gets calls before its first answer.
    pub serving: Arc<AtomicBool>,
    /// Its calls and failures since the last sweep, and its ejection.
    pub record: Record,
    /// How fast it has been answering (kept for the `ewma` policy only).
    pub latency: Ewma,
    /// Its weight from its load reports (kept for `weighted_round_robin`
    /// only).
    pub weight: Weight,
    /// The health watch, stopped with the replica (a replica that leaves
    /// DNS must not be watched for ever).
    watch: Option<tokio::task::AbortHandle>,
}

impl Replica {
    pub fn new(label: String, host: String, port: u16, channels: Vec<Channel>) -> Self {
        Self {
            label,
            host,
            port,
            channels,
            next: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            serving: Arc::new(AtomicBool::new(true)),
            record: Record::default(),
            latency: Ewma::default(),
            weight: Weight::default(),
            watch: None,
        }
    }

    /// This replica, its health watched by `watch` (aborted when it goes).
    pub fn watched_by(mut self, watch: tokio::task::AbortHandle) -> Self {
        self.watch = Some(watch);
        self
    }

    /// The next of its connections, round robin.
    pub fn channel(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a call in flight until the guard drops (answered, failed, or
    /// abandoned by a caller that stopped waiting).
    pub fn start_call(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Whether a new call may go here: serving, and not ejected.
    pub fn is_eligible(&self, now: Instant) -> bool {
        self.is_serving() && !self.record.is_ejected(now)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(watch) = &self.watch {
            watch.abort();
        }
    }
}

/// A call in flight on a replica, counted until dropped.
pub(super) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
