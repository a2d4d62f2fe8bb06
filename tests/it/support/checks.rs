//! What the tests hold answers to, computed or stated independently of the
//! services: a SHA-256, an overload refusal over HTTP and over gRPC.

/// Lowercase hex SHA-256, computed here independently of the service.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// An HTTP refusal for overload: 503, with `Retry-After` in whole seconds.
pub fn assert_told_to_retry(response: &axum::response::Response, seconds: &str) {
    assert_eq!(response.status(), 503, "{response:?}");
    assert_eq!(response.headers()["retry-after"], seconds, "{response:?}");
}

/// A gRPC refusal for overload: RESOURCE_EXHAUSTED, with gRFC A6's pushback.
pub fn assert_pushed_back(status: &tonic::Status, millis: &str) {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        millis,
        "{status:?}"
    );
}
