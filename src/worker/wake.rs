//! Waking an idle worker the moment a job arrives, instead of polling.
//!
//! One task per queue blocks on `BLMOVE q q LEFT LEFT` on a connection of
//! its own: the command returns as soon as the queue is non-empty and leaves
//! the queue as it was. The task then wakes the runner, which takes jobs
//! with its atomic step. Waiters only wait while the runner is idle (armed
//! by [`Waiters::arm`]), so a busy worker with a full queue does not spin.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info_span};

use crate::resque::Store;

/// Backoff after a failed blocking wait (Redis away); the runner's own
/// periodic check keeps working meanwhile.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The waiter tasks of the current queue list.
pub(super) struct Waiters {
    store: Store,
    timeout: Duration,
    arm: watch::Sender<u64>,
    wake: Arc<Notify>,
    tasks: HashMap<String, JoinHandle<()>>,
}

impl Waiters {
    /// No waiters yet; `timeout` bounds each blocking call.
    pub(super) fn new(store: Store, timeout: Duration) -> Waiters {
        Waiters {
            store,
            timeout,
            arm: watch::channel(0).0,
            wake: Arc::new(Notify::new()),
            tasks: HashMap::new(),
        }
    }

    /// What the runner awaits to be woken.
    pub(super) fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Wait on exactly `queues` from now on.
    pub(super) fn set_queues(&mut self, queues: &[String]) {
        self.tasks.retain(|q, task| {
            let keep = queues.contains(q);
            if !keep {
                task.abort();
            }
            keep
        });
        for q in queues {
            if !self.tasks.contains_key(q) {
                let task = spawn_waiter(
                    self.store.clone(),
                    q.clone(),
                    self.arm.subscribe(),
                    self.wake.clone(),
                    self.timeout,
                );
                self.tasks.insert(q.clone(), task);
            }
        }
    }

    /// The runner is idle: each waiter blocks until its queue has a job.
    pub(super) fn arm(&self) {
        self.arm.send_modify(|n| *n += 1);
    }
}

impl Drop for Waiters {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

fn spawn_waiter(
    store: Store,
    queue: String,
    mut arm: watch::Receiver<u64>,
    wake: Arc<Notify>,
    timeout: Duration,
) -> JoinHandle<()> {
    let span = info_span!("waiter", queue = %queue);
    tokio::spawn(
        async move {
            let mut conn = None;
            // Ends when the runner drops the sender or aborts the task; an
            // abort mid-BLMOVE drops the connection, which Redis cleans up.
            while arm.changed().await.is_ok() {
                loop {
                    let c = match &mut conn {
                        Some(c) => c,
                        None => match store.blocking_connection().await {
                            Ok(c) => conn.insert(c),
                            Err(e) => {
                                debug!(error = %e, "cannot connect for blocking wait");
                                tokio::time::sleep(RETRY_DELAY).await;
                                continue;
                            }
                        },
                    };
                    match store.wait_for_job(c, &queue, timeout).await {
                        Ok(true) => {
                            wake.notify_one();
                            break;
                        }
                        // Still idle (or not): keep waiting; a busy runner
                        // costs one extra call before this waiter stops.
                        Ok(false) => {}
                        Err(e) => {
                            debug!(error = %e, "blocking wait failed");
                            conn = None;
                            tokio::time::sleep(RETRY_DELAY).await;
                        }
                    }
                }
            }
        }
        .instrument(span),
    )
}
