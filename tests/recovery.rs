//! Nothing lost, nothing twice: recovery of dead workers' jobs, fencing,
//! poison jobs, Redis outages, living with the peers, large queues.

use std::process::{Child, Stdio};
use std::time::Duration;

use ah_worker::resque::payload;
use ah_worker::worker::DeadWorkerJobs;
use redis::Commands;
use serde_json::json;

use crate::util::{
    InProcess, Ns, signal, start_redis, wait_for, wait_for_async, wait_output, wait_output_async,
};

fn host() -> String {
    ah_worker::app::hostname()
}

/// A pid that belonged to a process which has exited.
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// Leave `ns` as a process that died while running `job` would: registered
/// slot, process entry (beat at `beat_ms`), status key holding the job.
pub(crate) fn plant_dead_worker(
    t: &mut Ns,
    host: &str,
    pid: u32,
    queue: &str,
    job: &str,
    beat_ms: i64,
) -> String {
    let name = format!("{host}:{pid}+1");
    let id = format!("{name}:{queue}");
    let status = format!(
        "{}{job}{}",
        payload::status_head(&payload::json_string(queue), "2026-11-30T03:49:20Z"),
        payload::status_tail(&name)
    );
    let _: () = t.conn.set(t.key(&format!("worker:{id}")), status).unwrap();
    let _: () = t.conn.sadd(t.key("workers"), &id).unwrap();
    let _: () = t
        .conn
        .set(
            t.key(&format!("worker:{id}:started")),
            "2026-11-30 03:49:20 +0000",
        )
        .unwrap();
    let _: () = t
        .conn
        .hset(t.key("workers:heartbeat"), &id, "2026-11-30T03:49:20+00:00")
        .unwrap();
    let entry = json!({"beat": beat_ms, "slots": 1, "queues": queue}).to_string();
    let _: () = t
        .conn
        .hset(t.key("ah-worker:processes"), format!("{host}:{pid}"), entry)
        .unwrap();
    id
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_process_on_this_host_is_recovered_at_start_up() {
    let mut t = Ns::new("deadhere");
    let job = r#"{"class":"AhWorker::Noop","args":["was running"]}"#;
    let dead = plant_dead_worker(&mut t, &host(), dead_pid(), "q", job, now_ms());
    t.push(
        "q",
        br#"{"class":"AhWorker::Noop","args":["queued after it"]}"#,
    );
    // Recovered before anything is taken: it goes back to the head.
    let mut config = t.config(&["q"], 1);
    config.interval = Duration::ZERO;
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut registry = ah_worker::handler::Registry::with_builtin();
    let l = log.clone();
    registry.register("AhWorker::Noop", std::sync::Arc::new(Recorder(l)));
    InProcess::start(config, registry).join().await;
    assert_eq!(*log.lock().unwrap(), ["was running", "queued after it"]);
    assert!(t.failures().is_empty());
    let workers: Vec<String> = t.conn.smembers(t.key("workers")).unwrap();
    assert!(!workers.contains(&dead), "the dead registration is gone");
    for gone in [format!("worker:{dead}"), format!("worker:{dead}:started")] {
        assert!(!t.keys().contains(&gone), "{gone} left behind");
    }
    let processes: Vec<String> = t.conn.hkeys(t.key("ah-worker:processes")).unwrap();
    assert!(processes.is_empty(), "{processes:?}");
}

struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl ah_worker::handler::Handler for Recorder {
    fn perform(
        &self,
        job: ah_worker::resque::Job,
        _ctx: ah_worker::handler::JobContext,
    ) -> ah_worker::handler::BoxFuture {
        self.0
            .lock()
            .unwrap()
            .push(job.args[0].as_str().unwrap_or("").to_owned());
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_process_elsewhere_is_recovered_after_dead_after_exactly_once() {
    let mut t = Ns::new("deadthere");
    let job = r#"{"class":"AhWorker::Noop","args":[1]}"#;
    let dead = plant_dead_worker(&mut t, "another-host", 4242, "q", job, now_ms());
    // Two live workers race to recover it.
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut config = t.config(&["q"], 1);
        config.dead_after = Duration::from_secs(2);
        workers.push(InProcess::builtin(config));
    }
    wait_for_async(20, "the job to run once recovered", || {
        t.int("stat:processed") == 1
    })
    .await;
    let workers_set: Vec<String> = t.conn.smembers(t.key("workers")).unwrap();
    assert!(!workers_set.contains(&dead));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(t.int("stat:processed"), 1, "put back once, run once");
    assert!(t.list("queue:q").is_empty());
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_can_fail_the_job_as_a_dirty_exit_instead() {
    let mut t = Ns::new("deadfail");
    let job = r#"{"class":"SendEmail","args":[{"to":"a@b"}]}"#;
    let dead = plant_dead_worker(&mut t, &host(), dead_pid(), "q", job, now_ms());
    let mut config = t.config(&["q"], 1);
    config.interval = Duration::ZERO;
    config.dead_worker_jobs = DeadWorkerJobs::Fail;
    InProcess::builtin(config).join().await;
    let f = t.failures();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["exception"], json!("Resque::DirtyExit"));
    assert_eq!(f[0]["worker"], json!(dead));
    assert_eq!(f[0]["queue"], json!("q"));
    assert_eq!(
        f[0]["payload"],
        serde_json::from_str::<serde_json::Value>(job).unwrap()
    );
    assert_eq!(f[0]["backtrace"], json!([]));
    assert!(f[0]["error"].as_str().unwrap().contains("SendEmail"));
    assert!(t.list("queue:q").is_empty());
}

fn spawn(t: &Ns, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = t.bin();
    c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

#[test]
fn a_job_that_keeps_killing_its_worker_ends_in_failed() {
    let mut t = Ns::new("poison");
    let dir = std::env::temp_dir().join(format!("ah-worker-{}", t.ns));
    std::fs::create_dir_all(&dir).unwrap();
    // A plugin whose job kills the worker process itself.
    std::fs::write(
        dir.join("killer.toml"),
        "name = \"killer\"\nkind = \"exec\"\nclasses = [\"Poison\"]\ncommand = [\"sh\", \"-c\", \"kill -9 $PPID; sleep 5\"]\n",
    )
    .unwrap();
    let poison = r#"{"class":"Poison","args":[]}"#;
    t.push("q", poison.as_bytes());
    t.push("q", br#"{"class":"AhWorker::Noop","args":[]}"#);
    let args = [
        "--queues",
        "q",
        "-c",
        "1",
        "--plugins-dir",
        dir.to_str().unwrap(),
    ];
    let env = [("AH_WORKER_MAX_RECOVERIES", "2")];
    // Killed twice, put back twice; the third death sends it to failed.
    for round in 1..=3 {
        let child = spawn(&t, &args, &env);
        let out = wait_output(child, 30);
        assert!(
            !out.status.success(),
            "round {round}: the job killed the worker"
        );
    }
    let child = spawn(&t, &args, &env);
    wait_for(20, "the next job after the poison one", || {
        t.int("stat:processed") == 1
    });
    let f = t.failures();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["exception"], json!("AhWorker::PoisonJob"));
    assert_eq!(
        f[0]["payload"],
        serde_json::from_str::<serde_json::Value>(poison).unwrap()
    );
    assert!(t.list("queue:q").is_empty());
    signal(&child, "TERM");
    assert!(wait_output(child, 20).status.success());
}

#[test]
fn a_worker_taken_for_dead_records_nothing_twice_and_registers_again() {
    let mut t = Ns::new("fence");
    t.push("q", br#"{"class":"AhWorker::Sleep","args":[2]}"#);
    let env = [("AH_WORKER_DEAD_AFTER", "1s")];
    let stalled = spawn(&t, &["--queues", "q", "-c", "1"], &env);
    let stalled_id = format!("{}:{}+1:q", host(), stalled.id());
    wait_for(20, "the job to start", || {
        t.keys().contains(&format!("worker:{stalled_id}"))
    });
    signal(&stalled, "STOP");
    // Another worker takes the stalled one for dead, puts the job back and runs it.
    let other = spawn(&t, &["--queues", "q", "-c", "1"], &env);
    wait_for(30, "the recovered job to be performed", || {
        t.int("stat:processed") == 1
    });
    let members: Vec<String> = t.conn.smembers(t.key("workers")).unwrap();
    assert!(
        !members.contains(&stalled_id),
        "recovery removed the stalled registration"
    );
    signal(&stalled, "CONT");
    // Its own sleep ends; the ack is fenced: nothing is counted twice.
    wait_for(20, "the stalled worker to register again", || {
        t.conn.sismember(t.key("workers"), &stalled_id).unwrap()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(t.int("stat:processed"), 1, "one outcome recorded");
    assert!(t.failures().is_empty());
    for child in [stalled, other] {
        signal(&child, "TERM");
        let out = wait_output(child, 20);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn worker_alive(child: &mut Child) -> bool {
    child.try_wait().unwrap().is_none()
}

#[test]
fn a_redis_restart_loses_nothing_and_runs_nothing_twice() {
    let dir = std::env::temp_dir().join(format!("ah-worker-aof-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = crate::util::free_port();
    let aof = [
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        dir.to_str().unwrap(),
    ];
    let server = start_redis(port, &aof);
    let mut t = Ns::on(&server.url(), "outage");
    const N: usize = 200;
    for i in 0..N {
        t.push(
            "q",
            json!({"class": "AhWorker::Count", "args": ["test:executions", i, 0.02]})
                .to_string()
                .as_bytes(),
        );
    }
    let mut worker = spawn(&t, &["--queues", "q", "-c", "4"], &[]);
    wait_for(20, "some jobs to run", || t.int("stat:processed") > 20);
    // Redis goes away for a while, with jobs in flight.
    let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query(&mut t.conn);
    drop(server);
    std::thread::sleep(Duration::from_secs(3));
    assert!(worker_alive(&mut worker), "the worker survives the outage");
    let _server = start_redis(port, &aof);
    t.reconnect();
    wait_for(60, "every job", || t.int("stat:processed") == N as i64);
    let executions: std::collections::HashMap<String, i64> =
        t.conn.hgetall(t.key("test:executions")).unwrap();
    assert_eq!(executions.len(), N, "nothing lost");
    let twice: Vec<_> = executions.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "run twice: {twice:?}");
    assert!(t.failures().is_empty(), "{:?}", t.failures());
    signal(&worker, "TERM");
    let out = wait_output(worker, 20);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let members: Vec<String> = t.conn.smembers(t.key("workers")).unwrap();
    assert!(members.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_registration_comes_back_and_host_name_is_configurable() {
    let mut t = Ns::new("reregister");
    let mut config = t.config(&["q"], 1);
    config.host_name = Some("web-1-ah".into());
    config.heartbeat_interval = Duration::from_millis(500);
    let w = InProcess::builtin(config);
    let id = format!("web-1-ah:{}+1:q", std::process::id());
    wait_for_async(10, "registration", || {
        t.conn.sismember(t.key("workers"), &id).unwrap()
    })
    .await;
    // What Ruby's same-host pruning does to a worker it takes for dead.
    let _: () = t.conn.srem(t.key("workers"), &id).unwrap();
    let _: () = t.conn.del(t.key(&format!("worker:{id}:started"))).unwrap();
    wait_for_async(10, "registration again", || {
        t.conn.sismember(t.key("workers"), &id).unwrap()
    })
    .await;
    wait_for_async(10, "started again", || {
        t.keys().contains(&format!("worker:{id}:started"))
    })
    .await;
    w.stop().await;
}

#[test]
fn a_million_queued_jobs_cost_no_more_memory_than_none() {
    let mut t = Ns::new("million");
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap()
    };
    let measure = |t: &Ns, queue: &str| -> u64 {
        let mut child = spawn(t, &["--queues", queue, "-c", "10"], &[]);
        std::thread::sleep(Duration::from_secs(2));
        let kb = rss(child.id());
        signal(&child, "TERM");
        let _ = child.wait();
        kb
    };
    let empty = measure(&t, "empty");
    // A million jobs that each take a while: the worker holds only its ten.
    let payload = r#"{"class":"AhWorker::Sleep","args":[0.05]}"#;
    let key = t.key("queue:big");
    for _ in 0..100 {
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg(&key);
        for _ in 0..10_000 {
            cmd.arg(payload);
        }
        let _: () = cmd.query(&mut t.conn).unwrap();
    }
    let _: () = t.conn.sadd(t.key("queues"), "big").unwrap();
    let full = measure(&t, "big");
    assert!(t.int("stat:processed") > 0, "it worked on the big queue");
    let _: () = t.conn.del(&key).unwrap();
    assert!(
        full < empty + 4096,
        "RSS with a million queued jobs {full} kB vs empty {empty} kB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn node_resques_stuck_worker_cleanup_leaves_a_live_ah_worker_alone() {
    let mut t = Ns::new("nodestuck");
    // node-resque's scheduler cleans workers whose ping is older than its
    // stuckWorkerTimeout (here 4 s); ah-worker pings well inside it.
    let mut config = t.config(&["q"], 1);
    config.heartbeat_interval = Duration::from_secs(1);
    let w = InProcess::builtin(config);
    let id = format!("{}:{}+1:q", host(), std::process::id());
    wait_for_async(10, "registration", || {
        t.conn.sismember(t.key("workers"), &id).unwrap()
    })
    .await;
    let node = t
        .node_cmd(&["scheduler", "node-sched:1", "5", "4000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        t.conn
            .sismember::<_, _, bool>(t.key("workers"), &id)
            .unwrap(),
        "node-resque cleaned a live ah-worker"
    );
    assert!(t.failures().is_empty(), "{:?}", t.failures());
    signal(&node, "TERM");
    let _ = wait_output_async(node, 20).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_status_key_still_holding_a_value_is_resumed_or_failed_never_overwritten() {
    // What a lost ack leaves (a failover, a restore from an older dump):
    // the status key of a slot the worker takes for free still holds a job.
    let mut t = Ns::new("occupied");
    let mut config = t.config(&["q"], 1);
    config.host_name = Some("web-2-ah".into());
    let w = InProcess::builtin(config);
    let id = format!("web-2-ah:{}+1:q", std::process::id());
    wait_for_async(10, "registration", || {
        t.conn.sismember(t.key("workers"), &id).unwrap()
    })
    .await;
    let lost = r#"{"class":"AhWorker::Count","args":["counts","lost"]}"#;
    let status = format!(
        r#"{{"queue":"q","run_at":"2026-11-30T08:00:00.000Z","payload":{lost},"worker":"{id}"}}"#
    );
    let _: () = t.conn.set(t.key(&format!("worker:{id}")), &status).unwrap();
    t.push(
        "q",
        br#"{"class":"AhWorker::Count","args":["counts","new"]}"#,
    );
    wait_for_async(10, "both jobs performed", || {
        let done: std::collections::HashMap<String, i64> = t.conn.hgetall(t.key("counts")).unwrap();
        done.get("lost") == Some(&1) && done.get("new") == Some(&1)
    })
    .await;
    assert_eq!(t.int("stat:processed"), 2);

    // A value of no known shape is not overwritten either: it goes to
    // `failed` with its bytes, and the slot takes jobs again.
    let _: () = t
        .conn
        .set(t.key(&format!("worker:{id}")), "not a status {")
        .unwrap();
    t.push(
        "q",
        br#"{"class":"AhWorker::Count","args":["counts","after"]}"#,
    );
    wait_for_async(10, "the next job performed", || {
        let done: std::collections::HashMap<String, i64> = t.conn.hgetall(t.key("counts")).unwrap();
        done.get("after") == Some(&1)
    })
    .await;
    let failures = t.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["exception"], "AhWorker::CorruptStatus");
    assert_eq!(failures[0]["payload"], "not a status {");
    assert_eq!(failures[0]["worker"], id.as_str());
    w.stop().await;
}
