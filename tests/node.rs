//! Interop with the real node-resque 9.7.1 (tests/node, pinned in its
//! package-lock): its Queue enqueues for us and reads our state, and its
//! Worker drains a queue together with ah-worker.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use ah_worker::handler::Registry;
use redis::Commands;
use serde_json::{Value, json};

use crate::util::{InProcess, Ns, wait_for_async, wait_output_async};

fn host() -> String {
    ah_worker::app::hostname()
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_enqueued_by_node_resque_are_performed() {
    let mut t = Ns::new("nodeenqueue");
    t.node(&["enqueue", "default", "AhWorker::Noop", "[1,{\"a\":\"é\"}]"]);
    t.node(&["enqueue", "default", "AhWorker::Fail", "[\"from node\"]"]);
    let mut config = t.config(&["default"], 2);
    config.interval = Duration::ZERO;
    InProcess::builtin(config).join().await;
    assert_eq!(t.int("stat:processed"), 2);
    assert_eq!(t.int("stat:failed"), 1);
    assert_eq!(t.failures()[0]["error"], json!("from node"));
}

#[tokio::test(flavor = "multi_thread")]
async fn node_resque_queue_reads_our_workers_jobs_stats_and_failures() {
    let mut t = Ns::new("nodereads");
    t.push(
        "slow",
        br#"{"class":"AhWorker::Sleep","queue":"slow","args":[3]}"#,
    );
    t.node(&["enqueue", "fast", "AhWorker::Fail", "[\"broken\"]"]);
    let w = InProcess::builtin(t.config(&["slow", "fast"], 2));
    let name1 = format!("{}:{}+1", host(), std::process::id());
    let name2 = format!("{}:{}+2", host(), std::process::id());
    wait_for_async(10, "the failure", || t.list("failed").len() == 1).await;

    // workers(): name → queues, parsed from our ids.
    let workers = t.node(&["workers"]);
    assert_eq!(
        workers,
        json!({ name1.clone(): "slow,fast", name2.clone(): "slow,fast" })
    );

    // allWorkingOn(): keyed by the status's "worker" field.
    let working = t.node(&["all-working-on"]);
    let busy: Vec<(&String, &Value)> = working
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.is_object())
        .collect();
    assert_eq!(busy.len(), 1, "{working}");
    let (who, status) = busy[0];
    assert!(who == &name1 || who == &name2, "{working}");
    assert_eq!(status["queue"], json!("slow"));
    assert_eq!(status["worker"], json!(who));
    assert_eq!(status["payload"]["class"], json!("AhWorker::Sleep"));

    // failed() parses our record; removeFailed() finds it by its bytes.
    let failed = t.node(&["failed"]);
    assert_eq!(failed[0]["exception"], json!("RuntimeError"));
    assert_eq!(failed[0]["error"], json!("broken"));
    assert_eq!(failed[0]["payload"]["class"], json!("AhWorker::Fail"));
    assert_eq!(t.node(&["remove-failed", "0"]), json!({"removed": 1}));
    assert!(t.list("failed").is_empty());

    wait_for_async(10, "the sleep job", || t.int("stat:processed") == 2).await;
    let stats = t.node(&["stats"]);
    assert_eq!(stats["processed"], json!("2"));
    assert_eq!(stats["failed"], json!("1"));
    w.stop().await;
    assert_eq!(t.node(&["workers"]), json!({}));
}

#[tokio::test(flavor = "multi_thread")]
async fn node_worker_and_ah_worker_drain_one_queue_exactly_once() {
    let mut t = Ns::new("nodedrain");
    const N: usize = 300;
    let n = N.to_string();
    t.node(&["enqueue-many", "shared", "CountJob", &n]);

    // Our CountJob records executions exactly as the node peer's does.
    let mut registry = Registry::new();
    let url = t.url.clone();
    let ns = t.ns.clone();
    let client = redis::Client::open(url).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    registry.register_fn("CountJob", move |job, _ctx| {
        let mut conn = conn.clone();
        let ns = ns.clone();
        async move {
            let id = job.args[0].to_string();
            redis::pipe()
                .hincr(format!("{ns}:test:executions"), &id, 1)
                .hset(format!("{ns}:test:executed_by"), &id, "ah-worker")
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        }
    });

    let node = t
        .node_cmd(&["worker", "shared", "node-peer:1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let node_id = "node-peer:1:shared".to_string();
    wait_for_async(20, "the node worker to register", || {
        t.conn.sismember(t.key("workers"), &node_id).unwrap()
    })
    .await;
    let mut config = t.config(&["shared"], 4);
    config.interval = Duration::ZERO;
    let report = InProcess::start(config, registry).join().await;
    let out = wait_output_async(node, 150).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node_report: Value = serde_json::from_slice(&out.stdout).unwrap();

    let executions: HashMap<String, i64> = t.conn.hgetall(t.key("test:executions")).unwrap();
    assert_eq!(executions.len(), N, "every job ran");
    assert!(executions.values().all(|&c| c == 1), "no job ran twice");
    let by: HashMap<String, String> = t.conn.hgetall(t.key("test:executed_by")).unwrap();
    let ours = by.values().filter(|v| *v == "ah-worker").count();
    let theirs = by.values().filter(|v| *v == "node").count();
    assert_eq!(ours as u64, report.performed);
    assert_eq!(theirs as u64, node_report["performed"].as_u64().unwrap());
    assert!(theirs > 0, "the node worker took part ({ours} vs {theirs})");
    assert_eq!(t.int("stat:processed"), N as i64, "the stats add up");
    assert_eq!(t.int("stat:failed"), 0);
}
