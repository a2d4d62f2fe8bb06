//! The `dockercoins` binary: parse the command line, start logging, bind, and
//! hand over to the service's `serve` (or `run`). Nothing else lives here.

use anyhow::Context;
use clap::Parser;
use dockercoins::{
    bench,
    cli::{
        BenchArgs, Cli, ClientArgs, Command, EdgeArgs, FloodArgs, FloorCommand, HealthcheckArgs,
        TopArgs, TracesArgs, UpArgs,
    },
    client::balancer::{self, ClientCalls},
    client::{BalancedHasher, BalancedRng},
    edge, hasher, healthcheck, rng,
    server::connections::ConnectionLimits,
    shutdown,
    store::Store,
    telemetry,
    telemetry::metrics::Registry,
    top, traces,
    up::{self, Listeners, restart::RestartTrigger},
    webui, worker,
};
use std::{future::Future, net::SocketAddr, process::ExitCode};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // No telemetry for these: a probe every few seconds must not start an
    // exporter, and a reader of Jaeger or webui has no spans of its own to
    // send (nor a log line to print where its table or screen goes).
    match &cli.command {
        Command::Healthcheck(args) => return healthcheck(args).await,
        Command::Traces(args) => return traces(args).await,
        Command::Doctor(args) => return doctor(args).await,
        Command::Top(args) => return run_top(args).await,
        _ => {}
    }
    dockercoins::telemetry::metrics::set_enabled(!cli.metrics_disabled);
    let _telemetry = telemetry::init(cli.log_format, cli.command.name());
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn healthcheck(args: &HealthcheckArgs) -> ExitCode {
    let checked = match args.probe() {
        Ok(probe) => healthcheck::check(&probe).await,
        Err(error) => Err(error.into()),
    };
    match checked {
        Ok(healthy) => {
            println!("{healthy}");
            ExitCode::SUCCESS
        }
        Err(unhealthy) => {
            eprintln!("unhealthy: {unhealthy}");
            ExitCode::FAILURE
        }
    }
}

async fn doctor(args: &dockercoins::cli::DoctorArgs) -> ExitCode {
    let findings = dockercoins::doctor::examine(&args.config()).await;
    let (text, code) = dockercoins::doctor::report(&findings);
    print!("{text}");
    ExitCode::from(code as u8)
}

async fn traces(args: &TracesArgs) -> ExitCode {
    match traces::run(&args.config()).await {
        Ok(report) => {
            print!("{}", report.table());
            ExitCode::SUCCESS
        }
        Err(broken) => {
            eprintln!("dockercoins traces: {broken}");
            ExitCode::FAILURE
        }
    }
}

/// `top`: the live screen, or one reading as text or JSON.
async fn run_top(args: &TopArgs) -> ExitCode {
    let config = args.config();
    let shown = if args.once {
        top::once(&config).await.map(|snapshot| {
            if args.json {
                // A Snapshot is plain data: it always serializes.
                println!("{}", serde_json::to_string(&snapshot).unwrap_or_default());
            } else {
                print!("{}", top::text(&snapshot, &config));
            }
        })
    } else {
        top::live(&config).await
    };
    match shown {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dockercoins top: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let shutdown = shutdown::signal().context("cannot install the SIGTERM/Ctrl-C handlers")?;
    match command {
        Command::Rng(args) => {
            let config = args.config()?;
            let listener = bind(args.listen, "--listen / RNG_LISTEN").await?;
            rng::serve(listener, config, shutdown).await?;
        }
        Command::Hasher(args) => {
            let config = args.config()?;
            let listener = bind(args.listen, "--listen / HASHER_LISTEN").await?;
            hasher::serve(listener, config, shutdown).await?;
        }
        Command::Worker(args) => {
            let mut metrics = Registry::default();
            let backends = backends(&args.client, &mut metrics)?;
            let status = match args.health_listen {
                Some(addr) => Some(worker::StatusPort {
                    listener: bind(addr, "--health-listen / WORKER_HEALTH_LISTEN").await?,
                    metrics,
                }),
                None => None,
            };
            worker::run(args.config(), backends, status, shutdown).await;
        }
        Command::Webui(args) => {
            let mut metrics = Registry::default();
            let backends = backends(&args.client, &mut metrics)?;
            let listener = bind(args.listen, "--listen / WEBUI_LISTEN").await?;
            let assets = match args.assets_dir {
                Some(dir) => webui::Assets::from_dir(dir)?,
                None => webui::Assets::built_in(),
            };
            let webui = webui::Webui::new(backends.store, backends.rng, backends.hasher)
                .with_metrics(metrics)
                .with_jaeger_url(args.jaeger_url)
                .with_assets(assets)
                .with_connection_limits(ConnectionLimits::at_most(args.max_connections));
            webui::serve(listener, webui, shutdown).await?;
        }
        Command::Up(args) => run_up(*args, shutdown).await?,
        Command::Edge(args) => run_edge(args, shutdown).await?,
        Command::Healthcheck(_) | Command::Traces(_) | Command::Doctor(_) | Command::Top(_) => {
            unreachable!("handled above")
        }
        Command::Bench(args) => run_bench(args).await?,
        Command::Flood(args) => run_flood(args).await?,
        Command::Floor(floor) => run_floor(floor, shutdown).await?,
    }
    Ok(())
}

/// rng, hasher and Redis, as the worker's or webui's settings say, their
/// calls measured in `metrics`.
fn backends(args: &ClientArgs, metrics: &mut Registry) -> anyhow::Result<worker::Backends> {
    let mut balancer = args.balancer()?;
    balancer.metrics = ClientCalls::register(metrics);
    Ok(worker::Backends {
        rng: BalancedRng::new(&args.rng_url, &balancer)?,
        hasher: BalancedHasher::new(&args.hasher_url, &balancer)?,
        store: Store::redis(&args.redis_url, args.connections.redis_timeout())?,
    })
}

async fn run_up(
    args: UpArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (mut rng, mut hasher) = (Vec::new(), Vec::new());
    for addr in up::replica_addrs(args.rng_listen, args.rng_replicas)? {
        rng.push(bind(addr, "--rng-listen / RNG_LISTEN").await?);
    }
    for addr in up::replica_addrs(args.hasher_listen, args.hasher_replicas)? {
        hasher.push(bind(addr, "--hasher-listen / HASHER_LISTEN").await?);
    }
    let webui = bind(args.webui_listen, "--webui-listen / WEBUI_LISTEN").await?;
    let listeners = Listeners { rng, hasher, webui };
    let (trigger, restarts) = up::restart::restart_channel();
    restart_on_sighup(trigger).context("cannot install the SIGHUP handler")?;
    up::run(args.config(), listeners, restarts, shutdown).await?;
    Ok(())
}

/// SIGHUP asks `up` for a rolling restart of its backends (installed before
/// `up` serves: an early SIGHUP would otherwise kill the process).
#[cfg(unix)]
fn restart_on_sighup(trigger: RestartTrigger) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if trigger.request() {
                tracing::info!("SIGHUP received: rolling restart of rng and hasher");
            } else {
                tracing::info!("SIGHUP received: a rolling restart is already waiting");
            }
        }
    });
    Ok(())
}

/// No SIGHUP here: `up` is never restarted.
#[cfg(not(unix))]
fn restart_on_sighup(_trigger: RestartTrigger) -> std::io::Result<()> {
    Ok(())
}

async fn run_edge(
    args: EdgeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut routes = Vec::new();
    for route in args.routes {
        routes.push((bind(route.listen, "--route / EDGE_ROUTES").await?, route));
    }
    let limits = ConnectionLimits::at_most(args.max_connections);
    edge::serve(routes, balancer::system_resolver(), limits, shutdown).await;
    Ok(())
}

async fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(sweep) = args.sweep() {
        let report = bench::open::sweep(&args.config(), &sweep).await?;
        print_report(&report, args.json, || report.table())?;
        anyhow::ensure!(report.cross_check(), "cross-check failed: see the steps");
        return Ok(());
    }
    if let Some(rate) = args.rate {
        let report = bench::open::rate(&args.config(), rate).await?;
        print_report(&report, args.json, || report.table())?;
        anyhow::ensure!(
            report.cross_check(),
            "cross-check failed: the worker counted {} hashes, Redis gained {}",
            report.step.counted_hashes,
            report.step.redis_hashes
        );
        return Ok(());
    }
    let report = bench::run(&args.config()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    anyhow::ensure!(
        report.cross_check,
        "cross-check failed: the worker counted {} hashes and {} coins, Redis holds {} and {}",
        report.counted_hashes,
        report.counted_coins,
        report.redis_hashes,
        report.redis_coins
    );
    Ok(())
}

/// A report as JSON, or as its table.
fn print_report(
    report: &impl serde::Serialize,
    json: bool,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", table());
    }
    Ok(())
}

async fn run_flood(args: FloodArgs) -> anyhow::Result<()> {
    let config = args.config();
    let reports = bench::flood::run(&config).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", bench::flood::table(&reports, &config));
    }
    let missed: Vec<&str> = reports
        .iter()
        .filter(|report| !report.passed())
        .map(|report| report.target.as_str())
        .collect();
    anyhow::ensure!(missed.is_empty(), "missed a goal: {}", missed.join(", "));
    Ok(())
}

async fn run_floor(
    floor: FloorCommand,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    match floor {
        FloorCommand::Serve { listen } => {
            let listener = bind(listen, "--listen").await?;
            bench::floor::serve(listener, shutdown).await?;
        }
        FloorCommand::Load(args) => {
            let load = bench::floor::load(&args.config()).await?;
            println!("{}", serde_json::to_string(&load)?);
        }
    }
    Ok(())
}

async fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (change it with {setting})"))
}
