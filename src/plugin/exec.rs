//! `exec` plugins: one process per job.
//!
//! The job object goes to the process's stdin; the essentials also go into
//! its environment. Exit status 0 is success. The process runs in a process
//! group of its own, so a timeout — or the job being cancelled or put back —
//! kills everything it started.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;
use tracing::{info, warn};

use super::{JobObject, PluginSpec, ProcessSpec};
use crate::handler::{BoxFuture, Handler, JobContext, JobError};
use crate::resque::Job;

/// Longest stdout/stderr line logged; the rest of a longer line is cut.
const MAX_LINE: usize = 8 * 1024;
/// How much of the end of stderr is kept for the failure record.
const STDERR_TAIL: usize = 64 * 1024;
/// Lines of stderr in a failure's backtrace.
const BACKTRACE_LINES: usize = 20;

/// An `exec` plugin.
#[derive(Debug)]
pub struct ExecPlugin {
    name: String,
    process: ProcessSpec,
    timeout: Duration,
}

impl ExecPlugin {
    /// The plugin of `spec`.
    pub fn new(spec: &PluginSpec, process: ProcessSpec) -> ExecPlugin {
        ExecPlugin {
            name: spec.name.clone(),
            process,
            timeout: spec.timeout,
        }
    }
}

impl Handler for ExecPlugin {
    fn perform(&self, job: Job, ctx: JobContext) -> BoxFuture {
        let name = self.name.clone();
        let process = self.process.clone();
        let timeout = self.timeout;
        Box::pin(async move { run(&name, &process, timeout, &job, &ctx).await })
    }
}

/// Kills the process group when dropped: on a timeout, and when the job's
/// task is aborted (USR1, a shutdown deadline).
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

async fn run(
    name: &str,
    process: &ProcessSpec,
    timeout: Duration,
    job: &Job,
    ctx: &JobContext,
) -> anyhow::Result<()> {
    let object = JobObject::new(job, ctx, None).to_json();
    let mut cmd = Command::new(&process.program);
    cmd.args(&process.command[1..])
        .envs(&process.env)
        .env("AH_JOB_ID", &ctx.id)
        .env("AH_JOB_CLASS", &job.class)
        .env("AH_JOB_QUEUE", &job.queue)
        .env("AH_JOB_WORKER", &ctx.worker)
        .env("AH_JOB_RUN_AT", &ctx.run_at)
        .env(
            "AH_JOB_ARGS",
            serde_json::Value::Array(job.args.clone()).to_string(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &process.cwd {
        cmd.current_dir(cwd);
    }
    for name in crate::systemd::MAIN_PROCESS_ENV {
        cmd.env_remove(name);
    }
    let mut child = cmd.spawn().map_err(|e| {
        JobError::new(
            "AhWorker::ExecFailed",
            format!("plugin {name}: cannot start {:?}: {e}", process.command[0]),
        )
    })?;
    let mut guard = GroupGuard(child.id().map(|pid| Pid::from_raw(pid as i32)));

    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let feed = async move {
        // A process that does not read its stdin is not an error.
        let _ = stdin.write_all(object.as_bytes()).await;
        let _ = stdin.write_all(b"\n").await;
        drop(stdin);
    };
    let (class, queue, worker) = (&job.class, &job.queue, &ctx.worker);
    let out = pump(stdout, usize::MAX, |line| {
        info!(
            plugin = name,
            class,
            queue,
            worker,
            stream = "stdout",
            "{line}"
        )
    });
    let err = pump(stderr, STDERR_TAIL, |line| {
        warn!(
            plugin = name,
            class,
            queue,
            worker,
            stream = "stderr",
            "{line}"
        )
    });
    let pgid = guard.0;
    let wait = async {
        let status = child.wait().await;
        // The job ends with its process: anything it left running in its
        // group goes too, which also closes the pipes the pumps read.
        if let Some(pgid) = pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        status
    };
    let run = async {
        let ((), _, tail, status) = tokio::join!(feed, out, err, wait);
        (tail, status)
    };
    let (tail, status) = match tokio::time::timeout(timeout, run).await {
        Ok(done) => done,
        Err(_) => {
            drop(guard); // kills the whole group
            return Err(JobError::new(
                "AhWorker::Timeout",
                format!(
                    "plugin {name}: job did not finish within {}",
                    humantime::format_duration(timeout)
                ),
            )
            .into());
        }
    };
    guard.0 = None; // the group was killed when the leader exited
    let status = status?;
    if status.success() {
        return Ok(());
    }
    let lines: Vec<&str> = tail.lines().filter(|l| !l.trim().is_empty()).collect();
    let message = match (lines.last(), status.code()) {
        (Some(last), _) => last.trim().to_owned(),
        (None, Some(code)) => format!("exited with status {code}"),
        (None, None) => format!(
            "killed by signal {}",
            std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
        ),
    };
    let mut e = JobError::new("AhWorker::ExecFailed", message);
    e.backtrace = lines[lines.len().saturating_sub(BACKTRACE_LINES)..]
        .iter()
        .map(|l| l.to_string())
        .collect();
    if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&status) {
        e.backtrace.push(format!("killed by signal {sig}"));
    } else if let Some(code) = status.code() {
        e.backtrace.push(format!("exited with status {code}"));
    }
    Err(e.into())
}

/// Read `stream` to its end, calling `log` for each line (cut at
/// [`MAX_LINE`]), and return its last `keep` bytes (lossy UTF-8). Memory is
/// bounded whatever the process writes.
async fn pump(mut stream: impl AsyncRead + Unpin, keep: usize, log: impl Fn(&str)) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut line: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                log(&String::from_utf8_lossy(&line));
                line.clear();
            } else if line.len() < MAX_LINE {
                line.push(b);
            }
        }
        if keep != usize::MAX {
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * keep {
                tail.drain(..tail.len() - keep);
            }
        }
    }
    if !line.is_empty() {
        log(&String::from_utf8_lossy(&line));
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    String::from_utf8_lossy(&tail).into_owned()
}
