//! dockercoins' black-box tests, all in one binary (one link, one
//! `support` module they all stand on).
//! Servers are spawned in-process on port 0; nothing sleeps to wait for
//! readiness (a bound listener already accepts).

mod balance;
mod bench;
mod browser;
mod cli;
mod compose;
mod deadlines;
mod docs;
mod doctor;
mod edge;
mod faults;
mod hasher;
mod hostile;
mod injection;
mod jaeger;
mod k8s;
mod layout;
mod metrics;
mod metrics_doc;
mod orca;
mod pty;
mod resilience;
mod rng;
mod server;
mod support;
mod tls;
mod top;
mod tracing;
mod up;
mod webui;
mod worker;
