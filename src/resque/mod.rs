//! The Resque wire contract, as Ruby Resque 3.0 and node-resque 9.x keep it
//! in Redis: key names ([`keys`]), JSON shapes and time formats
//! ([`payload`]), and the Redis operations on them ([`store`]; [`admin`] for
//! what the admin CLI reads and repairs).
//!
//! Nothing outside this module knows a Resque key string or payload shape.
//!
//! What we match, and where we deliberately differ:
//! - Worker ids are `host:pid+n:queues`, one per job slot: Ruby's
//!   `id.split(':', 3)` reads host, pid (`"12+1".to_i` is 12) and queues;
//!   node-resque's `workers()` reads name `host:pid+n` and the queues.
//! - Taking a job moves it from its queue into the slot's status key in one
//!   Lua step, as node-resque 8+ does; Ruby's LPOP-then-SET leaves a window in
//!   which a crash loses the job.
//! - Every time we write is UTC, so Ruby's local-time formats come out as
//!   `... UTC` / `+0000` / `+00:00`.

pub mod admin;
pub mod keys;
pub mod payload;
pub mod store;

pub use keys::Keys;
pub use payload::{Failure, Job, Malformed};
pub use store::{
    Ack, AckKind, Election, Recovered, Recovery, StepReply, StepRequest, Store, TakeLimit, Taken,
};

/// The identity of one job slot, as registered in `workers`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkerId {
    /// node-resque's worker name: `host:pid+n`.
    pub name: String,
    /// The queue list as configured, comma-separated (`*` stays literal,
    /// `!name` exclusions are left out, as Ruby does).
    pub queues: String,
    /// The full id `host:pid+n:queues`, Ruby's `Worker#to_s`.
    pub id: String,
    /// The end of this slot's status values (see [`payload::status_tail`]),
    /// computed once.
    pub status_tail: String,
}

/// An ah-worker process: `host:pid`, the field of its registry entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessId {
    /// Host part of its worker ids.
    pub host: String,
    /// Its pid.
    pub pid: u32,
}

impl ProcessId {
    /// The registry field `host:pid`.
    pub fn field(&self) -> String {
        format!("{}:{}", self.host, self.pid)
    }

    /// Parse a registry field.
    pub fn parse(field: &str) -> Option<ProcessId> {
        let (host, pid) = field.rsplit_once(':')?;
        Some(ProcessId {
            host: host.to_owned(),
            pid: pid.parse().ok()?,
        })
    }

    /// The ids of its `slots` slots serving `queues`.
    pub fn slots(&self, slots: usize, queues: &str) -> Vec<WorkerId> {
        (1..=slots)
            .map(|n| WorkerId::new(&self.host, self.pid, n, queues))
            .collect()
    }
}

impl WorkerId {
    /// The id of slot `n` (from 1) of process `pid` on `host`.
    pub fn new(host: &str, pid: u32, n: usize, queues: &str) -> WorkerId {
        let name = format!("{host}:{pid}+{n}");
        WorkerId {
            id: format!("{name}:{queues}"),
            status_tail: payload::status_tail(&name),
            name,
            queues: queues.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WorkerId;

    #[test]
    fn worker_id_parses_for_ruby_and_node() {
        let w = WorkerId::new("web-1", 4242, 3, "default,mail");
        assert_eq!(w.id, "web-1:4242+3:default,mail");
        // Ruby: host, pid, queues = id.split(':', 3); pid.to_i
        let parts: Vec<&str> = w.id.splitn(3, ':').collect();
        assert_eq!(parts, ["web-1", "4242+3", "default,mail"]);
        // node-resque workers(): name = first two parts, queues = the rest
        let all: Vec<&str> = w.id.split(':').collect();
        assert_eq!(format!("{}:{}", all[0], all[1]), w.name);
        assert_eq!(all[2..].join(":"), "default,mail");
    }
}
