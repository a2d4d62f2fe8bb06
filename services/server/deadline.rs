//! A call's deadline, as its client sent it: the `grpc-timeout` header
//! (gRPC over HTTP/2: up to 8 digits and a unit, `H`, `M`, `S`, `m`, `u`,
//! `n`), turned into the instant after which the answer is of no use.
//!
//! Why the services read it themselves: tonic's server already runs each
//! call under a timer from that header, but when it fires it answers
//! CANCELLED and drops the handler wherever it was. A service that knows its
//! own cost can do better: refuse, with DEADLINE_EXCEEDED, a request it can no
//! longer serve in time, before paying for it, and say so in its metrics and
//! traces. What to do with a deadline (rng's lane, hasher's work) lives with
//! each service; only the reading and the arithmetic live here.

use crate::telemetry::metrics::{Counter, Registry, enabled};
use prometheus_client::{encoding::EncodeLabelSet, metrics::family::Family};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Status;

/// The header a gRPC client states its timeout in.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// How long before its deadline a call must be done: an answer cut this fine
/// must still reach the client before its timer (and tonic's own, at the
/// deadline) fires. Five tokio timer ticks: enough for the reply to leave
/// this process, far below any delay a service pays.
pub const MARGIN: Duration = Duration::from_millis(5);

/// The most digits the gRPC spec allows in a timeout (which also keeps the
/// arithmetic far from overflow).
const MAX_DIGITS: usize = 8;

/// The duration in a `grpc-timeout` value, or `None` if it is not one.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The request's deadline, measured from now (when the handler sees it);
/// `None` when it states none, or one that cannot be read (as tonic does,
/// a bad value means no deadline rather than a refused call).
pub fn of<T>(request: &tonic::Request<T>) -> Option<Instant> {
    let value = request.metadata().get(GRPC_TIMEOUT)?.to_str().ok()?;
    Some(Instant::now() + parse_grpc_timeout(value)?)
}

/// The last instant at which work costing `cost` can start and still end
/// [`MARGIN`] before `deadline`; `None` when that instant has already
/// passed (or never existed).
pub fn latest_start(deadline: Instant, cost: Duration) -> Option<Instant> {
    let latest = deadline.checked_sub(cost + MARGIN)?;
    (Instant::now() <= latest).then_some(latest)
}

/// Pays a request's cost, `delay` and an injected `extra` delay, before
/// `deadline` if it can. Only `extra` can make it overrun (the caller has
/// checked that `delay` fits: a slow replica does not know it is slow);
/// then it is paid until [`MARGIN`] before the deadline and given up on, so
/// the request is answered DEADLINE_EXCEEDED in time rather than cut off by
/// tonic. rng pays it holding a lane, hasher holding its share of the work
/// budget: each says for itself what an overrun costs.
pub async fn pay(
    delay: Duration,
    extra: Duration,
    deadline: Option<Instant>,
) -> Result<(), Overran> {
    let started = Instant::now();
    let done = started + delay + extra;
    if let Some(cut) = deadline.and_then(|d| d.checked_sub(MARGIN))
        && !extra.is_zero()
        && done > cut
    {
        tokio::time::sleep_until(cut).await;
        return Err(Overran { started });
    }
    if done > started {
        tokio::time::sleep_until(done).await;
    }
    Ok(())
}

/// Work [`pay`] gave up on: an injected extra delay would have ended it
/// after its deadline. The caller turns it into its own [`Expired`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overran {
    /// When the work began.
    pub started: Instant,
}

/// A request given up on because its deadline would pass first.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{reason} after {} ms", waited.as_millis())]
pub struct Expired {
    /// Why, and where: `deadline passed in the lane`...
    pub reason: &'static str,
    /// How long it had been there.
    pub waited: Duration,
}

impl From<Expired> for Status {
    fn from(expired: Expired) -> Self {
        Status::deadline_exceeded(expired.to_string())
    }
}

/// Where a request was given up on for its deadline.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `waiting`: before its work began, never served (rng: in its lane's
    /// queue or at its turn; hasher: before its work). `working`: cut off
    /// during its work, which an injected extra delay made too long.
    pub stage: &'static str,
}

/// Requests a service gave up on because their deadline would pass first
/// (`<service>_deadline_expired_total`).
#[derive(Clone)]
pub struct DeadlineMetrics {
    expired: Family<StageLabels, Counter>,
}

impl std::fmt::Debug for DeadlineMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadlineMetrics")
    }
}

impl DeadlineMetrics {
    pub fn unregistered() -> Self {
        Self {
            expired: Family::default(),
        }
    }

    /// `service` (`rng`, `hasher`) prefixes the name.
    pub fn register(registry: &mut Registry, service: &str) -> Self {
        let this = Self::unregistered();
        registry.register(
            format!("{service}_deadline_expired"),
            "Requests given up on, with DEADLINE_EXCEEDED, because their deadline would pass first",
            this.expired.clone(),
        );
        this
    }

    pub fn expired(&self, stage: &'static str) {
        if enabled() {
            self.expired.get_or_create(&StageLabels { stage }).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_of_the_spec_is_read() {
        let cases = [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("3S", Duration::from_secs(3)),
            ("250m", Duration::from_millis(250)),
            ("30000000u", Duration::from_secs(30)),
            ("7n", Duration::from_nanos(7)),
            ("0m", Duration::ZERO),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_grpc_timeout(text), Some(expected), "{text}");
        }
    }

    #[test]
    fn anything_else_is_no_deadline() {
        for text in [
            "",
            "m",
            "100",
            "100x",
            "100ms",
            "-1S",
            "+1S",
            "1.5S",
            " 1S",
            "1S ",
            "123456789m",
            "1h",
            "1s",
            "１S",
            "1é",
        ] {
            assert_eq!(parse_grpc_timeout(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_request_states_its_deadline_through_tonic() {
        let mut request = tonic::Request::new(());
        assert_eq!(of(&request), None);
        request.set_timeout(Duration::from_millis(300));
        let deadline = of(&request).unwrap();
        let left = deadline - Instant::now();
        assert!(left <= Duration::from_millis(300) && left > Duration::from_millis(200));
        request
            .metadata_mut()
            .insert(GRPC_TIMEOUT, "soon".parse().unwrap());
        assert_eq!(of(&request), None);
    }

    #[tokio::test(start_paused = true)]
    async fn work_starts_only_if_it_can_end_a_margin_before_the_deadline() {
        let now = Instant::now();
        let deadline = now + Duration::from_millis(100);
        assert_eq!(
            latest_start(deadline, Duration::from_millis(50)),
            Some(deadline - Duration::from_millis(50) - MARGIN)
        );
        assert_eq!(latest_start(deadline, Duration::from_millis(95)), Some(now));
        assert_eq!(latest_start(deadline, Duration::from_millis(96)), None);
        assert_eq!(latest_start(now, Duration::ZERO), None);
    }

    #[tokio::test(start_paused = true)]
    async fn only_an_extra_delay_that_would_overrun_is_cut_a_margin_before() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(100);
        let delay = Duration::from_millis(50);
        assert_eq!(pay(delay, Duration::ZERO, Some(deadline)).await, Ok(()));
        assert_eq!(Instant::now(), start + delay);
        let started = Instant::now();
        let overran = pay(Duration::ZERO, Duration::from_millis(100), Some(deadline)).await;
        assert_eq!(overran, Err(Overran { started }));
        assert_eq!(Instant::now(), deadline - MARGIN);
        // No deadline: the whole cost is paid.
        let started = Instant::now();
        assert_eq!(pay(delay, delay, None).await, Ok(()));
        assert_eq!(Instant::now(), started + 2 * delay);
    }
}
