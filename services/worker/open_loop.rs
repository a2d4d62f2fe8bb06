//! Open loop: units of work started at a steady random (Poisson) rate, each
//! timed from the moment it was due, rather than loops that start the next
//! unit when the last one ends.
//!
//! A closed loop slows down with the mesh, so a stalled server hides its
//! queue: the units that would have waited are never started, and never
//! timed (coordinated omission). Here the arrivals do not wait for the
//! answers: when the mesh falls behind, units queue, and their time in the
//! queue is in their latency. This is how wrk2 and the traced-microservice
//! benchmarks measure tail latency at a given load.
//!
//! The pacer is a thread of its own: tokio's timer ticks in milliseconds,
//! too coarse for gaps of a few microseconds at thousands of units a second,
//! and every unit is timed from its due time, so a late tick would show as
//! latency the mesh did not cause.

use super::mining::Miner;
use serde::{Deserialize, Serialize};
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{sync::Semaphore, task::JoinSet};

/// How fast units arrive, and which of them are measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pace {
    /// Units of work per second, on average.
    pub rate: f64,
    /// Units due before this long after the start are not measured: the
    /// connections open and the servers warm up meanwhile.
    pub warmup: Duration,
}

/// The latency of units due after the warm-up, read when the worker stops.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenLoopReport {
    /// The rate asked for, units per second.
    pub asked_per_second: f64,
    /// Units due after the warm-up that finished, per second of measuring.
    pub achieved_per_second: f64,
    /// Units due after the warm-up that finished.
    pub units: u64,
    /// Units due after the warm-up that failed, or were refused because the
    /// counts waiting for Redis were at their bound.
    pub failed: u64,
    /// Units due after the warm-up and not done when the worker stopped:
    /// still running, or never started because the mesh was behind (not
    /// timed).
    pub unfinished: u64,
    /// Latency from due time to the unit counted, in microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl OpenLoopReport {
    /// One line, before the worker's last: what `bench --rate` reads back.
    pub(super) fn log(&self) {
        tracing::info!(
            { crate::telemetry::fields::OPEN_LOOP } = %serde_json::to_string(self).unwrap_or_default(),
            "open loop: {:.0} units/s asked, {:.0} done; p50 {} us, p99 {} us, p99.9 {} us, max {} us",
            self.asked_per_second,
            self.achieved_per_second,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
        );
    }
}

/// Slowest latency the histogram holds exactly (three significant digits);
/// anything slower is recorded as this.
const HIGHEST_US: u64 = 60_000_000;

/// How long a stop waits for the units already started; those still
/// running then are reported as unfinished (and not timed). The final flush
/// to Redis comes after, with its own time.
const DRAIN: Duration = Duration::from_secs(1);

/// The books of the measured units.
struct Measured {
    from: Instant,
    latency: Mutex<hdrhistogram::Histogram<u64>>,
    failed: AtomicU64,
}

impl Measured {
    fn record(&self, due: Instant, ok: bool) {
        if due < self.from {
            return;
        }
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let micros = (due.elapsed().as_micros() as u64).clamp(1, HIGHEST_US);
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        latency.saturating_record(micros);
    }
}

/// Starts units at `pace` (at most `in_flight` at once; a unit due while
/// that many run waits, its wait timed) until `stop` resolves, then lets the
/// running ones finish for at most [`DRAIN`].
pub(super) async fn drive(
    miner: Arc<Miner>,
    pace: Pace,
    in_flight: usize,
    stop: impl Future<Output = ()>,
) -> OpenLoopReport {
    let started = Instant::now();
    let measured = Arc::new(Measured {
        from: started + pace.warmup,
        latency: Mutex::new(
            hdrhistogram::Histogram::new_with_bounds(1, HIGHEST_US, 3)
                .expect("valid histogram bounds"),
        ),
        failed: AtomicU64::new(0),
    });
    let (due_tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel();
    // Not joined: it ends at its next arrival once the receiver is gone,
    // which at a slow rate may be seconds away.
    std::thread::Builder::new()
        .name("open-loop pacer".into())
        .spawn(move || pacer(pace.rate, started, due_tx))
        .expect("a thread for the pacer");
    let places = Arc::new(Semaphore::new(in_flight.max(1)));
    let mut units = JoinSet::new();
    let arrivals = async {
        while let Some(due) = due_rx.recv().await {
            let place = places.clone().acquire_owned().await.expect("never closed");
            let (miner, measured) = (miner.clone(), measured.clone());
            units.spawn(async move {
                let ok = miner.open_loop_unit().await;
                measured.record(due, ok);
                drop(place);
            });
            while units.try_join_next().is_some() {}
        }
    };
    tokio::select! {
        () = arrivals => {}
        () = stop => {}
    }
    let stopped = Instant::now();
    // Units that were due and never started (the mesh was behind) are not
    // dropped silently: they count as unfinished, as those cut short do.
    let mut never_started = 0;
    while let Ok(due) = due_rx.try_recv() {
        never_started += u64::from(due >= measured.from);
    }
    // Closing the channel stops the pacer at its next arrival.
    drop(due_rx);
    let _ = tokio::time::timeout(DRAIN, async { while units.join_next().await.is_some() {} }).await;
    let unfinished = units.len() as u64 + never_started;
    units.abort_all();
    report(&measured, pace.rate, stopped, unfinished)
}

/// Sends each unit's due time, at exponential gaps of mean `1 / rate`, as it
/// comes; stops when the receiver is gone.
fn pacer(rate: f64, start: Instant, due: tokio::sync::mpsc::UnboundedSender<Instant>) {
    use rand::Rng as _;
    let mut random = rand::rng();
    let mut next = start;
    loop {
        // Inverse transform: -ln(1 - u) / rate, with u in [0, 1).
        let u: f64 = random.random();
        next += Duration::from_secs_f64(-(1.0 - u).ln() / rate);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        if due.send(next).is_err() {
            return;
        }
    }
}

fn report(measured: &Measured, rate: f64, stopped: Instant, unfinished: u64) -> OpenLoopReport {
    let latency = measured.latency.lock().unwrap_or_else(|p| p.into_inner());
    let seconds = stopped
        .saturating_duration_since(measured.from)
        .as_secs_f64();
    OpenLoopReport {
        asked_per_second: rate,
        achieved_per_second: if seconds > 0.0 {
            latency.len() as f64 / seconds
        } else {
            0.0
        },
        units: latency.len(),
        failed: measured.failed.load(Ordering::Relaxed),
        unfinished,
        p50_us: latency.value_at_quantile(0.50),
        p99_us: latency.value_at_quantile(0.99),
        p999_us: latency.value_at_quantile(0.999),
        max_us: latency.max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_keeps_its_rate_and_its_gaps_vary() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let thread = std::thread::spawn(move || pacer(20_000.0, start, tx));
        let due: Vec<Instant> = (0..4000).map(|_| rx.blocking_recv().unwrap()).collect();
        drop(rx);
        thread.join().unwrap();
        // 4000 arrivals at 20,000/s: 0.2 s of due times, give or take the
        // randomness (the standard deviation is 1.6% here).
        let span = due[3999].duration_since(start).as_secs_f64();
        assert!((0.17..0.23).contains(&span), "{span} s");
        let gaps: Vec<f64> = due
            .windows(2)
            .map(|pair| pair[1].duration_since(pair[0]).as_secs_f64())
            .collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        // Exponential gaps: as many below a tenth of the mean as about 10%.
        let short = gaps.iter().filter(|&&gap| gap < mean / 10.0).count();
        assert!((200..600).contains(&short), "{short} short gaps");
    }
}
