//! `ah-worker cluster`: a killed process is started again and its jobs are
//! recovered, a HUP rolls a restart through the processes under load, and
//! TERM stops them all, with every job counted.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Stdio};

use redis::Commands;

use crate::util::{NotifySocket, Ns, signal, wait_for, wait_output};

fn count_job(i: usize, secs: f64) -> Vec<u8> {
    format!(r#"{{"class":"AhWorker::Count","args":["counts","j{i}",{secs}]}}"#).into_bytes()
}

/// The pids in this namespace's process registry.
fn pids(t: &mut Ns) -> HashSet<u32> {
    let fields: Vec<String> = t.conn.hkeys(t.key("ah-worker:processes")).unwrap();
    fields
        .iter()
        .filter_map(|f| f.rsplit(':').next()?.parse().ok())
        .collect()
}

fn start_cluster(t: &Ns, notify: &NotifySocket, processes: &str, concurrency: &str) -> Child {
    t.bin()
        .env("NOTIFY_SOCKET", &notify.target)
        .args([
            "cluster",
            "--processes",
            processes,
            "--queues",
            "q",
            "--concurrency",
            concurrency,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Every job j0..j<total> counted: returns how many ran more than once.
fn all_counted(t: &mut Ns, total: usize) -> usize {
    let done: HashMap<String, i64> = t.conn.hgetall(t.key("counts")).unwrap();
    let missing: Vec<String> = (0..total)
        .map(|i| format!("j{i}"))
        .filter(|j| !done.contains_key(j))
        .collect();
    assert!(missing.is_empty(), "jobs never performed: {missing:?}");
    done.values().filter(|n| **n > 1).count()
}

fn stop(t: &mut Ns, cluster: Child) -> String {
    signal(&cluster, "TERM");
    let out = wait_output(cluster, 60);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    assert_eq!(
        t.conn.scard::<_, usize>(t.key("workers")).unwrap(),
        0,
        "{log}"
    );
    assert!(pids(t).is_empty(), "process entries left: {log}");
    log
}

#[test]
fn a_killed_process_is_started_again_and_no_job_is_lost() {
    let mut t = Ns::new("cluster-kill");
    let total = 1500;
    for i in 0..total {
        t.push("q", &count_job(i, 0.005));
    }
    let mut notify = NotifySocket::path("cluster-kill");
    let cluster = start_cluster(&t, &notify, "3", "4");
    notify.wait(30, "READY=1 from the supervisor", |l| l == "READY=1");
    let before = pids(&mut t);
    assert_eq!(before.len(), 3, "three processes at READY=1");
    assert_eq!(t.conn.scard::<_, usize>(t.key("workers")).unwrap(), 12);

    let victim = *before.iter().next().unwrap();
    std::process::Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    wait_for(30, "a new process in place of the killed one", || {
        let now = pids(&mut t);
        now.len() == 3 && !now.contains(&victim)
    });
    wait_for(60, "every job done", || {
        t.conn.hlen::<_, usize>(t.key("counts")).unwrap() == total
            && t.conn.llen::<_, usize>(t.key("queue:q")).unwrap() == 0
    });
    // The killed process's running jobs went back to the queue (recovered
    // as a dead process's), so they may have run twice; no more than its
    // four slots.
    let again = all_counted(&mut t, total);
    assert!(again <= 4, "{again} jobs ran more than once");
    let log = stop(&mut t, cluster);
    assert!(log.contains("child exited unexpectedly"), "{log}");
}

#[test]
fn hup_rolls_a_restart_through_the_processes_without_losing_or_doubling_a_job() {
    let mut t = Ns::new("cluster-roll");
    let total = 3000;
    for i in 0..total {
        t.push("q", &count_job(i, 0.01));
    }
    let mut notify = NotifySocket::path("cluster-roll");
    let cluster = start_cluster(&t, &notify, "2", "4");
    notify.wait(30, "READY=1 from the supervisor", |l| l == "READY=1");
    let before = pids(&mut t);
    assert_eq!(before.len(), 2);

    signal(&cluster, "HUP");
    notify.wait(10, "RELOADING=1", |l| l == "RELOADING=1");
    notify.wait(60, "READY=1 after the roll", |l| l == "READY=1");
    let after = pids(&mut t);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.is_disjoint(&before), "{before:?} → {after:?}");
    let left = t.conn.llen::<_, usize>(t.key("queue:q")).unwrap();
    assert!(
        left > 0,
        "the roll should happen under load; make the jobs longer"
    );

    wait_for(90, "every job done", || {
        t.conn.hlen::<_, usize>(t.key("counts")).unwrap() == total
            && t.conn.llen::<_, usize>(t.key("queue:q")).unwrap() == 0
    });
    assert_eq!(all_counted(&mut t, total), 0, "jobs ran twice");
    assert!(t.failures().is_empty(), "{:?}", t.failures());
    let log = stop(&mut t, cluster);
    assert!(log.contains("rolling restart done"), "{log}");
}

#[test]
fn children_stop_gracefully_when_the_supervisor_is_killed() {
    let mut t = Ns::new("cluster-orphan");
    let mut notify = NotifySocket::path("cluster-orphan");
    let cluster = start_cluster(&t, &notify, "2", "2");
    notify.wait(30, "READY=1 from the supervisor", |l| l == "READY=1");
    assert_eq!(pids(&mut t).len(), 2);
    std::process::Command::new("kill")
        .args(["-KILL", &cluster.id().to_string()])
        .status()
        .unwrap();
    // Each child got TERM from the kernel when its parent died, and
    // unregistered on its way out.
    wait_for(30, "the children unregistered", || {
        pids(&mut t).is_empty() && t.conn.scard::<_, usize>(t.key("workers")).unwrap() == 0
    });
    let _ = wait_output(cluster, 5);
}
