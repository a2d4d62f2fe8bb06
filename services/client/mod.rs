//! Typed clients of rng and hasher, for the worker and webui's gateway.
//!
//! Each owns its protocol: the service name comes from the generated code,
//! each call builds its generated client (imported as `RngStub`,
//! `HasherStub`) on the channel the balancer picks (why: see [`balancer`]),
//! and the balancer traces it and notes its success or failure (a streak of
//! failures is logged once, its end once). A streamed reply bounds the wait
//! for each message by the call timeout, as a unary call is bounded as a
//! whole, and notes each message's success or failure the same way.
//!
//! Beside them: [`balancer`], the replicas behind each client and how a
//! call is spread, tried again and measured; [`backoff`], the waits between
//! tries; [`http_get`], one plain HTTP GET for the commands that read an
//! HTTP API (traces, top, the healthcheck).

pub mod backoff;
pub mod balancer;
pub mod http_get;

use crate::{
    client::balancer::{
        Balancer, BalancerSettings, InvalidUrl, Resolver, Service, system_resolver,
    },
    pb::{
        DigestBatch, GenerateRequest, GenerateStreamRequest, GenerateStreamResponse, HashBatch,
        HashRequest, hasher_client::HasherClient as HasherStub, hasher_server,
        rng_client::RngClient as RngStub, rng_server,
    },
    protocol::{HASHER_PORT, RNG_PORT},
};
use bytes::Bytes;
use std::{marker::PhantomData, time::Duration};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// Which API a [`Client`] speaks: what the balancer needs to know of it.
pub trait Api {
    /// Who the service is, for the balancer's logs, spans and errors.
    const SERVICE: Service;
}

/// `dockercoins.v1.Rng`, as [`BalancedRng`] speaks it.
///
/// Named for what it is, the protocol a [`Client`] speaks, because the
/// shorter names are taken: `Rng` is the generated server trait
/// (`pb::rng_server::Rng`), `RngApi` rng's alias of it, `RngService` rng's
/// server, and `RngClient` the generated stub (imported here as `RngStub`).
#[derive(Clone, Copy, Debug)]
pub struct RngProtocol;

impl Api for RngProtocol {
    const SERVICE: Service = Service {
        name: "rng",
        grpc: rng_server::SERVICE_NAME,
        port: RNG_PORT,
    };
}

/// `dockercoins.v1.Hasher`, as [`BalancedHasher`] speaks it (named as
/// [`RngProtocol`] is, for the same reason).
#[derive(Clone, Copy, Debug)]
pub struct HasherProtocol;

impl Api for HasherProtocol {
    const SERVICE: Service = Service {
        name: "hasher",
        grpc: hasher_server::SERVICE_NAME,
        port: HASHER_PORT,
    };
}

/// A service as its clients reach it: every replica its URL's name
/// resolves to, through the balancer.
#[derive(Clone, Debug)]
pub struct Client<A> {
    balancer: Balancer,
    api: PhantomData<A>,
}

/// rng's client, balanced over its replicas: `generate`, `generate_stream`.
/// Not `RngClient`, the generated stub's name: one name, one type.
pub type BalancedRng = Client<RngProtocol>;

/// hasher's client, balanced over its replicas: `hash`, `hash_stream`.
pub type BalancedHasher = Client<HasherProtocol>;

impl<A: Api> Client<A> {
    /// The service at `url`, its replicas found by the system's resolver.
    pub fn new(url: &str, settings: &BalancerSettings) -> Result<Self, InvalidUrl> {
        Self::with_resolver(url, settings, system_resolver())
    }

    /// The service at `url`, its replicas found by `resolver`.
    pub fn with_resolver(
        url: &str,
        settings: &BalancerSettings,
        resolver: Resolver,
    ) -> Result<Self, InvalidUrl> {
        Ok(Self {
            balancer: Balancer::new(A::SERVICE, url, settings, resolver)?,
            api: PhantomData,
        })
    }

    /// Where the service is in Compose: its name and its port.
    pub fn default_url() -> String {
        format!("http://{}:{}", A::SERVICE.name, A::SERVICE.port)
    }

    /// The balancer behind this client: its replicas and their counts.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }
}

impl Client<RngProtocol> {
    /// `Rng/Generate`: `size` random bytes.
    pub async fn generate(&self, size: u32) -> Result<Bytes, Status> {
        let reply = self
            .balancer
            .call(
                "Generate",
                async |channel, request| RngStub::new(channel).generate(request).await,
                GenerateRequest { size },
            )
            .await?;
        Ok(reply.into_inner().data)
    }

    /// `Rng/GenerateStream`: `count` blocks of `size` bytes, in messages.
    pub async fn generate_stream(&self, size: u32, count: u32) -> Result<Blocks, Status> {
        let reply = self
            .balancer
            .call_stream(
                "GenerateStream",
                async |channel, request| RngStub::new(channel).generate_stream(request).await,
                GenerateStreamRequest { size, count },
            )
            .await?;
        Ok(Blocks {
            stream: reply.into_inner(),
            wait: self.balancer.call_timeout(),
            balancer: self.balancer.clone(),
        })
    }
}

/// The messages of an `Rng/GenerateStream` call.
pub struct Blocks {
    stream: Streaming<GenerateStreamResponse>,
    balancer: Balancer,
    /// Bound on waiting for each message.
    wait: Duration,
}

impl Blocks {
    /// The next message; `None` once rng ended the stream.
    pub async fn message(&mut self) -> Result<Option<GenerateStreamResponse>, Status> {
        let message = tokio::time::timeout(self.wait, self.stream.message())
            .await
            .unwrap_or_else(|_| Err(timed_out("random blocks", self.wait)));
        self.balancer.note(message)
    }
}

impl Client<HasherProtocol> {
    /// `Hasher/Hash`: the SHA-256 of `data`, in lowercase hex.
    pub async fn hash(&self, data: Bytes) -> Result<String, Status> {
        let reply = self
            .balancer
            .call(
                "Hash",
                async |channel, request| HasherStub::new(channel).hash(request).await,
                HashRequest { data },
            )
            .await?;
        Ok(reply.into_inner().hex)
    }

    /// `Hasher/HashStream`: a pipe that hashes one batch at a time, on one
    /// replica (a client stream cannot be sent again elsewhere).
    pub async fn hash_stream(&self) -> Result<HashPipe, Status> {
        // One batch ahead at most: the worker waits for each batch's digests.
        let (to_hasher, requests) = mpsc::channel(1);
        let reply = self
            .balancer
            .call_once(
                "HashStream",
                async |channel, request| HasherStub::new(channel).hash_stream(request).await,
                ReceiverStream::new(requests),
            )
            .await?;
        Ok(HashPipe {
            to_hasher,
            digests: reply.into_inner(),
            wait: self.balancer.call_timeout(),
            balancer: self.balancer.clone(),
        })
    }
}

/// An open `Hasher/HashStream` call: batches in, their digests out.
pub struct HashPipe {
    to_hasher: mpsc::Sender<HashBatch>,
    digests: Streaming<DigestBatch>,
    balancer: Balancer,
    /// Bound on waiting for each batch's digests.
    wait: Duration,
}

impl HashPipe {
    /// The raw digests of `batch`'s blocks, back to back; `None` when hasher
    /// ended the stream without them.
    pub async fn hash(&mut self, batch: HashBatch) -> Result<Option<Bytes>, Status> {
        let reply = if self.to_hasher.send(batch).await.is_err() {
            // The call ended; its status says why.
            Err(self
                .digests
                .message()
                .await
                .err()
                .unwrap_or_else(|| Status::unavailable("hasher stream closed")))
        } else {
            tokio::time::timeout(self.wait, self.digests.message())
                .await
                .unwrap_or_else(|_| Err(timed_out("digests", self.wait)))
        };
        self.balancer
            .note(reply)
            .map(|reply| reply.map(|batch| batch.digests))
    }
}

fn timed_out(what: &str, wait: Duration) -> Status {
    Status::deadline_exceeded(format!("no {what} within {wait:?}"))
}
