//! The `ah-worker` binary: the built-in handlers plus every plugin of the
//! configuration. A program with native handlers of its own calls
//! [`ah_worker::app::main`] the same way (see `examples/custom_worker.rs`).

use std::process::ExitCode;

use ah_worker::handler::Registry;

fn main() -> ExitCode {
    ah_worker::app::main(Registry::with_builtin())
}
