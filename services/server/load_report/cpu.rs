//! The process's CPU use for its load reports: CPU seconds per second over
//! the last second or so, as a share of the CPUs it may use. Read from
//! `/proc` at most once per [`SAMPLE`], by whichever report finds the last
//! sample old (and no other report reading it): a report costs an atomic
//! load, not a file read. Elsewhere than Linux it reads 0, and a client
//! weighs by the application's own utilization alone.

use crate::telemetry::procfs;
use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How often the CPU is sampled: what a load report's CPU covers.
pub const SAMPLE: Duration = Duration::from_secs(1);

/// The process's CPU utilization, sampled.
#[derive(Debug)]
pub struct Cpu {
    /// The last utilization (an `f64`'s bits).
    utilization: AtomicU64,
    /// When and at how many CPU seconds the last sample was taken.
    last: Mutex<(Instant, f64)>,
    cores: f64,
}

impl Default for Cpu {
    fn default() -> Self {
        Self {
            utilization: AtomicU64::new(0f64.to_bits()),
            last: Mutex::new((Instant::now(), own_cpu_seconds())),
            cores: procfs::cores() as f64,
        }
    }
}

impl Cpu {
    /// The utilization over the last sample, sampling anew when it is old.
    pub fn utilization(&self, now: Instant) -> f64 {
        if let Ok(mut last) = self.last.try_lock() {
            let elapsed = now.saturating_duration_since(last.0);
            if elapsed >= SAMPLE {
                let seconds = own_cpu_seconds();
                let used = (seconds - last.1).max(0.0) / elapsed.as_secs_f64() / self.cores;
                self.utilization.store(used.to_bits(), Ordering::Relaxed);
                *last = (now, seconds);
            }
        }
        f64::from_bits(self.utilization.load(Ordering::Relaxed))
    }
}

fn own_cpu_seconds() -> f64 {
    procfs::cpu_seconds(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_second_reads_as_cpu_used() {
        let cpu = Cpu::default();
        assert_eq!(cpu.utilization(Instant::now()), 0.0);
        // Spin for a sample's length on this thread.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < SAMPLE + Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let used = cpu.utilization(Instant::now());
        if cfg!(target_os = "linux") {
            // One thread of however many cores, with generous bounds.
            let one_core = 1.0 / procfs::cores() as f64;
            assert!(used > one_core * 0.3 && used < 1.05, "{used}");
        }
    }
}
