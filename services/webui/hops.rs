//! webui's per-hop view: where the time goes, as the servers measure it.
//!
//! Every second a sampler asks each replica of rng and hasher what it
//! measured (`Replica/Info`: per method, the calls served and their duration
//! buckets, rng's queue) and Redis what it measured of the workers' updates.
//! `GET /api/hops` turns the last few seconds of those answers into, per hop
//! and per replica, the calls per second and the p50 and p99 latencies. rng's
//! include the wait in its lane: with ten classroom workers, about 750 ms
//! against hasher's 100 ms, which is the lab's answer. A replica told to
//! inject faults (`--fail-rate`, `--extra-delay`) says so, as `faults`.

use crate::{
    client::balancer::Balancer,
    pb::{InfoRequest, InfoResponse, MethodCalls, replica_client::ReplicaClient as ReplicaStub},
    protocol::webui::{HopsView, ReplicaHop, SlowestCall},
    store::{Store, UpdateStats},
    telemetry::latency::Window,
};
use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How often the sampler asks.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// The span the view covers: long enough for a quantile of a few dozen
/// classroom calls, short enough to follow a `--scale` within seconds.
pub const WINDOW: Duration = Duration::from_secs(5);

/// Bound on one replica's answer: a replica slower than this is shown as
/// not answering, and the next sample is not delayed.
const ASK_TIMEOUT: Duration = Duration::from_millis(900);

/// One answer, and when it came.
struct Sample<T> {
    at: Instant,
    answer: T,
}

/// The answers of the last [`WINDOW`] (and one before it, as the start).
struct History<T> {
    samples: VecDeque<Sample<T>>,
    /// Why the last ask failed, if it did.
    error: Option<String>,
}

impl<T> Default for History<T> {
    fn default() -> Self {
        Self {
            samples: VecDeque::new(),
            error: None,
        }
    }
}

impl<T> History<T> {
    fn push(&mut self, answer: Result<T, String>, now: Instant) {
        match answer {
            Ok(answer) => {
                self.samples.push_back(Sample { at: now, answer });
                self.error = None;
            }
            Err(error) => self.error = Some(error),
        }
        // Keep one sample at least WINDOW old: the window's start.
        while self.samples.len() > 2 && self.samples[1].at + WINDOW <= now {
            self.samples.pop_front();
        }
    }

    /// The window's first and last answers, and the seconds between them.
    fn ends(&self) -> Option<(&T, &T, f64)> {
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let seconds = last.at.duration_since(first.at).as_secs_f64();
        (seconds > 0.0).then_some((&first.answer, &last.answer, seconds))
    }
}

/// What the sampler has seen, per hop; replicas by the address dialled.
#[derive(Default)]
struct Seen {
    rng: BTreeMap<String, History<InfoResponse>>,
    hasher: BTreeMap<String, History<InfoResponse>>,
    redis: History<UpdateStats>,
}

/// The per-hop view, fed by its sampler. Cloned into every request.
#[derive(Clone)]
pub struct Hops {
    seen: Arc<Mutex<Seen>>,
    /// Jaeger's UI as the page's reader reaches it, for links to traces.
    jaeger_url: Option<String>,
}

impl Hops {
    pub fn new(jaeger_url: Option<String>) -> Self {
        Self {
            seen: Arc::default(),
            jaeger_url: jaeger_url.map(|url| url.trim_end_matches('/').to_owned()),
        }
    }

    /// Samples every [`SAMPLE_INTERVAL`] until dropped (the caller aborts it).
    pub async fn sample_forever(self, rng: Balancer, hasher: Balancer, store: Store) {
        let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let (rng, hasher, redis) =
                tokio::join!(ask_replicas(&rng), ask_replicas(&hasher), ask_redis(&store));
            let now = Instant::now();
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            record(&mut seen.rng, rng, now);
            record(&mut seen.hasher, hasher, now);
            if let Some(redis) = redis {
                seen.redis.push(redis, now);
            }
        }
    }

    /// `/api/hops`: per hop, per replica, what the last [`WINDOW`] held.
    pub fn view(&self) -> HopsView {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let replicas = |hop: &BTreeMap<String, History<InfoResponse>>, queue: bool| {
            hop.iter()
                .map(|(address, history)| self.replica(address, history, queue))
                .collect()
        };
        HopsView {
            window_seconds: WINDOW.as_secs_f64(),
            rng: replicas(&seen.rng, true),
            hasher: replicas(&seen.hasher, false),
            redis: redis_view(&seen.redis),
        }
    }

    fn replica(&self, address: &str, history: &History<InfoResponse>, queue: bool) -> ReplicaHop {
        let mut view = ReplicaHop {
            address: address.to_owned(),
            error: history.error.clone(),
            ..ReplicaHop::default()
        };
        // What the replica was told to inject, from its first answer on: a
        // misbehaving replica is named on the page before it has a rate.
        if let Some(latest) = history.samples.back()
            && !latest.answer.faults.is_empty()
        {
            view.faults = Some(latest.answer.faults.clone());
        }
        let Some((first, last, seconds)) = history.ends() else {
            return view;
        };
        view.instance = Some(last.instance.clone());
        let window = Window::between(
            merged(first).as_ref(),
            &merged(last).unwrap_or_default(),
            seconds,
        );
        view.calls_per_second = Some(round(window.calls_per_second, 10.0));
        view.p50_ms = Some(window.p50.map(ms));
        view.p99_ms = Some(window.p99.map(ms));
        if queue {
            view.queue = Some(last.lane_queue);
        }
        view.slowest = last
            .methods
            .iter()
            .max_by(|a, b| a.slowest_seconds.total_cmp(&b.slowest_seconds))
            .filter(|m| !m.slowest_trace_id.is_empty())
            .map(|slowest| self.slowest(slowest));
        view
    }

    fn slowest(&self, method: &MethodCalls) -> SlowestCall {
        let trace_id = &method.slowest_trace_id;
        SlowestCall {
            ms: round(method.slowest_seconds * 1e3, 100.0),
            trace_id: trace_id.clone(),
            url: (self.jaeger_url.as_ref()).map(|jaeger| format!("{jaeger}/trace/{trace_id}")),
        }
    }
}

/// Every method of a replica as one: the same buckets, added up.
fn merged(info: &InfoResponse) -> Option<MethodCalls> {
    let mut methods = info.methods.iter();
    let mut total = methods.next()?.clone();
    for method in methods {
        total.count += method.count;
        total.sum_seconds += method.sum_seconds;
        for (sum, count) in total.bucket_counts.iter_mut().zip(&method.bucket_counts) {
            *sum += count;
        }
    }
    Some(total)
}

fn redis_view(history: &History<UpdateStats>) -> Vec<ReplicaHop> {
    let mut view = ReplicaHop {
        error: history.error.clone(),
        ..ReplicaHop::default()
    };
    if let Some((first, last, seconds)) = history.ends() {
        let calls = last.calls.saturating_sub(first.calls);
        view.calls_per_second = Some(round(calls as f64 / seconds, 10.0));
        // Redis keeps these since it started: not a window, said so.
        view.p50_ms = Some(last.p50.map(ms));
        view.p99_ms = Some(last.p99.map(ms));
        view.latency_since = Some("start".to_owned());
    } else if history.error.is_none() {
        return Vec::new();
    }
    vec![view]
}

fn record(
    hop: &mut BTreeMap<String, History<InfoResponse>>,
    answers: Vec<(String, Result<InfoResponse, String>)>,
    now: Instant,
) {
    // Replicas no longer resolved are forgotten.
    hop.retain(|address, _| answers.iter().any(|(a, _)| a == address));
    for (address, answer) in answers {
        hop.entry(address).or_default().push(answer, now);
    }
}

/// `Replica/Info` of every replica of `backend`, in parallel.
async fn ask_replicas(backend: &Balancer) -> Vec<(String, Result<InfoResponse, String>)> {
    let replicas = backend.replica_channels().await;
    let asks = replicas.into_iter().map(|(address, channel)| async move {
        let mut client = ReplicaStub::new(channel);
        let answer = match tokio::time::timeout(ASK_TIMEOUT, client.info(InfoRequest {})).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(crate::telemetry::error_chain::status_reason(&status)),
            Err(_) => Err(format!("no answer in {} ms", ASK_TIMEOUT.as_millis())),
        };
        (address, answer)
    });
    futures_util::future::join_all(asks).await
}

/// Redis's own numbers, or `None` for the in-process store.
async fn ask_redis(store: &Store) -> Option<Result<UpdateStats, String>> {
    match tokio::time::timeout(ASK_TIMEOUT, store.update_stats()).await {
        Ok(Ok(stats)) => stats.map(Ok),
        Ok(Err(error)) => Some(Err(error.to_string())),
        Err(_) => Some(Err(format!("no answer in {} ms", ASK_TIMEOUT.as_millis()))),
    }
}

fn ms(duration: Duration) -> f64 {
    round(duration.as_secs_f64() * 1e3, 100.0)
}

fn round(value: f64, per_unit: f64) -> f64 {
    (value * per_unit).round() / per_unit
}
