//! gRPC at the frame level: a call whose request body is any bytes, sent
//! through a tonic Channel and read back to its status; the protobuf and
//! frame encoders and the strategies that write hostile bodies with them;
//! and the methods of rng and hasher with their message limits.

use super::http_wire::percent_decode;
use axum::http::{self, HeaderMap, StatusCode};
use bytes::Bytes;
use dockercoins::server::limits::{
    MAX_BLOCK_BYTES, MAX_GRPC_MESSAGE_BYTES, MAX_SMALL_REQUEST_BYTES,
};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;

/// How a gRPC call ended, as read from the wire.
#[derive(Debug)]
pub(super) struct GrpcOutcome {
    pub(super) code: tonic::Code,
    pub(super) message: String,
}

/// Reads more than this of a streamed reply, and the call is going fine:
/// stop there (a valid `GenerateStream` may ask for 256 MiB).
const READ_CAP: usize = 2 * 1024 * 1024;

fn grpc_status(headers: &HeaderMap) -> Option<GrpcOutcome> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(|m| String::from_utf8_lossy(&percent_decode(m)).into_owned())
        .unwrap_or_default();
    Some(GrpcOutcome {
        code: tonic::Code::from(code),
        message,
    })
}

/// POSTs `body` as the whole request body of the gRPC method `path`. An
/// answer that is not a gRPC status (a reset stream, a dropped connection,
/// an HTTP error) is an `Err`: the server did not answer as a gRPC server.
pub(super) async fn raw_grpc(
    channel: &tonic::transport::Channel,
    path: &str,
    body: Bytes,
) -> Result<GrpcOutcome, String> {
    use tower::{Service, ServiceExt};
    let request = http::Request::post(format!("http://dockercoins{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(body)))
        .unwrap();
    let mut channel = channel.clone();
    let response = channel
        .ready()
        .await
        .map_err(|e| format!("channel: {e}"))?
        .call(request)
        .await
        .map_err(|e| format!("no response: {e}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!("HTTP {}", response.status()));
    }
    // Trailers-only: the status comes with the headers.
    if let Some(outcome) = grpc_status(response.headers()) {
        return Ok(outcome);
    }
    let mut body = response.into_body();
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reply body: {e}"))?;
        match frame.into_data() {
            Ok(data) => {
                read += data.len();
                if read > READ_CAP {
                    return Ok(GrpcOutcome {
                        code: tonic::Code::Ok,
                        message: format!("still streaming after {read} bytes"),
                    });
                }
            }
            Err(frame) => {
                let trailers = frame.into_trailers().map_err(|_| "an unknown frame")?;
                return grpc_status(&trailers).ok_or_else(|| "trailers without grpc-status".into());
            }
        }
    }
    Err("the reply ended without a gRPC status".into())
}

/// A gRPC message frame: compressed flag, declared length, payload.
fn frame(flag: u8, declared: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![flag];
    frame.extend_from_slice(&declared.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

pub(super) fn message(payload: &[u8]) -> Vec<u8> {
    frame(0, payload.len() as u32, payload)
}

pub(super) fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A protobuf field as a hostile client may write it: a known or unknown
/// field number with any wire type (valid or not) and any value.
#[derive(Clone, Debug)]
enum Field {
    Varint(u32, u64),
    Bytes(u32, Vec<u8>),
    /// A length-delimited field that claims more bytes than follow.
    ShortBytes(u32, u64, Vec<u8>),
    Fixed32(u32, u32),
    Fixed64(u32, u64),
    /// Group markers (3, 4) and the wire types that do not exist (6, 7).
    Odd(u32, u8),
}

/// A varint as a client may set it: small, near the limits, or anything.
fn field_value() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        0u64..=64,
        0u64..=70_000,
        prop::sample::select(vec![
            0,
            1,
            32,
            MAX_BLOCK_BYTES as u64,
            MAX_BLOCK_BYTES as u64 + 1,
            u32::MAX as u64,
            u32::MAX as u64 + 33,
            u64::MAX,
        ]),
        any::<u64>(),
    ]
}

/// Any field: any number, any wire type, any value.
fn field() -> impl Strategy<Value = Field> {
    let number = prop_oneof![4 => 1u32..=3, 1 => 4u32..=20, 1 => any::<u32>()];
    let value = field_value();
    prop_oneof![
        4 => (number.clone(), value.clone()).prop_map(|(n, v)| Field::Varint(n, v)),
        2 => (number.clone(), prop::collection::vec(any::<u8>(), 0..=96))
            .prop_map(|(n, b)| Field::Bytes(n, b)),
        1 => (number.clone(), value, prop::collection::vec(any::<u8>(), 0..=8))
            .prop_map(|(n, claim, b)| Field::ShortBytes(n, claim.max(b.len() as u64 + 1), b)),
        1 => (number.clone(), any::<u32>()).prop_map(|(n, v)| Field::Fixed32(n, v)),
        1 => (number.clone(), any::<u64>()).prop_map(|(n, v)| Field::Fixed64(n, v)),
        1 => (number, prop::sample::select(vec![3u8, 4, 6, 7])).prop_map(|(n, w)| Field::Odd(n, w)),
    ]
}

fn encode(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    let tag =
        |n: u32, wire: u8, out: &mut Vec<u8>| varint((u64::from(n) << 3) | u64::from(wire), out);
    for field in fields {
        match field {
            Field::Varint(n, v) => {
                tag(*n, 0, &mut out);
                varint(*v, &mut out);
            }
            Field::Bytes(n, b) => {
                tag(*n, 2, &mut out);
                varint(b.len() as u64, &mut out);
                out.extend_from_slice(b);
            }
            Field::ShortBytes(n, claim, b) => {
                tag(*n, 2, &mut out);
                varint(*claim, &mut out);
                out.extend_from_slice(b);
            }
            Field::Fixed32(n, v) => {
                tag(*n, 5, &mut out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Field::Fixed64(n, v) => {
                tag(*n, 1, &mut out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Field::Odd(n, wire) => tag(*n, *wire, &mut out),
        }
    }
    out
}

/// A whole request body for a gRPC call.
#[derive(Clone, Debug)]
pub(super) enum GrpcBody {
    /// One well-framed message of anything: protobuf-like fields or bytes.
    Message(Vec<u8>),
    /// Several well-framed messages back to back.
    Messages(Vec<Vec<u8>>),
    /// Bytes with no framing at all.
    Raw(Vec<u8>),
    /// A message whose compressed flag is set (no grpc-encoding was
    /// announced) or is not a flag at all.
    Flagged(u8, Vec<u8>),
    /// A frame that declares more bytes than the body holds.
    Truncated(u32, Vec<u8>),
    /// A frame that declares more than the method's message limit, followed
    /// by a few bytes only: it must be refused on its header.
    Oversize(u32),
    /// No message at all.
    Empty,
}

impl GrpcBody {
    pub(super) fn bytes(&self, limit: usize) -> Bytes {
        let bytes = match self {
            Self::Message(payload) => message(payload),
            Self::Messages(payloads) => payloads.iter().flat_map(|p| message(p)).collect(),
            Self::Raw(raw) => raw.clone(),
            Self::Flagged(flag, payload) => frame(*flag, payload.len() as u32, payload),
            Self::Truncated(missing, payload) => frame(0, payload.len() as u32 + missing, payload),
            Self::Oversize(over) => frame(0, (limit as u32).saturating_add(*over), &[0; 16]),
            Self::Empty => Vec::new(),
        };
        Bytes::from(bytes)
    }
}

/// A field that decodes: the known numbers (1, 2) as varints or bytes, and
/// unknown numbers with a valid wire type (skipped by the decoder).
fn typed_field() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => (1u32..=2, prop_oneof![1u64..=64, field_value()]).prop_map(|(n, v)| Field::Varint(n, v)),
        2 => (1u32..=2, prop::collection::vec(any::<u8>(), 0..=96)).prop_map(|(n, b)| Field::Bytes(n, b)),
        1 => (4u32..=20, any::<u32>()).prop_map(|(n, v)| Field::Fixed32(n, v)),
        1 => (4u32..=20, prop::collection::vec(any::<u8>(), 0..=16)).prop_map(|(n, b)| Field::Bytes(n, b)),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(field(), 0..=5).prop_map(|f| encode(&f)),
        3 => prop::collection::vec(typed_field(), 0..=3).prop_map(|f| encode(&f)),
        1 => prop::collection::vec(any::<u8>(), 0..=128),
    ]
}

pub(super) fn grpc_body() -> impl Strategy<Value = GrpcBody> {
    prop_oneof![
        6 => payload().prop_map(GrpcBody::Message),
        4 => prop::collection::vec(typed_field(), 1..=3)
            .prop_map(|f| GrpcBody::Message(encode(&f))),
        // Two numbers, as in a real request: `size` (and `count`).
        2 => (prop_oneof![1u64..=4096, field_value()], prop_oneof![1u64..=4096, field_value()])
            .prop_map(|(a, b)| GrpcBody::Message(encode(&[Field::Varint(1, a), Field::Varint(2, b)]))),
        2 => prop::collection::vec(payload(), 2..=4).prop_map(GrpcBody::Messages),
        2 => prop::collection::vec(any::<u8>(), 1..=64).prop_map(GrpcBody::Raw),
        1 => (prop_oneof![Just(1u8), 2u8..=255], payload()).prop_map(|(f, p)| GrpcBody::Flagged(f, p)),
        1 => (1u32..=1024, payload()).prop_map(|(m, p)| GrpcBody::Truncated(m, p)),
        1 => prop_oneof![Just(1u32), 2u32..=1024, Just(u32::MAX)].prop_map(GrpcBody::Oversize),
        1 => Just(GrpcBody::Empty),
    ]
}

/// One gRPC method, its request message limit, and whether its requests
/// are a stream.
#[derive(Clone, Copy, Debug)]
pub(super) struct Method {
    pub(super) path: &'static str,
    pub(super) limit: usize,
    pub(super) streaming_request: bool,
    /// `Health/Check` answers NOT_FOUND for a service name it does not know.
    pub(super) not_found_ok: bool,
}

pub(super) const RNG_METHODS: [Method; 4] = [
    Method {
        path: "/dockercoins.v1.Rng/Generate",
        limit: MAX_SMALL_REQUEST_BYTES,
        streaming_request: false,
        not_found_ok: false,
    },
    Method {
        path: "/dockercoins.v1.Rng/GenerateStream",
        limit: MAX_SMALL_REQUEST_BYTES,
        streaming_request: false,
        not_found_ok: false,
    },
    Method {
        path: "/dockercoins.v1.Replica/Info",
        limit: MAX_SMALL_REQUEST_BYTES,
        streaming_request: false,
        not_found_ok: false,
    },
    Method {
        path: "/grpc.health.v1.Health/Check",
        limit: MAX_SMALL_REQUEST_BYTES,
        streaming_request: false,
        not_found_ok: true,
    },
];

pub(super) const HASHER_METHODS: [Method; 3] = [
    Method {
        path: "/dockercoins.v1.Hasher/Hash",
        limit: MAX_GRPC_MESSAGE_BYTES,
        streaming_request: false,
        not_found_ok: false,
    },
    Method {
        path: "/dockercoins.v1.Hasher/HashStream",
        limit: MAX_GRPC_MESSAGE_BYTES,
        streaming_request: true,
        not_found_ok: false,
    },
    Method {
        path: "/dockercoins.v1.Replica/Info",
        limit: MAX_SMALL_REQUEST_BYTES,
        streaming_request: false,
        not_found_ok: false,
    },
];
