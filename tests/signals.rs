//! Signals sent to the real binary, with their outcomes asserted in Redis.

use std::process::{Child, Stdio};

use redis::Commands;
use serde_json::json;

use crate::util::{Ns, signal, wait_for, wait_output};

fn spawn(t: &Ns, args: &[&str]) -> Child {
    t.bin()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn running_status(t: &mut Ns, pid: u32) -> Option<String> {
    let key = t.keys().into_iter().find(|k| {
        k.starts_with("worker:")
            && k.contains(&format!(":{pid}+"))
            && !k.ends_with(":started")
            && !k.contains("ping")
    })?;
    t.conn.get(t.key(&key)).ok()
}

/// Start a one-slot worker on queue `q` with `grace` as its shutdown
/// timeout and wait until its first job runs.
fn start_one_job(t: &mut Ns, grace: &str) -> Child {
    let child = spawn(
        t,
        &[
            "--queues",
            "q",
            "--concurrency",
            "1",
            "--shutdown-timeout",
            grace,
        ],
    );
    let pid = child.id();
    wait_for(10, "the job to start", || running_status(t, pid).is_some());
    child
}

const SLEEP_30: &str = r#"{"class":"AhWorker::Sleep","args":[30]}"#;

fn stop_puts_back(sig: &str) {
    let mut t = Ns::new(&format!("stop{sig}"));
    t.push("q", SLEEP_30.as_bytes());
    t.push("q", br#"{"class":"AhWorker::Noop","args":["second"]}"#);
    let child = start_one_job(&mut t, "1s");
    signal(&child, sig);
    let out = wait_output(child, 15);
    assert!(
        out.status.success(),
        "exit: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Back at the head, ahead of the job that was queued behind it, bytes intact.
    assert_eq!(
        t.list("queue:q"),
        [SLEEP_30, r#"{"class":"AhWorker::Noop","args":["second"]}"#]
    );
    assert!(t.failures().is_empty(), "put back, never failed");
    assert_eq!(t.int("stat:processed"), 0);
    let members: Vec<String> = t.conn.smembers(t.key("workers")).unwrap();
    assert!(members.is_empty(), "unregistered: {members:?}");
    assert_eq!(t.keys(), ["queue:q", "queues"]);
}

#[test]
fn term_puts_a_job_still_running_at_the_deadline_back_at_the_head() {
    stop_puts_back("TERM");
}

#[test]
fn int_puts_a_job_still_running_at_the_deadline_back_at_the_head() {
    stop_puts_back("INT");
}

#[test]
fn term_lets_a_short_job_finish_within_the_timeout() {
    let mut t = Ns::new("termfinish");
    t.push("q", br#"{"class":"AhWorker::Sleep","args":[1]}"#);
    let child = start_one_job(&mut t, "20s");
    signal(&child, "TERM");
    let out = wait_output(child, 20);
    assert!(out.status.success());
    assert_eq!(t.int("stat:processed"), 1);
    assert!(t.list("queue:q").is_empty());
    assert!(t.failures().is_empty());
}

#[test]
fn quit_finishes_running_jobs_past_the_shutdown_timeout() {
    let mut t = Ns::new("quit");
    t.push("q", br#"{"class":"AhWorker::Sleep","args":[2]}"#);
    t.push("q", br#"{"class":"AhWorker::Noop","args":[]}"#);
    let child = start_one_job(&mut t, "0");
    signal(&child, "QUIT");
    let out = wait_output(child, 20);
    assert!(out.status.success());
    assert_eq!(t.int("stat:processed"), 1, "the running job finished");
    assert_eq!(t.list("queue:q").len(), 1, "no new job was taken");
    assert!(t.failures().is_empty());
}

#[test]
fn usr1_cancels_running_jobs_records_them_and_carries_on() {
    let mut t = Ns::new("usr1");
    t.push("q", SLEEP_30.as_bytes());
    let child = spawn(&t, &["--queues", "q", "--concurrency", "1"]);
    let pid = child.id();
    wait_for(10, "the job to start", || {
        running_status(&mut t, pid).is_some()
    });
    signal(&child, "USR1");
    wait_for(10, "the cancellation to be recorded", || {
        t.list("failed").len() == 1
    });
    let f = &t.failures()[0];
    assert_eq!(f["exception"], json!("Resque::DirtyExit"));
    assert_eq!(
        f["payload"],
        serde_json::from_str::<serde_json::Value>(SLEEP_30).unwrap()
    );
    // Carries on with the next job.
    t.push("q", br#"{"class":"AhWorker::Noop","args":[]}"#);
    wait_for(10, "the next job", || t.int("stat:processed") == 2);
    signal(&child, "TERM");
    assert!(wait_output(child, 15).status.success());
}

#[test]
fn usr2_pauses_and_cont_resumes() {
    let mut t = Ns::new("usr2");
    let child = spawn(&t, &["--queues", "q", "--concurrency", "1"]);
    wait_for(10, "registration", || {
        t.keys().contains(&"workers".to_string())
    });
    signal(&child, "USR2");
    std::thread::sleep(std::time::Duration::from_millis(300));
    t.push("q", br#"{"class":"AhWorker::Noop","args":[]}"#);
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(t.list("queue:q").len(), 1, "a paused worker takes nothing");
    signal(&child, "CONT");
    wait_for(10, "the job after CONT", || t.int("stat:processed") == 1);
    signal(&child, "TERM");
    assert!(wait_output(child, 15).status.success());
}
