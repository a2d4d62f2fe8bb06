//! (b) Every gRPC method with arbitrary bytes as its message, and arbitrary
//! framing around it, sent as raw HTTP/2 requests through a tonic Channel:
//! the answer is always a well-formed gRPC status, and the server serves on.

use super::{
    cases::{check_cases, runtime},
    grpc_wire::{GrpcBody, HASHER_METHODS, RNG_METHODS, grpc_body, raw_grpc},
};
use crate::support::{sha256_hex, spawn_hasher, spawn_rng};
use dockercoins::{hasher::HasherConfig, rng::RngConfig};
use proptest::{prelude::*, test_runner::TestCaseError};

impl GrpcBody {
    /// The status this body must get whatever the method, when only one
    /// is right.
    fn required(&self, streaming_request: bool) -> Option<tonic::Code> {
        match self {
            // tonic's decoder quirk: a frame whose 5-byte header arrived but
            // none of its payload looks like a clean end to a client stream
            // (the header is consumed, the buffer is empty at EOF), so that
            // call ends OK with every complete message answered. Harmless:
            // nothing is buffered, nothing is counted.
            Self::Truncated(_, payload) if streaming_request && payload.is_empty() => None,
            Self::Flagged(..) | Self::Truncated(..) => Some(tonic::Code::Internal),
            Self::Oversize(_) => Some(tonic::Code::OutOfRange),
            // A unary request needs its message; a client stream may be empty.
            Self::Empty if !streaming_request => Some(tonic::Code::Internal),
            Self::Empty => Some(tonic::Code::Ok),
            _ => None,
        }
    }
}

/// Every method of rng and hasher, unary and streaming, gets arbitrary
/// request bodies: the answer is a gRPC status (OK, INVALID_ARGUMENT from
/// the service, INTERNAL for what does not decode, OUT_OF_RANGE over the
/// limit), never a reset stream or a dropped connection; one connection per
/// server carries all the cases, and a normal call works after them.
#[test]
fn any_bytes_to_any_grpc_method_get_a_grpc_status() {
    let rt = runtime();
    let rng = rt.block_on(spawn_rng(RngConfig::turbo()));
    let hasher = rt.block_on(spawn_hasher(HasherConfig::turbo()));
    let rng_channel = rt.block_on(rng.channel());
    let hasher_channel = rt.block_on(hasher.channel());
    let methods: Vec<_> = RNG_METHODS
        .iter()
        .map(|m| (*m, rng_channel.clone()))
        .chain(HASHER_METHODS.iter().map(|m| (*m, hasher_channel.clone())))
        .collect();
    let strategy = (prop::sample::select(methods), grpc_body());
    check_cases(&rt, 384, strategy, |((method, channel), body)| async move {
        let outcome = raw_grpc(&channel, method.path, body.bytes(method.limit))
            .await
            .map_err(|e| TestCaseError::fail(format!("{}: {e}", method.path)))?;
        use tonic::Code;
        let allowed = matches!(
            outcome.code,
            Code::Ok | Code::InvalidArgument | Code::Internal | Code::OutOfRange
        ) || (method.not_found_ok && outcome.code == Code::NotFound);
        prop_assert!(allowed, "{}: {:?}", method.path, outcome);
        if let Some(required) = body.required(method.streaming_request) {
            prop_assert_eq!(outcome.code, required, "{}: {:?}", method.path, outcome);
        }
        if let GrpcBody::Oversize(_) = body {
            // Refused on the frame's header, by this method's own limit.
            let limit = format!("the limit is: {} bytes", method.limit);
            prop_assert!(
                outcome.message.contains(&limit),
                "{}: {:?}",
                method.path,
                outcome
            );
        }
        Ok(())
    });
    rt.block_on(async {
        let mut rng_client = dockercoins::pb::rng_client::RngClient::new(rng_channel);
        let data = rng_client
            .generate(dockercoins::pb::GenerateRequest { size: 32 })
            .await
            .unwrap()
            .into_inner()
            .data;
        assert_eq!(data.len(), 32);
        let mut hasher_client = dockercoins::pb::hasher_client::HasherClient::new(hasher_channel);
        let hex = hasher_client
            .hash(dockercoins::pb::HashRequest { data: data.clone() })
            .await
            .unwrap()
            .into_inner()
            .hex;
        assert_eq!(hex, sha256_hex(&data));
        rng.stop().await.unwrap();
        hasher.stop().await.unwrap();
    });
}

/// A client that makes up method names does not make up metrics: every call
/// to a method rng does not have is counted as `_OTHER`, so the series kept
/// stay those of the server's own methods, whatever paths arrive.
#[tokio::test]
async fn made_up_methods_are_counted_as_other_not_by_name() {
    let rng = spawn_rng(RngConfig::turbo()).await;
    let channel = rng.channel().await;
    for i in 0..200 {
        for path in [
            format!("/dockercoins.v1.Rng/MadeUp{i}"),
            format!("/made.up.Service{i}/Call"),
        ] {
            let outcome = raw_grpc(&channel, &path, bytes::Bytes::new())
                .await
                .unwrap();
            assert_eq!(outcome.code, tonic::Code::Unimplemented, "{path}");
        }
    }
    let (status, _, body) = crate::support::http1(rng.addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        !text.contains("MadeUp") && !text.contains("made.up"),
        "{text}"
    );
    // Only the calls to rng's own service are counted, under one name.
    let other = r#"rpc_server_call_duration_seconds_count{rpc_method="_OTHER",rpc_response_status_code="UNIMPLEMENTED"} 200"#;
    assert!(text.contains(other), "{text}");
}
