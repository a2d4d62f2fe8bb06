//! A fake rng and hasher, one server serving both, that tells one [`Lie`],
//! and counts what the worker asked of it.

use crate::support::sha256_hex;
use dockercoins::pb::{
    DigestBatch, GenerateRequest, GenerateResponse, GenerateStreamRequest, GenerateStreamResponse,
    HashBatch, HashRequest, HashResponse,
};
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};
use tokio::{net::TcpListener, sync::oneshot};

/// How a fake backend lies. Where rng lies, hasher answers as if every
/// block were a coin, so that a bad block that got through would show.
#[derive(Clone, Debug)]
pub(super) enum Lie {
    /// Both honest (every digest a coin): the control, which must count.
    None,
    /// rng's unary reply: `len` bytes instead of 32.
    BlockOf(usize),
    /// hasher's unary reply: this text instead of 64 lowercase hex digits.
    Hex(String),
    /// hasher's unary reply: text drawn from a generator, a new one each call.
    HexDrawn(Vec<String>),
    /// rng's stream: blocks of 16 bytes.
    StreamBlockSize,
    /// rng's stream: one byte more than whole blocks.
    StreamRagged,
    /// rng's stream: one block more than asked.
    StreamTooMany,
    /// rng's stream: a message with no block.
    StreamEmpty,
    /// rng's stream: ends without a message.
    StreamEndsEarly,
    /// hasher's stream: digests one byte short, one digest too many, none.
    DigestsShort,
    DigestsLong,
    DigestsNone,
}

impl Lie {
    pub(super) fn by_rng(&self) -> bool {
        matches!(
            self,
            Self::BlockOf(_)
                | Self::StreamBlockSize
                | Self::StreamRagged
                | Self::StreamTooMany
                | Self::StreamEmpty
                | Self::StreamEndsEarly
        )
    }
}

#[derive(Clone)]
pub(super) struct Fake {
    pub(super) lie: Lie,
    /// rng calls received.
    pub(super) asked: Arc<AtomicUsize>,
    /// Blocks hasher was given to hash (unary calls and stream batches).
    pub(super) hashed: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl dockercoins::pb::rng_server::Rng for Fake {
    async fn generate(
        &self,
        request: tonic::Request<GenerateRequest>,
    ) -> Result<tonic::Response<GenerateResponse>, tonic::Status> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let len = match self.lie {
            Lie::BlockOf(len) => len,
            _ => request.get_ref().size as usize,
        };
        Ok(tonic::Response::new(GenerateResponse {
            data: vec![0x5a; len].into(),
        }))
    }

    type GenerateStreamStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<GenerateStreamResponse, tonic::Status>>>;

    async fn generate_stream(
        &self,
        request: tonic::Request<GenerateStreamRequest>,
    ) -> Result<tonic::Response<Self::GenerateStreamStream>, tonic::Status> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let count = request.get_ref().count as usize;
        let (size, len) = match self.lie {
            Lie::StreamBlockSize => (16, 16 * count),
            Lie::StreamRagged => (32, 32 * count + 1),
            Lie::StreamTooMany => (32, 32 * (count + 1)),
            Lie::StreamEmpty => (32, 0),
            _ => (32, 32 * count),
        };
        let messages = match self.lie {
            Lie::StreamEndsEarly => Vec::new(),
            _ => vec![Ok(GenerateStreamResponse {
                size,
                blocks: (0..len).map(|i| i as u8).collect::<Vec<u8>>().into(),
            })],
        };
        Ok(tonic::Response::new(tokio_stream::iter(messages)))
    }
}

#[tonic::async_trait]
impl dockercoins::pb::hasher_server::Hasher for Fake {
    async fn hash(
        &self,
        request: tonic::Request<HashRequest>,
    ) -> Result<tonic::Response<HashResponse>, tonic::Status> {
        let n = self.hashed.fetch_add(1, Ordering::SeqCst);
        let real = sha256_hex(&request.get_ref().data);
        let hex = match &self.lie {
            Lie::Hex(hex) => hex.clone(),
            Lie::HexDrawn(drawn) => drawn[n % drawn.len()].clone(),
            // Honest, and a coin.
            _ => format!("0{}", &real[1..]),
        };
        Ok(tonic::Response::new(HashResponse { hex }))
    }

    type HashStreamStream =
        tokio_stream::wrappers::ReceiverStream<Result<DigestBatch, tonic::Status>>;

    async fn hash_stream(
        &self,
        request: tonic::Request<tonic::Streaming<HashBatch>>,
    ) -> Result<tonic::Response<Self::HashStreamStream>, tonic::Status> {
        let mut batches = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(batch)) = batches.message().await {
                let blocks = batch.blocks.len() / 32;
                this.hashed.fetch_add(blocks, Ordering::SeqCst);
                // Every digest all zeros: every block a coin, if accepted.
                let len = match this.lie {
                    Lie::DigestsShort => 32 * blocks - 1,
                    Lie::DigestsLong => 32 * (blocks + 1),
                    Lie::DigestsNone => 0,
                    _ => 32 * blocks,
                };
                let reply = DigestBatch {
                    digests: vec![0; len].into(),
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

/// A fake rng and hasher (one server serving both) telling `lie`.
pub(super) async fn spawn_fake(lie: Lie) -> (Fake, String, oneshot::Sender<()>) {
    let fake = Fake {
        lie,
        asked: Arc::default(),
        hashed: Arc::default(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(dockercoins::pb::rng_server::RngServer::new(fake.clone()))
        .add_service(dockercoins::pb::hasher_server::HasherServer::new(
            fake.clone(),
        ))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = stopped.await;
            },
        );
    tokio::spawn(server);
    (fake, url, stop)
}
