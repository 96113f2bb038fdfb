//! The `ah-worker` binary: parse, configure, run, map the result to an exit
//! status (0 clean stop, 1 runtime failure, 2 usage or configuration error).

use std::process::ExitCode;

use ah_worker::cli::{Cli, Command};
use ah_worker::config::Config;
use ah_worker::handler::Registry;
use ah_worker::shutdown::Controller;
use ah_worker::{app, signals, telemetry};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.run) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ah-worker: error: {e}");
            return ExitCode::from(2);
        }
    };
    // Usage errors are found before anything runs.
    if let Some(Command::Enqueue { args, .. }) = &cli.command
        && let Err(e) = serde_json::from_str::<serde_json::Value>(args)
    {
        eprintln!(
            "ah-worker: error: --args {args:?} is not JSON ({e}); expected e.g. '[1, \"x\"]'"
        );
        return ExitCode::from(2);
    }
    let registry = Registry::with_builtin();
    if let Err(e) = ah_worker::plugin::check_claims(&config.plugins, &registry) {
        eprintln!("ah-worker: error: {e}");
        return ExitCode::from(2);
    }
    telemetry::init(config.log_format, config.log_level.as_deref());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ah-worker: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            None | Some(Command::Run) => {
                let (controller, control) = Controller::new();
                signals::forward(controller)?;
                app::run(&config, registry, control).await.map(|_| ())
            }
            Some(Command::Enqueue {
                class,
                queue_name,
                args,
            }) => {
                let args =
                    serde_json::from_str(&args).expect("validated before the runtime started");
                app::enqueue(&config, &class, &queue_name, args).await
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
