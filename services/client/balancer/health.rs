//! Each replica's `grpc.health.v1` Watch, as a balanced client keeps it: a
//! replica that reports NOT_SERVING gets no new call, so one that is
//! stopping (it says NOT_SERVING before it closes its listener) drains
//! without failing a call; SERVING again, and it is back.
//!
//! One stream per replica, on one of its connections, opened again with
//! backoff when it breaks (the replica restarted, or is gone). A server
//! without the health service (UNIMPLEMENTED) is taken as serving, and not
//! asked again.
//!
//! On NOT_SERVING the client ends its watch itself and asks again a little
//! later: a server drains by waiting for its streams to end, and a watch
//! never ends on its own, so a replica stopping would otherwise wait out its
//! whole drain bound and cut the calls still in flight.

use crate::client::backoff::Backoff;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// What a watch needs: whom it watches, on which connection, and where it
/// says the answer.
pub(super) struct Watch {
    /// `rng`, `hasher`: for the log lines.
    pub backend: &'static str,
    /// The gRPC service asked about (`dockercoins.v1.Rng`).
    pub service: &'static str,
    pub replica: String,
    pub channel: Channel,
    pub serving: Arc<AtomicBool>,
}

/// Watches until aborted (the replica left the backend).
pub(super) async fn watch(watch: Watch) {
    // At most a second between tries: a replica restarted on its address
    // gets calls again soon after it says SERVING.
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let request = HealthCheckRequest {
            service: watch.service.to_owned(),
        };
        match HealthClient::new(watch.channel.clone())
            .watch(request)
            .await
        {
            Ok(updates) => {
                let mut updates = updates.into_inner();
                while let Ok(Some(update)) = updates.message().await {
                    // It answered: the next try comes soon, whatever it said.
                    backoff.reset();
                    let serving = update.status() == ServingStatus::Serving;
                    watch.say(serving);
                    if !serving {
                        // Let it drain: ask again in a moment.
                        break;
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                watch.say(true);
                return;
            }
            // Down or restarting: the calls' own failures say so; its last
            // answer stands until it answers again.
            Err(_) => {}
        }
        backoff.wait().await;
    }
}

impl Watch {
    /// Records what the replica said, and logs a change at debug: every
    /// client says it (ten workers, ten lines), and the replica itself logs
    /// its NOT_SERVING at info.
    fn say(&self, serving: bool) {
        if self.serving.swap(serving, Ordering::Relaxed) == serving {
            return;
        }
        let backend = self.backend;
        if serving {
            tracing::debug!(
                backend,
                replica = %self.replica,
                "{backend} replica {} is SERVING: it gets calls again",
                self.replica
            );
        } else {
            tracing::debug!(
                backend,
                replica = %self.replica,
                "{backend} replica {} is NOT_SERVING: no new calls go there",
                self.replica
            );
        }
    }
}
