//! The call path: one call under one deadline, its attempts on the
//! replicas the balancer picks, each a client span carrying the trace
//! context and the time left (`grpc-timeout`); a retry on another replica
//! after UNAVAILABLE, a hedge of a slow unary call, both paid from the retry
//! budget; and each attempt's outcome noted where it counts (its span, the
//! replica's record, the metrics, an ejection). Which replica is picked is
//! [`super::policy`]'s business, when one is set aside [`super::outlier`]'s.

use super::{Balancer, Policy, outlier, replica::Replica};
use crate::telemetry::metrics::TraceExemplar;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tonic::transport::Channel;
use tracing::Span;

/// Tries of one chain of attempts at most (the first and its retries); a
/// hedged call runs two chains.
const MAX_ATTEMPTS: usize = 4;

/// Why an attempt of a call is made: on a span, `dockercoins.attempt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    First,
    /// Again on another replica, after UNAVAILABLE.
    Retry,
    /// A second attempt of a slow call, racing the first.
    Hedge,
}

/// Which calls carry their deadline on the wire and may be hedged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Bounded as a whole by its deadline, sent as `grpc-timeout`.
    Unary,
    /// Started within the deadline, then each message bounded by the client
    /// (a batch's length is the caller's choice: a whole-stream deadline of
    /// 5 s would fail every long classroom batch).
    Stream,
}

impl Balancer {
    /// Makes one unary gRPC call of `method`: see [`Self::call_with`]; a
    /// call still unanswered after the hedging delay is sent again to
    /// another replica, and the first answer wins.
    pub(crate) async fn call<M: Clone, T>(
        &self,
        method: &'static str,
        call: impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        self.call_with(method, &call, message, Kind::Unary).await
    }

    /// Starts a server-streaming call of `method`: see [`Self::call_with`];
    /// never hedged (two streams of the same blocks would be paid twice).
    pub(crate) async fn call_stream<M: Clone, T>(
        &self,
        method: &'static str,
        call: impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        self.call_with(method, &call, message, Kind::Stream).await
    }

    /// One call, under one deadline for all its attempts: each attempt is a
    /// client span with the trace context and the time left (`grpc-timeout`)
    /// in its metadata. A replica that answers UNAVAILABLE is avoided and the
    /// call tried on another, so a dead replica still in DNS costs no failed
    /// call; retries and hedges are paid from the balancer's budget. For a
    /// streaming call the span covers the call's start, up to the response
    /// headers. Its success or failure is noted on the balancer (a streak of
    /// failures is logged once). Only the typed clients call this.
    async fn call_with<M: Clone, T>(
        &self,
        method: &'static str,
        call: &impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
        kind: Kind,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        let started = Instant::now();
        let deadline = started + self.shared.settings.call_timeout;
        self.shared.budget.deposit();
        let result = match self.pick(None).await {
            Err(status) => Err(status),
            Ok(replica) => match self.shared.settings.retry.hedge_after {
                Some(after) if kind == Kind::Unary => {
                    self.hedged(method, call, message, deadline, replica, after)
                        .await
                }
                _ => {
                    let first = (Attempt::First, kind);
                    self.with_retries(method, call, message, deadline, replica, first)
                        .await
                }
            },
        };
        if crate::telemetry::metrics::enabled() {
            let code = result
                .as_ref()
                .map_or_else(tonic::Status::code, |_| tonic::Code::Ok);
            let service = self.shared.service.grpc;
            self.shared
                .settings
                .metrics
                .observe_call((service, method), code, started.elapsed());
        }
        self.note(result)
    }

    /// An attempt on `replica`, then, while it answers UNAVAILABLE (or its
    /// connection failed), more on other replicas, each avoiding the one
    /// that just failed: at most [`MAX_ATTEMPTS`] and one per replica in
    /// all, before the deadline, as long as the budget allows.
    async fn with_retries<M: Clone, T>(
        &self,
        method: &'static str,
        call: &impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
        deadline: Instant,
        mut replica: Arc<Replica>,
        (mut attempt, kind): (Attempt, Kind),
    ) -> Result<tonic::Response<T>, tonic::Status> {
        let metrics = &self.shared.settings.metrics;
        let service = self.shared.service.grpc;
        for tries in 1.. {
            let result = self
                .call_replica(
                    &replica,
                    method,
                    call,
                    message.clone(),
                    deadline,
                    (attempt, kind),
                )
                .await;
            // Counted only on a failure: a call that succeeds takes the
            // replica list once, in `pick`.
            // Refused before any work was done: safe to send elsewhere.
            let unavailable = matches!(&result, Err(status)
                if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::ResourceExhausted)
                    || connection_failed(status));
            if !unavailable
                || tries >= self.current().len().clamp(1, MAX_ATTEMPTS)
                || Instant::now() >= deadline
            {
                return result;
            }
            if !self.shared.budget.withdraw() {
                metrics.throttled(service);
                return result;
            }
            tracing::debug!(backend = self.name(), replica = %replica.label, "unavailable; trying another replica");
            metrics.retried(service);
            replica = self.pick(Some(&replica)).await?;
            attempt = Attempt::Retry;
        }
        unreachable!("the loop returns")
    }

    /// `with_retries` on `replica`, and, when it has not answered after
    /// `after`, a twin on another replica if the budget allows: the first
    /// success wins and the other attempt is abandoned (its span says
    /// CANCELLED); a failure waits for the other attempt.
    async fn hedged<M: Clone, T>(
        &self,
        method: &'static str,
        call: &impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
        deadline: Instant,
        replica: Arc<Replica>,
        after: Duration,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        let first = self.with_retries(
            method,
            call,
            message.clone(),
            deadline,
            replica.clone(),
            (Attempt::First, Kind::Unary),
        );
        tokio::pin!(first);
        tokio::select! {
            result = &mut first => return result,
            () = tokio::time::sleep(after) => {}
        }
        let service = self.shared.service.grpc;
        if self.current().len() < 2 {
            return first.await;
        }
        if !self.shared.budget.withdraw() {
            self.shared.settings.metrics.throttled(service);
            return first.await;
        }
        let twin = match self.pick(Some(&replica)).await {
            Ok(twin) => twin,
            Err(_) => return first.await,
        };
        self.shared.settings.metrics.hedged(service);
        let hedge = (Attempt::Hedge, Kind::Unary);
        let second = self.with_retries(method, call, message, deadline, twin, hedge);
        tokio::pin!(second);
        tokio::select! {
            result = &mut first => match result {
                Ok(_) => result,
                Err(_) => second.await,
            },
            result = &mut second => match result {
                Ok(_) => result,
                Err(_) => first.await,
            },
        }
    }

    /// [`Self::call_with`] for a call whose request cannot be sent twice (a
    /// client stream): one replica, one attempt; the caller's backoff retries.
    pub(crate) async fn call_once<M, T>(
        &self,
        method: &'static str,
        call: impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        let deadline = Instant::now() + self.shared.settings.call_timeout;
        let result = match self.pick(None).await {
            Ok(replica) => {
                let first = (Attempt::First, Kind::Stream);
                self.call_replica(&replica, method, &call, message, deadline, first)
                    .await
            }
            Err(status) => Err(status),
        };
        self.note(result)
    }

    /// One attempt on one replica, in its own client span; its outcome is
    /// measured, counted against the replica, and may trip the outlier rule.
    async fn call_replica<M, T>(
        &self,
        replica: &Replica,
        method: &'static str,
        call: &impl AsyncFn(Channel, tonic::Request<M>) -> Result<tonic::Response<T>, tonic::Status>,
        message: M,
        deadline: Instant,
        (attempt, kind): (Attempt, Kind),
    ) -> Result<tonic::Response<T>, tonic::Status> {
        let service = self.shared.service.grpc;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(tonic::Status::deadline_exceeded(format!(
                "{}: the call's deadline passed before this attempt",
                self.name()
            )));
        }
        let span = crate::telemetry::grpc_client_span(service, method, &replica.host, replica.port);
        if attempt != Attempt::First {
            self.say_attempt(&span, attempt);
        }
        let started = Instant::now();
        let _in_flight = replica.start_call();
        // The span is not entered around the call: nothing inside logs,
        // and entering it at every poll cost the worker about 4% of its
        // instructions per unit (callgrind). It times the call all the same.
        let mut request = tonic::Request::new(message);
        if kind == Kind::Unary {
            request.set_timeout(left);
        }
        crate::telemetry::inject(&span, &mut request);
        let ewma = self.shared.settings.policy == Policy::Ewma;
        let abandoned = Abandoned::new(&span, ewma.then_some((replica, started)));
        // The deadline bounds the wait for a connection too, which tonic's
        // own timer, started once the request leaves its buffer, does not.
        let result = tokio::time::timeout_at(deadline.into(), call(replica.channel(), request))
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(format!(
                    "{}: no answer within the call's deadline",
                    self.name()
                )))
            });
        abandoned.answered();
        self.settle(replica, method, &span, started, &result);
        self.sweep(&span);
        result
    }

    /// An attempt's outcome, noted everywhere it counts: its span, the
    /// replica's outlier record and latency, the metrics, the calls served,
    /// and an ejection if its connection failed.
    fn settle<T>(
        &self,
        replica: &Replica,
        method: &'static str,
        span: &Span,
        started: Instant,
        result: &Result<tonic::Response<T>, tonic::Status>,
    ) {
        let service = self.shared.service.grpc;
        crate::telemetry::record_grpc_result(span, result);
        let code = result
            .as_ref()
            .map_or_else(tonic::Status::code, |_| tonic::Code::Ok);
        replica.record.note(code);
        self.learn(replica, code, started, result);
        let metrics = &self.shared.settings.metrics;
        if crate::telemetry::metrics::enabled() {
            let trace = TraceExemplar::of(span);
            metrics.observe(
                (service, method),
                &replica.label,
                code,
                started.elapsed(),
                trace,
            );
        }
        match result {
            Ok(response) => {
                let served_by = response
                    .metadata()
                    .get(crate::protocol::SERVED_BY)
                    .and_then(|value| value.to_str().ok());
                self.count_served(served_by, replica);
            }
            // No calls to it for a while.
            Err(status) if connection_failed(status) => {
                replica
                    .record
                    .eject_for(Instant::now(), outlier::CONNECTION_EJECTION);
                metrics.ejected(service, &replica.label, "connection");
            }
            // An overloaded replica said when to ask again (gRFC A6's
            // pushback): no new call until then, while another can take it.
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                if let Some(pushback) = crate::server::overload::asked(status) {
                    replica.record.eject_for(Instant::now(), pushback);
                    metrics.ejected(service, &replica.label, "pushback");
                }
            }
            Err(_) => {}
        }
    }

    /// What the policy learns of a replica from an attempt: `ewma` its
    /// latency; `weighted_round_robin` the load report in the answer's
    /// trailers (or a failure's metadata). A stream's report comes with its
    /// last message, after the call the balancer sees: only unary calls
    /// weigh.
    fn learn<T>(
        &self,
        replica: &Replica,
        code: tonic::Code,
        started: Instant,
        result: &Result<tonic::Response<T>, tonic::Status>,
    ) {
        match self.shared.settings.policy {
            Policy::Ewma => {
                let failed = outlier::is_replica_failure(code);
                replica
                    .latency
                    .observe(started.elapsed(), failed, Instant::now());
            }
            Policy::WeightedRoundRobin => {
                let metadata = match result {
                    Ok(response) => response.metadata(),
                    Err(status) => status.metadata(),
                };
                if let Some(report) = crate::protocol::load_report::decode(metadata) {
                    let penalty = self.shared.settings.weighted.error_penalty;
                    replica.weight.report(&report, penalty, Instant::now());
                }
            }
            _ => {}
        }
    }

    /// Says on a retry's or hedge's span why it was made.
    fn say_attempt(&self, span: &Span, attempt: Attempt) {
        let (name, why) = match attempt {
            Attempt::Retry => (
                "retry",
                "retried: the previous attempt found its replica UNAVAILABLE or its lane full",
            ),
            Attempt::Hedge => (
                "hedge",
                "hedged: the first attempt had not answered in time",
            ),
            Attempt::First => return,
        };
        span.record("dockercoins.attempt", name);
        span.in_scope(|| tracing::info!(target: crate::telemetry::TARGET, "{why}"));
    }

    /// Applies the outlier rule when an interval has passed; its ejections
    /// are logged, counted, and events on `span` (the call that ran it).
    fn sweep(&self, span: &Span) {
        let shared = &self.shared;
        let settings = &shared.settings.outlier;
        let now = Instant::now();
        if !shared.sweeper.is_due(settings, now) {
            return;
        }
        let replicas = self.current();
        let records: Vec<&outlier::Record> = replicas.iter().map(|r| &r.record).collect();
        for ejected in outlier::sweep(settings, &records, now) {
            let replica = &replicas[ejected.replica];
            let name = shared.service.name;
            let (failures, calls, seconds) =
                (ejected.failures, ejected.calls, ejected.time.as_secs_f64());
            tracing::warn!(
                backend = name,
                replica = %replica.label,
                failures,
                calls,
                ejected_s = seconds,
                "{name} replica {} ejected for {seconds:.0} s: {failures} of its last {calls} calls failed",
                replica.label
            );
            span.in_scope(|| {
                tracing::info!(
                    target: crate::telemetry::TARGET,
                    replica = %replica.label,
                    failures,
                    calls,
                    ejected_s = seconds,
                    "outlier ejected: {} failed {failures} of {calls} calls",
                    replica.label
                );
            });
            shared
                .settings
                .metrics
                .ejected(shared.service.grpc, &replica.label, "failure_rate");
        }
    }
}

/// Whether the connection failed, not the call: a status made by the
/// client from a transport error (UNAVAILABLE: it could not connect or the
/// stream was refused; CANCELLED: the connection closed before the request
/// was sent), never one a replica sent. Such a call may be sent again.
fn connection_failed(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Cancelled
    ) && std::error::Error::source(status).is_some()
        && !timed_out(status)
}

/// Whether the client's own timer ended the call (tonic answers CANCELLED
/// with a `TimeoutExpired` under it): the replica was slow, not unreachable.
fn timed_out(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// An attempt's span until it is answered: an attempt abandoned by its
/// caller (the hedged twin answered first, or the caller gave up) ends
/// CANCELLED instead of without a status; under `ewma`, the time it was
/// given counts as its latency at least (a replica always beaten by a
/// hedge must not look fast for want of answers).
struct Abandoned<'a> {
    span: &'a Span,
    latency: Option<(&'a Replica, Instant)>,
    answered: bool,
}

impl<'a> Abandoned<'a> {
    fn new(span: &'a Span, latency: Option<(&'a Replica, Instant)>) -> Self {
        Self {
            span,
            latency,
            answered: false,
        }
    }

    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        self.span.record("rpc.response.status_code", "CANCELLED");
        self.span.in_scope(|| {
            tracing::info!(
                target: crate::telemetry::TARGET,
                "abandoned: the caller stopped waiting (a hedged twin answered first)"
            );
        });
        if let Some((replica, started)) = self.latency {
            let now = Instant::now();
            replica.latency.observe(now - started, false, now);
        }
    }
}
