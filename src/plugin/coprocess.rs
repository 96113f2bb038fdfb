//! `coprocess` plugins: long-lived processes speaking JSON lines.
//!
//! Each process gets jobs on stdin and answers with results on stdout,
//! several jobs in flight at once, matched by id. While a job runs, the
//! process may `call` the worker (enqueue, ...). A supervisor per process
//! restarts it when it dies; the jobs it had in flight fail
//! (`AhWorker::PluginCrashed`) or go back to their queues, as configured.
//! The wire messages are in `docs/plugin-protocol.md`.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use super::{JobObject, OnCrash, PluginSpec, ProcessSpec};
use crate::handler::{BoxFuture, Handler, JobContext, JobError, PutBack, Services, ShutdownFuture};
use crate::resque::Job;

/// First and longest wait before restarting a process that died.
const RESTART_MIN: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(10);
/// A process that lived this long is restarted without delay.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// How long a process may take to exit after its stdin is closed. By then
/// the worker has finished or put back every job, so what the process still
/// works on is abandoned.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// Longest line read from a process; a longer one is an error.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// The outcome a process reported for a job.
type Reply = Result<(), anyhow::Error>;

/// What one process shares with the jobs sent to it.
struct Proc {
    /// Where to send lines while the process runs.
    writer: watch::Sender<Option<mpsc::UnboundedSender<String>>>,
    /// Jobs sent and not answered: id → who waits.
    pending: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
}

/// A `coprocess` plugin.
pub struct CoprocessPlugin {
    name: String,
    timeout: Duration,
    procs: Vec<Arc<Proc>>,
    slots: Arc<Semaphore>,
    services: Arc<Mutex<Option<Services>>>,
    stop: CancellationToken,
    supervisors: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for CoprocessPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoprocessPlugin")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CoprocessPlugin {
    /// Start `processes` copies of the plugin's program.
    pub fn start(
        spec: &PluginSpec,
        process: ProcessSpec,
        processes: usize,
        in_flight: usize,
        on_crash: OnCrash,
    ) -> CoprocessPlugin {
        let stop = CancellationToken::new();
        let services = Arc::new(Mutex::new(None));
        let mut procs = Vec::new();
        let mut supervisors = Vec::new();
        for index in 0..processes {
            let proc = Arc::new(Proc {
                writer: watch::channel(None).0,
                pending: Mutex::new(HashMap::new()),
            });
            let sup = Supervisor {
                plugin: spec.name.clone(),
                index,
                process: process.clone(),
                on_crash,
                proc: proc.clone(),
                services: services.clone(),
                stop: stop.clone(),
            };
            let span = info_span!("coprocess", plugin = %spec.name, index);
            supervisors.push(tokio::spawn(sup.run().instrument(span)));
            procs.push(proc);
        }
        CoprocessPlugin {
            name: spec.name.clone(),
            timeout: spec.timeout,
            procs,
            slots: Arc::new(Semaphore::new(processes * in_flight)),
            services,
            stop,
            supervisors: Mutex::new(supervisors),
        }
    }
}

/// Removes a job from its process's pending map when the job's future ends
/// in any way (answered, timed out, aborted).
struct PendingGuard {
    proc: Arc<Proc>,
    id: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.proc
            .pending
            .lock()
            .expect("pending lock")
            .remove(&self.id);
    }
}

impl Handler for CoprocessPlugin {
    fn perform(&self, job: Job, ctx: JobContext) -> BoxFuture {
        self.services
            .lock()
            .expect("services lock")
            .get_or_insert_with(|| ctx.services.clone());
        let slots = self.slots.clone();
        let procs = self.procs.clone();
        let timeout = self.timeout;
        let name = self.name.clone();
        Box::pin(async move {
            let started = Instant::now();
            let work = async {
                let _permit = slots
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                // The live process with the fewest jobs in flight.
                let (proc, writer) = loop {
                    let live: Vec<(&Arc<Proc>, mpsc::UnboundedSender<String>)> = procs
                        .iter()
                        .filter_map(|p| p.writer.borrow().clone().map(|w| (p, w)))
                        .collect();
                    if let Some((p, w)) = live
                        .into_iter()
                        .min_by_key(|(p, _)| p.pending.lock().expect("pending lock").len())
                    {
                        break (p.clone(), w);
                    }
                    // None is running (starting or restarting): wait for one.
                    let mut rx = procs[0].writer.subscribe();
                    let _ = tokio::time::timeout(RESTART_MAX, rx.changed()).await;
                };
                let (tx, rx) = oneshot::channel();
                proc.pending
                    .lock()
                    .expect("pending lock")
                    .insert(ctx.id.clone(), tx);
                let _guard = PendingGuard {
                    proc: proc.clone(),
                    id: ctx.id.clone(),
                };
                let line = JobObject::new(&job, &ctx, Some("job")).to_json();
                // If the process just died, the crash path answers the job.
                let _ = writer.send(line);
                match rx.await {
                    Ok(reply) => reply,
                    Err(_) => Err(JobError::new(
                        "AhWorker::PluginCrashed",
                        format!("plugin {name}: the job was dropped"),
                    )
                    .into()),
                }
            };
            match tokio::time::timeout(timeout.saturating_sub(started.elapsed()), work).await {
                Ok(reply) => reply,
                Err(_) => Err(JobError::new(
                    "AhWorker::Timeout",
                    format!(
                        "plugin {name}: no result within {}",
                        humantime::format_duration(timeout)
                    ),
                )
                .into()),
            }
        })
    }

    fn shutdown(&self) -> ShutdownFuture<'_> {
        Box::pin(async move {
            self.stop.cancel();
            let tasks: Vec<_> =
                std::mem::take(&mut *self.supervisors.lock().expect("supervisors lock"));
            for task in tasks {
                let _ = task.await;
            }
        })
    }
}

/// A message from a process.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum FromPlugin {
    Result {
        id: String,
        ok: bool,
        exception: Option<String>,
        error: Option<String>,
        #[serde(default)]
        backtrace: Vec<String>,
    },
    Call {
        id: Value,
        job: Option<String>,
        method: String,
        #[serde(default)]
        params: Value,
    },
    Log {
        level: Option<String>,
        message: Option<String>,
        job: Option<String>,
    },
    #[serde(other)]
    Other,
}

/// Keeps one process running.
struct Supervisor {
    plugin: String,
    index: usize,
    process: ProcessSpec,
    on_crash: OnCrash,
    proc: Arc<Proc>,
    services: Arc<Mutex<Option<Services>>>,
    stop: CancellationToken,
}

impl Supervisor {
    async fn run(self) {
        let mut delay = RESTART_MIN;
        while !self.stop.is_cancelled() {
            let started = Instant::now();
            let how = self.run_once().await;
            if self.stop.is_cancelled() {
                break;
            }
            warn!(how = %how, restart_in = ?delay, "plugin process ended; restarting");
            // Cancel-safety: only a sleep is raced; nothing is in flight.
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = if started.elapsed() >= HEALTHY_AFTER {
                RESTART_MIN
            } else {
                (delay * 2).min(RESTART_MAX)
            };
        }
    }

    /// Run the process until it exits (or shutdown); returns how it ended.
    async fn run_once(&self) -> String {
        let mut cmd = Command::new(&self.process.program);
        cmd.args(&self.process.command[1..])
            .envs(&self.process.env)
            .env("AH_PLUGIN_NAME", &self.plugin)
            .env("AH_PLUGIN_INDEX", self.index.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(cwd) = &self.process.cwd {
            cmd.current_dir(cwd);
        }
        for name in crate::systemd::MAIN_PROCESS_ENV {
            cmd.env_remove(name);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return format!("cannot start {:?}: {e}", self.process.command[0]),
        };
        info!(pid = child.id(), "plugin process started");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(
            async move {
                while let Some(mut line) = rx.recv().await {
                    line.push('\n');
                    if stdin.write_all(line.as_bytes()).await.is_err() {
                        break;
                    }
                    let _ = stdin.flush().await;
                }
                // Dropping stdin closes it: the process's signal to finish.
            }
            .in_current_span(),
        );
        let plugin = self.plugin.clone();
        let errors = tokio::spawn(
            async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    warn!(plugin, stream = "stderr", "{line}");
                }
            }
            .in_current_span(),
        );
        self.proc.writer.send_replace(Some(tx.clone()));
        // Our own sender; dropped on stop so that, once jobs and calls have
        // sent their last lines, the writer ends and closes stdin.
        let mut tx = Some(tx);

        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        let mut closing = false;
        let mut exit_deadline = tokio::time::Instant::now();
        let status = loop {
            // Cancel-safety: read_until keeps what it read in `buf` when the
            // stop branch wins, and after a stop the loop only drains output.
            tokio::select! {
                _ = self.stop.cancelled(), if !closing => {
                    closing = true;
                    exit_deadline = tokio::time::Instant::now() + EXIT_GRACE;
                    self.proc.writer.send_replace(None);
                    tx = None;
                    continue;
                }
                _ = tokio::time::sleep_until(exit_deadline), if closing => break None,
                read = read_line(&mut reader, &mut buf) => match read {
                    Ok(true) => {
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        buf.clear();
                        self.handle(&line, tx.as_ref());
                    }
                    Ok(false) | Err(_) => {
                        let waited = if closing {
                            tokio::time::timeout_at(exit_deadline, child.wait()).await.ok()
                        } else {
                            Some(child.wait().await)
                        };
                        break waited;
                    }
                }
            }
        };
        self.proc.writer.send_replace(None);
        drop(tx);
        let how = match status {
            Some(Ok(s)) => s.to_string(),
            Some(Err(e)) => format!("wait failed: {e}"),
            None => {
                let _ = child.kill().await;
                format!("did not exit within {EXIT_GRACE:?} of its stdin closing; killed")
            }
        };
        writer.abort();
        let _ = errors.await;
        self.fail_pending(&how);
        how
    }

    /// Answer every job in flight after the process ended.
    fn fail_pending(&self, how: &str) {
        let pending: Vec<(String, oneshot::Sender<Reply>)> = self
            .proc
            .pending
            .lock()
            .expect("pending lock")
            .drain()
            .collect();
        for (id, tx) in pending {
            let reason = format!(
                "plugin {} process ended ({how}) while running the job",
                self.plugin
            );
            let reply = match self.on_crash {
                OnCrash::Fail => Err(JobError::new("AhWorker::PluginCrashed", reason).into()),
                OnCrash::Requeue => Err(PutBack { reason }.into()),
            };
            debug!(job = id, "answering a job of a dead process");
            let _ = tx.send(reply);
        }
    }

    fn handle(&self, line: &str, tx: Option<&mpsc::UnboundedSender<String>>) {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return;
        }
        let msg: FromPlugin = match serde_json::from_str(trimmed) {
            Ok(m) => m,
            Err(_) => {
                info!(plugin = %self.plugin, stream = "stdout", "{trimmed}");
                return;
            }
        };
        match msg {
            FromPlugin::Result {
                id,
                ok,
                exception,
                error,
                backtrace,
            } => {
                let Some(waiter) = self.proc.pending.lock().expect("pending lock").remove(&id)
                else {
                    debug!(
                        job = id,
                        "result for a job not in flight (timed out?); ignored"
                    );
                    return;
                };
                let reply = if ok {
                    Ok(())
                } else {
                    let mut e = JobError::new(
                        exception.unwrap_or_else(|| "RuntimeError".into()),
                        error.unwrap_or_else(|| "the plugin reported a failure".into()),
                    );
                    e.backtrace = backtrace;
                    Err(e.into())
                };
                let _ = waiter.send(reply);
            }
            FromPlugin::Call {
                id,
                job,
                method,
                params,
            } => {
                let services = self.services.lock().expect("services lock").clone();
                let Some(tx) = tx.cloned() else {
                    debug!(plugin = %self.plugin, "call after stdin was closed; not answered");
                    return;
                };
                let plugin = self.plugin.clone();
                tokio::spawn(async move {
                    let result = match services {
                        Some(s) => call(&s, &method, params).await,
                        None => Err("no worker services yet".to_owned()),
                    };
                    let reply = match result {
                        Ok(v) => json!({"type": "reply", "id": id, "ok": true, "result": v}),
                        Err(e) => {
                            warn!(plugin, job, method, error = %e, "plugin call refused");
                            json!({"type": "reply", "id": id, "ok": false, "error": e})
                        }
                    };
                    let _ = tx.send(reply.to_string());
                });
            }
            FromPlugin::Log {
                level,
                message,
                job,
            } => {
                let message = message.unwrap_or_default();
                let plugin = &self.plugin;
                match level.as_deref() {
                    Some("error") => error!(plugin, job, "{message}"),
                    Some("warn") => warn!(plugin, job, "{message}"),
                    Some("debug") => debug!(plugin, job, "{message}"),
                    _ => info!(plugin, job, "{message}"),
                }
            }
            FromPlugin::Other => {
                debug!(plugin = %self.plugin, "message of an unknown type ignored")
            }
        }
    }
}

/// Read one line into `buf` (without its newline); `Ok(false)` at the end.
async fn read_line(
    reader: &mut BufReader<tokio::process::ChildStdout>,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let n = reader.read_until(b'\n', buf).await?;
    if n == 0 && buf.is_empty() {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    if buf.len() > MAX_LINE {
        return Err(std::io::Error::other("line too long"));
    }
    Ok(true)
}

/// Carry out a plugin's `call`.
async fn call(services: &Services, method: &str, params: Value) -> Result<Value, String> {
    match method {
        "enqueue" => {
            let class = params["class"]
                .as_str()
                .filter(|c| !c.is_empty())
                .ok_or("`class` must be a non-empty string")?;
            let queue = match &params["queue"] {
                Value::Null => "default",
                Value::String(q) if !q.is_empty() => q.as_str(),
                _ => return Err("`queue` must be a non-empty string".into()),
            };
            let args = match &params["args"] {
                Value::Null => Value::Array(Vec::new()),
                a => a.clone(),
            };
            let at = match (&params["at"], &params["in"]) {
                (Value::Null, Value::Null) => None,
                (at, Value::Null) => Some(at.as_i64().ok_or("`at` must be Unix seconds")?),
                (Value::Null, delay) => {
                    let secs = match delay {
                        Value::Number(n) => n
                            .as_f64()
                            .filter(|s| *s >= 0.0)
                            .ok_or("`in` must be seconds >= 0")?,
                        Value::String(s) => crate::config::parse_duration(s)
                            .ok_or("`in` must be seconds or a duration like \"90s\"")?
                            .as_secs_f64(),
                        _ => return Err("`in` must be seconds or a duration like \"90s\"".into()),
                    };
                    Some(chrono::Utc::now().timestamp() + secs.round() as i64)
                }
                _ => return Err("give `at` or `in`, not both".into()),
            };
            services
                .enqueue(class, queue, args, at)
                .await
                .map(Value::Bool)
                .map_err(|e| format!("enqueue failed: {e}"))
        }
        method
            if method.starts_with("cache.")
                || method.starts_with("stats.")
                || method.starts_with("rooms.") =>
        {
            let ah = services.actionhero().ok_or(
                "actionHero state is not enabled on this worker (no [actionhero] section)",
            )?;
            actionhero_call(ah, method, &params).await
        }
        "faye.publish" | "faye.say" => {
            let faye = services
                .faye()
                .ok_or("Faye is not enabled on this worker (no [faye] section)")?;
            let text = |name: &str| {
                params[name]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| format!("`{name}` must be a non-empty string"))
            };
            let field = |name: &str| {
                params
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("`{name}` is required"))
            };
            let sent = if method == "faye.publish" {
                faye.publish(text("channel")?, field("data")?).await
            } else {
                faye.say(text("room")?, field("message")?).await
            };
            sent.map(|()| Value::Null)
                .map_err(|e| format!("{method} failed: {:#}", anyhow::Error::new(e)))
        }
        other => Err(format!("unknown method {other:?}")),
    }
}

/// The `cache.*`, `stats.*` and `rooms.*` calls (docs/plugin-protocol.md).
async fn actionhero_call(
    ah: &crate::actionhero::ActionHero,
    method: &str,
    p: &Value,
) -> Result<Value, String> {
    let text = |name: &str| -> Result<String, String> {
        p[name]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| format!("`{name}` must be a non-empty string"))
    };
    let ms = |name: &str| p[name].as_u64().map(std::time::Duration::from_millis);
    let err = |e: crate::Error| format!("{method} failed: {e}");
    match method {
        "cache.save" => {
            ah.cache
                .save(&text("key")?, p["value"].clone(), ms("expire_ms"))
                .await
                .map_err(err)?;
            Ok(Value::Null)
        }
        "cache.load" => match ah
            .cache
            .load(&text("key")?, ms("expire_ms"))
            .await
            .map_err(err)?
        {
            Ok(entry) => Ok(serde_json::to_value(entry).expect("plain struct")),
            Err(miss) => Err(miss.to_string()),
        },
        "cache.destroy" => Ok(Value::Bool(
            ah.cache.destroy(&text("key")?).await.map_err(err)?,
        )),
        "cache.size" => Ok(Value::from(ah.cache.size().await.map_err(err)?)),
        "cache.list" => Ok(json!(ah.cache.list().await.map_err(err)?)),
        "cache.lock" => {
            let ttl = ms("ttl_ms").unwrap_or(std::time::Duration::from_secs(10));
            Ok(Value::Bool(
                ah.cache.lock(&text("key")?, ttl).await.map_err(err)?,
            ))
        }
        "cache.unlock" => Ok(Value::Bool(
            ah.cache.unlock(&text("key")?).await.map_err(err)?,
        )),
        "stats.increment" => {
            ah.stats
                .increment(&text("key")?, p["by"].as_i64().unwrap_or(1));
            Ok(Value::Null)
        }
        "stats.get" => Ok(json!(ah.stats.get_all().await.map_err(err)?)),
        "rooms.list" => Ok(json!(ah.rooms.list().await.map_err(err)?)),
        "rooms.status" | "rooms.members" => ah.rooms.status(&text("room")?).await.map_err(err),
        "rooms.create" => Ok(Value::Bool(
            ah.rooms.create(&text("room")?).await.map_err(err)?,
        )),
        "rooms.add" => Ok(Value::Bool(
            ah.rooms
                .add_member(&text("room")?, &text("id")?)
                .await
                .map_err(err)?,
        )),
        "rooms.remove" => Ok(Value::Bool(
            ah.rooms
                .remove_member(&text("room")?, &text("id")?)
                .await
                .map_err(err)?,
        )),
        other => Err(format!("unknown method {other:?}")),
    }
}
