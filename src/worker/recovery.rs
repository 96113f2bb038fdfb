//! Recovering the jobs of ah-worker processes that died.
//!
//! Every process keeps an entry in `ah-worker:processes` (its slots and a
//! heartbeat). A process is dead when its entry is on this host and its pid
//! is gone (certain, checked at start-up and on every beat), or when its
//! heartbeat is older than `dead_after` (any host). Under the recovery lock,
//! each slot of a dead process is recovered in one atomic step: its job goes
//! back to the head of its queue (or to `failed`, as configured) and its
//! registration is removed. The step is fenced on the exact status value,
//! so a job is put back at most once even if two processes recover at once
//! or the "dead" process was only stalled and acks late.

use std::time::Duration;

use chrono::Utc;
use tracing::{info, warn};

use crate::error::Result;
use crate::resque::{Failure, Job, ProcessId, Recovered, Recovery, Store, payload};

/// How long the recovery lock is held at most (released when done; a
/// recoverer killed mid-way blocks the others this long).
const LOCK_TTL: Duration = Duration::from_secs(10);
/// How long recoveries of one payload are counted for the poison limit.
const RECOVERY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What a dead process's running jobs become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadWorkerJobs {
    /// Back at the head of their queues (at least once, never lost).
    Requeue,
    /// `failed` entries, as Ruby's `Resque::DirtyExit`.
    Fail,
}

/// What recovery did with one slot of a dead process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRecovery {
    /// The slot's worker id.
    pub worker: String,
    /// The queue of its job (empty when it had none).
    pub queue: String,
    /// The class of its job (`<Unknown Job>` for a malformed one), if it had one.
    pub class: Option<String>,
    /// What became of it: [`Recovered::Idle`] (no job), [`Recovered::Requeued`]
    /// or [`Recovered::Failed`].
    pub outcome: Recovered,
}

/// The recovery settings of one process.
#[derive(Debug, Clone)]
pub struct Recoverer {
    /// The store.
    pub store: Store,
    /// This process.
    pub me: ProcessId,
    /// A heartbeat older than this means dead.
    pub dead_after: Duration,
    /// What their jobs become.
    pub jobs: DeadWorkerJobs,
    /// A job put back more often than this (it keeps killing workers) fails.
    pub max_recoveries: u32,
}

impl Recoverer {
    /// The recovery settings of `config`, on behalf of this process.
    pub fn for_config(store: Store, config: &crate::config::Config) -> Recoverer {
        Recoverer {
            store,
            me: config.process(),
            dead_after: config.dead_after,
            jobs: config.dead_worker_jobs,
            max_recoveries: config.max_recoveries,
        }
    }

    /// Find dead processes and recover their slots. Returns how many jobs
    /// were put back or failed. At start-up (`starting`), an entry under this
    /// very `host:pid` is a dead earlier process (pid reused, as in
    /// containers) and is recovered too.
    pub async fn run_once(&self, starting: bool) -> Result<usize> {
        self.run(starting, true).await
    }

    /// [`Recoverer::run_once`], judging by heartbeat age only if
    /// `trust_beats`: right after this process itself could not reach Redis,
    /// every other process's beat is old too, and taking them all for dead
    /// would run their jobs twice. A dead pid on this host is certain
    /// either way.
    pub async fn run(&self, starting: bool, trust_beats: bool) -> Result<usize> {
        let slots = self
            .recover_dead(starting, trust_beats)
            .await?
            .unwrap_or_default();
        Ok(slots
            .iter()
            .filter(|s| matches!(s.outcome, Recovered::Requeued | Recovered::Failed))
            .count())
    }

    /// Whether the process registered under `field` with `entry` is dead at
    /// Redis time `now_ms`: its entry is unreadable, its beat is older than
    /// `dead_after` (only if `trust_beats`), or it is on this host and its
    /// pid is gone. This very process counts as dead only when `starting`.
    pub fn is_dead(
        &self,
        field: &str,
        entry: Option<&payload::ProcessEntry>,
        now_ms: i64,
        starting: bool,
        trust_beats: bool,
    ) -> bool {
        if field == self.me.field() {
            return starting;
        }
        let Some(entry) = entry else { return true };
        let stale = trust_beats && now_ms - entry.beat > self.dead_after.as_millis() as i64;
        let gone_here =
            ProcessId::parse(field).is_some_and(|p| p.host == self.me.host && !pid_alive(p.pid));
        stale || gone_here
    }

    /// Find dead processes (see [`Recoverer::is_dead`]) and recover their
    /// slots under the recovery lock. Returns what became of each slot, or
    /// `None` if another process holds the lock (it is recovering them).
    pub async fn recover_dead(
        &self,
        starting: bool,
        trust_beats: bool,
    ) -> Result<Option<Vec<SlotRecovery>>> {
        let now_ms = self.store.redis_time().await?.timestamp_millis();
        let entries = self.store.processes().await?;
        let dead: Vec<(String, Option<payload::ProcessEntry>)> = entries
            .into_iter()
            .filter(|(field, entry)| {
                self.is_dead(field, entry.as_ref(), now_ms, starting, trust_beats)
            })
            .collect();
        if dead.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let owner = self.me.field();
        if !self.store.lock_recovery(&owner, LOCK_TTL).await? {
            return Ok(None); // another process is recovering right now
        }
        let result = self.recover(&dead).await;
        self.store.unlock_recovery(&owner).await?;
        result.map(Some)
    }

    async fn recover(
        &self,
        dead: &[(String, Option<payload::ProcessEntry>)],
    ) -> Result<Vec<SlotRecovery>> {
        let mut slots = Vec::new();
        for (field, entry) in dead {
            let (Some(process), Some(entry)) = (ProcessId::parse(field), entry) else {
                warn!(field, "unreadable process entry removed");
                self.store.remove_process(field).await?;
                continue;
            };
            warn!(process = %field, slots = entry.slots, "recovering a dead ah-worker process");
            for slot in process.slots(entry.slots, &entry.queues) {
                // Re-read and retry if the status changes under us (a late ack).
                loop {
                    let status = self.store.status(&slot).await?;
                    let (queue, raw) = match &status {
                        Some(s) => {
                            payload::split_status(s).unwrap_or_else(|| (String::new(), s.clone()))
                        }
                        None => (String::new(), Vec::new()),
                    };
                    let class = Job::parse(&queue, &raw)
                        .map(|j| j.class)
                        .unwrap_or_else(|_| "<Unknown Job>".into());
                    let record = |exception: &str, error: String| {
                        Failure {
                            failed_at: payload::failed_at(Utc::now()),
                            payload: payload::payload_for_record(&raw),
                            exception: exception.into(),
                            error,
                            backtrace: Vec::new(),
                            worker: slot.id.clone(),
                            queue: queue.clone(),
                        }
                        .to_json()
                    };
                    let failure = record(
                        "Resque::DirtyExit",
                        format!("Worker {} died while processing {class}", slot.id),
                    );
                    let poison = record(
                        "AhWorker::PoisonJob",
                        format!(
                            "job was recovered from dead workers more than {} times; not requeued again (last: {})",
                            self.max_recoveries, slot.id
                        ),
                    );
                    // A status we cannot split has no queue to go back to.
                    let requeue = self.jobs == DeadWorkerJobs::Requeue && !queue.is_empty();
                    let r = Recovery {
                        expected: status.as_deref(),
                        requeue,
                        queue: &queue,
                        raw: &raw,
                        failure: &failure,
                        max_recoveries: self.max_recoveries,
                        poison_failure: &poison,
                        counter_ttl: RECOVERY_WINDOW,
                    };
                    let outcome = self.store.recover_slot(&slot, &r).await?;
                    match outcome {
                        Recovered::Changed => continue,
                        Recovered::Idle => {}
                        Recovered::Requeued => {
                            info!(worker = %slot.id, queue = %queue, class, "job of a dead worker put back at the head of its queue");
                        }
                        Recovered::Failed => {
                            warn!(worker = %slot.id, queue = %queue, class, "job of a dead worker recorded as failed");
                        }
                    }
                    slots.push(SlotRecovery {
                        worker: slot.id.clone(),
                        queue,
                        class: status.is_some().then_some(class),
                        outcome,
                    });
                    break;
                }
            }
            self.store.remove_process(field).await?;
        }
        Ok(slots)
    }
}

/// Whether `pid` is a live process on this host (a zombie is dead).
pub(crate) fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pid_liveness() {
        assert!(super::pid_alive(std::process::id()));
        assert!(!super::pid_alive(u32::MAX - 1));
    }
}
