//! What clients and servers of the mesh agree on beyond the protobuf API:
//! the well-known ports, the sizes of a unit of work, and the header that
//! names the replica that served a call. Both sides import these; neither
//! side's module is imported by the other for them. [`webui`] holds the
//! JSON shapes webui answers with, which `top` reads; [`load_report`] the
//! ORCA load report servers put in their trailers and balancers weigh.

pub mod load_report;
pub mod webui;

/// rng's port, as in the original lab (`httping 127.0.0.1:8001`).
pub const RNG_PORT: u16 = 8001;

/// hasher's port, as in the original lab.
pub const HASHER_PORT: u16 = 8002;

/// webui's port, as in the original lab.
pub const WEBUI_PORT: u16 = 8000;

/// Bytes of randomness per unit of work, as in the original (`GET /32`).
pub const BLOCK_BYTES: usize = 32;

/// Bytes in a SHA-256 digest.
pub const DIGEST_BYTES: usize = 32;

/// The response header in which rng and hasher say which replica served a
/// call (`hostname:port`): clients count calls per replica with it.
pub const SERVED_BY: &str = "x-served-by";
