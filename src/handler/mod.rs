//! Handlers: what runs a job's `class`.
//!
//! A [`Registry`] maps class names to [`Handler`]s. Native Rust handlers
//! implement the trait or are registered as closures; the built-in ones for
//! tests, demos and benchmarks come from [`register_builtin`].
//!
//! A handler returns `anyhow::Result<()>`. An error becomes a failure record:
//! a [`JobError`] in the chain sets the exception name, message and
//! backtrace; any other error is recorded as `AhWorker::HandlerError` with its
//! message and its causes as the backtrace. A [`PutBack`] error puts the job
//! back at the head of its queue instead of recording an outcome.
//!
//! Plugins (see [`crate::plugin`]) claim classes by exact name or glob
//! pattern; two owners claiming the same class is an error, so a class never
//! silently runs somewhere unexpected.

mod builtin;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use builtin::register_builtin;

use crate::resque::Job;

/// A boxed handler future.
pub type BoxFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'static>>;

/// A boxed future of a handler's shutdown.
pub type ShutdownFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// What a handler knows about the slot running its job, and the worker's
/// services it may call.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The full worker id of the slot (`host:pid+n:queues`).
    pub worker: String,
    /// When the job was taken (Ruby's `run_at` format).
    pub run_at: String,
    /// Unique within the process; plugins match results by it.
    pub id: String,
    /// The worker's services (enqueueing, ...).
    pub services: Services,
}

/// What handlers can ask of the worker while a job runs.
#[derive(Debug, Clone)]
pub struct Services {
    store: Option<crate::resque::Store>,
    policies: Arc<crate::worker::policy::Policies>,
    actionhero: Option<crate::actionhero::ActionHero>,
    faye: Option<crate::faye::Faye>,
}

impl Services {
    /// Services backed by `store`; enqueues honour the enqueue-side locks of
    /// `policies` (QueueLock, DelayQueueLock).
    pub fn new(
        store: crate::resque::Store,
        policies: Arc<crate::worker::policy::Policies>,
    ) -> Services {
        Services {
            store: Some(store),
            policies,
            actionhero: None,
            faye: None,
        }
    }

    /// The same services with actionHero's shared state.
    pub fn with_actionhero(mut self, actionhero: crate::actionhero::ActionHero) -> Services {
        self.actionhero = Some(actionhero);
        self
    }

    /// actionHero's cache, stats and chat rooms, when the worker is
    /// configured with an `[actionhero]` section.
    pub fn actionhero(&self) -> Option<&crate::actionhero::ActionHero> {
        self.actionhero.as_ref()
    }

    /// The same services with Faye.
    pub fn with_faye(mut self, faye: crate::faye::Faye) -> Services {
        self.faye = Some(faye);
        self
    }

    /// Faye, when the worker is configured with a `[faye]` section:
    /// `publish(channel, data)`, actionHero's `say(room, message)`.
    pub fn faye(&self) -> Option<&crate::faye::Faye> {
        self.faye.as_ref()
    }

    /// Services of nothing, for running a handler outside a worker (tests);
    /// every call fails.
    pub fn detached() -> Services {
        Services {
            store: None,
            policies: Arc::default(),
            actionhero: None,
            faye: None,
        }
    }

    /// Enqueue a job now (`at: None`) or at a Unix time, in node-resque's
    /// layout (`args` not an array is wrapped in one). Returns `false` when
    /// an enqueue-side lock of the class vetoed it, as node-resque's
    /// QueueLock (an identical job is queued) and DelayQueueLock (an
    /// identical job is scheduled) do; like node-resque, delayed enqueues
    /// run no such check.
    pub async fn enqueue(
        &self,
        class: &str,
        queue: &str,
        args: serde_json::Value,
        at: Option<i64>,
    ) -> crate::Result<bool> {
        let store = self.store()?;
        let args = match args {
            serde_json::Value::Array(a) => a,
            other => vec![other],
        };
        let lock_args = crate::resque::payload::args_json(&args);
        let payload =
            crate::resque::payload::encode_job(class, queue, serde_json::Value::Array(args));
        if let Some(ts) = at {
            store.enqueue_at(ts, &payload).await?;
            return Ok(true);
        }
        if let Some(policy) = self.policies.of(class) {
            if policy.delay_queue_lock && store.is_scheduled(&payload).await? {
                return Ok(false);
            }
            if let Some(timeout) = policy.queue_lock {
                let key = store.keys().queue_lock(class, queue, &lock_args);
                if !store.take_queue_lock(&key, timeout).await? {
                    return Ok(false);
                }
            }
        }
        store.enqueue(queue, payload.as_bytes()).await?;
        Ok(true)
    }

    /// Add 1 to field `field` of the hash `<namespace>:<key>`; for the
    /// built-in `AhWorker::Count` that tests and the chaos run use to record
    /// executions.
    pub async fn count(&self, key: &str, field: &str) -> crate::Result<()> {
        self.store()?.count(key, field).await
    }

    /// `RPUSH <namespace>:<key> <value>`, for the built-in
    /// `AhWorker::Latency`.
    pub async fn push(&self, key: &str, value: &str) -> crate::Result<()> {
        self.store()?.push(key, value).await
    }

    fn store(&self) -> crate::Result<&crate::resque::Store> {
        self.store.as_ref().ok_or_else(|| {
            crate::Error::Protocol("no worker services outside a running worker".into())
        })
    }

    /// The store's key names.
    pub fn keys(&self) -> Option<&crate::resque::Keys> {
        self.store.as_ref().map(|s| s.keys())
    }

    /// Take a lock key atomically with a TTL (`SET NX EX`).
    pub async fn try_lock(
        &self,
        key: &str,
        value: &str,
        ttl: std::time::Duration,
    ) -> crate::Result<bool> {
        self.store()?.try_lock(key, value, ttl).await
    }

    /// Delete a key.
    pub async fn delete(&self, key: &str) -> crate::Result<()> {
        self.store()?.delete(key).await
    }
}

/// Runs jobs of one or more classes.
pub trait Handler: Send + Sync + 'static {
    /// Perform one job. Errors and panics become failure records.
    fn perform(&self, job: Job, ctx: JobContext) -> BoxFuture;

    /// Release what the handler holds (processes, connections) once no job
    /// runs any more. Called once, at the end of the worker's life.
    fn shutdown(&self) -> ShutdownFuture<'_> {
        Box::pin(async {})
    }
}

struct FnHandler<F>(F);

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Job, JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    fn perform(&self, job: Job, ctx: JobContext) -> BoxFuture {
        Box::pin((self.0)(job, ctx))
    }
}

/// A failure with a chosen exception name, as a Ruby or Node handler would
/// raise it. Return it (through `anyhow`) from a handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    /// The record's `exception`, e.g. `ArgumentError`.
    pub exception: String,
    /// The record's `error`.
    pub message: String,
    /// The record's `backtrace`.
    pub backtrace: Vec<String>,
}

impl JobError {
    /// A failure with an exception name and message and no backtrace.
    pub fn new(exception: impl Into<String>, message: impl Into<String>) -> JobError {
        JobError {
            exception: exception.into(),
            message: message.into(),
            backtrace: Vec::new(),
        }
    }

    /// The failure an arbitrary handler error is recorded as.
    pub fn from_error(err: &anyhow::Error) -> JobError {
        if let Some(e) = err.chain().find_map(|c| c.downcast_ref::<JobError>()) {
            return e.clone();
        }
        JobError {
            exception: "AhWorker::HandlerError".into(),
            message: err.to_string(),
            backtrace: err
                .chain()
                .skip(1)
                .map(|c| format!("caused by: {c}"))
                .collect(),
        }
    }
}

/// Returned (through `anyhow`) by a handler to put its job back at the head
/// of its queue, recording no outcome: the job will run again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job put back: {reason}")]
pub struct PutBack {
    /// Why, for the log.
    pub reason: String,
}

/// A class claimed twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("class {class:?} is claimed by both {first} and {second}")]
pub struct ClaimError {
    /// The class or pattern.
    pub class: String,
    /// Who claimed it first.
    pub first: String,
    /// Who claimed it again.
    pub second: String,
}

/// A cap on how many jobs of some classes run at once in the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// The owner (plugin name).
    pub owner: String,
    /// At most this many at once.
    pub max: usize,
    /// The classes (names or glob patterns) it covers.
    pub classes: Vec<String>,
}

#[derive(Clone)]
struct Entry {
    owner: String,
    handler: Arc<dyn Handler>,
    limit: Option<usize>,
}

/// Class name (or glob pattern) → handler.
#[derive(Default, Clone)]
pub struct Registry {
    exact: HashMap<String, Entry>,
    patterns: Vec<(String, Entry)>,
    limits: Vec<Limit>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut classes: Vec<&String> = self.exact.keys().collect();
        classes.extend(self.patterns.iter().map(|(p, _)| p));
        classes.sort();
        f.debug_struct("Registry")
            .field("classes", &classes)
            .finish()
    }
}

/// The owner name of handlers registered through [`Registry::register`].
pub const NATIVE_OWNER: &str = "native handlers";

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// A registry holding the built-in handlers.
    pub fn with_builtin() -> Registry {
        let mut r = Registry::new();
        register_builtin(&mut r);
        r
    }

    /// Register a native `handler` for `class` (a name or a glob pattern),
    /// replacing an earlier native one.
    pub fn register(&mut self, class: impl Into<String>, handler: Arc<dyn Handler>) {
        let class = class.into();
        self.exact.remove(&class);
        self.patterns.retain(|(p, _)| *p != class);
        self.insert(
            class,
            Entry {
                owner: NATIVE_OWNER.to_owned(),
                handler,
                limit: None,
            },
        );
    }

    /// Let `owner` handle `classes` (names or glob patterns) with `handler`,
    /// at most `max_in_flight` at once. A class someone else claimed is an
    /// error.
    pub fn claim(
        &mut self,
        owner: &str,
        classes: &[String],
        handler: Arc<dyn Handler>,
        max_in_flight: Option<usize>,
    ) -> Result<(), ClaimError> {
        for class in classes {
            let taken = self.exact.get(class).or_else(|| {
                self.patterns
                    .iter()
                    .find(|(p, _)| p == class)
                    .map(|(_, e)| e)
            });
            if let Some(e) = taken {
                return Err(ClaimError {
                    class: class.clone(),
                    first: e.owner.clone(),
                    second: owner.to_owned(),
                });
            }
        }
        let limit = max_in_flight.map(|max| {
            self.limits.push(Limit {
                owner: owner.to_owned(),
                max,
                classes: classes.to_vec(),
            });
            self.limits.len() - 1
        });
        for class in classes {
            self.insert(
                class.clone(),
                Entry {
                    owner: owner.to_owned(),
                    handler: handler.clone(),
                    limit,
                },
            );
        }
        Ok(())
    }

    fn insert(&mut self, class: String, entry: Entry) {
        if crate::glob::is_pattern(&class) {
            self.patterns.push((class, entry));
        } else {
            self.exact.insert(class, entry);
        }
    }

    fn entry(&self, class: &str) -> Option<&Entry> {
        self.exact.get(class).or_else(|| {
            self.patterns
                .iter()
                .find(|(p, _)| crate::glob::fnmatch(p, class))
                .map(|(_, e)| e)
        })
    }

    /// Register an async closure for `class`.
    pub fn register_fn<F, Fut>(&mut self, class: impl Into<String>, f: F)
    where
        F: Fn(Job, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.register(class, Arc::new(FnHandler(f)));
    }

    /// The handler of `class`: an exact name first, then the first pattern
    /// that matches.
    pub fn get(&self, class: &str) -> Option<&Arc<dyn Handler>> {
        self.entry(class).map(|e| &e.handler)
    }

    /// The index in [`Registry::limits`] of the limit covering `class`.
    pub fn limit_of(&self, class: &str) -> Option<usize> {
        self.entry(class).and_then(|e| e.limit)
    }

    /// Every concurrency limit.
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// Shut every handler down (each once).
    pub async fn shutdown(&self) {
        self.shutdown_where(|_| true).await;
    }

    /// Shut the plugins down (each once), leaving native handlers as they
    /// are: a reload starts the plugins again from the new configuration,
    /// while native handlers live as long as the process.
    pub async fn shutdown_plugins(&self) {
        self.shutdown_where(|owner| owner != NATIVE_OWNER).await;
    }

    async fn shutdown_where(&self, owned: impl Fn(&str) -> bool) {
        // Handlers by address: a plugin claiming several classes is one handler.
        let mut seen: Vec<usize> = Vec::new();
        let entries = self
            .exact
            .values()
            .chain(self.patterns.iter().map(|(_, e)| e))
            .filter(|e| owned(&e.owner));
        for e in entries {
            let ptr = Arc::as_ptr(&e.handler) as *const () as usize;
            if !seen.contains(&ptr) {
                seen.push(ptr);
                e.handler.shutdown().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_error_in_the_chain_sets_the_exception() {
        let e = anyhow::Error::new(JobError::new("ArgumentError", "bad")).context("while x");
        let f = JobError::from_error(&e);
        assert_eq!(
            (f.exception.as_str(), f.message.as_str()),
            ("ArgumentError", "bad")
        );
        let plain = anyhow::anyhow!("root").context("outer");
        let f = JobError::from_error(&plain);
        assert_eq!(f.exception, "AhWorker::HandlerError");
        assert_eq!(f.message, "outer");
        assert_eq!(f.backtrace, ["caused by: root"]);
    }

    #[test]
    fn patterns_match_after_exact_names_and_claims_conflict() {
        let mut r = Registry::with_builtin();
        let h: Arc<dyn Handler> = Arc::new(FnHandler(|_j, _c| async { Ok(()) }));
        r.claim("py", &["Py::*".into()], h.clone(), Some(2))
            .unwrap();
        assert!(r.get("Py::Echo").is_some());
        assert_eq!(r.limit_of("Py::Echo"), Some(0));
        assert_eq!(r.limit_of("AhWorker::Noop"), None);
        let err = r
            .claim("other", &["Py::*".into()], h.clone(), None)
            .unwrap_err();
        assert_eq!((err.first.as_str(), err.second.as_str()), ("py", "other"));
        let err = r
            .claim("other", &["AhWorker::Noop".into()], h, None)
            .unwrap_err();
        assert_eq!(err.first, NATIVE_OWNER);
    }

    #[test]
    fn builtins_are_registered() {
        let r = Registry::with_builtin();
        for class in [
            "AhWorker::Noop",
            "AhWorker::Sleep",
            "AhWorker::Fail",
            "AhWorker::Count",
            "AhWorker::Latency",
        ] {
            assert!(r.get(class).is_some(), "{class}");
        }
        assert!(r.get("Nope").is_none());
    }
}
