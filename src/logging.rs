//! Structured logs with tracing: JSON lines for log shippers or a human format for a
//! terminal. RUST_LOG overrides the configured level.
//!
//! Lines are handed to a writer thread through a bounded queue (tracing-appender's
//! non-blocking writer), because `call.admission` and other events are emitted on the SIP
//! path: a slow terminal or a full pipe must never stall a message. When the queue is full a
//! line is dropped rather than waited for; the count is kept by [`LogGuard::dropped`].

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines queued for the writer thread at most.
const QUEUE_LINES: usize = 65_536;

/// Keeps the writer thread alive; dropping it flushes what is queued (at exit).
pub struct LogGuard {
    _worker: WorkerGuard,
    dropped: ErrorCounter,
}

impl LogGuard {
    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> usize {
        self.dropped.dropped_lines()
    }
}

/// Installs the global subscriber writing to stderr. `None` if one was already installed
/// (tests).
pub fn init(format: LogFormat, level: &str) -> Option<LogGuard> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, worker) =
        NonBlockingBuilder::default().lossy(true).buffered_lines_limit(QUEUE_LINES).finish(std::io::stderr());
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init().is_ok(),
        LogFormat::Pretty => builder.compact().with_ansi(colours()).try_init().is_ok(),
    };
    installed.then_some(LogGuard { _worker: worker, dropped })
}

/// ANSI colours only where a person reads them: stderr is a terminal and `NO_COLOR`
/// (no-color.org) is unset or empty. Files, pipes and journald get plain text.
fn colours() -> bool {
    use std::io::IsTerminal;
    wants_colours(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref())
}

fn wants_colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(wants_colours(true, None));
        assert!(wants_colours(true, Some(std::ffi::OsStr::new(""))));
        assert!(!wants_colours(true, Some(std::ffi::OsStr::new("1"))));
        assert!(!wants_colours(false, None), "a file or a pipe");
    }
}
