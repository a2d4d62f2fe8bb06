//! Rolling restarts of `up`'s backends: on request (SIGHUP, wired in
//! `main`), every rng replica, then every hasher replica, one at a time,
//! goes NOT_SERVING, serves on for the lame-duck notice, drains, stops, and
//! a new server is started on the same address before the next one goes:
//! what an orchestrator's rolling update does, on a laptop.
//!
//! Each replica runs in a [`slot`]: a task that serves, and on a restart
//! request stops that server and binds the same address again. The
//! [`RestartRequests`] side goes to [`super::run`]; the [`RestartTrigger`]
//! side stays with whoever asks (a signal handler, a test).

use crate::server::ServeError;
use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
};

/// A restart asked for, and where to say it is done (nowhere, for a
/// signal).
type Request = Option<oneshot::Sender<RestartReport>>;

/// Asks a running `up` for rolling restarts.
#[derive(Clone, Debug)]
pub struct RestartTrigger(mpsc::Sender<Request>);

/// Where `up` hears that a rolling restart is asked for.
#[derive(Debug)]
pub struct RestartRequests(mpsc::Receiver<Request>);

/// A trigger and the requests it makes.
pub fn restart_channel() -> (RestartTrigger, RestartRequests) {
    // One restart waiting behind the one under way is enough: a second
    // SIGHUP meanwhile asks for nothing more.
    let (tx, rx) = mpsc::channel(1);
    (RestartTrigger(tx), RestartRequests(rx))
}

impl RestartRequests {
    /// Requests that never come: an `up` that is not restarted.
    pub fn none() -> Self {
        restart_channel().1
    }

    pub(super) async fn next(&mut self) -> Option<Request> {
        self.0.recv().await
    }
}

/// Why a restart asked for did not happen.
#[derive(Debug, thiserror::Error)]
#[error("up is not running (or stopped during the restart)")]
pub struct NotRunning;

impl RestartTrigger {
    /// Asks for a rolling restart, without waiting for it (a signal
    /// handler); `false` when one is already waiting to start.
    pub fn request(&self) -> bool {
        self.0.try_send(None).is_ok()
    }

    /// Asks for a rolling restart and waits until every replica is back.
    pub async fn restart(&self) -> Result<RestartReport, NotRunning> {
        let (done, report) = oneshot::channel();
        self.0.send(Some(done)).await.map_err(|_| NotRunning)?;
        report.await.map_err(|_| NotRunning)
    }
}

/// One replica restarted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restarted {
    /// `rng`, `hasher`.
    pub service: &'static str,
    /// 1 for the first replica.
    pub replica: usize,
    /// Its address, the same before and after.
    pub addr: SocketAddr,
    /// From the stop asked to the new server listening.
    pub took: Duration,
}

/// A rolling restart, done: each replica in the order restarted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestartReport {
    pub restarted: Vec<Restarted>,
}

/// Why a replica could not be served (again).
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot listen on {addr} again after a restart: {source}")]
    Rebind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A replica of `up`, to be restarted: its name, and where to ask.
pub(super) struct Slot {
    pub service: &'static str,
    pub replica: usize,
    pub addr: SocketAddr,
    /// Asks the slot to restart its server; answered once it serves again.
    pub restart: mpsc::Sender<oneshot::Sender<()>>,
}

/// Serves a replica on `listener` with `serve`, restarting it on the same
/// address whenever asked on `restarts`, until `stopped` turns true.
pub(super) async fn slot<F>(
    listener: TcpListener,
    serve: impl Fn(TcpListener, oneshot::Receiver<()>) -> F,
    mut restarts: mpsc::Receiver<oneshot::Sender<()>>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), SlotError>
where
    F: Future<Output = Result<(), ServeError>>,
{
    let addr = listener.local_addr().map_err(ServeError::from)?;
    let mut listener = listener;
    loop {
        let (stop, stop_asked) = oneshot::channel::<()>();
        let server = serve(listener, stop_asked);
        tokio::pin!(server);
        let restart = tokio::select! {
            // Servers run until told to stop: this one failed.
            result = &mut server => return Ok(result?),
            _ = stopped.wait_for(|&stop| stop) => None,
            Some(done) = restarts.recv() => Some(done),
        };
        let _ = stop.send(());
        server.await?;
        let Some(done) = restart else {
            return Ok(());
        };
        // The same port: clients (and `up`'s resolver) know no other.
        listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SlotError::Rebind { addr, source })?;
        let _ = done.send(());
    }
}

/// Runs the rolling restarts asked for on `requests`, over `slots` in order,
/// until no more can be asked.
pub(super) async fn rolling_restarts(mut requests: RestartRequests, slots: Vec<Slot>) {
    while let Some(asker) = requests.next().await {
        let began = Instant::now();
        tracing::info!(replicas = slots.len(), "rolling restart: begun");
        let mut report = RestartReport::default();
        for slot in &slots {
            let of = slots.iter().filter(|s| s.service == slot.service).count();
            let stopping = Instant::now();
            let (done, restarted) = oneshot::channel();
            // A slot gone (up stopping, or its server failed): no restart.
            if slot.restart.send(done).await.is_err() || restarted.await.is_err() {
                tracing::warn!(
                    service = slot.service,
                    replica = slot.replica,
                    "rolling restart: interrupted, {} replica {} of {of} is not serving",
                    slot.service,
                    slot.replica
                );
                return;
            }
            let took = stopping.elapsed();
            tracing::info!(
                service = slot.service,
                replica = slot.replica,
                addr = %slot.addr,
                took_ms = took.as_millis() as u64,
                "rolling restart: {} replica {} of {of} restarted in {} ms",
                slot.service,
                slot.replica,
                took.as_millis()
            );
            report.restarted.push(Restarted {
                service: slot.service,
                replica: slot.replica,
                addr: slot.addr,
                took,
            });
        }
        tracing::info!(
            took_ms = began.elapsed().as_millis() as u64,
            "rolling restart: done, every replica serves again"
        );
        if let Some(asker) = asker {
            let _ = asker.send(report);
        }
    }
}
