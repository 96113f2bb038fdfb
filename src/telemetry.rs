//! Logging through `tracing`: readable lines by default, JSON lines with
//! `--log-format json`, the level from `--log-level`, else `RUST_LOG`, else
//! `info`.
//!
//! Field names used across the crate, so they do not drift: `worker` (full
//! worker id), `queue`, `class`, `exception`, `error`, `elapsed_ms`,
//! `signal`, `slots`, `performed`, `put_back`.
//!
//! Spans: `runner` (the process's slots), `heartbeat`, `waiter{queue}`,
//! `scheduler`, `stats`, `coprocess`, `systemd`, `reload`, `metrics{addr}`,
//! `faye_redis_connect`, `faye_subscription`, `faye_bridge`, `faye_events`,
//! `cluster{processes}` and its `child{slot, pid}`, and at debug level
//! `job{worker}` and `request{peer}`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Install the global subscriber; logs go to stderr (journald takes them
/// there under systemd).
pub fn init(format: LogFormat, level: Option<&str>) {
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
