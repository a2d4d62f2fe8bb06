//! Hostile input. Whatever a client sends (or, to the worker, whatever a
//! backend answers), the result is a right answer or a well-formed refusal:
//! never a 5xx, a panic, a hang, or memory without bound.
//!
//! - Property tests (proptest, bounded case counts) drive every parser of
//!   outside input over real sockets: the legacy HTTP routes, every gRPC
//!   method with arbitrary bytes as its message (and arbitrary framing), and
//!   the worker fed lying backends. The pure parsers have their own property
//!   tests next to them (`rng::properties`, `hasher::properties`,
//!   `worker::mining::properties`).
//! - Each limit of `dockercoins::server::limits` that bounds memory has a test in
//!   `limits`, or, where one already existed, in the test its doc names.
//! - webui serves only its own routes, with its security headers on every
//!   answer.
//!
//! The tests, by behaviour: `http` (the legacy routes and webui's gateway),
//! `grpc` (every gRPC method), `worker` (lying backends), `limits` (memory
//! bounds), `connections` (the connections, calls and request data a server
//! holds), `webui` (its routes and security headers). What they stand on:
//! `cases` (the property-test runner), `mesh` (rng, hasher and a webui on
//! real sockets), `http_wire` and `grpc_wire` (clients that write the bytes
//! themselves), `fake_backend` (an rng and hasher that lie).

mod cases;
mod connections;
mod fake_backend;
mod grpc;
mod grpc_wire;
mod http;
mod http_wire;
mod limits;
mod mesh;
mod webui;
mod worker;
