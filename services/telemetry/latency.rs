//! The buckets every duration is counted in; the durations of the calls a
//! replica served, kept where the replica can read them back (Prometheus's
//! histograms can only be encoded), for `Replica/Info`; and what a reader
//! makes of two of those answers: the calls per second and the latency
//! quantiles between them, as Prometheus's `histogram_quantile` would
//! compute them from the same buckets.

use crate::pb::MethodCalls;
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Bucket bounds of every duration histogram, in seconds: the R10 series (ten
/// per decade: 1, 1.25, 1.6, 2, 2.5, 3.15, 4, 5, 6.3, 8) from 10 µs to 10 s.
/// A quantile read from them is within about 12% of the true one, from a
/// turbo hasher's tens of microseconds to a classroom rng's queue of a second.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    const R10: [u32; 10] = [100, 125, 160, 200, 250, 315, 400, 500, 630, 800];
    // 10 µs = 100 / 10^7: each bound is an integer over a power of ten, so it
    // prints as written (1.25e-5, not 1.2500000000000001e-5).
    (0..6)
        .flat_map(|decade| {
            R10.iter()
                .map(move |&m| f64::from(m) / 10f64.powi(7 - decade))
        })
        .chain(std::iter::once(10.0))
}

/// How long the slowest traced call is remembered: a reader polling every
/// second or so sees the slowest of the last 5 to 10 seconds.
pub const SLOWEST_WINDOW: Duration = Duration::from_secs(5);

/// Something kept per method, by full method name: found under a read lock
/// on every call, made under the write lock on the method's first. A server
/// serves a handful of methods, so the map stops growing at once.
pub struct ByMethod<V>(RwLock<BTreeMap<String, Arc<V>>>);

impl<V> Default for ByMethod<V> {
    fn default() -> Self {
        Self(RwLock::default())
    }
}

impl<V> ByMethod<V> {
    /// `method`'s, if it has been made.
    pub fn get(&self, method: &str) -> Option<Arc<V>> {
        self.read().get(method).cloned()
    }

    /// `method`'s, made by `make` on its first call.
    pub fn get_or_make(&self, method: &str, make: impl FnOnce(&str) -> V) -> Arc<V> {
        self.get(method).unwrap_or_else(|| {
            let mut methods = self.0.write().unwrap_or_else(|p| p.into_inner());
            methods
                .entry(method.to_owned())
                .or_insert_with_key(|method| Arc::new(make(method)))
                .clone()
        })
    }

    /// Every method's, by name.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<V>>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every method's durations, by full method name.
#[derive(Default)]
pub struct Latencies {
    methods: ByMethod<MethodLatency>,
}

impl Latencies {
    /// One call of `method` that took `elapsed`, traced as `trace_id` if so.
    pub fn observe(&self, method: &str, elapsed: Duration, trace_id: Option<&str>) {
        self.method(method).observe(elapsed, trace_id);
    }

    /// Where `method`'s calls are counted, made on its first call.
    pub fn method(&self, method: &str) -> Arc<MethodLatency> {
        self.methods
            .get_or_make(method, |_| MethodLatency::default())
    }

    /// What `Replica/Info` says of the methods whose name starts with one of
    /// `services` (their service's full name).
    pub fn report(&self, services: &[&str]) -> Vec<MethodCalls> {
        let methods = self.methods.read();
        methods
            .iter()
            .filter(|(method, _)| {
                let service = method.split('/').next().unwrap_or_default();
                services.contains(&service)
            })
            .map(|(method, latency)| latency.report(method))
            .collect()
    }
}

/// One method's calls: counts per bucket, their sum, the slowest traced.
pub struct MethodLatency {
    bounds: Vec<f64>,
    /// Per bucket (not cumulative); the last is above every bound.
    buckets: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    slowest: Mutex<Slowest>,
}

/// Bucket bounds of the durations kept for `Replica/Info`, in seconds: 40
/// per decade (each 5.9% above the last) from 10 µs to 10 s, so that a
/// quantile read from them is within one such step of the true one: a
/// projector shows rng's 810 ms as about 818 ms, where
/// [`duration_buckets`]' 25% steps would show the middle of 800-1000. Prometheus gets the coarser ones: a
/// series per bucket costs it more than a counter here does.
pub fn fine_buckets() -> impl Iterator<Item = f64> {
    (0..=240).map(|i| 1e-5 * 10f64.powf(f64::from(i) / 40.0))
}

impl Default for MethodLatency {
    fn default() -> Self {
        let bounds: Vec<f64> = fine_buckets().collect();
        Self {
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            bounds,
            sum_nanos: AtomicU64::new(0),
            slowest: Mutex::new(Slowest::new()),
        }
    }
}

impl MethodLatency {
    pub fn observe(&self, elapsed: Duration, trace_id: Option<&str>) {
        let seconds = elapsed.as_secs_f64();
        let bucket = self.bounds.partition_point(|&le| le < seconds);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        if let Some(trace_id) = trace_id {
            self.slowest
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .offer(elapsed, trace_id);
        }
    }

    fn report(&self, method: &str) -> MethodCalls {
        let mut total = 0;
        let bucket_counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|count| {
                total += count.load(Ordering::Relaxed);
                total
            })
            .collect();
        let mut bucket_bounds_seconds = self.bounds.clone();
        bucket_bounds_seconds.push(f64::INFINITY);
        let slowest = self
            .slowest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .slowest();
        MethodCalls {
            method: method.to_owned(),
            count: total,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            bucket_bounds_seconds,
            bucket_counts,
            slowest_seconds: slowest.as_ref().map_or(0.0, |(d, _)| d.as_secs_f64()),
            slowest_trace_id: slowest.map(|(_, id)| id).unwrap_or_default(),
        }
    }
}

/// The slowest traced call of the current window and of the one before.
struct Slowest {
    window_start: Instant,
    current: Option<(Duration, String)>,
    previous: Option<(Duration, String)>,
}

impl Slowest {
    fn new() -> Self {
        Self {
            window_start: Instant::now(),
            current: None,
            previous: None,
        }
    }

    fn roll(&mut self) {
        let age = self.window_start.elapsed();
        if age >= SLOWEST_WINDOW {
            // Two windows old: nothing of the previous one is recent.
            self.previous = if age >= 2 * SLOWEST_WINDOW {
                None
            } else {
                self.current.take()
            };
            self.current = None;
            self.window_start = Instant::now();
        }
    }

    fn offer(&mut self, elapsed: Duration, trace_id: &str) {
        self.roll();
        if self.current.as_ref().is_none_or(|(d, _)| elapsed > *d) {
            self.current = Some((elapsed, trace_id.to_owned()));
        }
    }

    fn slowest(&mut self) -> Option<(Duration, String)> {
        self.roll();
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .max_by_key(|(d, _)| *d)
            .cloned()
    }
}

/// A method's calls between two answers of the same replica.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub calls_per_second: f64,
    /// `None` when no call ended in the window.
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

impl Window {
    /// The calls between `before` and `after` (the same method, `seconds`
    /// apart). A replica that restarted in between (counts went down) is
    /// read from zero.
    pub fn between(before: Option<&MethodCalls>, after: &MethodCalls, seconds: f64) -> Self {
        let restarted = before.is_some_and(|b| b.count > after.count);
        let before = before.filter(|_| !restarted);
        let count_before = |i: usize| before.and_then(|b| b.bucket_counts.get(i)).copied();
        let cumulative: Vec<(f64, u64)> = after
            .bucket_bounds_seconds
            .iter()
            .zip(&after.bucket_counts)
            .enumerate()
            .map(|(i, (&le, &count))| (le, count - count_before(i).unwrap_or(0).min(count)))
            .collect();
        let calls = after.count - before.map_or(0, |b| b.count);
        Self {
            calls_per_second: if seconds > 0.0 {
                calls as f64 / seconds
            } else {
                0.0
            },
            p50: quantile(0.5, &cumulative),
            p99: quantile(0.99, &cumulative),
        }
    }
}

/// The `q` quantile of cumulative buckets `(upper bound, count)`, linear
/// within its bucket (Prometheus's `histogram_quantile`); in the +Inf
/// bucket, the highest finite bound.
pub fn quantile(q: f64, cumulative: &[(f64, u64)]) -> Option<Duration> {
    let total = cumulative.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let i = cumulative
        .iter()
        .position(|&(_, count)| count as f64 >= rank)?;
    let (upper, count) = cumulative[i];
    let (lower, below) = if i == 0 { (0.0, 0) } else { cumulative[i - 1] };
    let seconds = if upper.is_infinite() {
        lower
    } else if count == below {
        upper
    } else {
        lower + (upper - lower) * (rank - below as f64) / (count - below) as f64
    };
    Some(Duration::from_secs_f64(seconds))
}

/// The nearest-rank `q` quantile of `sorted` samples: the smallest sample
/// with at least `q` of them at or below it (no interpolation: a quantile of
/// measured calls is a call that happened). `None` when there are none.
pub fn nearest_rank(sorted: &[Duration], q: f64) -> Option<Duration> {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn buckets_run_from_ten_microseconds_to_ten_seconds_as_written() {
        let buckets: Vec<f64> = duration_buckets().collect();
        assert_eq!(buckets.len(), 61);
        assert_eq!(buckets[0], 1e-5);
        assert_eq!(buckets[1], 1.25e-5);
        assert_eq!(buckets[47], 0.5);
        assert_eq!(buckets[60], 10.0);
        assert!(buckets.windows(2).all(|pair| pair[0] < pair[1]));
        // Each bound prints as its shortest decimal form.
        assert_eq!(buckets[33].to_string(), "0.02");
        assert_eq!(buckets[38].to_string(), "0.063");
    }

    #[test]
    fn nearest_rank_is_a_sample_that_happened() {
        let sorted: Vec<Duration> = (1..=1000).map(ms).collect();
        assert_eq!(nearest_rank(&sorted, 0.5), Some(ms(500)));
        assert_eq!(nearest_rank(&sorted, 0.99), Some(ms(990)));
        assert_eq!(nearest_rank(&sorted, 0.999), Some(ms(999)));
        assert_eq!(nearest_rank(&sorted[..1], 0.99), Some(ms(1)));
        assert_eq!(nearest_rank(&sorted[..3], 0.0), Some(ms(1)));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }

    #[test]
    fn quantiles_come_out_within_a_bucket_of_the_truth() {
        let latencies = Latencies::default();
        for _ in 0..90 {
            latencies.observe("dockercoins.v1.Rng/Generate", ms(700), Some("a"));
        }
        for _ in 0..10 {
            latencies.observe("dockercoins.v1.Rng/Generate", ms(2000), Some("slow"));
        }
        latencies.observe("grpc.health.v1.Health/Check", ms(1), None);
        let report = latencies.report(&["dockercoins.v1.Rng"]);
        assert_eq!(report.len(), 1, "only the service asked for");
        let window = Window::between(None, &report[0], 10.0);
        assert_eq!(window.calls_per_second, 10.0);
        // Within one bucket (5.9%) of the truth.
        let p50 = window.p50.unwrap().as_secs_f64();
        assert!((0.66..=0.742).contains(&p50), "{p50}");
        let p99 = window.p99.unwrap().as_secs_f64();
        assert!((1.88..=2.12).contains(&p99), "{p99}");
        assert_eq!(report[0].slowest_trace_id, "slow");
        assert_eq!(report[0].slowest_seconds, 2.0);
    }

    #[test]
    fn a_window_counts_only_what_happened_in_it() {
        let latencies = Latencies::default();
        latencies.observe("m/x", ms(5000), None);
        let before = latencies.report(&["m"]).remove(0);
        for _ in 0..20 {
            latencies.observe("m/x", Duration::from_micros(50), None);
        }
        let after = latencies.report(&["m"]).remove(0);
        let window = Window::between(Some(&before), &after, 2.0);
        assert_eq!(window.calls_per_second, 10.0);
        assert!(
            window.p99.unwrap() < Duration::from_micros(64),
            "{window:?}"
        );
        // A replica that restarted: read from zero, not negative.
        let restarted = Window::between(Some(&after), &before, 1.0);
        assert_eq!(restarted.calls_per_second, 1.0);
        // Nothing new: no quantile to make up.
        assert_eq!(Window::between(Some(&after), &after, 1.0).p50, None);
    }
}
