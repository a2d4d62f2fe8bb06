//! ORCA load reports (gRFC A51): every gRPC response of rng and hasher
//! carries, in its `endpoint-load-metrics-bin` trailer, what the replica
//! says of its own load, so a `weighted_round_robin` client (gRFC A58,
//! grpc-go's or ours) gives a replica calls in proportion to what it can
//! take. The report is made when the call ends, from:
//! - `application_utilization`: the service's own measure ([`Busy`]), the
//!   mean over the last [`WINDOW`] of what it holds over what it can hold
//!   (rng: requests in its lanes and their queue over its lanes; hasher:
//!   bytes at work over its work budget);
//! - `cpu_utilization`: the process's CPU over the last second ([`cpu`]);
//! - `rps_fractional` and `eps`: the calls to the server's own services
//!   ended over the last [`WINDOW`], and those of them not OK ([`window`]);
//! - named metrics, the service's (rng: its queue now, its lanes).
//!
//! A report is encoded at most once per [`FRESH`], and the answers ending
//! meanwhile carry the same one (each call still counted): a report over a
//! second's window does not move in a few milliseconds, and the same value
//! costs HTTP/2 one byte of header, not a hundred (HPACK indexes it), on
//! both sides.
//!
//! Every gRPC response gets one, health checks and `Replica/Info` included
//! (webui reads the latter's), but only the calls to the server's own
//! services are counted in its rates. A trailers-only answer (an error)
//! carries it in its headers, which are its trailers. Not here: how a
//! client weighs reports (`client::balancer::weighted`), the message and
//! the trailer's encoding (`protocol::load_report`).

pub mod cpu;
pub mod window;

pub use window::{Occupancy, Occupied, WINDOW};

use crate::{
    protocol::load_report::{self, OrcaLoadReport},
    server::guarded::{GuardedBody, GuardedFuture, ResponseGuard},
    telemetry::is_grpc,
};
use axum::http::{HeaderMap, Request, Response};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

/// How long an encoded report is reused: far below what any client
/// weighs by (gRFC A58 takes weights every 100 ms at the most often), and
/// at 20,000 calls a second, one encoding for 200 answers.
pub const FRESH: Duration = Duration::from_millis(10);

/// How busy a service is by its own measure, for its load reports.
pub trait Busy: Send + Sync + 'static {
    /// What it holds over what it can hold, over the last [`WINDOW`]; 0
    /// when it has no measure of its own (a client then weighs by CPU).
    fn utilization(&self, now: Instant) -> f64;

    /// Its named metrics, for people and custom policies.
    fn named_metrics(&self, _metrics: &mut HashMap<String, f64>) {}
}

/// A server's load, as its reports say it.
pub struct LoadReporter {
    /// The gRPC services whose calls are counted.
    services: Vec<&'static str>,
    rates: window::Rates,
    cpu: cpu::Cpu,
    busy: Option<Arc<dyn Busy>>,
    /// The last report as a trailer's value, and when it was made.
    encoded: Mutex<Option<(Instant, axum::http::HeaderValue)>>,
}

impl LoadReporter {
    /// A reporter counting the calls to `services`, with the service's own
    /// measure when it has one.
    pub fn new(services: &[&'static str], busy: Option<Arc<dyn Busy>>) -> Self {
        Self {
            services: services.to_vec(),
            rates: window::Rates::default(),
            cpu: cpu::Cpu::default(),
            busy,
            encoded: Mutex::new(None),
        }
    }

    /// The trailer's value at the end of a call: the call counted, and the
    /// last report reused while it is [`FRESH`].
    pub fn trailer(&self, counted: bool, failed: bool, now: Instant) -> axum::http::HeaderValue {
        let mut encoded = self.encoded.lock().unwrap_or_else(|p| p.into_inner());
        match &*encoded {
            Some((at, value)) if now.saturating_duration_since(*at) < FRESH => {
                if counted {
                    self.rates.ended(failed, now);
                }
                value.clone()
            }
            _ => {
                let value = load_report::encode(&self.report(counted, failed, now));
                *encoded = Some((now, value.clone()));
                value
            }
        }
    }

    /// The report at the end of a call (`counted`: to one of the server's
    /// own services; `failed`: not OK).
    pub fn report(&self, counted: bool, failed: bool, now: Instant) -> OrcaLoadReport {
        let (rps, eps) = if counted {
            self.rates.ended(failed, now)
        } else {
            self.rates.read(now)
        };
        let mut report = OrcaLoadReport {
            cpu_utilization: self.cpu.utilization(now),
            rps_fractional: rps,
            eps,
            ..OrcaLoadReport::default()
        };
        if let Some(busy) = &self.busy {
            report.application_utilization = busy.utilization(now);
            busy.named_metrics(&mut report.named_metrics);
        }
        report
    }
}

/// Adds a load report to every gRPC response.
#[derive(Clone)]
pub struct LoadReportLayer {
    reporter: Arc<LoadReporter>,
}

impl LoadReportLayer {
    pub fn new(reporter: LoadReporter) -> Self {
        Self {
            reporter: Arc::new(reporter),
        }
    }
}

impl<S> tower::Layer<S> for LoadReportLayer {
    type Service = LoadReport<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadReport {
            inner,
            reporter: self.reporter.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LoadReport<S> {
    inner: S,
    reporter: Arc<LoadReporter>,
}

impl<S, B, R> tower::Service<Request<B>> for LoadReport<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<GuardedBody<R, Reporting>>;
    type Error = S::Error;
    type Future = GuardedFuture<S::Future, Reporting>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let reporting = is_grpc(request.headers()).then(|| {
            let service = request.uri().path().split('/').nth(1).unwrap_or_default();
            Reporting {
                reporter: self.reporter.clone(),
                counted: self.reporter.services.contains(&service),
                done: false,
            }
        });
        GuardedFuture::new(self.inner.call(request), reporting)
    }
}

/// A gRPC call's report, added where its status is.
pub struct Reporting {
    reporter: Arc<LoadReporter>,
    counted: bool,
    done: bool,
}

impl Reporting {
    fn attach(&mut self, to: &mut HeaderMap) {
        let Some(status) = to.get("grpc-status") else {
            return;
        };
        if self.done {
            return;
        }
        self.done = true;
        let failed = status.as_bytes() != b"0";
        let value = self.reporter.trailer(self.counted, failed, Instant::now());
        to.insert(load_report::TRAILER, value);
    }
}

impl ResponseGuard for Reporting {
    fn headers(&mut self, headers: &mut HeaderMap) {
        // A trailers-only answer: its headers are its trailers.
        self.attach(headers);
    }

    fn trailers(&mut self, trailers: &mut HeaderMap) {
        self.attach(trailers);
    }

    fn ended(&mut self) {
        // A body that broke before its status: a failed call all the same.
        if !self.done && self.counted {
            self.reporter.rates.ended(true, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn decoded(value: &axum::http::HeaderValue) -> OrcaLoadReport {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(value.as_bytes())
            .unwrap();
        OrcaLoadReport::decode(bytes.as_slice()).unwrap()
    }

    #[test]
    fn a_fresh_report_is_reused_and_every_call_still_counts() {
        let reporter = LoadReporter::new(&["dockercoins.v1.Rng"], None);
        let t0 = Instant::now();
        let first = reporter.trailer(true, false, t0);
        let again = reporter.trailer(true, true, t0 + FRESH / 2);
        assert_eq!(first, again);
        // Not counted (a health check), and past FRESH: a new report, with
        // the two calls before it, one failed.
        let later = decoded(&reporter.trailer(false, false, t0 + FRESH * 2));
        assert!((later.rps_fractional - 2.0).abs() < 0.01, "{later:?}");
        assert!((later.eps - 1.0).abs() < 0.01, "{later:?}");
        assert_eq!(later.application_utilization, 0.0);
    }
}
