//! Built-in handlers for tests, demos and benchmarks.

use std::time::Duration;

use serde_json::Value;

use super::{JobError, Registry};

/// Register every built-in handler:
/// - `AhWorker::Noop`: does nothing;
/// - `AhWorker::Sleep` (args `[seconds]`): sleeps, without holding a thread;
/// - `AhWorker::Fail` (args `[message]`): fails with `RuntimeError` and the message;
/// - `AhWorker::Count` (args `[key, field]` or `[key, field, seconds]`):
///   optionally sleeps, then adds 1 to `field` of the hash `<namespace>:<key>`,
///   retrying through a Redis outage (up to 2 minutes), so tests and the chaos
///   run can count every execution of every job;
/// - `AhWorker::Latency` (args `[enqueued_at_us, key]`): pushes how many
///   microseconds passed between `enqueued_at_us` (Unix time) and the job's
///   start onto the list `<namespace>:<key>`, for the benchmark.
pub fn register_builtin(registry: &mut Registry) {
    registry.register_fn("AhWorker::Noop", |_job, _ctx| async { Ok(()) });
    registry.register_fn("AhWorker::Sleep", |job, _ctx| async move {
        let secs = match job.args.first() {
            Some(Value::Number(n)) => n.as_f64().filter(|s| s.is_finite() && *s >= 0.0),
            _ => None,
        };
        let Some(secs) = secs else {
            return Err(JobError::new(
                "ArgumentError",
                format!(
                    "AhWorker::Sleep expects args [seconds], got {}",
                    Value::Array(job.args.clone())
                ),
            )
            .into());
        };
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        Ok(())
    });
    registry.register_fn("AhWorker::Count", |job, ctx| async move {
        let (Some(Value::String(key)), Some(field)) = (job.args.first(), job.args.get(1)) else {
            return Err(JobError::new(
                "ArgumentError",
                "AhWorker::Count expects args [key, field]",
            )
            .into());
        };
        let field = match field {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if let Some(secs) = job
            .args
            .get(2)
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s > 0.0)
        {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        }
        let mut delay = Duration::from_millis(50);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            match ctx.services.count(key, &field).await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "AhWorker::Count retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e.into()),
            }
        }
    });
    registry.register_fn("AhWorker::Latency", |job, ctx| async move {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let (Some(enqueued), Some(Value::String(key))) =
            (job.args.first().and_then(Value::as_i64), job.args.get(1))
        else {
            return Err(JobError::new(
                "ArgumentError",
                "AhWorker::Latency expects args [enqueued_at_us, key]",
            )
            .into());
        };
        ctx.services
            .push(key, &(started - enqueued).to_string())
            .await?;
        Ok(())
    });
    registry.register_fn("AhWorker::Fail", |job, _ctx| async move {
        let message = match job.args.first() {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "AhWorker::Fail failed as asked".to_owned(),
        };
        Err(JobError::new("RuntimeError", message).into())
    });
}
