//! Command-line flags. Doc comments here are the `--help` text.
//!
//! Flags are raw: [`crate::config::Config::load`] merges them with the
//! environment and the config file and validates the result.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// A Resque-compatible background-job worker.
///
/// Takes jobs from `resque:` queues in Redis next to Ruby Resque workers and
/// node-resque / actionHero processes, and records everything as they do.
///
/// Settings come from flags, then the environment, then the config file, then
/// the defaults. Environment: REDIS_URL, QUEUES or QUEUE, INTERVAL (Resque's
/// names) and AH_WORKER_CONFIG, AH_WORKER_NAMESPACE, AH_WORKER_CONCURRENCY,
/// AH_WORKER_SHUTDOWN_TIMEOUT, AH_WORKER_LOG_FORMAT, AH_WORKER_LOG_LEVEL
/// (or RUST_LOG), AH_WORKER_METRICS_LISTEN.
#[derive(Debug, Parser)]
#[command(name = "ah-worker", version, propagate_version = true)]
pub struct Cli {
    /// Connection and worker settings.
    #[command(flatten)]
    pub run: RunArgs,
    /// What to do; without one, run the worker.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Settings shared by every command.
#[derive(Debug, Args, Default, Clone)]
pub struct RunArgs {
    /// Queues in priority order, comma-separated. `*` is every queue in
    /// `resque:queues` (sorted); `!name` excludes a queue.
    #[arg(long, short = 'q', value_name = "LIST", global = true)]
    pub queues: Option<String>,
    /// Redis URL, e.g. redis://127.0.0.1:6379/0.
    #[arg(long, value_name = "URL", global = true, hide_default_value = true)]
    pub redis: Option<String>,
    /// Key namespace shared with the other workers [default: resque].
    #[arg(long, value_name = "NAME", global = true)]
    pub namespace: Option<String>,
    /// Job slots in this process, each registered as one Resque worker [default: 10].
    #[arg(long, short = 'c', value_name = "N", global = true)]
    pub concurrency: Option<String>,
    /// Longest wait between checks of an idle queue (seconds or a duration
    /// like 500ms); 0 drains the queues and exits, as Resque's INTERVAL=0 does
    /// [default: 5s].
    #[arg(long, value_name = "DURATION", global = true)]
    pub interval: Option<String>,
    /// How long TERM/INT lets running jobs finish before putting them back at
    /// the head of their queues [default: 25s].
    #[arg(long, value_name = "DURATION", global = true)]
    pub shutdown_timeout: Option<String>,
    /// TOML config file (see config/ah-worker.toml).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Also run the scheduler: move due delayed jobs into their queues (one
    /// leader among all schedulers, node-resque's included).
    #[arg(long, global = true)]
    pub scheduler: bool,
    /// Directory of plugin declarations, one `*.toml` file per plugin.
    #[arg(long, value_name = "DIR", global = true)]
    pub plugins_dir: Option<PathBuf>,
    /// Log line format: text or json [default: text].
    #[arg(long, value_name = "FORMAT", global = true)]
    pub log_format: Option<String>,
    /// Log level or filter, e.g. debug or ah_worker=trace [default: info].
    #[arg(long, value_name = "FILTER", global = true)]
    pub log_level: Option<String>,
    /// Serve Prometheus metrics (/metrics) and health (/health) over HTTP on
    /// this address, e.g. 127.0.0.1:9187 [default: off].
    #[arg(long, value_name = "ADDR", global = true)]
    pub metrics_listen: Option<String>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker (the default).
    Run,
    /// Supervise N worker processes: restart a crashed one with backoff,
    /// roll a restart through them one by one on HUP, stop them all
    /// gracefully on TERM (as `actionHero startCluster`).
    Cluster {
        /// How many worker processes.
        #[arg(long, short = 'p', value_name = "N")]
        processes: usize,
    },
    /// Push one job onto a queue, as node-resque's `enqueue` writes it.
    Enqueue {
        /// The job's class.
        class: String,
        /// The queue [default: default].
        #[arg(long = "queue", value_name = "QUEUE", default_value = "default")]
        queue_name: String,
        /// The arguments as a JSON array (an object is wrapped in one).
        #[arg(long, value_name = "JSON", default_value = "[]")]
        args: String,
        /// Run it at this time: Unix seconds or RFC 3339 (2026-12-01T08:00:00Z).
        #[arg(long, value_name = "TIME", conflicts_with = "in")]
        at: Option<String>,
        /// Run it after this delay, e.g. 90s or 5m.
        #[arg(long = "in", value_name = "DURATION")]
        r#in: Option<String>,
    },
    /// actionHero's shared cache (the `[actionhero]` section's layout).
    Cache {
        /// What to do.
        #[command(subcommand)]
        action: CacheAction,
    },
    /// actionHero's stats hash.
    Stats,
    /// actionHero's chat rooms.
    Rooms {
        /// What to do.
        #[command(subcommand)]
        action: RoomsAction,
    },
    /// Faye pub/sub (the `[faye]` section; without one, the worker's Redis
    /// with actionHero's `faye:` namespace).
    Faye {
        /// What to do.
        #[command(subcommand)]
        action: FayeAction,
    },
    /// Say MESSAGE in an actionHero chat room, on every actionHero node
    /// (needs `server_token` in the `[faye]` section).
    Say {
        /// The room.
        room: String,
        /// The message text.
        message: String,
    },
    /// Show the delayed jobs and the scheduler leader.
    Schedule {
        /// At most this many due times.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Queues and their depths, workers and their jobs, failures, stats,
    /// delayed jobs and the scheduler leader at a glance.
    Status(Output),
    /// The `failed` list: list, show, retry, remove, clear.
    Failed {
        /// What to do.
        #[command(subcommand)]
        action: FailedAction,
        /// Output format.
        #[command(flatten)]
        output: Output,
    },
    /// Registered workers of every peer; `workers prune` removes dead ones.
    Workers {
        /// What to do [default: list].
        #[command(subcommand)]
        action: Option<WorkersAction>,
        /// Output format.
        #[command(flatten)]
        output: Output,
    },
}

/// Output format of the admin commands.
#[derive(Debug, Args, Clone, Copy, Default)]
pub struct Output {
    /// Print one JSON document instead of text (field names are stable; see
    /// the README's Admin CLI section).
    #[arg(long, global = true)]
    pub json: bool,
}

/// `ah-worker failed ...`.
#[derive(Debug, Subcommand)]
pub enum FailedAction {
    /// List entries, oldest first, with the index that `show`, `retry` and
    /// `remove` take.
    List {
        /// Which entries.
        #[command(flatten)]
        filter: FailedFilter,
        /// At most this many.
        #[arg(long, default_value_t = 20, value_name = "N")]
        limit: usize,
        /// Skip this many matching entries first.
        #[arg(long, default_value_t = 0, value_name = "N")]
        offset: usize,
        /// Every matching entry (no limit).
        #[arg(long, conflicts_with = "limit")]
        all: bool,
    },
    /// One entry in full: error, backtrace, payload.
    Show {
        /// Its index.
        index: usize,
    },
    /// Push entries' payloads, byte for byte, onto their queues and remove
    /// them from the list (node-resque's retryAndRemoveFailed), each in one
    /// atomic step.
    Retry(FailedSelect),
    /// Remove entries.
    Remove(FailedSelect),
    /// Remove every entry (resque-web's "Clear").
    Clear,
}

/// Filters on the `failed` list.
#[derive(Debug, Args, Clone, Default)]
pub struct FailedFilter {
    /// Only entries whose job class matches this glob (`Mail::*`).
    #[arg(long, value_name = "GLOB")]
    pub class: Option<String>,
    /// Only entries of queues matching this glob.
    #[arg(long, value_name = "GLOB")]
    pub queue: Option<String>,
}

/// Which `failed` entries `retry` and `remove` act on.
#[derive(Debug, Args, Clone)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["index", "all"])))]
pub struct FailedSelect {
    /// Entries by index, as `failed list` shows them.
    #[arg(value_name = "INDEX", conflicts_with = "FailedFilter")]
    pub index: Vec<usize>,
    /// Every entry, or every one matching --class / --queue.
    #[arg(long)]
    pub all: bool,
    /// Which entries, with --all.
    #[command(flatten)]
    pub filter: FailedFilter,
}

/// `ah-worker workers ...`.
#[derive(Debug, Subcommand, Clone, Copy)]
pub enum WorkersAction {
    /// List them (the default).
    List,
    /// Remove the registrations of dead ah-worker processes, by the rule
    /// running workers use (`dead_after`, or a gone pid on this host); their
    /// running jobs are requeued or failed as `dead_worker_jobs` says.
    Prune,
}

/// `ah-worker cache ...`.
#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Print an entry (`{"value","expireTimestamp","createdAt","readAt"}`).
    Get {
        /// The cache key.
        key: String,
    },
    /// Save a JSON value.
    Set {
        /// The cache key.
        key: String,
        /// The value, as JSON.
        value: String,
        /// Expire after this long, e.g. 10m.
        #[arg(long, value_name = "DURATION")]
        expire: Option<String>,
    },
    /// Delete an entry.
    Del {
        /// The cache key.
        key: String,
    },
    /// List the keys.
    List,
}

/// `ah-worker faye ...`.
#[derive(Debug, Subcommand)]
pub enum FayeAction {
    /// Publish JSON data on a channel, e.g. `/jobs/report '{"day":1}'`.
    Publish {
        /// The channel.
        channel: String,
        /// The message's data, as JSON.
        data: String,
    },
    /// Print the messages of channels or patterns (`/jobs/**`) as JSON
    /// lines, until Ctrl-C.
    Subscribe {
        /// Channels or patterns.
        #[arg(required = true)]
        patterns: Vec<String>,
    },
}

/// `ah-worker rooms ...`.
#[derive(Debug, Subcommand)]
pub enum RoomsAction {
    /// List the rooms.
    List,
    /// A room's members (actionHero's roomStatus).
    Members {
        /// The room.
        room: String,
    },
    /// Create a room.
    Create {
        /// The room.
        room: String,
    },
    /// Put a connection id in a room.
    Add {
        /// The room.
        room: String,
        /// The connection id.
        id: String,
    },
    /// Take a connection id out of a room.
    Remove {
        /// The room.
        room: String,
        /// The connection id.
        id: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn failed_retry_takes_indexes_or_all_with_filters() {
        let parse =
            |args: &[&str]| Cli::try_parse_from([&["ah-worker", "failed", "retry"], args].concat());
        assert!(parse(&["3", "5"]).is_ok());
        assert!(parse(&["--all", "--class", "Mail::*", "--json"]).is_ok());
        for bad in [
            &[][..],
            &["--class", "X"],
            &["3", "--all"],
            &["3", "--queue", "q"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn queues_flag_without_subcommand_runs() {
        let cli = Cli::try_parse_from(["ah-worker", "--queues", "default,mail"]).unwrap();
        assert_eq!(cli.run.queues.as_deref(), Some("default,mail"));
        assert!(cli.command.is_none());
    }
}
