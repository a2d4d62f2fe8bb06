//! `dockercoins bench` smoke test: about a second in each mode, a report that
//! is well formed, and the cross-check exact. Numbers are not judged here:
//! timings belong in BENCHMARKS.md, not in tests.

use serde_json::Value;

fn bench(mode: &str) -> Value {
    bench_with(mode, &[])
}

fn bench_with(mode: &str, more: &[&str]) -> Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dockercoins"))
        .args([
            "bench",
            "--mode",
            mode,
            "--seconds",
            "1",
            "--warmup-ms",
            "300",
        ])
        .args(["--probes", "50", "--batch", "1024", "--json"])
        .args(more)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "bench --mode {mode} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("bench --json prints JSON")
}

#[test]
fn bench_reports_both_modes_and_redis_matches_the_workers_count() {
    for mode in ["unary", "batch"] {
        let report = bench(mode);
        assert_eq!(report["mode"], mode);
        assert!(
            report["hashes_per_second"].as_f64().unwrap() > 0.0,
            "{report}"
        );
        let counted = report["counted_hashes"].as_u64().unwrap();
        assert!(counted > 0, "{report}");
        assert_eq!(report["redis_hashes"].as_u64(), Some(counted), "{report}");
        assert_eq!(report["flushed_hashes"].as_u64(), Some(counted), "{report}");
        assert_eq!(report["cross_check"], true);
        for hop in ["rng", "hasher"] {
            let hop = &report["hops"][hop];
            assert!(hop["p50_us"].as_f64().unwrap() > 0.0, "{report}");
            assert!(hop["p99_us"].as_f64().unwrap() >= hop["p50_us"].as_f64().unwrap());
            assert!(hop["saturated"]["calls"].as_u64().unwrap() > 0, "{report}");
        }
        for process in ["rng", "hasher", "worker", "redis"] {
            assert!(
                report["processes"][process]["peak_rss_kb"]
                    .as_u64()
                    .unwrap()
                    > 0,
                "{report}"
            );
        }
        assert!(report["cpu_seconds_per_million_hashes"].as_f64().unwrap() > 0.0);
        references_and_ratios(&report);
    }
}

/// The floor and the limit are measured in the same run, and the ratios
/// are what they say they are.
fn references_and_ratios(report: &Value) {
    let number = |field: &str| {
        report[field]
            .as_f64()
            .unwrap_or_else(|| panic!("no {field} in {report}"))
    };
    let floor = number("floor_rpc_per_second");
    let sha256 = number("sha256_per_second_one_core");
    let cores = report["cores"].as_u64().expect("cores");
    let hashes = number("hashes_per_second");
    assert!(floor > 0.0 && sha256 > 0.0 && cores >= 1, "{report}");
    assert!(number("floor_p50_us") > 0.0, "{report}");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    assert!(close(number("floor_ratio"), hashes / floor), "{report}");
    assert!(
        close(number("sha256_ratio"), hashes / (sha256 * cores as f64)),
        "{report}"
    );
    let slower_p50 = ["rng", "hasher"]
        .map(|hop| report["hops"][hop]["p50_us"].as_f64().unwrap())
        .into_iter()
        .fold(0.0, f64::max);
    assert!(
        close(
            number("light_p50_over_floor"),
            slower_p50 / number("floor_p50_us")
        ),
        "{report}"
    );
}

/// Open loop at a light rate: the mesh keeps up, so the rate achieved is
/// near the one asked; the percentiles are in order; and Redis holds what
/// the worker counted. A second at 200 units/s: about 200 units, so the
/// bounds are wide (a Poisson count's spread is 7% here, a debug build
/// is slow to start).
#[test]
fn bench_rate_keeps_a_light_rate_with_ordered_percentiles() {
    let report = bench_with("unary", &["--rate", "200"]);
    let step = &report["step"];
    let number = |field: &str| {
        step[field]
            .as_f64()
            .unwrap_or_else(|| panic!("no {field} in {report}"))
    };
    assert_eq!(number("asked_per_second"), 200.0);
    let achieved = number("achieved_per_second");
    assert!((130.0..270.0).contains(&achieved), "{report}");
    let (p50, p99, p999, max) = (
        number("p50_ms"),
        number("p99_ms"),
        number("p999_ms"),
        number("max_ms"),
    );
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
        "{report}"
    );
    assert_eq!(step["failed"], 0, "{report}");
    assert!(step["units"].as_u64().unwrap() > 0, "{report}");
    assert!(step["counted_hashes"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(step["redis_hashes"], step["counted_hashes"], "{report}");
    assert_eq!(step["cross_check"], true, "{report}");
}

/// A rate (or a sweep's target) that is not one is refused with the
/// reason, by the worker and by bench, before anything starts.
#[test]
fn a_rate_that_is_not_one_is_refused() {
    for args in [
        &["worker", "--rate", "0"][..],
        &["worker", "--rate", "fast"],
        &["bench", "--rate=-5"],
        &["bench", "--sweep", "--p99-target-ms", "0"],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_dockercoins"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains("not a number above 0"),
            "{args:?}: {stderr}"
        );
    }
}
