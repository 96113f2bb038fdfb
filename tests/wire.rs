//! Byte-level wire compatibility: registration, heartbeats, the status value
//! of a running job, failure records, stats, and what unregistering removes.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime};
use redis::Commands;
use serde_json::{Value, json};

use crate::util::{InProcess, Ns, wait_for_async};

fn host() -> String {
    ah_worker::app::hostname()
}

#[tokio::test(flavor = "multi_thread")]
async fn registers_every_slot_in_both_formats() {
    let mut t = Ns::new("register");
    let w = InProcess::builtin(t.config(&["high", "low"], 2));
    let pid = std::process::id();
    let id1 = format!("{}:{pid}+1:high,low", host());
    let id2 = format!("{}:{pid}+2:high,low", host());
    wait_for_async(10, "registration", || {
        t.keys().contains(&"workers".to_string())
    })
    .await;

    let mut members: Vec<String> = t.conn.smembers(t.key("workers")).unwrap();
    members.sort();
    assert_eq!(members, [id1.clone(), id2.clone()]);

    // Ruby: worker:<id>:started is Time#to_s.
    let started: String = t.conn.get(t.key(&format!("worker:{id1}:started"))).unwrap();
    NaiveDateTime::parse_from_str(&started, "%Y-%m-%d %H:%M:%S +0000").expect(&started);
    // Ruby: heartbeat is Time#iso8601 with a numeric offset.
    let beat: String = t.conn.hget(t.key("workers:heartbeat"), &id2).unwrap();
    assert!(beat.ends_with("+00:00"), "{beat}");
    DateTime::parse_from_rfc3339(&beat).expect(&beat);
    // node-resque: worker:ping:<name> = {"time","name","queues"}.
    let name = format!("{}:{pid}+1", host());
    let ping: String = t.conn.get(t.key(&format!("worker:ping:{name}"))).unwrap();
    let ping: Value = serde_json::from_str(&ping).unwrap();
    assert_eq!(ping["name"], json!(name));
    assert_eq!(ping["queues"], json!("high,low"));
    let now = chrono::Utc::now().timestamp();
    assert!((ping["time"].as_i64().unwrap() - now).abs() < 60, "{ping}");

    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_are_refreshed() {
    let mut t = Ns::new("heartbeat");
    let mut config = t.config(&["q"], 1);
    config.heartbeat_interval = Duration::from_millis(1100);
    let w = InProcess::builtin(config);
    let name = format!("{}:{}+1", host(), std::process::id());
    let ping_key = t.key(&format!("worker:ping:{name}"));
    wait_for_async(10, "first ping", || t.conn.exists(&ping_key).unwrap()).await;
    let first: Value = serde_json::from_str(&t.conn.get::<_, String>(&ping_key).unwrap()).unwrap();
    let beat_key = t.key("workers:heartbeat");
    let first_beat: String = t.conn.hget(&beat_key, format!("{name}:q")).unwrap();
    wait_for_async(10, "a newer ping", || {
        let now: Value =
            serde_json::from_str(&t.conn.get::<_, String>(&ping_key).unwrap()).unwrap();
        now["time"].as_i64() > first["time"].as_i64()
    })
    .await;
    let beat: String = t.conn.hget(&beat_key, format!("{name}:q")).unwrap();
    assert!(
        beat > first_beat,
        "{beat} should be newer than {first_beat}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_value_of_a_running_job_is_exact() {
    let mut t = Ns::new("status");
    // Ruby's float formatting and spacing must survive byte for byte.
    let payload = r#"{"class":"AhWorker::Sleep","args":[1.0],"extra":"kept"}"#;
    t.push("slow", payload.as_bytes());
    let w = InProcess::builtin(t.config(&["slow"], 1));
    let name = format!("{}:{}+1", host(), std::process::id());
    let key = t.key(&format!("worker:{name}:slow"));
    wait_for_async(10, "status key", || t.conn.exists(&key).unwrap()).await;
    let status: String = t.conn.get(&key).unwrap();
    let run_at = &status[r#"{"queue":"slow","run_at":""#.len()..][..20];
    assert_eq!(
        status,
        format!(r#"{{"queue":"slow","run_at":"{run_at}","payload":{payload},"worker":"{name}"}}"#)
    );
    DateTime::parse_from_rfc3339(run_at).expect(run_at);
    assert!(run_at.ends_with('Z'));
    wait_for_async(10, "job done", || !t.conn.exists::<_, bool>(&key).unwrap()).await;
    assert_eq!(t.int("stat:processed"), 1);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_record_is_exact_and_stats_count() {
    let mut t = Ns::new("failure");
    let payload = r#"{"class":"AhWorker::Fail","queue":"q","args":["bad thing é"]}"#;
    t.push("q", payload.as_bytes());
    t.push("q", br#"{"class":"AhWorker::Noop","args":[]}"#);
    let w = InProcess::builtin(t.config(&["q"], 1));
    wait_for_async(10, "both jobs", || t.int("stat:processed") == 2).await;
    let name = format!("{}:{}+1", host(), std::process::id());
    let id = format!("{name}:q");
    let raw = t.list("failed");
    assert_eq!(raw.len(), 1);
    let failed_at = &raw[0][r#"{"failed_at":""#.len()..][..23];
    NaiveDateTime::parse_from_str(failed_at, "%Y/%m/%d %H:%M:%S UTC").expect(failed_at);
    assert_eq!(
        raw[0],
        format!(
            r#"{{"failed_at":"{failed_at}","payload":{payload},"exception":"RuntimeError","error":"bad thing é","backtrace":[],"worker":"{id}","queue":"q"}}"#
        )
    );
    assert_eq!(t.int("stat:failed"), 1);
    // Per-worker success counts are batched, at most a second late.
    wait_for_async(3, "the per-worker counts", || {
        t.int(&format!("stat:processed:{id}")) == 2 && t.int(&format!("stat:processed:{name}")) == 2
    })
    .await;
    assert_eq!(t.int(&format!("stat:failed:{id}")), 1);
    assert_eq!(t.int(&format!("stat:failed:{name}")), 1);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_removes_exactly_the_keys_ruby_and_node_remove() {
    let mut t = Ns::new("unregister");
    t.push("q", br#"{"class":"AhWorker::Fail","args":["x"]}"#);
    let w = InProcess::builtin(t.config(&["q"], 2));
    wait_for_async(10, "the job", || t.int("stat:processed") == 1).await;
    let name = format!("{}:{}+1", host(), std::process::id());
    let before = t.keys();
    for k in [
        format!("worker:{name}:q:started"),
        format!("worker:ping:{name}"),
        format!("stat:processed:{name}:q"),
        format!("stat:failed:{name}:q"),
        format!("stat:processed:{name}"),
        format!("stat:failed:{name}"),
        "workers".into(),
        "workers:heartbeat".into(),
    ] {
        assert!(before.contains(&k), "{k} missing while running: {before:?}");
    }
    let report = w.stop().await;
    assert!(report.left_registered.is_empty());
    assert_eq!(
        t.keys(),
        ["failed", "queues", "stat:failed", "stat:processed"],
        "only the shared keys remain"
    );
}

#[test]
fn node_resque_fixtures_agree_with_our_shapes() {
    // Captured from the real node-resque 9.7.1 (tests/node/capture-fixtures.js):
    // our status value has node's fields plus Ruby's order, and our failure
    // record has node's fields.
    let status = crate::util::fixture("node-resque-status.json");
    let node: Value = serde_json::from_str(status["raw"].as_str().unwrap()).unwrap();
    let mut fields: Vec<&String> = node.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(fields, ["payload", "queue", "run_at", "worker"]);

    let failure = crate::util::fixture("node-resque-failure.json");
    let node: Value = serde_json::from_str(failure["raw"].as_str().unwrap()).unwrap();
    let mut fields: Vec<&String> = node.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "backtrace",
            "error",
            "exception",
            "failed_at",
            "payload",
            "queue",
            "worker"
        ]
    );
}
