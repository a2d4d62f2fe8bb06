//! Outlier ejection, after gRFC A50's failure-percentage rule: every
//! `interval`, a replica that took at least `min_calls` calls and failed at
//! least `failure_percent` of them is set aside for `ejection` times how
//! many times it was ejected before (up to ten times `ejection`), while at
//! most `max_ejected_percent` of the replicas are out, and only when there
//! are at least two (someone must take its calls).
//!
//! A repeat offender's multiplier goes down by one at each interval it
//! spends back in service, as in A50, so a replica that mended is soon
//! treated as new.
//!
//! The sweep runs inline, at the first call that ends after the interval:
//! no task per backend, and the ejection lands on that call's span as an
//! event. A replica's ejection ends by itself when its time is up (checked
//! at each pick), sweep or no sweep.
//!
//! A connection that fails is another matter: that replica is set aside at
//! once for [`CONNECTION_EJECTION`] (see `mod.rs`), because a call to it
//! cannot succeed and would cost a retry each time.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How long a replica whose connection failed gets no calls.
pub const CONNECTION_EJECTION: Duration = Duration::from_secs(2);

/// The failure-percentage rule's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierSettings {
    /// How often the rule is applied (and the window it counts calls in).
    pub interval: Duration,
    /// A replica failing this share of its calls or more is ejected; 0 turns
    /// the rule off.
    pub failure_percent: u32,
    /// Calls a replica must have taken in the interval to be judged.
    pub min_calls: u64,
    /// How long a first ejection lasts; repeat offenders get a multiple of
    /// it, at most ten times.
    pub ejection: Duration,
    /// The most replicas ejected at once, as a share of all.
    pub max_ejected_percent: u32,
}

/// How often the rule runs unless told otherwise: long enough that a
/// classroom worker (a few calls a second) gives each replica a few calls.
pub const DEFAULT_INTERVAL_MS: u64 = 5000;
/// A50's default is 85%; half the calls failing is already an outlier here.
pub const DEFAULT_FAILURE_PERCENT: u32 = 50;
pub const DEFAULT_MIN_CALLS: u64 = 5;
pub const DEFAULT_EJECTION_MS: u64 = 10_000;
/// Half the replicas: of three, one may be ejected.
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;

/// Repeat offenders' ejections grow up to this multiple of the first (A50:
/// `max_ejection_time` defaults to ten times `base_ejection_time`).
const MAX_MULTIPLIER: u32 = 10;

/// Fewer replicas than this, nobody is ejected by the rule.
const MIN_REPLICAS: usize = 2;

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(DEFAULT_INTERVAL_MS),
            failure_percent: DEFAULT_FAILURE_PERCENT,
            min_calls: DEFAULT_MIN_CALLS,
            ejection: Duration::from_millis(DEFAULT_EJECTION_MS),
            max_ejected_percent: DEFAULT_MAX_EJECTED_PERCENT,
        }
    }
}

/// Whether a call that ended with `code` counts against its replica: the
/// replica's failures, not the caller's mistakes.
pub fn is_replica_failure(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unavailable
            | Code::Internal
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::DataLoss
            | Code::Unimplemented
    )
}

/// A replica's calls and failures since the last sweep, and its ejection.
#[derive(Default)]
pub struct Record {
    calls: AtomicU64,
    failures: AtomicU64,
    ejection: Mutex<Ejection>,
}

#[derive(Default)]
struct Ejection {
    /// No calls before this instant.
    until: Option<Instant>,
    /// Ejections by the rule not yet forgiven: the next lasts this + 1 times
    /// the base.
    multiplier: u32,
}

impl Record {
    /// Notes a call's outcome.
    pub fn note(&self, code: tonic::Code) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if is_replica_failure(code) {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejection().until.is_some_and(|until| until > now)
    }

    /// Sets the replica aside for `time` from `now` (its connection failed,
    /// or it refused a call and asked for a pause).
    pub fn eject_for(&self, now: Instant, time: Duration) {
        let mut ejection = self.ejection();
        let until = now + time;
        ejection.until = Some(ejection.until.map_or(until, |old| old.max(until)));
    }

    fn ejection(&self) -> std::sync::MutexGuard<'_, Ejection> {
        self.ejection.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The interval's counts, zeroed for the next one.
    fn take(&self) -> (u64, u64) {
        (
            self.calls.swap(0, Ordering::Relaxed),
            self.failures.swap(0, Ordering::Relaxed),
        )
    }
}

/// A replica the rule ejected, for the log line, the span event and the
/// metric.
#[derive(Debug, PartialEq, Eq)]
pub struct Ejected {
    pub replica: usize,
    pub calls: u64,
    pub failures: u64,
    pub time: Duration,
}

/// When a backend's rule last ran.
pub struct Sweeper {
    last: Mutex<Instant>,
}

impl Default for Sweeper {
    fn default() -> Self {
        Self {
            last: Mutex::new(Instant::now()),
        }
    }
}

impl Sweeper {
    /// Whether the rule is due (an interval has passed since it last ran,
    /// and no other call is running it now); if so, it is now its turn.
    pub fn is_due(&self, settings: &OutlierSettings, now: Instant) -> bool {
        let Ok(mut last) = self.last.try_lock() else {
            return false;
        };
        if now.saturating_duration_since(*last) < settings.interval {
            return false;
        }
        *last = now;
        true
    }
}

/// One application of the rule (A50's algorithm, failure percentage only).
pub fn sweep(settings: &OutlierSettings, records: &[&Record], now: Instant) -> Vec<Ejected> {
    let ejected = eject_outliers(settings, records, now);
    // Then, as in A50, forgive: a replica back in service for a whole
    // interval loses one of its past ejections; one whose time is up
    // comes back (and is forgiven from the next interval on).
    for record in records {
        let mut ejection = record.ejection();
        match ejection.until {
            Some(until) if until > now => {}
            Some(_) => ejection.until = None,
            None => ejection.multiplier = ejection.multiplier.saturating_sub(1),
        }
    }
    ejected
}

/// A50's failure-percentage step: the replicas ejected now.
fn eject_outliers(settings: &OutlierSettings, records: &[&Record], now: Instant) -> Vec<Ejected> {
    let counts: Vec<(u64, u64)> = records.iter().map(|r| r.take()).collect();
    let mut ejected = Vec::new();
    if settings.failure_percent == 0 || records.len() < MIN_REPLICAS {
        return ejected;
    }
    let mut ejected_now = records.iter().filter(|r| r.is_ejected(now)).count();
    for (replica, (record, &(calls, failures))) in records.iter().zip(&counts).enumerate() {
        if calls < settings.min_calls.max(1)
            || failures * 100 < u64::from(settings.failure_percent) * calls
        {
            continue;
        }
        // Stricter than A50, which checks the share before ejecting: the
        // share after it stays within the maximum (one of three at 50%).
        if (ejected_now + 1) * 100 > settings.max_ejected_percent as usize * records.len() {
            break;
        }
        let mut ejection = record.ejection();
        if ejection.until.is_some_and(|until| until > now) {
            continue;
        }
        ejection.multiplier = (ejection.multiplier + 1).min(MAX_MULTIPLIER);
        let time = settings.ejection * ejection.multiplier;
        ejection.until = Some(now + time);
        ejected_now += 1;
        ejected.push(Ejected {
            replica,
            calls,
            failures,
            time,
        });
    }
    ejected
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OutlierSettings {
        OutlierSettings {
            interval: Duration::from_secs(1),
            failure_percent: 50,
            min_calls: 5,
            ejection: Duration::from_secs(10),
            max_ejected_percent: 50,
        }
    }

    fn calls(record: &Record, ok: u64, failed: u64) {
        for _ in 0..ok {
            record.note(tonic::Code::Ok);
        }
        for _ in 0..failed {
            record.note(tonic::Code::Unavailable);
        }
    }

    #[test]
    fn a_failing_replica_is_ejected_for_longer_each_time_and_forgiven_slowly() {
        let records: [Record; 3] = Default::default();
        let all: Vec<&Record> = records.iter().collect();
        let t0 = Instant::now();
        calls(&records[0], 10, 0);
        calls(&records[1], 0, 10);
        // Too few calls to judge, however bad.
        calls(&records[2], 0, 4);
        let ejected = sweep(&settings(), &all, t0);
        assert_eq!(
            ejected,
            vec![Ejected {
                replica: 1,
                calls: 10,
                failures: 10,
                time: Duration::from_secs(10)
            }]
        );
        assert!(records[1].is_ejected(t0 + Duration::from_secs(9)));
        assert!(!records[1].is_ejected(t0 + Duration::from_secs(10)));

        // Back, failing again at once: twice as long.
        let t1 = t0 + Duration::from_secs(11);
        sweep(&settings(), &all, t1);
        calls(&records[1], 2, 8);
        let again = sweep(&settings(), &all, t1 + Duration::from_secs(1));
        assert_eq!(again[0].time, Duration::from_secs(20));

        // Ten clean intervals later, the multiplier is back to zero.
        let mut t = t1 + Duration::from_secs(22);
        for _ in 0..10 {
            sweep(&settings(), &all, t);
            t += Duration::from_secs(1);
        }
        calls(&records[1], 0, 10);
        assert_eq!(sweep(&settings(), &all, t)[0].time, Duration::from_secs(10));
    }

    #[test]
    fn at_most_the_maximum_share_is_ejected_and_never_a_lone_replica() {
        let records: [Record; 3] = Default::default();
        let all: Vec<&Record> = records.iter().collect();
        for record in &records {
            calls(record, 0, 10);
        }
        // 50% of three: one ejected makes 33%, a second would make 67%.
        let ejected = sweep(&settings(), &all, Instant::now());
        assert_eq!(ejected.len(), 1, "{ejected:?}");

        let lone = Record::default();
        calls(&lone, 0, 10);
        assert!(sweep(&settings(), &[&lone], Instant::now()).is_empty());
    }

    #[test]
    fn the_callers_mistakes_do_not_count_against_a_replica() {
        assert!(!is_replica_failure(tonic::Code::InvalidArgument));
        assert!(!is_replica_failure(tonic::Code::Cancelled));
        assert!(is_replica_failure(tonic::Code::Unavailable));
        assert!(is_replica_failure(tonic::Code::Internal));
    }
}
