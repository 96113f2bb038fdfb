//! Per-class retries, locks and actionHero recurring tasks ([[classes]]),
//! against a real redis-server and the real node-resque Retry plugin.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ah_worker::handler::{JobError, Registry};
use ah_worker::worker::policy::{ClassPolicy, Policies};
use redis::Commands;
use serde_json::json;

use crate::util::{InProcess, Ns, wait_for_async, wait_output, wait_output_async};

fn policies(toml_text: &str) -> Policies {
    let v: toml::Value = toml::from_str(toml_text).unwrap();
    let tables = v["classes"].as_array().unwrap().clone();
    Policies(
        tables
            .into_iter()
            .map(|t| ClassPolicy::from_toml(t, "test").unwrap())
            .collect(),
    )
}

/// A registry with `FlakyJob` (always fails, counts attempts) and `Tick`.
fn registry(runs: Arc<AtomicUsize>) -> Registry {
    let mut r = Registry::with_builtin();
    r.register_fn("FlakyJob", |_job, _ctx| async {
        Err(JobError::new("RuntimeError", "flaky from rust").into())
    });
    r.register_fn("tick", move |_job, _ctx| {
        runs.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    });
    r
}

/// Run a worker (with the scheduler) on `queue` whose `FlakyJob` retries 3
/// times 1 s apart, until the job's final failure is recorded.
async fn retry_flaky_until_it_fails(t: &mut Ns, queue: &str) {
    let mut config = t.config(&[queue], 1);
    config.scheduler = true;
    config.policies = policies(
        "[[classes]]\nclasses = [\"FlakyJob\"]\nretry = { attempts = 3, backoff = [\"1s\"] }\n",
    );
    let w = InProcess::start(config, registry(Arc::default()));
    wait_for_async(30, "the final failure", || t.list("failed").len() == 1).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_go_through_the_delayed_queue_and_fail_after_the_last_attempt() {
    let mut t = Ns::new("retry");
    t.push("q", br#"{"class":"FlakyJob","queue":"q","args":[7]}"#);
    retry_flaky_until_it_fails(&mut t, "q").await;
    // node-resque's accounting: retried attempts count as failures only.
    assert_eq!(t.int("stat:failed"), 3);
    assert_eq!(t.int("stat:processed"), 1);
    let f = t.failures();
    assert_eq!(f[0]["error"], json!("flaky from rust"));
    let left: Vec<String> = t
        .keys()
        .into_iter()
        .filter(|k| k.contains("resque-retry"))
        .collect();
    assert!(
        left.is_empty(),
        "retry keys cleared after the last attempt: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_attempts_keep_counting_between_node_resque_and_ah_worker() {
    let mut t = Ns::new("retrynode");
    t.node(&["enqueue", "flaky", "FlakyJob", "[7]"]);
    // node-resque makes the first attempt; its Retry plugin schedules the next.
    let node = t
        .node_cmd(&["worker", "flaky", "node-peer:1"])
        .env("PEER_IDLE_MS", "300")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output_async(node, 60).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let attempts: HashMap<String, i64> = t.conn.hgetall(t.key("test:attempts")).unwrap();
    assert_eq!(attempts.get("7"), Some(&1), "node made one attempt");
    assert_eq!(
        t.cmd::<Option<String>>(&["GET", &t.key("resque-retry:FlakyJob:7")])
            .as_deref(),
        Some("0")
    );
    // ah-worker moves and runs the rest, counting in the same keys.
    retry_flaky_until_it_fails(&mut t, "flaky").await;
    let f = t.failures();
    assert_eq!(
        f[0]["error"],
        json!("flaky from rust"),
        "ah-worker made the last (third) attempt"
    );
    assert_eq!(
        t.int("stat:failed"),
        3,
        "three attempts in all, across both workers"
    );
    assert!(t.keys().iter().all(|k| !k.contains("resque-retry")));
}

#[tokio::test(flavor = "multi_thread")]
async fn job_lock_keeps_identical_jobs_apart_and_honours_a_node_held_lock() {
    let mut t = Ns::new("joblock");
    let job = br#"{"class":"Locked","queue":"q","args":[1]}"#;
    // How many `Locked` jobs run at once, at most.
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut r = Registry::with_builtin();
    let (run, max) = (running.clone(), most.clone());
    r.register_fn("Locked", move |_job, _ctx| {
        let (run, max) = (run.clone(), max.clone());
        async move {
            let now = run.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(700)).await;
            run.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    });
    // A node-resque JobLock on the same job, as its plugin writes it.
    let lock = t.key("workerslock:Locked:q:[1]");
    let expiry = chrono::Utc::now().timestamp() + 3601;
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg(expiry)
        .arg("EX")
        .arg(3600)
        .query(&mut t.conn)
        .unwrap();
    t.push("q", job);
    let mut config = t.config(&["q"], 2);
    config.scheduler = true;
    config.policies =
        policies("[[classes]]\nclasses = [\"Locked\"]\njob_lock = { timeout = \"30s\" }\n");
    let w = InProcess::start(config, r);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        t.int("stat:processed"),
        0,
        "deferred while node holds the lock"
    );
    assert!(t.failures().is_empty());
    let _: () = t.conn.del(&lock).unwrap();
    wait_for_async(20, "the job once the lock is free", || {
        t.int("stat:processed") == 1
    })
    .await;
    assert!(
        !t.keys().iter().any(|k| k.starts_with("workerslock")),
        "released after the run"
    );
    // Two identical jobs on two free slots: never both running.
    t.push("q", job);
    t.push("q", job);
    wait_for_async(30, "both identical jobs", || t.int("stat:processed") == 3).await;
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "identical jobs ran at the same time"
    );
    w.stop().await;
}

#[test]
fn a_job_lock_holder_killed_mid_job_frees_the_lock_by_its_ttl() {
    let mut t = Ns::new("lockkill");
    let config = crate::util::ConfigFile::new(
        &t.ns,
        "[[classes]]\nclasses = [\"AhWorker::Sleep\"]\njob_lock = { timeout = \"3s\" }\n",
    );
    t.push(
        "q",
        br#"{"class":"AhWorker::Sleep","queue":"q","args":[30]}"#,
    );
    let args = [
        "--queues",
        "q",
        "-c",
        "1",
        "--scheduler",
        "--config",
        config.arg(),
    ];
    let mut holder = t
        .bin()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    crate::util::wait_for(20, "the lock to be held", || {
        t.keys().iter().any(|k| k.starts_with("workerslock"))
    });
    let lock = t.key("workerslock:AhWorker::Sleep:q:[30]");
    let ttl: i64 = t.cmd(&["TTL", &lock]);
    assert!(ttl > 0 && ttl <= 3, "the lock always has a TTL ({ttl})");
    let dead_holders: String = t.cmd(&["GET", &lock]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    // The next worker recovers the job at start-up; it runs once the lock expired.
    let next = t
        .bin()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running_here = format!("worker:{}:{}+1:q", ah_worker::app::hostname(), next.id());
    crate::util::wait_for(
        30,
        "the recovered job to run in the next worker under a new lock",
        || {
            let holder: Option<String> = t.cmd(&["GET", &lock]);
            t.keys().contains(&running_here) && holder.is_some_and(|h| h != dead_holders)
        },
    );
    crate::util::signal(&next, "TERM");
    assert!(wait_output(next, 60).status.success());
    assert!(t.failures().is_empty());
}

#[test]
fn queue_lock_and_delay_queue_lock_veto_duplicate_enqueues() {
    let mut t = Ns::new("queuelock");
    let config = crate::util::ConfigFile::new(
        &t.ns,
        "[[classes]]\nclasses = [\"Report\"]\nqueue_lock = { timeout = \"1h\" }\n\n[[classes]]\nclasses = [\"Digest\"]\ndelay_queue_lock = true\n",
    );
    let enqueue = |t: &Ns, extra: &[&str]| {
        let mut args = vec!["--config", config.arg(), "enqueue"];
        args.extend_from_slice(extra);
        let o = t.bin().args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(enqueue(&t, &["Report", "--args", "[1]"]), "");
    assert!(enqueue(&t, &["Report", "--args", "[1]"]).contains("not enqueued"));
    assert_eq!(
        enqueue(&t, &["Report", "--args", "[2]"]),
        "",
        "other args are another job"
    );
    assert_eq!(t.list("queue:default").len(), 2);
    let ttl: i64 = t.cmd(&["TTL", &t.key("lock:Report:default:[1]")]);
    assert!(ttl > 3500, "{ttl}");
    assert_eq!(enqueue(&t, &["Digest", "--in", "1h"]), "");
    assert!(
        enqueue(&t, &["Digest"]).contains("not enqueued"),
        "scheduled already"
    );
    assert_eq!(t.list("queue:default").len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_actionhero_recurring_task_keeps_one_chain_and_is_restored_when_lost() {
    let mut t = Ns::new("recur");
    let link = r#"{"class":"tick","queue":"default","args":{}}"#;
    // actionHero 7's boot-time enqueue with its TTL-less queue lock.
    t.push("default", link.as_bytes());
    let _: () = t
        .conn
        .set(t.key("lock:tick:default:{}"), "1796015476")
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let mut config = t.config(&["default"], 2);
    config.scheduler = true;
    config.policies = policies(
        "[[classes]]\nclasses = [\"tick\"]\nqueue_lock = {}\nrecurring = { frequency = \"1s\" }\n",
    );
    let w = InProcess::start(config.clone(), registry(runs.clone()));
    wait_for_async(20, "a few runs", || runs.load(Ordering::SeqCst) >= 3).await;
    assert!(
        !t.keys().contains(&"lock:tick:default:{}".to_string()),
        "the TTL-less queue lock is cleared"
    );
    // The link is delayed, in actionHero 7's layout (namespaced member).
    let links = |t: &mut Ns| -> usize {
        let queued = t
            .list("queue:default")
            .iter()
            .filter(|j| *j == link)
            .count();
        let members: Vec<String> = t
            .conn
            .smembers(t.key(&format!("timestamps:{link}")))
            .unwrap();
        queued + members.len()
    };
    w.stop().await;
    assert_eq!(links(&mut t), 1, "exactly one link of the chain");
    let members: Vec<String> = t
        .conn
        .smembers(t.key(&format!("timestamps:{link}")))
        .unwrap();
    assert!(
        members[0].starts_with(&format!("{}:delayed:", t.ns)),
        "{members:?}"
    );
    // A dead peer took the link with it: the leader restores exactly one.
    for k in t
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("delayed") || k.starts_with("timestamps"))
    {
        let _: () = t.conn.del(t.key(&k)).unwrap();
    }
    assert_eq!(links(&mut t), 0);
    let before = runs.load(Ordering::SeqCst);
    let w = InProcess::start(config, registry(runs.clone()));
    wait_for_async(30, "the chain to be restored and run", || {
        runs.load(Ordering::SeqCst) > before + 1
    })
    .await;
    w.stop().await;
    assert_eq!(links(&mut t), 1, "one chain after the restore");
}
