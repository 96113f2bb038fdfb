//! Keeps this process visibly alive, and finds the dead.
//!
//! Every beat (a few seconds) refreshes the process's own registry entry
//! and runs the dead-process check ([`Recoverer`]). Every
//! `heartbeat_interval` it also refreshes both per-slot heartbeats the peers
//! read: Ruby's `workers:heartbeat` (pruned after 300 s) and node-resque's
//! `worker:ping:<name>` (cleaned after `stuckWorkerTimeout`, an hour by
//! default). If the process's entry has vanished, someone took it for dead
//! and recovered its slots: it registers them again.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use super::recovery::Recoverer;
use crate::resque::payload::ProcessEntry;
use crate::resque::{Store, WorkerId};
use crate::vitals::Vitals;

/// The longest time between two beats of the process entry.
pub(super) const MAX_BEAT: Duration = Duration::from_secs(5);

/// What the heartbeat task keeps alive.
pub(super) struct Heartbeat {
    pub store: Store,
    pub workers: Vec<WorkerId>,
    pub queues: String,
    pub heartbeat_interval: Duration,
    pub recoverer: Recoverer,
    pub vitals: std::sync::Arc<Vitals>,
}

impl Heartbeat {
    /// How often the process entry is refreshed: well inside `dead_after`.
    pub fn beat_every(&self) -> Duration {
        MAX_BEAT
            .min(self.recoverer.dead_after / 3)
            .max(Duration::from_millis(100))
    }

    /// Write the process entry now; `true` if it had vanished.
    pub async fn beat(&self) -> crate::Result<bool> {
        let now = self.store.redis_time().await?;
        let entry = ProcessEntry {
            beat: now.timestamp_millis(),
            slots: self.workers.len(),
            queues: self.queues.clone(),
        };
        let vanished = self
            .store
            .process_beat(&self.recoverer.me.field(), &entry)
            .await?;
        self.vitals.heartbeat(entry.beat);
        Ok(vanished)
    }

    /// Spawn the task; it beats until `cancel`.
    pub fn spawn(self, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let span = info_span!("heartbeat", slots = self.workers.len());
        tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(self.beat_every());
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await; // registration wrote the first beats
                let mut last_full = Instant::now();
                let mut last_ok = Instant::now();
                let mut trust_beats_after = Instant::now();
                loop {
                    // Cancel-safe: a beat cut short is rewritten by the next
                    // one or removed by unregistering.
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    match self
                        .tick(&mut last_full, &mut last_ok, &mut trust_beats_after)
                        .await
                    {
                        Ok(()) => self.vitals.redis_ok(),
                        Err(e) => {
                            self.vitals.redis_failed("heartbeat", &e);
                            warn!(error = %e, "heartbeat failed; retrying at the next beat")
                        }
                    }
                }
            }
            .instrument(span),
        )
    }

    async fn tick(
        &self,
        last_full: &mut Instant,
        last_ok: &mut Instant,
        trust_beats_after: &mut Instant,
    ) -> crate::Result<()> {
        let vanished = self.beat().await?;
        // A gap since our previous beat (Redis away, or our calls hanging
        // until it came back) means every other beat is as old as ours:
        // judge nobody by beat age until they had dead_after to beat again.
        if last_ok.elapsed() > self.beat_every() * 2 {
            *trust_beats_after = Instant::now() + self.recoverer.dead_after;
        }
        *last_ok = Instant::now();
        let trust_beats = Instant::now() >= *trust_beats_after;
        if vanished {
            warn!(
                "this process was taken for dead and its slots recovered; registering them again"
            );
            let now = self.store.redis_time().await?;
            self.store.register(&self.workers, now).await?;
        }
        if last_full.elapsed() >= self.heartbeat_interval {
            // Redis's clock, as Ruby's pruning compares against it.
            let now = self.store.redis_time().await?;
            self.store.heartbeat(&self.workers, now).await?;
            *last_full = Instant::now();
        }
        self.recoverer.run(false, trust_beats).await?;
        Ok(())
    }
}
