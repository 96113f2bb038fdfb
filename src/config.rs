//! One validated [`Config`] from flags, environment, config file and
//! defaults, in that order of precedence.
//!
//! Every bad value is a [`ConfigError`] naming the value, where it came from
//! and what was expected; the binary exits with status 2 on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::RunArgs;
use crate::plugin::{PluginError, PluginSpec};
use crate::worker::{DeadWorkerJobs, UnknownClass};

/// Redis used when nothing else is configured.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// Resque's and node-resque's default namespace.
pub const DEFAULT_NAMESPACE: &str = "resque";
/// The default queue list, as node-resque's worker default.
pub const DEFAULT_QUEUES: &str = "*";
/// Job slots per process: node-resque's MultiWorker grows to 10 by default.
pub const DEFAULT_CONCURRENCY: usize = 10;
/// Resque's INTERVAL default. We block on the queues instead of sleeping, so
/// this is only how often an idle worker re-checks what a blocking wait
/// cannot see (pause-all-workers, new queues for `*`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Below systemd's default stop timeout (90 s) and Heroku's/Kubernetes' 30 s.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);
/// Ruby prunes a worker whose heartbeat is 300 s old and writes one every
/// 60 s; node-resque pings every 5 s and cleans after an hour. 30 s keeps
/// both far from stale at two commands per beat.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// A process whose heartbeat is this old is taken for dead and its jobs are
/// recovered. Beats come every 5 s, so this survives a few lost beats and
/// short stalls; raise it if workers can freeze longer (huge GC-less pauses
/// do not happen here, but a paused VM or SIGSTOP do).
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(30);
/// Put a job back at most this many times after its worker died: a job that
/// keeps killing workers then goes to `failed`.
pub const DEFAULT_MAX_RECOVERIES: u32 = 3;
/// The scheduler leader lock's TTL: how long a dead leader blocks the
/// others (node-resque uses 180 s; the leader renews every second).
pub const DEFAULT_SCHEDULER_LOCK_TTL: Duration = Duration::from_secs(30);
/// An upper bound that keeps a typo from starting 10⁶ slots.
pub const MAX_CONCURRENCY: usize = 10_000;

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value of the wrong form.
    #[error("invalid {what} {value:?} (from {source_name}): expected {expected}")]
    Invalid {
        /// The setting.
        what: &'static str,
        /// The offending value.
        value: String,
        /// Flag, environment variable or file the value came from.
        source_name: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// The Redis URL or its TLS files cannot be used. The URL itself is
    /// never shown: it may hold a password.
    #[error(
        "invalid Redis URL (from {source_name}): {message}; expected a URL like redis://[user:password@]host:6379/0, rediss://… or redis+sentinel://host:26379/master"
    )]
    Redis {
        /// Flag, environment variable or file the URL came from.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A plugin declaration is broken.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// A section of the file is invalid: a recurring schedule, a class
    /// policy, `[actionhero]` or `[faye]` (the message names it).
    #[error("{0}")]
    Section(String),
    /// The plugin directory cannot be read.
    #[error("cannot read plugin directory {path}: {source}")]
    PluginDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this program.
    #[error("invalid config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated settings of a worker process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Redis URL as given (for messages: pass it through
    /// [`crate::app::redacted`]).
    pub redis_url: String,
    /// Where Redis is, parsed from the URL and the TLS files.
    pub redis: crate::connection::Target,
    /// The TLS files of `redis` (also used for Faye's Redis).
    pub redis_tls: crate::connection::TlsFiles,
    /// Key namespace (`resque`).
    pub namespace: String,
    /// Queue entries as configured: names, `*`/glob patterns, `!exclusions`.
    pub queues: Vec<String>,
    /// Job slots.
    pub concurrency: usize,
    /// Idle re-check interval; zero means drain the queues and exit.
    pub interval: Duration,
    /// Grace period for running jobs on TERM/INT.
    pub shutdown_timeout: Duration,
    /// How often both heartbeats are refreshed.
    pub heartbeat_interval: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter (`info`, `debug`, `ah_worker=trace`), if set.
    pub log_level: Option<String>,
    /// The config file read, if any.
    pub config_file: Option<PathBuf>,
    /// Handler plugins, checked.
    pub plugins: Vec<PluginSpec>,
    /// What to do with a class no handler claims.
    pub unknown_class: UnknownClass,
    /// Heartbeat age after which a process is dead.
    pub dead_after: Duration,
    /// What a dead process's jobs become.
    pub dead_worker_jobs: DeadWorkerJobs,
    /// Recoveries of one job before it is failed as poison.
    pub max_recoveries: u32,
    /// The host part of worker ids (default: the kernel host name).
    pub host_name: Option<String>,
    /// Runtime threads: 1 runs everything on one thread.
    pub threads: usize,
    /// Take part in the scheduler election.
    pub scheduler: bool,
    /// The scheduler leader lock's TTL.
    pub scheduler_lock_ttl: Duration,
    /// Recurring schedules (fired by the scheduler leader).
    pub schedules: Vec<crate::scheduler::Schedule>,
    /// Per-class retries, locks and actionHero recurrence.
    pub policies: crate::worker::policy::Policies,
    /// actionHero shared state (the `[actionhero]` section); `None`: the
    /// worker writes none of it.
    pub actionhero: Option<crate::actionhero::Settings>,
    /// Faye pub/sub and the bridge to jobs (the `[faye]` section).
    pub faye: Option<crate::faye::Settings>,
    /// Where `/metrics` and `/health` are served over HTTP; `None`: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The config file's shape. Unknown keys are an error, so a typo is not
/// silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    redis: Option<String>,
    redis_tls_ca: Option<PathBuf>,
    redis_tls_cert: Option<PathBuf>,
    redis_tls_key: Option<PathBuf>,
    namespace: Option<String>,
    queues: Option<QueueList>,
    concurrency: Option<toml::Value>,
    interval: Option<toml::Value>,
    shutdown_timeout: Option<toml::Value>,
    heartbeat_interval: Option<toml::Value>,
    log_format: Option<String>,
    log_level: Option<String>,
    unknown_class: Option<String>,
    dead_after: Option<toml::Value>,
    dead_worker_jobs: Option<String>,
    max_recoveries: Option<toml::Value>,
    host_name: Option<String>,
    threads: Option<toml::Value>,
    scheduler: Option<bool>,
    scheduler_lock_ttl: Option<toml::Value>,
    plugins_dir: Option<PathBuf>,
    #[serde(default)]
    plugins: Vec<toml::Value>,
    #[serde(default)]
    schedules: Vec<toml::Value>,
    #[serde(default)]
    classes: Vec<toml::Value>,
    actionhero: Option<toml::Value>,
    faye: Option<toml::Value>,
    metrics_listen: Option<String>,
}

/// `queues = "a,b"` or `queues = ["a", "b"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum QueueList {
    Csv(String),
    List(Vec<String>),
}

/// A raw value and the name of where it came from.
struct Raw {
    value: String,
    from: String,
}

impl Config {
    /// This process as its worker ids name it: `host_name` (else the
    /// kernel's host name) and the pid.
    pub fn process(&self) -> crate::resque::ProcessId {
        crate::resque::ProcessId {
            host: self.host_name.clone().unwrap_or_else(crate::app::hostname),
            pid: std::process::id(),
        }
    }
}

impl Config {
    /// Resolve flags, the process environment and the config file.
    pub fn load(args: &RunArgs) -> Result<Config, ConfigError> {
        Config::resolve(args, &|name| std::env::var(name).ok())
    }

    /// Resolve with `env` as the environment (tests pass a map).
    pub fn resolve(
        args: &RunArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let config_file = args
            .config
            .clone()
            .or_else(|| env("AH_WORKER_CONFIG").map(PathBuf::from));
        let file = match &config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let file_name = config_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();

        // flags > environment (ah-worker's names, then Resque's) > file
        let pick = |flag: &Option<String>,
                    flag_name: &str,
                    envs: &[&str],
                    file_value: Option<String>,
                    file_key: &str|
         -> Option<Raw> {
            if let Some(v) = flag {
                return Some(Raw {
                    value: v.clone(),
                    from: flag_name.to_owned(),
                });
            }
            for name in envs {
                if let Some(v) = env(name) {
                    return Some(Raw {
                        value: v,
                        from: format!("environment variable {name}"),
                    });
                }
            }
            file_value.map(|value| Raw {
                value,
                from: format!("{file_key} in {file_name}"),
            })
        };

        let redis = pick(
            &args.redis,
            "--redis",
            &["REDIS_URL"],
            file.redis.clone(),
            "redis",
        );
        let tls_file =
            |name: &str, file_value: Option<PathBuf>| env(name).map(PathBuf::from).or(file_value);
        let tls = crate::connection::TlsFiles {
            ca: tls_file("AH_WORKER_REDIS_TLS_CA", file.redis_tls_ca.clone()),
            cert: tls_file("AH_WORKER_REDIS_TLS_CERT", file.redis_tls_cert.clone()),
            key: tls_file("AH_WORKER_REDIS_TLS_KEY", file.redis_tls_key.clone()),
        };
        let (redis_url, from) = match redis {
            Some(raw) => (raw.value, raw.from),
            None => (DEFAULT_REDIS_URL.to_owned(), "the default".to_owned()),
        };
        let redis_target =
            crate::connection::Target::new(&redis_url, &tls).map_err(|e| ConfigError::Redis {
                source_name: from,
                message: e.to_string(),
            })?;

        let namespace = match pick(
            &args.namespace,
            "--namespace",
            &["AH_WORKER_NAMESPACE"],
            file.namespace.clone(),
            "namespace",
        ) {
            Some(raw) => {
                let v = raw.value.trim();
                if v.is_empty() || v.contains(char::is_whitespace) {
                    return Err(invalid(
                        "namespace",
                        &raw,
                        "a non-empty name without spaces",
                    ));
                }
                v.to_owned()
            }
            None => DEFAULT_NAMESPACE.to_owned(),
        };

        let file_queues = file.queues.map(|q| match q {
            QueueList::Csv(s) => s,
            QueueList::List(l) => l.join(","),
        });
        let queues = match pick(
            &args.queues,
            "--queues",
            &["AH_WORKER_QUEUES", "QUEUES", "QUEUE"],
            file_queues,
            "queues",
        ) {
            Some(raw) => parse_queues(&raw)?,
            None => vec![DEFAULT_QUEUES.to_owned()],
        };

        let concurrency = match pick(
            &args.concurrency,
            "--concurrency",
            &["AH_WORKER_CONCURRENCY"],
            file.concurrency.map(toml_scalar),
            "concurrency",
        ) {
            Some(raw) => match raw.value.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => n,
                _ => {
                    return Err(invalid(
                        "concurrency",
                        &raw,
                        "a whole number from 1 to 10000",
                    ));
                }
            },
            None => DEFAULT_CONCURRENCY,
        };

        let duration =
            |raw: Option<Raw>, what: &'static str, default: Duration, zero_ok: bool| match raw {
                None => Ok(default),
                Some(raw) => match parse_duration(&raw.value) {
                    Some(d) if zero_ok || !d.is_zero() => Ok(d),
                    _ => Err(invalid(
                        what,
                        &raw,
                        if zero_ok {
                            "seconds (5, 0.5) or a duration (500ms, 2m)"
                        } else {
                            "a positive number of seconds (5, 0.5) or a duration (500ms, 2m)"
                        },
                    )),
                },
            };
        let interval = duration(
            pick(
                &args.interval,
                "--interval",
                &["AH_WORKER_INTERVAL", "INTERVAL"],
                file.interval.map(toml_scalar),
                "interval",
            ),
            "interval",
            DEFAULT_INTERVAL,
            true,
        )?;
        let shutdown_timeout = duration(
            pick(
                &args.shutdown_timeout,
                "--shutdown-timeout",
                &["AH_WORKER_SHUTDOWN_TIMEOUT"],
                file.shutdown_timeout.map(toml_scalar),
                "shutdown_timeout",
            ),
            "shutdown timeout",
            DEFAULT_SHUTDOWN_TIMEOUT,
            true,
        )?;
        let heartbeat_interval = duration(
            pick(
                &None,
                "",
                &["AH_WORKER_HEARTBEAT_INTERVAL"],
                file.heartbeat_interval.map(toml_scalar),
                "heartbeat_interval",
            ),
            "heartbeat interval",
            DEFAULT_HEARTBEAT_INTERVAL,
            false,
        )?;

        let log_format = match pick(
            &args.log_format,
            "--log-format",
            &["AH_WORKER_LOG_FORMAT"],
            file.log_format.clone(),
            "log_format",
        ) {
            None => LogFormat::Text,
            Some(raw) => match raw.value.trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err(invalid("log format", &raw, "text or json")),
            },
        };
        let log_level = pick(
            &args.log_level,
            "--log-level",
            &["AH_WORKER_LOG_LEVEL"],
            file.log_level.clone(),
            "log_level",
        );
        let log_level = match log_level {
            Some(raw) => {
                if tracing_subscriber::EnvFilter::try_new(raw.value.trim()).is_err() {
                    return Err(invalid(
                        "log level",
                        &raw,
                        "a level (error, warn, info, debug, trace) or a filter like ah_worker=debug",
                    ));
                }
                Some(raw.value.trim().to_owned())
            }
            None => None,
        };

        let unknown_class = match pick(
            &None,
            "",
            &["AH_WORKER_UNKNOWN_CLASS"],
            file.unknown_class.clone(),
            "unknown_class",
        ) {
            None => UnknownClass::Fail,
            Some(raw) => match raw.value.trim() {
                "fail" => UnknownClass::Fail,
                "requeue" => UnknownClass::Requeue,
                _ => return Err(invalid("unknown_class", &raw, "fail or requeue")),
            },
        };

        let dead_after = duration(
            pick(
                &None,
                "",
                &["AH_WORKER_DEAD_AFTER"],
                file.dead_after.map(toml_scalar),
                "dead_after",
            ),
            "dead_after",
            DEFAULT_DEAD_AFTER,
            false,
        )?;
        let dead_worker_jobs = match pick(
            &None,
            "",
            &["AH_WORKER_DEAD_WORKER_JOBS"],
            file.dead_worker_jobs.clone(),
            "dead_worker_jobs",
        ) {
            None => DeadWorkerJobs::Requeue,
            Some(raw) => match raw.value.trim() {
                "requeue" => DeadWorkerJobs::Requeue,
                "fail" => DeadWorkerJobs::Fail,
                _ => return Err(invalid("dead_worker_jobs", &raw, "requeue or fail")),
            },
        };
        let max_recoveries = match pick(
            &None,
            "",
            &["AH_WORKER_MAX_RECOVERIES"],
            file.max_recoveries.map(toml_scalar),
            "max_recoveries",
        ) {
            None => DEFAULT_MAX_RECOVERIES,
            Some(raw) => raw.value.trim().parse::<u32>().map_err(|_| {
                invalid(
                    "max_recoveries",
                    &raw,
                    "a whole number (0 fails every recovered job)",
                )
            })?,
        };
        let host_name = match pick(
            &None,
            "",
            &["AH_WORKER_HOST_NAME"],
            file.host_name.clone(),
            "host_name",
        ) {
            None => None,
            Some(raw) => {
                let v = raw.value.trim();
                if v.is_empty() || v.contains([':', ',', ' ']) {
                    return Err(invalid(
                        "host_name",
                        &raw,
                        "a name without ':', ',' or spaces",
                    ));
                }
                Some(v.to_owned())
            }
        };

        let threads = match pick(
            &None,
            "",
            &["AH_WORKER_THREADS"],
            file.threads.map(toml_scalar),
            "threads",
        ) {
            None => 1,
            Some(raw) => match raw.value.trim().parse::<usize>() {
                Ok(n) if (1..=256).contains(&n) => n,
                _ => return Err(invalid("threads", &raw, "a whole number from 1 to 256")),
            },
        };

        let scheduler = if args.scheduler {
            true
        } else if let Some(v) = env("AH_WORKER_SCHEDULER") {
            match v.trim() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" | "" => false,
                _ => {
                    return Err(ConfigError::Invalid {
                        what: "scheduler switch",
                        value: v,
                        source_name: "environment variable AH_WORKER_SCHEDULER".into(),
                        expected: "true or false",
                    });
                }
            }
        } else {
            file.scheduler.unwrap_or(false)
        };
        let scheduler_lock_ttl = duration(
            pick(
                &None,
                "",
                &["AH_WORKER_SCHEDULER_LOCK_TTL"],
                file.scheduler_lock_ttl.map(toml_scalar),
                "scheduler_lock_ttl",
            ),
            "scheduler_lock_ttl",
            DEFAULT_SCHEDULER_LOCK_TTL,
            false,
        )?;

        let metrics_listen = match pick(
            &args.metrics_listen,
            "--metrics-listen",
            &["AH_WORKER_METRICS_LISTEN"],
            file.metrics_listen.clone(),
            "metrics_listen",
        ) {
            None => None,
            Some(raw) => match raw.value.trim() {
                "" | "off" => None,
                v => Some(v.parse().map_err(|_| {
                    invalid(
                        "metrics listen address",
                        &raw,
                        "an IP address and port like 127.0.0.1:9187, or off",
                    )
                })?),
            },
        };

        let mut schedules: Vec<crate::scheduler::Schedule> = Vec::new();
        for table in file.schedules {
            let s = crate::scheduler::Schedule::from_toml(table, &file_name)
                .map_err(ConfigError::Section)?;
            if schedules.iter().any(|o| o.name == s.name) {
                return Err(ConfigError::Section(format!(
                    "schedule {:?} is declared twice in {file_name}",
                    s.name
                )));
            }
            schedules.push(s);
        }

        let mut policies = Vec::new();
        for table in file.classes {
            policies.push(
                crate::worker::policy::ClassPolicy::from_toml(table, &file_name)
                    .map_err(ConfigError::Section)?,
            );
        }
        let policies = crate::worker::policy::Policies(policies);

        let server_id = host_name.clone().unwrap_or_else(crate::app::hostname);
        let actionhero = match file.actionhero {
            None => None,
            Some(v) => Some(
                crate::actionhero::Settings::from_toml(v, &server_id)
                    .map_err(ConfigError::Section)?,
            ),
        };
        let faye = match file.faye {
            None => None,
            Some(v) => {
                let id = actionhero.as_ref().map_or(&server_id, |a| &a.server_id);
                Some(
                    crate::faye::Settings::from_toml(v, &redis_url, &tls, id)
                        .map_err(ConfigError::Section)?,
                )
            }
        };

        let mut plugins = Vec::new();
        for (i, table) in file.plugins.into_iter().enumerate() {
            let source = format!("[[plugins]] #{} in {file_name}", i + 1);
            plugins.push(PluginSpec::from_toml(table, &source)?);
        }
        let plugins_dir = args
            .plugins_dir
            .clone()
            .or_else(|| env("AH_WORKER_PLUGINS_DIR").map(PathBuf::from))
            .or(file.plugins_dir);
        if let Some(dir) = plugins_dir {
            plugins.extend(read_plugin_dir(&dir)?);
        }
        crate::plugin::check_all(&plugins)?;

        Ok(Config {
            redis_url,
            redis: redis_target,
            redis_tls: tls,
            namespace,
            queues,
            concurrency,
            interval,
            shutdown_timeout,
            heartbeat_interval,
            log_format,
            log_level,
            config_file,
            plugins,
            unknown_class,
            dead_after,
            dead_worker_jobs,
            max_recoveries,
            host_name,
            threads,
            scheduler,
            scheduler_lock_ttl,
            schedules,
            policies,
            actionhero,
            faye,
            metrics_listen,
        })
    }
}

/// Every `*.toml` file of `dir`, one plugin each, in name order.
fn read_plugin_dir(dir: &Path) -> Result<Vec<PluginSpec>, ConfigError> {
    let dir_err = |source| ConfigError::PluginDir {
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(dir_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut specs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let value: toml::Value = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.clone(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        specs.push(PluginSpec::from_toml(value, &path.display().to_string())?);
    }
    Ok(specs)
}

fn invalid(what: &'static str, raw: &Raw, expected: &'static str) -> ConfigError {
    ConfigError::Invalid {
        what,
        value: raw.value.clone(),
        source_name: raw.from.clone(),
        expected,
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// A TOML number or string as the text a flag would carry.
fn toml_scalar(v: toml::Value) -> String {
    match v {
        toml::Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Parse a queue list: comma-separated, whitespace around names stripped,
/// empty entries dropped (Ruby's `QUEUE` handling).
fn parse_queues(raw: &Raw) -> Result<Vec<String>, ConfigError> {
    let queues: Vec<String> = raw
        .value
        .split(',')
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_owned)
        .collect();
    let bad = |q: &String| q.contains(char::is_whitespace) || q == "!";
    if queues.is_empty() || queues.iter().any(bad) || queues.iter().all(|q| q.starts_with('!')) {
        return Err(invalid(
            "queue list",
            raw,
            "comma-separated queue names in priority order, `*` for all, `!name` to exclude",
        ));
    }
    Ok(queues)
}

/// Seconds as a number (Resque's `INTERVAL=0.5`) or a humantime duration.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    humantime::parse_duration(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(args: RunArgs, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::resolve(&args, &|k| env.get(k).cloned())
    }

    fn file(text: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ah-worker-config-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults() {
        let c = resolve(RunArgs::default(), &[]).unwrap();
        assert_eq!(c.redis_url, DEFAULT_REDIS_URL);
        assert_eq!(c.namespace, "resque");
        assert_eq!(c.queues, ["*"]);
        assert_eq!(c.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(c.interval, DEFAULT_INTERVAL);
        assert_eq!(c.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn flags_beat_environment_beat_file() {
        let path = file(
            "queues = [\"file\"]\nconcurrency = 3\ninterval = \"2s\"\nnamespace = \"fromfile\"\n",
        );
        let args = RunArgs {
            queues: Some("flag".into()),
            config: Some(path),
            ..RunArgs::default()
        };
        let c = resolve(
            args,
            &[
                ("QUEUES", "env"),
                ("INTERVAL", "0.5"),
                ("AH_WORKER_CONCURRENCY", "7"),
            ],
        )
        .unwrap();
        assert_eq!(c.queues, ["flag"]);
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(c.concurrency, 7);
        assert_eq!(c.namespace, "fromfile");
    }

    #[test]
    fn resque_environment_names_work() {
        let c = resolve(
            RunArgs::default(),
            &[("QUEUE", " high , low ,!skip"), ("INTERVAL", "0")],
        )
        .unwrap();
        assert_eq!(c.queues, ["high", "low", "!skip"]);
        assert_eq!(c.interval, Duration::ZERO);
        let c = resolve(RunArgs::default(), &[("QUEUE", "a"), ("QUEUES", "b")]).unwrap();
        assert_eq!(c.queues, ["b"], "QUEUES wins over QUEUE");
        let c = resolve(RunArgs::default(), &[("REDIS_URL", "redis://h:1/2")]).unwrap();
        assert_eq!(c.redis_url, "redis://h:1/2");
    }

    #[test]
    fn bad_values_name_the_value_and_the_expectation() {
        let err = resolve(RunArgs::default(), &[("INTERVAL", "soon")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"soon\"") && err.contains("INTERVAL") && err.contains("expected"),
            "{err}"
        );
        let args = RunArgs {
            concurrency: Some("0".into()),
            ..RunArgs::default()
        };
        let err = resolve(args, &[]).unwrap_err().to_string();
        assert!(
            err.contains("--concurrency") && err.contains("\"0\""),
            "{err}"
        );
        let err = resolve(RunArgs::default(), &[("QUEUES", "!only")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("queue list"), "{err}");
        let err = resolve(RunArgs::default(), &[("REDIS_URL", "http://x:secret@h")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("REDIS_URL") && !err.contains("secret"),
            "{err}"
        );
    }

    #[test]
    fn metrics_listen_is_an_address_or_off() {
        assert_eq!(
            resolve(RunArgs::default(), &[]).unwrap().metrics_listen,
            None
        );
        let c = resolve(
            RunArgs::default(),
            &[("AH_WORKER_METRICS_LISTEN", "127.0.0.1:9187")],
        )
        .unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9187".parse().unwrap()));
        let args = RunArgs {
            metrics_listen: Some("off".into()),
            ..RunArgs::default()
        };
        let c = resolve(args, &[("AH_WORKER_METRICS_LISTEN", "[::1]:9187")]).unwrap();
        assert_eq!(c.metrics_listen, None, "the flag wins");
        let err = resolve(
            RunArgs::default(),
            &[("AH_WORKER_METRICS_LISTEN", "localhost")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("\"localhost\"") && err.contains("127.0.0.1:9187"),
            "{err}"
        );
    }

    #[test]
    fn file_errors_name_the_file_and_the_problem() {
        let path = file("concurency = 3\n");
        let args = RunArgs {
            config: Some(path.clone()),
            ..RunArgs::default()
        };
        let err = resolve(args, &[]).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("concurency"),
            "{err}"
        );
        let args = RunArgs {
            config: Some(file("concurrency = \"many\"\n")),
            ..RunArgs::default()
        };
        let err = resolve(args, &[]).unwrap_err().to_string();
        assert!(
            err.contains("\"many\"") && err.contains("concurrency in"),
            "{err}"
        );
    }
}
