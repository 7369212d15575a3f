//! Logging setup: tracing-subscriber to stderr, plain or JSON.
//!
//! Precedence for the filter: `RUST_LOG` if set, else `[log] level`. For the format:
//! `serve --log-format`, else `[log] format`. Log lines put fields first and end with a
//! capitalised sentence; INFO is for lifecycle and operator actions.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::config::LogFormat;

/// Installs the global subscriber. Returns an error if `level` is not a valid filter or
/// a subscriber is already installed.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(directives)
            .map_err(|e| format!("RUST_LOG is not a valid filter: {e}"))?,
        _ => EnvFilter::try_new(level).map_err(|e| format!("log.level: {e}"))?,
    };
    let writer = BoxMakeWriter::new(std::io::stderr);
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
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}
