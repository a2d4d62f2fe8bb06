//! A stand-in OpenTelemetry collector for benchmarks: accepts OTLP/gRPC trace
//! exports and counts them, nothing more, so `dockercoins bench` can be
//! measured with tracing exported for real and no collector installed.
//!
//!     cargo run --release --example otlp_sink -- 127.0.0.1:4317
//!     OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 dockercoins bench ...
//!
//! Every 10 s it prints the spans received so far; Ctrl-C stops it.

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
    exports: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        self.exports.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".to_owned())
        .parse()?;
    let sink = Sink::default();
    let report = sink.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        every.tick().await;
        loop {
            every.tick().await;
            println!(
                "otlp_sink: {} spans in {} exports so far",
                report.spans.load(Ordering::Relaxed),
                report.exports.load(Ordering::Relaxed)
            );
        }
    });
    println!("otlp_sink: listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink.clone()))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    println!(
        "otlp_sink: {} spans in {} exports",
        sink.spans.load(Ordering::Relaxed),
        sink.exports.load(Ordering::Relaxed)
    );
    Ok(())
}
