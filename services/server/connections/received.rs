//! A call's request body, its bytes counted against the server's bound on
//! request data held, as they arrive and before anything buffers them.
//!
//! tonic reads a whole gRPC message into memory before any service code
//! sees it, so a service's own budget (hasher's) comes too late for a
//! client that opens many calls and sends each a large message slowly. So
//! the size each gRPC message declares in its 5-byte prefix is taken from
//! the bound when the prefix arrives, and given back when the next one
//! arrives (the service has the message by then) or when the call ends.
//! Any other body (HTTP/1.1 `POST /`) holds what it sent until the call
//! ends. Past the bound the body fails with RESOURCE_EXHAUSTED, which tonic
//! answers as such, and the message is never buffered.

use super::in_flight::Call;
use crate::server::limits::MAX_GRPC_MESSAGE_BYTES;
use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The gRPC message prefix: a compression flag and a 4-byte length.
const PREFIX: usize = 5;

pin_project! {
    /// A request body whose bytes count against its server's bound.
    pub struct Received<B> {
        #[pin]
        inner: B,
        call: Arc<Call>,
        // Where the gRPC framing is, for a gRPC call; `None` otherwise.
        grpc: Option<Framing>,
    }
}

/// How far into the gRPC framing the body is.
#[derive(Default)]
struct Framing {
    /// The bytes of the prefix read so far.
    prefix: [u8; PREFIX],
    prefix_read: usize,
    /// Bytes of the current message still to come.
    message_left: usize,
}

impl<B> Received<B> {
    pub(super) fn new(inner: B, call: Arc<Call>, grpc: bool) -> Self {
        Self {
            inner,
            call,
            grpc: grpc.then(Framing::default),
        }
    }
}

impl Framing {
    /// Walks `data`; for each message prefix completed, the size it
    /// declares.
    fn messages_begun(&mut self, mut data: &[u8], mut begun: impl FnMut(usize) -> bool) -> bool {
        while !data.is_empty() {
            if self.message_left > 0 {
                let skip = self.message_left.min(data.len());
                self.message_left -= skip;
                data.advance(skip);
                continue;
            }
            let take = (PREFIX - self.prefix_read).min(data.len());
            self.prefix[self.prefix_read..self.prefix_read + take].copy_from_slice(&data[..take]);
            self.prefix_read += take;
            data.advance(take);
            if self.prefix_read == PREFIX {
                self.prefix_read = 0;
                let length = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as usize;
                self.message_left = length;
                // tonic refuses a message over the largest any method
                // takes on this very prefix, before buffering it.
                if !begun(PREFIX + length.min(MAX_GRPC_MESSAGE_BYTES)) {
                    return false;
                }
            }
        }
        true
    }
}

impl<B> Body for Received<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let call = &**this.call;
            let fits = match this.grpc {
                // The message before has reached the service: its bytes
                // are the service's to count now.
                Some(framing) => framing.messages_begun(data, |size| call.hold_message(size)),
                None => call.hold_more(data.len()),
            };
            if !fits {
                return Poll::Ready(Some(Err(Box::new(call.refusal()))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(length: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend(length.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7, length as usize));
        bytes
    }

    #[test]
    fn every_message_is_seen_once_at_its_prefix_however_the_bytes_are_cut() {
        let stream: Vec<u8> = [message(3), message(0), message(300)].concat();
        for cut in [1, 2, 4, 5, 6, 64, stream.len()] {
            let mut framing = Framing::default();
            let mut sizes = Vec::new();
            for chunk in stream.chunks(cut) {
                assert!(framing.messages_begun(chunk, |size| {
                    sizes.push(size);
                    true
                }));
            }
            assert_eq!(sizes, [8, 5, 305], "cut every {cut} bytes");
        }
    }

    #[test]
    fn a_message_refused_stops_the_walk() {
        let mut framing = Framing::default();
        let stream = [message(3), message(4)].concat();
        let mut seen = 0;
        assert!(!framing.messages_begun(&stream, |_| {
            seen += 1;
            seen < 2
        }));
        assert_eq!(seen, 2);
    }
}
