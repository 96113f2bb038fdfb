//! What a running worker knows about itself, for the outside world: the
//! progress of its job loop, its phase, and its counters.
//!
//! The runner and the heartbeat write here; the systemd notifier
//! ([`crate::systemd`]) reads. Writes on the job path are relaxed atomic
//! operations on memory written by the runner task alone: no lock, no
//! allocation, no system call. Locks guard only what changes rarely (the
//! last error).
//!
//! Does not own: the notify protocol (`systemd`).

use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use tokio::sync::watch;

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
