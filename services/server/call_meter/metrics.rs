//! What a gRPC server measures of the calls it serves ([`ServerCalls`]):
//! their durations by method and status, the calls in flight by service,
//! and the same durations kept readable in process for `Replica/Info`.
//! The layer that feeds it, call by call, is the module above.

use crate::telemetry::{
    latency::{ByMethod, Latencies, MethodLatency},
    metrics::{
        DurationFamily, DurationHistogram, Registry, ServiceLabels, TraceExemplar, duration_family,
    },
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Unit,
};
use std::{sync::Arc, time::Duration};

/// A server call's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerCallLabels {
    /// The full method, `dockercoins.v1.Rng/Generate`.
    pub rpc_method: String,
    /// The gRPC status name, `OK`, `DEADLINE_EXCEEDED`...
    pub rpc_response_status_code: &'static str,
}

/// What a gRPC server measures of its calls, from the request's arrival to
/// the end of its response (a stream's last message): rng's includes the
/// wait in its lane.
#[derive(Clone)]
pub struct ServerCalls {
    durations: DurationFamily<ServerCallLabels>,
    in_flight: Family<ServiceLabels, Gauge>,
    /// The same durations, readable in process (for `Replica/Info`).
    latencies: Arc<Latencies>,
    /// Each method served so far (never a made-up one: a method is added
    /// once a call of it ended other than UNIMPLEMENTED), with the handles
    /// its calls are observed through: found again by name, without
    /// building and hashing labels on every call.
    methods: Arc<ByMethod<MethodSeries>>,
}

/// A method's OK series and its readable durations.
struct MethodSeries {
    name: String,
    ok: DurationHistogram,
    latency: Arc<MethodLatency>,
}

impl ServerCalls {
    pub fn register(registry: &mut Registry) -> Self {
        let this = Self {
            durations: duration_family(),
            in_flight: Family::default(),
            latencies: Arc::default(),
            methods: Arc::default(),
        };
        registry.register_with_unit(
            "rpc_server_call_duration",
            "Duration of gRPC calls served, from arrival to the end of the response",
            Unit::Seconds,
            this.durations.clone(),
        );
        registry.register(
            "rpc_server_calls_in_flight",
            "gRPC calls being served",
            this.in_flight.clone(),
        );
        this
    }

    /// The gauge of `service`'s calls in flight (resolved once, by the
    /// layer that measures them).
    pub fn in_flight(&self, service: &'static str) -> Gauge {
        self.in_flight.get_or_create_owned(&ServiceLabels {
            rpc_service: service,
        })
    }

    /// A call of `method` has arrived (of a service of the server's own,
    /// whose `in_flight` gauge is given); it is observed when the returned
    /// guard is dropped, with the status it was told (none: the client went
    /// away, CANCELLED).
    pub fn start(
        &self,
        in_flight: &Gauge,
        method: &str,
        trace: Option<TraceExemplar>,
    ) -> ServerCall {
        in_flight.inc();
        let known = self.methods.get(method);
        ServerCall {
            calls: self.clone(),
            method: known.map_or_else(|| Method::New(method.to_owned()), Method::Known),
            trace,
            started: std::time::Instant::now(),
            in_flight: in_flight.clone(),
            status: None,
        }
    }

    /// `name`'s series, made on its first call.
    fn method(&self, name: &str) -> Arc<MethodSeries> {
        self.methods.get_or_make(name, |name| MethodSeries {
            name: name.to_owned(),
            ok: self.durations.get_or_create_owned(&ServerCallLabels {
                rpc_method: name.to_owned(),
                rpc_response_status_code: "OK",
            }),
            latency: self.latencies.method(name),
        })
    }

    /// The durations of the calls served so far, by method.
    pub fn latencies(&self) -> &Latencies {
        &self.latencies
    }

    /// One call ended: with the server's `status`, or `None` when the client
    /// went away before the server said one (CANCELLED).
    fn observe(
        &self,
        method: Method,
        status: Option<&'static str>,
        elapsed: Duration,
        trace: Option<TraceExemplar>,
    ) {
        let seconds = elapsed.as_secs_f64();
        // A name the server never answered as its own (UNIMPLEMENTED, or a
        // first call cut off before any answer) is the client's choice: it
        // must not become a series.
        let unknown = matches!(
            (&method, status),
            (_, Some("UNIMPLEMENTED")) | (Method::New(_), None)
        );
        let status = status.unwrap_or("CANCELLED");
        if unknown {
            let labels = ServerCallLabels {
                rpc_method: OTHER_METHOD.to_owned(),
                rpc_response_status_code: status,
            };
            self.durations
                .get_or_create(&labels)
                .observe(seconds, trace, None);
            return;
        }
        let series = match method {
            Method::Known(series) => series,
            Method::New(name) => self.method(&name),
        };
        let trace_id = trace.as_ref().map(|t| t.trace_id.as_str());
        series.latency.observe(elapsed, trace_id);
        if status == "OK" {
            series.ok.observe(seconds, trace, None);
        } else {
            let labels = ServerCallLabels {
                rpc_method: series.name.clone(),
                rpc_response_status_code: status,
            };
            self.durations
                .get_or_create(&labels)
                .observe(seconds, trace, None);
        }
    }
}

/// A call's method: one served before, or a name not yet known.
enum Method {
    Known(Arc<MethodSeries>),
    New(String),
}

/// What a method unknown to the service is counted as (the conventions'
/// name for a value outside the known set).
pub const OTHER_METHOD: &str = "_OTHER";

/// One call being served; observed once, when dropped.
pub struct ServerCall {
    calls: ServerCalls,
    method: Method,
    trace: Option<TraceExemplar>,
    started: std::time::Instant,
    in_flight: Gauge,
    status: Option<&'static str>,
}

impl ServerCall {
    /// The call's status, once known (a header, or the trailers).
    pub fn set_status(&mut self, status: &'static str) {
        self.status = Some(status);
    }

    pub fn set_status_if_unknown(&mut self, status: &'static str) {
        self.status.get_or_insert(status);
    }
}

impl Drop for ServerCall {
    fn drop(&mut self) {
        self.in_flight.dec();
        let method = std::mem::replace(&mut self.method, Method::New(String::new()));
        self.calls.observe(
            method,
            self.status,
            self.started.elapsed(),
            self.trace.take(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Exposition;

    #[test]
    fn a_dropped_call_is_counted_cancelled_and_leaves_the_gauge() {
        let mut registry = Registry::default();
        let calls = ServerCalls::register(&mut registry);
        let rng = calls.in_flight("dockercoins.v1.Rng");
        let mut ok = calls.start(&rng, "dockercoins.v1.Rng/Generate", None);
        ok.set_status("OK");
        drop(ok);
        // A method the server has answered as its own, cut off: CANCELLED.
        let gone = calls.start(&rng, "dockercoins.v1.Rng/Generate", None);
        let mut unknown = calls.start(&rng, "dockercoins.v1.Rng/Whatever", None);
        unknown.set_status("UNIMPLEMENTED");
        // A name never answered, cut off before any answer: not a series.
        let made_up = calls.start(&rng, "dockercoins.v1.Rng/MadeUp", None);
        drop((gone, unknown, made_up));
        let text = Exposition::new(registry).encode();
        for line in [
            r#"rpc_server_call_duration_seconds_count{rpc_method="dockercoins.v1.Rng/Generate",rpc_response_status_code="OK"} 1"#,
            r#"rpc_server_call_duration_seconds_count{rpc_method="dockercoins.v1.Rng/Generate",rpc_response_status_code="CANCELLED"} 1"#,
            r#"rpc_server_call_duration_seconds_count{rpc_method="_OTHER",rpc_response_status_code="UNIMPLEMENTED"} 1"#,
            r#"rpc_server_call_duration_seconds_count{rpc_method="_OTHER",rpc_response_status_code="CANCELLED"} 1"#,
            r#"rpc_server_calls_in_flight{rpc_service="dockercoins.v1.Rng"} 0"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(
            !text.contains("Whatever") && !text.contains("MadeUp"),
            "{text}"
        );
    }
}
