//! The [`Runner`]: one task that owns every job slot of the process.
//!
//! It talks to Redis through [`Store::step`], which records the outcomes of
//! finished jobs and takes new jobs for the free slots in one round trip, so
//! a saturated worker needs less than one round trip per job. Jobs run as
//! tokio tasks; the runner collects their outcomes, and between steps waits
//! for a job to finish, a control command, a wake-up from the queue waiters
//! or a timer.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, error, info, warn};

use super::heartbeat::Heartbeat;
use super::policy::{self, ClassPolicy, Policies, RecurringStyle};
use super::queues::QueueSpec;
use super::recovery::Recoverer;
use super::wake::Waiters;
use super::{Outcome, UnknownClass, execute};
use crate::backoff::Backoff;
use crate::connection::RESPONSE_TIMEOUT;
use crate::error::Result;
use crate::handler::{JobContext, JobError, Registry, Services};
use crate::resque::{
    Ack, AckKind, Failure, Job, StepReply, StepRequest, Store, TakeLimit, WorkerId, payload,
};
use crate::shutdown::{Control, StopReason, StopReport};
use crate::vitals::{JobMeter, JobOutcome, Phase, Vitals};

/// Job ids (`<pid>-<n>`) unique in the process, across reloads.
static JOB_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Longest delay of the batched per-worker success counters
/// (`stat:processed:<worker>`), as Sidekiq and actionHero batch theirs.
const COUNT_LAG: Duration = Duration::from_secs(1);
/// How often a dynamic queue list (`*`, `!skip`) is re-read while idle.
const QUEUE_REFRESH: Duration = Duration::from_secs(1);
/// How often to look again for work while a plugin is at its limit: jobs
/// of other classes may be waiting behind its jobs, and a blocking wait
/// would wake at once on those.
const LIMITED_POLL: Duration = Duration::from_millis(100);

/// Everything a worker process needs to run its slots.
#[derive(Debug)]
pub struct Runner {
    /// The Resque store.
    pub store: Store,
    /// Class → handler.
    pub registry: Arc<Registry>,
    /// One id per slot.
    pub slots: Vec<WorkerId>,
    /// The queue list.
    pub queues: QueueSpec,
    /// Idle re-check interval; zero drains the queues and stops.
    pub interval: Duration,
    /// Grace period for running jobs on [`Control::Stop`].
    pub shutdown_timeout: Duration,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// What to do with a class no handler claims.
    pub unknown_class: UnknownClass,
    /// What handlers may call while they run.
    pub services: Services,
    /// Finds and recovers dead processes (this one's identity included).
    pub recoverer: Recoverer,
    /// Per-class retries, locks and recurrence.
    pub policies: Arc<Policies>,
    /// Start paused (a USR2 arrived while connecting).
    pub start_paused: bool,
    /// Where the runner reports its progress, phase and counters.
    pub vitals: Arc<Vitals>,
}

/// A job a slot is running.
struct Running {
    seq: u64,
    /// Since when it runs, for the duration metrics.
    started: Instant,
    limit: Option<usize>,
    queue: String,
    raw: Arc<[u8]>,
    status: Vec<u8>,
    abort: AbortHandle,
}

enum Slot {
    Free,
    Running(Running),
    /// Finished; the ack is waiting for the next step.
    Acking(Ack),
    /// In a step in flight: its ack, a take for it, or both.
    Stepping,
}

/// A step in flight: what it carries, to apply its reply (or, when it
/// fails, to put every ack and count back for the next one).
struct StepPlan {
    /// Slots acked, with their acks.
    acks: Vec<(usize, Ack)>,
    /// Per-slot success counts written.
    counts: Vec<(usize, u64)>,
    /// Slots to take jobs for, in the order sent.
    take: Vec<usize>,
    /// Some class was capped or skipped.
    limited: bool,
    /// The `run_at` of the jobs taken.
    now: chrono::DateTime<Utc>,
}

/// A step's plan and its outcome.
type StepDone = (StepPlan, Result<StepReply>);

impl StepPlan {
    /// Send the step; resolves with the plan and Redis's reply.
    async fn run(
        self,
        store: Store,
        ids: Arc<[WorkerId]>,
        queues: Arc<[String]>,
        limits: Vec<TakeLimit>,
        process: String,
    ) -> StepDone {
        let result = {
            let acks: Vec<&Ack> = self.acks.iter().map(|(_, a)| a).collect();
            let counts: Vec<(&WorkerId, u64)> =
                self.counts.iter().map(|&(i, n)| (&ids[i], n)).collect();
            let free: Vec<&WorkerId> = self.take.iter().map(|&i| &ids[i]).collect();
            store
                .step(&StepRequest {
                    acks: &acks,
                    counts: &counts,
                    free: &free,
                    queues: &queues,
                    limits: &limits,
                    process: &process,
                    now: self.now,
                })
                .await
        };
        (self, result)
    }
}

/// Results of job tasks: slot, sequence number, outcome, the parsed job,
/// the class.
type Finished = (usize, u64, Outcome, Option<Job>, Option<String>);

impl Runner {
    /// Register the slots, take and run jobs until stopped by `control` (or,
    /// when draining, until the queues are empty), then unregister.
    pub async fn run(self, control: &mut mpsc::UnboundedReceiver<Control>) -> Result<StopReport> {
        let mut paused = self.start_paused;
        let span = tracing::info_span!("runner", slots = self.slots.len(), queues = %self.queues.id_part());
        async move {
            let heartbeat = Heartbeat {
                store: self.store.clone(),
                workers: self.slots.clone(),
                queues: self.queues.id_part(),
                heartbeat_interval: self.heartbeat_interval,
                recoverer: self.recoverer.clone(),
                vitals: self.vitals.clone(),
            };
            // Start-up survives Redis going away in the middle of it.
            loop {
                let now = self.wait_for_redis(control, &mut paused).await?;
                // A dead earlier process on this host (or under this very
                // pid) gets its jobs back into the queues before we take any.
                match self.recoverer.run_once(true).await {
                    Ok(n) if n > 0 => info!(jobs = n, "recovered the jobs of dead processes"),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "recovery at start-up failed; the heartbeat retries it"),
                }
                let registered = async {
                    self.store.register(&self.slots, now).await?;
                    heartbeat.beat().await
                };
                self.vitals.pulse.beat(RESPONSE_TIMEOUT * 2);
                match registered.await {
                    Ok(_) => break,
                    Err(e) => {
                        self.vitals.redis_failed("registration", &e);
                        warn!(error = %e, "registration failed; retrying")
                    }
                }
            }
            info!(first = %self.slots[0].id, "worker registered");
            self.vitals.set_slots(self.slots.len());
            self.vitals.set_phase(Phase::Running);
            let beat = CancellationToken::new();
            let beat_task = heartbeat.spawn(beat.clone());
            let result = self.serve(control, paused).await;
            beat.cancel();
            let _ = beat_task.await;
            let mut report = result?;
            report.left_registered = self.store.unregister(&self.slots).await?;
            if report.left_registered.is_empty() {
                self.store.remove_process(&self.recoverer.me.field()).await?;
            } else {
                error!(workers = ?report.left_registered, "left registered: their status still holds a job; the next start-up here recovers it");
            }
            info!(reason = ?report.reason, performed = report.performed, put_back = report.put_back, "worker stopped");
            Ok(report)
        }
        .instrument(span)
        .await
    }

    /// Wait until Redis answers (retrying with capped backoff), unless
    /// stopped meanwhile; a pause or resume meanwhile updates `paused`.
    /// Returns Redis's clock.
    async fn wait_for_redis(
        &self,
        control: &mut mpsc::UnboundedReceiver<Control>,
        paused: &mut bool,
    ) -> Result<chrono::DateTime<Utc>> {
        let mut backoff = Backoff::new();
        loop {
            self.vitals.pulse.beat(RESPONSE_TIMEOUT + backoff.peek());
            match self.store.redis_time().await {
                Ok(now) => {
                    self.vitals.redis_ok();
                    return Ok(now);
                }
                Err(e) => {
                    self.vitals.redis_failed("redis is not answering", &e);
                    warn!(error = %e, retry_in = ?backoff.peek(), "redis is not answering")
                }
            }
            let delay = backoff.failed();
            // Cancel-safety: nothing is taken yet; a stop just ends the wait.
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                msg = control.recv() => {
                    if Control::before_start(msg, paused) {
                        return Err(crate::Error::Protocol("stopped before redis answered".into()));
                    }
                }
            }
        }
    }

    async fn serve(
        &self,
        control: &mut mpsc::UnboundedReceiver<Control>,
        start_paused: bool,
    ) -> Result<StopReport> {
        let draining = self.interval.is_zero();
        let mut waiters = Waiters::new(
            self.store.clone(),
            self.interval.max(Duration::from_secs(1)),
        );
        let wake = waiters.wake();
        let mut slots: Vec<Slot> = self.slots.iter().map(|_| Slot::Free).collect();
        let ids: Arc<[WorkerId]> = self.slots.clone().into();
        // Steps in flight, and the reply the wait below received.
        let mut steps: FuturesUnordered<BoxFuture<'static, StepDone>> = FuturesUnordered::new();
        let mut replied: Option<StepDone> = None;
        let mut tasks: JoinSet<Finished> = JoinSet::new();
        let mut seq: u64 = 0;
        let mut performed: u64 = 0;
        let mut put_back = 0;

        let mut known_queues: Option<Vec<String>> = None;
        let mut queues: Arc<[String]> = if self.queues.is_dynamic() {
            Arc::new([])
        } else {
            self.queues.resolve(&[]).into()
        };
        if !draining && !self.queues.is_dynamic() {
            waiters.set_queues(&queues);
        }
        let mut refreshed_at: Option<Instant> = None;

        // `idle`: the last take found nothing; wait for a wake-up or a timer.
        let mut idle = false;
        let mut next_poll = Instant::now();
        let mut paused = start_paused;
        let mut stopping: Option<Option<Instant>> = None; // Some(deadline or none)
        // The stop is a reload's drain (a TERM or QUIT meanwhile makes it a stop).
        let mut reloading = false;
        let mut stop_requests = 0;
        let mut retry_at: Option<Instant> = None;
        let mut reconcile = false;
        // Jobs running per registry limit, and classes skipped until a time.
        let mut in_flight: Vec<usize> = vec![0; self.registry.limits().len()];
        let mut skipped: Vec<(String, Instant)> = Vec::new();
        // Per-slot successes not yet written, and when they were last written.
        let mut successes: Vec<u64> = vec![0; self.slots.len()];
        let mut counted_at = Instant::now();
        let mut backoff = Backoff::new();
        // Turns the loop when nothing else does, so an idle or draining
        // worker still shows it is alive (see `Vitals::pulse`).
        let mut pulse = tokio::time::interval(self.vitals.pulse_every);
        pulse.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.vitals.set_paused(paused);
        let mut meter = JobMeter::new(self.vitals.clone());

        loop {
            self.vitals.pulse.beat(self.vitals.pulse_every * 2);
            while let Some(done) = tasks.try_join_next() {
                self.finish(&mut slots, done, &mut in_flight, &mut skipped, &mut meter);
            }
            // Replies of finished steps.
            while let Some((plan, result)) = replied
                .take()
                .or_else(|| steps.next().now_or_never().flatten())
            {
                match result {
                    Err(e) => {
                        self.vitals.redis_failed("redis step failed", &e);
                        // The acks stay pending and are retried: an ack that
                        // did land is fenced and not recorded twice. Jobs the
                        // step may have taken are found by `reconcile`.
                        warn!(error = %e, pending_acks = plan.acks.len(), retry_in = ?backoff.peek(), "redis step failed");
                        for &i in &plan.take {
                            slots[i] = Slot::Free;
                        }
                        for (i, ack) in plan.acks {
                            slots[i] = Slot::Acking(ack);
                        }
                        for (i, n) in plan.counts {
                            successes[i] += n;
                        }
                        retry_at = Some(Instant::now() + backoff.failed());
                        reconcile = true;
                    }
                    Ok(reply) => {
                        self.vitals.redis_ok();
                        self.vitals
                            .add_done(reply.applied.iter().filter(|a| **a).count() as u64);
                        retry_at = None;
                        backoff.succeeded();
                        for ((i, ack), applied) in plan.acks.iter().zip(&reply.applied) {
                            if *applied {
                                performed += 1;
                                if let AckKind::Done = ack.kind {
                                    successes[*i] += 1;
                                }
                            } else {
                                warn!(worker = %self.slots[*i].id, "status no longer holds the job (recovered elsewhere?); outcome not recorded");
                                // Its status key may hold a job a lost reply
                                // took: look.
                                reconcile = true;
                            }
                            slots[*i] = Slot::Free;
                        }
                        for &i in &plan.take {
                            slots[i] = Slot::Free;
                        }
                        if reply.occupied > 0 {
                            warn!(
                                slots = reply.occupied,
                                "status keys of free slots still hold jobs (acks Redis lost?); resuming them"
                            );
                            reconcile = true;
                        }
                        let run_at = payload::run_at(plan.now);
                        // Slots the script would not take into (fenced or
                        // occupied) do not mean the queues ran dry.
                        let fenced = plan
                            .acks
                            .iter()
                            .zip(&reply.applied)
                            .filter(|((i, _), applied)| !**applied && plan.take.contains(i))
                            .count();
                        let found_all =
                            reply.taken.len() + fenced + reply.occupied >= plan.take.len();
                        for t in reply.taken {
                            let slot = plan.take[t.slot];
                            seq += 1;
                            let limit = t.class.as_deref().and_then(|c| self.registry.limit_of(c));
                            if let Some(l) = limit {
                                in_flight[l] += 1;
                            }
                            slots[slot] = self.start(
                                &mut tasks, slot, seq, limit, t.queue, &t.raw, t.status, &run_at,
                            );
                        }
                        if !plan.take.is_empty() && !found_all {
                            idle = true;
                            // Skipping capped or unknown classes: a blocking
                            // wait would wake at once on the skipped jobs, so
                            // look again on a timer instead.
                            let capped = in_flight
                                .iter()
                                .zip(self.registry.limits())
                                .any(|(n, l)| *n >= l.max);
                            let wait = if capped || reply.unregistered {
                                // Unregistered (taken for dead): wait for the
                                // heartbeat to register us.
                                LIMITED_POLL
                            } else if (self.queues.is_dynamic() || plan.limited) && !reply.paused {
                                QUEUE_REFRESH.min(self.interval.max(Duration::from_millis(1)))
                            } else {
                                self.interval
                            };
                            next_poll = Instant::now() + wait;
                            if !draining && !reply.paused && !reply.unregistered && !plan.limited {
                                waiters.arm();
                            }
                        }
                    }
                }
            }

            let free: Vec<usize> = slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| matches!(s, Slot::Free).then_some(i))
                .collect();
            let acks: Vec<usize> = slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| matches!(s, Slot::Acking(_)).then_some(i))
                .collect();
            self.vitals.set_busy(
                slots
                    .iter()
                    .filter(|s| matches!(s, Slot::Running(_) | Slot::Acking(_)))
                    .count(),
            );
            let ready = retry_at.is_none_or(|at| Instant::now() >= at);

            if ready && reconcile {
                // A step whose reply was lost may have taken jobs for free
                // slots: they are in the status keys; run them.
                let ids: Vec<&WorkerId> = free.iter().map(|&i| &self.slots[i]).collect();
                self.vitals
                    .pulse
                    .beat(RESPONSE_TIMEOUT + self.vitals.pulse_every);
                match self.store.held(&ids).await {
                    Ok(held) => {
                        self.vitals.redis_ok();
                        reconcile = false;
                        let run_at = payload::run_at(Utc::now());
                        for (&slot, value) in free.iter().zip(held) {
                            let Some(status) = value else { continue };
                            match payload::split_status(&status) {
                                Some((queue, raw)) => {
                                    info!(worker = %self.slots[slot].id, queue = %queue, "resuming a job taken by a step whose reply was lost");
                                    seq += 1;
                                    let limit = crate::resque::Job::parse(&queue, &raw)
                                        .ok()
                                        .and_then(|j| self.registry.limit_of(&j.class));
                                    if let Some(l) = limit {
                                        in_flight[l] += 1;
                                    }
                                    slots[slot] = self.start(
                                        &mut tasks, slot, seq, limit, queue, &raw, status, &run_at,
                                    );
                                }
                                None => {
                                    // Taking into it would overwrite it, and
                                    // leaving it would make every take skip
                                    // the slot: record it, bytes and all.
                                    error!(worker = %self.slots[slot].id, "status key holds a value of unknown shape; recording it as a failure");
                                    slots[slot] =
                                        Slot::Acking(corrupt_status(&self.slots[slot], status));
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.vitals.redis_failed("cannot read the status keys", &e);
                        warn!(error = %e, "cannot read the status keys");
                        retry_at = Some(Instant::now() + backoff.failed());
                    }
                }
                continue;
            }

            let counts_due = successes.iter().any(|n| *n > 0) && counted_at.elapsed() >= COUNT_LAG;
            let may_take =
                !(stopping.is_some() || paused || idle || free.is_empty() && acks.is_empty());
            // Two steps may be in flight, so the worker runs the jobs of one
            // while Redis runs the other; with class limits only one, whose
            // counts are then exact.
            let max_steps = if self.registry.limits().is_empty() && skipped.is_empty() {
                2
            } else {
                1
            };
            if ready && steps.len() < max_steps && (!acks.is_empty() || may_take || counts_due) {
                if may_take
                    && self.queues.is_dynamic()
                    && refreshed_at.is_none_or(|t| t.elapsed() >= QUEUE_REFRESH)
                {
                    self.vitals
                        .pulse
                        .beat(RESPONSE_TIMEOUT + self.vitals.pulse_every);
                    match self.store.queue_names().await {
                        Ok(names) => {
                            refreshed_at = Some(Instant::now());
                            if known_queues.as_ref() != Some(&names) {
                                queues = self.queues.resolve(&names).into();
                                debug!(?queues, "queue list");
                                if !draining {
                                    waiters.set_queues(&queues);
                                }
                                known_queues = Some(names);
                            }
                        }
                        Err(e) => {
                            self.vitals.redis_failed("cannot read the queue list", &e);
                            warn!(error = %e, "cannot read the queue list");
                            retry_at = Some(Instant::now() + backoff.failed());
                            continue;
                        }
                    }
                }
                // Slots being acked take again in the same step; a step takes
                // for at most half the slots, so that the other half can be
                // in the next step while this one is in flight.
                let take: Vec<usize> = if may_take {
                    acks.iter()
                        .chain(&free)
                        .copied()
                        .take(slots.len().div_ceil(max_steps))
                        .collect()
                } else {
                    Vec::new()
                };
                let plan_acks: Vec<(usize, Ack)> = acks
                    .iter()
                    .map(
                        |&i| match std::mem::replace(&mut slots[i], Slot::Stepping) {
                            Slot::Acking(a) => (i, a),
                            _ => unreachable!("filtered on Acking above"),
                        },
                    )
                    .collect();
                for &i in &take {
                    slots[i] = Slot::Stepping;
                }
                skipped.retain(|(_, until)| *until > Instant::now());
                let limits = self.take_limits(&in_flight, &skipped);
                let counts: Vec<(usize, u64)> =
                    if counted_at.elapsed() >= COUNT_LAG || stopping.is_some() {
                        counted_at = Instant::now();
                        successes
                            .iter_mut()
                            .enumerate()
                            .filter(|(_, n)| **n > 0)
                            .map(|(i, n)| (i, std::mem::take(n)))
                            .collect()
                    } else {
                        Vec::new()
                    };
                let plan = StepPlan {
                    acks: plan_acks,
                    counts,
                    take,
                    limited: limits.iter().any(|l| l.remaining == 0),
                    now: Utc::now(),
                };
                steps.push(Box::pin(plan.run(
                    self.store.clone(),
                    ids.clone(),
                    queues.clone(),
                    limits,
                    self.recoverer.me.field(),
                )));
                continue;
            }

            let running = slots.iter().any(|s| matches!(s, Slot::Running(_)));
            let pending = slots.iter().any(|s| !matches!(s, Slot::Free));
            if stopping.is_some() && !pending {
                return Ok(StopReport {
                    reason: if reloading {
                        StopReason::Reload
                    } else {
                        StopReason::Requested
                    },
                    performed,
                    put_back,
                    left_registered: Vec::new(),
                });
            }
            if draining && idle && !pending && !paused {
                return Ok(StopReport {
                    reason: StopReason::Drained,
                    performed,
                    put_back,
                    left_registered: Vec::new(),
                });
            }
            let deadline = stopping.flatten();

            // Cancel-safety: every branch is safe to drop. join_next and recv
            // lose nothing when another branch wins; the timers and the
            // notification only end a wait. Taken jobs are never raced here:
            // they are in slots, and only a recorded step frees a slot.
            tokio::select! {
                // A step's reply: handled at the top of the loop (the set
                // keeps it until then).
                Some(reply) = steps.next(), if !steps.is_empty() => replied = Some(reply),
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    self.finish(&mut slots, done, &mut in_flight, &mut skipped, &mut meter);
                    // Capacity under a limit came free: look at the queues.
                    idle = false;
                }
                msg = control.recv() => match msg {
                    Some(Control::Stop) => {
                        stop_requests += 1;
                        let grace = if stop_requests > 1 { Duration::ZERO } else { self.shutdown_timeout };
                        info!(running, grace = ?grace, "stopping: no new jobs");
                        self.vitals.set_phase(Phase::Stopping);
                        reloading = false;
                        stopping = Some(Some(Instant::now() + grace));
                    }
                    Some(Control::StopAfterJobs) => {
                        info!(running, "stopping after the running jobs");
                        self.vitals.set_phase(Phase::Stopping);
                        reloading = false;
                        if stopping.is_none() {
                            stopping = Some(None);
                        }
                    }
                    Some(Control::CancelJobs) => {
                        self.cancel_running(&mut slots, &mut in_flight, &mut meter, "cancelled by SIGUSR1");
                    }
                    Some(Control::Pause) => {
                        info!("paused");
                        paused = true;
                        self.vitals.set_paused(true);
                    }
                    Some(Control::Resume) => {
                        info!("resumed");
                        paused = false;
                        self.vitals.set_paused(false);
                        idle = false;
                    }
                    Some(Control::Reload) => {
                        if stopping.is_none() {
                            info!(running, "reloading: no new jobs; running ones finish first");
                            stopping = Some(None);
                            reloading = true;
                        } else {
                            info!("reload ignored: already stopping");
                        }
                    }
                    None => {
                        if stopping.is_none() {
                            info!("controller gone: stopping after the running jobs");
                            self.vitals.set_phase(Phase::Stopping);
                            stopping = Some(None);
                        }
                        reloading = false;
                    }
                },
                _ = wake.notified(), if idle => { idle = false; }
                // Batched per-worker counts must not wait longer than COUNT_LAG.
                _ = tokio::time::sleep_until(counted_at + COUNT_LAG), if successes.iter().any(|n| *n > 0) => {}
                _ = tokio::time::sleep_until(next_poll), if idle => { idle = false; }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && running => {
                    put_back += self.put_back_running(&mut slots, &mut in_flight, &mut meter).await;
                }
                // Only turns the loop (its top promises the next turn).
                _ = pulse.tick() => {}
            }
        }
    }

    /// Spawn the task running a taken job; returns the slot's new state.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        tasks: &mut JoinSet<Finished>,
        slot: usize,
        seq: u64,
        limit: Option<usize>,
        queue: String,
        raw: &[u8],
        status: Vec<u8>,
        run_at: &str,
    ) -> Slot {
        let raw: Arc<[u8]> = Arc::from(raw);
        let ctx = JobContext {
            worker: self.slots[slot].id.clone(),
            run_at: run_at.to_owned(),
            id: format!(
                "{}-{}",
                self.recoverer.me.pid,
                JOB_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            services: self.services.clone(),
        };
        let registry = self.registry.clone();
        let policies = self.policies.clone();
        let job_queue = queue.clone();
        let job_raw = raw.clone();
        let abort = tasks.spawn(
            async move {
                let (outcome, job, class) =
                    execute(&registry, &policies, &job_queue, &job_raw, ctx).await;
                (slot, seq, outcome, job, class)
            }
            .instrument(debug_span!("job", worker = %self.slots[slot].id)),
        );
        Slot::Running(Running {
            seq,
            started: Instant::now(),
            limit,
            queue,
            raw,
            status,
            abort,
        })
    }

    /// At the shutdown deadline: stop every running job and put it back at
    /// the head of its queue. Returns how many went back.
    async fn put_back_running(
        &self,
        slots: &mut [Slot],
        in_flight: &mut [usize],
        meter: &mut JobMeter,
    ) -> usize {
        let mut n = 0;
        for (i, slot) in slots.iter_mut().enumerate() {
            let Slot::Running(r) = slot else { continue };
            r.abort.abort();
            if let Some(l) = r.limit {
                in_flight[l] -= 1;
            }
            meter
                .series_of(&r.queue, class_of(r).as_deref())
                .observe(JobOutcome::PutBack, r.started.elapsed());
            let worker = &self.slots[i];
            self.vitals
                .pulse
                .beat(RESPONSE_TIMEOUT + self.vitals.pulse_every);
            match self
                .store
                .put_back(worker, &r.status, &r.queue, &r.raw)
                .await
            {
                Ok(true) => {
                    n += 1;
                    info!(worker = %worker.id, queue = %r.queue, "job put back at the head of its queue");
                }
                Ok(false) => {
                    warn!(worker = %worker.id, "status no longer holds the job; not put back")
                }
                Err(e) => {
                    error!(worker = %worker.id, error = %e, "cannot put the job back; it stays in the status key for recovery")
                }
            }
            *slot = Slot::Free;
        }
        n
    }
}

impl Runner {
    /// The limits of the next take: what each capped plugin may still take,
    /// and the classes being skipped.
    fn take_limits(&self, in_flight: &[usize], skipped: &[(String, Instant)]) -> Vec<TakeLimit> {
        let mut limits: Vec<TakeLimit> = self
            .registry
            .limits()
            .iter()
            .zip(in_flight)
            .map(|(l, n)| TakeLimit {
                remaining: l.max.saturating_sub(*n),
                patterns: l
                    .classes
                    .iter()
                    .map(|c| crate::glob::to_lua_pattern(c))
                    .collect(),
            })
            .collect();
        limits.extend(skipped.iter().map(|(class, _)| TakeLimit {
            remaining: 0,
            patterns: vec![crate::glob::lua_literal(class)],
        }));
        limits
    }

    /// A job task ended: queue its ack, unless the slot has moved on (the job
    /// was cancelled or put back meanwhile).
    fn finish(
        &self,
        slots: &mut [Slot],
        done: std::result::Result<Finished, tokio::task::JoinError>,
        in_flight: &mut [usize],
        skipped: &mut Vec<(String, Instant)>,
        meter: &mut JobMeter,
    ) {
        let Ok((i, seq, outcome, job, class)) = done else {
            // Aborted tasks: their slot was already handled by whoever aborted.
            return;
        };
        let Slot::Running(r) = &slots[i] else { return };
        if r.seq != seq {
            return;
        }
        if let Some(l) = r.limit {
            in_flight[l] -= 1;
        }
        if let (Some(ah), Some(job)) = (self.services.actionhero(), &job)
            && matches!(outcome, Outcome::Succeeded | Outcome::Failed(_))
        {
            ah.count_task(&job.class, matches!(outcome, Outcome::Failed(_)));
        }
        // An unknown class is failed by `ack_for` unless it goes back for
        // the other workers sharing the queue.
        let outcome = match outcome {
            Outcome::Unknown(class) if self.unknown_class == UnknownClass::Requeue => {
                let pause = self.interval.max(Duration::from_secs(1));
                info!(class, queue = %r.queue, skip_for = ?pause, "unknown class put back for other workers");
                skipped.push((class.clone(), Instant::now() + pause));
                Outcome::PutBack(format!("no handler for class {class}"))
            }
            other => other,
        };
        let counted = match &outcome {
            Outcome::Succeeded => JobOutcome::Succeeded,
            Outcome::Failed(_) | Outcome::Unknown(_) => JobOutcome::Failed,
            Outcome::PutBack(_) => JobOutcome::PutBack,
            Outcome::Deferred { .. } => JobOutcome::Deferred,
        };
        meter
            .series_of(&r.queue, class.as_deref())
            .observe(counted, r.started.elapsed());
        let ack = self.ack_for(&self.slots[i], r, outcome, job);
        slots[i] = Slot::Acking(ack);
    }

    /// Abort every running job and record it as failed, as Ruby records a
    /// child killed by USR1 (`Resque::DirtyExit`).
    fn cancel_running(
        &self,
        slots: &mut [Slot],
        in_flight: &mut [usize],
        meter: &mut JobMeter,
        why: &str,
    ) {
        for (i, slot) in slots.iter_mut().enumerate() {
            let Slot::Running(r) = slot else { continue };
            r.abort.abort();
            if let Some(l) = r.limit {
                in_flight[l] -= 1;
            }
            warn!(worker = %self.slots[i].id, queue = %r.queue, "job {why}");
            meter
                .series_of(&r.queue, class_of(r).as_deref())
                .observe(JobOutcome::Failed, r.started.elapsed());
            let e = JobError::new("Resque::DirtyExit", format!("Job {why}"));
            *slot = Slot::Acking(self.ack_for(&self.slots[i], r, Outcome::Failed(e), None));
        }
    }
}

impl Runner {
    /// The ack of a finished job, with what its class's policy adds: the
    /// JobLock released, retries counted, a recurring task re-enqueued.
    fn ack_for(&self, worker: &WorkerId, r: &Running, outcome: Outcome, job: Option<Job>) -> Ack {
        let job = job.or_else(|| {
            // Cancelled jobs come without a parsed job; policies need it.
            (!self.policies.is_empty())
                .then(|| Job::parse(&r.queue, &r.raw).ok())
                .flatten()
        });
        let policy = job
            .as_ref()
            .and_then(|j| self.policies.of(&j.class).map(|p| (j, p)));
        let mut extra = serde_json::Map::new();
        let mut del: Vec<String> = Vec::new();
        let keys = self.store.keys();
        if let Some((job, p)) = policy {
            let args = policy::lock_args(job);
            if p.job_lock.is_some() && !matches!(outcome, Outcome::Deferred { .. }) {
                del.push(keys.job_lock(&job.class, &job.queue, &args));
            }
            if let Some(rec) = &p.recurring
                && matches!(outcome, Outcome::Succeeded | Outcome::Failed(_))
            {
                // actionHero's QueueLock of the chain has no TTL: clear it,
                // in the form of either style.
                del.push(keys.queue_lock(&job.class, &rec.queue, "{}"));
                del.push(keys.queue_lock(&job.class, &rec.queue, "[{}]"));
                extra.insert(
                    "recur".into(),
                    serde_json::json!({
                        "queue": rec.queue,
                        "payload": ClassPolicy::recurring_payload(&job.class, rec),
                        "secs": rec.frequency.as_secs().max(1),
                        "ns": rec.style == RecurringStyle::ActionHero7,
                    }),
                );
            }
        }
        let kind = match (outcome, policy) {
            (Outcome::Succeeded, p) => {
                if let Some((job, p)) = p
                    && p.retry.is_some()
                {
                    let k = payload::retry_args_key(&job.args);
                    del.push(keys.retry(&job.class, &k));
                    del.push(keys.retry_failure(&job.class, &k));
                }
                AckKind::Done
            }
            (Outcome::PutBack(_), _) => AckKind::PutBack {
                queue: r.queue.clone(),
                raw: r.raw.clone(),
            },
            (Outcome::Deferred { again: true }, _) => AckKind::Later {
                payload: String::from_utf8_lossy(&r.raw).into_owned(),
                secs: 1,
            },
            (Outcome::Deferred { again: false }, _) => AckKind::Drop,
            (Outcome::Unknown(class), _) => {
                AckKind::Failed(failure_record(worker, r, UnknownClass::failure(&class)))
            }
            (Outcome::Failed(e), Some((job, p))) if p.retry.is_some() => {
                let retry = p.retry.as_ref().expect("checked");
                let k = payload::retry_args_key(&job.args);
                let delays = retry.delays();
                let ttl = delays.iter().max().copied().unwrap_or(1) + 3600;
                let info = serde_json::json!({
                    "failed_at": payload::failed_at(Utc::now()),
                    "payload": job.args,
                    "exception": e.exception,
                    "error": e.message,
                    "backtrace": e.backtrace,
                    "worker": job.class,
                    "queue": job.queue,
                });
                extra.insert(
                    "retry".into(),
                    serde_json::json!({
                        "key": keys.retry(&job.class, &k),
                        "fkey": keys.retry_failure(&job.class, &k),
                        "limit": retry.attempts,
                        "delays": delays,
                        "ttl": ttl,
                        "info": info.to_string(),
                    }),
                );
                AckKind::Retry {
                    record: failure_record(worker, r, e),
                    payload: payload::encode_job(
                        &job.class,
                        &job.queue,
                        serde_json::Value::Array(job.args.clone()),
                    ),
                }
            }
            (Outcome::Failed(e), _) => AckKind::Failed(failure_record(worker, r, e)),
        };
        if !del.is_empty() {
            extra.insert("del".into(), serde_json::json!(del));
        }
        Ack {
            worker: worker.clone(),
            expected: r.status.clone(),
            kind,
            extra: (!extra.is_empty()).then(|| serde_json::Value::Object(extra).to_string()),
        }
    }
}

/// The class of a job stopped before it reported one (cancelled, put back).
fn class_of(r: &Running) -> Option<String> {
    Job::parse(&r.queue, &r.raw).ok().map(|j| j.class)
}

/// The ack that moves a status value of unknown shape to `failed`.
fn corrupt_status(worker: &WorkerId, status: Vec<u8>) -> Ack {
    let record = Failure {
        failed_at: payload::failed_at(Utc::now()),
        payload: payload::payload_for_record(&status),
        exception: "AhWorker::CorruptStatus".into(),
        error: "this worker's status key held a value of unknown shape (its bytes are the payload)"
            .into(),
        backtrace: Vec::new(),
        worker: worker.id.clone(),
        queue: String::new(),
    }
    .to_json();
    Ack {
        worker: worker.clone(),
        expected: status,
        kind: AckKind::Failed(record),
        extra: None,
    }
}

fn failure_record(worker: &WorkerId, r: &Running, e: JobError) -> String {
    Failure {
        failed_at: payload::failed_at(Utc::now()),
        payload: payload::payload_for_record(&r.raw),
        exception: e.exception,
        error: e.message,
        backtrace: e.backtrace,
        worker: worker.id.clone(),
        queue: r.queue.clone(),
    }
    .to_json()
}
