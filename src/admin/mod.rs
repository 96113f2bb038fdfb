//! The admin commands: resque-web's views in a terminal, each with `--json`.
//!
//! - `status`: queues and depths, workers and their jobs, failures, stats,
//!   delayed jobs, the scheduler leader ([`status`]).
//! - `failed list|show|retry|remove|clear` ([`failed`]).
//! - `workers [list|prune]` ([`workers`]).
//!
//! This module only presents: what is read and repaired in Redis is in
//! [`crate::resque::admin`], which dead workers are is the recoverer's rule
//! ([`crate::worker::Recoverer`]), and pruning is the recoverer's own
//! recovery step. JSON field names are documented in the README and stay
//! stable; times in JSON are RFC 3339 in UTC when the peer's format is
//! understood, else the text as the peer wrote it.

/// `println!` that returns the write's error instead of panicking, so a
/// closed pipe (`ah-worker failed list --all | head`) ends the output
/// quietly (see [`quiet_on_closed_pipe`]).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod failed;
mod status;
pub mod term;
mod workers;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::{Command, FailedAction, Output, WorkersAction};
use crate::config::Config;
use crate::resque::admin::parse_time;

use crate::worker::Recoverer;

/// Whether `command` is one of the admin commands.
pub fn is_admin(command: &Command) -> bool {
    matches!(
        command,
        Command::Status(_) | Command::Failed { .. } | Command::Workers { .. }
    )
}

/// `ah-worker status`.
pub async fn status(config: &Config, output: Output) -> anyhow::Result<()> {
    let store = crate::app::connect(config).await?;
    quiet_on_closed_pipe(
        status::run(
            &store,
            config,
            &Recoverer::for_config(store.clone(), config),
            output,
        )
        .await,
    )
}

/// `ah-worker failed ...`.
pub async fn failed(config: &Config, action: FailedAction, output: Output) -> anyhow::Result<()> {
    let store = crate::app::connect(config).await?;
    quiet_on_closed_pipe(failed::run(&store, action, output).await)
}

/// `ah-worker workers ...`.
pub async fn workers(
    config: &Config,
    action: Option<WorkersAction>,
    output: Output,
) -> anyhow::Result<()> {
    let store = crate::app::connect(config).await?;
    let recoverer = Recoverer::for_config(store.clone(), config);
    quiet_on_closed_pipe(match action.unwrap_or(WorkersAction::List) {
        WorkersAction::List => workers::list(&store, &recoverer, output).await,
        WorkersAction::Prune => workers::prune(&store, &recoverer, output).await,
    })
}

/// A reader that went away (`| head`) is not an error: the output just ends.
fn quiet_on_closed_pipe(result: anyhow::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Print `value` as one pretty-printed JSON document.
fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    out!("{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// A time for JSON: RFC 3339 in UTC when understood, else as written.
fn json_time(text: &str) -> String {
    parse_time(text)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| text.to_owned())
}

/// A time for people: `2026-11-30 03:49:06` (UTC) when understood, else as
/// written.
fn human_time(text: &str) -> String {
    parse_time(text)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| text.to_owned())
}

/// How long ago `text` was, by Redis's clock `now`, if understood.
fn ago(text: &str, now: DateTime<Utc>) -> Option<String> {
    parse_time(text).map(|t| term::age((now - t).num_seconds()))
}

/// `1 entry`, `2 entries`: `n` and the noun, `plural` unless `n` is 1.
fn count(n: impl Into<u64>, one: &str, plural: &str) -> String {
    match n.into() {
        1 => format!("1 {one}"),
        n => format!("{n} {plural}"),
    }
}
