//! Running jobs: the [`Runner`] that owns a process's job slots, and the
//! execution of one job.
//!
//! Slot life: free → (step takes a job into its status key) → running →
//! (handler finishes) → acking → (step records the outcome, fenced on the
//! status value) → free. A slot is free only once its ack has landed, so its
//! status key holds the job for as long as the outcome is not recorded.

mod heartbeat;
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
pub use recovery::{DeadWorkerJobs, Recoverer};

use crate::handler::{JobContext, JobError, PutBack, Registry};
use crate::resque::{Job, payload};

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

/// Parse `raw`, find its handler and run it; every way it can go wrong is a
/// [`Outcome::Failed`] with a clear exception name. Never panics.
pub async fn execute(registry: &Registry, queue: &str, raw: &[u8], ctx: JobContext) -> Outcome {
    let started = Instant::now();
    let job = match Job::parse(queue, raw) {
        Ok(job) => job,
        Err(e) => {
            warn!(queue, worker = %ctx.worker, error = %e, "malformed payload");
            return Outcome::Failed(JobError::new(payload::MALFORMED_EXCEPTION, e.to_string()));
        }
    };
    let class = job.class.clone();
    let Some(handler) = registry.get(&class) else {
        warn!(class, queue, worker = %ctx.worker, "no handler for class");
        return Outcome::Unknown(class);
    };
    let worker = ctx.worker.clone();
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
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match &outcome {
        Outcome::Succeeded => debug!(class, queue, worker, elapsed_ms, "job performed"),
        Outcome::PutBack(reason) => {
            info!(class, queue, worker, reason, "job goes back to its queue")
        }
        Outcome::Unknown(_) => {}
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
    outcome
}
