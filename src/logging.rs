//! Log setup shared by the binaries: human-readable lines on stderr, JSON lines in a file.
//!
//! The file is JSON so that `tsc ... tail` can show either the message or every field, and so
//! tests can parse it. The library itself only emits `tracing` events.

use crate::error::{Error, Result};
use std::path::Path;
use std::time::Duration;
use tracing::warn;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Log lines buffered between the program and the file writer thread.
pub const LOG_BUFFER_LINES: usize = 4096;

/// The filter for `RUST_LOG` (`None`: unset): its directives, or `info`, and the AMQP library
/// off unless they name it; a spec that does not parse gives [`DEFAULT_FILTER`].
pub fn filter_of(rust_log: Option<&str>) -> EnvFilter {
    let spec = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    let spec = if spec.contains("lapin") {
        spec.to_string()
    } else {
        format!("{spec},lapin=off")
    };
    EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// Log levels unless `RUST_LOG` says otherwise: `info`, without the AMQP library's own lines. A
/// broker restart made it write about fifty ERROR lines (every channel of every connection, each
/// a restatement of the one error our session loop logs once with its consequence), and it logs
/// a broker's returned message as a WARN with raw frame bytes under a second `message` key,
/// where the replica already counts and handles the return. They stay off whatever level
/// `RUST_LOG` sets, unless it names `lapin` (`RUST_LOG=info,lapin=debug` brings them back).
pub const DEFAULT_FILTER: &str = "info,lapin=off";

/// Installs the global subscriber. Logs go to stderr and, unless `dir` is empty, to
/// `dir/file_name` when `dir` is given (the directory is created). Keep the returned guard alive until exit: it
/// flushes the file. The level comes from `RUST_LOG` (default [`DEFAULT_FILTER`]).
pub fn init(dir: Option<&Path>, file_name: &str) -> Result<Option<WorkerGuard>> {
    let filter = || filter_of(std::env::var("RUST_LOG").ok().as_deref());
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

/// At most this many rejected messages are logged in detail per [`REJECT_LOG_WINDOW`].
pub const REJECT_LOG_BURST: u32 = 10;
/// Window of the reject log limit.
pub const REJECT_LOG_WINDOW: Duration = Duration::from_secs(10);

/// Logs the first few rejected or ignored messages of each window and a count of the rest, so
/// a flood cannot fill the disk. The count of the rest is logged when the window ends, with
/// the window's real length, by [`RejectLog::flush`], which every loop that rejects calls on a
/// timer ([`RejectLog::window`] is its period). Used by server workers, the reference task,
/// the election driver and clients.
pub struct RejectLog {
    /// What rejects: `worker 2`, `reference`.
    source: String,
    window_start: tokio::time::Instant,
    logged: u32,
    suppressed: u64,
}

impl RejectLog {
    pub fn new(source: String) -> Self {
        RejectLog {
            source,
            window_start: tokio::time::Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    /// How often [`RejectLog::flush`] should be called.
    pub fn window() -> Duration {
        REJECT_LOG_WINDOW
    }

    /// A rejected message of `len` bytes.
    pub fn record(&mut self, e: &crate::core::protocol::DecodeError, len: usize) {
        self.note(e.kind(), &format!("rejected message: {e}"), len);
    }

    /// Anything refused or ignored, with a short stable `reason` and a line for people.
    pub fn note(&mut self, reason: &str, what: &str, len: usize) {
        self.flush();
        if self.logged < REJECT_LOG_BURST {
            self.logged += 1;
            warn!(source = %self.source, reason, bytes = len, "{what}");
        } else {
            self.suppressed += 1;
        }
    }

    /// Ends the window if it is over: says how many were not logged during it, and opens a
    /// new one.
    pub fn flush(&mut self) {
        let elapsed = self.window_start.elapsed();
        if elapsed < REJECT_LOG_WINDOW {
            return;
        }
        if self.suppressed > 0 {
            warn!(
                source = %self.source,
                suppressed = self.suppressed,
                "{} more messages were refused than logged in the last {:.0}s",
                self.suppressed,
                elapsed.as_secs_f64()
            );
        }
        self.window_start = tokio::time::Instant::now();
        self.logged = 0;
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_amqp_library_is_off_unless_rust_log_names_it() {
        // The directives, in whatever order the filter prints them.
        let set = |spec: &str| -> std::collections::BTreeSet<String> {
            spec.split(',').map(str::to_string).collect()
        };
        let shown = |rust_log: Option<&str>| set(&filter_of(rust_log).to_string());
        assert_eq!(shown(None), set("info,lapin=off"));
        assert_eq!(shown(Some("")), set("info,lapin=off"));
        assert_eq!(shown(Some("debug")), set("debug,lapin=off"));
        assert_eq!(shown(Some("info,lapin=debug")), set("info,lapin=debug"));
        assert_eq!(shown(Some("info,[{bad")), set(DEFAULT_FILTER));
    }

    #[tokio::test(start_paused = true)]
    async fn logs_a_burst_then_counts_and_flushes_on_time() {
        let mut log = RejectLog::new("test".into());
        for _ in 0..25 {
            log.note("malformed", "rejected", 3);
        }
        assert_eq!((log.logged, log.suppressed), (REJECT_LOG_BURST, 15));
        log.flush();
        assert_eq!(log.suppressed, 15, "the window is not over yet");
        tokio::time::advance(REJECT_LOG_WINDOW).await;
        log.flush();
        assert_eq!(
            (log.logged, log.suppressed),
            (0, 0),
            "flushed without a new reject"
        );
    }
}
