//! Logging setup: tracing-subscriber to stderr, plain or JSON.
//!
//! Precedence for the filter: `RUST_LOG` if set, else `[log] level`. For the format:
//! `serve --log-format`, else `[log] format`. Log lines put fields first and end with a
//! capitalised sentence; INFO is for lifecycle and operator actions.
//!
//! Lines are formatted on the calling thread and handed to a dedicated writer thread
//! (a bounded queue of [`QUEUE_LINES`]; a full queue blocks the caller instead of
//! dropping audit lines), which writes them to stderr through a buffer and flushes
//! whenever its queue is empty. Under load that is one `write` per batch instead of one per request,
//! which is most of what the INFO audit line of every vend used to cost (see
//! README, Performance). The returned [`LogGuard`] flushes on drop: `main` holds it for
//! the life of the daemon. A `SIGKILL` can lose the lines still queued.

use std::io::IsTerminal;

use std::io::{BufWriter, Write};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Log lines that may wait for the writer thread before logging blocks.
pub const QUEUE_LINES: usize = 16 * 1024;

/// How long [`LogGuard`]'s drop waits for queued lines to reach stderr.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

enum Message {
    Line(Vec<u8>),
    /// Flush everything queued before this, then answer.
    Flush(SyncSender<()>),
}

/// The subscriber's writer: hands each formatted line to the writer thread.
struct QueuedStderr {
    queue: SyncSender<Message>,
}

/// One line on its way to the queue.
struct QueuedLine<'a> {
    queue: &'a SyncSender<Message>,
}

impl Write for QueuedLine<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        // tracing-subscriber writes each formatted event with one `write_all`.
        if self.queue.send(Message::Line(line.to_vec())).is_err() {
            // The writer thread is gone: write directly rather than lose the line.
            std::io::stderr().write_all(line)?;
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for QueuedStderr {
    type Writer = QueuedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine { queue: &self.queue }
    }
}

/// Writes queued lines to stderr, flushing whenever the queue runs empty.
fn write_lines(queue: Receiver<Message>) {
    let mut out = BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let handle = |message: Message, out: &mut BufWriter<std::io::Stderr>| match message {
        Message::Line(line) => {
            let _ = out.write_all(&line);
        }
        Message::Flush(done) => {
            let _ = out.flush();
            let _ = done.try_send(());
        }
    };
    while let Ok(message) = queue.recv() {
        handle(message, &mut out);
        while let Ok(message) = queue.try_recv() {
            handle(message, &mut out);
        }
        let _ = out.flush();
    }
}

/// Flushes queued log lines when dropped; hold it until the process exits.
pub struct LogGuard {
    queue: SyncSender<Message>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let (done, flushed) = std::sync::mpsc::sync_channel(1);
        match self.queue.try_send(Message::Flush(done)) {
            Ok(()) => {
                let _ = flushed.recv_timeout(FLUSH_WAIT);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Installs the global subscriber. Returns an error if `level` is not a valid filter or
/// a subscriber is already installed.
pub fn init(level: &str, format: LogFormat) -> Result<LogGuard, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(directives)
            .map_err(|e| format!("RUST_LOG is not a valid filter: {e}"))?,
        _ => EnvFilter::try_new(level).map_err(|e| format!("log.level: {e}"))?,
    };
    let (queue, lines) = std::sync::mpsc::sync_channel(QUEUE_LINES);
    std::thread::Builder::new()
        .name("credvend-log".into())
        .spawn(move || write_lines(lines))
        .map_err(|e| format!("cannot start the log writer thread: {e}"))?;
    let guard = LogGuard {
        queue: queue.clone(),
    };
    let writer = QueuedStderr { queue };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Colour only for a person at a terminal; escape codes in journald or a log
        // file are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let result = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result
        .map(|()| guard)
        .map_err(|e| format!("cannot install the log subscriber: {e}"))
}
