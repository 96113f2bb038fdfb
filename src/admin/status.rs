//! `ah-worker status`: resque-web's overview and stats in one screen.

use serde::Serialize;

use super::term::{self, Table};
use super::workers::{self, State, job_text};
use super::{count, print_json};
use crate::cli::Output;
use crate::config::Config;
use crate::resque::Store;
use crate::worker::{QueueSpec, Recoverer};

/// `status --json`.
#[derive(Debug, Serialize)]
struct StatusView {
    namespace: String,
    /// This configuration's queues in priority order, then every other
    /// known queue by name.
    queues: Vec<QueueView>,
    workers: WorkerCounts,
    /// The busy workers and their jobs.
    working: Vec<Working>,
    /// Entries in the `failed` list.
    failed: u64,
    stats: Stats,
    delayed: Delayed,
    scheduler: Scheduler,
    /// `pause-all-workers` is set.
    paused: bool,
}

#[derive(Debug, Serialize)]
struct QueueView {
    name: String,
    /// Jobs waiting.
    depth: u64,
    /// 1-based place in this configuration's priority order; `null` for a
    /// queue it does not serve.
    priority: Option<usize>,
}

#[derive(Debug, Serialize)]
struct WorkerCounts {
    total: usize,
    busy: usize,
    idle: usize,
    dead: usize,
    stale: usize,
}

#[derive(Debug, Serialize)]
struct Working {
    worker: String,
    #[serde(flatten)]
    job: workers::JobView,
}

#[derive(Debug, Serialize)]
struct Stats {
    processed: i64,
    failed: i64,
}

#[derive(Debug, Serialize)]
struct Delayed {
    jobs: u64,
    /// Distinct due times.
    times: u64,
    /// The earliest due time.
    next: Option<String>,
}

#[derive(Debug, Serialize)]
struct Scheduler {
    /// node-resque's (and ah-worker's) leader lock holder.
    leader: Option<String>,
    /// Ruby resque-scheduler's master lock holder.
    ruby_master: Option<String>,
}

pub(super) async fn run(
    store: &Store,
    config: &Config,
    recoverer: &Recoverer,
    output: Output,
) -> anyhow::Result<()> {
    let mut known = store.queue_names().await?;
    known.sort();
    let served = QueueSpec::new(&config.queues).resolve(&known);
    let mut names = served.clone();
    names.extend(known.into_iter().filter(|q| !served.contains(q)));
    let depths = store.queue_lengths(&names).await?;
    let queues: Vec<QueueView> = names
        .into_iter()
        .zip(depths)
        .enumerate()
        .map(|(i, (name, depth))| QueueView {
            name,
            depth,
            priority: (i < served.len()).then_some(i + 1),
        })
        .collect();
    let (views, now) = workers::assess(store, recoverer).await?;
    let by_state = |s: State| views.iter().filter(|v| v.state == s).count();
    let (processed, failed_stat) = store.counters().await?;
    let delayed = store.delayed_summary().await?;
    let status = StatusView {
        namespace: config.namespace.clone(),
        queues,
        workers: WorkerCounts {
            total: views.len(),
            busy: by_state(State::Busy),
            idle: by_state(State::Idle),
            dead: by_state(State::Dead),
            stale: by_state(State::Stale),
        },
        working: views
            .iter()
            .filter(|v| v.state == State::Busy)
            .filter_map(|v| {
                Some(Working {
                    worker: v.id.clone(),
                    job: v.job.clone()?,
                })
            })
            .collect(),
        failed: store.failed_len().await?,
        stats: Stats {
            processed,
            failed: failed_stat,
        },
        delayed: Delayed {
            jobs: delayed.jobs,
            times: delayed.times,
            next: delayed
                .next
                .and_then(|ts| chrono::DateTime::from_timestamp(ts, 0))
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        },
        scheduler: Scheduler {
            leader: store.leader().await?,
            ruby_master: store.ruby_master().await?,
        },
        paused: store.paused_all().await?,
    };
    if output.json {
        return print_json(&status);
    }

    let width = term::width();
    let indent = |lines: Vec<String>| -> std::io::Result<()> {
        for line in lines {
            out!("  {line}")?;
        }
        Ok(())
    };
    let inner = width.map(|w| w.saturating_sub(2));
    term::say(&format!(
        "Queues     {} ({} jobs waiting)",
        status.queues.len(),
        status.queues.iter().map(|q| q.depth).sum::<u64>()
    ))?;
    if !status.queues.is_empty() {
        let mut table = Table::new(&["PRIORITY", "QUEUE", "JOBS"]);
        table.right = vec![0, 2];
        table.shrink = vec![1];
        for q in &status.queues {
            table.row(vec![
                q.priority.map(|p| p.to_string()).unwrap_or("-".into()),
                q.name.clone(),
                q.depth.to_string(),
            ]);
        }
        indent(table.render(inner))?;
    }
    term::say(&format!("Workers    {}", workers::summary(&views)))?;
    if !status.working.is_empty() {
        let mut table = Table::new(&["WORKER", "QUEUE", "RUNNING", "JOB"]);
        table.shrink = vec![3, 0, 1];
        for w in &status.working {
            table.row(vec![
                w.worker.clone(),
                w.job.queue.clone().unwrap_or_default(),
                w.job.since_ago.clone().unwrap_or_default(),
                job_text(&w.job),
            ]);
        }
        indent(table.render(inner))?;
    }
    out!("Failed     {}", status.failed)?;
    term::say(&format!(
        "Stats      {} processed, {} failed",
        status.stats.processed, status.stats.failed
    ))?;
    let next = delayed
        .next
        .and_then(|ts| chrono::DateTime::from_timestamp(ts, 0))
        .map(|t| {
            let secs = (t - now).num_seconds();
            let when = if secs >= 0 {
                format!("in {}", term::age(secs))
            } else {
                format!("{} overdue", term::age(-secs))
            };
            format!(", next at {} UTC ({when})", t.format("%Y-%m-%d %H:%M:%S"))
        })
        .unwrap_or_default();
    term::say(&format!(
        "Delayed    {} at {}{next}",
        count(status.delayed.jobs, "job", "jobs"),
        count(status.delayed.times, "time", "times")
    ))?;
    let leader = status.scheduler.leader.as_deref().unwrap_or("none");
    match &status.scheduler.ruby_master {
        Some(ruby) => term::say(&format!(
            "Scheduler  leader {leader}; Ruby resque-scheduler master {ruby}"
        )),
        None => term::say(&format!("Scheduler  leader {leader}")),
    }?;
    if status.paused {
        term::say("Paused     yes: pause-all-workers is set, no worker takes jobs")?;
    }
    Ok(())
}
