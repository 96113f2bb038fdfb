//! `ah-worker failed list|show|retry|remove|clear`.
//!
//! Entries are named by their index in the list, oldest first, as resque-web
//! numbers them. Retry and remove act on the exact bytes read at that index
//! (see [`Store::failed_apply`]): if the list moved meanwhile, the entry is
//! found by value, and one that someone else removed is reported as gone,
//! never acted on twice. Retry pushes the payload exactly as recorded onto
//! the record's queue and removes the entry in the same atomic step, as
//! node-resque's `retryAndRemoveFailed` does in two; resque-web's "Retry"
//! instead re-encodes `{"class","args"}` and keeps the entry.

use std::collections::HashSet;

use anyhow::bail;
use serde::Serialize;
use serde_json::value::RawValue;

use super::term::{self, Progress, Table};
use super::{count, human_time, json_time, print_json};
use crate::cli::{FailedAction, FailedFilter, FailedSelect, Output};
use crate::glob::fnmatch;
use crate::resque::Store;
use crate::resque::admin::{FailedEntry, FailedTarget, PAGE};

/// How often a bulk operation starts over after someone else removed
/// entries under it, before it stops and says so.
const MAX_RESTARTS: usize = 3;

pub(super) async fn run(store: &Store, action: FailedAction, output: Output) -> anyhow::Result<()> {
    match action {
        FailedAction::List {
            filter,
            limit,
            offset,
            all,
        } => list(store, &filter, (!all).then_some(limit), offset, output).await,
        FailedAction::Show { index } => show(store, index, output).await,
        FailedAction::Retry(select) => act(store, &select, true, output).await,
        FailedAction::Remove(select) => act(store, &select, false, output).await,
        FailedAction::Clear => {
            let n = store.failed_clear().await? as usize;
            report(
                &Report {
                    action: "clear",
                    matched: n,
                    done: n,
                    gone: 0,
                    skipped: Vec::new(),
                },
                output,
            )
        }
    }
}

fn matches(filter: &FailedFilter, entry: &FailedEntry) -> bool {
    let field = |pattern: &Option<String>, value: Option<&str>| match pattern {
        None => true,
        Some(p) => value.is_some_and(|v| fnmatch(p, v)),
    };
    let r = entry.record.as_ref();
    field(&filter.class, r.and_then(|r| r.class.as_deref()))
        && field(&filter.queue, r.and_then(|r| r.queue.as_deref()))
}

fn filtered(filter: &FailedFilter) -> bool {
    filter.class.is_some() || filter.queue.is_some()
}

/// One entry, as `failed list --json` and `failed show --json` print it.
#[derive(Debug, Serialize)]
struct EntryView<'a> {
    index: usize,
    failed_at: Option<String>,
    queue: Option<&'a str>,
    class: Option<&'a str>,
    exception: Option<&'a str>,
    error: Option<&'a str>,
    worker: Option<&'a str>,
    backtrace: &'a [String],
    /// The payload exactly as recorded.
    payload: Option<&'a RawValue>,
    retried_at: Option<String>,
    /// The entry's text, only when it is not a failure record at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    unreadable: Option<String>,
}

fn entry_view(e: &FailedEntry) -> EntryView<'_> {
    let r = e.record.as_ref();
    let text = |f: fn(&crate::resque::admin::FailureRecord) -> &Option<String>| {
        r.and_then(|r| f(r).as_deref())
    };
    EntryView {
        index: e.index,
        failed_at: text(|r| &r.failed_at).map(json_time),
        queue: text(|r| &r.queue),
        class: text(|r| &r.class),
        exception: text(|r| &r.exception),
        error: text(|r| &r.error),
        worker: text(|r| &r.worker),
        backtrace: r.map(|r| &r.backtrace[..]).unwrap_or(&[]),
        payload: r.and_then(|r| r.payload.as_deref()),
        retried_at: text(|r| &r.retried_at).map(json_time),
        unreadable: r
            .is_none()
            .then(|| String::from_utf8_lossy(&e.raw).into_owned()),
    }
}

/// `failed list --json`.
#[derive(Debug, Serialize)]
struct ListView<'a> {
    /// Entries in the list.
    total: usize,
    /// Entries matching the filters.
    matched: usize,
    /// Matching entries skipped before these.
    offset: usize,
    entries: Vec<EntryView<'a>>,
}

/// `Exception: error`, or what there is of it.
fn error_text(v: &EntryView) -> String {
    match (v.exception, v.error) {
        (Some(x), Some(e)) => format!("{x}: {e}"),
        (Some(x), None) => x.to_owned(),
        (None, Some(e)) => e.to_owned(),
        (None, None) if v.unreadable.is_some() => "<not a failure record>".to_owned(),
        (None, None) => String::new(),
    }
}

async fn list(
    store: &Store,
    filter: &FailedFilter,
    limit: Option<usize>,
    offset: usize,
    output: Output,
) -> anyhow::Result<()> {
    let total = store.failed_len().await? as usize;
    let want = limit.unwrap_or(usize::MAX);
    let mut shown = Vec::new();
    let matched = if filtered(filter) {
        let mut matched = 0;
        let mut start = 0;
        loop {
            let page = store.failed_range(start, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for (i, raw) in page.into_iter().enumerate() {
                let entry = FailedEntry::parse(start + i, raw);
                if matches(filter, &entry) {
                    if matched >= offset && shown.len() < want {
                        shown.push(entry);
                    }
                    matched += 1;
                }
            }
            start += PAGE;
        }
        matched
    } else {
        let count = want.min(total.saturating_sub(offset));
        let raws = store.failed_range(offset, count).await?;
        shown = raws
            .into_iter()
            .enumerate()
            .map(|(i, raw)| FailedEntry::parse(offset + i, raw))
            .collect();
        total
    };
    let views: Vec<EntryView> = shown.iter().map(entry_view).collect();
    if output.json {
        return print_json(&ListView {
            total,
            matched,
            offset,
            entries: views,
        });
    }
    if total == 0 {
        out!("no failed jobs")?;
        return Ok(());
    }
    if !views.is_empty() {
        let mut table = Table::new(&["#", "FAILED AT", "QUEUE", "CLASS", "ERROR"]);
        table.right = vec![0];
        table.shrink = vec![4, 3, 2];
        for (entry, v) in shown.iter().zip(&views) {
            let failed_at = entry
                .record
                .as_ref()
                .and_then(|r| r.failed_at.as_deref())
                .map(human_time)
                .unwrap_or_default();
            table.row(vec![
                v.index.to_string(),
                failed_at,
                v.queue.unwrap_or_default().to_owned(),
                v.class.unwrap_or_default().to_owned(),
                error_text(v),
            ]);
        }
        for line in table.render(term::width()) {
            out!("{line}")?;
        }
    }
    let of = if filtered(filter) {
        format!("{matched} matching ({total} in failed)")
    } else {
        format!("{total}")
    };
    let footer = match views.len() {
        0 => format!("no entries from offset {offset} of {of}"),
        n if n == matched => count(n as u64, "entry", "entries"),
        n => format!("entries {}–{} of {of}", offset + 1, offset + n),
    };
    let more = offset + views.len() < matched;
    if more {
        term::say(&format!(
            "{footer}; --offset {} for more",
            offset + views.len()
        ))?;
    } else {
        term::say(&footer)?;
    }
    Ok(())
}

async fn show(store: &Store, index: usize, output: Output) -> anyhow::Result<()> {
    let Some(raw) = store.failed_range(index, 1).await?.pop() else {
        let total = store.failed_len().await?;
        bail!(
            "no failed entry at index {index} (the list has {})",
            count(total, "entry", "entries")
        );
    };
    let entry = FailedEntry::parse(index, raw);
    let v = entry_view(&entry);
    if output.json {
        return print_json(&v);
    }
    let Some(record) = &entry.record else {
        out!("entry {index} is not a failure record; it reads:")?;
        out!("{}", v.unreadable.unwrap_or_default())?;
        return Ok(());
    };
    let row = |label: &str, value: Option<String>| match value {
        Some(value) => out!("{label:<11}{value}"),
        None => Ok(()),
    };
    row("index", Some(index.to_string()))?;
    row(
        "failed at",
        record.failed_at.as_deref().map(|t| {
            let utc = ["UTC", "Z", "+0000", "+00:00"]
                .iter()
                .any(|z| t.ends_with(z));
            match human_time(t) {
                h if utc || h == t => t.to_owned(),
                h => format!("{t} ({h} UTC)"),
            }
        }),
    )?;
    row("queue", record.queue.clone())?;
    row("class", record.class.clone())?;
    row("worker", record.worker.clone())?;
    row("exception", record.exception.clone())?;
    row("error", record.error.clone())?;
    row("retried at", record.retried_at.clone())?;
    if !record.backtrace.is_empty() {
        out!("backtrace")?;
        for frame in &record.backtrace {
            out!("  {frame}")?;
        }
    }
    if let Some(payload) = &record.payload {
        out!("payload")?;
        let pretty = serde_json::from_str::<serde_json::Value>(payload.get())
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| payload.get().to_owned());
        for line in pretty.lines() {
            out!("  {line}")?;
        }
    }
    Ok(())
}

/// What a retry, remove or clear did, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Report {
    /// `retry`, `remove` or `clear`.
    action: &'static str,
    /// Entries selected.
    matched: usize,
    /// Entries retried or removed.
    done: usize,
    /// Selected entries someone else removed first.
    gone: usize,
    /// Selected entries left in place, and why.
    skipped: Vec<Skipped>,
}

#[derive(Debug, Serialize)]
struct Skipped {
    index: usize,
    reason: String,
}

/// A value no failure record equals (records are JSON objects), marking
/// entries for one LREM.
fn tombstone() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("ah-worker:tombstone:{}:{nanos}", std::process::id())
}

/// The target for `entry` at `offset` in its window, or why it stays.
fn target(entry: &FailedEntry, offset: usize, retry: bool) -> Result<FailedTarget, Skipped> {
    let retry = if retry {
        Some(entry.retry_target().map_err(|reason| Skipped {
            index: entry.index,
            reason: reason.to_owned(),
        })?)
    } else {
        None
    };
    Ok(FailedTarget { offset, retry })
}

async fn act(
    store: &Store,
    select: &FailedSelect,
    retry: bool,
    output: Output,
) -> anyhow::Result<()> {
    let mut report = Report {
        action: if retry { "retry" } else { "remove" },
        matched: 0,
        done: 0,
        gone: 0,
        skipped: Vec::new(),
    };
    let tombstone = tombstone();
    if !select.all {
        // Highest index first: acting on one never moves the next.
        let mut indexes = select.index.clone();
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        indexes.dedup();
        for index in indexes {
            let Some(raw) = store.failed_range(index, 1).await?.pop() else {
                report.skipped.push(Skipped {
                    index,
                    reason: "no entry at this index".into(),
                });
                continue;
            };
            report.matched += 1;
            let entry = FailedEntry::parse(index, raw);
            match target(&entry, 0, retry) {
                Ok(t) => {
                    let applied = store
                        .failed_apply(index, std::slice::from_ref(&entry.raw), &[t], &tombstone)
                        .await?;
                    report.done += applied.done;
                    report.gone += 1 - applied.done;
                }
                Err(skip) => report.skipped.push(skip),
            }
        }
        report.skipped.sort_by_key(|s| s.index);
        return self::report(&report, output);
    }

    // Only what is in the list now: entries failing again meanwhile are new.
    let mut end = store.failed_len().await? as usize;
    let mut progress = Progress::new(if retry { "retrying" } else { "removing" }, end);
    let mut seen_skipped: HashSet<Vec<u8>> = HashSet::new();
    let mut pos = 0;
    let mut restarts = 0;
    while pos < end {
        let window = store.failed_range(pos, PAGE.min(end - pos)).await?;
        if window.is_empty() {
            break;
        }
        let entries: Vec<FailedEntry> = window
            .iter()
            .enumerate()
            .map(|(i, raw)| FailedEntry::parse(pos + i, raw.clone()))
            .collect();
        let mut targets = Vec::new();
        for (offset, entry) in entries.iter().enumerate() {
            if !matches(&select.filter, entry) {
                continue;
            }
            match target(entry, offset, retry) {
                Ok(t) => targets.push(t),
                Err(skip) => {
                    if seen_skipped.insert(entry.raw.clone()) {
                        report.matched += 1;
                        report.skipped.push(skip);
                    }
                }
            }
        }
        report.matched += targets.len();
        let applied = if targets.is_empty() {
            None
        } else {
            Some(
                store
                    .failed_apply(pos, &window, &targets, &tombstone)
                    .await?,
            )
        };
        progress.advance(window.len());
        match applied {
            None => pos += window.len(),
            Some(a) => {
                report.done += a.done;
                report.gone += targets.len() - a.done;
                if a.intact {
                    pos += window.len() - a.done;
                    end -= a.done;
                } else {
                    // Someone else removed entries: positions are unknown,
                    // start over (what is done is gone from the list).
                    restarts += 1;
                    if restarts > MAX_RESTARTS {
                        progress.finish();
                        bail!(
                            "the failed list kept changing under us; {} {} so far, run it again for the rest",
                            report.done,
                            if retry { "retried" } else { "removed" }
                        );
                    }
                    pos = 0;
                    end = store.failed_len().await? as usize;
                }
            }
        }
    }
    progress.finish();
    self::report(&report, output)
}

fn report(report: &Report, output: Output) -> anyhow::Result<()> {
    if output.json {
        return print_json(report);
    }
    let verb = match report.action {
        "retry" => "retried",
        _ => "removed",
    };
    if report.action == "retry" {
        term::say(&format!(
            "{verb} {} (payloads pushed back onto their queues)",
            count(report.done as u64, "entry", "entries")
        ))?;
    } else {
        term::say(&format!(
            "{verb} {}",
            count(report.done as u64, "entry", "entries")
        ))?;
    }
    if report.gone > 0 {
        term::say(&format!(
            "{} already gone (removed by someone else)",
            count(report.gone as u64, "entry", "entries")
        ))?;
    }
    for s in &report.skipped {
        term::say(&format!("skipped #{}: {}", s.index, s.reason))?;
    }
    Ok(())
}
