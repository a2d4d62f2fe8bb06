//! The connections a server holds, and their bounds: how many at once, how
//! long one may go without its first request, how long one may stay idle.
//!
//! hyper, h2 and tonic bound what happens inside a connection (streams,
//! headers, flow control, keepalive pings) but not the connections
//! themselves: nothing caps them, an HTTP/2 connection with no stream is
//! never idle to them, and a peer that sends nothing, or half the HTTP/2
//! preface, is waited for until `max_connection_age` (hyper#3962,
//! hyper#1628). So every server here accepts through [`Connections`]:
//! - at most `max` connections. When full, the connection idle the longest
//!   is closed to make room for the newcomer (nginx does the same since
//!   1.19.7): a flood of idle sockets costs a client with work to do
//!   nothing. Only when every connection has a call in flight is the
//!   newcomer refused, closed at once.
//! - a connection that has not begun a request within `handshake` of its
//!   accept is closed: no bytes, half a preface, a preface without a
//!   request, half an HTTP/1.1 head, a TLS handshake never finished.
//! - a connection with no call in flight for `idle` is closed. A call is in
//!   flight from its request to the end of its response body, so a gRPC
//!   stream (the balancer's health `Watch`) keeps its connection open however
//!   quiet it is.
//!
//! The close is abrupt (the socket is shut, no GOAWAY), as tonic has no
//! per-connection graceful close. It only ever meets a connection with
//! nothing in flight; a client that sends its next call at that moment sees
//! the connection fail before the call started, which every gRPC client
//! retries (the balancer on another replica).
//!
//! `edge`, which forwards bytes and sees no calls, counts bytes instead:
//! a connection is idle when none moved either way.

mod admitted;
mod in_flight;
pub mod metrics;
mod received;

pub use admitted::Admitted;
pub use in_flight::{InFlight, InFlightLayer};

use crate::{server::overload::Refusals, telemetry::metrics::Counter};
use futures_util::task::AtomicWaker;
use metrics::ConnectionMetrics;
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    net::{TcpListener, TcpStream},
    time::Instant,
};

/// Connections a server holds at once, by default. Each idle one costs
/// about 17 KiB measured (HTTP/2 buffers, the task, the kernel's socket),
/// 32 KiB at worst: 1,024 of them pin 32 MiB, a quarter of the compose
/// file's 128 MiB limit, and serve ten times the classroom's workers.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Time from accept to a connection's first request. grpc-go waits 120 s
/// for its handshake and nginx 60 s for a request head; a client on a
/// classroom network sends its first request within milliseconds, and a
/// slow one reconnects.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a connection may stay with no call in flight. nginx keeps an idle
/// keep-alive connection 75 s, hyper an idle HTTP/1.1 one 30 s (its header
/// timeout); the balancer's connections are never idle (their health stream),
/// and grpcurl or curl reconnect.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Calls a server holds in flight at once, over all its connections, by
/// default. A call in flight costs about 14 KiB before any of its data
/// (measured with heaptrack: tonic's decode buffer, the call's future,
/// its headers and span), whether the service then takes it or refuses it:
/// 2,048 of them pin about 30 MiB. Past it a call is refused on its
/// headers, before its body is read. Room for every balancer's health stream
/// on a full server (1,024) and a thousand calls besides.
pub const DEFAULT_MAX_CALLS: usize = 2048;

/// Request data a server holds for its calls in flight, by default: gRPC
/// messages from the prefix that declares them until the service has them,
/// other bodies until their call ends. Past it a call is refused before its
/// message is buffered. tonic buffers a whole message (hasher's: up to
/// 1 MiB) before a service sees it; without this bound 2,048 calls sending
/// large messages slowly would pin 2 GiB.
pub const DEFAULT_MAX_RECEIVED_BYTES: usize = 16 * 1024 * 1024;

/// How long a call refused for [`DEFAULT_MAX_CALLS`] is told to wait:
/// calls in flight end within milliseconds to seconds.
pub const CALLS_PUSHBACK: Duration = Duration::from_secs(1);

/// The bounds on a server's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections held at once.
    pub max: usize,
    /// Calls in flight at once, over all connections.
    pub calls: usize,
    /// Request data held for the calls in flight, in bytes.
    pub received_bytes: usize,
    /// Time from accept to the first request (edge: not used).
    pub handshake: Duration,
    /// Time with no call in flight (edge: no byte either way).
    pub idle: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::at_most(DEFAULT_MAX_CONNECTIONS)
    }
}

impl ConnectionLimits {
    /// At most `max` connections, with the default timeouts.
    pub fn at_most(max: usize) -> Self {
        Self {
            max,
            calls: DEFAULT_MAX_CALLS,
            received_bytes: DEFAULT_MAX_RECEIVED_BYTES,
            handshake: HANDSHAKE_TIMEOUT,
            idle: IDLE_TIMEOUT,
        }
    }
}

/// What tells a connection is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// A call in flight ([`InFlightLayer`] counts them): HTTP servers.
    Calls,
    /// Bytes moving either way: `edge`, which forwards bytes.
    Bytes,
}

/// Why a connection was closed by its server, as `/metrics` labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Closed {
    /// No request within the handshake bound.
    Handshake = 1,
    /// No call in flight for the idle bound.
    Idle = 2,
    /// Idle the longest when a newcomer found the server full.
    Evicted = 3,
    /// A newcomer, when the server was full of busy connections.
    Refused = 4,
}

impl Closed {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::Idle => "idle",
            Self::Evicted => "evicted",
            Self::Refused => "refused",
        }
    }

    fn from_u8(value: u8) -> Option<Self> {
        [Self::Handshake, Self::Idle, Self::Evicted, Self::Refused]
            .into_iter()
            .find(|closed| *closed as u8 == value)
    }
}

/// The connections one server holds: admits each new one, or makes room
/// for it, or refuses it. Cheap to clone; clones share the set.
#[derive(Clone)]
pub struct Connections {
    shared: Arc<Shared>,
}

struct Shared {
    /// The server's name, for its log lines.
    name: &'static str,
    limits: ConnectionLimits,
    activity: Activity,
    metrics: ConnectionMetrics,
    /// Calls in flight over all connections.
    calls: Arc<Calls>,
    open: Mutex<Open>,
    /// The zero of its connections' times.
    epoch: Instant,
    /// Connections evicted or refused since the last line about them.
    shed: Refusals,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    /// By id, so that of connections idle since the same instant the oldest
    /// comes first.
    by_id: BTreeMap<u64, Arc<Connection>>,
}

impl Connections {
    /// The connections of the server `name`, within `limits`, in use when
    /// `activity` says so, measured into `metrics`.
    pub fn new(
        name: &'static str,
        limits: ConnectionLimits,
        activity: Activity,
        metrics: ConnectionMetrics,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                name,
                limits,
                activity,
                calls: Arc::new(Calls {
                    name,
                    max: limits.calls,
                    in_flight: AtomicUsize::new(0),
                    max_received: limits.received_bytes,
                    received: AtomicUsize::new(0),
                    refused: metrics.calls_refused.clone(),
                    said: Refusals::default(),
                }),
                metrics,
                open: Mutex::default(),
                epoch: Instant::now(),
                shed: Refusals::default(),
            }),
        }
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.shared.limits
    }

    /// How many connections are held now.
    pub fn len(&self) -> usize {
        self.shared.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits `io`, closing the connection idle the longest first when the
    /// server is full; gives `io` back when every connection is busy (the
    /// caller closes it).
    pub fn admit<IO>(&self, io: IO) -> Result<Admitted<IO>, IO> {
        let shared = &self.shared;
        let mut open = shared.lock();
        let mut evicted = false;
        if open.by_id.len() >= shared.limits.max {
            let idlest = open
                .by_id
                .values()
                .filter(|connection| connection.is_idle())
                .min_by_key(|connection| connection.idle_since_ms())
                .cloned();
            let Some(idlest) = idlest else {
                drop(open);
                self.shed(Closed::Refused);
                return Err(io);
            };
            open.by_id.remove(&idlest.id);
            idlest.close(Closed::Evicted);
            evicted = true;
        }
        let id = open.next_id;
        open.next_id += 1;
        let connection = Arc::new(Connection::new(id, shared));
        open.by_id.insert(id, connection.clone());
        shared.metrics.open.set(open.by_id.len() as i64);
        drop(open);
        if evicted {
            self.shed(Closed::Evicted);
        }
        Ok(Admitted::new(io, connection, self.clone()))
    }

    /// Accepts on `listener` for ever, yielding the connections admitted
    /// (Nagle off: gRPC's small messages must not wait); the others are
    /// closed at once. For tonic's `serve_with_incoming_shutdown`.
    pub fn incoming(
        self,
        listener: TcpListener,
    ) -> impl futures_util::Stream<Item = std::io::Result<Admitted<TcpStream>>> {
        futures_util::stream::unfold((self, listener), |(this, listener)| async move {
            let admitted = this.accept(&listener).await;
            Some((Ok(admitted), (this, listener)))
        })
    }

    /// The next connection on `listener` that is admitted.
    pub async fn accept(&self, listener: &TcpListener) -> Admitted<TcpStream> {
        loop {
            match listener.accept().await {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    match self.admit(stream) {
                        Ok(admitted) => return admitted,
                        // Refused: a reset, not a close that lingers.
                        Err(stream) => drop(stream.set_zero_linger()),
                    }
                }
                Err(error) => {
                    // Out of file descriptors, most likely: wait, do not spin.
                    tracing::warn!(%error, "{} cannot accept a connection", self.shared.name);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// A connection closed by a bound, counted.
    fn note_closed(&self, why: Closed) {
        self.shared.metrics.closed(why.as_str());
    }

    /// A connection closed to make room, or a newcomer refused: counted,
    /// and said at a bounded rate (a flood sheds thousands a second).
    fn shed(&self, why: Closed) {
        self.note_closed(why);
        if let Some(count) = self.shared.shed.note() {
            tracing::warn!(
                max = self.shared.limits.max,
                shed = count,
                "{} is holding its most connections: closing the idlest to admit new ones, \
                 refusing new ones when all are busy; `shed` counts those since the last line \
                 like this, connections_closed_total all of them",
                self.shared.name
            );
        }
    }

    /// Forgets a connection that has ended (its socket dropped).
    fn forget(&self, id: u64) {
        let mut open = self.shared.lock();
        open.by_id.remove(&id);
        self.shared.metrics.open.set(open.by_id.len() as i64);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The calls a server holds in flight, over all its connections.
struct Calls {
    /// The server's name, for its log lines.
    name: &'static str,
    max: usize,
    in_flight: AtomicUsize,
    /// Request data held for the calls in flight, in bytes.
    max_received: usize,
    received: AtomicUsize,
    refused: Counter,
    /// Calls refused since the last line about them.
    said: Refusals,
}

impl Calls {
    /// Takes a place for a call, or refuses it: the server holds its most.
    /// A call that must not be refused (`always`) takes one regardless.
    fn take(&self, always: bool) -> bool {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) < self.max || always {
            return true;
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.refuse();
        false
    }

    /// Holds `bytes` more of request data, or refuses them: the server
    /// holds its most.
    fn take_received(&self, bytes: usize) -> bool {
        let before = self.received.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) <= self.max_received {
            return true;
        }
        self.received.fetch_sub(bytes, Ordering::AcqRel);
        self.refuse();
        false
    }

    fn give_back_received(&self, bytes: usize) {
        self.received.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Counts a call refused, and says so at a bounded rate.
    fn refuse(&self) {
        self.refused.inc();
        if let Some(count) = self.said.note() {
            tracing::warn!(
                max_calls = self.max,
                max_received_bytes = self.max_received,
                refused = count,
                "{} is holding its most calls in flight or request data: refusing new calls \
                 with RESOURCE_EXHAUSTED (HTTP 503); `refused` counts those since the last \
                 line like this, calls_refused_total all of them",
                self.name
            );
        }
    }

    fn give_back(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One admitted connection, as its server sees it: calls in flight, since
/// when it has been idle, and whether it has been told to close.
pub struct Connection {
    id: u64,
    /// What idle means for it.
    activity: Activity,
    /// Calls begun and not yet ended.
    in_flight: AtomicUsize,
    /// Whether a request ever began (the handshake bound is over).
    served: AtomicBool,
    /// When it last went idle, in milliseconds since `epoch`.
    idle_since_ms: AtomicU64,
    /// The server's start: the zero of every connection's times, so that
    /// they compare.
    epoch: Instant,
    /// 0 while open; else the [`Closed`] it was closed for.
    closed: AtomicU8,
    /// The connection's reader, woken to see it was closed.
    reader: AtomicWaker,
    /// The server's calls, which its calls count in.
    server_calls: Arc<Calls>,
}

impl Connection {
    fn new(id: u64, shared: &Shared) -> Self {
        let (activity, epoch) = (shared.activity, shared.epoch);
        Self {
            id,
            activity,
            in_flight: AtomicUsize::new(0),
            // Edge sees no requests: its first bound is the idle one.
            served: AtomicBool::new(activity == Activity::Bytes),
            // Idle from its accept: its first bound runs from there.
            idle_since_ms: AtomicU64::new(epoch.elapsed().as_millis() as u64),
            epoch,
            closed: AtomicU8::new(0),
            reader: AtomicWaker::new(),
            server_calls: shared.calls.clone(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Begins a call on it, unless the server holds its most calls
    /// already (then the call is to be refused, and nothing was counted);
    /// `always`: begins it regardless.
    pub fn begin_call(&self, always: bool) -> bool {
        if !self.server_calls.take(always) {
            return false;
        }
        self.served.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// A call begun on it ended: idle from now if it was the last.
    pub fn end_call(&self) {
        // The time first, so that a reader seeing no call in flight never
        // reads the idle time of the call before.
        self.idle_since_ms.store(self.now_ms(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.server_calls.give_back();
    }

    /// Bytes moved (edge): idle from now.
    fn touch(&self) {
        if self.activity == Activity::Bytes {
            self.idle_since_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn idle_since_ms(&self) -> u64 {
        self.idle_since_ms.load(Ordering::Relaxed)
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.closed().is_none()
    }

    /// When it is closed if nothing happens, and why; `None` while a call is
    /// in flight.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, Closed)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.epoch + Duration::from_millis(self.idle_since_ms());
        Some(if self.served.load(Ordering::Relaxed) {
            (since + limits.idle, Closed::Idle)
        } else {
            (since + limits.handshake, Closed::Handshake)
        })
    }

    fn close(&self, why: Closed) {
        self.closed.store(why as u8, Ordering::Release);
        self.reader.wake();
    }

    fn closed(&self) -> Option<Closed> {
        Closed::from_u8(self.closed.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, DuplexStream, duplex};

    // The client ends are dropped at once: reads on a server end then see
    // the end of the stream, not an error, so an error means closed.

    fn connections(max: usize) -> Connections {
        Connections::new(
            "test",
            ConnectionLimits::at_most(max),
            Activity::Calls,
            ConnectionMetrics::unregistered(),
        )
    }

    /// A socket pair: the server's end, and the client's.
    fn pair() -> (DuplexStream, DuplexStream) {
        duplex(64)
    }

    /// Whether the server's end of `admitted` now fails its reads (its
    /// client sends nothing: an open one has nothing to read).
    async fn is_closed(admitted: &mut Admitted<DuplexStream>) -> bool {
        let mut byte = [0u8; 1];
        futures_util::FutureExt::now_or_never(admitted.read(&mut byte))
            .is_some_and(|read| read.is_err())
    }

    #[tokio::test(start_paused = true)]
    async fn when_full_the_connection_idle_the_longest_makes_room() {
        let connections = connections(2);
        let mut oldest = connections.admit(pair().0).ok().unwrap();
        tokio::time::advance(Duration::from_millis(5)).await;
        let mut newer = connections.admit(pair().0).ok().unwrap();
        // The oldest is busy: the newer one is the idlest.
        assert!(oldest.connection().begin_call(false));
        let _newcomer = connections.admit(pair().0).ok().unwrap();
        assert!(is_closed(&mut newer).await);
        assert!(!is_closed(&mut oldest).await);
        drop(newer);
        assert_eq!(connections.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn when_full_of_busy_connections_the_newcomer_is_refused() {
        let connections = connections(1);
        let busy = connections.admit(pair().0).ok().unwrap();
        assert!(busy.connection().begin_call(false));
        assert!(connections.admit(pair().0).is_err());
        busy.connection().end_call();
        assert!(connections.admit(pair().0).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_bounds_run_from_accept_then_from_the_last_call() {
        let connections = connections(4);
        let mut silent = connections.admit(pair().0).ok().unwrap();
        let mut served = connections.admit(pair().0).ok().unwrap();
        assert!(served.connection().begin_call(false));
        tokio::time::advance(HANDSHAKE_TIMEOUT).await;
        assert!(
            is_closed(&mut silent).await,
            "no request within the handshake bound"
        );
        assert!(!is_closed(&mut served).await, "a call in flight");
        tokio::time::advance(IDLE_TIMEOUT * 2).await;
        assert!(
            !is_closed(&mut served).await,
            "a call in flight, however long"
        );
        served.connection().end_call();
        tokio::time::advance(IDLE_TIMEOUT - Duration::from_millis(1)).await;
        assert!(!is_closed(&mut served).await, "idle, not yet for the bound");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(is_closed(&mut served).await, "idle for the bound");
    }
}
