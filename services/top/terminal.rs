//! The terminal while `top` draws on it: raw mode (keys arrive one by one,
//! Ctrl-C as a key), the alternate screen (the shell's screen comes back
//! as it was), the cursor hidden. [`Terminal`] is the guard: dropped on
//! `q`, Ctrl-C, an error or a panic's unwinding, it restores all three; a
//! panic hook restores them before the panic's message is printed, so the
//! message is readable and the shell usable.

use crossterm::{
    cursor::{Hide, MoveTo, Show},
    execute, queue,
    style::Print,
    terminal::{
        Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode,
        enable_raw_mode,
    },
};
use std::{
    io::{self, Write},
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
};

/// Whether the terminal is in `top`'s state: restoring twice (the panic
/// hook, then the guard's drop while unwinding) must do it once.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The size used when the terminal does not say (a pseudo-terminal nobody
/// sized): the classic one, which the screen is laid out for.
pub const FALLBACK_SIZE: (u16, u16) = (80, 24);

/// The terminal in raw mode on the alternate screen, until dropped.
pub struct Terminal {
    _private: (),
}

impl Terminal {
    /// Raw mode, the alternate screen, no cursor; undone when dropped.
    pub fn enter() -> io::Result<Self> {
        install_panic_hook();
        enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        // From here on the guard exists: an error below still restores.
        let terminal = Self { _private: () };
        execute!(
            io::stdout(),
            EnterAlternateScreen,
            Hide,
            Clear(ClearType::All)
        )?;
        Ok(terminal)
    }

    /// Columns and rows, or [`FALLBACK_SIZE`].
    pub fn size() -> (u16, u16) {
        match crossterm::terminal::size() {
            Ok((columns, rows)) if columns > 0 && rows > 0 => (columns, rows),
            _ => FALLBACK_SIZE,
        }
    }

    /// Replaces the screen with `lines`, in one write (no flicker).
    pub fn draw(&mut self, lines: &[String]) -> io::Result<()> {
        let mut frame = Vec::new();
        for (row, line) in (0u16..).zip(lines) {
            queue!(
                frame,
                MoveTo(0, row),
                Print(line),
                Clear(ClearType::UntilNewLine)
            )?;
        }
        let below = u16::try_from(lines.len()).unwrap_or(u16::MAX);
        queue!(frame, MoveTo(0, below), Clear(ClearType::FromCursorDown))?;
        let mut stdout = io::stdout().lock();
        stdout.write_all(&frame)?;
        stdout.flush()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        restore();
    }
}

/// Cursor, main screen, cooked mode: as the shell left them. Errors are
/// ignored: there is nothing better to do with a terminal that is gone.
fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = execute!(io::stdout(), Show, LeaveAlternateScreen);
        let _ = disable_raw_mode();
    }
}

/// Restores the terminal, then lets the previous hook print the panic.
fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}
