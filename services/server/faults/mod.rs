//! Faults a replica can be told to inject, for the load-balancing and
//! resilience lab: a share of gRPC calls answered with an error at once
//! (`--fail-rate`, `--fail-code`), and a share of requests made slower
//! (`--extra-delay "10%=300ms,1%=2s"`). Off by default; rng and hasher take
//! the same knobs and decide themselves where to apply them.
//!
//! Here: the knobs as typed settings (parsed, checked, shown), and the
//! [`Injector`] that draws them, call by call, and counts what it injected.
//! Not here: where in a service a fault strikes (rng's lane, hasher's work).

pub mod metrics;

use metrics::{CodeLabels, ExtraDelayLabels, FaultMetrics};
use std::{fmt, str::FromStr, sync::Arc, time::Duration};
use tonic::Status;

/// Failure rate unless told otherwise: none.
pub const DEFAULT_FAIL_RATE: &str = "0";

/// Extra delay unless told otherwise: none.
pub const DEFAULT_EXTRA_DELAY: &str = "none";

/// The longest extra delay a bucket may ask for: a fault is a slow replica,
/// not a hung one (clients' timeouts are seconds).
pub const MAX_EXTRA_DELAY: Duration = Duration::from_secs(60);

/// How `--extra-delay` is written, for the error that shows it.
const EXTRA_DELAY_EXAMPLE: &str = "10%=300ms,1%=2s";

/// A setting that cannot be used, said with an example of one that can.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FaultsError {
    #[error("failure rate {0:?} is not a share from 0 to 1 (like 0.2 or 20%)")]
    FailRate(String),
    #[error("failure code {0:?} is neither `unavailable` nor `internal`")]
    FailCode(String),
    #[error(
        "extra delay {text:?}: {reason} (expected SHARE=DELAY[,SHARE=DELAY...] like {EXTRA_DELAY_EXAMPLE}, or none)"
    )]
    ExtraDelay { text: String, reason: String },
}

/// The gRPC code an injected failure answers with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FailCode {
    /// What a replica going away looks like: clients may try another.
    #[default]
    Unavailable,
    /// A bug in the replica: not worth another try.
    Internal,
}

impl FailCode {
    pub fn code(self) -> tonic::Code {
        match self {
            Self::Unavailable => tonic::Code::Unavailable,
            Self::Internal => tonic::Code::Internal,
        }
    }

    /// The code's name, as statuses are named on `/metrics`.
    pub fn name(self) -> &'static str {
        crate::telemetry::code_name(self.code())
    }
}

impl fmt::Display for FailCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        })
    }
}

impl FromStr for FailCode {
    type Err = FaultsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "unavailable" => Ok(Self::Unavailable),
            "internal" => Ok(Self::Internal),
            _ => Err(FaultsError::FailCode(text.to_owned())),
        }
    }
}

/// A share of calls, from 0 to 1: `0.2` or `20%`.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd)]
pub struct Share(f64);

impl Share {
    pub fn new(share: f64) -> Option<Self> {
        (0.0..=1.0).contains(&share).then_some(Self(share))
    }

    pub fn get(self) -> f64 {
        self.0
    }

    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let share = match text.strip_suffix('%') {
            Some(percent) => percent.trim().parse::<f64>().ok()? / 100.0,
            None => text.parse::<f64>().ok()?,
        };
        // `parse` takes `NaN` and `inf`: neither is a share.
        Self::new(share).filter(|s| s.0.is_finite())
    }
}

impl fmt::Display for Share {
    /// As a percentage, without a trailing `.0`: `20%`, `0.5%`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let percent = (self.0 * 1e6).round() / 1e4;
        write!(f, "{percent}%")
    }
}

/// `--fail-rate`: the share of gRPC calls answered with an injected failure.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FailRate(pub Share);

impl FromStr for FailRate {
    type Err = FaultsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Share::parse(text)
            .map(Self)
            .ok_or_else(|| FaultsError::FailRate(text.to_owned()))
    }
}

impl fmt::Display for FailRate {
    /// As it is written by default (`0`), else as a percentage.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.get() == 0.0 {
            f.write_str("0")
        } else {
            self.0.fmt(f)
        }
    }
}

/// One bucket of `--extra-delay`: this share of requests pays this delay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DelayBucket {
    pub share: Share,
    pub delay: Duration,
}

/// `--extra-delay`: buckets whose shares add up to at most 100%; the rest of
/// the requests pay nothing extra.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExtraDelay(Vec<DelayBucket>);

impl ExtraDelay {
    pub fn new(buckets: Vec<DelayBucket>) -> Result<Self, FaultsError> {
        let this = Self(buckets);
        this.check().map_err(|reason| FaultsError::ExtraDelay {
            text: this.to_string(),
            reason,
        })?;
        Ok(this)
    }

    pub fn buckets(&self) -> &[DelayBucket] {
        &self.0
    }

    pub fn is_none(&self) -> bool {
        self.0.is_empty()
    }

    fn check(&self) -> Result<(), String> {
        for bucket in &self.0 {
            if bucket.share.get() <= 0.0 {
                return Err(format!("the share of {} is 0", millis(bucket.delay)));
            }
            if bucket.delay.is_zero() || bucket.delay > MAX_EXTRA_DELAY {
                return Err(format!(
                    "a delay must be more than 0 and at most {}s",
                    MAX_EXTRA_DELAY.as_secs()
                ));
            }
        }
        let total: f64 = self.0.iter().map(|b| b.share.get()).sum();
        // A little room for sums like 10% + 20% + 70% in binary.
        if total > 1.0 + 1e-9 {
            return Err(format!("the shares add up to {}, over 100%", Share(total)));
        }
        Ok(())
    }

    /// The delay for a request whose draw (uniform in 0..1) is `draw`: the
    /// buckets take their shares of 0..1 in order.
    pub fn pick(&self, draw: f64) -> Option<DelayBucket> {
        let mut upto = 0.0;
        for bucket in &self.0 {
            upto += bucket.share.get();
            if draw < upto {
                return Some(*bucket);
            }
        }
        None
    }
}

impl FromStr for ExtraDelay {
    type Err = FaultsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: String| FaultsError::ExtraDelay {
            text: text.to_owned(),
            reason,
        };
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed.eq_ignore_ascii_case("none") {
            return Ok(Self::default());
        }
        let mut buckets = Vec::new();
        for item in trimmed.split(',') {
            let (share, delay) = item
                .split_once('=')
                .ok_or_else(|| error(format!("{:?} has no `=`", item.trim())))?;
            let share = Share::parse(share).ok_or_else(|| {
                error(format!("{:?} is not a share from 0 to 100%", share.trim()))
            })?;
            let delay = parse_delay(delay).ok_or_else(|| {
                error(format!(
                    "{:?} is not a delay (like 300ms or 2s)",
                    delay.trim()
                ))
            })?;
            buckets.push(DelayBucket { share, delay });
        }
        let this = Self(buckets);
        this.check().map_err(error)?;
        Ok(this)
    }
}

impl fmt::Display for ExtraDelay {
    /// As it is written: `10%=300ms,1%=2s`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(DEFAULT_EXTRA_DELAY);
        }
        for (i, bucket) in self.0.iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            write!(f, "{comma}{}={}", bucket.share, millis(bucket.delay))?;
        }
        Ok(())
    }
}

/// `300ms`, `2s`, `1.5s`.
fn parse_delay(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, nanos_per_unit) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e6)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1e9)
    } else {
        return None;
    };
    let value: f64 = number.trim().parse().ok()?;
    // Rounded to the nanosecond, so that `300ms` is 300 ms and not a hair
    // under (0.3 has no exact binary form).
    let nanos = (value * nanos_per_unit).round();
    (nanos.is_finite() && (0.0..1e18).contains(&nanos)).then(|| Duration::from_nanos(nanos as u64))
}

/// A delay as it is written back: milliseconds under a second (`300ms`),
/// seconds above (`2s`, `1.5s`).
fn millis(delay: Duration) -> String {
    if delay >= Duration::from_secs(1) {
        format!("{}s", delay.as_millis() as f64 / 1e3)
    } else {
        format!("{}ms", delay.as_micros() as f64 / 1e3)
    }
}

/// Every fault knob of one replica. The default injects nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Share of gRPC calls answered with `fail_code` at once.
    pub fail_rate: FailRate,
    pub fail_code: FailCode,
    /// Shares of requests (stream messages) that pay an extra delay.
    pub extra_delay: ExtraDelay,
}

impl Faults {
    pub fn is_none(&self) -> bool {
        self.fail_rate.0.get() == 0.0 && self.extra_delay.is_none()
    }

    /// Whether a call whose draw (uniform in 0..1) is `draw` fails.
    pub fn fails(&self, draw: f64) -> bool {
        draw < self.fail_rate.0.get()
    }
}

impl fmt::Display for Faults {
    /// For people: `fails 20% UNAVAILABLE; +300ms for 10%, +2s for 1%`;
    /// empty when nothing is injected.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.fail_rate.0.get() > 0.0 {
            parts.push(format!(
                "fails {} {}",
                self.fail_rate.0,
                self.fail_code.name()
            ));
        }
        if !self.extra_delay.is_none() {
            let buckets: Vec<String> = self
                .extra_delay
                .buckets()
                .iter()
                .map(|b| format!("+{} for {}", millis(b.delay), b.share))
                .collect();
            parts.push(buckets.join(", "));
        }
        f.write_str(&parts.join("; "))
    }
}

/// A replica's faults, drawn call by call and counted.
#[derive(Clone)]
pub struct Injector {
    faults: Arc<Faults>,
    metrics: FaultMetrics,
}

impl fmt::Debug for Injector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Injector({})", self.faults)
    }
}

impl Injector {
    /// Injects `faults`, counted in `metrics`, whose gauges are set to the
    /// knobs now: a scrape shows them even before anything is injected.
    pub fn new(faults: &Faults, metrics: FaultMetrics) -> Self {
        metrics.fail_rate.set(faults.fail_rate.0.get());
        for bucket in faults.extra_delay.buckets() {
            metrics
                .extra_delay_share
                .get_or_create(&delay_labels(bucket.delay))
                .set(bucket.share.get());
        }
        Self {
            faults: Arc::new(faults.clone()),
            metrics,
        }
    }

    /// Injects nothing.
    pub fn none() -> Self {
        Self::new(&Faults::default(), FaultMetrics::unregistered())
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// This call's fate: `Err` with the injected status for a share
    /// `--fail-rate` of the calls.
    pub fn failure(&self) -> Result<(), Status> {
        if self.faults.fail_rate.0.get() == 0.0 || !self.faults.fails(rand::random()) {
            return Ok(());
        }
        let code = self.faults.fail_code;
        if crate::telemetry::metrics::enabled() {
            self.metrics
                .failures
                .get_or_create(&CodeLabels {
                    rpc_response_status_code: code.name(),
                })
                .inc();
        }
        Err(Status::new(
            code.code(),
            format!("injected failure (--fail-rate {})", self.faults.fail_rate),
        ))
    }

    /// The extra delay this request pays: zero for most, a bucket's delay
    /// for that bucket's share.
    pub fn extra_delay(&self) -> Duration {
        if self.faults.extra_delay.is_none() {
            return Duration::ZERO;
        }
        match self.faults.extra_delay.pick(rand::random()) {
            Some(bucket) => {
                if crate::telemetry::metrics::enabled() {
                    self.metrics
                        .delayed
                        .get_or_create(&delay_labels(bucket.delay))
                        .inc();
                }
                bucket.delay
            }
            None => Duration::ZERO,
        }
    }
}

fn delay_labels(delay: Duration) -> ExtraDelayLabels {
    ExtraDelayLabels {
        extra_delay_seconds: delay.as_secs_f64().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn extra_delay_buckets_are_read_and_written_back() {
        let delay: ExtraDelay = "10%=300ms,1%=2s".parse().unwrap();
        assert_eq!(
            delay.buckets(),
            [
                DelayBucket {
                    share: Share(0.1),
                    delay: ms(300)
                },
                DelayBucket {
                    share: Share(0.01),
                    delay: ms(2000)
                },
            ]
        );
        assert_eq!(delay.to_string(), "10%=300ms,1%=2s");
        let spaced: ExtraDelay = " 0.5 = 1.5s , 50%=20ms ".parse().unwrap();
        assert_eq!(spaced.to_string(), "50%=1.5s,50%=20ms");
        for none in ["", "none", "NONE", "  "] {
            assert!(none.parse::<ExtraDelay>().unwrap().is_none(), "{none:?}");
        }
        assert_eq!(ExtraDelay::default().to_string(), "none");
        let all: ExtraDelay = "100%=200ms".parse().unwrap();
        assert_eq!(all.pick(0.0).unwrap().delay, ms(200));
        assert_eq!(all.pick(0.999_999).unwrap().delay, ms(200));
    }

    #[test]
    fn a_draw_falls_in_the_buckets_in_order() {
        let delay: ExtraDelay = "10%=300ms,1%=2s".parse().unwrap();
        assert_eq!(delay.pick(0.05).map(|b| b.delay), Some(ms(300)));
        assert_eq!(delay.pick(0.105).map(|b| b.delay), Some(ms(2000)));
        assert_eq!(delay.pick(0.2), None);
        assert_eq!(ExtraDelay::default().pick(0.0), None);
    }

    #[test]
    fn bad_extra_delays_are_refused_with_an_example() {
        for (text, reason) in [
            ("10%", "has no `=`"),
            ("ten=300ms", "is not a share"),
            ("150%=1s", "is not a share"),
            ("-5%=1s", "is not a share"),
            ("NaN=1s", "is not a share"),
            ("10%=300", "is not a delay"),
            ("10%=soon", "is not a delay"),
            ("10%=-1s", "is not a delay"),
            ("10%=0ms", "more than 0"),
            ("10%=2h", "is not a delay"),
            ("10%=61s", "at most 60s"),
            ("0%=1s", "share of 1s is 0"),
            ("60%=1s,50%=2s", "add up to 110%"),
            ("10%=300ms,", "has no `=`"),
        ] {
            let error = text.parse::<ExtraDelay>().unwrap_err().to_string();
            assert!(error.contains(reason), "{text}: {error}");
            assert!(error.contains(EXTRA_DELAY_EXAMPLE), "{text}: {error}");
            assert!(error.contains(text), "{text}: {error}");
        }
        // Shares that add up to exactly 100% in decimal, if not in binary.
        "10%=1ms,20%=2ms,70%=3ms".parse::<ExtraDelay>().unwrap();
    }

    #[test]
    fn fail_rates_and_codes_are_read_and_bad_ones_refused() {
        assert_eq!("0.2".parse::<FailRate>().unwrap().0, Share(0.2));
        assert_eq!("20%".parse::<FailRate>().unwrap().0, Share(0.2));
        assert_eq!("1".parse::<FailRate>().unwrap().0, Share(1.0));
        assert_eq!("0".parse::<FailRate>().unwrap(), FailRate::default());
        assert_eq!(FailRate::default().to_string(), DEFAULT_FAIL_RATE);
        assert_eq!(FailRate(Share(0.125)).to_string(), "12.5%");
        for bad in ["1.5", "-0.1", "101%", "half", "", "inf", "NaN"] {
            let error = bad.parse::<FailRate>().unwrap_err().to_string();
            assert!(error.contains("like 0.2 or 20%"), "{bad}: {error}");
        }
        assert_eq!("UNAVAILABLE".parse(), Ok(FailCode::Unavailable));
        assert_eq!("internal".parse(), Ok(FailCode::Internal));
        assert!("aborted".parse::<FailCode>().is_err());
    }

    #[test]
    fn the_summary_says_every_knob_and_nothing_when_off() {
        assert_eq!(Faults::default().to_string(), "");
        assert!(Faults::default().is_none());
        let faults = Faults {
            fail_rate: "20%".parse().unwrap(),
            fail_code: FailCode::Unavailable,
            extra_delay: "10%=300ms,1%=2s".parse().unwrap(),
        };
        assert_eq!(
            faults.to_string(),
            "fails 20% UNAVAILABLE; +300ms for 10%, +2s for 1%"
        );
        let slow = Faults {
            extra_delay: "100%=200ms".parse().unwrap(),
            ..Faults::default()
        };
        assert_eq!(slow.to_string(), "+200ms for 100%");
        assert!(faults.fails(0.1) && !faults.fails(0.2));
    }

    #[test]
    fn an_injector_fails_every_call_at_rate_1_and_none_at_0() {
        let metrics = FaultMetrics::unregistered();
        let always = Injector::new(
            &Faults {
                fail_rate: "1".parse().unwrap(),
                fail_code: FailCode::Internal,
                ..Faults::default()
            },
            metrics.clone(),
        );
        for _ in 0..10 {
            assert_eq!(always.failure().unwrap_err().code(), tonic::Code::Internal);
        }
        let internal = CodeLabels {
            rpc_response_status_code: "INTERNAL",
        };
        assert_eq!(metrics.failures.get_or_create(&internal).get(), 10);
        assert_eq!(metrics.fail_rate.get(), 1.0);
        let never = Injector::none();
        for _ in 0..10 {
            never.failure().unwrap();
            assert_eq!(never.extra_delay(), Duration::ZERO);
        }
    }
}
