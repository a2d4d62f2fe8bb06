//! Outside tools the tests run: whether one is on PATH or built where a
//! script puts it, and a line of the docs run with `sh`.

use std::path::Path;
use tokio::process::Command;

/// Whether `tool` is on PATH. Under CI its absence fails the test instead of
/// skipping it: `.ci/run` installs every tool the tests use.
pub fn have(tool: &str, version_flag: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg(version_flag)
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not on PATH (.ci/run installs it)"
        );
        eprintln!("{tool} is not on PATH: skipping");
    }
    found
}

/// Whether `path`, which `made_by` makes (tests/run.sh runs it), is there.
/// Under CI its absence fails the test instead of skipping it.
pub fn built(path: &Path, made_by: &str) -> bool {
    let found = path.exists();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "no {}: run {made_by} (.ci/run does)",
            path.display()
        );
        eprintln!("no {} ({made_by} makes it): skipping", path.display());
    }
    found
}

/// Runs `command`, a line of the docs pointed at the test's servers, with `sh`;
/// asserts it succeeds (showing `line`, stdout and stderr if not) and returns
/// its stdout.
pub async fn run_readme_line(line: &str, command: &str) -> String {
    let output = Command::new("sh")
        .args(["-c", command])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{line}\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
