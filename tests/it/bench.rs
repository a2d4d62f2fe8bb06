//! `dockercoins bench` smoke test: about a second in each mode, a report that
//! is well formed, and the cross-check exact. Numbers are not judged here:
//! timings belong in BENCHMARKS.md, not in tests.

use serde_json::Value;

fn bench(mode: &str) -> Value {
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
    }
}
