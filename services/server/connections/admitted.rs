//! An admitted connection's socket: reads and writes pass through, and fail
//! once the connection is closed by a bound, which is how hyper (or edge's
//! copy) learns to drop it. Dropping it gives its place back.

use super::{Closed, Connection, Connections};
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// A socket admitted by [`Connections`].
pub struct Admitted<IO> {
    io: IO,
    connection: Arc<Connection>,
    connections: Connections,
    /// Fires at the connection's deadline, as last seen.
    timer: Pin<Box<Sleep>>,
}

impl<IO> Drop for Admitted<IO> {
    fn drop(&mut self) {
        self.connections.forget(self.connection.id);
    }
}

impl<IO> Admitted<IO> {
    pub(super) fn new(io: IO, connection: Arc<Connection>, connections: Connections) -> Self {
        let handshake = connections
            .limits()
            .handshake
            .min(connections.limits().idle);
        Self {
            io,
            connection,
            connections,
            timer: Box::pin(tokio::time::sleep(handshake)),
        }
    }

    /// The socket.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Its connection's state, for the layer that counts its calls.
    pub fn connection(&self) -> Arc<Connection> {
        self.connection.clone()
    }
}

/// The error a closed connection's reads and writes return.
fn closed_error(why: Closed) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("connection closed by the server ({})", why.as_str()),
    )
}

impl<IO> Admitted<IO> {
    /// `Err` once the connection is closed: by eviction, or now, by a
    /// deadline passed with nothing in flight. Otherwise leaves the timer
    /// armed for the next deadline and the waker registered for eviction.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.connection.reader.register(cx.waker());
        loop {
            if let Some(why) = self.connection.closed() {
                return Err(closed_error(why));
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let now = Instant::now();
            let limits = self.connections.limits();
            match self.connection.deadline(&limits) {
                // Busy: look again one idle bound from now.
                None => self.timer.as_mut().reset(now + limits.idle),
                Some((at, why)) if at <= now => {
                    self.connection.close(why);
                    self.connections.note_closed(why);
                }
                Some((at, _)) => self.timer.as_mut().reset(at),
            }
        }
    }

    /// `Err` when the connection was closed.
    fn open(&self) -> io::Result<()> {
        match self.connection.closed() {
            Some(why) => Err(closed_error(why)),
            None => Ok(()),
        }
    }

    /// Notes a write that moved bytes (edge's activity).
    fn moved(&self, result: &Poll<io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.connection.touch();
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.connection.touch();
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.open()?;
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.moved(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.open()?;
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.moved(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// What tonic puts in each request's extensions: the connection it came on.
#[derive(Clone)]
pub struct ConnectedOn(pub Arc<Connection>);

impl<IO> tonic::transport::server::Connected for Admitted<IO> {
    type ConnectInfo = ConnectedOn;

    fn connect_info(&self) -> ConnectedOn {
        ConnectedOn(self.connection.clone())
    }
}
