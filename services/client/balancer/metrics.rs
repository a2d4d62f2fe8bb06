//! What a balancer measures of its calls: each attempt per hop and per
//! replica, each whole call as its caller saw it, the retries, hedges and
//! ejections, and the policy in use. Beside the balancer that measures them;
//! the registry and the exposition stay in [`crate::telemetry::metrics`].

use crate::telemetry::metrics::{
    Counter, DurationFamily, DurationHistogram, Registry, ServiceLabels, TraceExemplar,
    duration_family, enabled,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Unit,
};
use std::{
    collections::HashMap,
    sync::{Arc, RwLock, atomic::AtomicU64},
    time::Duration,
};

/// A client call's labels: the hop (its method) and the replica called.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientCallLabels {
    pub rpc_method: String,
    /// The replica's address (or the URL, for a pinned client).
    pub server_address: String,
    pub rpc_response_status_code: &'static str,
}

/// What a balanced client measures of its calls: per hop and per replica,
/// the duration to the response headers (a stream's start), the calls tried
/// again on another replica, and the replicas ejected.
///
/// The default is registered nowhere: a client made without a registry
/// measures for nobody, at the cost of a few atomic adds.
#[derive(Clone)]
pub struct ClientCalls {
    durations: DurationFamily<ClientCallLabels>,
    /// Whole calls, as their callers saw them: every attempt included.
    calls: DurationFamily<CallLabels>,
    retries: Family<ServiceLabels, Counter>,
    throttled: Family<ServiceLabels, Counter>,
    hedges: Family<ServiceLabels, Counter>,
    ejections: Family<EjectionLabels, Counter>,
    policy: Family<PolicyLabels, Gauge>,
    weights: Family<WeightLabels, Gauge<f64, AtomicU64>>,
    /// The OK series of each method and replica seen, found again without
    /// building and hashing its labels: the path of almost every call.
    ok: Arc<RwLock<OkSeries>>,
    /// The same for whole calls, by method.
    ok_calls: Arc<RwLock<HashMap<(&'static str, &'static str), DurationHistogram>>>,
}

/// A whole call's labels: the hop and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub rpc_method: String,
    pub rpc_response_status_code: &'static str,
}

/// A replica set aside, and why: `connection` (it could not be reached),
/// `failure_rate` (the outlier rule) or `pushback` (it refused a call for
/// overload and said when to ask again).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EjectionLabels {
    pub rpc_service: &'static str,
    pub server_address: String,
    pub reason: &'static str,
}

/// A replica weighed by `weighted_round_robin`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WeightLabels {
    pub rpc_service: &'static str,
    pub server_address: String,
}

/// A backend's balancing policy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub rpc_service: &'static str,
    pub policy: &'static str,
}

/// (service, method) -> replica -> the histogram of its OK calls.
type OkSeries = HashMap<(&'static str, &'static str), HashMap<String, DurationHistogram>>;

impl Default for ClientCalls {
    fn default() -> Self {
        Self {
            durations: duration_family(),
            calls: duration_family(),
            retries: Family::default(),
            throttled: Family::default(),
            hedges: Family::default(),
            ejections: Family::default(),
            policy: Family::default(),
            weights: Family::default(),
            ok: Arc::default(),
            ok_calls: Arc::default(),
        }
    }
}

impl std::fmt::Debug for ClientCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCalls")
    }
}

impl ClientCalls {
    pub fn register(registry: &mut Registry) -> Self {
        let this = Self::default();
        registry.register_with_unit(
            "rpc_client_call_duration",
            "Duration of gRPC calls made, per replica, to the response headers",
            Unit::Seconds,
            this.durations.clone(),
        );
        registry.register_with_unit(
            "grpc_client_call_duration",
            "Duration of whole gRPC calls as their callers saw them, every retry and hedge included (gRFC A66)",
            Unit::Seconds,
            this.calls.clone(),
        );
        registry.register(
            "rpc_client_retries",
            "Calls tried again on another replica after UNAVAILABLE",
            this.retries.clone(),
        );
        registry.register(
            "rpc_client_retries_throttled",
            "Retries and hedges not sent: the retry budget was spent",
            this.throttled.clone(),
        );
        registry.register(
            "rpc_client_hedges",
            "Second attempts sent for unary calls that had not answered in time",
            this.hedges.clone(),
        );
        registry.register(
            "rpc_client_ejections",
            "Replicas set aside: their connection failed, or they failed too many calls",
            this.ejections.clone(),
        );
        registry.register(
            "rpc_client_replica_weight",
            "Each replica's weight under weighted_round_robin, from its load reports (gRFC A58: calls per second per unit of utilization; 0 until its blackout has passed)",
            this.weights.clone(),
        );
        registry.register(
            "rpc_client_policy",
            "The balancing policy of each backend (1: in use)",
            this.policy.clone(),
        );
        this
    }

    /// Says which policy spreads `rpc_service`'s calls.
    pub fn policy(&self, rpc_service: &'static str, policy: &'static str) {
        self.policy
            .get_or_create(&PolicyLabels {
                rpc_service,
                policy,
            })
            .set(1);
    }

    /// One whole call of `service`'s `method`, ended with `status` after
    /// `elapsed`, every attempt included.
    pub fn observe_call(
        &self,
        (service, method): (&'static str, &'static str),
        status: tonic::Code,
        elapsed: Duration,
    ) {
        let seconds = elapsed.as_secs_f64();
        if status == tonic::Code::Ok {
            let known = self.ok_calls.read().unwrap_or_else(|p| p.into_inner());
            if let Some(histogram) = known.get(&(service, method)) {
                histogram.observe(seconds, None, None);
                return;
            }
        }
        let labels = CallLabels {
            rpc_method: format!("{service}/{method}"),
            rpc_response_status_code: crate::telemetry::code_name(status),
        };
        let histogram = self.calls.get_or_create_owned(&labels);
        histogram.observe(seconds, None, None);
        if status == tonic::Code::Ok {
            let mut known = self.ok_calls.write().unwrap_or_else(|p| p.into_inner());
            known.insert((service, method), histogram);
        }
    }

    pub fn throttled(&self, rpc_service: &'static str) {
        if enabled() {
            self.throttled
                .get_or_create(&ServiceLabels { rpc_service })
                .inc();
        }
    }

    pub fn hedged(&self, rpc_service: &'static str) {
        if enabled() {
            self.hedges
                .get_or_create(&ServiceLabels { rpc_service })
                .inc();
        }
    }

    /// One call of `service`'s `method` to `replica`, ended with `status`
    /// after `elapsed`.
    pub fn observe(
        &self,
        (service, method): (&'static str, &'static str),
        replica: &str,
        status: tonic::Code,
        elapsed: Duration,
        trace: Option<TraceExemplar>,
    ) {
        let seconds = elapsed.as_secs_f64();
        if status == tonic::Code::Ok {
            let known = self.ok.read().unwrap_or_else(|p| p.into_inner());
            if let Some(histogram) = known.get(&(service, method)).and_then(|by| by.get(replica)) {
                histogram.observe(seconds, trace, None);
                return;
            }
        }
        let labels = ClientCallLabels {
            rpc_method: format!("{service}/{method}"),
            server_address: replica.to_owned(),
            rpc_response_status_code: crate::telemetry::code_name(status),
        };
        let histogram = self.durations.get_or_create_owned(&labels);
        histogram.observe(seconds, trace, None);
        if status == tonic::Code::Ok {
            let mut known = self.ok.write().unwrap_or_else(|p| p.into_inner());
            known
                .entry((service, method))
                .or_default()
                .insert(replica.to_owned(), histogram);
        }
    }

    pub fn retried(&self, rpc_service: &'static str) {
        if !enabled() {
            return;
        }
        self.retries
            .get_or_create(&ServiceLabels { rpc_service })
            .inc();
    }

    /// A replica's weight under `weighted_round_robin`, as A58 takes it
    /// at an update (0: none yet, or expired).
    pub fn weight(&self, rpc_service: &'static str, server_address: &str, weight: f64) {
        if !enabled() {
            return;
        }
        self.weights
            .get_or_create(&WeightLabels {
                rpc_service,
                server_address: server_address.to_owned(),
            })
            .set(weight);
    }

    pub fn ejected(&self, rpc_service: &'static str, server_address: &str, reason: &'static str) {
        if !enabled() {
            return;
        }
        self.ejections
            .get_or_create(&EjectionLabels {
                rpc_service,
                server_address: server_address.to_owned(),
                reason,
            })
            .inc();
    }
}
