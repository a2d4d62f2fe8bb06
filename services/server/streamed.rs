//! A server-streaming reply fed by a task of its own, as rng's and
//! hasher's streams are: the handler returns the stream at once, and the
//! task sends each message into a channel of two. Two messages of
//! look-ahead keep the pipe full, and what a slow reader can pin stays two
//! messages; a reader that goes away closes the channel, which the task sees
//! (`Sender::closed`, or a failed send) and stops.

use std::future::Future;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Messages sent ahead of the reader.
const LOOK_AHEAD: usize = 2;

/// The stream a handler returns.
pub type Streamed<T> = ReceiverStream<Result<T, Status>>;

/// Where the task sends its messages, or the status that ends the stream.
pub type Replies<T> = mpsc::Sender<Result<T, Status>>;

/// The reply whose messages `produce` sends, in a task of its own.
pub fn streamed<T, F, Fut>(produce: F) -> tonic::Response<Streamed<T>>
where
    T: Send + 'static,
    F: FnOnce(Replies<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (replies, stream) = mpsc::channel(LOOK_AHEAD);
    tokio::spawn(produce(replies));
    tonic::Response::new(ReceiverStream::new(stream))
}
