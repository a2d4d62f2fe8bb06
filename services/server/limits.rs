//! Every limit on the size of outside input, in one place, so docs/limits.md, the
//! proto comments and the tests can be checked against the same numbers.
//!
//! Nothing a client sends may make a server allocate more than a few of these.

/// Largest block, in bytes: rng's `size`, a hasher block, the legacy routes'
/// `GET /<n>` and `POST /` body.
pub const MAX_BLOCK_BYTES: usize = 1024 * 1024;

/// Most blocks one `Rng/GenerateStream` call may ask for.
pub const MAX_STREAM_BLOCKS: usize = 1024 * 1024;

/// Most bytes one `Rng/GenerateStream` call may ask for (`size * count`).
pub const MAX_STREAM_BYTES: usize = 256 * 1024 * 1024;

/// rng packs blocks into stream messages of about this many bytes (at least
/// one block per message): big enough that a million blocks a second is a few
/// hundred messages, small enough to stay far below the message limit.
pub const STREAM_MESSAGE_BYTES: usize = 64 * 1024;

/// Most blocks in one `Hasher/HashStream` request message. Bounds the reply
/// (32 bytes of digest per block) whatever the block size.
pub const MAX_BATCH_BLOCKS: usize = 16 * 1024;

/// Largest encoded gRPC message either way: one maximal block plus framing.
pub const MAX_GRPC_MESSAGE_BYTES: usize = MAX_BLOCK_BYTES + 4 * 1024;

/// Concurrent HTTP/2 streams per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Largest HTTP/2 header list a server accepts.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Largest request message to a service whose requests are a few numbers
/// (rng's `GenerateRequest`, `GenerateStreamRequest`).
pub const MAX_SMALL_REQUEST_BYTES: usize = 4 * 1024;

/// Time a client has to send a request's headers over HTTP/1.1, on every
/// server (hyper's default; tonic sets it for rng and hasher, webui sets it
/// itself). Past it the connection is closed: a client sending half a
/// request cannot keep it open.
pub const HTTP1_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
