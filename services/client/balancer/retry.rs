//! What a backend may send beyond one attempt per call: retries on another
//! replica after UNAVAILABLE, and hedges (a second attempt of a slow unary
//! call), both paid from one retry budget, so that a backend in trouble
//! sees at most a set share of extra load, not a retry storm.
//!
//! The budget is tower's `TpsBudget` (Finagle's): every call deposits, every
//! retry or hedge withdraws, over a 10 s window, with a small reserve per
//! second for a client that makes few calls.

use std::time::Duration;
use tower::retry::budget::{Budget as _, TpsBudget};

/// Retries and hedges, as a share of calls, unless told otherwise.
pub const DEFAULT_BUDGET_PERCENT: u32 = 20;

/// Retries allowed per second whatever the calls (`TpsBudget`'s
/// `min_per_sec`): a client making a call a second may still retry one.
pub const RESERVE_PER_SECOND: u32 = 1;

/// How long a call counts towards the budget.
const WINDOW: Duration = Duration::from_secs(10);

/// How much a backend may send beyond one attempt per call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySettings {
    /// Retries and hedges, as a percentage of calls (over 10 s).
    pub budget_percent: u32,
    /// Retries always allowed per second, whatever the calls.
    pub reserve_per_second: u32,
    /// Send a second attempt of a unary call that has not answered after
    /// this long, to another replica; the first answer wins. `None`: never.
    pub hedge_after: Option<Duration>,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            budget_percent: DEFAULT_BUDGET_PERCENT,
            reserve_per_second: RESERVE_PER_SECOND,
            hedge_after: None,
        }
    }
}

/// A backend's retry budget.
pub(super) struct RetryBudget(TpsBudget);

impl RetryBudget {
    pub fn new(settings: &RetrySettings) -> Self {
        // TpsBudget takes a ratio of at most 1000, and makes a ratio r <= 1
        // one retry per floor(1 / r) calls (see `effective_percent`).
        let percent = settings.budget_percent.min(100_000) as f32 / 100.0;
        Self(TpsBudget::new(WINDOW, settings.reserve_per_second, percent))
    }

    /// The share of calls that may be retried, as the budget applies
    /// `percent`: one retry per N calls, N = floor(100 / percent), up to
    /// 100%; above, as given.
    pub fn effective_percent(percent: u32) -> f64 {
        match percent {
            0 => 0.0,
            1..=100 => 100.0 / f64::from(100 / percent),
            _ => f64::from(percent),
        }
    }

    /// A call was made: it earns its share of a retry.
    pub fn deposit(&self) {
        self.0.deposit();
    }

    /// Whether one more attempt may be sent (and, if so, it is paid for).
    pub fn withdraw(&self) -> bool {
        self.0.withdraw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retries a budget of `percent` (reserve 1 a second) allows after
    /// `calls` calls.
    fn retries_allowed(percent: u32, calls: usize) -> usize {
        let budget = RetryBudget::new(&RetrySettings {
            budget_percent: percent,
            reserve_per_second: 1,
            hedge_after: None,
        });
        for _ in 0..calls {
            budget.deposit();
        }
        (0..1000).take_while(|_| budget.withdraw()).count()
    }

    #[test]
    fn a_budget_of_twenty_percent_allows_one_retry_in_five_calls_plus_the_reserve() {
        // 100 calls: 20 retries, and the reserve of 1 a second over 10 s.
        assert_eq!(retries_allowed(20, 100), 30);
    }

    #[test]
    fn a_percentage_is_applied_as_one_retry_in_n_calls() {
        assert_eq!(RetryBudget::effective_percent(20), 20.0);
        assert!((RetryBudget::effective_percent(30) - 33.33).abs() < 0.01);
        assert_eq!(RetryBudget::effective_percent(60), 100.0);
        assert_eq!(RetryBudget::effective_percent(0), 0.0);
        // What TpsBudget does with 30%: 100 calls, 33 retries (and the
        // reserve of 10).
        assert_eq!(retries_allowed(30, 99), 33 + 10);
    }
}
