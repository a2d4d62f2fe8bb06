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
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

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
        let report = self.reporter.report(self.counted, failed, Instant::now());
        to.insert(load_report::TRAILER, load_report::encode(&report));
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
