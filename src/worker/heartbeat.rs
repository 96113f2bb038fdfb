//! Keeps both heartbeats of every slot fresh: Ruby's `workers:heartbeat`
//! (pruned after 300 s) and node-resque's `worker:ping:<name>` (cleaned after
//! `stuckWorkerTimeout`, an hour by default).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use crate::resque::{Store, WorkerId};

/// Spawn the heartbeat task; it beats every `every` until `cancel`.
pub(super) fn spawn(
    store: Store,
    workers: Vec<WorkerId>,
    every: Duration,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let span = info_span!("heartbeat", slots = workers.len());
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // registration wrote the first beat
            loop {
                // Cancel-safe: a beat cut short is rewritten by the next one
                // or removed by unregistering.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                // Redis's clock, as Ruby's pruning compares against it.
                let beat = async {
                    let now = store.redis_time().await?;
                    store.heartbeat(&workers, now).await
                };
                if let Err(e) = beat.await {
                    warn!(error = %e, "heartbeat failed; retrying at the next beat");
                }
            }
        }
        .instrument(span),
    )
}
