//! Built-in handlers for tests, demos and benchmarks.

use std::time::Duration;

use serde_json::Value;

use super::{JobError, Registry};

/// Register every built-in handler:
/// - `AhWorker::Noop`: does nothing;
/// - `AhWorker::Sleep` (args `[seconds]`): sleeps, without holding a thread;
/// - `AhWorker::Fail` (args `[message]`): fails with `RuntimeError` and the message.
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
    registry.register_fn("AhWorker::Fail", |job, _ctx| async move {
        let message = match job.args.first() {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "AhWorker::Fail failed as asked".to_owned(),
        };
        Err(JobError::new("RuntimeError", message).into())
    });
}
