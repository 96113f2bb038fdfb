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
use crate::worker::policy::{ClassPolicy, Recurring};

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
    /// Recurring schedules the leader fires.
    pub schedules: Vec<Schedule>,
    /// actionHero recurring tasks whose chains the leader keeps alive.
    pub chains: Vec<(String, Recurring)>,
}

/// How long a recurring-task chain must be seen without its link before the
/// leader restores one (covers peers that move a link in several steps).
pub const CHAIN_CHECK: Duration = Duration::from_secs(5);

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
        let mut election = self.store.elect(&self.name, self.lock_ttl).await?;
        if !election.leader && self.holder_died_here().await? {
            election = self.store.elect(&self.name, self.lock_ttl).await?;
        }
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
        if *leader {
            self.run_schedules(&self.schedules).await?;
            self.keep_chains().await?;
        }
        Ok(moved)
    }
}

/// A tick handled later than this after its time counts as missed (no
/// leader lived then): `missed = "skip"` drops it. Leaders look every second,
/// so only a leader failover or an outage makes a tick this late.
pub const MISSED_AFTER: Duration = Duration::from_secs(10);

/// When a recurring schedule fires.
#[derive(Debug, Clone)]
pub enum Every {
    /// A cron expression (5 fields, or 6 with seconds), in UTC.
    Cron(Box<croner::Cron>),
    /// A fixed interval, aligned to the Unix epoch so every node agrees.
    Interval(Duration),
}

/// What to do with ticks missed while no leader lived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Drop them; the next on-time tick runs as usual.
    Skip,
    /// Enqueue one job for all of them together.
    RunOnce,
}

/// A recurring schedule from the config file.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Unique name; its state in Redis is under it.
    pub name: String,
    /// When.
    pub every: Every,
    /// The job's class.
    pub class: String,
    /// The job's queue.
    pub queue: String,
    /// The job's arguments.
    pub args: serde_json::Value,
    /// Missed ticks.
    pub missed: Missed,
}

/// A `[[schedules]]` entry as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    name: Option<String>,
    cron: Option<String>,
    every: Option<toml::Value>,
    class: Option<String>,
    queue: Option<String>,
    args: Option<toml::Value>,
    missed: Option<String>,
}

impl Schedule {
    /// Validate a `[[schedules]]` table; the error names the schedule.
    pub fn from_toml(value: toml::Value, source: &str) -> Result<Schedule, String> {
        let raw: RawSchedule = value
            .try_into()
            .map_err(|e: toml::de::Error| format!("schedule in {source}: {}", e.message()))?;
        let name = raw
            .name
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| format!("schedule in {source} has no `name`"))?;
        let fail = |problem: String| format!("schedule {name:?} ({source}): {problem}");
        let every = match (raw.cron, raw.every) {
            (Some(c), None) => Every::Cron(Box::new(
                c.parse::<croner::Cron>()
                    .map_err(|e| fail(format!("`cron` {c:?} is invalid: {e}")))?,
            )),
            (None, Some(v)) => {
                let text = match &v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let d = crate::config::parse_duration(&text)
                    .filter(|d| d.as_secs() >= 1)
                    .ok_or_else(|| {
                        fail(format!(
                            "`every` {text:?} is not a duration of at least 1 s"
                        ))
                    })?;
                Every::Interval(d)
            }
            _ => return Err(fail("give exactly one of `cron` and `every`".into())),
        };
        let class = raw
            .class
            .filter(|c| !c.is_empty())
            .ok_or_else(|| fail("`class` is missing".into()))?;
        let args = match raw.args {
            None => serde_json::Value::Array(Vec::new()),
            Some(v) => serde_json::to_value(v).map_err(|e| fail(format!("`args`: {e}")))?,
        };
        let missed = match raw.missed.as_deref() {
            None | Some("skip") => Missed::Skip,
            Some("run_once") => Missed::RunOnce,
            Some(other) => {
                return Err(fail(format!(
                    "`missed` {other:?}: expected skip or run_once"
                )));
            }
        };
        Ok(Schedule {
            name: name.clone(),
            every,
            class,
            queue: raw.queue.unwrap_or_else(|| "default".into()),
            args,
            missed,
        })
    }
}

impl Every {
    /// The latest tick at or before `t` (Unix seconds).
    pub fn latest(&self, t: i64) -> Option<i64> {
        match self {
            Every::Interval(d) => {
                let p = d.as_secs().max(1) as i64;
                Some(t.div_euclid(p) * p)
            }
            Every::Cron(cron) => {
                let at = chrono::DateTime::from_timestamp(t, 0)?;
                cron.find_previous_occurrence(&at, true)
                    .ok()
                    .map(|x| x.timestamp())
            }
        }
    }
}

/// Most ticks counted one by one between two leader rounds; more are
/// treated as missed.
const MAX_TICKS: usize = 1000;

/// What a leader does about a schedule at `now`, given the last tick it
/// handled: `Some((new_last, jobs))` to record the latest tick and enqueue
/// `jobs` jobs — one per tick that is at most [`MISSED_AFTER`] old, plus, for
/// [`Missed::RunOnce`], one for all older ones — or `None` when no tick is
/// due. A schedule seen for the first time starts from its latest tick
/// without running it.
pub fn decide(every: &Every, missed: Missed, last: Option<i64>, now: i64) -> Option<(i64, usize)> {
    let latest = every.latest(now)?;
    let last = match last {
        None => return Some((latest, 0)),
        Some(last) if latest <= last => return None,
        Some(last) => last,
    };
    let mut on_time = 0;
    let mut late = false;
    let mut tick = latest;
    // Walk back from the latest tick to the last one handled.
    while tick > last {
        if now - tick <= MISSED_AFTER.as_secs() as i64 && on_time < MAX_TICKS {
            on_time += 1;
        } else {
            late = true;
            break;
        }
        match every.latest(tick - 1) {
            Some(prev) => tick = prev,
            None => break,
        }
    }
    let jobs = on_time + usize::from(late && missed == Missed::RunOnce);
    Some((latest, jobs))
}

impl Scheduler {
    /// A leader on this host whose pid is gone is certainly dead: release
    /// its lock at once instead of waiting for the TTL. Returns whether it
    /// did.
    async fn holder_died_here(&self) -> crate::Result<bool> {
        let Some(holder) = self.store.leader().await? else {
            return Ok(false);
        };
        let (Some((host, pid)), Some((my_host, _))) =
            (holder.rsplit_once(':'), self.name.rsplit_once(':'))
        else {
            return Ok(false);
        };
        let Ok(pid) = pid.parse::<u32>() else {
            return Ok(false);
        };
        if host != my_host || crate::worker::recovery::pid_alive(pid) {
            return Ok(false);
        }
        info!(dead = %holder, "the scheduler leader died on this host; taking over");
        self.store.resign(&holder).await?;
        Ok(true)
    }

    /// Restore the link of any recurring-task chain lost with a dead peer:
    /// one script per chain and round, which restores a link once the chain
    /// has been seen without one for [`CHAIN_CHECK`].
    async fn keep_chains(&self) -> crate::Result<()> {
        for (class, rec) in &self.chains {
            let payload = ClassPolicy::recurring_payload(class, rec);
            if self
                .store
                .keep_chain(class, &rec.queue, &payload, CHAIN_CHECK)
                .await?
            {
                warn!(class, queue = %rec.queue, "recurring task had lost its job; one restored");
            }
        }
        Ok(())
    }

    /// Handle every schedule's due tick (leader only; exactly once per tick
    /// across leaders thanks to the compare-and-set in `scripts/tick.lua`).
    pub async fn run_schedules(&self, schedules: &[Schedule]) -> crate::Result<usize> {
        let mut enqueued = 0;
        for s in schedules {
            let now = self.store.redis_time().await?.timestamp();
            let last = self.store.schedule_last(&s.name).await?;
            let Some((new_last, jobs)) = decide(&s.every, s.missed, last, now) else {
                continue;
            };
            let payload = crate::resque::payload::encode_job(&s.class, &s.queue, s.args.clone());
            if self
                .store
                .schedule_tick(&s.name, last, new_last, &s.queue, &payload, jobs)
                .await?
            {
                enqueued += jobs;
                if jobs > 0 {
                    debug!(schedule = %s.name, tick = new_last, jobs, "recurring job enqueued");
                } else if last.is_some() {
                    info!(schedule = %s.name, tick = new_last, "ticks missed while no leader lived; skipped");
                }
            }
        }
        Ok(enqueued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn interval_ticks_are_aligned_to_the_epoch() {
        let e = Every::Interval(Duration::from_secs(60));
        assert_eq!(e.latest(1_000_000_059), Some(1_000_000_020));
        assert_eq!(e.latest(1_000_000_020), Some(1_000_000_020));
    }

    #[test]
    fn cron_ticks() {
        let e = Every::Cron(Box::new(croner::Cron::from_str("0 3 * * *").unwrap()));
        // 2026-11-30 04:00:00 UTC → latest 03:00 that day.
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-30T04:00:00Z")
            .unwrap()
            .timestamp();
        let want = chrono::DateTime::parse_from_rfc3339("2026-11-30T03:00:00Z")
            .unwrap()
            .timestamp();
        assert_eq!(e.latest(t), Some(want));
    }

    #[test]
    fn decisions() {
        let e = Every::Interval(Duration::from_secs(60));
        // First sight: start counting, run nothing.
        assert_eq!(decide(&e, Missed::Skip, None, 125), Some((120, 0)));
        // Nothing new.
        assert_eq!(decide(&e, Missed::Skip, Some(120), 170), None);
        // On time: one job.
        assert_eq!(decide(&e, Missed::Skip, Some(120), 181), Some((180, 1)));
        // Two ticks passed during a short failover: one job each.
        let e1 = Every::Interval(Duration::from_secs(1));
        assert_eq!(decide(&e1, Missed::Skip, Some(100), 103), Some((103, 3)));
        // A long gap: skip keeps only the on-time ticks, run_once adds one.
        assert_eq!(decide(&e, Missed::Skip, Some(60), 185), Some((180, 1)));
        assert_eq!(decide(&e, Missed::Skip, Some(60), 215), Some((180, 0)));
        assert_eq!(decide(&e, Missed::RunOnce, Some(60), 215), Some((180, 1)));
    }
}
