//! Logging setup: tracing-subscriber to stderr, plain or JSON.
//!
//! Precedence for the filter: `RUST_LOG` if set, else `[log] level`. For the format:
//! `serve --log-format`, else `[log] format`. Log lines put fields first and end with a
//! capitalised sentence; INFO is for lifecycle and operator actions.
//!
//! Lines are formatted on the calling thread and appended to a shared buffer that a
//! dedicated writer thread drains to stderr in batches. Under load a producer never
//! wakes the writer: the writer takes whatever accumulated, writes it with one
//! `write`, and sleeps [`BATCH_WINDOW`] before the next batch. Waking a thread per line
//! (the earlier channel design) put a futex wake and a context switch on every vend;
//! on two cores that cost more than formatting the line. A producer wakes the writer
//! only when it is idle (an isolated line goes out at once) or when the buffer passes
//! [`HIGH_WATER`]; past [`MAX_BUFFERED`] producers wait for room rather than drop audit
//! lines. The returned [`LogGuard`] writes out what is left when dropped: `main` holds
//! it for the life of the daemon. A `SIGKILL` can lose up to one batch window of lines.
//!
//! Why not `tracing-appender`'s non-blocking writer with lossy mode off: it costs more.
//! `audit_line/writer/*` in `benches/hot_path.rs` (the audit line into `/dev/null` as a
//! file, queued lines paid for) measured, as medians of 10 runs, 542 ns of CPU per line
//! with this writer against 852 ns with the appender and 670 ns with the appender on a
//! `BufWriter` (formatting alone: 508 ns); with two threads emitting, the appender took
//! 1.3–2.9 times as long per line (on a `BufWriter`, 0.8–2.1 times, slower in 9 of 10
//! runs). It allocates every line and wakes its worker per line when that is idle.
//! docs/design.md, "Decisions" has the figures, and the daemon's.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// How long the writer lets lines accumulate after writing a batch.
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// Buffered bytes at which a producer wakes the writer before the window ends.
pub const HIGH_WATER: usize = 256 * 1024;

/// Buffered bytes at which producers wait for the writer (backpressure, not loss).
pub const MAX_BUFFERED: usize = 8 * 1024 * 1024;

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// The writer waits for lines with no deadline; the next line must wake it.
    writer_idle: bool,
}

/// State shared by producers, the writer thread and the guard.
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer.
    wake: Condvar,
    /// Wakes producers waiting for room.
    room: Condvar,
    /// stderr (a buffer in tests). Held while a batch is written, so batches arrive
    /// in order.
    sink: Mutex<Box<dyn Write + Send>>,
}

impl Shared {
    fn new(sink: Box<dyn Write + Send>) -> Self {
        Self {
            pending: Mutex::default(),
            wake: Condvar::new(),
            room: Condvar::new(),
            sink: Mutex::new(sink),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while appending bytes leaves a valid Vec; keep logging.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append(&self, line: &[u8]) {
        let mut pending = self.lock();
        while pending.lines.len() >= MAX_BUFFERED {
            self.wake.notify_one();
            pending = self.room.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
        let before = pending.lines.len();
        pending.lines.extend_from_slice(line);
        let crossed = before < HIGH_WATER && pending.lines.len() >= HIGH_WATER;
        if pending.writer_idle || crossed {
            pending.writer_idle = false;
            self.wake.notify_one();
        }
    }

    /// Takes what is buffered and writes it, in order with every other batch.
    fn write_batch(&self, spare: &mut Vec<u8>) {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut pending = self.lock();
            std::mem::swap(&mut pending.lines, spare);
        }
        self.room.notify_all();
        if !spare.is_empty() {
            let _ = sink.write_all(spare);
            let _ = sink.flush();
        }
        // Keep one batch's capacity for the next swap; give back the rest.
        spare.clear();
        spare.shrink_to(HIGH_WATER);
    }
}

/// The writer thread: waits for lines, writes a batch, lets the next one accumulate.
fn write_lines(shared: Arc<Shared>) {
    let mut spare = Vec::with_capacity(HIGH_WATER);
    loop {
        {
            let mut pending = shared.lock();
            while pending.lines.is_empty() {
                pending.writer_idle = true;
                pending = shared.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
            }
            pending.writer_idle = false;
        }
        shared.write_batch(&mut spare);
        let pending = shared.lock();
        if pending.lines.len() < HIGH_WATER {
            drop(
                shared
                    .wake
                    .wait_timeout(pending, BATCH_WINDOW)
                    .unwrap_or_else(|e| e.into_inner()),
            );
        }
    }
}

/// Starts the writer thread for `sink`.
fn start_writer(sink: Box<dyn Write + Send>) -> std::io::Result<Arc<Shared>> {
    let shared = Arc::new(Shared::new(sink));
    let for_writer = shared.clone();
    std::thread::Builder::new()
        .name("credvend-log".into())
        .spawn(move || write_lines(for_writer))?;
    Ok(shared)
}

/// The subscriber's writer: appends each formatted line to the shared buffer.
pub struct BatchingWriter {
    shared: Arc<Shared>,
}

/// Starts the writer thread for `sink`; returns the subscriber's writer and the guard
/// that writes out what is left.
fn batching(sink: Box<dyn Write + Send>) -> std::io::Result<(BatchingWriter, LogGuard)> {
    let shared = start_writer(sink)?;
    let guard = LogGuard {
        shared: shared.clone(),
    };
    Ok((BatchingWriter { shared }, guard))
}

/// The writer [`init`] builds on stderr, built on `sink` instead (the `audit_line`
/// benchmark compares it with other writers on a real file).
#[cfg(feature = "test-util")]
#[doc(hidden)]
pub fn batching_writer(sink: Box<dyn Write + Send>) -> std::io::Result<(BatchingWriter, LogGuard)> {
    batching(sink)
}

/// One line on its way to the buffer.
pub struct BufferedLine<'a> {
    shared: &'a Shared,
}

impl Write for BufferedLine<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        // tracing-subscriber writes each formatted event with one `write_all`.
        self.shared.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchingWriter {
    type Writer = BufferedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        BufferedLine {
            shared: &self.shared,
        }
    }
}

/// Writes out buffered log lines when dropped; hold it until the process exits.
pub struct LogGuard {
    shared: Arc<Shared>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.write_batch(&mut Vec::new());
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
    let (writer, guard) = batching(Box::new(std::io::stderr()))
        .map_err(|e| format!("cannot start the log writer thread: {e}"))?;
    // `try_init` also routes the `log` crate's records (notify's) into tracing.
    subscriber(filter, format, writer)
        .try_init()
        .map(|()| guard)
        .map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// The subscriber [`init`] installs, writing to `writer` (the micro-benchmarks format
/// the audit line with it).
///
/// Never coloured: tracing-subscriber is built without its `ansi` feature, because its
/// styling machinery runs for every field of every line even with colour off (30 % of
/// the audit line's cost, `benches/hot_path.rs`), and a daemon's lines go to journald
/// or a file. Control characters in values are still escaped (the crate's ANSI
/// sanitisation does not depend on that feature).
pub fn subscriber<W>(
    filter: EnvFilter,
    format: LogFormat,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .with_target(true);
    match format {
        LogFormat::Plain => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CapturedOutput as Captured;

    #[test]
    fn an_isolated_line_is_written_without_waiting_for_more() {
        let sink = Captured::default();
        let shared = start_writer(Box::new(sink.clone())).unwrap();
        shared.append(b"one line\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.text().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.text(), "one line\n");
    }

    #[test]
    fn lines_from_many_threads_all_arrive_whole_and_in_order_per_thread() {
        let sink = Captured::default();
        let shared = start_writer(Box::new(sink.clone())).unwrap();
        let guard = LogGuard {
            shared: shared.clone(),
        };
        // Enough to pass HIGH_WATER and MAX_BUFFERED several times over.
        let per_thread = 60_000;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        let line = format!("thread={t} seq={i:06} {}\n", "x".repeat(40));
                        shared.append(line.as_bytes());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = sink.text();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let t: usize = line[7..8].parse().unwrap();
            let seq: usize = line[13..19].parse().unwrap();
            assert_eq!(seq, next[t], "thread {t} out of order or torn: {line}");
            next[t] += 1;
        }
        assert_eq!(next, [per_thread; 4]);
    }
}
