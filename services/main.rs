//! The `dockercoins` binary: parse the command line, start logging, bind, and
//! hand over to the service's `serve`. Nothing else lives here.

use anyhow::Context;
use clap::Parser;
use dockercoins::{
    config::{Cli, Command, HasherConfig, RngConfig},
    hasher, rng, shutdown, telemetry,
};
use std::{net::SocketAddr, process::ExitCode};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let _telemetry = telemetry::init(cli.log_format);
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
            let listener = bind(args.listen, "--listen / RNG_LISTEN").await?;
            rng::serve(listener, RngConfig::from(&args), shutdown).await?;
        }
        Command::Hasher(args) => {
            let listener = bind(args.listen, "--listen / HASHER_LISTEN").await?;
            hasher::serve(listener, HasherConfig::from(&args), shutdown).await?;
        }
    }
    Ok(())
}

async fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (change it with {setting})"))
}
