//! The integration suite: one binary, every test against a real
//! `redis-server` (see `util`), interop tests against the real node-resque.

mod util;

mod actionhero;
mod bench;
mod chaos;
mod cli;
mod node;
mod ops;
mod plugins;
mod policies;
mod props;
mod recovery;
mod scheduler;
mod signals;
mod wire;
mod worker;
