//! A [`Snapshot`] as lines of text for an 80x24 terminal (or larger): the
//! page's figures, a chart of hashes/s, and its table of hops. Plain text,
//! no colour: what it means reads the same on a projector and in a log;
//! the only characters beyond ASCII are the chart's blocks.
//!
//! Pure functions: the terminal (`super::terminal`) writes the lines,
//! `--once` prints them.

use super::board::{HopRow, HopVerdict, Snapshot, hop_verdict};
use std::time::Duration;

/// The chart's levels within one line, from empty to full.
const BLOCKS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Width of the chart's scale, left of its axis.
const SCALE_WIDTH: usize = 7;

/// Lines that are neither chart nor table rows nor message: title,
/// figures, mesh, time axis, blank, heading, verdict, table header.
const FIXED_LINES: usize = 8;

/// The table's first column: `rng`, `hasher`, `redis`.
const HOP_WIDTH: usize = 6;

/// The table's numbers, right of the state, right-aligned: each header and
/// the width it keeps, that of the widest value it usually holds (`12.3 ms`,
/// `1000%`), so the columns stay put from one reading to the next.
const NUMBERS: [(&str, usize); 6] = [
    ("calls/s", 7),
    ("p50", 7),
    ("p99", 7),
    ("waiting", 7),
    ("load", 5),
    ("share", 5),
];

/// The replica column is never narrower than this (an address and port);
/// a narrower screen cuts the line's end instead.
const REPLICA_MIN: usize = 16;

/// A message longer than the screen is wide wraps onto this many lines.
const MESSAGE_LINES: usize = 3;

/// The chart's height bounds, and its height when the screen has no bound.
const CHART_MIN: usize = 3;
const CHART_MAX: usize = 8;
const CHART_UNBOUNDED: usize = 5;

/// Where the lines go.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub width: usize,
    /// `None`: as many lines as the reading needs (`--once`).
    pub height: Option<usize>,
    /// The live screen: the title says how to quit.
    pub live: bool,
    /// One chart column per reading.
    pub interval: Duration,
}

/// The whole screen, each line at most `frame.width` characters.
pub fn render(snapshot: &Snapshot, frame: &Frame) -> Vec<String> {
    let layout = Layout::new(&snapshot.hops, frame.width);
    let table = table_lines(&snapshot.hops, &layout);
    let mut message = wrap(&message(snapshot, frame.live), frame.width);
    message.truncate(MESSAGE_LINES);
    let chart_height = match frame.height {
        Some(height) => height
            .saturating_sub(FIXED_LINES + message.len() + table.len())
            .clamp(CHART_MIN, CHART_MAX),
        None => CHART_UNBOUNDED,
    };
    let mut lines = vec![title(snapshot, frame), figures(snapshot), mesh(snapshot)];
    lines.extend(message);
    lines.extend(chart(snapshot, frame, chart_height));
    lines.push(String::new());
    let window = snapshot.hops_window_seconds.unwrap_or(5.0);
    lines.push(format!(
        "Where the time goes: each hop, as its servers measure it (last {window} s)"
    ));
    lines.push(verdict(&snapshot.hops));
    lines.push(layout.line("hop", "replica", "state", NUMBERS.map(|(header, _)| header)));
    let room = frame
        .height
        .map_or(usize::MAX, |h| h.saturating_sub(lines.len()));
    if table.len() > room {
        let shown = room.saturating_sub(1);
        let hidden = table.len() - shown;
        lines.extend(table.into_iter().take(shown));
        lines.push(format!(
            "… {hidden} more line(s): a taller terminal shows them"
        ));
    } else {
        lines.extend(table);
    }
    if let Some(height) = frame.height {
        lines.truncate(height);
    }
    lines.iter().map(|line| clip(line, frame.width)).collect()
}

fn title(snapshot: &Snapshot, frame: &Frame) -> String {
    let left = format!("DockerCoin Miner · {}", snapshot.webui);
    if !frame.live {
        return left;
    }
    let right = "q or Ctrl-C: quit";
    let gap = frame
        .width
        .saturating_sub(left.chars().count() + right.chars().count())
        .max(2);
    format!("{left}{}{right}", " ".repeat(gap))
}

fn figures(snapshot: &Snapshot) -> String {
    let rate = snapshot.hashes_per_second.map_or("–".to_owned(), |r| {
        if r < 100.0 {
            format!("{r:.1}")
        } else {
            thousands(r)
        }
    });
    let count = |n: Option<u64>| n.map_or("–".to_owned(), |n| thousands(n as f64));
    format!(
        "hashes/s {rate:<12} hashes {:<16} coins {}",
        count(snapshot.hashes),
        count(snapshot.coins)
    )
}

fn mesh(snapshot: &Snapshot) -> String {
    let replicas = snapshot.replicas;
    let mut line = format!(
        "replicas: rng {}, hasher {}   policy: {}",
        replicas.rng,
        replicas.hasher,
        snapshot.policy.as_deref().unwrap_or("–")
    );
    if let Some(queue) = snapshot.rng_queue {
        line.push_str(&format!("   waiting in rng: {queue}"));
    }
    line
}

/// Why the numbers may be stale, or nothing.
fn message(snapshot: &Snapshot, live: bool) -> String {
    if let Some(reason) = &snapshot.unreachable {
        let retrying = if live { ", retrying" } else { "" };
        return format!(
            "webui at {} unreachable: {reason}{retrying}",
            snapshot.webui
        );
    }
    if let Some(error) = &snapshot.score_error {
        return format!("no score: {error}");
    }
    String::new()
}

/// The history as bars, newest on the right, over a scale from 0 to a
/// little above the highest rate (as the page's chart), then the time axis.
fn chart(snapshot: &Snapshot, frame: &Frame, height: usize) -> Vec<String> {
    let columns = frame.width.saturating_sub(SCALE_WIDTH + 1).max(1);
    let history = &snapshot.history;
    let shown = &history[history.len().saturating_sub(columns)..];
    let highest = shown
        .iter()
        .map(|p| p.hashes_per_second)
        .fold(1.0, f64::max);
    let top = highest * 1.15;
    let eighths: Vec<usize> = shown
        .iter()
        .map(|p| ((p.hashes_per_second / top) * (height * 8) as f64).round() as usize)
        .collect();
    let mut lines = Vec::with_capacity(height + 1);
    for level in (0..height).rev() {
        let scale = match level {
            _ if level + 1 == height => scale_label(top),
            0 => scale_label(0.0),
            _ => String::new(),
        };
        let bars: String = eighths
            .iter()
            .map(|&e| BLOCKS[e.saturating_sub(level * 8).min(8)])
            .collect();
        let pad = " ".repeat(columns - bars.chars().count());
        lines.push(format!("{scale:>w$}│{pad}{bars}", w = SCALE_WIDTH));
    }
    let span = frame.interval.as_secs_f64() * columns as f64;
    let left = format!("-{} s", span.round());
    let right = "now";
    let gap = columns.saturating_sub(left.len() + right.len());
    lines.push(format!(
        "{:w$} {left}{}{right}",
        "",
        " ".repeat(gap),
        w = SCALE_WIDTH
    ));
    lines
}

fn scale_label(rate: f64) -> String {
    if rate < 10.0 {
        format!("{rate:.1} ")
    } else {
        format!("{} ", thousands(rate))
    }
}

/// The page's one line for the back of the room.
fn verdict(rows: &[HopRow]) -> String {
    match hop_verdict(rows) {
        None => String::new(),
        Some(HopVerdict::Even(worst, next)) => format!(
            "No hop stands out: {} and {} take about as long ({}, {}).",
            worst.hop,
            next.hop,
            ms(worst.p50_ms),
            ms(next.p50_ms)
        ),
        Some(HopVerdict::Slow(worst)) => {
            let waiting = match worst.queue {
                Some(queue) if queue > 0 => format!(", {queue} requests waiting"),
                _ => String::new(),
            };
            format!(
                "{} is the slow hop: half its calls take over {}{waiting}.",
                worst.hop,
                ms(worst.p50_ms)
            )
        }
    }
}

/// The table's column widths on this screen: the state as wide as the
/// widest state shown, the replica (address and instance) as wide as the
/// screen leaves, no wider than the widest replica.
struct Layout {
    replica: usize,
    state: usize,
}

impl Layout {
    fn new(rows: &[HopRow], width: usize) -> Self {
        let state = rows
            .iter()
            .map(|r| r.state.chars().count())
            .fold("state".len(), usize::max);
        let numbers: usize = NUMBERS.iter().map(|(_, w)| w + 1).sum();
        let room = width.saturating_sub(HOP_WIDTH + 1 + 1 + state + numbers);
        let widest = rows
            .iter()
            .map(|r| replica_text(r).chars().count())
            .fold("replica".len(), usize::max);
        Self {
            replica: room.min(widest).max(REPLICA_MIN),
            state,
        }
    }

    /// One line of the table, its text cut to fit each column.
    fn line(&self, hop: &str, replica: &str, state: &str, numbers: [&str; 6]) -> String {
        let mut line = format!(
            "{hop:<h$} {:<r$} {state:<s$}",
            clip(replica, self.replica),
            h = HOP_WIDTH,
            r = self.replica,
            s = self.state,
        );
        for (value, (_, width)) in numbers.iter().zip(NUMBERS) {
            line.push_str(&format!(" {value:>width$}"));
        }
        line.trim_end().to_owned()
    }
}

/// A replica's address, and its instance when known.
fn replica_text(row: &HopRow) -> String {
    match &row.instance {
        Some(instance) => format!("{} ({instance})", row.replica),
        None => row.replica.clone(),
    }
}

/// Fewer characters of an instance than this say nothing: the address
/// alone is shown instead.
const INSTANCE_MIN: usize = 4;

/// [`replica_text`] in `width` characters: the instance cut when it must
/// be, left out when too little of it would show.
fn replica_in(row: &HopRow, width: usize) -> String {
    let text = replica_text(row);
    // The address, " (", the instance's first characters, then "…".
    let cut = row.replica.chars().count() + " (".len() + INSTANCE_MIN + 1;
    if text.chars().count() <= width || cut <= width {
        clip(&text, width)
    } else {
        clip(&row.replica, width)
    }
}

/// Each row, and under it what the replica injects and why it fails.
fn table_lines(rows: &[HopRow], layout: &Layout) -> Vec<String> {
    let mut lines = Vec::new();
    for row in rows {
        let rate = row
            .calls_per_second
            .map_or("–".to_owned(), |r| format!("{r:.1}"));
        let queue = row.queue.map_or(String::new(), |q| q.to_string());
        // Redis sends no load report: blank, as its queue (the page's).
        let (load, share) = match row.hop {
            "redis" => (String::new(), String::new()),
            _ => (percent(row.utilization), percent(row.share)),
        };
        lines.push(layout.line(
            row.hop,
            &replica_in(row, layout.replica),
            &row.state,
            [
                &rate,
                &ms(row.p50_ms),
                &ms(row.p99_ms),
                &queue,
                &load,
                &share,
            ],
        ));
        if let Some(faults) = &row.faults {
            lines.push(format!("       injected: {faults}"));
        }
        if let Some(error) = &row.error {
            lines.push(format!("       error: {error}"));
        }
    }
    lines
}

/// The page's `percent()`: a fraction as a whole percentage (`1000%`: ten
/// times what the replica can take), `–` when webui has none.
fn percent(value: Option<f64>) -> String {
    match value {
        None => "–".to_owned(),
        Some(v) => format!("{}%", (v * 100.0).round()),
    }
}

/// The page's `ms()`: whole milliseconds from 100 on, one decimal from 1,
/// microseconds below.
fn ms(value: Option<f64>) -> String {
    match value {
        None => "–".to_owned(),
        Some(v) if v >= 100.0 => format!("{} ms", v.round()),
        Some(v) if v >= 1.0 => format!("{v:.1} ms"),
        Some(v) => format!("{} µs", (v * 1000.0).round()),
    }
}

/// `1234567.8` as `1,234,568`, as the page writes numbers.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.round().max(0.0));
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `text` in lines of at most `width` characters, cut between words where
/// it can be; one empty line for no text.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    // A word longer than the line is clipped by `render`.
    lines.push(line);
    lines
}

/// At most `width` characters, the last one `…` when cut.
fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(width.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::board::{HistoryPoint, Replicas};

    fn frame(height: Option<usize>) -> Frame {
        Frame {
            width: 80,
            height,
            live: true,
            interval: Duration::from_secs(1),
        }
    }

    fn hop(hop: &'static str, replica: &str, p50: f64, queue: Option<u64>) -> HopRow {
        HopRow {
            hop,
            replica: replica.into(),
            instance: Some(format!("host:{}", &replica[replica.len() - 4..])),
            state: "SERVING".into(),
            calls_per_second: Some(1.3),
            p50_ms: Some(p50),
            p99_ms: Some(p50 * 1.3),
            queue,
            ..HopRow::default()
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            webui: "http://localhost:8000".into(),
            hashes: Some(1_234_567),
            coins: Some(77),
            hashes_per_second: Some(9.8),
            history: (0..100)
                .map(|i| HistoryPoint {
                    t: f64::from(i),
                    hashes_per_second: f64::from(i % 12),
                })
                .collect(),
            hops_window_seconds: Some(5.0),
            hops: vec![
                // rng's one lane, ten waiting: ten times full.
                HopRow {
                    utilization: Some(10.04),
                    ..hop("rng", "127.0.0.1:8001", 750.0, Some(9))
                },
                HopRow {
                    utilization: Some(0.123),
                    share: Some(0.6),
                    ..hop("hasher", "127.0.0.1:8002", 100.0, None)
                },
                HopRow {
                    faults: Some("+50ms for 100%".into()),
                    utilization: Some(0.2),
                    share: Some(0.4),
                    ..hop("hasher", "127.0.0.1:8012", 0.4, None)
                },
            ],
            slow_hop: Some("rng".into()),
            rng_queue: Some(9),
            replicas: Replicas { rng: 1, hasher: 2 },
            policy: Some("round_robin".into()),
            ..Snapshot::default()
        }
    }

    #[test]
    fn it_fits_80_by_24_and_says_what_the_page_says() {
        let lines = render(&snapshot(), &frame(Some(24)));
        assert!(lines.len() <= 24, "{lines:#?}");
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{lines:#?}");
        let text = lines.join("\n");
        for expected in [
            "hashes/s 9.8",
            "hashes 1,234,567",
            "coins 77",
            "replicas: rng 1, hasher 2   policy: round_robin   waiting in rng: 9",
            "rng is the slow hop: half its calls take over 750 ms, 9 requests waiting.",
            "hop    replica               state   calls/s     p50     p99 waiting  load share",
            // The load rng reports, no weighted share (it is alone)...
            "rng    127.0.0.1:8001 (host… SERVING     1.3  750 ms  975 ms       9 1004%     –",
            // ... hasher's two replicas, each with its share.
            "hasher 127.0.0.1:8002 (host… SERVING     1.3  100 ms  130 ms           12%   60%",
            "400 µs",
            "injected: +50ms for 100%",
            "q or Ctrl-C: quit",
            "-72 s",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
    }

    #[test]
    fn the_replica_takes_the_width_the_screen_leaves() {
        // A wide terminal: each replica whole, the columns after it closer.
        let wide = Frame {
            width: 120,
            ..frame(None)
        };
        let text = render(&snapshot(), &wide).join("\n");
        assert!(
            text.contains(
                "rng    127.0.0.1:8001 (host:8001) SERVING     1.3  750 ms  975 ms       9 1004%     –"
            ),
            "{text}"
        );
        // A replica that does not serve widens the state: the replica
        // narrows, the line still fits 80 columns with its load and share.
        let mut snapshot = snapshot();
        snapshot.hops[1].state = "NOT_SERVING".into();
        snapshot.hops.push(HopRow {
            hop: "redis",
            replica: "redis://127.0.0.1:6379".into(),
            state: "UP".into(),
            calls_per_second: Some(9.4),
            p50_ms: Some(0.01),
            p99_ms: Some(0.09),
            ..HopRow::default()
        });
        let lines = render(&snapshot, &frame(None));
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{lines:#?}");
        let text = lines.join("\n");
        for expected in [
            "hop    replica           state       calls/s     p50     p99 waiting  load share",
            // Too little room for the instance: the address alone.
            "hasher 127.0.0.1:8002    NOT_SERVING     1.3  100 ms  130 ms           12%   60%",
            // Redis reports no load: blank, as its queue.
            "redis  redis://127.0.0.… UP              9.4   10 µs   90 µs",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
        assert!(lines.iter().any(|l| l.ends_with("   90 µs")), "{lines:#?}");
    }

    #[test]
    fn one_worker_names_no_slow_hop() {
        let rows = [
            hop("rng", "127.0.0.1:8001", 104.0, Some(0)),
            hop("hasher", "127.0.0.1:8002", 101.0, None),
        ];
        assert_eq!(
            verdict(&rows),
            "No hop stands out: rng and hasher take about as long (104 ms, 101 ms)."
        );
    }

    #[test]
    fn a_short_terminal_says_what_it_hides() {
        let lines = render(&snapshot(), &frame(Some(15)));
        assert_eq!(lines.len(), 15, "{lines:#?}");
        assert!(lines[14].contains("more line(s)"), "{lines:#?}");
    }

    #[test]
    fn unreachable_is_said_and_retried() {
        let snapshot = Snapshot {
            webui: "http://localhost:8000".into(),
            unreachable: Some("cannot connect to localhost:8000: refused".into()),
            ..Snapshot::default()
        };
        let lines = render(&snapshot, &frame(Some(24)));
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{lines:#?}");
        // Wrapped, not cut: the reason and the retry are on screen.
        let text = lines.join(" ");
        assert!(
            text.contains(
                "webui at http://localhost:8000 unreachable: cannot connect to \
                 localhost:8000: refused, retrying"
            ),
            "{text}"
        );
    }

    #[test]
    fn numbers_read_as_on_the_page() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(ms(Some(0.25)), "250 µs");
        assert_eq!(ms(Some(12.34)), "12.3 ms");
        assert_eq!(ms(Some(750.4)), "750 ms");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(percent(Some(10.0)), "1000%");
        assert_eq!(percent(Some(0.604)), "60%");
        assert_eq!(percent(Some(0.0)), "0%");
        assert_eq!(percent(None), "–");
    }
}
