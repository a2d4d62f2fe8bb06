//! A pseudo-terminal for the `dockercoins` binary: what a user's terminal
//! is to `dockercoins top`. The test holds the master side: it sizes the
//! terminal, types keys into it, and keeps every byte the child draws; it
//! also keeps the slave side open to read the terminal's modes, so "the
//! terminal is restored" is checked on the terminal itself, not only on the
//! escape sequences.
//!
//! rustix (already in the dependency tree, through clap and crossterm) opens
//! the pty with safe calls: no `unsafe`, no tmux or script(1) to install. The
//! child gets the slave as stdin, stdout and stderr but not as its
//! controlling terminal (that takes setsid and TIOCSCTTY before exec, which
//! is `unsafe` in a `pre_exec`); crossterm works from stdin and stdout
//! then, as it does for any program started with its standard streams on a
//! terminal.

use rustix::{
    pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt},
    termios::{LocalModes, Winsize, tcgetattr, tcsetwinsize},
};
use std::{
    fs::File,
    io::{Read, Write},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::process::{Child, Command};

/// A pseudo-terminal, its output collected from the moment it opens.
pub struct Pty {
    master: File,
    slave: File,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    /// A `columns` x `rows` terminal.
    pub fn open(columns: u16, rows: u16) -> Self {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .expect("cannot open a pseudo-terminal");
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let path = ptsname(&master, Vec::new()).unwrap();
        let slave = File::options()
            .read(true)
            .write(true)
            .open(path.to_str().unwrap())
            .unwrap();
        let size = Winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        tcsetwinsize(&master, size).unwrap();
        let master = File::from(master);
        let output = Arc::<Mutex<Vec<u8>>>::default();
        let mut reader = master.try_clone().unwrap();
        let kept = output.clone();
        // Blocking reads, on a thread of their own; they end (EIO) once
        // every slave side is closed: the child's and this one's.
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read @ 1..) = reader.read(&mut buffer) {
                kept.lock().unwrap().extend_from_slice(&buffer[..read]);
            }
        });
        Self {
            master,
            slave,
            output,
        }
    }

    /// `dockercoins <args>` with this terminal as its stdin, stdout and
    /// stderr; killed when dropped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        let slave = || Stdio::from(self.slave.try_clone().unwrap());
        Command::new(env!("CARGO_BIN_EXE_dockercoins"))
            .args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("TERM", "xterm-256color")
            .stdin(slave())
            .stdout(slave())
            .stderr(slave())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// Types `keys`, as a user at this terminal would.
    pub fn send(&self, keys: &[u8]) {
        (&self.master).write_all(keys).unwrap();
    }

    /// Everything drawn so far, escape sequences included.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until `done` holds for the output; says `what` was
    /// awaited, and what was drawn, when it does not.
    pub async fn wait_for(&self, what: &str, within: Duration, done: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if done(&self.output()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not on the terminal within {within:?}; it shows:\n{:?}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The terminal's local modes now: `ICANON` and `ECHO` off in raw mode,
    /// on in the cooked mode a shell expects.
    pub fn local_modes(&self) -> LocalModes {
        tcgetattr(&self.slave).unwrap().local_modes
    }
}
