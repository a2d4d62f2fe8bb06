//! `dockercoins doctor`, as a trainer runs it on a classroom machine: a port
//! the stack needs taken, and no Docker at all, each said with its fix and
//! failing the exit code.

use std::process::Output;

async fn doctor(args: &[&str]) -> (Output, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dockercoins"))
        .arg("doctor")
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout)
}

#[tokio::test]
async fn a_taken_port_and_no_docker_are_said_with_their_fix_and_fail() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let free = {
        let probe = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let ports = format!("{port},{free}");
    let (output, report) = doctor(&["--ports", &ports, "--docker", "/nonexistent/docker"]).await;
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&format!("FAIL  port {port} is taken by another program")),
        "{report}"
    );
    assert!(
        report.contains(&format!("sport = :{port}")),
        "the fix names the port: {report}"
    );
    assert!(
        !report.contains(&format!("port {free} is taken")),
        "{report}"
    );
    assert!(report.contains("FAIL  Docker is not installed"), "{report}");
    assert!(
        report.contains("cargo run --release -- up"),
        "the way without Docker: {report}"
    );
    assert!(
        report.contains("core(s)"),
        "the machine is described: {report}"
    );
    assert!(report.contains("2 problem(s) to fix"), "{report}");
    drop(taken);

    // Freed, the port is fine; Docker is still missing.
    let (output, report) = doctor(&[
        "--ports",
        &port.to_string(),
        "--docker",
        "/nonexistent/docker",
    ])
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        report.contains(&format!("ok    ports {port} are free")),
        "{report}"
    );
}
