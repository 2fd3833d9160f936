//! Log setup shared by the binaries: human-readable lines on stderr, JSON lines in a file.
//!
//! The file is JSON so that `tsc ... tail` can show either the message or every field, and so
//! tests can parse it. The library itself only emits `tracing` events.

use crate::error::{Error, Result};
use std::path::Path;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Log lines buffered between the program and the file writer thread.
pub const LOG_BUFFER_LINES: usize = 4096;

/// Installs the global subscriber. Logs go to stderr and, unless `dir` is empty, to
/// `dir/file_name` when `dir` is given (the directory is created). Keep the returned guard alive until exit: it
/// flushes the file. The level comes from `RUST_LOG` (default `info`).
pub fn init(dir: Option<&Path>, file_name: &str) -> Result<Option<WorkerGuard>> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(filter());
    let Some(dir) = dir else {
        tracing_subscriber::registry().with(stderr).init();
        return Ok(None);
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(file_name);
    // Open once here so an unwritable path is reported now, with its name, not swallowed later.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    // The default buffer preallocates 128k lines (4 MiB); a client logs about one line a second.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(false)
        .finish(tracing_appender::rolling::never(dir, file_name));
    let file = fmt::layer()
        .json()
        .with_writer(writer)
        .with_target(false)
        .with_current_span(false)
        .with_filter(filter());
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
    Ok(Some(guard))
}
