//! `dockercoins traces`: where the time goes, read from Jaeger. For a
//! trainer, a preflight (do traces arrive, is every hop in them?); for a
//! student, the lab's question answered per hop: with ten workers, the time
//! is spent waiting in rng's lane.
//!
//! It reads the traces of the worker's units of work through Jaeger's HTTP
//! API v3 (what Jaeger's UI reads) and prints, for each hop, how many spans
//! and their p50 and p99 durations, then how complete the traces are.

use crate::telemetry::latency::nearest_rank;
use crate::{
    client::http_get::{self, GetError},
    pb::{hasher_server::SERVICE_NAME as HASHER_SERVICE, rng_server::SERVICE_NAME as RNG_SERVICE},
};
use serde_json::Value;
use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    time::Duration,
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// The service whose traces are read: every unit of work starts there.
pub const WORKER_SERVICE: &str = "worker";

/// Where Jaeger's UI and API are in compose (published on the host).
pub const DEFAULT_JAEGER: &str = "http://localhost:16686";

/// The window read unless told otherwise: a minute of a lab.
pub const DEFAULT_SINCE: &str = "60s";

/// What to read.
#[derive(Clone, Debug)]
pub struct TracesConfig {
    /// Jaeger's query address, `http://host:port`.
    pub jaeger: String,
    /// How far back to read.
    pub since: Duration,
}

/// Why the traces could not be read, or say the pipeline is broken. Each
/// message is one line a trainer can act on.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error(
        "cannot read Jaeger at {jaeger}: {error} (is Jaeger up, and its port 16686 published?)"
    )]
    Unreachable { jaeger: String, error: GetError },
    #[error("Jaeger at {jaeger} answered {status}: {body}")]
    Refused {
        jaeger: String,
        status: u16,
        body: String,
    },
    #[error("Jaeger's answer is not the API v3 JSON expected: {0}")]
    Format(String),
    #[error(
        "no trace from the worker in the last {since:?}: are the workers running, with OTEL_EXPORTER_OTLP_ENDPOINT set, and is the collector up?"
    )]
    NoTraces { since: Duration },
    #[error("{count} units of work, but no {hop} span in any of them: {hint}")]
    HopMissing {
        count: usize,
        hop: &'static str,
        hint: &'static str,
    },
}

/// One hop of a unit of work, as spans show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracedHop {
    /// The worker's unit of work, the root of its trace.
    Unit,
    /// rng's wait for its lane (inside rng's server span).
    LaneWait,
    /// rng's server span.
    Rng,
    /// hasher's server span.
    Hasher,
    /// An update of the score in Redis (a trace of its own).
    Redis,
}

impl TracedHop {
    pub const ALL: [TracedHop; 5] = [
        TracedHop::Unit,
        TracedHop::LaneWait,
        TracedHop::Rng,
        TracedHop::Hasher,
        TracedHop::Redis,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TracedHop::Unit => "worker unit",
            TracedHop::LaneWait => "rng lane wait",
            TracedHop::Rng => "rng",
            TracedHop::Hasher => "hasher",
            TracedHop::Redis => "Redis update",
        }
    }

    /// What a missing hop most likely means.
    fn hint(self) -> &'static str {
        match self {
            TracedHop::Unit | TracedHop::Redis => "the worker does not export these spans",
            TracedHop::LaneWait | TracedHop::Rng => {
                "rng does not export (OTEL_EXPORTER_OTLP_ENDPOINT on rng?) or the trace context is lost on the way"
            }
            TracedHop::Hasher => {
                "hasher does not export (OTEL_EXPORTER_OTLP_ENDPOINT on hasher?) or the trace context is lost on the way"
            }
        }
    }

    /// Which hop a span is, by its service, kind and name.
    fn of(span: &Span) -> Option<TracedHop> {
        const SERVER: i64 = 2;
        match (span.service.as_str(), span.name.as_str()) {
            (WORKER_SERVICE, "mine one block" | "mine a batch") if span.parent.is_none() => {
                Some(TracedHop::Unit)
            }
            (WORKER_SERVICE, "update the score") if span.parent.is_none() => Some(TracedHop::Redis),
            ("rng", "rng.lane.wait") => Some(TracedHop::LaneWait),
            ("rng", name) if span.kind == SERVER && is_method_of(RNG_SERVICE, name) => {
                Some(TracedHop::Rng)
            }
            ("hasher", name) if span.kind == SERVER && is_method_of(HASHER_SERVICE, name) => {
                Some(TracedHop::Hasher)
            }
            _ => None,
        }
    }
}

/// Whether a gRPC server span's name (`dockercoins.v1.Rng/Generate`) is a
/// method of `service`.
fn is_method_of(service: &str, span_name: &str) -> bool {
    span_name
        .strip_prefix(service)
        .is_some_and(|method| method.starts_with('/'))
}

/// A span as Jaeger's API v3 gives it (OTLP JSON).
#[derive(Clone, Debug)]
struct Span {
    service: String,
    trace: String,
    id: String,
    parent: Option<String>,
    name: String,
    kind: i64,
    duration: Duration,
}

/// The spans of an API v3 `traces` answer.
fn parse(body: &Value) -> Result<Vec<Span>, TracesError> {
    let format = |what: &str| TracesError::Format(what.to_owned());
    let resources = body["result"]["resourceSpans"]
        .as_array()
        .ok_or_else(|| format("no result.resourceSpans"))?;
    let mut spans = Vec::new();
    for resource in resources {
        let service = resource["resource"]["attributes"]
            .as_array()
            .and_then(|attributes| {
                attributes
                    .iter()
                    .find(|kv| kv["key"] == "service.name")?
                    .pointer("/value/stringValue")?
                    .as_str()
            })
            .unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |key: &str| span[key].as_str().unwrap_or_default();
                let nanos = |key: &str| text(key).parse::<u64>().map_err(|_| format(key));
                spans.push(Span {
                    service: service.to_owned(),
                    trace: text("traceId").to_owned(),
                    id: text("spanId").to_owned(),
                    parent: Some(text("parentSpanId"))
                        .filter(|id| !id.is_empty())
                        .map(str::to_owned),
                    name: text("name").to_owned(),
                    kind: span["kind"].as_i64().unwrap_or_default(),
                    duration: Duration::from_nanos(
                        nanos("endTimeUnixNano")?.saturating_sub(nanos("startTimeUnixNano")?),
                    ),
                });
            }
        }
    }
    Ok(spans)
}

/// One hop's numbers.
#[derive(Clone, Debug)]
pub struct HopStats {
    pub hop: TracedHop,
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
}

/// What `traces` found.
#[derive(Clone, Debug)]
pub struct Report {
    pub jaeger: String,
    pub since: Duration,
    pub hops: Vec<HopStats>,
    /// Units of work found.
    pub units: usize,
    /// Of those, the ones missing rng, its lane wait or hasher.
    pub incomplete: usize,
    /// Spans whose parent is not in their trace: a hop that did not export,
    /// or one still in flight when the window closed.
    pub orphans: usize,
}

/// Spans whose parent is not among `spans`.
fn orphans(spans: &[Span]) -> usize {
    let ids: HashSet<(&str, &str)> = spans
        .iter()
        .map(|s| (s.trace.as_str(), s.id.as_str()))
        .collect();
    spans
        .iter()
        .filter_map(|span| Some((span.trace.as_str(), span.parent.as_deref()?)))
        .filter(|parent| !ids.contains(parent))
        .count()
}

/// The report of `spans`, or the reason the pipeline is broken.
fn report(config: &TracesConfig, spans: &[Span]) -> Result<Report, TracesError> {
    let mut durations: HashMap<&'static str, Vec<Duration>> = HashMap::new();
    let mut hops_of_trace: HashMap<&str, HashSet<&'static str>> = HashMap::new();
    let orphans = orphans(spans);
    for span in spans {
        if let Some(hop) = TracedHop::of(span) {
            durations
                .entry(hop.label())
                .or_default()
                .push(span.duration);
            hops_of_trace
                .entry(&span.trace)
                .or_default()
                .insert(hop.label());
        }
    }
    let units = durations.get(TracedHop::Unit.label()).map_or(0, Vec::len);
    if units == 0 {
        return Err(TracesError::NoTraces {
            since: config.since,
        });
    }
    let mut hops = Vec::new();
    for hop in TracedHop::ALL {
        let Some(mut found) = durations.remove(hop.label()) else {
            return Err(TracesError::HopMissing {
                count: units,
                hop: hop.label(),
                hint: hop.hint(),
            });
        };
        found.sort();
        hops.push(HopStats {
            hop,
            count: found.len(),
            p50: nearest_rank(&found, 0.5).unwrap_or_default(),
            p99: nearest_rank(&found, 0.99).unwrap_or_default(),
        });
    }
    let needed = [TracedHop::Rng, TracedHop::LaneWait, TracedHop::Hasher].map(TracedHop::label);
    let incomplete = hops_of_trace
        .values()
        .filter(|found| found.contains(TracedHop::Unit.label()))
        .filter(|found| needed.iter().any(|hop| !found.contains(hop)))
        .count();
    Ok(Report {
        jaeger: config.jaeger.clone(),
        since: config.since,
        hops,
        units,
        incomplete,
        orphans,
    })
}

/// The most traces one search asks Jaeger for. Its in-memory store refuses
/// a search as deep as the traces it keeps (`max_traces`: 5,000 in
/// deploy/otel/jaeger.yaml, "search depth must be ... less than max
/// traces"); 4,000 is ten classroom workers' last six minutes, more than the
/// lab's `--since` ever covers.
pub const SEARCH_DEPTH: usize = 4000;

/// Reads the worker's traces of the last `config.since` from Jaeger.
pub async fn run(config: &TracesConfig) -> Result<Report, TracesError> {
    let now = OffsetDateTime::now_utc();
    let since = time::Duration::try_from(config.since).unwrap_or(time::Duration::HOUR);
    let stamp = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    let url = format!(
        "{}/api/v3/traces?query.service_name={WORKER_SERVICE}&query.start_time_min={}\
         &query.start_time_max={}&query.num_traces={SEARCH_DEPTH}",
        config.jaeger.trim_end_matches('/'),
        stamp(now - since),
        stamp(now),
    );
    let (status, body) = http_get::get(&url)
        .await
        .map_err(|error| TracesError::Unreachable {
            jaeger: config.jaeger.clone(),
            error,
        })?;
    // API v3 answers 404 when no trace matches.
    let spans = match status.as_u16() {
        200 => {
            parse(&serde_json::from_slice(&body).map_err(|e| TracesError::Format(e.to_string()))?)?
        }
        404 => Vec::new(),
        status => {
            return Err(TracesError::Refused {
                jaeger: config.jaeger.clone(),
                status,
                body: String::from_utf8_lossy(&body).chars().take(200).collect(),
            });
        }
    };
    report(config, &spans)
}

/// A duration as a person reads it: µs, ms or s, three digits.
fn human(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros < 1e3 {
        format!("{micros:.0} µs")
    } else if micros < 1e6 {
        format!("{:.1} ms", micros / 1e3)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

impl Report {
    /// The table for people.
    pub fn table(&self) -> String {
        let mut out = format!(
            "dockercoins traces: {} units of work in the last {} s (Jaeger at {})\n\n",
            self.units,
            self.since.as_secs(),
            self.jaeger
        );
        out += "  hop              spans        p50        p99\n";
        for stats in &self.hops {
            let _ = writeln!(
                out,
                "  {:<15} {:>6} {:>10} {:>10}",
                stats.hop.label(),
                stats.count,
                human(stats.p50),
                human(stats.p99)
            );
        }
        let _ = writeln!(
            out,
            "\n  complete: {} of {} units have rng, its lane wait and hasher; {} spans without their parent",
            self.units - self.incomplete,
            self.units,
            self.orphans
        );
        out
    }
}

/// Parses a window length: `90`, `90s`, `5m`, `1h`.
pub fn parse_since(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{text:?}: expected seconds, like 60s, 5m or 1h")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected seconds, like 60s, 5m or 1h"))?;
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(
        service: &str,
        trace: &str,
        id: &str,
        parent: &str,
        name: &str,
        kind: i64,
        ms: u64,
    ) -> Span {
        Span {
            service: service.into(),
            trace: trace.into(),
            id: id.into(),
            parent: (!parent.is_empty()).then(|| parent.into()),
            name: name.into(),
            kind,
            duration: Duration::from_millis(ms),
        }
    }

    fn unit(trace: &str, wait_ms: u64) -> Vec<Span> {
        let generate = format!("{RNG_SERVICE}/Generate");
        let hash = format!("{HASHER_SERVICE}/Hash");
        vec![
            span("worker", trace, "u", "", "mine one block", 1, 300 + wait_ms),
            span("worker", trace, "c1", "u", &generate, 3, 100 + wait_ms),
            span("rng", trace, "s1", "c1", &generate, 2, 100 + wait_ms),
            span("rng", trace, "w", "s1", "rng.lane.wait", 1, wait_ms),
            span("worker", trace, "c2", "u", &hash, 3, 100),
            span("hasher", trace, "s2", "c2", &hash, 2, 100),
        ]
    }

    #[test]
    fn a_server_span_is_a_hop_by_its_service_and_not_a_prefix_of_it() {
        assert!(is_method_of(
            RNG_SERVICE,
            &format!("{RNG_SERVICE}/GenerateStream")
        ));
        assert!(!is_method_of(
            RNG_SERVICE,
            &format!("{RNG_SERVICE}x/Generate")
        ));
        assert!(!is_method_of(
            RNG_SERVICE,
            &format!("{HASHER_SERVICE}/Hash")
        ));
    }

    fn config() -> TracesConfig {
        TracesConfig {
            jaeger: DEFAULT_JAEGER.into(),
            since: Duration::from_secs(60),
        }
    }

    #[test]
    fn every_hop_is_counted_and_its_quantiles_taken() {
        let mut spans: Vec<Span> = (0..10)
            .flat_map(|i| unit(&format!("t{i}"), 700 + i))
            .collect();
        spans.push(span("worker", "r", "r", "", "update the score", 1, 2));
        let report = report(&config(), &spans).unwrap();
        assert_eq!(
            (report.units, report.incomplete, report.orphans),
            (10, 0, 0)
        );
        let wait = &report.hops[1];
        assert_eq!((wait.hop, wait.count), (TracedHop::LaneWait, 10));
        assert_eq!(wait.p50, Duration::from_millis(704));
        assert_eq!(wait.p99, Duration::from_millis(709));
        assert!(
            report.table().contains("rng lane wait"),
            "{}",
            report.table()
        );
    }

    #[test]
    fn a_broken_pipeline_is_a_one_line_reason() {
        assert!(matches!(
            report(&config(), &[]),
            Err(TracesError::NoTraces { .. })
        ));
        // hasher exports nothing: its client spans are there, its server spans not.
        let spans: Vec<Span> = unit("t", 1)
            .into_iter()
            .filter(|s| s.service != "hasher")
            .collect();
        let error = report(&config(), &spans).unwrap_err();
        assert!(
            matches!(error, TracesError::HopMissing { hop: "hasher", .. }),
            "{error}"
        );
        // rng's spans arrive but not the worker's client span: an orphan.
        let mut spans = unit("t", 1);
        spans.retain(|s| s.id != "c1");
        spans.push(span("worker", "r", "r", "", "update the score", 1, 2));
        let report = report(&config(), &spans).unwrap();
        assert_eq!(report.orphans, 1);
    }

    #[test]
    fn windows_read_as_people_write_them() {
        assert_eq!(parse_since("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_since("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_since("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_since("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_since("5 minutes").is_err());
        assert!(parse_since("").is_err());
    }
}
