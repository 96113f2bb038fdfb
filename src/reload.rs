//! Reloading the configuration (SIGHUP) without losing or doubling a job.
//!
//! A reload re-reads the configuration as start-up did (the flags and
//! environment given at start still win over the file: the same
//! `Config::load` on the same arguments) and checks all of it, plugin
//! declarations and class claims included, **before** the running worker
//! is touched. An invalid configuration is refused with an error line naming
//! the problem, and the worker carries on unchanged.
//!
//! A valid one is applied by a drain: the runner takes no new jobs, lets the
//! running ones finish however long they take (as QUIT does), records their
//! outcomes and unregisters its slots; then [`crate::app`] builds everything
//! again from the new configuration (slots, queues, plugins, schedules,
//! class policies) on the same Redis connection. A stop (TERM, QUIT) during
//! the drain turns it into that stop. A HUP while the worker is starting or
//! already reloading is applied once it runs again.
//!
//! Settings a running process cannot change ([`RESTART_ONLY`]) keep their
//! running values, with a warning naming them.
//!
//! Does not own: the drain itself (the runner) or building a worker (`app`).

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, error, info, info_span, warn};

use crate::config::{Config, ConfigError};
use crate::handler::Registry;
use crate::shutdown::Control;
use crate::vitals::{Phase, Vitals};

/// Where a reload reads the configuration from.
pub type Source = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// The settings a reload does not change, as the config file names them:
/// the Redis connection and namespace stay open across a reload, the worker
/// ids keep their host, and the runtime and logging are set up once.
pub const RESTART_ONLY: [&str; 7] = [
    "redis",
    "namespace",
    "host_name",
    "threads",
    "log_format",
    "log_level",
    "metrics_listen",
];

/// Sits between the signals and the runner: passes every command on, and
/// turns a reload request into a checked configuration plus a
/// [`Control::Reload`] for the runner.
pub(crate) struct Relay {
    pending: Arc<Mutex<Option<Config>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relay `outer` to `inner`. Reloads read `source` (none: a reload is
    /// refused) and are checked against the native handlers of `natives`;
    /// restart-only settings keep the values of `running`.
    pub(crate) fn spawn(
        outer: mpsc::UnboundedReceiver<Control>,
        inner: mpsc::UnboundedSender<Control>,
        source: Option<Source>,
        natives: Registry,
        running: Config,
        vitals: Arc<Vitals>,
    ) -> Relay {
        let pending = Arc::new(Mutex::new(None));
        let reloader = Reloader {
            source,
            natives,
            running,
            vitals,
            pending: pending.clone(),
            inner,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            reloader
                .run(outer, stop.clone())
                .instrument(info_span!("reload")),
        );
        Relay {
            pending,
            stop,
            task,
        }
    }

    /// The configuration of the reload the runner just drained for.
    pub(crate) fn take(&self) -> Option<Config> {
        self.pending.lock().expect("pending lock").take()
    }

    /// Stop relaying (the worker has stopped).
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

struct Reloader {
    source: Option<Source>,
    natives: Registry,
    running: Config,
    vitals: Arc<Vitals>,
    pending: Arc<Mutex<Option<Config>>>,
    inner: mpsc::UnboundedSender<Control>,
}

impl Reloader {
    async fn run(self, mut outer: mpsc::UnboundedReceiver<Control>, stop: CancellationToken) {
        let mut phases = self.vitals.subscribe();
        let mut queued = false;
        loop {
            // Cancel-safety: `recv` and `changed` lose nothing when another
            // branch wins; no job is in flight here, and a reload is checked
            // and handed over without awaiting.
            tokio::select! {
                _ = stop.cancelled() => return,
                msg = outer.recv() => match msg {
                    // Dropping `inner` tells the runner the controller is gone.
                    None => return,
                    Some(Control::Reload) if self.vitals.phase() == Phase::Running => self.reload(),
                    Some(Control::Reload) => {
                        info!(phase = self.vitals.phase().name(), "reload queued until the worker runs");
                        queued = true;
                    }
                    Some(other) => {
                        if self.inner.send(other).is_err() {
                            return;
                        }
                    }
                },
                changed = phases.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let phase = *phases.borrow_and_update();
                    if queued && phase == Phase::Running {
                        queued = false;
                        self.reload();
                    } else if phase == Phase::Stopping {
                        queued = false;
                    }
                }
            }
        }
    }

    /// Read and check the configuration; hand a valid one to the runner.
    fn reload(&self) {
        let Some(source) = &self.source else {
            warn!("reload requested, but this worker has no configuration to re-read; ignored");
            return;
        };
        // Reading a file and checking plugin paths takes a moment on this
        // thread, once per HUP.
        let config = source().and_then(|mut config| {
            crate::plugin::check_claims(&config.plugins, &self.natives)?;
            let kept = keep_restart_only(&mut config, &self.running);
            if !kept.is_empty() {
                warn!(
                    settings = ?kept,
                    "these settings change only at a restart; keeping their running values"
                );
            }
            Ok(config)
        });
        match config {
            Ok(config) => {
                *self.pending.lock().expect("pending lock") = Some(config);
                self.vitals.set_phase(Phase::Reloading);
                info!("configuration re-read; reloading once the running jobs finish");
                let _ = self.inner.send(Control::Reload);
            }
            Err(e) => {
                self.vitals.reload_failed();
                self.vitals.error(format!("reload refused: {e}"));
                error!(error = %e, "reload refused: the new configuration is invalid; carrying on with the running one");
            }
        }
    }
}

/// Give `new` the running values of the [`RESTART_ONLY`] settings; returns
/// the names of those it wanted to change.
pub fn keep_restart_only(new: &mut Config, running: &Config) -> Vec<&'static str> {
    fn keep<T: PartialEq + Clone>(
        name: &'static str,
        new: &mut T,
        running: &T,
        kept: &mut Vec<&'static str>,
    ) {
        if new != running {
            *new = running.clone();
            kept.push(name);
        }
    }
    let mut kept = Vec::new();
    // The Redis: its URL, what was built from it, its TLS files, and Faye's
    // Redis where it defaults to the worker's.
    if new.redis_url != running.redis_url || new.redis_tls != running.redis_tls {
        if let Some(faye) = &mut new.faye
            && let crate::faye::Transport::Redis { url, tls, .. } = &mut faye.transport
            && *url == new.redis_url
        {
            *url = running.redis_url.clone();
            *tls = running.redis_tls.clone();
        }
        new.redis_url = running.redis_url.clone();
        new.redis = running.redis.clone();
        new.redis_tls = running.redis_tls.clone();
        kept.push("redis");
    }
    keep(
        "namespace",
        &mut new.namespace,
        &running.namespace,
        &mut kept,
    );
    keep(
        "host_name",
        &mut new.host_name,
        &running.host_name,
        &mut kept,
    );
    keep("threads", &mut new.threads, &running.threads, &mut kept);
    keep(
        "log_format",
        &mut new.log_format,
        &running.log_format,
        &mut kept,
    );
    keep(
        "log_level",
        &mut new.log_level,
        &running.log_level,
        &mut kept,
    );
    keep(
        "metrics_listen",
        &mut new.metrics_listen,
        &running.metrics_listen,
        &mut kept,
    );
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RunArgs;

    #[test]
    fn restart_only_settings_keep_their_running_values() {
        let running = Config::resolve(&RunArgs::default(), &|_| None).unwrap();
        let env = |k: &str| match k {
            "AH_WORKER_NAMESPACE" => Some("other".to_owned()),
            "AH_WORKER_CONCURRENCY" => Some("3".to_owned()),
            "AH_WORKER_THREADS" => Some("2".to_owned()),
            _ => None,
        };
        let mut new = Config::resolve(&RunArgs::default(), &env).unwrap();
        assert_eq!(
            keep_restart_only(&mut new, &running),
            ["namespace", "threads"]
        );
        assert_eq!((new.namespace.as_str(), new.threads), ("resque", 1));
        assert_eq!(new.concurrency, 3, "reloadable settings change");
        assert!(RESTART_ONLY.contains(&"namespace"));
    }

    #[test]
    fn a_new_redis_url_or_tls_file_is_kept_for_a_restart() {
        let running = Config::resolve(&RunArgs::default(), &|_| None).unwrap();
        let env = |k: &str| match k {
            "REDIS_URL" => Some("rediss://other:6380/1".to_owned()),
            "AH_WORKER_REDIS_TLS_CA" => Some("/nonexistent-but-not-read.pem".to_owned()),
            _ => None,
        };
        // The CA file is read when the URL is parsed: use a URL-only change.
        let env_url = |k: &str| (k == "REDIS_URL").then(|| "redis://other:6380/1".to_owned());
        assert!(Config::resolve(&RunArgs::default(), &env).is_err());
        let mut new = Config::resolve(&RunArgs::default(), &env_url).unwrap();
        assert_eq!(keep_restart_only(&mut new, &running), ["redis"]);
        assert_eq!(new.redis_url, running.redis_url);
        assert_eq!(new.redis_tls, running.redis_tls);
    }
}
