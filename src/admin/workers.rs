//! `ah-worker workers [list|prune]`: every registered worker, whichever
//! peer it is, with its state; pruning the dead ah-worker processes.
//!
//! A worker's state is, in this order:
//! - `dead`: a slot of an ah-worker process that the recoverer's rule takes
//!   for dead (heartbeat older than `dead_after`, or its pid gone on this
//!   host). `prune` recovers exactly these, through the recoverer itself.
//! - `stale`: another peer's worker that its own library would take for
//!   dead: Ruby's heartbeat older than Resque's `prune_interval` (300 s), or
//!   node-resque's ping older than its default `stuckWorkerTimeout` (1 h).
//!   Shown, never pruned here: Ruby and node-resque prune their own.
//! - `busy` (its status key holds a job) or `idle`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::bail;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::term::{self, Table};
use super::{ago, count, json_time, print_json};
use crate::cli::Output;
use crate::resque::admin::{WorkerRecord, parse_time};
use crate::resque::{Recovered, Store};
use crate::worker::Recoverer;

/// Resque's default `prune_interval`: a Ruby worker whose heartbeat is older
/// is pruned by the next Ruby worker that starts.
const RUBY_PRUNE_AFTER_SECS: i64 = 300;
/// node-resque's default `stuckWorkerTimeout`: a worker whose ping is older
/// is force-cleaned by the scheduler leader.
const NODE_STUCK_AFTER_SECS: i64 = 3600;
/// How long `prune` waits for another process's recovery to finish.
const PRUNE_WAIT: Duration = Duration::from_secs(15);

/// Which peer registered a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Kind {
    /// A slot of a process in ah-worker's process registry, or one writing
    /// both Ruby's heartbeat and node-resque's ping (as only ah-worker does).
    AhWorker,
    /// Ruby's heartbeat only.
    Resque,
    /// node-resque's ping only.
    NodeResque,
    /// Neither (old Ruby or node-resque versions).
    Unknown,
}

/// What a worker is doing, or whether it is gone (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum State {
    Busy,
    Idle,
    Dead,
    Stale,
}

/// The job a worker is working on.
#[derive(Debug, Clone, Serialize)]
pub(super) struct JobView {
    pub queue: Option<String>,
    pub class: Option<String>,
    pub args: Option<Value>,
    /// When it started.
    pub since: Option<String>,
    #[serde(skip)]
    pub since_ago: Option<String>,
}

/// One registered worker, as `workers --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct WorkerView {
    pub id: String,
    pub host: String,
    /// The pid's digits (ah-worker and node-resque ids read `pid+n`).
    pub pid: Option<u32>,
    pub queues: Vec<String>,
    pub kind: Kind,
    pub state: State,
    pub started: Option<String>,
    /// The newest sign of life: ah-worker's process beat, Ruby's heartbeat
    /// or node-resque's ping.
    pub heartbeat: Option<String>,
    pub job: Option<JobView>,
    #[serde(skip)]
    pub heartbeat_ago: Option<String>,
    #[serde(skip)]
    pub started_ago: Option<String>,
}

/// Every registered worker with its kind and state, and Redis's clock.
pub(super) async fn assess(
    store: &Store,
    recoverer: &Recoverer,
) -> anyhow::Result<(Vec<WorkerView>, DateTime<Utc>)> {
    let now = store.redis_time().await?;
    let processes: HashMap<String, _> = store.processes().await?.into_iter().collect();
    let records = store.worker_records().await?;
    let views = records
        .into_iter()
        .map(|r| {
            // A slot of a registered ah-worker process, and that process.
            let process = r.process_slot().and_then(|(field, slot)| {
                let entry = processes.get(&field)?;
                let in_range = entry.as_ref().is_none_or(|e| slot <= e.slots);
                in_range.then_some((field, entry))
            });
            let beat = process
                .as_ref()
                .and_then(|(_, e)| e.as_ref())
                .and_then(|e| DateTime::from_timestamp_millis(e.beat));
            let ruby_beat = r.heartbeat.as_deref().and_then(parse_time);
            let ping = r.ping.and_then(|p| DateTime::from_timestamp(p, 0));
            let kind = match (&process, ruby_beat.is_some(), ping.is_some()) {
                (Some(_), _, _) | (None, true, true) => Kind::AhWorker,
                (None, true, false) => Kind::Resque,
                (None, false, true) => Kind::NodeResque,
                (None, false, false) => Kind::Unknown,
            };
            let older_than =
                |t: Option<DateTime<Utc>>, secs| t.is_some_and(|t| (now - t).num_seconds() > secs);
            let state = if let Some((field, entry)) = &process {
                if recoverer.is_dead(field, entry.as_ref(), now.timestamp_millis(), false, true) {
                    State::Dead
                } else if r.working_on.is_some() {
                    State::Busy
                } else {
                    State::Idle
                }
            } else if older_than(ruby_beat, RUBY_PRUNE_AFTER_SECS)
                || older_than(ping, NODE_STUCK_AFTER_SECS)
            {
                State::Stale
            } else if r.working_on.is_some() {
                State::Busy
            } else {
                State::Idle
            };
            let newest = [beat, ruby_beat, ping].into_iter().flatten().max();
            view(r, kind, state, newest, now)
        })
        .collect();
    Ok((views, now))
}

fn view(
    r: WorkerRecord,
    kind: Kind,
    state: State,
    heartbeat: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> WorkerView {
    let pid = r.os_pid();
    WorkerView {
        pid,
        kind,
        state,
        started: r.started.as_deref().map(json_time),
        started_ago: r.started.as_deref().and_then(|t| ago(t, now)),
        heartbeat: heartbeat.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        heartbeat_ago: heartbeat.map(|t| term::age((now - t).num_seconds())),
        job: r.working_on.map(|w| JobView {
            since: w.run_at.as_deref().map(json_time),
            since_ago: w.run_at.as_deref().and_then(|t| ago(t, now)),
            queue: w.queue,
            class: w.class,
            args: w.args,
        }),
        id: r.id,
        host: r.host,
        queues: r.queues,
    }
}

/// The class and args of a job, for one table cell.
pub(super) fn job_text(job: &JobView) -> String {
    let class = job.class.as_deref().unwrap_or("<unreadable job>");
    match &job.args {
        Some(args) => format!("{class} {args}"),
        None => class.to_owned(),
    }
}

/// How many workers are in each state: `3 registered: 1 busy, 1 idle, 1 dead`.
pub(super) fn summary(views: &[WorkerView]) -> String {
    let mut parts = Vec::new();
    for (state, name) in [
        (State::Busy, "busy"),
        (State::Idle, "idle"),
        (State::Dead, "dead"),
        (State::Stale, "stale"),
    ] {
        let n = views.iter().filter(|v| v.state == state).count();
        if n > 0 || matches!(state, State::Busy | State::Idle) {
            parts.push(format!("{n} {name}"));
        }
    }
    format!("{} registered: {}", views.len(), parts.join(", "))
}

/// `ah-worker workers [list]`.
pub(super) async fn list(
    store: &Store,
    recoverer: &Recoverer,
    output: Output,
) -> anyhow::Result<()> {
    let (views, _) = assess(store, recoverer).await?;
    if output.json {
        return print_json(&serde_json::json!({ "workers": views }));
    }
    if views.is_empty() {
        out!("no registered workers")?;
        return Ok(());
    }
    let mut table = Table::new(&[
        "WORKER",
        "KIND",
        "STATE",
        "STARTED",
        "HEARTBEAT",
        "QUEUE",
        "RUNNING",
        "JOB",
    ]);
    table.shrink = vec![7, 5, 0];
    for v in &views {
        let job = v.job.as_ref();
        table.row(vec![
            v.id.clone(),
            serde_plain(&v.kind),
            serde_plain(&v.state),
            v.started_ago
                .as_ref()
                .map(|a| format!("{a} ago"))
                .unwrap_or_default(),
            v.heartbeat_ago
                .as_ref()
                .map(|a| format!("{a} ago"))
                .unwrap_or_else(|| "-".into()),
            job.and_then(|j| j.queue.clone()).unwrap_or_default(),
            job.and_then(|j| j.since_ago.clone()).unwrap_or_default(),
            job.map(job_text).unwrap_or_default(),
        ]);
    }
    for line in table.render(term::width()) {
        out!("{line}")?;
    }
    term::say(&summary(&views))?;
    if views.iter().any(|v| v.state == State::Dead) {
        term::say("`ah-worker workers prune` removes the dead ones, recovering their jobs")?;
    }
    Ok(())
}

/// The JSON name of a unit enum variant, for text output.
fn serde_plain<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// What `prune` did with one slot, as `workers prune --json` prints it.
#[derive(Debug, Serialize)]
struct Pruned {
    worker: String,
    /// `null` for an idle slot.
    job: Option<PrunedJob>,
}

#[derive(Debug, Serialize)]
struct PrunedJob {
    queue: String,
    class: String,
    /// `requeued` (back at the head of its queue) or `failed`.
    outcome: &'static str,
}

/// `ah-worker workers prune`.
pub(super) async fn prune(
    store: &Store,
    recoverer: &Recoverer,
    output: Output,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + PRUNE_WAIT;
    let slots = loop {
        match recoverer.recover_dead(false, true).await? {
            Some(slots) => break slots,
            None if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None => bail!(
                "another process held the recovery lock for {}s; nothing pruned, try again",
                PRUNE_WAIT.as_secs()
            ),
        }
    };
    let pruned: Vec<Pruned> = slots
        .into_iter()
        .map(|s| Pruned {
            job: match s.outcome {
                Recovered::Requeued | Recovered::Failed => Some(PrunedJob {
                    queue: s.queue,
                    class: s.class.unwrap_or_default(),
                    outcome: if s.outcome == Recovered::Requeued {
                        "requeued"
                    } else {
                        "failed"
                    },
                }),
                Recovered::Idle | Recovered::Changed => None,
            },
            worker: s.worker,
        })
        .collect();
    let (left, _) = assess(store, recoverer).await?;
    let stale = left.iter().filter(|v| v.state == State::Stale).count();
    if output.json {
        return print_json(&serde_json::json!({ "pruned": pruned, "stale_left": stale }));
    }
    if pruned.is_empty() {
        out!("no dead ah-worker processes: nothing pruned")?;
    }
    for p in &pruned {
        let what = match &p.job {
            None => "idle".to_owned(),
            Some(j) if j.outcome == "requeued" => {
                format!("its {} job put back at the head of {}", j.class, j.queue)
            }
            Some(j) => format!("its {} job recorded in failed", j.class),
        };
        term::say(&format!("pruned {}: {what}", p.worker))?;
    }
    if !pruned.is_empty() {
        let jobs = pruned.iter().filter(|p| p.job.is_some()).count() as u64;
        term::say(&format!(
            "{} removed, {} recovered",
            count(pruned.len() as u64, "registration", "registrations"),
            count(jobs, "job", "jobs")
        ))?;
    }
    if stale > 0 {
        term::say(&format!(
            "{} of other peers left alone (Ruby and node-resque prune their own)",
            count(stale as u64, "stale worker", "stale workers")
        ))?;
    }
    Ok(())
}
