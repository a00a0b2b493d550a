//! Structured logs with tracing: JSON lines for log shippers or a human format for a
//! terminal. RUST_LOG overrides the configured level.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Returns false if one was already installed (tests).
pub fn init(format: LogFormat, level: &str) -> bool {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init().is_ok(),
        LogFormat::Pretty => builder.compact().try_init().is_ok(),
    }
}
