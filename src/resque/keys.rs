//! Every Redis key name of the Resque / node-resque contract.
//!
//! This is the only place in the crate that formats a Resque key. Names follow
//! Ruby Resque 3.0 (`lib/resque/data_store.rb`) and node-resque 9.x
//! (`src/core/connection.ts`): every key is `<namespace>:<name>`, the
//! namespace defaulting to `resque`.

/// Key builder bound to one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `namespace` (`resque` gives `resque:queue:default`, ...).
    pub fn new(namespace: &str) -> Keys {
        Keys {
            prefix: format!("{namespace}:"),
        }
    }

    /// The namespace with its trailing colon, as the Lua scripts receive it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// SET of every known queue name.
    pub fn queues(&self) -> String {
        self.key("queues")
    }

    /// LIST of job payloads of one queue (RPUSH at the tail, LPOP at the head).
    pub fn queue(&self, name: &str) -> String {
        self.key(&format!("queue:{name}"))
    }

    /// SET of registered worker ids.
    pub fn workers(&self) -> String {
        self.key("workers")
    }

    /// STRING holding what worker `id` is working on; absent when idle.
    pub fn worker(&self, id: &str) -> String {
        self.key(&format!("worker:{id}"))
    }

    /// STRING with the worker's start time.
    pub fn worker_started(&self, id: &str) -> String {
        self.key(&format!("worker:{id}:started"))
    }

    /// node-resque's liveness key for the bare worker name (`host:pid+n`).
    pub fn worker_ping(&self, name: &str) -> String {
        self.key(&format!("worker:ping:{name}"))
    }

    /// Ruby Resque's HASH of worker id → last heartbeat.
    pub fn heartbeats(&self) -> String {
        self.key("workers:heartbeat")
    }

    /// A global counter: `stat:processed` or `stat:failed`.
    pub fn stat(&self, name: &str) -> String {
        self.key(&format!("stat:{name}"))
    }

    /// A per-worker counter, e.g. `stat:processed:<worker>`.
    pub fn worker_stat(&self, name: &str, worker: &str) -> String {
        self.key(&format!("stat:{name}:{worker}"))
    }

    /// LIST of failure records.
    pub fn failed(&self) -> String {
        self.key("failed")
    }

    /// ZSET of due times (Unix seconds, member = score) that have delayed jobs.
    pub fn delayed_schedule(&self) -> String {
        self.key("delayed_queue_schedule")
    }

    /// LIST of the jobs due at Unix second `ts`.
    pub fn delayed(&self, ts: i64) -> String {
        self.key(&format!("delayed:{ts}"))
    }

    /// The un-namespaced member naming `delayed:<ts>` in a `timestamps:` set
    /// (resque-scheduler and node-resque 2+ store it without the namespace).
    pub fn delayed_member(ts: i64) -> String {
        format!("delayed:{ts}")
    }

    /// SET of the `delayed:<ts>` members a job payload is scheduled at.
    pub fn timestamps(&self, payload: &str) -> String {
        self.key(&format!("timestamps:{payload}"))
    }

    /// node-resque's scheduler leader lock (value: the leader's name).
    pub fn leader_lock(&self) -> String {
        self.key("resque_scheduler_leader_lock")
    }

    /// Ruby resque-scheduler's master lock. It is written through a
    /// namespaced client with the namespace already in the name, so the
    /// namespace appears twice: `resque:resque:resque_scheduler_master_lock`.
    pub fn ruby_master_lock(&self) -> String {
        format!("{0}{0}resque_scheduler_master_lock", self.prefix)
    }

    /// node-resque Retry plugin's attempt counter for a class and args key
    /// (see [`crate::resque::payload::retry_args_key`]).
    pub fn retry(&self, class: &str, args_key: &str) -> String {
        self.key(&format!("resque-retry:{class}:{args_key}"))
    }

    /// node-resque Retry plugin's last-failure record.
    pub fn retry_failure(&self, class: &str, args_key: &str) -> String {
        self.key(&format!("failure-resque-retry:{class}:{args_key}"))
    }

    /// node-resque JobLock: "this job is running" (`args_json` is
    /// `JSON.stringify(args)`).
    pub fn job_lock(&self, class: &str, queue: &str, args_json: &str) -> String {
        self.key(&format!("workerslock:{class}:{queue}:{args_json}"))
    }

    /// node-resque QueueLock: "this job is queued".
    pub fn queue_lock(&self, class: &str, queue: &str, args_json: &str) -> String {
        self.key(&format!("lock:{class}:{queue}:{args_json}"))
    }

    /// ah-worker's HASH of recurring-task chains found missing (name → when).
    pub fn chains(&self) -> String {
        self.key("ah-worker:chains")
    }

    /// ah-worker's own HASH of live processes: field `host:pid`, value
    /// [`crate::resque::payload::ProcessEntry`] JSON. Peers ignore it.
    pub fn processes(&self) -> String {
        self.key("ah-worker:processes")
    }

    /// ah-worker's HASH of recurring schedules: name → last tick handled
    /// (Unix seconds).
    pub fn schedules(&self) -> String {
        self.key("ah-worker:schedules")
    }

    /// ah-worker's lock serialising the recovery of dead processes.
    pub fn recovery_lock(&self) -> String {
        self.key("ah-worker:recovery_lock")
    }

    /// STRING an operator sets to `true` to pause every worker.
    pub fn pause_all_workers(&self) -> String {
        self.key("pause-all-workers")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_strings_match_the_peers() {
        let k = Keys::new("resque");
        assert_eq!(k.queues(), "resque:queues");
        assert_eq!(k.queue("mail"), "resque:queue:mail");
        assert_eq!(k.workers(), "resque:workers");
        assert_eq!(k.worker("h:1+1:a,b"), "resque:worker:h:1+1:a,b");
        assert_eq!(k.worker_started("h:1+1:a"), "resque:worker:h:1+1:a:started");
        assert_eq!(k.worker_ping("h:1+1"), "resque:worker:ping:h:1+1");
        assert_eq!(k.heartbeats(), "resque:workers:heartbeat");
        assert_eq!(k.stat("processed"), "resque:stat:processed");
        assert_eq!(k.worker_stat("failed", "h:1+1"), "resque:stat:failed:h:1+1");
        assert_eq!(k.failed(), "resque:failed");
        assert_eq!(k.pause_all_workers(), "resque:pause-all-workers");
        assert_eq!(k.delayed_schedule(), "resque:delayed_queue_schedule");
        assert_eq!(k.processes(), "resque:ah-worker:processes");
        assert_eq!(k.leader_lock(), "resque:resque_scheduler_leader_lock");
        assert_eq!(
            k.retry("job", r#"{"a":1}"#),
            r#"resque:resque-retry:job:{"a":1}"#
        );
        assert_eq!(
            k.retry_failure("job", "1-2"),
            "resque:failure-resque-retry:job:1-2"
        );
        assert_eq!(
            k.job_lock("tick", "default", "[{}]"),
            "resque:workerslock:tick:default:[{}]"
        );
        assert_eq!(
            k.queue_lock("tick", "default", "[{}]"),
            "resque:lock:tick:default:[{}]"
        );
        assert_eq!(
            k.ruby_master_lock(),
            "resque:resque:resque_scheduler_master_lock"
        );
        assert_eq!(k.recovery_lock(), "resque:ah-worker:recovery_lock");
        assert_eq!(k.delayed(1717433100), "resque:delayed:1717433100");
        assert_eq!(Keys::delayed_member(1717433100), "delayed:1717433100");
        assert_eq!(
            k.timestamps(r#"{"class":"x","queue":"q","args":[1]}"#),
            r#"resque:timestamps:{"class":"x","queue":"q","args":[1]}"#
        );
    }

    #[test]
    fn namespace_is_configurable() {
        assert_eq!(Keys::new("app:jobs").queue("q"), "app:jobs:queue:q");
    }
}
