//! The admin CLI (`status`, `failed`, `workers`) against a populated Redis:
//! failures written by Ruby's format, by ah-worker and by the real
//! node-resque, a busy ah-worker process, a node-resque worker, a dead
//! ah-worker registration and a stale Ruby one. Text output and `--json`.

use std::process::{Child, Output, Stdio};

use ah_worker::resque::admin::{FailedTarget, PAGE};
use redis::Commands;
use serde_json::{Value, json};

use crate::recovery::plant_dead_worker;
use crate::util::{Ns, signal, wait_for, wait_output};

/// A failure record exactly as Ruby Resque 3 writes one (its field order;
/// the float as Ruby prints it, which serde_json would print as `1e20`).
const RUBY_RECORD: &str = r#"{"failed_at":"2026/11/30 03:49:06 UTC","payload":{"class":"FailJob","args":["x",1.0e+20]},"exception":"ArgumentError","error":"bad thing é","backtrace":["run1.rb:5:in `perform'"],"worker":"vm:9192:high,low","queue":"low"}"#;
const RUBY_PAYLOAD: &str = r#"{"class":"FailJob","args":["x",1.0e+20]}"#;
/// What node-resque's enqueue writes for the job its worker then fails.
const NODE_PAYLOAD: &str = r#"{"class":"Missing::Job","queue":"nodeq","args":[1,{"a":"é"}]}"#;
const OURS_PAYLOAD: &str = r#"{"class":"AhWorker::Fail","args":["from ah-worker"]}"#;
const LIVE_HOST: &str = "live-host";

/// Run an admin command; the CLI takes a process silent for 30 s for dead.
fn admin(t: &Ns, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = t.bin();
    c.args(args).env("AH_WORKER_DEAD_AFTER", "30s");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Its stdout, asserting it succeeded.
fn text(t: &Ns, args: &[&str]) -> String {
    let o = admin(t, args, &[]);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Its `--json` output, parsed.
fn json_of(t: &Ns, args: &[&str]) -> Value {
    let out = text(t, &[args, &["--json"]].concat());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed {out:?}: {e}"))
}

/// The line whose words start with `words`.
fn line_starting<'a>(out: &'a str, words: &[&str]) -> &'a str {
    out.lines()
        .find(|l| {
            l.split_whitespace()
                .take(words.len())
                .eq(words.iter().copied())
        })
        .unwrap_or_else(|| panic!("no line starting {words:?} in:\n{out}"))
}

/// A process killed when dropped, so a failing test leaves nothing running.
struct Running(Option<Child>);

impl Running {
    fn stop(mut self) -> Output {
        let child = self.0.take().unwrap();
        signal(&child, "TERM");
        wait_output(child, 30)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Three failures in `failed`, oldest first: Ruby's record (index 0), one
/// of ah-worker's (1), one of node-resque's worker (2).
fn three_failures(t: &mut Ns) {
    let _: () = t.conn.rpush(t.key("failed"), RUBY_RECORD).unwrap();
    t.push("fast", OURS_PAYLOAD.as_bytes());
    let o = t
        .bin()
        .args(["--queues", "fast", "--interval", "0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    t.node(&["enqueue", "nodeq", "Missing::Job", r#"[1,{"a":"é"}]"#]);
    let o = t
        .node_cmd(&["worker", "nodeq", "node-peer:1"])
        .env("PEER_IDLE_MS", "300")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(t.list("failed").len(), 3);
}

/// An ah-worker process (host name `live-host`, never taking others for
/// dead) busy with a long `AhWorker::Sleep`. Returns it and its worker id.
fn busy_worker(t: &mut Ns) -> (Running, String) {
    t.push("slow", br#"{"class":"AhWorker::Sleep","args":[120]}"#);
    let child = t
        .bin()
        .args(["--queues", "slow", "-c", "1", "--shutdown-timeout", "100ms"])
        .env("AH_WORKER_HOST_NAME", LIVE_HOST)
        .env("AH_WORKER_DEAD_AFTER", "1h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = format!("{LIVE_HOST}:{}+1:slow", child.id());
    let status = t.key(&format!("worker:{id}"));
    wait_for(20, "the sleep job to start", || {
        t.conn.exists(&status).unwrap()
    });
    (Running(Some(child)), id)
}

/// An ah-worker process on another host whose last beat was `age_ms` ago,
/// its one slot holding `job` from queue `dead-q`. Returns the slot's id.
fn dead_worker(t: &mut Ns, host: &str, job: &str, age_ms: i64) -> String {
    let beat = chrono::Utc::now().timestamp_millis() - age_ms;
    plant_dead_worker(t, host, 4242, "dead-q", job, beat)
}

/// A Ruby worker whose heartbeat stopped long ago.
fn stale_ruby_worker(t: &mut Ns) -> &'static str {
    let id = "rubyhost:99:low";
    let _: () = t.conn.sadd(t.key("workers"), id).unwrap();
    let _: () = t
        .conn
        .hset(t.key("workers:heartbeat"), id, "2020-01-01T00:00:00+00:00")
        .unwrap();
    id
}

#[test]
fn status_shows_queues_workers_failures_stats_delayed_and_the_leader() {
    let mut t = Ns::new("admstatus");
    three_failures(&mut t);
    t.push("high", br#"{"class":"A","args":[]}"#);
    t.push("high", br#"{"class":"A","args":[]}"#);
    t.push("default", br#"{"class":"B","args":[]}"#);
    let (live, live_id) = busy_worker(&mut t);
    let dead_id = dead_worker(&mut t, "gone-host", r#"{"class":"X","args":[]}"#, 120_000);
    stale_ruby_worker(&mut t);
    let at_ms = (chrono::Utc::now().timestamp() + 3600) * 1000;
    t.node(&["enqueue-at", &at_ms.to_string(), "later", "Report", "[42]"]);
    let _: () = t
        .conn
        .set(t.key("resque_scheduler_leader_lock"), "sched-host:77")
        .unwrap();

    let queues = ["--queues", "high,default,slow"];
    let out = text(&t, &[&["status"][..], &queues].concat());
    // This config's priority order first, then the other known queues.
    let order: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("PRIORITY"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(order, ["high", "default", "slow", "fast", "nodeq"], "{out}");
    line_starting(&out, &["1", "high", "2"]);
    line_starting(&out, &["2", "default", "1"]);
    line_starting(&out, &["-", "nodeq", "0"]);
    assert!(
        out.contains("Workers    3 registered: 1 busy, 0 idle, 1 dead, 1 stale"),
        "{out}"
    );
    let busy = line_starting(&out, &[&live_id]);
    assert!(
        busy.contains("slow") && busy.contains("AhWorker::Sleep [120]"),
        "{busy}"
    );
    assert!(out.contains("Failed     3\n"), "{out}");
    let stats = format!(
        "Stats      {} processed, {} failed",
        t.int("stat:processed"),
        t.int("stat:failed")
    );
    assert!(out.contains(&stats), "{stats} in:\n{out}");
    assert!(
        out.contains("Delayed    1 job at 1 time, next at "),
        "{out}"
    );
    assert!(out.contains("Scheduler  leader sched-host:77"), "{out}");

    let s = json_of(&t, &[&["status"][..], &queues].concat());
    assert_eq!(s["namespace"], json!(t.ns));
    assert_eq!(
        s["queues"],
        json!([
            {"name": "high", "depth": 2, "priority": 1},
            {"name": "default", "depth": 1, "priority": 2},
            {"name": "slow", "depth": 0, "priority": 3},
            {"name": "fast", "depth": 0, "priority": null},
            {"name": "nodeq", "depth": 0, "priority": null},
        ])
    );
    assert_eq!(
        s["workers"],
        json!({"total": 3, "busy": 1, "idle": 0, "dead": 1, "stale": 1})
    );
    assert_eq!(s["working"].as_array().unwrap().len(), 1);
    assert_eq!(s["working"][0]["worker"], json!(live_id));
    assert_eq!(s["working"][0]["queue"], json!("slow"));
    assert_eq!(s["working"][0]["class"], json!("AhWorker::Sleep"));
    assert_eq!(s["working"][0]["args"], json!([120]));
    assert!(s["working"][0]["since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(s["failed"], json!(3));
    assert_eq!(
        s["stats"],
        json!({"processed": t.int("stat:processed"), "failed": t.int("stat:failed")})
    );
    assert_eq!(s["delayed"]["jobs"], json!(1));
    assert_eq!(s["delayed"]["times"], json!(1));
    let next = chrono::DateTime::from_timestamp((at_ms as f64 / 1000.0).round() as i64, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(s["delayed"]["next"], json!(next));
    assert_eq!(
        s["scheduler"],
        json!({"leader": "sched-host:77", "ruby_master": null})
    );
    assert_eq!(s["paused"], json!(false));
    // Looking changed nothing: the dead one is still there for `prune`.
    assert!(
        t.conn
            .sismember::<_, _, bool>(t.key("workers"), &dead_id)
            .unwrap()
    );
    live.stop();
}

#[test]
fn failed_list_reads_ruby_ah_worker_and_node_resque_records() {
    let mut t = Ns::new("admlist");
    three_failures(&mut t);
    let out = text(&t, &["failed", "list"]);
    let ruby = line_starting(&out, &["0", "2026-11-30", "03:49:06", "low", "FailJob"]);
    assert!(ruby.ends_with("ArgumentError: bad thing é"), "{ruby}");
    // Index, date, time, queue, class, then the error.
    let cells = |line: &str| -> Vec<String> {
        line.split_whitespace().take(5).map(str::to_owned).collect()
    };
    let ours = line_starting(&out, &["1"]);
    assert_eq!(cells(ours)[3..], ["fast", "AhWorker::Fail"], "{ours}");
    assert!(ours.ends_with("RuntimeError: from ah-worker"), "{ours}");
    let node = line_starting(&out, &["2"]);
    assert_eq!(cells(node)[3..], ["nodeq", "Missing::Job"], "{node}");
    assert!(
        node.ends_with(r#"Error: No job defined for class "Missing::Job""#),
        "{node}"
    );
    assert!(out.ends_with("3 entries\n"), "{out}");

    let l = json_of(&t, &["failed", "list"]);
    assert_eq!(
        (&l["total"], &l["matched"], &l["offset"]),
        (&json!(3), &json!(3), &json!(0))
    );
    let e = &l["entries"];
    assert_eq!(e[0]["index"], json!(0));
    assert_eq!(e[0]["failed_at"], json!("2026-11-30T03:49:06Z"));
    assert_eq!(e[0]["queue"], json!("low"));
    assert_eq!(e[0]["class"], json!("FailJob"));
    assert_eq!(e[0]["exception"], json!("ArgumentError"));
    assert_eq!(e[0]["error"], json!("bad thing é"));
    assert_eq!(e[0]["worker"], json!("vm:9192:high,low"));
    assert_eq!(e[0]["backtrace"], json!(["run1.rb:5:in `perform'"]));
    assert_eq!(e[0]["retried_at"], json!(null));
    assert!(e[0].get("unreadable").is_none());
    // The payload is embedded exactly as recorded.
    let text_out = text(&t, &["failed", "list", "--json"]);
    assert!(text_out.contains(RUBY_PAYLOAD), "{text_out}");
    assert_eq!(e[1]["exception"], json!("RuntimeError"));
    assert_eq!(
        e[1]["payload"],
        serde_json::from_str::<Value>(OURS_PAYLOAD).unwrap()
    );
    assert_eq!(e[2]["worker"], json!("node-peer:1"));
    assert_eq!(
        e[2]["payload"],
        serde_json::from_str::<Value>(NODE_PAYLOAD).unwrap()
    );
    // node-resque writes Date#toString; it reads back as an RFC 3339 time.
    assert!(
        chrono::DateTime::parse_from_rfc3339(e[2]["failed_at"].as_str().unwrap()).is_ok(),
        "{}",
        e[2]["failed_at"]
    );

    // Filters (globs) and paging.
    let l = json_of(&t, &["failed", "list", "--class", "*Job*"]);
    let idx: Vec<&Value> = l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["index"])
        .collect();
    assert_eq!(
        (idx, &l["matched"]),
        (vec![&json!(0), &json!(2)], &json!(2))
    );
    let l = json_of(&t, &["failed", "list", "--queue", "fast"]);
    assert_eq!(l["entries"][0]["class"], json!("AhWorker::Fail"));
    assert_eq!(l["matched"], json!(1));
    let l = json_of(&t, &["failed", "list", "--limit", "1", "--offset", "1"]);
    assert_eq!(l["entries"].as_array().unwrap().len(), 1);
    assert_eq!(l["entries"][0]["index"], json!(1));
    let out = text(&t, &["failed", "list", "--limit", "1", "--offset", "1"]);
    assert!(
        out.ends_with("entries 2–2 of 3; --offset 2 for more\n"),
        "{out}"
    );
    let out = text(&t, &["failed", "list", "--class", "Fail*"]);
    assert!(out.ends_with("1 entry\n"), "{out}");
}

#[test]
fn failed_show_prints_one_entry_in_full() {
    let mut t = Ns::new("admshow");
    let long = "x".repeat(300);
    let record = json!({
        "failed_at": "2026/11/30 03:49:06 UTC",
        "payload": {"class": "Mail::Send", "args": [{"to": "a@b"}]},
        "exception": "Net::Timeout", "error": long,
        "backtrace": ["mail.rb:10:in `deliver'", "job.rb:3:in `perform'"],
        "worker": "vm:1:mail", "queue": "mail",
        "retried_at": "2026/11/30 04:00:00 UTC"
    });
    let _: () = t.conn.rpush(t.key("failed"), record.to_string()).unwrap();
    let out = admin(&t, &["failed", "show", "0"], &[("COLUMNS", "40")]);
    let out = String::from_utf8(out.stdout).unwrap();
    // In full: no line is cut, whatever the width.
    assert!(out.contains(&format!("error      {long}\n")), "{out}");
    assert!(out.contains("class      Mail::Send\n"), "{out}");
    assert!(
        out.contains("retried at 2026/11/30 04:00:00 UTC\n"),
        "{out}"
    );
    assert!(
        out.contains("backtrace\n  mail.rb:10:in `deliver'\n  job.rb:3:in `perform'\n"),
        "{out}"
    );
    assert!(
        out.contains("payload\n  {\n    \"class\": \"Mail::Send\","),
        "{out}"
    );

    let s = json_of(&t, &["failed", "show", "0"]);
    assert_eq!(s["error"], json!(long));
    assert_eq!(s["payload"], record["payload"]);
    assert_eq!(s["retried_at"], json!("2026-11-30T04:00:00Z"));
}

#[test]
fn failed_retry_pushes_the_recorded_payload_bytes_and_removes_the_entry() {
    let mut t = Ns::new("admretry");
    three_failures(&mut t);
    let stats = (t.int("stat:processed"), t.int("stat:failed"));
    let before = t.list("failed");

    // By index: node-resque's entry goes back to nodeq as node enqueued it.
    let out = text(&t, &["failed", "retry", "2"]);
    assert_eq!(
        out,
        "retried 1 entry (payloads pushed back onto their queues)\n"
    );
    assert_eq!(t.list("queue:nodeq"), [NODE_PAYLOAD]);
    assert_eq!(t.list("failed"), before[..2]);

    // --all with a filter: only the Ruby one (its float kept as Ruby wrote it).
    let r = json_of(&t, &["failed", "retry", "--all", "--class", "FailJob"]);
    assert_eq!(
        r,
        json!({"action": "retry", "matched": 1, "done": 1, "gone": 0, "skipped": []})
    );
    assert_eq!(t.list("queue:low"), [RUBY_PAYLOAD]);
    assert_eq!(t.list("failed"), [before[1].clone()]);
    let queues: Vec<String> = t.conn.smembers(t.key("queues")).unwrap();
    assert!(queues.contains(&"low".to_owned()), "{queues:?}");

    // An entry that is no failure record is skipped, never dropped.
    let _: () = t.conn.rpush(t.key("failed"), "garbage").unwrap();
    let r = json_of(&t, &["failed", "retry", "--all"]);
    assert_eq!(r["done"], json!(1));
    assert_eq!(
        r["skipped"],
        json!([{"index": 1, "reason": "the entry is not a failure record"}])
    );
    assert_eq!(t.list("queue:fast"), [OURS_PAYLOAD]);
    assert_eq!(t.list("failed"), ["garbage"]);
    // Retrying counts nothing: the stats are the workers'.
    assert_eq!((t.int("stat:processed"), t.int("stat:failed")), stats);

    // A missing index is reported, not an error.
    let r = json_of(&t, &["failed", "retry", "7"]);
    assert_eq!(
        r,
        json!({"action": "retry", "matched": 0, "done": 0, "gone": 0,
               "skipped": [{"index": 7, "reason": "no entry at this index"}]})
    );
}

#[test]
fn failed_remove_and_clear_change_exactly_the_list() {
    let mut t = Ns::new("admremove");
    three_failures(&mut t);
    let before = t.list("failed");
    let out = text(&t, &["failed", "remove", "0", "2"]);
    assert_eq!(out, "removed 2 entries\n");
    assert_eq!(t.list("failed"), [before[1].clone()]);
    assert!(t.list("queue:low").is_empty() && t.list("queue:nodeq").is_empty());

    for _ in 0..3 {
        let _: () = t.conn.rpush(t.key("failed"), RUBY_RECORD).unwrap();
    }
    let r = json_of(&t, &["failed", "remove", "--all", "--queue", "l*"]);
    assert_eq!(
        r,
        json!({"action": "remove", "matched": 3, "done": 3, "gone": 0, "skipped": []})
    );
    assert_eq!(t.list("failed"), [before[1].clone()]);

    let r = json_of(&t, &["failed", "clear"]);
    assert_eq!(
        r,
        json!({"action": "clear", "matched": 1, "done": 1, "gone": 0, "skipped": []})
    );
    assert!(!t.keys().contains(&"failed".to_owned()));
    assert_eq!(text(&t, &["failed", "list"]), "no failed jobs\n");
}

#[tokio::test]
async fn a_failed_move_is_atomic_per_entry_when_the_list_moves_under_it() {
    let mut t = Ns::new("admatomic");
    let records: Vec<String> = (0..6)
        .map(|i| RUBY_RECORD.replace(r#""x""#, &format!(r#""x{i}""#)))
        .collect();
    for r in &records {
        let _: () = t.conn.rpush(t.key("failed"), r).unwrap();
    }
    let store = ah_worker::resque::Store::connect(&t.target(), &t.ns)
        .await
        .unwrap();
    let window = store.failed_range(0, PAGE).await.unwrap();
    let retry = |i: usize| FailedTarget {
        offset: i,
        retry: Some(("low".into(), format!("payload-{i}").into_bytes())),
    };
    // Someone else removes entry 0 and retries entry 3 after we read.
    let _: () = t.conn.lrem(t.key("failed"), 1, &records[0]).unwrap();
    let _: () = t.conn.lrem(t.key("failed"), 1, &records[3]).unwrap();
    let applied = store
        .failed_apply(0, &window, &[retry(1), retry(3), retry(4)], "tomb")
        .await
        .unwrap();
    assert!(!applied.intact);
    assert_eq!(
        applied.done, 2,
        "the entry already gone is not retried again"
    );
    assert_eq!(t.list("queue:low"), ["payload-1", "payload-4"]);
    assert_eq!(
        t.list("failed"),
        [records[2].clone(), records[5].clone()],
        "exactly the targets left, nothing else"
    );
    // An intact window: one step, the entries leave as their payloads land.
    let window = store.failed_range(0, PAGE).await.unwrap();
    let applied = store
        .failed_apply(
            0,
            &window,
            &[FailedTarget {
                offset: 1,
                retry: None,
            }],
            "tomb",
        )
        .await
        .unwrap();
    assert!(applied.intact && applied.done == 1);
    assert_eq!(t.list("failed"), [records[2].clone()]);
}

#[test]
fn bulk_operations_page_through_a_long_list() {
    let mut t = Ns::new("admbulk");
    let n = PAGE * 2 + 17;
    let mut cmd = redis::cmd("RPUSH");
    cmd.arg(t.key("failed"));
    for i in 0..n {
        let class = if i % 3 == 0 { "Keep" } else { "Go" };
        cmd.arg(
            json!({"payload": {"class": class, "args": [i]}, "queue": "q", "exception": "E"})
                .to_string(),
        );
    }
    let _: () = cmd.query(&mut t.conn).unwrap();
    let r = json_of(&t, &["failed", "retry", "--all", "--class", "Go"]);
    let going = (0..n).filter(|i| i % 3 != 0).count();
    assert_eq!((&r["matched"], &r["done"]), (&json!(going), &json!(going)));
    let queued: Vec<i64> = t
        .list("queue:q")
        .iter()
        .map(|p| {
            serde_json::from_str::<Value>(p).unwrap()["args"][0]
                .as_i64()
                .unwrap()
        })
        .collect();
    let want: Vec<i64> = (0..n as i64).filter(|i| i % 3 != 0).collect();
    assert_eq!(queued, want, "each once, in the list's order");
    assert_eq!(t.list("failed").len(), n - going);
}

#[test]
fn workers_lists_every_peer_with_its_state_and_job() {
    let mut t = Ns::new("admworkers");
    let (live, live_id) = busy_worker(&mut t);
    let dead_id = dead_worker(&mut t, "gone-host", r#"{"class":"X","args":[]}"#, 120_000);
    let ruby_id = stale_ruby_worker(&mut t);
    let node = t
        .node_cmd(&["worker", "nodeidle", "node-peer:2"])
        .env("PEER_IDLE_MS", "60000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let node = Running(Some(node));
    let node_id = "node-peer:2:nodeidle";
    wait_for(20, "the node worker to register", || {
        t.conn.sismember(t.key("workers"), node_id).unwrap()
    });

    let out = text(&t, &["workers"]);
    let words = |id: &str| -> Vec<String> {
        line_starting(&out, &[id])
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(words(&live_id)[1..3], ["ah-worker", "busy"]);
    assert!(line_starting(&out, &[&live_id]).ends_with("AhWorker::Sleep [120]"));
    assert_eq!(words(&dead_id)[1..3], ["ah-worker", "dead"]);
    assert_eq!(words(ruby_id)[1..3], ["resque", "stale"]);
    assert_eq!(words(node_id)[1..3], ["node-resque", "idle"]);
    assert!(
        out.contains("4 registered: 1 busy, 1 idle, 1 dead, 1 stale\n"),
        "{out}"
    );
    assert!(out.contains("`ah-worker workers prune`"), "{out}");

    let w = json_of(&t, &["workers"]);
    let all = w["workers"].as_array().unwrap();
    let by_id = |id: &str| all.iter().find(|v| v["id"] == json!(id)).unwrap().clone();
    let live_pid = live.0.as_ref().unwrap().id();
    let l = by_id(&live_id);
    assert_eq!(
        (&l["host"], &l["pid"], &l["queues"], &l["kind"], &l["state"]),
        (
            &json!(LIVE_HOST),
            &json!(live_pid),
            &json!(["slow"]),
            &json!("ah-worker"),
            &json!("busy")
        )
    );
    assert_eq!(l["job"]["class"], json!("AhWorker::Sleep"));
    assert_eq!(l["job"]["queue"], json!("slow"));
    assert_eq!(l["job"]["args"], json!([120]));
    for field in ["started", "heartbeat"] {
        let t = l[field].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(t).is_ok(),
            "{field}: {t}"
        );
    }
    let d = by_id(&dead_id);
    assert_eq!(
        (&d["state"], &d["job"]["class"]),
        (&json!("dead"), &json!("X"))
    );
    let r = by_id(ruby_id);
    assert_eq!(
        (&r["kind"], &r["state"], &r["heartbeat"], &r["job"]),
        (
            &json!("resque"),
            &json!("stale"),
            &json!("2020-01-01T00:00:00Z"),
            &json!(null)
        )
    );
    let n = by_id(node_id);
    assert_eq!(
        (&n["kind"], &n["state"], &n["host"]),
        (&json!("node-resque"), &json!("idle"), &json!("node-peer"))
    );

    // Fits the width it is given; long cells end with "…".
    let narrow = String::from_utf8(admin(&t, &["workers"], &[("COLUMNS", "60")]).stdout).unwrap();
    assert!(narrow.lines().all(|l| l.chars().count() <= 60), "{narrow}");
    assert!(narrow.contains('…'), "{narrow}");
    node.stop();
    live.stop();
}

#[test]
fn workers_prune_removes_only_dead_ones_and_recovers_their_jobs() {
    let mut t = Ns::new("admprune");
    let (live, live_id) = busy_worker(&mut t);
    let ruby_id = stale_ruby_worker(&mut t);
    t.push("dead-q", br#"{"class":"AhWorker::Noop","args":["queued"]}"#);
    let job = r#"{"class":"AhWorker::Noop","args":["was running", 1.0e+20]}"#;
    let dead_id = dead_worker(&mut t, "gone-host", job, 120_000);
    // Silent for 10 s only: alive by the 30 s rule.
    let recent_id = {
        let beat = chrono::Utc::now().timestamp_millis() - 10_000;
        plant_dead_worker(
            &mut t,
            "quiet-host",
            77,
            "dead-q",
            r#"{"class":"Y","args":[]}"#,
            beat,
        )
    };

    let out = text(&t, &["workers", "prune"]);
    assert_eq!(
        out,
        format!(
            "pruned {dead_id}: its AhWorker::Noop job put back at the head of dead-q\n\
             1 registration removed, 1 job recovered\n\
             1 stale worker of other peers left alone (Ruby and node-resque prune their own)\n"
        )
    );
    // Its job is first in its queue again, byte for byte.
    assert_eq!(
        t.list("queue:dead-q"),
        [job, r#"{"class":"AhWorker::Noop","args":["queued"]}"#]
    );
    let members: Vec<String> = t.conn.smembers(t.key("workers")).unwrap();
    assert!(!members.contains(&dead_id));
    for kept in [&live_id, &recent_id, &ruby_id.to_owned()] {
        assert!(members.contains(kept), "{kept} was removed");
    }
    let keys = t.keys();
    for gone in [
        format!("worker:{dead_id}"),
        format!("worker:{dead_id}:started"),
    ] {
        assert!(!keys.contains(&gone), "{gone} left behind");
    }
    let beats: Vec<String> = t.conn.hkeys(t.key("workers:heartbeat")).unwrap();
    assert!(!beats.contains(&dead_id));
    let processes: Vec<String> = t.conn.hkeys(t.key("ah-worker:processes")).unwrap();
    assert!(
        !processes.contains(&"gone-host:4242".to_owned()),
        "{processes:?}"
    );
    // The live worker still holds its job.
    assert!(t.keys().contains(&format!("worker:{live_id}")));
    assert!(t.failures().is_empty());

    // Nothing left to prune.
    let p = json_of(&t, &["workers", "prune"]);
    assert_eq!(p, json!({"pruned": [], "stale_left": 1}));

    // With dead_worker_jobs = fail, the job becomes a DirtyExit failure.
    let dead2 = dead_worker(
        &mut t,
        "gone-host-2",
        r#"{"class":"Z","args":[2]}"#,
        120_000,
    );
    let mut c = t.bin();
    c.args(["workers", "prune", "--json"])
        .env("AH_WORKER_DEAD_AFTER", "30s")
        .env("AH_WORKER_DEAD_WORKER_JOBS", "fail");
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        p,
        json!({"pruned": [{"worker": dead2, "job": {"queue": "dead-q", "class": "Z", "outcome": "failed"}}],
               "stale_left": 1})
    );
    let f = t.failures();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["exception"], json!("Resque::DirtyExit"));
    assert_eq!(f[0]["worker"], json!(dead2));
    assert_eq!(f[0]["payload"], json!({"class": "Z", "args": [2]}));
    live.stop();
}

#[test]
fn errors_are_one_line_usage_errors_exit_2_and_a_closed_pipe_is_none() {
    let mut t = Ns::new("admerrors");
    let _: () = t.conn.rpush(t.key("failed"), RUBY_RECORD).unwrap();
    let o = admin(&t, &["failed", "show", "5"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "ah-worker: error: no failed entry at index 5 (the list has 1 entry)\n"
    );
    assert!(o.stdout.is_empty());
    for usage in [
        &["failed", "retry"][..],
        &["failed", "remove", "1", "--class", "X"],
        &["failed", "list", "--limit", "many"],
        &["workers", "purge"],
    ] {
        let o = admin(&t, usage, &[]);
        assert_eq!(o.status.code(), Some(2), "{usage:?}");
    }
    assert_eq!(t.list("failed"), [RUBY_RECORD], "nothing was touched");

    // A reader that stops early (`| head`) ends the output quietly: more
    // than a pipe's buffer, so the writer does meet the closed pipe.
    let mut cmd = redis::cmd("RPUSH");
    cmd.arg(t.key("failed"));
    for _ in 0..3000 {
        cmd.arg(RUBY_RECORD);
    }
    let _: () = cmd.query(&mut t.conn).unwrap();
    let mut child = t
        .bin()
        .args(["failed", "list", "--all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.contains("FAILED AT"), "{first}");
    let o = wait_output(child, 30);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn failed_list_fits_the_terminal_width() {
    let mut t = Ns::new("admwidth");
    let record = json!({
        "failed_at": "2026/11/30 03:49:06 UTC",
        "payload": {"class": "Very::Long::Module::Path::To::A::Job::Class", "args": []},
        "exception": "RuntimeError", "error": "e".repeat(200), "queue": "q"
    });
    let _: () = t.conn.rpush(t.key("failed"), record.to_string()).unwrap();
    for cols in ["60", "100"] {
        let o = admin(&t, &["failed", "list"], &[("COLUMNS", cols)]);
        let out = String::from_utf8(o.stdout).unwrap();
        let max: usize = cols.parse().unwrap();
        assert!(out.lines().all(|l| l.chars().count() <= max), "{out}");
        assert!(line_starting(&out, &["0"]).ends_with('…'), "{out}");
    }
    // Piped without COLUMNS: nothing is cut.
    assert!(text(&t, &["failed", "list"]).contains(&"e".repeat(200)));
}
