//! The scheduler: moves due delayed jobs into their queues on one node at a
//! time.
//!
//! Any number of processes can run it (`--scheduler`); they elect a leader
//! through node-resque's `resque_scheduler_leader_lock` (same key, value and
//! TTL semantics, so ah-worker and node-resque schedulers exclude each
//! other). The leader renews the lock every round; if it dies, another takes
//! over once the lock's TTL runs out. While a Ruby resque-scheduler holds
//! its own master lock, the leader moves nothing. Each job moves in one
//! atomic step (`scripts/promote.lua`), fenced on the leader lock.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::resque::Store;

/// How often the scheduler runs a round: due jobs move within a second.
pub const POLL: Duration = Duration::from_secs(1);
/// Jobs moved per script call; calls repeat until nothing is due.
const BATCH: usize = 100;

/// One scheduler participant.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// The store.
    pub store: Store,
    /// Its name in the leader lock (`host:pid`, as node-resque names its
    /// schedulers).
    pub name: String,
    /// Leader lock TTL: how long a dead leader blocks the others.
    pub lock_ttl: Duration,
}

impl Scheduler {
    /// Run rounds until `cancel`, then give up the lock if held.
    pub fn spawn(self, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let span = info_span!("scheduler", name = %self.name);
        tokio::spawn(
            async move {
                let mut leader = false;
                let mut tick = tokio::time::interval(POLL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    // Cancel-safety: a round is only raced between rounds; a
                    // round itself is atomic script calls.
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    if let Err(e) = self.round(&mut leader).await {
                        warn!(error = %e, "scheduler round failed; retrying");
                    }
                }
                if leader {
                    match self.store.resign(&self.name).await {
                        Ok(()) => info!("scheduler leadership released"),
                        Err(e) => warn!(error = %e, "cannot release the leader lock; it expires"),
                    }
                }
            }
            .instrument(span),
        )
    }

    /// One round: election, then moving what is due. Public for tests.
    pub async fn round(&self, leader: &mut bool) -> crate::Result<usize> {
        let election = self.store.elect(&self.name, self.lock_ttl).await?;
        if election.leader != *leader {
            if election.leader {
                info!("became the scheduler leader");
            } else {
                info!("no longer the scheduler leader");
            }
            *leader = election.leader;
        }
        if !election.leader {
            return Ok(0);
        }
        if election.ruby_master {
            debug!("a Ruby resque-scheduler holds its master lock; moving nothing");
            return Ok(0);
        }
        let mut moved = 0;
        loop {
            let now = self.store.redis_time().await?;
            match self.store.promote_due(now, BATCH, &self.name).await? {
                Some(n) => {
                    moved += n;
                    if n < BATCH {
                        break;
                    }
                }
                None => {
                    *leader = false;
                    break;
                }
            }
        }
        if moved > 0 {
            debug!(moved, "delayed jobs moved to their queues");
        }
        Ok(moved)
    }
}
