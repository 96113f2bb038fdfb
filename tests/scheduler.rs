//! Delayed jobs and the scheduler, against a real redis-server and the real
//! node-resque Queue and Scheduler.

use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::time::Duration;

use redis::Commands;
use serde_json::json;

use crate::util::{InProcess, Ns, signal, wait_for, wait_for_async, wait_output};

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn count_job(id: usize) -> String {
    json!({"class": "AhWorker::Count", "queue": "work", "args": ["test:executions", id]})
        .to_string()
}

/// Schedule `job` at Unix second `ts` as node-resque's enqueueAt writes it.
fn schedule(t: &mut Ns, ts: i64, job: &str) {
    let _: () = t.conn.rpush(t.key(&format!("delayed:{ts}")), job).unwrap();
    let _: () = t
        .conn
        .sadd(t.key(&format!("timestamps:{job}")), format!("delayed:{ts}"))
        .unwrap();
    let _: () = t
        .conn
        .zadd(t.key("delayed_queue_schedule"), ts, ts)
        .unwrap();
}

fn executions(t: &mut Ns) -> HashMap<String, i64> {
    t.conn.hgetall(t.key("test:executions")).unwrap()
}

fn scheduler_bin(t: &Ns, ttl: &str) -> Child {
    t.bin()
        .args(["--scheduler", "--queues", "nothing-here", "-c", "1"])
        .env("AH_WORKER_SCHEDULER_LOCK_TTL", ttl)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_delayed_by_node_resque_are_moved_and_run_by_ah_worker() {
    let mut t = Ns::new("nodedelayed");
    let at = now_ms() + 1500;
    t.node(&[
        "enqueue-at",
        &at.to_string(),
        "work",
        "AhWorker::Count",
        r#"["test:executions","n1"]"#,
    ]);
    // actionHero 7 (node-resque 0.2) wrote namespaced timestamps members.
    let ts = chrono::Utc::now().timestamp() + 1;
    let ah7 = r#"{"class":"AhWorker::Count","queue":"work","args":["test:executions","ah7"]}"#;
    let _: () = t.conn.rpush(t.key(&format!("delayed:{ts}")), ah7).unwrap();
    let _: () = t
        .conn
        .sadd(
            t.key(&format!("timestamps:{ah7}")),
            t.key(&format!("delayed:{ts}")),
        )
        .unwrap();
    let _: () = t
        .conn
        .zadd(t.key("delayed_queue_schedule"), ts, ts)
        .unwrap();

    let mut config = t.config(&["work"], 2);
    config.scheduler = true;
    let w = InProcess::builtin(config);
    wait_for_async(20, "both delayed jobs to run", || {
        executions(&mut t).len() == 2
    })
    .await;
    w.stop().await;
    assert_eq!(executions(&mut t).values().sum::<i64>(), 2);
    let left: Vec<String> = t
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("delayed") || k.starts_with("timestamps"))
        .collect();
    assert!(left.is_empty(), "delayed structures left: {left:?}");
    assert_eq!(
        t.cmd::<Option<String>>(&["GET", &t.key("resque_scheduler_leader_lock")]),
        None,
        "the leader resigned on stop"
    );
}

#[test]
fn jobs_delayed_by_ah_worker_are_moved_by_the_node_resque_scheduler() {
    let mut t = Ns::new("ourdelayed");
    let out = t
        .bin()
        .args([
            "enqueue",
            "AhWorker::Noop",
            "--queue",
            "later",
            "--args",
            "[1]",
            "--in",
            "1s",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let payload = r#"{"class":"AhWorker::Noop","queue":"later","args":[1]}"#;
    let due: Vec<(String, i64)> = t
        .conn
        .zrange_withscores(t.key("delayed_queue_schedule"), 0, -1)
        .unwrap();
    assert_eq!(due.len(), 1);
    let members: Vec<String> = t
        .conn
        .smembers(t.key(&format!("timestamps:{payload}")))
        .unwrap();
    assert_eq!(members, [format!("delayed:{}", due[0].0)]);
    let node = t
        .node_cmd(&["scheduler", "node-sched:1", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(20, "node-resque to move it", || {
        t.list("queue:later").len() == 1
    });
    assert_eq!(t.list("queue:later"), [payload]);
    signal(&node, "TERM");
    assert!(wait_output(node, 20).status.success());
    let left: Vec<String> = t
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("delayed") || k.starts_with("timestamps"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn one_leader_among_ah_worker_and_node_resque_schedulers_and_a_takeover() {
    let mut t = Ns::new("leader");
    let mut ours: Vec<Child> = (0..3).map(|_| scheduler_bin(&t, "2s")).collect();
    let mut node = Some(
        t.node_cmd(&["scheduler", "node-sched:1", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let leader =
        |t: &mut Ns| t.cmd::<Option<String>>(&["GET", &t.key("resque_scheduler_leader_lock")]);
    wait_for(20, "a leader", || leader(&mut t).is_some());
    let first = leader(&mut t).unwrap();
    // Stable: the same single holder round after round.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(leader(&mut t).as_deref(), Some(first.as_str()));
    }
    // Jobs due over the next seconds; a worker without a scheduler runs them.
    let now = chrono::Utc::now().timestamp();
    const N: usize = 300;
    for i in 0..N {
        schedule(&mut t, now + 1 + (i % 6) as i64, &count_job(i));
    }
    let runner = t
        .bin()
        .args(["--queues", "work", "-c", "10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // Kill the leader in the middle of the run.
    let killed = if first == "node-sched:1" {
        let mut n = node.take().unwrap();
        n.kill().unwrap();
        n.wait().unwrap();
        first.clone()
    } else {
        let pid: u32 = first.rsplit(':').next().unwrap().parse().unwrap();
        let i = ours
            .iter()
            .position(|c| c.id() == pid)
            .expect("the leader is one of ours");
        let mut c = ours.remove(i);
        c.kill().unwrap();
        c.wait().unwrap();
        first.clone()
    };
    wait_for(30, "another leader", || {
        leader(&mut t).is_some_and(|l| l != killed)
    });
    wait_for(60, "every delayed job to run", || {
        executions(&mut t).len() == N
    });
    std::thread::sleep(Duration::from_secs(1));
    let ex = executions(&mut t);
    let twice: Vec<_> = ex.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "moved or run more than once: {twice:?}");
    assert_eq!(
        t.cmd::<i64>(&["ZCARD", &t.key("delayed_queue_schedule")]),
        0
    );
    for c in ours.into_iter().chain([runner]).chain(node) {
        signal(&c, "TERM");
        let _ = wait_output(c, 20);
    }
}

#[test]
fn killing_the_scheduler_at_random_moments_loses_and_doubles_nothing() {
    let mut t = Ns::new("schedkill");
    const N: usize = 20_000;
    let now = chrono::Utc::now().timestamp();
    let mut pipe = redis::pipe();
    for i in 0..N {
        let ts = now - 1 - (i % 50) as i64;
        let job = count_job(i);
        pipe.rpush(t.key(&format!("delayed:{ts}")), &job).ignore();
        pipe.sadd(t.key(&format!("timestamps:{job}")), format!("delayed:{ts}"))
            .ignore();
        pipe.zadd(t.key("delayed_queue_schedule"), ts, ts).ignore();
    }
    let _: () = pipe.query(&mut t.conn).unwrap();
    let mut rng = 0x2545F4914F6CDD1Du64;
    for _ in 0..6 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut c = scheduler_bin(&t, "1s");
        std::thread::sleep(Duration::from_millis(10 + rng % 60));
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let c = scheduler_bin(&t, "1s");
    wait_for(60, "everything moved", || {
        t.cmd::<i64>(&["ZCARD", &t.key("delayed_queue_schedule")]) == 0
    });
    let id = format!("{}:{}+1:nothing-here", ah_worker::app::hostname(), c.id());
    wait_for(20, "the last scheduler to be up", || {
        t.cmd::<bool>(&["SISMEMBER", &t.key("workers"), &id])
    });
    signal(&c, "TERM");
    let out = wait_output(c, 20);
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let queued = t.list("queue:work");
    assert_eq!(
        queued.len(),
        N,
        "each delayed job is in the queue exactly once"
    );
    let mut seen = std::collections::HashSet::new();
    for job in &queued {
        assert!(seen.insert(job.clone()), "moved twice: {job}");
    }
    let left: Vec<String> = t
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("timestamps"))
        .take(3)
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_moves_while_a_ruby_resque_scheduler_holds_its_master_lock() {
    let mut t = Ns::new("rubylock");
    let ruby_lock = format!("{0}:{0}:resque_scheduler_master_lock", t.ns);
    let _: () = t.conn.set(&ruby_lock, "localhost:11945").unwrap();
    schedule(&mut t, chrono::Utc::now().timestamp() - 1, &count_job(1));
    let mut config = t.config(&["work"], 1);
    config.scheduler = true;
    let w = InProcess::builtin(config);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        executions(&mut t).is_empty(),
        "moved while Ruby's scheduler was master"
    );
    assert_eq!(
        t.cmd::<i64>(&["ZCARD", &t.key("delayed_queue_schedule")]),
        1
    );
    let _: () = t.conn.del(&ruby_lock).unwrap();
    wait_for_async(10, "the job once Ruby's lock is gone", || {
        executions(&mut t).len() == 1
    })
    .await;
    w.stop().await;
}

#[test]
fn the_schedule_command_lists_delayed_jobs_and_the_leader() {
    let mut t = Ns::new("schedcli");
    let _: () = t
        .conn
        .set(t.key("resque_scheduler_leader_lock"), "web-1:42")
        .unwrap();
    schedule(&mut t, 1_900_000_000, &count_job(5));
    let out = t.bin().args(["schedule"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("scheduler leader: web-1:42"), "{text}");
    assert!(
        text.contains("2030-03-17 17:46:40 UTC (1900000000): 1 job(s)"),
        "{text}"
    );
    assert!(text.contains(&count_job(5)), "{text}");
    let bad = t
        .bin()
        .args(["enqueue", "X", "--in", "soon"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--in \"soon\""));
}

#[test]
fn a_recurring_schedule_on_three_nodes_enqueues_one_job_per_tick_across_a_leader_kill() {
    let mut t = Ns::new("recurring");
    let config = crate::util::ConfigFile::new(
        &t.ns,
        "[[schedules]]\nname = \"heartbeat\"\nevery = \"1s\"\nclass = \"AhWorker::Noop\"\nqueue = \"ticks\"\nargs = [\"tick\"]\n",
    );
    let start = |t: &Ns| {
        t.bin()
            .args([
                "--scheduler",
                "--queues",
                "nothing-here",
                "-c",
                "1",
                "--config",
                config.arg(),
            ])
            .env("AH_WORKER_SCHEDULER_LOCK_TTL", "2s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut nodes: Vec<Child> = (0..3).map(|_| start(&t)).collect();
    let last =
        |t: &mut Ns| t.cmd::<Option<i64>>(&["HGET", &t.key("ah-worker:schedules"), "heartbeat"]);
    wait_for(20, "the schedule to start", || last(&mut t).is_some());
    let first = last(&mut t).unwrap();
    assert!(
        t.list("queue:ticks").is_empty(),
        "the first sight of a schedule runs nothing"
    );
    std::thread::sleep(Duration::from_secs(3));
    let leader: String = t.cmd(&["GET", &t.key("resque_scheduler_leader_lock")]);
    let pid: u32 = leader.rsplit(':').next().unwrap().parse().unwrap();
    let i = nodes.iter().position(|c| c.id() == pid).unwrap();
    let mut dead = nodes.remove(i);
    dead.kill().unwrap();
    dead.wait().unwrap();
    wait_for(20, "a new leader", || {
        t.cmd::<Option<String>>(&["GET", &t.key("resque_scheduler_leader_lock")])
            .is_some_and(|l| l != leader)
    });
    std::thread::sleep(Duration::from_secs(4));
    for c in nodes {
        signal(&c, "TERM");
        assert!(wait_output(c, 20).status.success());
    }
    let final_last = last(&mut t).unwrap();
    let jobs = t.list("queue:ticks");
    assert!(
        final_last - first >= 7,
        "ticks handled: {first}..{final_last}"
    );
    assert_eq!(
        jobs.len() as i64,
        final_last - first,
        "exactly one job per tick from {first} to {final_last}"
    );
    assert!(
        jobs.iter()
            .all(|j| j == r#"{"class":"AhWorker::Noop","queue":"ticks","args":["tick"]}"#)
    );
}

#[test]
fn a_bad_schedule_stops_start_up_with_status_2() {
    let t = Ns::new("badschedule");
    let config = crate::util::ConfigFile::new(
        &t.ns,
        "[[schedules]]\nname = \"nightly\"\ncron = \"0 99 * * *\"\nclass = \"Report\"\n",
    );
    let out = t.bin().args(["--config", config.arg()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("\"nightly\"") && e.contains("cron"), "{e}");
}
