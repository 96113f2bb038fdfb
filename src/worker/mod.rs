//! Running jobs: the [`Runner`] that owns a process's job slots, and the
//! execution of one job.
//!
//! Slot life: free → (step takes a job into its status key) → running →
//! (handler finishes) → acking → (step records the outcome, fenced on the
//! status value) → free. A slot is free only once its ack has landed, so its
//! status key holds the job for as long as the outcome is not recorded.

mod heartbeat;
pub mod policy;
mod pool;
pub mod queues;
pub mod recovery;
mod wake;

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures_util::FutureExt as _;
use tracing::{debug, info, warn};

pub use pool::Runner;
pub use queues::QueueSpec;
pub use recovery::{DeadWorkerJobs, Recoverer, SlotRecovery};

use crate::faye::JobEvent;
use crate::handler::{JobContext, JobError, PutBack, Registry};
use crate::resque::{Job, payload};
use policy::{ClassPolicy, Policies};

/// The outcome of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler returned `Ok`.
    Succeeded,
    /// Handler error, panic, bad payload.
    Failed(JobError),
    /// The handler asked for the job to go back to its queue.
    PutBack(String),
    /// No handler for this class; the runner's policy decides.
    Unknown(String),
    /// Not run: its JobLock is held by an identical running job. `again`:
    /// try in a second (else drop it, as node-resque does without
    /// `reEnqueue`).
    Deferred {
        /// Re-enqueue it.
        again: bool,
    },
}

/// What to do with a job whose class no handler claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownClass {
    /// Record a failure, as Ruby Resque and node-resque do.
    Fail,
    /// Put it back for the other workers sharing the queue, and skip that
    /// class for a while so the worker does not spin on it.
    Requeue,
}

impl UnknownClass {
    /// The failure recorded under [`UnknownClass::Fail`].
    pub fn failure(class: &str) -> JobError {
        JobError::new(
            "AhWorker::UnknownClass",
            format!("No job defined for class \"{class}\""),
        )
    }
}

/// Parse `raw`, apply the class's locks, find its handler and run it; every
/// way it can go wrong is a [`Outcome::Failed`] with a clear exception name.
/// Returns the parsed job too when the runner needs it back (class
/// policies, actionHero stats; `None` for a malformed payload), and the
/// job's class (`None` for a malformed payload). Never panics.
pub async fn execute(
    registry: &Registry,
    policies: &Policies,
    queue: &str,
    raw: &[u8],
    ctx: JobContext,
) -> (Outcome, Option<Job>, Option<String>) {
    let started = Instant::now();
    let job = match Job::parse(queue, raw) {
        Ok(job) => job,
        Err(e) => {
            warn!(queue, worker = %ctx.worker, error = %e, "malformed payload");
            return (
                Outcome::Failed(JobError::new(payload::MALFORMED_EXCEPTION, e.to_string())),
                None,
                None,
            );
        }
    };
    let class = job.class.clone();
    let Some(handler) = registry.get(&class) else {
        warn!(class, queue, worker = %ctx.worker, "no handler for class");
        return (Outcome::Unknown(class.clone()), Some(job), Some(class));
    };
    if let Some(policy) = policies.of(&class) {
        match before_perform(policy, &job, &ctx).await {
            Ok(None) => {}
            Ok(Some(deferred)) => return (deferred, Some(job), Some(class)),
            Err(e) => {
                return (
                    Outcome::Failed(JobError::new("AhWorker::LockError", format!("{e}"))),
                    Some(job),
                    Some(class),
                );
            }
        }
    }
    // The runner needs the job back only for class policies and actionHero
    // stats; cloning its arguments otherwise is wasted work per job.
    let job_copy =
        (!policies.is_empty() || ctx.services.actionhero().is_some()).then(|| job.clone());
    let worker = ctx.worker.clone();
    // Job events on Faye (`[faye.events]`): queued, never waited for.
    let events = ctx
        .services
        .faye()
        .filter(|f| f.wants_job_events(&class))
        .cloned();
    if let Some(f) = &events {
        f.job_event(JobEvent::Started, &class, queue, &worker);
    }
    let handler_started = Instant::now();
    // The handler future is polled inside catch_unwind, so a panic in a
    // handler fails its job and leaves the slot alive.
    let result = AssertUnwindSafe(handler.perform(job, ctx))
        .catch_unwind()
        .await;
    let outcome = match result {
        Ok(Ok(())) => Outcome::Succeeded,
        Ok(Err(err)) => match err.chain().find_map(|c| c.downcast_ref::<PutBack>()) {
            Some(back) => Outcome::PutBack(back.reason.clone()),
            None => Outcome::Failed(JobError::from_error(&err)),
        },
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".to_owned());
            Outcome::Failed(JobError::new("AhWorker::Panic", message))
        }
    };
    if let Some(f) = &events {
        let duration = handler_started.elapsed();
        let event = match &outcome {
            Outcome::Succeeded => Some(JobEvent::Succeeded { duration }),
            Outcome::Failed(e) => Some(JobEvent::Failed {
                duration,
                exception: &e.exception,
                error: &e.message,
            }),
            _ => None,
        };
        if let Some(event) = event {
            f.job_event(event, &class, queue, &worker);
        }
    }
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match &outcome {
        Outcome::Succeeded => debug!(class, queue, worker, elapsed_ms, "job performed"),
        Outcome::PutBack(reason) => {
            info!(class, queue, worker, reason, "job goes back to its queue")
        }
        Outcome::Unknown(_) | Outcome::Deferred { .. } => {}
        Outcome::Failed(e) => warn!(
            class,
            queue,
            worker,
            elapsed_ms,
            exception = %e.exception,
            error = %e.message,
            "job failed"
        ),
    }
    (outcome, job_copy, Some(class))
}

/// node-resque's beforePerform plugins: QueueLock is released, JobLock
/// taken (`SET NX EX`, so a holder that dies frees it after its TTL).
/// Returns the outcome when the job must not run now.
async fn before_perform(
    policy: &ClassPolicy,
    job: &Job,
    ctx: &JobContext,
) -> crate::Result<Option<Outcome>> {
    let Some(keys) = ctx.services.keys() else {
        return Ok(None);
    };
    let args = policy::lock_args(job);
    if policy.queue_lock.is_some() {
        ctx.services
            .delete(&keys.queue_lock(&job.class, &job.queue, &args))
            .await?;
    }
    if let Some(lock) = &policy.job_lock {
        let key = keys.job_lock(&job.class, &job.queue, &args);
        let expires = chrono::Utc::now().timestamp() + lock.timeout.as_secs() as i64 + 1;
        if !ctx
            .services
            .try_lock(&key, &expires.to_string(), lock.timeout)
            .await?
        {
            info!(class = %job.class, queue = %job.queue, again = lock.re_enqueue, "job lock held by an identical job; not run now");
            return Ok(Some(Outcome::Deferred {
                again: lock.re_enqueue,
            }));
        }
    }
    Ok(None)
}
