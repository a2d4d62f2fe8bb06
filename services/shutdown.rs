//! One shutdown story for every service: SIGTERM (what `docker stop` and
//! Kubernetes send) and Ctrl-C (SIGINT) resolve the same future.

use std::future::Future;

/// Installs the handlers for SIGTERM and SIGINT now, and returns a future that
/// resolves on the first of them.
///
/// The handlers must be in place before the service says it is serving: a
/// signal that arrives earlier would otherwise take its default action and
/// kill the process (exit by signal instead of exit 0).
#[cfg(unix)]
pub fn signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = interrupt.recv() => tracing::info!("Ctrl-C received, shutting down"),
        }
    })
}

/// Sends SIGTERM to process `pid`, as `docker stop` does: how `bench` stops
/// its worker, and the tests their children. A system call, not the `kill`
/// binary, which a minimal machine may not have (no procps).
#[cfg(unix)]
pub fn terminate(pid: u32) -> std::io::Result<()> {
    use rustix::process::{Pid, Signal, kill_process};
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("no such process id: {pid}")))?;
    kill_process(pid, Signal::TERM).map_err(std::io::Error::from)
}

/// Ctrl-C only, where there is no SIGTERM.
#[cfg(not(unix))]
pub fn signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C received, shutting down");
        }
    })
}

/// How long in-flight calls and requests may run after shutdown begins, so
/// that a service exits well within the one second that `docker stop` users
/// expect. Every server here (rng, hasher, webui, edge) drains with it.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(750);
