//! ah-worker: a background-job worker that speaks the Resque wire format on
//! Redis, side by side with Ruby Resque workers and node-resque / actionHero
//! processes.
//!
//! # Layout
//! - [`admin`] — the admin commands: status, failed jobs, workers.
//! - [`actionhero`] — actionHero's shared cache, stats and chat rooms.
//! - [`backoff`] — the one retry rhythm: 100 ms doubling to a cap.
//! - [`cli`] — command-line flags.
//! - [`cluster`] — `ah-worker cluster`: a supervisor of N worker processes.
//! - [`config`] — flags, environment and config file merged into one validated [`config::Config`].
//! - [`connection`] — where Redis is: URL forms, TLS, following a Sentinel master.
//! - [`resque`] — the Resque / node-resque contract: keys, payloads, Redis operations.
//! - [`handler`] — the [`handler::Handler`] trait, the class registry, built-in handlers.
//! - [`plugin`] — handler plugins in any language: exec, coprocess, http.
//! - [`worker`] — the [`worker::Runner`] owning the job slots, and job execution.
//! - [`faye`] — Faye pub/sub with Node peers (faye-redis engine or Bayeux over HTTP), the bridge to jobs.
//! - [`scheduler`] — moves due delayed jobs, one leader at a time.
//! - [`shutdown`] — control commands and the stop report; [`signals`] maps OS signals to them.
//! - [`reload`] — re-reading the configuration on HUP, refusing an invalid one.
//! - [`vitals`] — what a running worker knows about itself: loop progress, phase, counters.
//! - [`systemd`] — systemd's notify protocol: readiness, watchdog, status, stopping.
//! - [`metrics`] — the optional HTTP listener: Prometheus `/metrics` and `/health`.
//! - [`glob`] — Ruby-style glob patterns for queue lists and plugin classes.
//! - [`telemetry`] — logging.
//! - [`app`] — wiring everything together.
//!
//! # Glossary
//! - **job**: a JSON payload `{"class","args"}` in a Redis list.
//! - **queue**: such a list, `resque:queue:<name>`, served in priority order.
//! - **class → handler**: a job's `class` selects the handler that runs it.
//! - **worker slot**: one job at a time, registered as one Resque worker.
//! - **runner**: the task owning a process's slots.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod actionhero;
pub mod admin;
pub mod app;
pub mod backoff;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod error;
pub mod faye;
pub mod glob;
pub mod handler;
pub mod metrics;
pub mod plugin;
pub mod reload;
pub mod resque;
pub mod scheduler;
pub mod shutdown;
pub mod signals;
pub mod systemd;
pub mod telemetry;
pub mod vitals;
pub mod worker;

pub use error::{Error, Result};
