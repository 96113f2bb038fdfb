//! The composition root: from a [`Config`] and a [`Registry`] to a running
//! worker, plus the one-shot commands.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use tokio::sync::mpsc;
use tracing::{error, info};

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::handler::{Registry, Services};
use crate::shutdown::Controller;
use crate::{signals, telemetry};

/// The whole program around `registry`: parse the command line, load and
/// check the configuration (plugins included), run, and map the result to
/// an exit status: 0 clean stop, 1 runtime failure, 2 usage or configuration
/// error.
pub fn main(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.run) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ah-worker: error: {e}");
            return ExitCode::from(2);
        }
    };
    // Usage errors are found before anything runs.
    if let Err(e) = crate::plugin::check_claims(&config.plugins, &registry) {
        eprintln!("ah-worker: error: {e}");
        return ExitCode::from(2);
    }
    let mut enqueue_at = None;
    if let Some(Command::Enqueue { args, at, r#in, .. }) = &cli.command {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(args) {
            eprintln!(
                "ah-worker: error: --args {args:?} is not JSON ({e}); expected e.g. '[1, \"x\"]'"
            );
            return ExitCode::from(2);
        }
        match due_time(at.as_deref(), r#in.as_deref()) {
            Ok(ts) => enqueue_at = ts,
            Err(e) => {
                eprintln!("ah-worker: error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(Command::Faye {
        action: crate::cli::FayeAction::Publish { data, .. },
    }) = &cli.command
        && let Err(e) = serde_json::from_str::<serde_json::Value>(data)
    {
        eprintln!(
            "ah-worker: error: the data {data:?} is not JSON ({e}); expected e.g. '{{\"n\": 1}}'"
        );
        return ExitCode::from(2);
    }
    // The admin commands report in their output; logs only for errors
    // unless asked for.
    let admin_default = cli.command.as_ref().is_some_and(crate::admin::is_admin)
        && std::env::var_os("RUST_LOG").is_none();
    let log_level = config
        .log_level
        .as_deref()
        .or(admin_default.then_some("error"));
    telemetry::init(config.log_format, log_level);
    let runtime = match build_runtime(config.threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ah-worker: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let run_args = cli.run.clone();
    let result = runtime.block_on(async {
        match cli.command {
            None | Some(Command::Run) => {
                let (controller, control) = Controller::new();
                signals::forward(controller)?;
                crate::cluster::follow_supervisor();
                let options = RunOptions {
                    notifier: crate::systemd::Notifier::from_env(),
                    watchdog: crate::systemd::watchdog_from_env(),
                    // A reload resolves the same flags and environment again.
                    reload: Some(Box::new(move || Config::load(&run_args))),
                };
                run_with(&config, registry, control, options)
                    .await
                    .map(|_| ())
            }
            Some(Command::Cluster { processes }) => {
                crate::cluster::run(&run_args, processes, &registry).await
            }
            Some(Command::Enqueue {
                class,
                queue_name,
                args,
                ..
            }) => {
                let args =
                    serde_json::from_str(&args).expect("validated before the runtime started");
                enqueue(&config, &class, &queue_name, args, enqueue_at).await
            }
            Some(Command::Schedule { limit }) => schedule(&config, limit).await,
            Some(Command::Cache { action }) => cache_command(&config, action).await,
            Some(Command::Stats) => stats_command(&config).await,
            Some(Command::Rooms { action }) => rooms_command(&config, action).await,
            Some(Command::Status(output)) => crate::admin::status(&config, output).await,
            Some(Command::Failed { action, output }) => {
                crate::admin::failed(&config, action, output).await
            }
            Some(Command::Workers { action, output }) => {
                crate::admin::workers(&config, action, output).await
            }
            Some(Command::Faye { action }) => faye_command(&config, action).await,
            Some(Command::Say { room, message }) => {
                faye_handle(&config)
                    .await?
                    .say(&room, message.into())
                    .await?;
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ah-worker: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
use crate::resque::Store;
use crate::shutdown::{Control, StopReason, StopReport};
use crate::vitals::{Phase, Vitals};
use crate::worker::{QueueSpec, Recoverer, Runner};

/// The async runtime: one thread by default. The runner, its Redis calls
/// and the job tasks then never cross threads, which costs a third of the
/// CPU per job of a multi-threaded runtime (no cross-thread wake-ups) and
/// leaves the other cores to Redis and plugin processes. Handlers that
/// compute for long should use `tokio::task::spawn_blocking`, or the worker
/// can run with `threads` > 1.
fn build_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// Run a worker with `config` and `registry` until `control` stops it.
pub async fn run(
    config: &Config,
    registry: Registry,
    control: mpsc::UnboundedReceiver<Control>,
) -> anyhow::Result<StopReport> {
    run_with(config, registry, control, RunOptions::default()).await
}

/// What the `run` command adds to a worker: the service manager to keep
/// informed, and where a reload reads the configuration.
#[derive(Default)]
pub struct RunOptions {
    /// systemd's notify socket (`NOTIFY_SOCKET`).
    pub notifier: Option<crate::systemd::Notifier>,
    /// systemd's watchdog period (`WATCHDOG_USEC`).
    pub watchdog: Option<std::time::Duration>,
    /// The configuration source of a reload (HUP); without one a reload is
    /// refused.
    pub reload: Option<crate::reload::Source>,
}

/// [`run`], telling the service manager of `options` how it goes and
/// reloading from its source.
pub async fn run_with(
    config: &Config,
    registry: Registry,
    control: mpsc::UnboundedReceiver<Control>,
    options: RunOptions,
) -> anyhow::Result<StopReport> {
    let vitals = Arc::new(Vitals::new(crate::systemd::pulse_for(options.watchdog)));
    let stop_reporting = tokio_util::sync::CancellationToken::new();
    // Listen first: a taken port stops the start-up, and /health answers
    // (503) while the worker connects.
    let metrics_task = match config.metrics_listen {
        Some(addr) => {
            let listener = crate::metrics::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (metrics_listen)"))?;
            Some(crate::metrics::spawn(
                listener,
                vitals.clone(),
                stop_reporting.clone(),
            ))
        }
        None => None,
    };
    let notify_task = options.notifier.map(|n| {
        crate::systemd::spawn(n, vitals.clone(), options.watchdog, stop_reporting.clone())
    });
    let (to_runner, mut control_runner) = mpsc::unbounded_channel();
    let relay = crate::reload::Relay::spawn(
        control,
        to_runner,
        options.reload,
        registry.clone(),
        config.clone(),
        vitals.clone(),
    );
    let result = run_lives(config, &registry, &mut control_runner, &relay, &vitals).await;
    relay.stop().await;
    vitals.set_phase(Phase::Stopping);
    stop_reporting.cancel();
    for task in [notify_task, metrics_task].into_iter().flatten() {
        let _ = task.await;
    }
    result
}

/// Connect, then run one life of the worker per configuration: the first,
/// then one more per reload.
async fn run_lives(
    config: &Config,
    natives: &Registry,
    control: &mut mpsc::UnboundedReceiver<Control>,
    relay: &crate::reload::Relay,
    vitals: &Arc<Vitals>,
) -> anyhow::Result<StopReport> {
    let mut start_paused = false;
    let store = connect_retrying(config, control, &mut start_paused).await?;
    let mut current = config.clone();
    let mut registry = with_plugins(natives, &current).await?;
    let mut performed = 0;
    loop {
        let mut report =
            run_generation(&current, &store, registry, control, start_paused, vitals).await?;
        performed += report.performed;
        if report.reason != StopReason::Reload {
            report.performed = performed;
            return Ok(report);
        }
        start_paused = vitals.paused();
        // Starting the next life (plugin processes, registration) is
        // progress too: the watchdog must not take it for a wedged loop.
        vitals.pulse.beat(crate::connection::RESPONSE_TIMEOUT * 2);
        let next = relay.take().unwrap_or_else(|| current.clone());
        registry = match with_plugins(natives, &next).await {
            Ok(registry) => {
                current = next;
                vitals.reloaded();
                info!(queues = ?current.queues, concurrency = current.concurrency, plugins = current.plugins.len(), "configuration reloaded");
                registry
            }
            Err(e) => {
                vitals.reload_failed();
                vitals.error(format!("reload failed: {e}"));
                error!(error = %e, "reload failed: cannot start the new plugins; going back to the running configuration");
                with_plugins(natives, &current).await?
            }
        };
    }
}

/// `natives` plus the plugins of `config`, started; none is left running on
/// an error.
async fn with_plugins(
    natives: &Registry,
    config: &Config,
) -> Result<Registry, crate::plugin::PluginError> {
    let mut registry = natives.clone();
    if let Err(e) = crate::plugin::register_all(&config.plugins, &mut registry) {
        registry.shutdown_plugins().await;
        return Err(e);
    }
    Ok(registry)
}

/// One life of the worker with `config` on `store` and the handlers of
/// `registry`: runner, scheduler and background tasks, until `control`
/// stops the runner.
async fn run_generation(
    config: &Config,
    store: &Store,
    registry: Registry,
    control: &mut mpsc::UnboundedReceiver<Control>,
    start_paused: bool,
    vitals: &Arc<Vitals>,
) -> anyhow::Result<StopReport> {
    let registry = Arc::new(registry);
    let queues = QueueSpec::new(&config.queues);
    vitals.set_queues(store.clone(), queues.clone());
    let recoverer = Recoverer::for_config(store.clone(), config);
    let slots = recoverer.me.slots(config.concurrency, &queues.id_part());
    let mut services = Services::new(store.clone(), Arc::new(config.policies.clone()));
    let mut background = Vec::new();
    let stop_background = tokio_util::sync::CancellationToken::new();
    if let Some(settings) = &config.actionhero {
        let ah = crate::actionhero::ActionHero::new(store.connection(), settings);
        background.push(
            ah.stats
                .spawn_flusher(settings.stats_flush, stop_background.clone()),
        );
        background.push(
            ah.cache
                .spawn_sweeper(settings.sweep_every, stop_background.clone()),
        );
        services = services.with_actionhero(ah);
    }
    if let Some(settings) = &config.faye {
        // Faye being away must not stop the jobs: it is connected to in the
        // background, and what needs it meanwhile fails or waits.
        let (faye, connecting) =
            crate::faye::Faye::start(settings, &stop_background).context("cannot start faye")?;
        background.extend(connecting);
        services = services.with_faye(faye.clone());
        background.extend(faye.spawn_events(stop_background.clone()));
        background.extend(crate::faye::spawn_bridge(
            &faye,
            settings.rules.clone(),
            services.clone(),
            stop_background.clone(),
        )?);
    }
    let runner = Runner {
        services,
        store: store.clone(),
        registry: registry.clone(),
        slots,
        queues,
        interval: config.interval,
        shutdown_timeout: config.shutdown_timeout,
        heartbeat_interval: config.heartbeat_interval,
        unknown_class: config.unknown_class,
        recoverer,
        policies: Arc::new(config.policies.clone()),
        start_paused,
        vitals: vitals.clone(),
    };
    let scheduler = config.scheduler.then(|| {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = crate::scheduler::Scheduler {
            store: store.clone(),
            name: config.process().field(),
            lock_ttl: config.scheduler_lock_ttl,
            schedules: config.schedules.clone(),
            chains: config
                .policies
                .0
                .iter()
                .filter_map(|p| p.recurring.as_ref().map(|r| (p, r)))
                .flat_map(|(p, r)| p.classes.iter().map(move |c| (c.clone(), r.clone())))
                .collect(),
        }
        .spawn(stop.clone());
        (stop, task)
    });
    let report = runner.run(control).await;
    if let Some((stop, task)) = scheduler {
        stop.cancel();
        let _ = task.await;
    }
    // No job runs any more: close plugin processes and connections, write
    // the last stats. A reload keeps the native handlers for the next life.
    if matches!(&report, Ok(r) if r.reason == StopReason::Reload) {
        registry.shutdown_plugins().await;
    } else {
        registry.shutdown().await;
    }
    stop_background.cancel();
    for task in background {
        let _ = task.await;
    }
    Ok(report?)
}

/// `ah-worker enqueue`: push one job as node-resque writes it, now or (for
/// a future Unix second `at`) into the delayed queue.
pub async fn enqueue(
    config: &Config,
    class: &str,
    queue: &str,
    args: serde_json::Value,
    at: Option<i64>,
) -> anyhow::Result<()> {
    let store = connect(config).await?;
    let now = chrono::Utc::now().timestamp();
    let enqueued = Services::new(store, Arc::new(config.policies.clone()))
        .enqueue(class, queue, args, at.filter(|ts| *ts > now))
        .await
        .context("enqueue failed")?;
    if !enqueued {
        println!(
            "not enqueued: an identical {class} job is already queued or scheduled (queue_lock / delay_queue_lock)"
        );
    }
    Ok(())
}

/// When `--at TIME` / `--in DURATION` say a job should run (Unix seconds).
fn due_time(at: Option<&str>, delay: Option<&str>) -> Result<Option<i64>, String> {
    if let Some(at) = at {
        let at = at.trim();
        if let Ok(secs) = at.parse::<i64>() {
            return Ok(Some(secs));
        }
        return chrono::DateTime::parse_from_rfc3339(at)
            .map(|t| Some(t.timestamp()))
            .map_err(|_| {
                format!("--at {at:?}: expected Unix seconds or a time like 2026-12-01T08:00:00Z")
            });
    }
    if let Some(delay) = delay {
        let d = crate::config::parse_duration(delay)
            .ok_or_else(|| format!("--in {delay:?}: expected a duration like 90s or 5m"))?;
        return Ok(Some(
            chrono::Utc::now().timestamp() + d.as_secs_f64().round() as i64,
        ));
    }
    Ok(None)
}

/// actionHero's state with the configured (or seed-era default) layout.
async fn actionhero_state(config: &Config) -> anyhow::Result<crate::actionhero::ActionHero> {
    let settings = config
        .actionhero
        .clone()
        .unwrap_or_else(|| crate::actionhero::Settings::seed(&config.process().host));
    let store = connect(config).await?;
    Ok(crate::actionhero::ActionHero::new(
        store.connection(),
        &settings,
    ))
}

/// `ah-worker cache ...`.
async fn cache_command(config: &Config, action: crate::cli::CacheAction) -> anyhow::Result<()> {
    use crate::cli::CacheAction;
    let ah = actionhero_state(config).await?;
    match action {
        CacheAction::Get { key } => match ah.cache.load(&key, None).await? {
            Ok(entry) => println!("{}", serde_json::to_string(&entry)?),
            Err(miss) => anyhow::bail!("{key}: {miss}"),
        },
        CacheAction::Set { key, value, expire } => {
            let value: serde_json::Value = serde_json::from_str(&value)
                .with_context(|| format!("the value {value:?} is not JSON"))?;
            let expire = match expire {
                Some(e) => Some(
                    crate::config::parse_duration(&e)
                        .with_context(|| format!("--expire {e:?} is not a duration"))?,
                ),
                None => None,
            };
            ah.cache.save(&key, value, expire).await?;
            ah.stats.flush().await?;
        }
        CacheAction::Del { key } => {
            if !ah.cache.destroy(&key).await? {
                anyhow::bail!("{key}: Object not found");
            }
            ah.stats.flush().await?;
        }
        CacheAction::List => {
            for key in ah.cache.list().await? {
                println!("{key}");
            }
        }
    }
    Ok(())
}

/// `ah-worker stats`: actionHero's stats hash, sorted.
async fn stats_command(config: &Config) -> anyhow::Result<()> {
    let ah = actionhero_state(config).await?;
    let mut all: Vec<(String, i64)> = ah.stats.get_all().await?.into_iter().collect();
    all.sort();
    let width = all.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in all {
        println!("{k:width$}  {v}");
    }
    Ok(())
}

/// `ah-worker rooms ...`.
async fn rooms_command(config: &Config, action: crate::cli::RoomsAction) -> anyhow::Result<()> {
    use crate::cli::RoomsAction;
    let ah = actionhero_state(config).await?;
    match action {
        RoomsAction::List => {
            for room in ah.rooms.list().await? {
                println!("{room}");
            }
        }
        RoomsAction::Members { room } => println!("{}", ah.rooms.status(&room).await?),
        RoomsAction::Create { room } => {
            ah.rooms.create(&room).await?;
        }
        RoomsAction::Add { room, id } => {
            if !ah.rooms.add_member(&room, &id).await? {
                anyhow::bail!(
                    "{id} is already in {room}, or {room} does not exist (create it first)"
                );
            }
        }
        RoomsAction::Remove { room, id } => {
            if !ah.rooms.remove_member(&room, &id).await? {
                anyhow::bail!("{id} is not in {room}");
            }
        }
    }
    Ok(())
}

/// Faye as configured (`[faye]`), or with its defaults: the worker's Redis,
/// namespace `faye:`.
async fn faye_handle(config: &Config) -> anyhow::Result<crate::faye::Faye> {
    let settings = config.faye.clone().unwrap_or_else(|| {
        crate::faye::Settings::defaults(
            &config.redis_url,
            &config.redis_tls,
            &config.process().host,
        )
    });
    crate::faye::Faye::connect(&settings)
        .await
        .context("cannot connect to faye")
}

/// `ah-worker faye ...`.
async fn faye_command(config: &Config, action: crate::cli::FayeAction) -> anyhow::Result<()> {
    use crate::cli::FayeAction;
    let faye = faye_handle(config).await?;
    match action {
        FayeAction::Publish { channel, data } => {
            let data = serde_json::from_str(&data).expect("validated before the runtime started");
            faye.publish(&channel, data).await?;
        }
        FayeAction::Subscribe { patterns } => {
            let stop = tokio_util::sync::CancellationToken::new();
            let mut sub = faye.subscribe(&patterns, &stop)?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            loop {
                // Cancel-safety: on INT or TERM the subscription is closed
                // (its Faye client destroyed); messages not yet received are
                // lost.
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                    m = sub.recv() => match m {
                        Some(m) => println!("{}", serde_json::json!({"channel": m.channel, "data": m.data})),
                        None => anyhow::bail!("the subscription ended"),
                    },
                }
            }
            sub.close().await;
        }
    }
    Ok(())
}

/// `ah-worker schedule`: the delayed jobs and the scheduler leader.
pub async fn schedule(config: &Config, limit: usize) -> anyhow::Result<()> {
    let store = connect(config).await?;
    match store.leader().await? {
        Some(name) => println!("scheduler leader: {name}"),
        None => println!("scheduler leader: none"),
    }
    let delayed = store.delayed(limit).await?;
    if delayed.is_empty() {
        println!("no delayed jobs");
    }
    for (ts, jobs) in delayed {
        let when = chrono::DateTime::from_timestamp(ts, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| ts.to_string());
        println!("{when} ({ts}): {} job(s)", jobs.len());
        for job in jobs {
            println!("  {job}");
        }
    }
    Ok(())
}

/// Connect, retrying with capped backoff while Redis does not answer, until
/// it does or a stop arrives.
async fn connect_retrying(
    config: &Config,
    control: &mut mpsc::UnboundedReceiver<Control>,
    paused: &mut bool,
) -> anyhow::Result<Store> {
    let mut backoff = crate::backoff::Backoff::new();
    loop {
        // Cancel-safety: a connection attempt cut short by a stop is dropped;
        // nothing runs yet.
        let attempt = tokio::select! {
            r = connect(config) => r,
            msg = control.recv() => {
                if Control::before_start(msg, paused) {
                    anyhow::bail!("stopped before redis answered");
                }
                continue;
            }
        };
        match attempt {
            Ok(store) => return Ok(store),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff.peek(), "waiting for redis")
            }
        }
        let delay = backoff.failed();
        // Cancel-safety: nothing runs yet; a stop just ends the wait.
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            msg = control.recv() => {
                if Control::before_start(msg, paused) {
                    anyhow::bail!("stopped before redis answered");
                }
            }
        }
    }
}

pub(crate) async fn connect(config: &Config) -> anyhow::Result<Store> {
    Store::connect(&config.redis, &config.namespace)
        .await
        .with_context(|| format!("cannot connect to Redis at {}", redacted(&config.redis_url)))
}

/// The URL with any password replaced, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<credentials>@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The kernel's host name, as Ruby's `Socket.gethostname` and node's
/// `os.hostname()` return it. A `:` would break every peer's id parsing, so
/// it is replaced.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().replace(':', "-"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_credentials() {
        assert_eq!(
            super::redacted("redis://u:secret@h:1/0"),
            "redis://<credentials>@h:1/0"
        );
        assert_eq!(super::redacted("redis://h:1/0"), "redis://h:1/0");
    }
}
