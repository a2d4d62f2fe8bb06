//! Errors on one line, with everything under them: tonic's and rustls'
//! errors say little at the top ("transport error") and why underneath (a
//! refused certificate, a TLS alert from the server), and a log line or a
//! healthcheck's answer must carry the why.

use std::error::Error;

/// The whole chain of an error, on one line.
pub fn describe(error: &(dyn Error + 'static)) -> String {
    with_sources(error.to_string(), error.source())
}

/// A gRPC status's message and the errors under it, on one line.
pub fn status_reason(status: &tonic::Status) -> String {
    with_sources(status.message().to_owned(), Error::source(status))
}

/// `text`, then each error of the chain from `source` down, on one line.
fn with_sources(mut text: String, mut source: Option<&(dyn Error + 'static)>) -> String {
    while let Some(error) = source {
        let next = error.to_string();
        // Some errors repeat their source's text in their own.
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = error.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_level_is_said_once() {
        let error = Outer(std::io::Error::other("inner"));
        assert_eq!(super::describe(&error), "outer: inner");
        let status = tonic::Status::from_error(Box::new(Outer(std::io::Error::other("outer"))));
        // The status's message already says "outer": not repeated.
        assert!(!super::status_reason(&status).contains("outer: outer"));
    }
}
