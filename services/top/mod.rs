//! `dockercoins top`: webui's page in a terminal, for workshop machines
//! reached over SSH with no browser. It reads what the page reads (`/json`,
//! `/api/hops`, `/api/status`) every second and draws the same truth:
//! hashes/s and its recent history, each hop's rate and latency as its
//! servers measure them, rng's queue, the load each replica reports and
//! its weighted share, the replicas and the policy.
//!
//! Layout: [`board`] keeps webui's answers and makes them one
//! [`Snapshot`] (`--once --json` prints it); [`screen`] lays a snapshot out
//! as lines for an 80x24 terminal; `terminal` owns the terminal's state
//! and gives it back; [`webui_api`] reads webui. This module runs them:
//! [`live`] until `q` or Ctrl-C, [`once`] for one reading.
//!
//! A client of webui's HTTP API only: it imports no service.

pub mod board;
pub mod screen;
mod terminal;
pub mod webui_api;

pub use board::Snapshot;

use crate::protocol::webui::{HopsView, StatusView, TimedScore};
use board::{Board, RATE_WINDOW_SECONDS};
use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use futures_util::StreamExt;
use screen::Frame;
use std::{
    future::Future,
    io::{self, IsTerminal},
    time::{Duration, Instant},
};
use terminal::Terminal;
use tokio::{sync::mpsc, task::JoinSet, time::MissedTickBehavior};
use webui_api::Unreachable;

/// webui as `up` and the compose file publish it.
pub const DEFAULT_WEBUI: &str = "http://localhost:8000";

/// How often webui is read and the screen redrawn: the page's own pace.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// What to read, and how often.
#[derive(Clone, Debug)]
pub struct TopConfig {
    /// webui's address, `http://host:port`, no trailing slash.
    pub webui: String,
    pub interval: Duration,
}

/// Why `top` stopped with an error. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error(
        "stdout is not a terminal, and the live screen needs one (over SSH: `ssh -t`); \
         for a pipe, a file or a script, use `--once`, or `--once --json`"
    )]
    NotATerminal,
    #[error("webui at {webui} unreachable: {reason}")]
    Unreachable { webui: String, reason: String },
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signals(io::Error),
    #[error("the terminal failed: {0}")]
    Terminal(#[from] io::Error),
}

/// One reading: the score over the rate's window (about 5 s: the
/// hashes/s needs two ends), then the hops and the status. Any answer
/// missing is an error: a script must not take a stale or partial reading
/// for the mesh's state.
pub async fn once(config: &TopConfig) -> Result<Snapshot, TopError> {
    let unreachable = |error: Unreachable| TopError::Unreachable {
        webui: config.webui.clone(),
        reason: error.0,
    };
    let mut board = Board::new(&config.webui);
    let window = Duration::from_secs_f64(RATE_WINDOW_SECONDS);
    let started = Instant::now();
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let score = webui_api::score(&config.webui).await;
        board.record_score(score.map_err(unreachable)?);
        if started.elapsed() >= window {
            break;
        }
    }
    let (hops, status) = tokio::join!(
        webui_api::hops(&config.webui),
        webui_api::status(&config.webui)
    );
    board.record_hops(hops.map_err(unreachable)?);
    board.record_status(status.map_err(unreachable)?);
    Ok(board.snapshot())
}

/// A reading as `--once` prints it without `--json`: the screen, in full.
pub fn text(snapshot: &Snapshot, config: &TopConfig) -> String {
    let frame = Frame {
        width: terminal::FALLBACK_SIZE.0.into(),
        height: None,
        live: false,
        interval: config.interval,
    };
    let mut text = screen::render(snapshot, &frame).join("\n");
    text.push('\n');
    text
}

/// The live screen, redrawn at each answer, until `q`, Ctrl-C, SIGTERM or
/// SIGINT; the terminal restored however it ends. webui not answering is
/// said on the screen, and asked again at the next tick.
pub async fn live(config: &TopConfig) -> Result<(), TopError> {
    if !io::stdout().is_terminal() {
        return Err(TopError::NotATerminal);
    }
    // Ctrl-C in raw mode is a key; these are `kill`'s.
    let signals = crate::shutdown::signal().map_err(TopError::Signals)?;
    tokio::pin!(signals);
    let mut terminal = Terminal::enter()?;
    let mut keys = EventStream::new();
    let (sender, mut answers) = mpsc::channel(8);
    // The readers stop when the set is dropped, however this returns.
    let _readers = spawn_readers(config, sender);
    let mut board = Board::new(&config.webui);
    loop {
        let (columns, rows) = Terminal::size();
        let frame = Frame {
            width: columns.into(),
            height: Some(rows.into()),
            live: true,
            interval: config.interval,
        };
        terminal.draw(&screen::render(&board.snapshot(), &frame))?;
        tokio::select! {
            _ = &mut signals => return Ok(()),
            answer = answers.recv() => match answer {
                Some(answer) => answer.apply(&mut board),
                None => return Ok(()),
            },
            event = keys.next() => match event {
                Some(Ok(Event::Key(key))) if quits(&key) => return Ok(()),
                // A resize, another key: drawn again.
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
                None => return Ok(()),
            },
        }
    }
}

/// `q` or Ctrl-C (a key in raw mode, not a signal).
fn quits(key: &KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && match key.code {
            KeyCode::Char('q' | 'Q') => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// One of webui's answers, as it comes.
enum Answer {
    Score(Result<Result<TimedScore, String>, Unreachable>),
    Hops(Result<HopsView, Unreachable>),
    // Boxed: the status of two backends outweighs the other answers.
    Status(Result<Box<StatusView>, Unreachable>),
}

impl Answer {
    fn apply(self, board: &mut Board) {
        match self {
            Self::Score(Ok(score)) => board.record_score(score),
            Self::Score(Err(error)) => board.record_unreachable(error.0),
            Self::Hops(Ok(hops)) => board.record_hops(hops),
            Self::Status(Ok(status)) => board.record_status(*status),
            // As on the page: the score's failure already says webui is
            // not answering, and the last hops stay on screen meanwhile.
            Self::Hops(Err(_)) | Self::Status(Err(_)) => {}
        }
    }
}

/// A reader per endpoint, so a slow `/api/status` (a replica that does not
/// answer its health check costs webui 2 s) never delays the score.
fn spawn_readers(config: &TopConfig, sender: mpsc::Sender<Answer>) -> JoinSet<()> {
    let mut readers = JoinSet::new();
    let webui = config.webui.clone();
    readers.spawn(read_forever(config.interval, sender.clone(), move || {
        let webui = webui.clone();
        async move { Answer::Score(webui_api::score(&webui).await) }
    }));
    let webui = config.webui.clone();
    readers.spawn(read_forever(config.interval, sender.clone(), move || {
        let webui = webui.clone();
        async move { Answer::Hops(webui_api::hops(&webui).await) }
    }));
    let webui = config.webui.clone();
    readers.spawn(read_forever(config.interval, sender, move || {
        let webui = webui.clone();
        async move { Answer::Status(webui_api::status(&webui).await.map(Box::new)) }
    }));
    readers
}

/// `read` every `interval` (later when an answer takes longer), each answer
/// sent on, until nobody listens.
async fn read_forever<F, R>(interval: Duration, answers: mpsc::Sender<Answer>, read: F)
where
    F: Fn() -> R,
    R: Future<Output = Answer>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if answers.send(read().await).await.is_err() {
            return;
        }
    }
}
