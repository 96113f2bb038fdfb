//! `ah-worker cluster --processes N`: a supervisor of N worker processes on
//! one host, the counterpart of `actionHero startCluster`.
//!
//! Each child is this binary running the worker with the same settings
//! (the command line without `cluster …`, the same environment). The
//! supervisor learns how a child is doing through the systemd notify
//! protocol it speaks anyway: every child gets a notify socket of its own
//! (`NOTIFY_SOCKET`), so `READY=1` says it is registered and taking jobs,
//! and `WATCHDOG=1` (with `WATCHDOG_USEC` set for it) that its job loop
//! turns. A child that exits, or stops feeding its watchdog, is started
//! again after a backoff.
//!
//! | signal | effect |
//! | --- | --- |
//! | TERM, INT | TERM to every child (graceful: jobs that outlive the shutdown timeout go back to their queues), wait for them, exit 0 |
//! | QUIT | QUIT to every child (they finish their jobs however long), wait for them, exit 0 |
//! | USR1, USR2, CONT | passed on to every child |
//! | HUP | check the configuration; if valid, roll a restart through the children one at a time: start a new one, wait for its `READY=1`, then QUIT the old one (it finishes its jobs) and wait for it |
//!
//! Children run in process groups of their own, so a terminal's Ctrl-C
//! reaches only the supervisor (which passes one TERM on). Under systemd use
//! `KillMode=mixed`, so that systemd's TERM also goes to the supervisor
//! only.
//!
//! Does not own: the worker itself (children run [`crate::app::run`]), the
//! notify protocol ([`crate::systemd`]).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::UnixDatagram;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument as _, error, info, info_span, warn};

use crate::cli::RunArgs;
use crate::handler::Registry;
use crate::systemd::{self, Notice, Notifier};

/// Longest wait for a new child's `READY=1` during a rolling restart; a
/// child that takes longer is stopped and the roll abandoned.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// First and longest delay before starting a crashed child again.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A child that ran this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// The watchdog each child is asked to feed.
const CHILD_WATCHDOG: Duration = Duration::from_secs(30);

/// Set for the children: the supervisor's pid.
const SUPERVISOR_ENV: &str = "AH_WORKER_SUPERVISOR_PID";

/// In a child of the supervisor: stop gracefully (TERM) when the supervisor
/// dies, so no worker outlives it unsupervised. Nothing outside a cluster.
pub fn follow_supervisor() {
    let Some(parent) = std::env::var(SUPERVISOR_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
        warn!(error = %e, "cannot ask to be stopped with the supervisor");
    }
    // It may have died before the request took effect.
    if nix::unistd::getppid() != Pid::from_raw(parent) {
        warn!("the supervisor is gone; stopping");
        let _ = kill(nix::unistd::getpid(), Signal::SIGTERM);
    }
}

/// What the supervisor is told about its children.
#[derive(Debug)]
enum Event {
    Ready(u64),
    Watchdog(u64),
    Status(u64, String),
    Exited(u64, std::io::Result<ExitStatus>),
}

/// One child process.
struct Proc {
    id: u64,
    slot: usize,
    pid: i32,
    started: Instant,
    ready: bool,
    last_watchdog: Instant,
    /// Being replaced: stopped once its successor is ready.
    retiring: bool,
    /// Started by a rolling restart and not ready yet: if it exits, the roll
    /// stops and the old child carries on (no restart of its own).
    successor: bool,
    /// Sent TERM or QUIT to stop it (its exit is no crash).
    stopped: bool,
}

/// The state of one slot between children.
struct SlotState {
    crashes: u32,
    restart_at: Option<Instant>,
}

/// A rolling restart in progress.
struct Roll {
    /// Slots still to restart.
    todo: VecDeque<usize>,
    /// The new child of the slot being restarted, and when it started.
    current: Option<(u64, Instant)>,
}

/// Run the supervisor until a stop; `args` are the worker's own flags, to
/// check the configuration again on HUP.
pub async fn run(args: &RunArgs, processes: usize, natives: &Registry) -> anyhow::Result<()> {
    let span = info_span!("cluster", processes);
    Supervisor::new(args.clone(), processes, natives)?
        .serve()
        .instrument(span)
        .await
}

struct Supervisor<'a> {
    args: RunArgs,
    /// The handlers built in, for the class-claim check of a new
    /// configuration.
    natives: &'a Registry,
    processes: usize,
    /// The child's program and arguments.
    program: PathBuf,
    child_args: Vec<OsString>,
    procs: Vec<Proc>,
    slots: Vec<SlotState>,
    next_id: u64,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    notifier: Option<Notifier>,
    socket_dir: PathBuf,
    restarts: u64,
}

impl<'a> Supervisor<'a> {
    fn new(
        args: RunArgs,
        processes: usize,
        natives: &'a Registry,
    ) -> anyhow::Result<Supervisor<'a>> {
        anyhow::ensure!(processes >= 1, "--processes must be at least 1");
        let program = std::env::current_exe()?;
        let child_args = child_args(std::env::args_os().skip(1).collect());
        let socket_dir = private_dir()?;
        let (events_tx, events) = mpsc::unbounded_channel();
        Ok(Supervisor {
            args,
            natives,
            processes,
            program,
            child_args,
            procs: Vec::new(),
            slots: (0..processes)
                .map(|_| SlotState {
                    crashes: 0,
                    restart_at: None,
                })
                .collect(),
            next_id: 0,
            events_tx,
            events,
            notifier: Notifier::from_env(),
            socket_dir,
            restarts: 0,
        })
    }

    fn notify(&self, message: &str) {
        if let Some(n) = &self.notifier {
            let _ = n.send(message);
        }
    }

    async fn serve(mut self) -> anyhow::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut quit = signal(SignalKind::quit())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut usr2 = signal(SignalKind::user_defined2())?;
        let mut cont = signal(SignalKind::from_raw(Signal::SIGCONT as i32))?;
        let watchdog = crate::systemd::watchdog_from_env();
        let mut tick = tokio::time::interval(systemd::tick_every(watchdog));
        for slot in 0..self.processes {
            self.spawn(slot)?;
        }
        let mut announced_ready = false;
        let mut stopping = false;
        let mut roll: Option<Roll> = None;
        loop {
            if stopping && self.procs.is_empty() {
                info!("every child stopped");
                self.notify(&systemd::status("stopped"));
                let _ = std::fs::remove_dir_all(&self.socket_dir);
                return Ok(());
            }
            if !stopping {
                self.advance_roll(&mut roll, &mut announced_ready)?;
                self.restart_due()?;
                let ready = self.ready_slots();
                if !announced_ready && roll.is_none() && ready == self.processes {
                    info!(processes = ready, "every child is ready");
                    self.notify(systemd::READY);
                    announced_ready = true;
                }
            }
            // Cancel-safety: every branch only receives (a signal, an event
            // from a child's watcher task, a tick); the children run on in
            // their own processes whichever branch wins.
            tokio::select! {
                Some(event) = self.events.recv() => self.on_event(event, stopping),
                _ = term.recv() => self.stop(Signal::SIGTERM, &mut stopping, &mut roll),
                _ = int.recv() => self.stop(Signal::SIGTERM, &mut stopping, &mut roll),
                _ = quit.recv() => self.stop(Signal::SIGQUIT, &mut stopping, &mut roll),
                _ = usr1.recv() => self.pass_on(Signal::SIGUSR1),
                _ = usr2.recv() => self.pass_on(Signal::SIGUSR2),
                _ = cont.recv() => self.pass_on(Signal::SIGCONT),
                _ = hup.recv() => {
                    if stopping {
                        continue;
                    }
                    if roll.is_some() {
                        warn!("HUP during a rolling restart: ignored");
                        continue;
                    }
                    let checked = crate::config::Config::load(&self.args)
                        .map_err(anyhow::Error::from)
                        .and_then(|c| Ok(crate::plugin::check_claims(&c.plugins, self.natives)?));
                    match checked {
                        Err(e) => error!(error = %e, "HUP: the new configuration is invalid; the children keep running"),
                        Ok(_) => {
                            info!("HUP: rolling restart");
                            self.notify(&systemd::reloading());
                            announced_ready = false;
                            roll = Some(Roll { todo: (0..self.processes).collect(), current: None });
                        }
                    }
                }
                _ = tick.tick() => {
                    if watchdog.is_some() {
                        self.notify(systemd::WATCHDOG);
                    }
                    self.check_watchdogs();
                    self.notify(&systemd::status(&format!(
                        "{}/{} processes ready, {} restarts",
                        self.ready_slots(), self.processes, self.restarts
                    )));
                }
            }
        }
    }

    /// Slots with a ready, not retiring child.
    fn ready_slots(&self) -> usize {
        (0..self.processes)
            .filter(|&s| {
                self.procs
                    .iter()
                    .any(|p| p.slot == s && p.ready && !p.stopped)
            })
            .count()
    }

    /// Start a child for `slot`.
    fn spawn(&mut self, slot: usize) -> anyhow::Result<u64> {
        self.next_id += 1;
        let id = self.next_id;
        let path = self.socket_dir.join(format!("{id}.sock"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.child_args)
            .env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", CHILD_WATCHDOG.as_micros().to_string())
            .env_remove("WATCHDOG_PID")
            .env(SUPERVISOR_ENV, std::process::id().to_string())
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd.spawn()?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        info!(slot, pid, "child started");
        let now = Instant::now();
        self.procs.push(Proc {
            id,
            slot,
            pid,
            started: now,
            ready: false,
            last_watchdog: now,
            retiring: false,
            successor: false,
            stopped: false,
        });
        tokio::spawn(
            watch(id, child, socket, path, self.events_tx.clone())
                .instrument(info_span!("child", slot, pid)),
        );
        Ok(id)
    }

    fn signal(&self, pid: i32, sig: Signal) {
        if pid > 0
            && let Err(e) = kill(Pid::from_raw(pid), sig)
        {
            warn!(pid, signal = ?sig, error = %e, "cannot signal the child");
        }
    }

    fn pass_on(&self, sig: Signal) {
        info!(signal = ?sig, "passed on to every child");
        for p in &self.procs {
            self.signal(p.pid, sig);
        }
    }

    fn stop(&mut self, sig: Signal, stopping: &mut bool, roll: &mut Option<Roll>) {
        if !*stopping {
            info!(signal = ?sig, "stopping every child");
            self.notify(systemd::STOPPING);
        }
        *stopping = true;
        *roll = None;
        for p in &mut self.procs {
            p.stopped = true;
        }
        self.pass_on(sig);
    }

    fn on_event(&mut self, event: Event, stopping: bool) {
        match event {
            Event::Ready(id) => {
                if let Some(p) = self.procs.iter_mut().find(|p| p.id == id) {
                    p.ready = true;
                    p.successor = false;
                    p.last_watchdog = Instant::now();
                    info!(slot = p.slot, pid = p.pid, "child ready");
                }
            }
            Event::Watchdog(id) => {
                if let Some(p) = self.procs.iter_mut().find(|p| p.id == id) {
                    p.last_watchdog = Instant::now();
                }
            }
            Event::Status(id, status) => {
                if let Some(p) = self.procs.iter().find(|p| p.id == id) {
                    tracing::debug!(slot = p.slot, pid = p.pid, status, "child status");
                }
            }
            Event::Exited(id, status) => {
                let Some(i) = self.procs.iter().position(|p| p.id == id) else {
                    return;
                };
                let p = self.procs.remove(i);
                if p.stopped || p.retiring || p.successor || stopping {
                    info!(slot = p.slot, pid = p.pid, status = ?status, "child stopped");
                    return;
                }
                let slot = &mut self.slots[p.slot];
                if p.started.elapsed() >= STABLE_AFTER {
                    slot.crashes = 0;
                }
                slot.crashes += 1;
                let delay = BACKOFF_MIN
                    .saturating_mul(2u32.saturating_pow(slot.crashes - 1))
                    .min(BACKOFF_MAX);
                error!(slot = p.slot, pid = p.pid, status = ?status, restart_in = ?delay, "child exited unexpectedly");
                slot.restart_at = Some(Instant::now() + delay);
            }
        }
    }

    /// Start the children whose backoff is over (in slots without one).
    fn restart_due(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        for slot in 0..self.processes {
            let occupied = self.procs.iter().any(|p| p.slot == slot && !p.stopped);
            if occupied {
                self.slots[slot].restart_at = None;
            } else if self.slots[slot].restart_at.is_some_and(|at| at <= now) {
                self.slots[slot].restart_at = None;
                self.restarts += 1;
                self.spawn(slot)?;
            }
        }
        Ok(())
    }

    /// Kill a ready child whose watchdog went silent; its exit restarts it.
    fn check_watchdogs(&mut self) {
        for p in &mut self.procs {
            if p.ready && !p.stopped && p.last_watchdog.elapsed() > CHILD_WATCHDOG {
                error!(slot = p.slot, pid = p.pid, silent_for = ?p.last_watchdog.elapsed(), "child's watchdog is silent; killing it");
                if p.pid > 0 {
                    let _ = kill(Pid::from_raw(p.pid), Signal::SIGABRT);
                }
                // Not `stopped`: its exit counts as a crash.
                p.last_watchdog = Instant::now();
            }
        }
    }

    /// Move a rolling restart on: start the next slot's new child, retire
    /// the old one once the new one is ready.
    fn advance_roll(
        &mut self,
        roll: &mut Option<Roll>,
        announced_ready: &mut bool,
    ) -> anyhow::Result<()> {
        let Some(r) = roll else { return Ok(()) };
        if let Some((id, started)) = r.current {
            match self.procs.iter().find(|p| p.id == id) {
                None => {
                    error!(
                        "rolling restart: the new child exited before it was ready; stopping the roll, the old children keep running"
                    );
                    *roll = None;
                    return Ok(());
                }
                Some(p) if !p.ready => {
                    if started.elapsed() > READY_TIMEOUT {
                        error!(
                            pid = p.pid,
                            "rolling restart: the new child is not ready in time; stopping it and the roll"
                        );
                        self.signal(p.pid, Signal::SIGTERM);
                        if let Some(p) = self.procs.iter_mut().find(|p| p.id == id) {
                            p.stopped = true;
                        }
                        *roll = None;
                    }
                    return Ok(());
                }
                Some(p) => {
                    let slot = p.slot;
                    // Ready: stop its predecessor, which finishes its jobs.
                    let old: Vec<i32> = self
                        .procs
                        .iter_mut()
                        .filter(|o| o.slot == slot && o.id != id && !o.retiring)
                        .map(|o| {
                            o.retiring = true;
                            o.pid
                        })
                        .collect();
                    for pid in old {
                        // QUIT: it finishes its running jobs however long
                        // they take, as a reload does, so none restarts.
                        info!(
                            slot,
                            pid, "rolling restart: stopping the old child after its jobs"
                        );
                        self.signal(pid, Signal::SIGQUIT);
                    }
                    r.current = None;
                }
            }
        }
        // One slot at a time: the next starts once the retired child left.
        if self.procs.iter().any(|p| p.retiring) {
            return Ok(());
        }
        match r.todo.pop_front() {
            Some(slot) => {
                let id = self.spawn(slot)?;
                if let Some(p) = self.procs.iter_mut().find(|p| p.id == id) {
                    p.successor = true;
                }
                // A pending restart of this slot is this start.
                self.slots[slot].restart_at = None;
                r.current = Some((id, Instant::now()));
            }
            None => {
                info!("rolling restart done");
                *roll = None;
                *announced_ready = false;
            }
        }
        Ok(())
    }
}

/// A new directory only this user can enter, for the children's sockets
/// (`$RUNTIME_DIRECTORY` under systemd, else the temp directory).
fn private_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    let base = std::env::var_os("RUNTIME_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let mut attempt = 0u32;
    loop {
        let dir = base.join(format!(
            "ah-worker-cluster-{}-{attempt}",
            std::process::id()
        ));
        // `create` fails if it exists: never a directory someone else made.
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1
            }
            Err(e) => return Err(e),
        }
    }
}

/// Wait for the child to exit, and pass on what it says on its notify
/// socket; removes the socket at the end.
async fn watch(
    id: u64,
    mut child: tokio::process::Child,
    socket: UnixDatagram,
    path: PathBuf,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        // Cancel-safety: `wait` and `recv` lose nothing when the other
        // wins; the child runs on either way.
        tokio::select! {
            status = child.wait() => {
                let _ = events.send(Event::Exited(id, status));
                break;
            }
            Ok(n) = socket.recv(&mut buf) => {
                for notice in systemd::notices(&String::from_utf8_lossy(&buf[..n])) {
                    let _ = events.send(match notice {
                        Notice::Ready => Event::Ready(id),
                        Notice::Watchdog => Event::Watchdog(id),
                        Notice::Status(s) => Event::Status(id, s.to_owned()),
                    });
                }
            }
        }
    }
    let _ = std::fs::remove_file(path);
}

/// The command line of a child: this one without the `cluster` subcommand
/// and its `--processes N`.
fn child_args(args: Vec<OsString>) -> Vec<OsString> {
    use clap::CommandFactory as _;
    let cmd = crate::cli::Cli::command();
    // Global flags that take a value: the token after them is not the
    // subcommand even if it reads "cluster".
    let takes_value = |token: &str| {
        cmd.get_arguments().any(|a| {
            a.get_action().takes_values()
                && (a.get_long().is_some_and(|l| token == format!("--{l}"))
                    || a.get_short().is_some_and(|s| token == format!("-{s}")))
        })
    };
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    let mut in_cluster = false;
    let mut seen_subcommand = false;
    while let Some(arg) = it.next() {
        let s = arg.to_string_lossy().into_owned();
        if in_cluster && (s == "--processes" || s == "-p") {
            it.next();
            continue;
        }
        if in_cluster && s.starts_with("--processes=") {
            continue;
        }
        if !seen_subcommand && !s.starts_with('-') {
            seen_subcommand = true;
            if s == "cluster" {
                in_cluster = true;
                continue;
            }
        }
        let value_follows = !s.contains('=') && takes_value(&s);
        out.push(arg);
        if value_follows && let Some(v) = it.next() {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::child_args;

    fn args(s: &str) -> Vec<std::ffi::OsString> {
        s.split_whitespace().map(Into::into).collect()
    }

    #[test]
    fn the_child_runs_the_worker_with_the_same_flags() {
        assert_eq!(
            child_args(args("cluster --processes 3 --queues a,b -c 5")),
            args("--queues a,b -c 5")
        );
        assert_eq!(
            child_args(args("--namespace cluster cluster -p 2 --config x.toml")),
            args("--namespace cluster --config x.toml")
        );
        assert_eq!(
            child_args(args("-q cluster cluster --processes=4")),
            args("-q cluster")
        );
    }
}
