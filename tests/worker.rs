//! The worker loop: priority, pausing, dynamic queue lists, bad payloads,
//! panics, idle wake-up, draining.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ah_worker::handler::Registry;
use ah_worker::shutdown::{Control, StopReason};
use redis::Commands;
use serde_json::json;

use crate::util::{InProcess, Ns, wait_for_async};

/// A registry whose `Record` handler appends `queue:args[0]` to `log`.
fn recording(log: Arc<Mutex<Vec<String>>>) -> Registry {
    let mut r = Registry::with_builtin();
    r.register_fn("Record", move |job, _ctx| {
        let log = log.clone();
        async move {
            log.lock()
                .unwrap()
                .push(format!("{}:{}", job.queue, job.args[0]));
            Ok(())
        }
    });
    r
}

fn job(n: usize) -> Vec<u8> {
    format!(r#"{{"class":"Record","args":[{n}]}}"#).into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn queues_are_served_in_strict_priority_order() {
    let mut t = Ns::new("priority");
    for n in 0..20 {
        t.push("low", &job(n));
    }
    for n in 0..20 {
        t.push("high", &job(n));
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut config = t.config(&["high", "low"], 1);
    config.interval = Duration::ZERO; // drain and stop
    let report = InProcess::start(config, recording(log.clone()))
        .join()
        .await;
    assert_eq!(report.reason, StopReason::Drained);
    let log = log.lock().unwrap();
    let expected: Vec<String> = (0..20)
        .map(|n| format!("high:{n}"))
        .chain((0..20).map(|n| format!("low:{n}")))
        .collect();
    assert_eq!(*log, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn star_serves_every_queue_sorted_and_exclusions_apply() {
    let mut t = Ns::new("star");
    t.push("b", &job(1));
    t.push("a", &job(2));
    t.push("skip", &job(3));
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut config = t.config(&["*", "!skip"], 1);
    config.interval = Duration::ZERO;
    InProcess::start(config, recording(log.clone()))
        .join()
        .await;
    assert_eq!(*log.lock().unwrap(), ["a:2", "b:1"]);
    assert_eq!(t.list("queue:skip").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn star_picks_up_a_queue_that_appears_later() {
    let mut t = Ns::new("starlater");
    let log = Arc::new(Mutex::new(Vec::new()));
    let w = InProcess::start(t.config(&["*"], 2), recording(log.clone()));
    wait_for_async(10, "registration", || {
        t.keys().contains(&"workers".to_string())
    })
    .await;
    t.push("brand-new", &job(7));
    wait_for_async(10, "job from the new queue", || {
        log.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(*log.lock().unwrap(), ["brand-new:7"]);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_worker_wakes_when_a_job_arrives_not_at_the_interval() {
    let mut t = Ns::new("wake");
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut config = t.config(&["q"], 1);
    config.interval = Duration::from_secs(3600);
    let w = InProcess::start(config, recording(log.clone()));
    wait_for_async(10, "registration", || {
        t.keys().contains(&"workers".to_string())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // idle by now
    t.push("q", &job(1));
    // Far below the one-hour interval: only a blocking wake-up can do this.
    wait_for_async(10, "the job", || log.lock().unwrap().len() == 1).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_all_workers_is_honoured() {
    let mut t = Ns::new("pauseall");
    let _: () = t.conn.set(t.key("pause-all-workers"), " TRUE ").unwrap();
    t.push("q", &job(1));
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut config = t.config(&["q"], 1);
    config.interval = Duration::from_millis(200);
    let w = InProcess::start(config, recording(log.clone()));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(log.lock().unwrap().is_empty(), "ran while paused");
    assert_eq!(t.list("queue:q").len(), 1);
    let _: () = t.conn.del(t.key("pause-all-workers")).unwrap();
    wait_for_async(10, "the job after unpausing", || {
        log.lock().unwrap().len() == 1
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_and_resume_controls() {
    let mut t = Ns::new("pausectl");
    let log = Arc::new(Mutex::new(Vec::new()));
    let w = InProcess::start(t.config(&["q"], 1), recording(log.clone()));
    w.controller.send(Control::Pause);
    wait_for_async(10, "registration", || {
        t.keys().contains(&"workers".to_string())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    t.push("q", &job(1));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(log.lock().unwrap().is_empty(), "ran while paused");
    w.controller.send(Control::Resume);
    wait_for_async(10, "the job after resuming", || {
        log.lock().unwrap().len() == 1
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_payloads_become_failures_with_their_original_bytes() {
    let mut t = Ns::new("malformed");
    let bad: Vec<(&[u8], &str)> = vec![
        (b"not json", "not valid JSON"),
        (b"[1,2]", "JSON array"),
        (b"\"just a string\"", "JSON string"),
        (br#"{"args":[1]}"#, "no \"class\""),
        (br#"{"class":42,"args":[]}"#, "\"class\" is a JSON number"),
        (
            br#"{"class":"AhWorker::Noop","args":"oops"}"#,
            "\"args\" is a JSON string",
        ),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (
            br#"{"class":"No::Such","args":[]}"#,
            "No job defined for class \"No::Such\"",
        ),
    ];
    for (payload, _) in &bad {
        t.push("q", payload);
    }
    t.push("q", br#"{"class":"AhWorker::Noop","args":[]}"#);
    let mut config = t.config(&["q"], 1);
    config.interval = Duration::ZERO;
    let report = InProcess::builtin(config).join().await;
    assert_eq!(report.reason, StopReason::Drained);
    assert_eq!(
        t.int("stat:processed"),
        bad.len() as i64 + 1,
        "every job, good or bad, was processed"
    );
    assert_eq!(t.int("stat:failed"), bad.len() as i64);
    let failures = t.failures();
    assert_eq!(failures.len(), bad.len());
    for ((payload, says), f) in bad.iter().zip(&failures) {
        assert!(
            f["error"].as_str().unwrap().contains(says),
            "{f} should say {says}"
        );
        let expected_exception = if says.starts_with("No job") {
            "AhWorker::UnknownClass"
        } else {
            "AhWorker::MalformedPayload"
        };
        assert_eq!(f["exception"], json!(expected_exception));
        assert_eq!(f["queue"], json!("q"));
        // The original bytes are all there.
        let kept: Vec<u8> = match std::str::from_utf8(payload) {
            Ok(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(v) => {
                    assert_eq!(f["payload"], v);
                    continue;
                }
                Err(_) => f["payload"].as_str().unwrap().as_bytes().to_vec(),
            },
            Err(_) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(f["payload"].as_str().unwrap())
                    .unwrap()
            }
        };
        assert_eq!(&kept, payload);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_handler_fails_its_job_and_the_slot_lives_on() {
    let mut t = Ns::new("panic");
    let mut r = Registry::with_builtin();
    r.register_fn("Explode", |_job, _ctx| async { panic!("kaboom") });
    t.push("q", br#"{"class":"Explode","args":[]}"#);
    t.push("q", br#"{"class":"AhWorker::Noop","args":[]}"#);
    let mut config = t.config(&["q"], 1);
    config.interval = Duration::ZERO;
    InProcess::start(config, r).join().await;
    let f = t.failures();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["exception"], json!("AhWorker::Panic"));
    assert_eq!(f[0]["error"], json!("kaboom"));
    assert_eq!(t.int("stat:processed"), 2, "the slot ran the next job");
}

#[tokio::test(flavor = "multi_thread")]
async fn slots_run_jobs_concurrently() {
    let mut t = Ns::new("concurrent");
    for _ in 0..4 {
        t.push("q", br#"{"class":"AhWorker::Sleep","args":[1]}"#);
    }
    let w = InProcess::builtin(t.config(&["q"], 4));
    wait_for_async(10, "four status keys at once", || {
        let keys = t.keys();
        keys.iter()
            .filter(|k| k.starts_with("worker:") && k.ends_with(":q") && !k.contains("ping"))
            .count()
            == 4
    })
    .await;
    wait_for_async(10, "all done", || t.int("stat:processed") == 4).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn actionhero7_object_args_reach_the_handler_as_one_argument() {
    let mut t = Ns::new("ah7args");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut r = Registry::new();
    let s = seen.clone();
    r.register_fn("runAction", move |job, _ctx| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(serde_json::Value::Array(job.args));
            Ok(())
        }
    });
    t.push(
        "default",
        br#"{"class":"runAction","queue":"default","args":{"action":"x"}}"#,
    );
    t.push(
        "default",
        br#"{"class":"runAction","args":[{"action":"y"}]}"#,
    );
    let mut config = t.config(&["default"], 1);
    config.interval = Duration::ZERO;
    InProcess::start(config, r).join().await;
    assert_eq!(
        *seen.lock().unwrap(),
        [json!([{"action": "x"}]), json!([{"action": "y"}])]
    );
}
