//! What a running worker knows about itself, for the outside world: the
//! progress of its job loop, its phase, its counters and its per-job series.
//!
//! The runner and the heartbeat write here; the systemd notifier
//! ([`crate::systemd`]) and the HTTP listener ([`crate::metrics`]) read.
//! Writes on the job path are relaxed atomic operations on memory written
//! by the runner task alone: no lock, no allocation, no system call (the
//! runner finds a job's series in a [`JobMeter`] of its own). Locks guard
//! only what changes rarely: the list of series (a new queue and class
//! pair), the last error, the queues to report.
//!
//! Does not own: the notify protocol (`systemd`), the Prometheus format
//! (`metrics`).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::resque::Store;
use crate::worker::QueueSpec;

/// How often an idle job loop turns anyway, to show it is alive, when no
/// watchdog asks for more.
pub const DEFAULT_PULSE: Duration = Duration::from_secs(1);

/// Where the worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting to Redis and registering the slots.
    Starting,
    /// Registered and taking jobs (or paused).
    Running,
    /// Re-reading the configuration: running jobs finish, then the worker
    /// starts again with the new one.
    Reloading,
    /// Taking no new jobs any more; running ones finish or go back.
    Stopping,
}

impl Phase {
    /// The lowercase name, for status lines and `/health`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Reloading => "reloading",
            Phase::Stopping => "stopping",
        }
    }
}

/// The job loop's promise to turn again before some time. A loop that
/// breaks its promise is wedged: the watchdog stops pinging and `/health`
/// says so.
///
/// The loop promises a little more than its pulse at every turn, and the
/// store's response timeout before each Redis call, so a slow Redis is not
/// taken for a wedged loop (killing the worker then would run its jobs
/// twice).
#[derive(Debug)]
pub struct Pulse {
    base: Instant,
    /// Milliseconds after `base`; 0: no promise yet.
    due_ms: AtomicU64,
}

impl Pulse {
    fn new(base: Instant) -> Pulse {
        Pulse {
            base,
            due_ms: AtomicU64::new(0),
        }
    }

    /// The loop is alive and will be seen again within `within`.
    pub fn beat(&self, within: Duration) {
        let due = (self.base.elapsed() + within).as_millis() as u64;
        self.due_ms.store(due.max(1), Relaxed);
    }

    /// Whether the last promise still holds (false before the first one).
    pub fn alive(&self) -> bool {
        let due = self.due_ms.load(Relaxed);
        due != 0 && self.base.elapsed().as_millis() as u64 <= due
    }
}

/// A worker's vital signs, shared between the runner (writer) and the
/// notifier and HTTP listener (readers).
#[derive(Debug)]
pub struct Vitals {
    base: Instant,
    started_unix: f64,
    /// How often an idle loop turns anyway.
    pub pulse_every: Duration,
    /// The job loop's progress.
    pub pulse: Pulse,
    phase: watch::Sender<Phase>,
    slots: AtomicUsize,
    busy: AtomicUsize,
    paused: AtomicBool,
    done: AtomicU64,
    redis_errors: AtomicU64,
    reconnects: AtomicU64,
    redis_down: AtomicBool,
    /// Milliseconds after `base` of the last Redis success; 0: never.
    redis_ok_ms: AtomicU64,
    heartbeat_unix_ms: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    last_error: Mutex<Option<(String, Instant)>>,
    series: Mutex<Vec<Arc<JobSeries>>>,
    queues: Mutex<Option<(Store, QueueSpec)>>,
}

/// A consistent-enough copy of the counters, for a status line.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The phase.
    pub phase: Phase,
    /// Job slots.
    pub slots: usize,
    /// Slots running or acking a job.
    pub busy: usize,
    /// Paused (USR2).
    pub paused: bool,
    /// Jobs whose outcome is recorded.
    pub done: u64,
    /// The last error and how long ago it happened.
    pub last_error: Option<(String, Duration)>,
}

impl Vitals {
    /// Fresh vitals; the loop turns at least every `pulse_every`.
    pub fn new(pulse_every: Duration) -> Vitals {
        let base = Instant::now();
        Vitals {
            base,
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            pulse_every,
            pulse: Pulse::new(base),
            phase: watch::channel(Phase::Starting).0,
            slots: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            done: AtomicU64::new(0),
            redis_errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            redis_down: AtomicBool::new(false),
            redis_ok_ms: AtomicU64::new(0),
            heartbeat_unix_ms: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            series: Mutex::new(Vec::new()),
            queues: Mutex::new(None),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Enter `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.phase
            .send_if_modified(|p| std::mem::replace(p, phase) != phase);
    }

    /// Watch the phase.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// The process's start, Unix seconds.
    pub fn started_unix(&self) -> f64 {
        self.started_unix
    }

    /// The slot count of the running configuration.
    pub fn set_slots(&self, n: usize) {
        self.slots.store(n, Relaxed);
    }

    /// Job slots.
    pub fn slots(&self) -> usize {
        self.slots.load(Relaxed)
    }

    /// How many slots hold a job right now.
    pub fn set_busy(&self, n: usize) {
        self.busy.store(n, Relaxed);
    }

    /// Slots holding a job.
    pub fn busy(&self) -> usize {
        self.busy.load(Relaxed)
    }

    /// Paused or resumed.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Relaxed);
    }

    /// Whether the worker is paused.
    pub fn paused(&self) -> bool {
        self.paused.load(Relaxed)
    }

    /// `n` more outcomes recorded.
    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Relaxed);
    }

    /// Jobs whose outcome is recorded.
    pub fn done(&self) -> u64 {
        self.done.load(Relaxed)
    }

    /// A Redis call succeeded. After failures this counts a reconnect.
    pub fn redis_ok(&self) {
        self.redis_ok_ms
            .store((self.base.elapsed().as_millis() as u64).max(1), Relaxed);
        if self.redis_down.load(Relaxed) && self.redis_down.swap(false, Relaxed) {
            self.reconnects.fetch_add(1, Relaxed);
        }
    }

    /// A Redis call failed while doing `what`.
    pub fn redis_failed(&self, what: &str, error: &dyn std::error::Error) {
        self.redis_errors.fetch_add(1, Relaxed);
        self.redis_down.store(true, Relaxed);
        self.error(format!("{what}: {}", chain(error)));
    }

    /// Remember `message` as the last error.
    pub fn error(&self, message: String) {
        *self.last_error.lock().expect("last_error lock") = Some((message, Instant::now()));
    }

    /// Failed Redis calls.
    pub fn redis_errors(&self) -> u64 {
        self.redis_errors.load(Relaxed)
    }

    /// Times Redis answered again after failed calls.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Relaxed)
    }

    /// Whether the last Redis call succeeded, no longer than `within` ago.
    pub fn redis_fresh(&self, within: Duration) -> bool {
        let ok = self.redis_ok_ms.load(Relaxed);
        ok != 0
            && !self.redis_down.load(Relaxed)
            && self.base.elapsed().as_millis() as u64 <= ok + within.as_millis() as u64
    }

    /// Seconds since the last Redis success, if any.
    pub fn redis_ok_age(&self) -> Option<Duration> {
        let ok = self.redis_ok_ms.load(Relaxed);
        (ok != 0).then(|| {
            Duration::from_millis((self.base.elapsed().as_millis() as u64).saturating_sub(ok))
        })
    }

    /// The heartbeat wrote the process entry at `unix_ms` (Redis's clock).
    pub fn heartbeat(&self, unix_ms: i64) {
        self.heartbeat_unix_ms.store(unix_ms.max(0) as u64, Relaxed);
    }

    /// The last heartbeat, Unix seconds; 0 before the first.
    pub fn last_heartbeat_unix(&self) -> f64 {
        self.heartbeat_unix_ms.load(Relaxed) as f64 / 1000.0
    }

    /// A reload was applied.
    pub fn reloaded(&self) {
        self.reloads.fetch_add(1, Relaxed);
    }

    /// A reload was refused.
    pub fn reload_failed(&self) {
        self.reload_failures.fetch_add(1, Relaxed);
    }

    /// Reloads applied and refused.
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads.load(Relaxed),
            self.reload_failures.load(Relaxed),
        )
    }

    /// The queues the running configuration serves, and where they are.
    pub fn set_queues(&self, store: Store, queues: QueueSpec) {
        *self.queues.lock().expect("queues lock") = Some((store, queues));
    }

    /// What [`Vitals::set_queues`] set.
    pub fn queues(&self) -> Option<(Store, QueueSpec)> {
        self.queues.lock().expect("queues lock").clone()
    }

    /// Every job series so far.
    pub fn series(&self) -> Vec<Arc<JobSeries>> {
        self.series.lock().expect("series lock").clone()
    }

    /// The series of `queue` and `class`, created if new; past
    /// [`MAX_SERIES`] the one overflow series. Returns it and whether it is
    /// the pair's own.
    fn series_of(&self, queue: &str, class: &str) -> (Arc<JobSeries>, bool) {
        let mut all = self.series.lock().expect("series lock");
        if let Some(s) = all.iter().find(|s| s.queue == queue && s.class == class) {
            return (s.clone(), true);
        }
        let own = all.len() < MAX_SERIES;
        let (queue, class) = if own {
            (queue, class)
        } else {
            (OVERFLOW, OVERFLOW)
        };
        if let Some(s) = all.iter().find(|s| s.queue == queue && s.class == class) {
            return (s.clone(), own);
        }
        let s = Arc::new(JobSeries::new(queue, class));
        all.push(s.clone());
        (s, own)
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            phase: self.phase(),
            slots: self.slots(),
            busy: self.busy(),
            paused: self.paused(),
            done: self.done(),
            last_error: self
                .last_error
                .lock()
                .expect("last_error lock")
                .as_ref()
                .map(|(m, at)| (m.clone(), at.elapsed())),
        }
    }
}

impl Snapshot {
    /// One line for `systemctl status`: `running: 3/10 slots busy, 1234 jobs
    /// done; last error 5s ago: ...`.
    pub fn status_line(&self) -> String {
        let mut line = match self.phase {
            Phase::Starting => "starting: connecting to redis and registering".to_owned(),
            Phase::Running => format!(
                "{}: {}/{} slots busy, {} jobs done",
                if self.paused { "paused" } else { "running" },
                self.busy,
                self.slots,
                self.done
            ),
            Phase::Reloading | Phase::Stopping => format!(
                "{}: {} running jobs finishing, {} jobs done",
                self.phase.name(),
                self.busy,
                self.done
            ),
        };
        if let Some((message, ago)) = &self.last_error {
            line.push_str(&format!("; last error {}s ago: {message}", ago.as_secs()));
        }
        // One line: the notify protocol separates fields by newlines.
        line.replace('\n', " ")
    }
}

/// Upper bounds of the job duration histogram's buckets, in microseconds
/// (1 ms to 5 min; plugins and HTTP calls take seconds).
pub const DURATION_BUCKETS_US: [u64; 12] = [
    1_000,
    5_000,
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
];

/// At most this many (queue, class) series: class names come from
/// payloads, so a flood of distinct names must not grow the metrics without
/// bound. Further pairs share one series labelled [`OVERFLOW`].
pub const MAX_SERIES: usize = 1000;

/// The queue and class labels of the overflow series.
pub const OVERFLOW: &str = "(other)";

/// The class label of a payload without a class.
pub const NO_CLASS: &str = "(none)";

/// How a job ended, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// The handler succeeded.
    Succeeded = 0,
    /// Failed (a handler error, a panic, an unknown class, a cancel).
    Failed = 1,
    /// Put back at the head of its queue.
    PutBack = 2,
    /// Not run now: its JobLock was held.
    Deferred = 3,
}

impl JobOutcome {
    /// Every outcome, in label order.
    pub const ALL: [JobOutcome; 4] = [
        JobOutcome::Succeeded,
        JobOutcome::Failed,
        JobOutcome::PutBack,
        JobOutcome::Deferred,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            JobOutcome::Succeeded => "succeeded",
            JobOutcome::Failed => "failed",
            JobOutcome::PutBack => "put_back",
            JobOutcome::Deferred => "deferred",
        }
    }
}

/// Counters and a duration histogram of the jobs of one queue and class.
#[derive(Debug)]
pub struct JobSeries {
    /// The queue label.
    pub queue: String,
    /// The class label.
    pub class: String,
    outcomes: [AtomicU64; 4],
    /// Per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; DURATION_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A copy of a [`JobSeries`]' numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesCounts {
    /// Jobs per [`JobOutcome`], in [`JobOutcome::ALL`] order.
    pub outcomes: [u64; 4],
    /// Cumulative bucket counts, one per bound of [`DURATION_BUCKETS_US`].
    pub cumulative: [u64; DURATION_BUCKETS_US.len()],
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    /// Sum of durations, microseconds.
    pub sum_us: u64,
}

impl JobSeries {
    fn new(queue: &str, class: &str) -> JobSeries {
        JobSeries {
            queue: queue.to_owned(),
            class: class.to_owned(),
            outcomes: Default::default(),
            buckets: Default::default(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Count one job.
    pub fn observe(&self, outcome: JobOutcome, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = DURATION_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(DURATION_BUCKETS_US.len());
        self.outcomes[outcome as usize].fetch_add(1, Relaxed);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// The numbers; the bucket counts are read once each, so the cumulative
    /// counts are monotone and end at `count`.
    pub fn counts(&self) -> SeriesCounts {
        let mut cumulative = [0; DURATION_BUCKETS_US.len()];
        let mut total = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Relaxed);
            if i < cumulative.len() {
                cumulative[i] = total;
            }
        }
        SeriesCounts {
            outcomes: std::array::from_fn(|i| self.outcomes[i].load(Relaxed)),
            cumulative,
            count: total,
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

/// The runner's own index of the job series: finding a job's series costs
/// a string comparison (same pair as the last job) or two hash lookups,
/// never a lock once the pair is known.
#[derive(Debug)]
pub struct JobMeter {
    vitals: Arc<Vitals>,
    index: HashMap<String, HashMap<String, usize>>,
    series: Vec<Arc<JobSeries>>,
    last: Option<usize>,
}

impl JobMeter {
    /// An empty index over the series of `vitals`.
    pub fn new(vitals: Arc<Vitals>) -> JobMeter {
        JobMeter {
            vitals,
            index: HashMap::new(),
            series: Vec::new(),
            last: None,
        }
    }

    /// The series of a job of `queue` and `class`.
    pub fn series_of(&mut self, queue: &str, class: Option<&str>) -> &JobSeries {
        let class = class.unwrap_or(NO_CLASS);
        if let Some(i) = self.last {
            let s = &self.series[i];
            if s.queue == queue && s.class == class {
                return &self.series[i];
            }
        }
        let found = self.index.get(queue).and_then(|m| m.get(class)).copied();
        let i = match found {
            Some(i) => i,
            None => {
                let (series, own) = self.vitals.series_of(queue, class);
                let i = match self.series.iter().position(|s| Arc::ptr_eq(s, &series)) {
                    Some(i) => i,
                    None => {
                        self.series.push(series);
                        self.series.len() - 1
                    }
                };
                if own {
                    self.index
                        .entry(queue.to_owned())
                        .or_default()
                        .insert(class.to_owned(), i);
                }
                i
            }
        };
        self.last = Some(i);
        &self.series[i]
    }
}

/// An error and its causes, `outer: inner: root`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.ends_with(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pulse_is_alive_until_its_promise_runs_out() {
        let p = Pulse::new(Instant::now());
        assert!(!p.alive(), "no promise yet");
        p.beat(Duration::from_millis(50));
        assert!(p.alive());
        std::thread::sleep(Duration::from_millis(80));
        assert!(!p.alive(), "promise broken");
        p.beat(Duration::from_secs(10));
        assert!(p.alive());
    }

    #[test]
    fn redis_failures_then_success_count_a_reconnect() {
        let v = Vitals::new(DEFAULT_PULSE);
        assert!(!v.redis_fresh(Duration::from_secs(5)), "never answered");
        v.redis_ok();
        assert!(v.redis_fresh(Duration::from_secs(5)));
        let e = std::io::Error::other("connection refused");
        v.redis_failed("step", &e);
        v.redis_failed("step", &e);
        assert!(!v.redis_fresh(Duration::from_secs(5)));
        v.redis_ok();
        v.redis_ok();
        assert_eq!((v.redis_errors(), v.reconnects()), (2, 1));
        assert!(v.redis_fresh(Duration::from_secs(5)));
        let s = v.snapshot();
        assert_eq!(s.last_error.unwrap().0, "step: connection refused");
    }

    #[test]
    fn job_series_count_outcomes_and_durations() {
        let v = Arc::new(Vitals::new(DEFAULT_PULSE));
        let mut m = JobMeter::new(v.clone());
        let a: *const JobSeries = m.series_of("q", Some("A"));
        assert!(
            std::ptr::eq(m.series_of("q", Some("A")), a),
            "the last pair"
        );
        m.series_of("q", None)
            .observe(JobOutcome::PutBack, Duration::from_millis(1));
        let again = m.series_of("q", Some("A"));
        assert!(std::ptr::eq(again, a), "from the index");
        again.observe(JobOutcome::Succeeded, Duration::from_micros(800));
        again.observe(JobOutcome::Succeeded, Duration::from_millis(7));
        again.observe(JobOutcome::Failed, Duration::from_secs(1000));
        let all = v.series();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[1].queue.as_str(), all[1].class.as_str()),
            ("q", NO_CLASS)
        );
        let c = all[0].counts();
        assert_eq!(c.outcomes, [2, 1, 0, 0]);
        assert_eq!(c.count, 3);
        assert_eq!(&c.cumulative[..3], [1, 1, 2], "le 1ms, 5ms, 10ms");
        assert_eq!(c.cumulative[11], 2, "1000 s is above every bound");
        assert_eq!(c.sum_us, 800 + 7_000 + 1_000_000_000);
        // A new meter (after a reload) finds the same series.
        let mut m2 = JobMeter::new(v.clone());
        m2.series_of("q", Some("A"))
            .observe(JobOutcome::Succeeded, Duration::ZERO);
        assert_eq!(v.series()[0].counts().outcomes[0], 3);
    }

    #[test]
    fn series_beyond_the_cap_share_the_overflow_series() {
        let v = Arc::new(Vitals::new(DEFAULT_PULSE));
        let mut m = JobMeter::new(v.clone());
        for i in 0..MAX_SERIES + 5 {
            m.series_of("q", Some(&format!("C{i}")))
                .observe(JobOutcome::Succeeded, Duration::ZERO);
        }
        let all = v.series();
        assert_eq!(all.len(), MAX_SERIES + 1);
        let over = all.last().unwrap();
        assert_eq!(
            (over.queue.as_str(), over.class.as_str()),
            (OVERFLOW, OVERFLOW)
        );
        assert_eq!(over.counts().count, 5);
    }

    #[test]
    fn status_lines_read_well() {
        let mut s = Snapshot {
            phase: Phase::Running,
            slots: 10,
            busy: 3,
            paused: false,
            done: 42,
            last_error: None,
        };
        assert_eq!(s.status_line(), "running: 3/10 slots busy, 42 jobs done");
        s.phase = Phase::Stopping;
        s.last_error = Some(("redis step\nfailed".into(), Duration::from_secs(7)));
        assert_eq!(
            s.status_line(),
            "stopping: 3 running jobs finishing, 42 jobs done; last error 7s ago: redis step failed"
        );
    }
}
