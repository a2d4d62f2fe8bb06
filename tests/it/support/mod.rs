//! What the tests stand on, by kind, so that a test file reads as a list of
//! behaviours: `servers` (rng, hasher and webui in the test's runtime, their
//! clients), `worker` (a worker in the test's runtime), `redis` (a
//! redis-server of the test's own), `binary` (the `dockercoins` binary as a
//! child process), `prometheus`, `http` (HTTP/1.1 and `/metrics`), `checks`
//! (what answers are held to), `ports`, `tools` (outside programs). The
//! names are re-exported here: a test imports `crate::support::{...}`.

mod binary;
mod checks;
mod http;
mod ports;
mod prometheus;
mod redis;
mod servers;
mod tools;
mod worker;

pub use binary::{Log, sigterm, start_binary, start_binary_logged};
pub use checks::{assert_pushed_back, assert_told_to_retry, sha256_hex};
pub use http::{http1, metric};
pub use ports::restartable_port;
pub use prometheus::{Prometheus, prometheus_built, urlencode};
pub use redis::RedisServer;
pub use servers::{
    Spawned, generate_through, hasher_client, one_lane_no_queue, rng_client, spawn_hasher,
    spawn_rng, spawn_rng_on, spawn_webui, spawn_webui_limited, spawn_webui_on,
    wait_for_a_call_in_rngs_lane, watch_rng_health,
};
pub use tools::{built, have, run_readme_line};
pub use worker::RunningWorker;
