//! The `dockercoins` binary: parse the command line, start logging, bind, and
//! hand over to the service's `serve` (or `run`). Nothing else lives here.

use anyhow::Context;
use clap::Parser;
use dockercoins::{
    bench,
    config::{Cli, ClientArgs, Command, HasherConfig, RngConfig},
    edge, hasher, healthcheck,
    pool::Backend,
    rng, shutdown,
    store::Store,
    telemetry,
    up::{self, Listeners, UpConfig},
    webui, worker,
};
use std::{net::SocketAddr, process::ExitCode};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Healthcheck(args) = &cli.command {
        // No telemetry: a probe every few seconds must not start an exporter.
        return match healthcheck::run(args).await {
            Ok(healthy) => {
                println!("{healthy}");
                ExitCode::SUCCESS
            }
            Err(unhealthy) => {
                eprintln!("unhealthy: {unhealthy}");
                ExitCode::FAILURE
            }
        };
    }
    let _telemetry = telemetry::init(cli.log_format, cli.command.name());
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let shutdown = shutdown::signal().context("cannot install the SIGTERM/Ctrl-C handlers")?;
    match command {
        Command::Rng(args) => {
            let tls = args.tls.load()?;
            let listener = bind(args.listen, "--listen / RNG_LISTEN").await?;
            rng::serve_with_tls(listener, RngConfig::from(&args), tls, shutdown).await?;
        }
        Command::Hasher(args) => {
            let tls = args.tls.load()?;
            let listener = bind(args.listen, "--listen / HASHER_LISTEN").await?;
            hasher::serve_with_tls(listener, HasherConfig::from(&args), tls, shutdown).await?;
        }
        Command::Worker(args) => {
            let (rng, hasher, store) = clients(&args.client)?;
            let liveness = std::sync::Arc::new(worker::Liveness::default());
            if let Some(addr) = args.health_listen {
                let listener = bind(addr, "--health-listen / WORKER_HEALTH_LISTEN").await?;
                tracing::info!(listen = %listener.local_addr()?, "serving the worker's liveness on /healthz");
                // Stops with the process, once the last update is made.
                tokio::spawn(worker::serve_liveness(
                    listener,
                    liveness.clone(),
                    std::future::pending(),
                ));
            }
            worker::run_with_liveness(args.config(), rng, hasher, store, liveness, shutdown).await;
        }
        Command::Webui(args) => {
            let (rng, hasher, store) = clients(&args.client)?;
            let listener = bind(args.listen, "--listen / WEBUI_LISTEN").await?;
            webui::serve(listener, webui::Webui::new(store, rng, hasher), shutdown).await?;
        }
        Command::Up(args) => {
            let listeners = Listeners {
                rng: bind_replicas(
                    args.rng_listen,
                    args.rng_replicas,
                    "--rng-listen / RNG_LISTEN",
                )
                .await?,
                hasher: bind_replicas(
                    args.hasher_listen,
                    args.hasher_replicas,
                    "--hasher-listen / HASHER_LISTEN",
                )
                .await?,
                webui: bind(args.webui_listen, "--webui-listen / WEBUI_LISTEN").await?,
            };
            let (rng, hasher, worker) = args.configs();
            let config = UpConfig {
                workers: args.workers,
                rng,
                hasher,
                worker,
                pool: args.timeouts.pool(),
                redis_timeout: args.timeouts.redis_timeout(),
                redis_url: args.redis_url.clone(),
            };
            up::run(config, listeners, shutdown).await?;
        }
        Command::Edge(args) => {
            let mut routes = Vec::new();
            for route in args.routes {
                routes.push((bind(route.listen, "--route / EDGE_ROUTES").await?, route));
            }
            edge::serve(routes, dockercoins::pool::system_resolver(), shutdown).await;
        }
        Command::Healthcheck(_) => unreachable!("handled above"),
        Command::Bench(args) => {
            let report = bench::run(&args.config()).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            anyhow::ensure!(
                report.cross_check,
                "cross-check failed: the worker counted {} hashes, Redis holds {}",
                report.counted_hashes,
                report.redis_hashes
            );
        }
    }
    Ok(())
}

fn clients(args: &ClientArgs) -> anyhow::Result<(Backend, Backend, Store)> {
    let mut pool = args.timeouts.pool();
    pool.tls = args.tls.load()?;
    Ok((
        Backend::new("rng", &args.rng_url, &pool)?,
        Backend::new("hasher", &args.hasher_url, &pool)?,
        Store::redis(&args.redis_url, args.timeouts.redis_timeout())?,
    ))
}

/// `replicas` listeners: on `first`, then its port +10, +20... (port 0
/// stays 0: every replica gets a free port).
async fn bind_replicas(
    first: SocketAddr,
    replicas: usize,
    setting: &str,
) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for n in 0..replicas.max(1) {
        let mut addr = first;
        if first.port() != 0 {
            let port = u16::try_from(usize::from(first.port()) + 10 * n)
                .context("too many replicas for the port range")?;
            addr.set_port(port);
        }
        listeners.push(bind(addr, setting).await?);
    }
    Ok(listeners)
}

async fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (change it with {setting})"))
}
