//! Typed Redis operations of the Resque contract. The only module that talks
//! to Redis for Resque keys; everything else calls these verbs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Script, Value};

use super::WorkerId;
use super::keys::Keys;
use super::payload;
use crate::connection::{Conn, Target};
use crate::error::{Error, Result};

/// A finished job to record in the next [`Store::step`].
#[derive(Debug, Clone)]
pub struct Ack {
    /// The slot that ran it.
    pub worker: WorkerId,
    /// The status value written when it was taken (the fence).
    pub expected: Vec<u8>,
    /// What to record.
    pub kind: AckKind,
    /// Extra steps in the same atomic step, as the JSON `scripts/step.lua`
    /// reads: keys to delete, retry settings, a recurring re-enqueue.
    pub extra: Option<String>,
}

/// How a job ended.
#[derive(Debug, Clone)]
pub enum AckKind {
    /// Performed: count it.
    Done,
    /// Failed: push this failure record and count it.
    Failed(String),
    /// Put the payload back at the head of `queue`; count nothing.
    PutBack {
        /// Its queue.
        queue: String,
        /// Its bytes.
        raw: std::sync::Arc<[u8]>,
    },
    /// Drop the job: delete the status, count nothing (a job whose JobLock
    /// is held, when it is not to be re-enqueued — node-resque's behaviour).
    Drop,
    /// Schedule `payload` `secs` from now; count nothing (a job whose
    /// JobLock is held).
    Later {
        /// The payload to run later.
        payload: String,
        /// Delay in seconds.
        secs: u64,
    },
    /// Count a failed attempt in the Retry plugin keys (settings in
    /// `extra`): retry `payload` later, or record `record` after the last.
    Retry {
        /// The failure record if no attempt is left.
        record: String,
        /// The payload to retry.
        payload: String,
    },
}

/// A cap on the jobs one step may take of some classes.
#[derive(Debug, Clone)]
pub struct TakeLimit {
    /// How many more may be taken (0: none; such jobs are skipped).
    pub remaining: usize,
    /// Anchored Lua patterns of the classes (see [`crate::glob::to_lua_pattern`]).
    pub patterns: Vec<String>,
}

/// A job handed to a slot by [`Store::step`].
#[derive(Debug, Clone)]
pub struct Taken {
    /// Index into the `free` slots passed to `step`.
    pub slot: usize,
    /// The queue it came from.
    pub queue: String,
    /// The payload's bytes, verbatim.
    pub raw: Vec<u8>,
    /// The exact value now in the slot's status key (bytes: a malformed
    /// payload need not be UTF-8).
    pub status: Vec<u8>,
    /// The payload's class, when it is a well-formed object with one.
    pub class: Option<String>,
}

/// What one [`Store::step`] is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct StepRequest<'a> {
    /// Finished jobs to record.
    pub acks: &'a [&'a Ack],
    /// Batched per-worker success counts to add.
    pub counts: &'a [(&'a WorkerId, u64)],
    /// Slots without a job; a taken job names its index here.
    pub free: &'a [&'a WorkerId],
    /// Queues in priority order.
    pub queues: &'a [String],
    /// Caps on classes to take.
    pub limits: &'a [TakeLimit],
    /// This process (`host:pid`): takes happen only while it is in the
    /// process registry.
    pub process: &'a str,
    /// The time written as `run_at`.
    pub now: DateTime<Utc>,
}

/// What one [`Store::step`] did.
#[derive(Debug, Default)]
pub struct StepReply {
    /// `pause-all-workers` was set, so nothing was taken.
    pub paused: bool,
    /// This process's registry entry is gone (it was taken for dead), so
    /// nothing was taken; the heartbeat registers it again.
    pub unregistered: bool,
    /// Per ack, whether it applied (false: the status no longer held the job).
    pub applied: Vec<bool>,
    /// The jobs taken.
    pub taken: Vec<Taken>,
    /// Free slots whose status key still held a value (an ack Redis lost),
    /// so nothing was taken into them: the worker resumes what they hold.
    pub occupied: usize,
}

/// The Resque store of one namespace.
#[derive(Clone)]
pub struct Store {
    target: Target,
    conn: Conn,
    keys: Keys,
    /// Shared: a `Script` holds its whole source, and handles are cloned for
    /// every job.
    scripts: std::sync::Arc<Scripts>,
}

/// The Lua scripts, loaded once per process (EVALSHA, EVAL on NOSCRIPT).
struct Scripts {
    step: Script,
    put_back: Script,
    unregister: Script,
    recover: Script,
    unlock: Script,
    leader: Script,
    promote: Script,
    tick: Script,
    chain: Script,
}

/// What a scheduler learned from one election round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Election {
    /// This scheduler holds the leader lock.
    pub leader: bool,
    /// A Ruby resque-scheduler holds its master lock.
    pub ruby_master: bool,
}

/// What [`Store::recover_slot`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// The status key changed meanwhile; nothing done.
    Changed,
    /// The slot held no job; its registration is gone.
    Idle,
    /// Its job went back to the head of its queue.
    Requeued,
    /// Its job went to `failed`.
    Failed,
}

/// The job of a dead slot and what to do with it (see `scripts/recover.lua`).
#[derive(Debug, Clone)]
pub struct Recovery<'a> {
    /// The exact status value read, `None` if idle.
    pub expected: Option<&'a [u8]>,
    /// `true`: put the job back; `false`: fail it.
    pub requeue: bool,
    /// Its queue.
    pub queue: &'a str,
    /// Its payload bytes.
    pub raw: &'a [u8],
    /// The failure record if failed.
    pub failure: &'a str,
    /// Put back at most this many times (within `counter_ttl`).
    pub max_recoveries: u32,
    /// The failure record once it was put back too often.
    pub poison_failure: &'a str,
    /// How long recoveries of one payload are counted.
    pub counter_ttl: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connect to `target` and use keys under `namespace`.
    pub async fn connect(target: &Target, namespace: &str) -> Result<Store> {
        let conn = target.connect().await?;
        Ok(Store {
            target: target.clone(),
            conn,
            keys: Keys::new(namespace),
            scripts: std::sync::Arc::new(Scripts {
                step: Script::new(include_str!("scripts/step.lua")),
                put_back: Script::new(include_str!("scripts/put_back.lua")),
                unregister: Script::new(concat!(
                    include_str!("scripts/deregister.lua"),
                    include_str!("scripts/unregister.lua")
                )),
                recover: Script::new(concat!(
                    include_str!("scripts/deregister.lua"),
                    include_str!("scripts/recover.lua")
                )),
                unlock: Script::new(
                    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                ),
                leader: Script::new(include_str!("scripts/leader.lua")),
                promote: Script::new(include_str!("scripts/promote.lua")),
                tick: Script::new(include_str!("scripts/tick.lua")),
                chain: Script::new(include_str!("scripts/chain.lua")),
            }),
        })
    }

    /// The shared connection, for the other contracts' modules
    /// (`actionhero`) that keep their own keys on the same Redis.
    pub fn connection(&self) -> Conn {
        self.conn.clone()
    }

    /// The key names of this store.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A connection of its own for blocking waits, which would stall the
    /// shared multiplexed connection.
    pub async fn blocking_connection(&self) -> Result<MultiplexedConnection> {
        Ok(self.target.dedicated().await?)
    }

    /// Redis's clock (`TIME`), so heartbeats compare with what Ruby's pruning
    /// compares them against.
    pub async fn redis_time(&self) -> Result<DateTime<Utc>> {
        let mut conn = self.conn.clone();
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
        DateTime::from_timestamp(secs, (micros * 1000) as u32)
            .ok_or_else(|| Error::Protocol(format!("TIME returned {secs}.{micros}")))
    }

    /// Record finished jobs (and the batched per-worker success counts) and
    /// take up to `free.len()` new ones, in one round trip (see
    /// `scripts/step.lua`).
    pub async fn step(&self, req: &StepRequest<'_>) -> Result<StepReply> {
        let StepRequest {
            acks,
            counts,
            free,
            queues,
            limits,
            process,
            now,
        } = *req;
        let mut inv = self.scripts.step.prepare_invoke();
        inv.arg(self.keys.prefix()).arg(acks.len());
        for ack in acks {
            inv.arg(&ack.worker.id)
                .arg(&ack.worker.name)
                .arg(&ack.expected);
            match &ack.kind {
                AckKind::Done => inv.arg("ok").arg("").arg(""),
                AckKind::Failed(record) => inv.arg("fail").arg(record).arg(""),
                AckKind::PutBack { queue, raw } => inv.arg("back").arg(queue).arg(&raw[..]),
                AckKind::Later { payload, secs } => inv.arg("later").arg(*secs).arg(payload),
                AckKind::Retry { record, payload } => inv.arg("retry").arg(record).arg(payload),
                AckKind::Drop => inv.arg("drop").arg("").arg(""),
            };
            inv.arg(ack.extra.as_deref().unwrap_or(""));
        }
        inv.arg(counts.len());
        for (w, n) in counts {
            inv.arg(&w.id).arg(&w.name).arg(*n);
        }
        let run_at = payload::run_at(now);
        inv.arg(&run_at).arg(free.len());
        for slot in free {
            inv.arg(&slot.id).arg(&slot.status_tail);
        }
        inv.arg(queues.len());
        for q in queues {
            inv.arg(q).arg(payload::json_string(q));
        }
        inv.arg(limits.len());
        for limit in limits {
            inv.arg(limit.remaining).arg(limit.patterns.len());
            for p in &limit.patterns {
                inv.arg(p);
            }
        }
        inv.arg(process);
        let mut conn = self.conn.clone();
        let (paused, applied, flat, occupied): (i64, Vec<i64>, Vec<Value>, usize) =
            inv.invoke_async(&mut conn).await?;

        let mut taken = Vec::with_capacity(flat.len() / 5);
        let mut it = flat.into_iter();
        while let (Some(slot), Some(qi), Some(job), Some(status), Some(class)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        {
            let class: String = redis::from_redis_value(&class)?;
            let slot: usize = redis::from_redis_value::<usize>(&slot)? - 1;
            let qi: usize = redis::from_redis_value::<usize>(&qi)? - 1;
            let raw: Vec<u8> = redis::from_redis_value(&job)?;
            let status: Vec<u8> = redis::from_redis_value(&status)?;
            let queue = queues
                .get(qi)
                .ok_or_else(|| Error::Protocol(format!("step returned queue index {qi}")))?
                .clone();
            let status = if status.is_empty() {
                // Rebuild exactly what the script wrote (see step.lua).
                let mut s =
                    payload::status_head(&payload::json_string(&queue), &run_at).into_bytes();
                s.extend_from_slice(&raw);
                s.extend_from_slice(free[slot].status_tail.as_bytes());
                s
            } else {
                status
            };
            taken.push(Taken {
                slot,
                queue,
                raw,
                status,
                class: (!class.is_empty()).then_some(class),
            });
        }
        Ok(StepReply {
            paused: paused == 1,
            unregistered: paused == 2,
            applied: applied.into_iter().map(|a| a == 1).collect(),
            taken,
            occupied,
        })
    }

    /// Put a taken job back at the head of its queue, if `worker`'s status
    /// key still holds `expected`. Returns whether it went back.
    pub async fn put_back(
        &self,
        worker: &WorkerId,
        expected: &[u8],
        queue: &str,
        raw: &[u8],
    ) -> Result<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = self
            .scripts
            .put_back
            .key(self.keys.worker(&worker.id))
            .key(self.keys.queue(queue))
            .arg(expected)
            .arg(raw)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// What the status keys of `workers` hold (`None`: idle).
    pub async fn held(&self, workers: &[&WorkerId]) -> Result<Vec<Option<Vec<u8>>>> {
        if workers.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = workers.iter().map(|w| self.keys.worker(&w.id)).collect();
        let mut conn = self.conn.clone();
        Ok(redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?)
    }

    /// Register worker slots as Ruby Resque and node-resque do: heartbeat
    /// (before the `workers` entry, as Ruby orders it), `workers`, `:started`
    /// and node-resque's ping, in one transaction.
    pub async fn register(&self, workers: &[WorkerId], now: DateTime<Utc>) -> Result<()> {
        let k = &self.keys;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for w in workers {
            pipe.hset(k.heartbeats(), &w.id, payload::heartbeat(now))
                .ignore();
            pipe.sadd(k.workers(), &w.id).ignore();
            pipe.set(k.worker_started(&w.id), payload::started(now))
                .ignore();
            pipe.set(
                k.worker_ping(&w.name),
                payload::ping(now, &w.name, &w.queues),
            )
            .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Refresh both heartbeats of every slot: Ruby's `workers:heartbeat`
    /// field and node-resque's ping key, and make sure every slot is still
    /// registered.
    pub async fn heartbeat(&self, workers: &[WorkerId], now: DateTime<Utc>) -> Result<()> {
        if workers.is_empty() {
            return Ok(());
        }
        let k = &self.keys;
        let beat = payload::heartbeat(now);
        let fields: Vec<(&str, &str)> = workers
            .iter()
            .map(|w| (w.id.as_str(), beat.as_str()))
            .collect();
        let pings: Vec<(String, String)> = workers
            .iter()
            .map(|w| {
                (
                    k.worker_ping(&w.name),
                    payload::ping(now, &w.name, &w.queues),
                )
            })
            .collect();
        let ids: Vec<&str> = workers.iter().map(|w| w.id.as_str()).collect();
        let mut pipe = redis::pipe();
        pipe.hset_multiple(k.heartbeats(), &fields).ignore();
        pipe.mset(&pings).ignore();
        // Re-assert the registration: Ruby's same-host pruning may have
        // removed it (see the README on sharing a host with Ruby workers).
        pipe.sadd(k.workers(), &ids).ignore();
        for w in workers {
            pipe.cmd("SET")
                .arg(k.worker_started(&w.id))
                .arg(payload::started(now))
                .arg("NX")
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Remove the registrations of `workers` (see `scripts/unregister.lua`).
    /// Returns the ids left registered because their status still holds a job.
    pub async fn unregister(&self, workers: &[WorkerId]) -> Result<Vec<String>> {
        let mut inv = self.scripts.unregister.prepare_invoke();
        inv.arg(self.keys.prefix());
        for w in workers {
            inv.arg(&w.id).arg(&w.name);
        }
        let mut conn = self.conn.clone();
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Record that process `field` is alive. Returns `true` if its entry
    /// was missing: someone took it for dead and recovered it.
    pub async fn process_beat(&self, field: &str, entry: &payload::ProcessEntry) -> Result<bool> {
        let json = serde_json::to_string(entry).expect("plain struct serialises");
        let mut conn = self.conn.clone();
        let added: i64 = conn.hset(self.keys.processes(), field, json).await?;
        Ok(added == 1)
    }

    /// Every registered ah-worker process (an unreadable entry is `None`).
    pub async fn processes(&self) -> Result<Vec<(String, Option<payload::ProcessEntry>)>> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> = conn.hgetall(self.keys.processes()).await?;
        Ok(all
            .into_iter()
            .map(|(field, v)| (field, serde_json::from_str(&v).ok()))
            .collect())
    }

    /// Drop a process's registry entry.
    pub async fn remove_process(&self, field: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        conn.hdel::<_, _, ()>(self.keys.processes(), field).await?;
        Ok(())
    }

    /// Take the recovery lock for `ttl` if nobody holds it.
    pub async fn lock_recovery(&self, owner: &str, ttl: Duration) -> Result<bool> {
        self.try_lock(&self.keys.recovery_lock(), owner, ttl).await
    }

    /// Release the recovery lock if `owner` still holds it.
    pub async fn unlock_recovery(&self, owner: &str) -> Result<()> {
        self.release(self.keys.recovery_lock(), owner).await
    }

    /// Delete lock `key` only if `owner` still holds it.
    async fn release(&self, key: String, owner: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        self.scripts
            .unlock
            .key(key)
            .arg(owner)
            .invoke_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    /// What one slot's status key holds.
    pub async fn status(&self, worker: &WorkerId) -> Result<Option<Vec<u8>>> {
        let mut conn = self.conn.clone();
        Ok(conn.get(self.keys.worker(&worker.id)).await?)
    }

    /// Recover one slot of a dead process (see `scripts/recover.lua`).
    pub async fn recover_slot(&self, worker: &WorkerId, r: &Recovery<'_>) -> Result<Recovered> {
        let mut conn = self.conn.clone();
        let n: i64 = self
            .scripts
            .recover
            .prepare_invoke()
            .arg(self.keys.prefix())
            .arg(&worker.id)
            .arg(&worker.name)
            .arg(r.expected.unwrap_or(b""))
            .arg(if r.requeue { "requeue" } else { "fail" })
            .arg(r.queue)
            .arg(r.raw)
            .arg(r.failure)
            .arg(r.max_recoveries)
            .arg(r.poison_failure)
            .arg(r.counter_ttl.as_secs().max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(match n {
            -1 => Recovered::Changed,
            0 => Recovered::Idle,
            1 => Recovered::Requeued,
            _ => Recovered::Failed,
        })
    }

    /// `HINCRBY <namespace>:<key> <field> 1`.
    pub async fn count(&self, key: &str, field: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        conn.hincr::<_, _, _, ()>(format!("{}{key}", self.keys.prefix()), field, 1)
            .await?;
        Ok(())
    }

    /// `RPUSH <namespace>:<key> <value>`.
    pub async fn push(&self, key: &str, value: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        conn.rpush::<_, _, ()>(format!("{}{key}", self.keys.prefix()), value)
            .await?;
        Ok(())
    }

    /// Take or renew the scheduler leader lock as `name` for `ttl`.
    pub async fn elect(&self, name: &str, ttl: Duration) -> Result<Election> {
        let mut conn = self.conn.clone();
        let (leader, ruby): (i64, i64) = self
            .scripts
            .leader
            .key(self.keys.leader_lock())
            .key(self.keys.ruby_master_lock())
            .arg(name)
            .arg(ttl.as_secs().max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(Election {
            leader: leader == 1,
            ruby_master: ruby == 1,
        })
    }

    /// Give up the leader lock if `name` holds it.
    pub async fn resign(&self, name: &str) -> Result<()> {
        self.release(self.keys.leader_lock(), name).await
    }

    /// Who holds the leader lock.
    pub async fn leader(&self) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        Ok(conn.get(self.keys.leader_lock()).await?)
    }

    /// Move up to `max` jobs due at `now` into their queues, as leader
    /// `name` (see `scripts/promote.lua`). `None`: not the leader any more.
    pub async fn promote_due(
        &self,
        now: DateTime<Utc>,
        max: usize,
        name: &str,
    ) -> Result<Option<usize>> {
        let mut conn = self.conn.clone();
        let n: i64 = self
            .scripts
            .promote
            .prepare_invoke()
            .arg(self.keys.prefix())
            .arg(now.timestamp())
            .arg(max)
            .arg(name)
            .arg(payload::failed_at(now))
            .invoke_async(&mut conn)
            .await?;
        Ok((n >= 0).then_some(n as usize))
    }

    /// The last tick recurring schedule `name` handled (Unix seconds).
    pub async fn schedule_last(&self, name: &str) -> Result<Option<i64>> {
        let mut conn = self.conn.clone();
        Ok(conn.hget(self.keys.schedules(), name).await?)
    }

    /// Record tick `new_last` of schedule `name` if its last tick is still
    /// `expected`, enqueueing `jobs` copies of `payload` on `queue` with it.
    /// Returns whether it was recorded (see `scripts/tick.lua`).
    pub async fn schedule_tick(
        &self,
        name: &str,
        expected: Option<i64>,
        new_last: i64,
        queue: &str,
        payload: &str,
        jobs: usize,
    ) -> Result<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = self
            .scripts
            .tick
            .key(self.keys.schedules())
            .arg(self.keys.prefix())
            .arg(name)
            .arg(expected.map(|e| e.to_string()).unwrap_or_default())
            .arg(new_last)
            .arg(queue)
            .arg(payload)
            .arg(jobs)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Check that a recurring task's chain has its link, restoring one if it
    /// was missing twice `grace` apart (see `scripts/chain.lua`). Returns
    /// whether a link was restored.
    pub async fn keep_chain(
        &self,
        class: &str,
        queue: &str,
        payload: &str,
        grace: Duration,
    ) -> Result<bool> {
        let now = self.redis_time().await?.timestamp();
        let mut conn = self.conn.clone();
        let n: i64 = self
            .scripts
            .chain
            .key(self.keys.chains())
            .arg(self.keys.prefix())
            .arg(queue)
            .arg(payload)
            .arg(class)
            .arg(now)
            .arg(grace.as_secs())
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Every scheduled time with its jobs, oldest first (at most `limit`
    /// times).
    pub async fn delayed(&self, limit: usize) -> Result<Vec<(i64, Vec<String>)>> {
        let mut conn = self.conn.clone();
        let times: Vec<i64> = redis::cmd("ZRANGE")
            .arg(self.keys.delayed_schedule())
            .arg(0)
            .arg(limit.saturating_sub(1) as i64)
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::with_capacity(times.len());
        for ts in times {
            let jobs: Vec<String> = conn.lrange(self.keys.delayed(ts), 0, -1).await?;
            out.push((ts, jobs));
        }
        Ok(out)
    }

    /// `SET key value PX ttl NX`: take a lock atomically, always with a TTL.
    pub async fn try_lock(&self, key: &str, value: &str, ttl: Duration) -> Result<bool> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Whether `payload` is in the delayed queue (its `timestamps:` set has a
    /// member), as node-resque's DelayQueueLock checks.
    pub async fn is_scheduled(&self, payload: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = conn.scard(self.keys.timestamps(payload)).await?;
        Ok(n > 0)
    }

    /// node-resque's QueueLock at enqueue: take `key` (value: its expiry in
    /// Unix seconds, with a TTL) unless it is held and not yet expired.
    pub async fn take_queue_lock(&self, key: &str, timeout: Duration) -> Result<bool> {
        let now = chrono::Utc::now().timestamp();
        let value = (now + timeout.as_secs() as i64 + 1).to_string();
        if self.try_lock(key, &value, timeout).await? {
            return Ok(true);
        }
        let mut conn = self.conn.clone();
        let held: Option<i64> = conn.get(key).await?;
        if held.is_some_and(|until| now <= until) {
            return Ok(false);
        }
        // Stale (written without a TTL by an old peer): take it over.
        redis::cmd("SET")
            .arg(key)
            .arg(&value)
            .arg("EX")
            .arg(timeout.as_secs().max(1))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(true)
    }

    /// `DEL key`.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        conn.del::<_, ()>(key).await?;
        Ok(())
    }

    /// Every name in the `queues` set.
    pub async fn queue_names(&self) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        Ok(conn.smembers(self.keys.queues()).await?)
    }

    /// How many jobs wait in each of `queues`, in one round trip.
    pub async fn queue_lengths(&self, queues: &[String]) -> Result<Vec<u64>> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for q in queues {
            pipe.llen(self.keys.queue(q));
        }
        let mut conn = self.conn.clone();
        Ok(pipe.query_async(&mut conn).await?)
    }

    /// Push a payload at the tail of `queue` and make the queue known, as
    /// `Resque.push` and node-resque's `enqueue` do.
    pub async fn enqueue(&self, queue: &str, payload: &[u8]) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .sadd(self.keys.queues(), queue)
            .ignore()
            .rpush(self.keys.queue(queue), payload)
            .ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Schedule a payload for Unix second `ts` as node-resque's `enqueueAt`
    /// does (one transaction): `RPUSH delayed:<ts>`, `SADD timestamps:<job>
    /// delayed:<ts>`, `ZADD delayed_queue_schedule <ts> <ts>`. The queue is
    /// inside the payload; a scheduler moves it when due.
    pub async fn enqueue_at(&self, ts: i64, payload: &str) -> Result<()> {
        let k = &self.keys;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .rpush(k.delayed(ts), payload)
            .ignore()
            .sadd(k.timestamps(payload), Keys::delayed_member(ts))
            .ignore()
            .zadd(k.delayed_schedule(), ts, ts)
            .ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Block on `conn` until `queue` holds a job or `timeout` passes, without
    /// taking the job: `BLMOVE q q LEFT LEFT` moves the head onto itself, so
    /// the queue is unchanged. Returns whether a job is there.
    pub async fn wait_for_job(
        &self,
        conn: &mut MultiplexedConnection,
        queue: &str,
        timeout: Duration,
    ) -> Result<bool> {
        let key = self.keys.queue(queue);
        let found: Option<Vec<u8>> = redis::cmd("BLMOVE")
            .arg(&key)
            .arg(&key)
            .arg("LEFT")
            .arg("LEFT")
            .arg(timeout.as_secs_f64())
            .query_async(conn)
            .await?;
        Ok(found.is_some())
    }
}
