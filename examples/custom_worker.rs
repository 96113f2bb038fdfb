//! A worker binary of your own: native Rust handlers next to the built-in
//! ones, and every plugin the configuration declares, with the same flags,
//! signals and exit statuses as `ah-worker`.
//!
//! ```sh
//! cargo run --example custom_worker -- --queues default --config config/ah-worker.toml
//! ```

use std::process::ExitCode;

use ah_worker::handler::{JobError, Registry};
use serde_json::Value;

fn main() -> ExitCode {
    let mut registry = Registry::with_builtin();

    // An actionHero-style task: one object of inputs.
    registry.register_fn("SendWelcome", |job, ctx| async move {
        let to = job
            .args
            .first()
            .and_then(|inputs| inputs["to"].as_str())
            .ok_or_else(|| {
                JobError::new("ArgumentError", "SendWelcome needs inputs {\"to\": ...}")
            })?;
        tracing::info!(to, worker = %ctx.worker, "welcome sent");
        // Handlers can enqueue follow-up work through the worker's services.
        ctx.services
            .enqueue("AuditLog", "low", Value::Array(vec![Value::from(to)]), None)
            .await?;
        Ok(())
    });

    // Any error is a failure record; a panic too, and the slot lives on.
    registry.register_fn("AuditLog", |job, _ctx| async move {
        let entry = Value::Array(job.args);
        tracing::info!(%entry, "audit");
        Ok(())
    });

    ah_worker::app::main(registry)
}
