//! systemd's notify protocol (`sd_notify(3)`) and the task that speaks it
//! for a running worker.
//!
//! The protocol is one datagram of `KEY=value` lines sent to the unix socket
//! named by `$NOTIFY_SOCKET`: a path, or an abstract name written `@name`.
//! It is written by hand here (a few lines of std) rather than with a crate,
//! which would bring libsystemd bindings or more than we use.
//!
//! What the worker says, and when:
//! - `READY=1` once Redis answered and the slots are registered (and again
//!   after a reload);
//! - `WATCHDOG=1` every half `WATCHDOG_USEC` (as `sd_watchdog_enabled(3)`
//!   advises), **only while the job loop keeps its [`Pulse`] promise**: a
//!   wedged loop stops the pings and systemd restarts the service (an idle
//!   loop still turns every pulse, so idle is not wedged);
//! - `STATUS=` busy slots, jobs done, the last error;
//! - `RELOADING=1` with `MONOTONIC_USEC=` when a reload starts;
//! - `STOPPING=1` when a stop starts, then `EXTEND_TIMEOUT_USEC=` while the
//!   drain (of a stop or a reload) makes progress: once at its start and
//!   again each time jobs finished since the last extension.
//!
//! Does not own: when phases change (the runner and [`crate::app`] decide),
//! the unit files (`config/ah-worker.service`).
//!
//! [`Pulse`]: crate::vitals::Pulse

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info_span, warn};

use crate::vitals::{Phase, Vitals};

/// How often the status line is refreshed (and the drain extended) when no
/// watchdog asks for more often.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);

/// How long each `EXTEND_TIMEOUT_USEC` asks for. A drain that finishes no
/// job for this long past `TimeoutStopSec` is killed by systemd.
pub const EXTEND_WINDOW: Duration = Duration::from_secs(30);

/// The variables systemd sets for the main process only. Plugin processes
/// are started without them, so they cannot speak for the worker.
pub const MAIN_PROCESS_ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// `READY=1`: started (or reloaded) and serving.
pub const READY: &str = "READY=1";
/// `STOPPING=1`: a stop began.
pub const STOPPING: &str = "STOPPING=1";
/// `WATCHDOG=1`: still alive.
pub const WATCHDOG: &str = "WATCHDOG=1";

/// `RELOADING=1` with the `MONOTONIC_USEC=` systemd wants with it.
pub fn reloading() -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec())
}

/// `STATUS=` with a free-form line.
pub fn status(line: &str) -> String {
    format!("STATUS={line}")
}

/// One line of a notify datagram that a supervisor reads (see
/// [`crate::cluster`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Notice<'a> {
    /// `READY=1`.
    Ready,
    /// `WATCHDOG=1`.
    Watchdog,
    /// `STATUS=…`.
    Status(&'a str),
}

/// The lines of `datagram` a supervisor reads; others are skipped.
pub fn notices(datagram: &str) -> impl Iterator<Item = Notice<'_>> {
    datagram
        .lines()
        .filter_map(|line| match line.split_once('=') {
            Some(("READY", "1")) => Some(Notice::Ready),
            Some(("WATCHDOG", "1")) => Some(Notice::Watchdog),
            Some(("STATUS", s)) => Some(Notice::Status(s)),
            _ => None,
        })
}

/// A connected notify socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier of `$NOTIFY_SOCKET`, if the service manager set one.
    pub fn from_env() -> Option<Notifier> {
        let target = std::env::var_os("NOTIFY_SOCKET")?;
        match Notifier::connect(&target) {
            Ok(n) => Some(n),
            Err(e) => {
                warn!(socket = ?target, error = %e, "cannot use NOTIFY_SOCKET; not notifying systemd");
                None
            }
        }
    }

    /// A notifier sending to `target`: a socket path, or `@name` for an
    /// abstract socket.
    pub fn connect(target: &OsStr) -> std::io::Result<Notifier> {
        let bytes = target.as_bytes();
        let addr = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
            Some(b'/') => SocketAddr::from_pathname(target)?,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "expected an absolute socket path or @abstract-name",
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        // Never block the runtime: a full receive queue drops the message.
        socket.set_nonblocking(true)?;
        Ok(Notifier { socket, addr })
    }

    /// Send one message (`KEY=value` lines).
    pub fn send(&self, message: &str) -> std::io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.addr)
            .map(|_| ())
    }

    /// Send, logging a failure (the manager may be gone; nothing to do).
    fn notify(&self, message: &str) {
        if let Err(e) = self.send(message) {
            debug!(error = %e, message, "notify message not sent");
        }
    }
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`), if it is meant
/// for this process (`WATCHDOG_PID`, when set, names it).
pub fn watchdog_from_env() -> Option<Duration> {
    watchdog(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// How often a process that tells systemd its status ticks: every
/// [`STATUS_EVERY`], or every half `watchdog` period if that is shorter
/// (`sd_watchdog_enabled(3)` advises pinging at half the period).
pub fn tick_every(watchdog: Option<Duration>) -> Duration {
    watchdog.map_or(STATUS_EVERY, |w| (w / 2).min(STATUS_EVERY))
}

/// How often the job loop must turn to feed a watchdog of `period`: four
/// turns per period, so one late turn does not withhold a ping.
pub fn pulse_for(period: Option<Duration>) -> Duration {
    match period {
        Some(p) => (p / 4).clamp(Duration::from_millis(20), crate::vitals::DEFAULT_PULSE),
        None => crate::vitals::DEFAULT_PULSE,
    }
}

/// `CLOCK_MONOTONIC` in microseconds, as `MONOTONIC_USEC=` wants it.
fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// Speak for the worker of `vitals` until `cancel`; sends `STOPPING=1` at
/// the end if it was not sent yet.
pub fn spawn(
    notifier: Notifier,
    vitals: Arc<Vitals>,
    watchdog: Option<Duration>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let span = info_span!("systemd", watchdog = ?watchdog);
    let mut phases = vitals.subscribe();
    tokio::spawn(
        async move {
            let every = tick_every(watchdog);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut speaker = Speaker {
                notifier,
                vitals,
                watchdog,
                every,
                pinged: None,
                told: Phase::Starting,
                status: String::new(),
                extended_at: None,
                withheld: false,
            };
            speaker.enter(*phases.borrow_and_update());
            loop {
                // Cancel-safety: no job or Redis call is in flight here;
                // each branch reads the vitals and sends datagrams.
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    changed = phases.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let phase = *phases.borrow_and_update();
                        speaker.enter(phase);
                    }
                    _ = tick.tick() => speaker.tick(),
                }
            }
            if speaker.told != Phase::Stopping {
                speaker.notifier.notify(STOPPING);
            }
        }
        .instrument(span),
    )
}

/// The notifier's memory of what it told systemd.
struct Speaker {
    notifier: Notifier,
    vitals: Arc<Vitals>,
    watchdog: Option<Duration>,
    /// The tick period.
    every: Duration,
    /// The last watchdog ping.
    pinged: Option<std::time::Instant>,
    told: Phase,
    status: String,
    /// Jobs done when the drain was last extended.
    extended_at: Option<u64>,
    withheld: bool,
}

impl Speaker {
    fn enter(&mut self, phase: Phase) {
        if phase == self.told {
            return;
        }
        match phase {
            Phase::Starting => return,
            Phase::Running => {
                self.status = self.vitals.snapshot().status_line();
                self.notifier
                    .notify(&format!("{READY}\n{}", status(&self.status)));
                self.extended_at = None;
            }
            Phase::Reloading => self.notifier.notify(&reloading()),
            Phase::Stopping => self.notifier.notify(STOPPING),
        }
        self.told = phase;
        self.extend_drain();
    }

    fn tick(&mut self) {
        let alive = self.vitals.pulse.alive();
        if let Some(period) = self.watchdog
            && self.told != Phase::Starting
        {
            // Every half period (the tick may be shorter, for the status).
            let due = self
                .pinged
                .is_none_or(|at| at.elapsed() + self.every >= period / 2);
            if alive {
                if due {
                    self.notifier.notify(WATCHDOG);
                    self.pinged = Some(std::time::Instant::now());
                }
                self.withheld = false;
            } else if !self.withheld {
                warn!("the job loop is not making progress; withholding the watchdog ping");
                self.withheld = true;
            }
        }
        let status = self.vitals.snapshot().status_line();
        if status != self.status {
            self.notifier.notify(&self::status(&status));
            self.status = status;
        }
        self.extend_drain();
    }

    /// While draining, ask for more time when it started or when jobs
    /// finished since the last request, and only while the loop is alive.
    fn extend_drain(&mut self) {
        if !matches!(self.told, Phase::Stopping | Phase::Reloading) || !self.vitals.pulse.alive() {
            return;
        }
        let done = self.vitals.done();
        if self.extended_at != Some(done) {
            self.notifier.notify(&format!(
                "EXTEND_TIMEOUT_USEC={}",
                EXTEND_WINDOW.as_micros()
            ));
            self.extended_at = Some(done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver() -> (UnixDatagram, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "ah-worker-notify-unit-{}-{}.sock",
            std::process::id(),
            rand_suffix()
        ));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (sock, path)
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let (sock, path) = receiver();
        let n = Notifier::connect(path.as_os_str()).unwrap();
        n.send("READY=1\nSTATUS=hello").unwrap();
        assert_eq!(recv(&sock), "READY=1\nSTATUS=hello");
        let _ = std::fs::remove_file(&path);

        let name = format!("ah-worker-unit-{}-{}", std::process::id(), rand_suffix());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::connect(OsStr::new(&format!("@{name}"))).unwrap();
        n.send("WATCHDOG=1").unwrap();
        assert_eq!(recv(&sock), "WATCHDOG=1");

        assert!(Notifier::connect(OsStr::new("relative/path")).is_err());
    }

    #[test]
    fn the_watchdog_is_for_this_pid_only() {
        assert_eq!(
            watchdog(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog(Some("0"), None, 7), None);
        assert_eq!(watchdog(Some("soon"), None, 7), None);
        assert_eq!(watchdog(None, None, 7), None);
        assert_eq!(
            pulse_for(Some(Duration::from_secs(30))),
            crate::vitals::DEFAULT_PULSE
        );
        assert_eq!(
            pulse_for(Some(Duration::from_secs(2))),
            Duration::from_millis(500)
        );
    }

    /// A loop that stops beating stops the pings; when it beats again they
    /// come back.
    #[tokio::test]
    async fn a_wedged_loop_stops_the_watchdog_pings() {
        let (sock, path) = receiver();
        sock.set_nonblocking(true).unwrap();
        let vitals = Arc::new(Vitals::new(Duration::from_millis(20)));
        let cancel = CancellationToken::new();
        let task = spawn(
            Notifier::connect(path.as_os_str()).unwrap(),
            vitals.clone(),
            Some(Duration::from_millis(100)),
            cancel.clone(),
        );
        let drain = |sock: &UnixDatagram| {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            got
        };
        vitals.pulse.beat(Duration::from_millis(40));
        vitals.set_phase(Phase::Running);
        // The loop turns for a while...
        for _ in 0..15 {
            vitals.pulse.beat(Duration::from_millis(40));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = drain(&sock);
        assert!(got[0].starts_with("READY=1\nSTATUS=running"), "{got:?}");
        let pings = got.iter().filter(|m| *m == "WATCHDOG=1").count();
        assert!(pings >= 3, "{got:?}");
        // ...then wedges.
        tokio::time::sleep(Duration::from_millis(100)).await;
        drain(&sock);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = drain(&sock);
        assert!(!got.iter().any(|m| m == "WATCHDOG=1"), "{got:?}");
        // Back to life.
        for _ in 0..10 {
            vitals.pulse.beat(Duration::from_millis(40));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(drain(&sock).iter().any(|m| m == "WATCHDOG=1"));
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(drain(&sock), ["STOPPING=1"]);
        let _ = std::fs::remove_file(&path);
    }
}
