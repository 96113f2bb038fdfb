//! The integration suite: one binary, every test against a real
//! `redis-server` (see `util`), interop tests against the real node-resque.

mod util;

mod actionhero;
mod admin;
mod bench;
mod chaos;
mod cli;
mod cluster;
mod faye;
mod node;
mod ops;
mod plugins;
mod policies;
mod props;
mod recovery;
mod redis_setups;
mod scheduler;
mod signals;
mod wire;
mod worker;
