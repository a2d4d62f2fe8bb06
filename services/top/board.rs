//! What `top` knows of the mesh: webui's answers as they come, kept and
//! turned into one [`Snapshot`], the reading that the screen draws and
//! `--once --json` prints. The numbers are the page's own (services/webui/
//! app.js): the same rate over the same window, the same rows, the same
//! verdict, so the terminal and the browser never disagree.
//!
//! Plain data, no I/O: fetching lives in [`super::webui_api`], drawing in
//! [`super::screen`]; the answers' shapes are webui's own
//! ([`crate::protocol::webui`]).

use crate::protocol::webui::{HopsView, ReplicaHop, ReplicaStatus, StatusView, TimedScore};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};

/// The big number is the rate over this many seconds, as on the page
/// (workers report once a second: a shorter window saw-tooths).
pub const RATE_WINDOW_SECONDS: f64 = 5.0;

/// Readings kept for the history: two minutes at the default interval, the
/// page's chart.
pub const HISTORY_LEN: usize = 120;

/// Each history point is the rate over this many readings, as the page's
/// chart smooths the workers' once-a-second updates.
const HISTORY_SMOOTHING: usize = 3;

/// What `top` shows, at one moment. Its JSON is `--once --json`'s output:
/// the field names are documented in docs/top.md and kept stable.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Snapshot {
    /// The webui read.
    pub webui: String,
    /// Why webui could not be read, when it could not (then the rest is
    /// the last reading, if any).
    pub unreachable: Option<String>,
    /// Why webui had no score (Redis down), in its own words.
    pub score_error: Option<String>,
    pub hashes: Option<u64>,
    pub coins: Option<u64>,
    /// Over the last [`RATE_WINDOW_SECONDS`].
    pub hashes_per_second: Option<f64>,
    /// Oldest first, one point per reading.
    pub history: Vec<HistoryPoint>,
    /// The span `hops` cover (webui's window).
    pub hops_window_seconds: Option<f64>,
    pub hops: Vec<HopRow>,
    /// The hop with the highest p50 when it stands out, as the page's
    /// verdict names it.
    pub slow_hop: Option<String>,
    /// Requests waiting in rng's lanes, all replicas together.
    pub rng_queue: Option<u64>,
    pub replicas: Replicas,
    /// How webui's clients spread calls over replicas (in `up` and the
    /// compose file, the workers' policy too).
    pub policy: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct HistoryPoint {
    /// webui's clock, unix seconds.
    pub t: f64,
    pub hashes_per_second: f64,
}

/// Replicas webui's clients reach, per backend.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Replicas {
    pub rng: usize,
    pub hasher: usize,
}

/// One row of the page's table: a hop at one replica.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct HopRow {
    /// `rng`, `hasher` or `redis`.
    pub hop: &'static str,
    /// The address dialled (Redis: its URL, password masked).
    pub replica: String,
    pub instance: Option<String>,
    /// gRPC health (`SERVING`...), `UP`/`DOWN` for Redis, `…` before the
    /// first health check.
    pub state: String,
    pub calls_per_second: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// rng only: requests waiting for a lane.
    pub queue: Option<u64>,
    /// The utilization the replica's load report says (ORCA: its own
    /// measure, else its CPU), 1.0 = full, above 1 when requests wait;
    /// `None` with no report (Redis, a webui older than `top`).
    pub utilization: Option<f64>,
    /// Its share of the calls, 0 to 1, under the weights a
    /// `weighted_round_robin` client gives from those reports; `None` when
    /// fewer than two replicas have a weight (round robin).
    pub share: Option<f64>,
    /// The slowest recent call (the page links it to its trace).
    pub slowest_ms: Option<f64>,
    /// What the replica was told to inject (`--fail-rate`...).
    pub faults: Option<String>,
    pub error: Option<String>,
}

/// webui's answers so far.
#[derive(Clone, Debug, Default)]
pub struct Board {
    webui: String,
    /// The last [`HISTORY_LEN`] scores, oldest first.
    scores: VecDeque<TimedScore>,
    /// The last `/json` that carried an error instead of a score.
    score_error: Option<String>,
    /// Why the last attempt to reach webui failed; cleared by an answer.
    unreachable: Option<String>,
    hops: Option<HopsView>,
    status: Option<StatusView>,
}

impl Board {
    pub fn new(webui: &str) -> Self {
        Self {
            webui: webui.to_owned(),
            ..Self::default()
        }
    }

    pub fn record_score(&mut self, score: Result<TimedScore, String>) {
        self.unreachable = None;
        match score {
            Ok(score) => {
                self.score_error = None;
                // The counter was reset (Redis emptied): a new history.
                if self
                    .scores
                    .back()
                    .is_some_and(|last| score.hashes < last.hashes)
                {
                    self.scores.clear();
                }
                self.scores.push_back(score);
                while self.scores.len() > HISTORY_LEN + HISTORY_SMOOTHING {
                    self.scores.pop_front();
                }
            }
            Err(error) => self.score_error = Some(error),
        }
    }

    pub fn record_hops(&mut self, hops: HopsView) {
        self.hops = Some(hops);
    }

    pub fn record_status(&mut self, status: StatusView) {
        self.status = Some(status);
    }

    /// webui did not answer: said on screen, the last reading kept.
    pub fn record_unreachable(&mut self, reason: String) {
        self.unreachable = Some(reason);
    }

    /// Seconds between the first and the last score kept.
    pub fn scores_span(&self) -> f64 {
        match (self.scores.front(), self.scores.back()) {
            (Some(first), Some(last)) => last.now - first.now,
            _ => 0.0,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let hops = self.rows();
        let latest = self.scores.back();
        Snapshot {
            webui: self.webui.clone(),
            unreachable: self.unreachable.clone(),
            score_error: self.score_error.clone(),
            hashes: latest.map(|s| s.hashes),
            coins: latest.map(|s| s.coins),
            hashes_per_second: self.rate_over(RATE_WINDOW_SECONDS).map(tenths),
            history: self.history(),
            hops_window_seconds: self.hops.as_ref().map(|h| h.window_seconds),
            slow_hop: slow_hop(&hops).map(|row| row.hop.to_owned()),
            rng_queue: rng_queue(&hops),
            replicas: self.replicas(),
            policy: self.status.as_ref().and_then(|s| s.rng.policy.clone()),
            hops,
        }
    }

    /// The page's `rateOver`: from the oldest score within `seconds` of the
    /// last to the last.
    fn rate_over(&self, seconds: f64) -> Option<f64> {
        let last = self.scores.back()?;
        let first = self
            .scores
            .iter()
            .find(|s| last.now - s.now <= seconds)
            .unwrap_or(last);
        let span = last.now - first.now;
        (span > 0.0).then(|| (last.hashes - first.hashes) as f64 / span)
    }

    /// The page's chart: each reading's rate over the last few readings.
    fn history(&self) -> Vec<HistoryPoint> {
        let scores: Vec<&TimedScore> = self.scores.iter().collect();
        scores
            .windows(HISTORY_SMOOTHING + 1)
            .filter_map(|pair| {
                let (a, b) = (pair[0], pair[HISTORY_SMOOTHING]);
                (b.now > a.now).then(|| HistoryPoint {
                    t: b.now,
                    hashes_per_second: tenths((b.hashes - a.hashes) as f64 / (b.now - a.now)),
                })
            })
            .collect()
    }

    /// The replicas webui's clients reach: from its health checks, or from
    /// the hops before the first one.
    fn replicas(&self) -> Replicas {
        match (&self.status, &self.hops) {
            (Some(status), _) => Replicas {
                rng: status.rng.replicas.len(),
                hasher: status.hasher.replicas.len(),
            },
            (None, Some(hops)) => Replicas {
                rng: hops.rng.len(),
                hasher: hops.hasher.len(),
            },
            (None, None) => Replicas::default(),
        }
    }

    /// The page's table: rng's replicas, hasher's, then Redis, each with its
    /// health from the last status.
    fn rows(&self) -> Vec<HopRow> {
        let Some(hops) = &self.hops else {
            return Vec::new();
        };
        let mut health: HashMap<&str, &ReplicaStatus> = HashMap::new();
        if let Some(status) = &self.status {
            for replica in status.rng.replicas.iter().chain(&status.hasher.replicas) {
                health.insert(replica.address.as_str(), replica);
            }
        }
        let backend = |hop: &'static str, replicas: &[ReplicaHop]| -> Vec<HopRow> {
            replicas
                .iter()
                .map(|r| {
                    let seen = health.get(r.address.as_str());
                    let state = match (seen, &r.error) {
                        (Some(seen), _) => seen.status.clone(),
                        (None, Some(_)) => "UNREACHABLE".to_owned(),
                        (None, None) => "…".to_owned(),
                    };
                    let error = r
                        .error
                        .clone()
                        .or_else(|| seen.and_then(|s| s.error.clone()));
                    HopRow {
                        utilization: seen.and_then(|s| s.utilization),
                        share: seen.and_then(|s| s.share),
                        ..row(hop, r.address.clone(), state, error, r)
                    }
                })
                .collect()
        };
        let mut rows = backend("rng", &hops.rng);
        rows.extend(backend("hasher", &hops.hasher));
        let redis = self.status.as_ref().map(|s| &s.redis);
        rows.extend(hops.redis.iter().map(|r| {
            let url = redis.map_or_else(String::new, |redis| redis.url.clone());
            let state = redis.map_or_else(|| "…".to_owned(), |redis| redis.state.status.clone());
            let error = r
                .error
                .clone()
                .or_else(|| redis.and_then(|redis| redis.state.error.clone()));
            row("redis", url, state, error, r)
        }));
        rows
    }
}

fn row(
    hop: &'static str,
    replica: String,
    state: String,
    error: Option<String>,
    r: &ReplicaHop,
) -> HopRow {
    HopRow {
        hop,
        replica,
        instance: r.instance.clone(),
        state,
        calls_per_second: r.calls_per_second,
        p50_ms: r.p50_ms.flatten(),
        p99_ms: r.p99_ms.flatten(),
        queue: r.queue,
        utilization: None,
        share: None,
        slowest_ms: r.slowest.as_ref().map(|s| s.ms),
        faults: r.faults.clone(),
        error,
    }
}

/// A rate to a tenth, as the page shows it and webui's hops give it.
fn tenths(rate: f64) -> f64 {
    (rate * 10.0).round() / 10.0
}

/// How many times the next hop's p50 the slowest hop's must be to be named:
/// the page's `STANDS_OUT`, so both say the same. Below it no hop is the
/// bottleneck (one classroom worker: rng and hasher both take about 100 ms).
pub const STANDS_OUT: f64 = 1.5;

/// The page's verdict on the rows with calls.
#[derive(Debug, PartialEq)]
pub enum HopVerdict<'a> {
    /// This hop's p50 is at least [`STANDS_OUT`] times every other hop's.
    Slow(&'a HopRow),
    /// The slowest and the next slowest hop, too close to name either.
    Even(&'a HopRow, &'a HopRow),
}

/// Of the rows with calls, the one with the highest p50, if it stands out.
pub fn hop_verdict(rows: &[HopRow]) -> Option<HopVerdict<'_>> {
    let (worst, worst_p50) = slowest(rows.iter())?;
    let next = slowest(rows.iter().filter(|r| r.hop != worst.hop));
    match next {
        Some((next, next_p50)) if worst_p50 < STANDS_OUT * next_p50 => {
            Some(HopVerdict::Even(worst, next))
        }
        _ => Some(HopVerdict::Slow(worst)),
    }
}

/// Of `rows` with calls, the one with the highest p50, and that p50.
fn slowest<'a>(rows: impl Iterator<Item = &'a HopRow>) -> Option<(&'a HopRow, f64)> {
    rows.filter(|r| r.calls_per_second.is_some_and(|c| c > 0.0))
        .filter_map(|r| Some((r, r.p50_ms?)))
        .reduce(|a, b| if b.1 > a.1 { b } else { a })
}

/// The hop the verdict names, if it names one.
pub fn slow_hop(rows: &[HopRow]) -> Option<&HopRow> {
    match hop_verdict(rows)? {
        HopVerdict::Slow(row) => Some(row),
        HopVerdict::Even(..) => None,
    }
}

fn rng_queue(rows: &[HopRow]) -> Option<u64> {
    rows.iter()
        .filter(|r| r.hop == "rng")
        .filter_map(|r| r.queue)
        .reduce(|a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(now: f64, hashes: u64) -> Result<TimedScore, String> {
        Ok(TimedScore {
            coins: hashes / 16,
            hashes,
            now,
        })
    }

    #[test]
    fn the_rate_is_the_pages_over_five_seconds() {
        let mut board = Board::new("http://webui");
        assert_eq!(board.snapshot().hashes_per_second, None);
        for second in 0u32..10 {
            board.record_score(score(100.0 + f64::from(second), u64::from(second) * 10));
        }
        let snapshot = board.snapshot();
        assert_eq!(snapshot.hashes_per_second, Some(10.0));
        assert_eq!(snapshot.hashes, Some(90));
        // Ten readings, each point over three of them: seven points.
        assert_eq!(snapshot.history.len(), 7);
        assert!(snapshot.history.iter().all(|p| p.hashes_per_second == 10.0));
    }

    #[test]
    fn a_reset_counter_starts_a_new_history() {
        let mut board = Board::new("http://webui");
        board.record_score(score(1.0, 500));
        board.record_score(score(2.0, 510));
        board.record_score(score(3.0, 4));
        assert_eq!(board.snapshot().hashes_per_second, None);
        assert_eq!(board.scores_span(), 0.0);
    }

    #[test]
    fn an_error_keeps_the_last_score_and_says_why() {
        let mut board = Board::new("http://webui");
        board.record_score(score(1.0, 5));
        board.record_score(Err("Redis unavailable: refused".into()));
        let snapshot = board.snapshot();
        assert_eq!(snapshot.hashes, Some(5));
        assert_eq!(
            snapshot.score_error.as_deref(),
            Some("Redis unavailable: refused")
        );
        board.record_unreachable("cannot connect".into());
        assert_eq!(
            board.snapshot().unreachable.as_deref(),
            Some("cannot connect")
        );
        board.record_score(score(2.0, 6));
        let snapshot = board.snapshot();
        assert_eq!((snapshot.unreachable, snapshot.score_error), (None, None));
    }

    fn hops() -> HopsView {
        serde_json::from_value(serde_json::json!({
            "window_seconds": 5.0,
            "rng": [
                {"address": "10.0.0.1:8001", "instance": "a:8001", "calls_per_second": 1.3,
                 "p50_ms": 750.0, "p99_ms": 980.0, "queue": 9},
                {"address": "10.0.0.2:8001", "error": "no answer in 900 ms",
                 "faults": "+50ms for 100%"}
            ],
            "hasher": [{"address": "10.0.0.3:8002", "calls_per_second": 10.0,
                        "p50_ms": 100.0, "p99_ms": 101.0}],
            "redis": [{"calls_per_second": 9.8, "p50_ms": 0.3, "p99_ms": 1.2,
                       "latency_since": "start"}]
        }))
        .unwrap()
    }

    fn row(hop: &'static str, p50_ms: f64) -> HopRow {
        HopRow {
            hop,
            calls_per_second: Some(3.3),
            p50_ms: Some(p50_ms),
            ..HopRow::default()
        }
    }

    #[test]
    fn a_hop_is_named_only_when_it_stands_out() {
        // One classroom worker: rng and hasher both about 100 ms.
        let even = [row("rng", 104.0), row("hasher", 101.0), row("redis", 0.2)];
        assert_eq!(
            hop_verdict(&even),
            Some(HopVerdict::Even(&even[0], &even[1]))
        );
        assert_eq!(slow_hop(&even), None);
        // Just under and at STANDS_OUT times the next hop.
        let close = [row("rng", 149.0), row("hasher", 100.0)];
        assert_eq!(slow_hop(&close), None);
        let apart = [row("rng", 150.0), row("hasher", 100.0)];
        assert_eq!(slow_hop(&apart).map(|r| r.hop), Some("rng"));
        // Replicas of one hop are not compared with each other.
        let replicas = [row("rng", 700.0), row("rng", 650.0), row("hasher", 100.0)];
        assert_eq!(slow_hop(&replicas).map(|r| r.p50_ms), Some(Some(700.0)));
        // Rows without calls do not count; one hop alone is named.
        let idle = [
            row("rng", 100.0),
            HopRow {
                calls_per_second: Some(0.0),
                ..row("hasher", 90.0)
            },
        ];
        assert_eq!(slow_hop(&idle).map(|r| r.hop), Some("rng"));
    }

    #[test]
    fn rows_verdict_queue_and_replicas_are_the_pages() {
        let mut board = Board::new("http://webui");
        board.record_hops(hops());
        let snapshot = board.snapshot();
        let states: Vec<&str> = snapshot.hops.iter().map(|r| r.state.as_str()).collect();
        // No health check yet: unknown, or unreachable when the hop says so.
        assert_eq!(states, ["…", "UNREACHABLE", "…", "…"]);
        assert_eq!(snapshot.slow_hop.as_deref(), Some("rng"));
        assert_eq!(snapshot.rng_queue, Some(9));
        assert_eq!(snapshot.replicas, Replicas { rng: 2, hasher: 1 });
        assert_eq!(snapshot.policy, None);
        let status: StatusView = serde_json::from_value(serde_json::json!({
            "rng": {"url": "http://rng:8001", "policy": "round_robin", "replicas": [
                {"address": "10.0.0.1:8001", "status": "SERVING"},
                {"address": "10.0.0.2:8001", "status": "NOT_SERVING", "error": "draining"}]},
            "hasher": {"url": "http://hasher:8002", "policy": "round_robin", "replicas": [
                {"address": "10.0.0.3:8002", "status": "SERVING"}]},
            "redis": {"url": "redis://redis:6379", "state": {"status": "UP"}}
        }))
        .unwrap();
        board.record_status(status);
        let snapshot = board.snapshot();
        let states: Vec<&str> = snapshot.hops.iter().map(|r| r.state.as_str()).collect();
        assert_eq!(states, ["SERVING", "NOT_SERVING", "SERVING", "UP"]);
        assert_eq!(snapshot.hops[3].replica, "redis://redis:6379");
        assert_eq!(
            snapshot.hops[1].error.as_deref(),
            Some("no answer in 900 ms")
        );
        assert_eq!(snapshot.policy.as_deref(), Some("round_robin"));
        // A webui older than the load reports: no utilization, no share.
        assert!(
            snapshot
                .hops
                .iter()
                .all(|r| r.utilization.is_none() && r.share.is_none()),
            "{:?}",
            snapshot.hops
        );
    }

    #[test]
    fn each_replica_has_the_load_it_reports_and_its_weighted_share() {
        let mut board = Board::new("http://webui");
        board.record_hops(hops());
        // Before the first status, nothing is known of the reports.
        assert!(
            board
                .snapshot()
                .hops
                .iter()
                .all(|r| r.utilization.is_none())
        );
        let status: StatusView = serde_json::from_value(serde_json::json!({
            "rng": {"url": "http://rng:8001", "policy": "weighted_round_robin", "replicas": [
                {"address": "10.0.0.1:8001", "status": "SERVING",
                 "utilization": 10.2, "weight": 0.13, "share": 0.25},
                {"address": "10.0.0.2:8001", "status": "SERVING",
                 "utilization": 3.4, "weight": 0.39, "share": 0.75}]},
            // One replica: a report, but round robin, so no share; no
            // calls yet, so no weight either.
            "hasher": {"url": "http://hasher:8002", "policy": "weighted_round_robin",
                "replicas": [{"address": "10.0.0.3:8002", "status": "SERVING",
                              "utilization": 0.02}]},
            "redis": {"url": "redis://redis:6379", "state": {"status": "UP"}}
        }))
        .unwrap();
        board.record_status(status);
        let snapshot = board.snapshot();
        let read: Vec<(&str, Option<f64>, Option<f64>)> = snapshot
            .hops
            .iter()
            .map(|r| (r.hop, r.utilization, r.share))
            .collect();
        assert_eq!(
            read,
            [
                ("rng", Some(10.2), Some(0.25)),
                ("rng", Some(3.4), Some(0.75)),
                ("hasher", Some(0.02), None),
                ("redis", None, None),
            ]
        );
        assert_eq!(snapshot.policy.as_deref(), Some("weighted_round_robin"));
        // `--once --json` names them as docs/top.md does.
        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(json["hops"][0]["utilization"], 10.2);
        assert_eq!(json["hops"][0]["share"], 0.25);
        assert!(json["hops"][2]["share"].is_null(), "{json}");
        assert!(json["hops"][3]["utilization"].is_null(), "{json}");
    }
}
