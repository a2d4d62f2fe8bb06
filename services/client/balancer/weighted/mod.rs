//! `weighted_round_robin` (gRFC A58): each replica weighted by what it
//! says of its own load in the ORCA report that comes back with every call
//! (gRFC A51, `protocol::load_report`), so a replica that can take three
//! times the calls gets three times the calls, with no guess from
//! latencies or calls in flight.
//!
//! A replica's weight is `qps / (utilization + eps / qps × penalty)`: the
//! calls it serves per unit of its capacity used, lowered by its errors
//! (the application's utilization when it reports one, else its CPU's).
//! Every [`WeightedSettings::update_period`] the balancer takes each
//! replica's weight as A58 says ([`Weight::current`]): none during the
//! blackout after its first report (a replica just started reports a rate
//! still climbing), none once its last report has expired; replicas
//! without a weight get the mean of the others'; with fewer than two
//! weights it is round robin. Picks follow the weights by A58's static
//! stride ([`stride`]).

mod stride;

use super::replica::Replica;
use crate::protocol::load_report::OrcaLoadReport;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock, atomic::AtomicU32},
    time::{Duration, Instant},
};
pub use stride::Stride;

/// A replica's weight counts only this long after its first report
/// unless told otherwise (A58's default).
pub const DEFAULT_BLACKOUT_MS: u64 = 10_000;
/// A replica's weight is dropped when its last report is this old unless
/// told otherwise (A58's default: 3 minutes).
pub const DEFAULT_EXPIRATION_MS: u64 = 180_000;
/// How often the weights are taken anew unless told otherwise (A58's).
pub const DEFAULT_UPDATE_MS: u64 = 1_000;
/// Updating more often is refused (A58's floor).
pub const MIN_UPDATE: Duration = Duration::from_millis(100);
/// How much a replica's errors weigh against it unless told otherwise
/// (A58's default: an error rate of 1 per call counts as one more unit of
/// utilization).
pub const DEFAULT_ERROR_PENALTY: f64 = 1.0;

/// A share of the picks that moves by this factor (either way) between
/// two updates is told on the span of the call that saw it.
const A_LOT: f64 = 1.5;

/// How `weighted_round_robin` weighs its replicas.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightedSettings {
    pub blackout: Duration,
    pub expiration: Duration,
    pub update_period: Duration,
    pub error_penalty: f64,
}

impl Default for WeightedSettings {
    fn default() -> Self {
        Self {
            blackout: Duration::from_millis(DEFAULT_BLACKOUT_MS),
            expiration: Duration::from_millis(DEFAULT_EXPIRATION_MS),
            update_period: Duration::from_millis(DEFAULT_UPDATE_MS),
            error_penalty: DEFAULT_ERROR_PENALTY,
        }
    }
}

/// A58's weight of one report: `None` for an empty one (no rate, or no
/// utilization), which changes nothing.
pub fn weight_of(report: &OrcaLoadReport, error_penalty: f64) -> Option<f64> {
    let utilization = utilization_of(report);
    let qps = report.rps_fractional;
    if utilization <= 0.0 || qps <= 0.0 {
        return None;
    }
    Some(qps / (utilization + report.eps / qps * error_penalty))
}

/// The utilization A58 weighs by: the application's own when it says one,
/// else the CPU's.
pub fn utilization_of(report: &OrcaLoadReport) -> f64 {
    if report.application_utilization > 0.0 {
        report.application_utilization
    } else {
        report.cpu_utilization
    }
}

/// A replica's weight, from its reports.
#[derive(Debug, Default)]
pub struct Weight(Mutex<WeightState>);

#[derive(Debug, Default)]
struct WeightState {
    value: f64,
    /// When the last non-empty report came.
    updated: Option<Instant>,
    /// Since when reports have come without expiring: the blackout's start.
    non_empty_since: Option<Instant>,
    /// The utilization it said last, for people.
    utilization: Option<f64>,
}

impl Weight {
    /// A report from this replica, at `now`.
    pub fn report(&self, report: &OrcaLoadReport, error_penalty: f64, now: Instant) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        state.utilization = Some(utilization_of(report));
        let Some(weight) = weight_of(report, error_penalty) else {
            return;
        };
        state.value = weight;
        state.updated = Some(now);
        state.non_empty_since.get_or_insert(now);
    }

    /// The weight to use at `now`: 0 (none) when its last report expired
    /// (and the blackout starts again with the next) or during the
    /// blackout.
    pub fn current(&self, settings: &WeightedSettings, now: Instant) -> f64 {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = state
            .updated
            .is_some_and(|at| now.saturating_duration_since(at) < settings.expiration);
        if !fresh {
            state.non_empty_since = None;
            return 0.0;
        }
        let blacked_out = state.non_empty_since.is_none_or(|since| {
            !settings.blackout.is_zero() && now.saturating_duration_since(since) < settings.blackout
        });
        if blacked_out { 0.0 } else { state.value }
    }

    /// The utilization its last report said, if any came.
    pub fn utilization(&self) -> Option<f64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).utilization
    }
}

/// A balancer's picks under `weighted_round_robin`: the weights they
/// follow, taken anew every update period (or when the replicas change).
pub struct Schedule {
    counter: AtomicU32,
    table: RwLock<Table>,
}

struct Table {
    /// The replica list the table was made for.
    replicas: Option<Arc<[Arc<Replica>]>>,
    at: Instant,
    /// `None`: round robin (fewer than two weights, or all alike).
    stride: Option<Arc<Stride>>,
    /// Each replica's share of the picks, by label.
    shares: HashMap<String, f64>,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            counter: AtomicU32::new(0),
            table: RwLock::new(Table {
                replicas: None,
                at: Instant::now(),
                stride: None,
                shares: HashMap::new(),
            }),
        }
    }
}

/// What changed at an update, for the caller to measure and tell.
pub struct Update {
    /// Each replica's weight as A58 takes it (0: none yet), by label.
    pub weights: Vec<(String, f64)>,
    /// Replicas whose share of the picks moved a lot: (label, before, now).
    pub moved: Vec<(String, f64, f64)>,
}

impl Schedule {
    /// The picks to follow for `replicas` now (`None`: round robin), and
    /// what changed when this call made the update.
    pub fn stride(
        &self,
        replicas: &Arc<[Arc<Replica>]>,
        settings: &WeightedSettings,
        now: Instant,
    ) -> (Option<Arc<Stride>>, Option<Update>) {
        {
            let table = self.table.read().unwrap_or_else(|p| p.into_inner());
            let same = table
                .replicas
                .as_ref()
                .is_some_and(|r| Arc::ptr_eq(r, replicas));
            if same && now.saturating_duration_since(table.at) < settings.update_period {
                return (table.stride.clone(), None);
            }
        }
        let Ok(mut table) = self.table.try_write() else {
            // Another call is updating: round robin for this one pick.
            return (None, None);
        };
        let weights: Vec<f64> = replicas
            .iter()
            .map(|r| r.weight.current(settings, now))
            .collect();
        let filled = with_mean(&weights);
        let stride = filled.as_deref().and_then(Stride::new).map(Arc::new);
        let even = 1.0 / replicas.len() as f64;
        let shares: HashMap<String, f64> = replicas
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let share = filled.as_deref().map_or(even, |w| share_of(w, i));
                (r.label.clone(), share)
            })
            .collect();
        let moved = shares
            .iter()
            .filter_map(|(label, &now)| {
                let before = *table.shares.get(label)?;
                let ratio = now / before.max(f64::MIN_POSITIVE);
                (!(1.0 / A_LOT..A_LOT).contains(&ratio)).then(|| (label.clone(), before, now))
            })
            .collect();
        let update = Update {
            weights: replicas
                .iter()
                .zip(&weights)
                .map(|(r, &w)| (r.label.clone(), w))
                .collect(),
            moved,
        };
        *table = Table {
            replicas: Some(replicas.clone()),
            at: now,
            stride: stride.clone(),
            shares,
        };
        (stride, Some(update))
    }

    /// The next replica's index under `stride`.
    pub fn next(&self, stride: &Stride) -> usize {
        stride.next(&self.counter)
    }

    /// Each replica's share of the picks at the last update, by label.
    pub fn share(&self, label: &str) -> Option<f64> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.shares.get(label).copied()
    }
}

/// Each replica's share of the picks under `weights` (0: none yet), as a
/// schedule gives them: `None` when fewer than two have one (round robin).
pub fn shares(weights: &[f64]) -> Option<Vec<f64>> {
    let filled = with_mean(weights)?;
    Some((0..filled.len()).map(|i| share_of(&filled, i)).collect())
}

fn share_of(weights: &[f64], i: usize) -> f64 {
    weights[i] / weights.iter().sum::<f64>()
}

/// `weights` with every zero replaced by the mean of the others; `None`
/// when fewer than two are above zero (round robin, as A58 says).
fn with_mean(weights: &[f64]) -> Option<Vec<f64>> {
    let known: Vec<f64> = weights.iter().copied().filter(|&w| w > 0.0).collect();
    if known.len() < 2 {
        return None;
    }
    let mean = known.iter().sum::<f64>() / known.len() as f64;
    Some(
        weights
            .iter()
            .map(|&w| if w > 0.0 { w } else { mean })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(qps: f64, application: f64, cpu: f64, eps: f64) -> OrcaLoadReport {
        OrcaLoadReport {
            rps_fractional: qps,
            application_utilization: application,
            cpu_utilization: cpu,
            eps,
            ..OrcaLoadReport::default()
        }
    }

    #[test]
    fn the_weight_is_calls_per_utilization_lowered_by_errors() {
        assert_eq!(weight_of(&report(300.0, 0.5, 0.9, 0.0), 1.0), Some(600.0));
        // No application utilization: the CPU's.
        assert_eq!(weight_of(&report(100.0, 0.0, 0.25, 0.0), 1.0), Some(400.0));
        // 50 errors a second of 100 calls: half a unit more.
        assert_eq!(weight_of(&report(100.0, 0.5, 0.0, 50.0), 1.0), Some(100.0));
        // Empty reports say nothing.
        assert_eq!(weight_of(&report(0.0, 0.5, 0.0, 0.0), 1.0), None);
        assert_eq!(weight_of(&report(10.0, 0.0, 0.0, 0.0), 1.0), None);
    }

    #[test]
    fn a_weight_waits_out_its_blackout_and_expires() {
        let settings = WeightedSettings::default();
        let weight = Weight::default();
        let t0 = Instant::now();
        assert_eq!(weight.current(&settings, t0), 0.0);
        weight.report(&report(10.0, 1.0, 0.0, 0.0), 1.0, t0);
        assert_eq!(weight.current(&settings, t0 + Duration::from_secs(9)), 0.0);
        let t1 = t0 + Duration::from_secs(11);
        weight.report(&report(20.0, 1.0, 0.0, 0.0), 1.0, t1);
        assert_eq!(weight.current(&settings, t1), 20.0);
        // No report for 3 minutes: gone, and the next one starts a new
        // blackout.
        let t2 = t1 + settings.expiration;
        assert_eq!(weight.current(&settings, t2), 0.0);
        weight.report(&report(20.0, 1.0, 0.0, 0.0), 1.0, t2);
        assert_eq!(weight.current(&settings, t2 + Duration::from_secs(1)), 0.0);
        // No blackout at all when it is 0.
        let none = WeightedSettings {
            blackout: Duration::ZERO,
            ..settings
        };
        assert_eq!(weight.current(&none, t2), 20.0);
    }

    #[test]
    fn replicas_without_a_weight_take_the_mean_and_one_weight_is_round_robin() {
        assert_eq!(with_mean(&[6.0, 0.0, 2.0]), Some(vec![6.0, 4.0, 2.0]));
        assert_eq!(with_mean(&[6.0, 0.0, 0.0]), None);
    }

    #[tokio::test]
    async fn an_update_follows_the_reports_and_says_which_share_moved_a_lot() {
        let replicas: Arc<[Arc<Replica>]> = (0..3)
            .map(|i| {
                let channel =
                    tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
                Arc::new(Replica::new(
                    format!("r{i}"),
                    "127.0.0.1".into(),
                    1,
                    vec![channel],
                ))
            })
            .collect();
        let settings = WeightedSettings {
            blackout: Duration::ZERO,
            ..WeightedSettings::default()
        };
        let schedule = Schedule::default();
        let t0 = Instant::now();
        // No report yet: round robin, nothing to say.
        let (stride, update) = schedule.stride(&replicas, &settings, t0);
        assert!(stride.is_none());
        assert!(update.unwrap().moved.is_empty());
        // Within the update period, the same table.
        assert!(schedule.stride(&replicas, &settings, t0).1.is_none());
        for (replica, qps) in replicas.iter().zip([30.0, 10.0, 10.0]) {
            replica.weight.report(&report(qps, 1.0, 0.0, 0.0), 1.0, t0);
        }
        let t1 = t0 + settings.update_period;
        let (stride, update) = schedule.stride(&replicas, &settings, t1);
        assert!(stride.is_some());
        let update = update.unwrap();
        assert_eq!(update.weights[0], ("r0".to_owned(), 30.0));
        // From a third each to 60%, 20% and 20%: each moved by more than
        // half as much again (or less than two thirds as much).
        assert_eq!(update.moved.len(), 3);
        let r0 = update.moved.iter().find(|(l, ..)| l == "r0").unwrap();
        assert!((r0.1 - 1.0 / 3.0).abs() < 1e-9 && (r0.2 - 0.6).abs() < 1e-9);
        // Weights alike a period later: nothing more to say.
        let t2 = t1 + settings.update_period;
        assert!(
            schedule
                .stride(&replicas, &settings, t2)
                .1
                .unwrap()
                .moved
                .is_empty()
        );
        assert!((schedule.share("r0").unwrap() - 0.6).abs() < 1e-9);
    }
}
