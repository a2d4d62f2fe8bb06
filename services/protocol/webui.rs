//! What webui answers and its readers read: `/json` (the score), `/api/hops`
//! (each hop's rate and latency) and `/api/status` (health per replica).
//! webui writes these types, `dockercoins top` reads them, and the page
//! (services/webui/app.js) reads the same JSON; so neither program imports
//! the other, and the shapes cannot drift apart.
//!
//! The JSON is the one the page was written against: keys in alphabetical
//! order (as `serde_json`'s map wrote them, hence the field order here), a
//! field absent until there is something to say, and `null` where a value
//! is known to be missing. A field that can be both is an
//! `Option<Option<T>>`: `None` absent, `Some(None)` null. Fields a reader
//! cannot do without are `#[serde(default)]`, so `top` still reads a webui
//! older than itself.

use serde::{Deserialize, Deserializer, Serialize};

/// `GET /json`: the score and webui's clock (unix seconds), as the original.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Serialize)]
pub struct TimedScore {
    pub coins: u64,
    pub hashes: u64,
    pub now: f64,
}

/// `GET /json` when Redis does not answer (with a 503).
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
pub struct ScoreUnavailable {
    pub error: String,
    #[serde(default)]
    pub now: f64,
}

/// `GET /api/hops`: each hop's rate and latency as its servers measure them,
/// over the last `window_seconds`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
pub struct HopsView {
    #[serde(default)]
    pub hasher: Vec<ReplicaHop>,
    /// Empty for the in-process store: it measures nothing.
    #[serde(default)]
    pub redis: Vec<ReplicaHop>,
    #[serde(default)]
    pub rng: Vec<ReplicaHop>,
    #[serde(default)]
    pub window_seconds: f64,
}

/// One line of `/api/hops`: a replica of rng or hasher, or Redis (its one
/// server: no address, instance, faults, queue or slowest call). Until two
/// answers span a window, only its address, its error and its faults.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
pub struct ReplicaHop {
    /// The address dialled; empty for Redis.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls_per_second: Option<f64>,
    /// Why the last ask failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the replica was told to inject (`--fail-rate`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<String>,
    /// The replica's own name (`hostname:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Redis only, `start`: it keeps its latencies since it started, not
    /// over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_since: Option<String>,
    /// Null when the window held no call (Redis: before Redis 7, or with
    /// `latency-tracking no`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "present")]
    pub p50_ms: Option<Option<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "present")]
    pub p99_ms: Option<Option<f64>>,
    /// rng only: requests waiting for a lane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<u64>,
    /// The slowest recent call that has a trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slowest: Option<SlowestCall>,
}

/// A replica's slowest recent call, and where to see its trace.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
pub struct SlowestCall {
    pub ms: f64,
    #[serde(default)]
    pub trace_id: String,
    /// In the Jaeger UI, when webui was told where it is.
    #[serde(default)]
    pub url: Option<String>,
}

/// `GET /api/status`: each backend's health per replica, and Redis's.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
pub struct StatusView {
    #[serde(default)]
    pub hasher: BackendStatus,
    #[serde(default)]
    pub redis: RedisStatus,
    #[serde(default)]
    pub rng: BackendStatus,
}

/// A backend in `/api/status`: its best replica's health (the first
/// serving, else the first), every replica's, and the policy webui's clients
/// spread calls with.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
pub struct BackendStatus {
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub latency_ms: Option<f64>,
    /// Absent from a webui older than `top`.
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub replicas: Vec<ReplicaStatus>,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub url: String,
}

/// One replica in `/api/status`: answered (latency, and its identity and
/// calls when `Replica/Info` answered too), or unreachable (an error).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
pub struct ReplicaStatus {
    #[serde(default)]
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "present")]
    pub calls: Option<Option<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "present")]
    pub instance: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Its share of the calls under those weights (0 to 1; replicas
    /// without a weight take the others' mean); absent when fewer than two
    /// replicas have a weight (round robin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    /// gRPC health (`SERVING`...) or `UNREACHABLE`.
    #[serde(default)]
    pub status: String,
    /// The utilization its load report said (ORCA: the application's own
    /// when it reports one, else its CPU's), 1.0 = full; absent when it
    /// sent no report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
    /// The weight a `weighted_round_robin` client gives it from that
    /// report (gRFC A58: calls per second per unit of utilization); absent
    /// when the report says too little (no calls yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

/// Redis in `/api/status`: its URL (password masked) and its health.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
pub struct RedisStatus {
    #[serde(default)]
    pub state: RedisState,
    #[serde(default)]
    pub url: String,
}

/// `UP` with the latency of a PING, or `DOWN` with why.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
pub struct RedisState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(default)]
    pub status: String,
}

/// A field that is there (`Some`), null or not: only called when the key is
/// present, so `null` reads as `Some(None)` and an absent key as `None`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The typed answer is the JSON webui wrote with `json!` before it had
    /// types, byte for byte: keys, order, nulls, absent fields, numbers.
    fn same_bytes<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(
        typed: &T,
        written: serde_json::Value,
    ) {
        let bytes = serde_json::to_string(typed).unwrap();
        assert_eq!(bytes, written.to_string());
        assert_eq!(&serde_json::from_str::<T>(&bytes).unwrap(), typed);
    }

    #[test]
    fn the_score_and_its_error_are_the_originals() {
        let score = TimedScore {
            coins: 3,
            hashes: 48,
            now: 1700000000.5,
        };
        same_bytes(
            &score,
            json!({"coins": 3, "hashes": 48, "now": 1700000000.5}),
        );
        let down = ScoreUnavailable {
            error: "Redis unavailable: refused".into(),
            now: 2.0,
        };
        same_bytes(
            &down,
            json!({"error": "Redis unavailable: refused", "now": 2.0}),
        );
    }

    #[test]
    fn a_hop_says_nothing_until_it_has_a_window_then_null_for_no_latency() {
        let young = ReplicaHop {
            address: "10.0.0.1:8001".into(),
            error: Some("no answer in 900 ms".into()),
            faults: Some("fails 20%".into()),
            ..ReplicaHop::default()
        };
        same_bytes(
            &young,
            json!({"address": "10.0.0.1:8001", "error": "no answer in 900 ms", "faults": "fails 20%"}),
        );
        let idle = ReplicaHop {
            address: "10.0.0.1:8001".into(),
            instance: Some("rng-1:8001".into()),
            calls_per_second: Some(0.0),
            p50_ms: Some(None),
            p99_ms: Some(None),
            queue: Some(0),
            slowest: Some(SlowestCall {
                ms: 101.25,
                trace_id: "abc".into(),
                url: None,
            }),
            ..ReplicaHop::default()
        };
        same_bytes(
            &idle,
            json!({"address": "10.0.0.1:8001", "instance": "rng-1:8001",
                   "calls_per_second": 0.0, "p50_ms": null, "p99_ms": null, "queue": 0,
                   "slowest": {"ms": 101.25, "trace_id": "abc", "url": null}}),
        );
        let redis = ReplicaHop {
            calls_per_second: Some(9.8),
            p50_ms: Some(Some(0.3)),
            p99_ms: Some(None),
            latency_since: Some("start".into()),
            ..ReplicaHop::default()
        };
        let hops = HopsView {
            window_seconds: 5.0,
            rng: vec![idle.clone()],
            hasher: vec![],
            redis: vec![redis],
        };
        same_bytes(
            &hops,
            json!({"window_seconds": 5.0, "rng": [serde_json::to_value(&idle).unwrap()],
                   "hasher": [], "redis": [{"calls_per_second": 9.8, "p50_ms": 0.3,
                   "p99_ms": null, "latency_since": "start"}]}),
        );
    }

    #[test]
    fn status_keeps_its_nulls_and_omits_what_an_unreachable_replica_lacks() {
        let serving = ReplicaStatus {
            address: "10.0.0.1:8001".into(),
            status: "SERVING".into(),
            latency_ms: Some(1.25),
            instance: Some(None),
            calls: Some(None),
            error: None,
            utilization: None,
            weight: None,
            share: None,
        };
        same_bytes(
            &serving,
            json!({"address": "10.0.0.1:8001", "status": "SERVING", "latency_ms": 1.25,
                   "instance": null, "calls": null}),
        );
        let weighed = ReplicaStatus {
            utilization: Some(0.5),
            weight: Some(20.0),
            share: Some(0.25),
            ..serving.clone()
        };
        same_bytes(
            &weighed,
            json!({"address": "10.0.0.1:8001", "status": "SERVING", "latency_ms": 1.25,
                   "instance": null, "calls": null, "utilization": 0.5, "weight": 20.0,
                   "share": 0.25}),
        );
        let gone = ReplicaStatus {
            address: "10.0.0.2:8001".into(),
            status: "UNREACHABLE".into(),
            error: Some("no answer in 2 s".into()),
            ..ReplicaStatus::default()
        };
        same_bytes(
            &gone,
            json!({"address": "10.0.0.2:8001", "status": "UNREACHABLE", "error": "no answer in 2 s"}),
        );
        let status = StatusView {
            rng: BackendStatus {
                url: "http://rng:8001".into(),
                policy: Some("round_robin".into()),
                status: "UNREACHABLE".into(),
                latency_ms: None,
                error: Some("no answer in 2 s".into()),
                replicas: vec![gone],
            },
            hasher: BackendStatus::default(),
            redis: RedisStatus {
                url: "redis://redis:6379".into(),
                state: RedisState {
                    status: "UP".into(),
                    latency_ms: Some(0.5),
                    error: None,
                },
            },
        };
        same_bytes(
            &status,
            json!({
                "rng": {"url": "http://rng:8001", "policy": "round_robin",
                        "status": "UNREACHABLE", "latency_ms": null,
                        "error": "no answer in 2 s",
                        "replicas": [{"address": "10.0.0.2:8001", "status": "UNREACHABLE",
                                      "error": "no answer in 2 s"}]},
                "hasher": {"url": "", "policy": null, "status": "", "latency_ms": null,
                           "error": null, "replicas": []},
                "redis": {"url": "redis://redis:6379", "state": {"status": "UP", "latency_ms": 0.5}},
            }),
        );
    }
}
