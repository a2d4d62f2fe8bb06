//! The settings of one replica that differ from the others':
//! `--rng-last-replica delay-ms=300` makes `up`'s last rng replica slow, so
//! that a laptop shows what one bad replica does to a balanced mesh (what
//! `docker-compose.slow-rng.yaml` does in Compose).
//!
//! Here: the `KEY=VALUE,...` text, checked, and applied to a service's
//! config. Not here: which replica gets them (`up` decides: the last).

use crate::{
    hasher::HasherConfig,
    rng::RngConfig,
    server::faults::{ExtraDelay, FailCode, FailRate},
};
use std::{fmt, time::Duration};

/// Which service the settings are for: rng has lanes, hasher none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Rng,
    Hasher,
}

impl Kind {
    fn keys(self) -> &'static [&'static str] {
        match self {
            Self::Rng => &["delay-ms", "lanes", "fail-rate", "fail-code", "extra-delay"],
            Self::Hasher => &["delay-ms", "fail-rate", "fail-code", "extra-delay"],
        }
    }

    fn example(self) -> &'static str {
        match self {
            Self::Rng => {
                "delay-ms=300,lanes=1,fail-rate=0.2,fail-code=internal,extra-delay=10%=300ms,1%=2s"
            }
            Self::Hasher => "delay-ms=300,fail-rate=0.2,fail-code=internal,extra-delay=10%=300ms",
        }
    }
}

/// A `--*-last-replica` value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{reason} (keys: {keys}; e.g. {example})")]
pub struct ReplicaSettingsError {
    reason: String,
    keys: String,
    example: &'static str,
}

/// Settings of one replica, each `None` when it is the others'.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaSettings {
    pub delay: Option<Duration>,
    /// `Some(None)`: unlimited lanes (`lanes=0`).
    pub lanes: Option<Option<usize>>,
    pub fail_rate: Option<FailRate>,
    pub fail_code: Option<FailCode>,
    pub extra_delay: Option<ExtraDelay>,
}

impl ReplicaSettings {
    /// `--rng-last-replica`'s value.
    pub fn parse_rng(text: &str) -> Result<Self, ReplicaSettingsError> {
        Self::parse(text, Kind::Rng)
    }

    /// `--hasher-last-replica`'s value.
    pub fn parse_hasher(text: &str) -> Result<Self, ReplicaSettingsError> {
        Self::parse(text, Kind::Hasher)
    }

    /// `KEY=VALUE,...`. An extra delay has commas of its own
    /// (`extra-delay=10%=300ms,1%=2s`): an item that starts with no key
    /// goes on the value of the `extra-delay` before it.
    pub fn parse(text: &str, kind: Kind) -> Result<Self, ReplicaSettingsError> {
        let error = |reason: String| ReplicaSettingsError {
            reason,
            keys: kind.keys().join(", "),
            example: kind.example(),
        };
        let mut pairs: Vec<(String, String)> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let key = key.trim().to_ascii_lowercase();
            if kind.keys().contains(&key.as_str()) {
                if pairs.iter().any(|(k, _)| *k == key) {
                    return Err(error(format!("{key} is given twice")));
                }
                pairs.push((key, value.trim().to_owned()));
            } else if let Some((previous, value)) = pairs.last_mut()
                && previous == "extra-delay"
            {
                value.push(',');
                value.push_str(item);
            } else {
                return Err(error(format!("unknown key {key:?} in {text:?}")));
            }
        }
        let mut this = Self::default();
        for (key, value) in pairs {
            let bad = |reason: String| error(format!("{key}={value:?}: {reason}"));
            match key.as_str() {
                "delay-ms" => {
                    let ms = value
                        .parse()
                        .map_err(|_| bad("not a whole number of milliseconds".into()))?;
                    this.delay = Some(Duration::from_millis(ms));
                }
                "lanes" => {
                    let lanes: usize = value
                        .parse()
                        .map_err(|_| bad("not a whole number (0 = unlimited)".into()))?;
                    this.lanes = Some((lanes > 0).then_some(lanes));
                }
                "fail-rate" => {
                    this.fail_rate = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "fail-code" => {
                    this.fail_code = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "extra-delay" => {
                    this.extra_delay = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                _ => unreachable!("keys are checked above"),
            }
        }
        Ok(this)
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `config`, with these settings where they are given.
    pub fn rng(&self, config: &RngConfig) -> RngConfig {
        let mut config = config.clone();
        if let Some(delay) = self.delay {
            config.delay = delay;
        }
        if let Some(lanes) = self.lanes {
            config.lanes = lanes;
        }
        self.faults(&mut config.server.faults);
        config
    }

    /// `config`, with these settings where they are given.
    pub fn hasher(&self, config: &HasherConfig) -> HasherConfig {
        let mut config = config.clone();
        if let Some(delay) = self.delay {
            config.delay = delay;
        }
        self.faults(&mut config.server.faults);
        config
    }

    fn faults(&self, faults: &mut crate::server::faults::Faults) {
        if let Some(rate) = self.fail_rate {
            faults.fail_rate = rate;
        }
        if let Some(code) = self.fail_code {
            faults.fail_code = code;
        }
        if let Some(delay) = &self.extra_delay {
            faults.extra_delay = delay.clone();
        }
    }
}

impl fmt::Display for ReplicaSettings {
    /// As it is written: `delay-ms=300,fail-rate=20%`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        if let Some(delay) = self.delay {
            items.push(format!("delay-ms={}", delay.as_millis()));
        }
        if let Some(lanes) = self.lanes {
            items.push(format!("lanes={}", lanes.unwrap_or(0)));
        }
        if let Some(rate) = self.fail_rate {
            items.push(format!("fail-rate={rate}"));
        }
        if let Some(code) = self.fail_code {
            items.push(format!("fail-code={code}"));
        }
        if let Some(delay) = &self.extra_delay {
            items.push(format!("extra-delay={delay}"));
        }
        f.write_str(&items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_read_and_applied() {
        let settings = ReplicaSettings::parse_rng(
            "delay-ms=300, lanes=0,fail-rate=20%,fail-code=internal,extra-delay=10%=300ms,1%=2s",
        )
        .unwrap();
        assert_eq!(
            settings.to_string(),
            "delay-ms=300,lanes=0,fail-rate=20%,fail-code=internal,extra-delay=10%=300ms,1%=2s"
        );
        let rng = settings.rng(&RngConfig::classroom());
        assert_eq!(rng.delay, Duration::from_millis(300));
        assert_eq!(rng.lanes, None);
        assert_eq!(rng.server.faults.fail_code, FailCode::Internal);
        assert_eq!(rng.server.faults.extra_delay.buckets().len(), 2);
        // The extra delay may come first, its commas and all.
        let first =
            ReplicaSettings::parse_hasher("extra-delay=10%=300ms,1%=2s,delay-ms=5").unwrap();
        let hasher = first.hasher(&HasherConfig::classroom());
        assert_eq!(hasher.delay, Duration::from_millis(5));
        assert_eq!(
            hasher.server.faults.extra_delay.to_string(),
            "10%=300ms,1%=2s"
        );
        // Nothing given: the others' settings.
        let none = ReplicaSettings::parse_rng("").unwrap();
        assert!(none.is_empty());
        assert_eq!(
            none.rng(&RngConfig::classroom()).delay,
            RngConfig::classroom().delay
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_clearly() {
        for (kind, text, reason) in [
            (Kind::Rng, "delay=300", "unknown key \"delay\""),
            (Kind::Hasher, "lanes=2", "unknown key \"lanes\""),
            (Kind::Rng, "300", "unknown key \"300\""),
            (
                Kind::Rng,
                "delay-ms=soon",
                "not a whole number of milliseconds",
            ),
            (Kind::Rng, "lanes=-1", "not a whole number"),
            (Kind::Rng, "fail-rate=2", "not a share from 0 to 1"),
            (
                Kind::Hasher,
                "fail-code=aborted",
                "neither `unavailable` nor `internal`",
            ),
            (Kind::Rng, "extra-delay=10%", "has no `=`"),
            (Kind::Rng, "delay-ms=1,delay-ms=2", "given twice"),
        ] {
            let error = ReplicaSettings::parse(text, kind).unwrap_err().to_string();
            assert!(error.contains(reason), "{text}: {error}");
            assert!(error.contains("e.g. delay-ms=300"), "{text}: {error}");
        }
    }
}
