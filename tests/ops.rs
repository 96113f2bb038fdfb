//! Operations: systemd's notify protocol on a test `NOTIFY_SOCKET`, and the
//! unit files checked by `systemd-analyze verify`.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;

use crate::util::{Ns, root, signal, wait_output};

/// A notify socket the tests bind, as systemd does, and every message it
/// received.
struct NotifySocket {
    sock: UnixDatagram,
    /// The `NOTIFY_SOCKET` value.
    target: String,
    path: Option<PathBuf>,
    seen: Vec<String>,
}

impl NotifySocket {
    /// A socket at a path in the temp directory.
    fn path(test: &str) -> NotifySocket {
        let path = std::env::temp_dir().join(format!(
            "ah-worker-notify-{}-{test}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket::with(sock, path.display().to_string(), Some(path))
    }

    /// A socket with an abstract name (`@name`).
    fn abstract_name(test: &str) -> NotifySocket {
        let name = format!("ah-worker-notify-{}-{test}", std::process::id());
        let sock =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        NotifySocket::with(sock, format!("@{name}"), None)
    }

    fn with(sock: UnixDatagram, target: String, path: Option<PathBuf>) -> NotifySocket {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket {
            sock,
            target,
            path,
            seen: Vec::new(),
        }
    }

    /// The next message, if one comes within 100 ms.
    fn next(&mut self) -> Option<String> {
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.seen.push(msg.clone());
        Some(msg)
    }

    /// Wait up to `secs` for a message with a line for which `want` holds;
    /// returns that message.
    fn wait(&mut self, secs: u64, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(msg) = self.next()
                && msg.lines().any(&want)
            {
                return msg;
            }
        }
        panic!(
            "no {what} within {secs}s; received: {:?}",
            self.seen_lines()
        );
    }

    /// Collect messages for `d`.
    fn collect(&mut self, d: Duration) -> Vec<String> {
        let deadline = Instant::now() + d;
        let mut got = Vec::new();
        while Instant::now() < deadline {
            got.extend(self.next());
        }
        got
    }

    fn seen_lines(&self) -> Vec<&str> {
        self.seen.iter().flat_map(|m| m.lines()).collect()
    }

    fn count(&self, line: &str) -> usize {
        self.seen_lines().iter().filter(|l| **l == line).count()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn spawn(t: &Ns, notify: &NotifySocket, env: &[(&str, &str)], args: &[&str]) -> Child {
    t.bin()
        .env("NOTIFY_SOCKET", &notify.target)
        .envs(env.iter().copied())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn registered(t: &mut Ns) -> usize {
    t.conn
        .smembers::<_, Vec<String>>(t.key("workers"))
        .unwrap()
        .len()
}

fn sleep_job(secs: f64) -> Vec<u8> {
    format!(r#"{{"class":"AhWorker::Sleep","args":[{secs}]}}"#).into_bytes()
}

#[test]
fn notify_ready_after_registration_then_watchdog_status_stopping_and_extensions() {
    let mut t = Ns::new("notify");
    let mut n = NotifySocket::path("ready");
    let child = spawn(
        &t,
        &n,
        &[("WATCHDOG_USEC", "400000")],
        &[
            "--queues",
            "q",
            "--concurrency",
            "3",
            "--shutdown-timeout",
            "20s",
        ],
    );
    let ready = n.wait(15, "READY=1", |l| l == "READY=1");
    // At the moment READY=1 arrives, every slot is in Resque's registry.
    assert_eq!(registered(&mut t), 3, "READY=1 before the registration");
    assert!(
        ready.contains("STATUS=running: 0/3 slots busy"),
        "{ready:?}"
    );
    let before_ready = n.seen.len() - 1;
    assert!(
        !n.seen[..before_ready]
            .iter()
            .any(|m| m.contains("WATCHDOG=1")),
        "pings before READY: {:?}",
        n.seen
    );

    // WATCHDOG_USEC=0.4 s: a ping every 0.2 s while the loop turns.
    n.collect(Duration::from_millis(1200));
    assert!(n.count("WATCHDOG=1") >= 4, "{:?}", n.seen_lines());

    // Three jobs ending one after the other; the status line follows.
    for secs in [0.5, 1.0, 1.5] {
        t.push("q", &sleep_job(secs));
    }
    n.wait(10, "a status with 3 busy slots", |l| {
        l == "STATUS=running: 3/3 slots busy, 0 jobs done"
    });

    // TERM: STOPPING=1, then more time asked at the start of the drain and
    // again as jobs finish.
    signal(&child, "TERM");
    n.wait(5, "STOPPING=1", |l| l == "STOPPING=1");
    n.wait(5, "EXTEND_TIMEOUT_USEC", |l| {
        l == "EXTEND_TIMEOUT_USEC=30000000"
    });
    n.wait(5, "a stopping status", |l| {
        l.starts_with("STATUS=stopping: 3 running jobs finishing")
    });
    let out = wait_output(child, 20);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    n.collect(Duration::from_millis(200));
    assert!(
        n.count("EXTEND_TIMEOUT_USEC=30000000") >= 2,
        "extended once per finished job: {:?}",
        n.seen_lines()
    );
    assert_eq!(n.count("STOPPING=1"), 1, "{:?}", n.seen_lines());
    assert_eq!(n.count("READY=1"), 1);
    assert_eq!(t.int("stat:processed"), 3, "the drain finished every job");
}

#[test]
fn notify_on_an_abstract_socket_without_a_watchdog_for_this_pid() {
    let mut t = Ns::new("notifyabstract");
    let mut n = NotifySocket::abstract_name("abstract");
    // A watchdog meant for another process is not ours to feed.
    let child = spawn(
        &t,
        &n,
        &[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")],
        &["--queues", "q", "--concurrency", "2"],
    );
    n.wait(15, "READY=1", |l| l == "READY=1");
    assert_eq!(registered(&mut t), 2);
    n.collect(Duration::from_millis(800));
    assert_eq!(n.count("WATCHDOG=1"), 0, "{:?}", n.seen_lines());
    signal(&child, "QUIT");
    n.wait(5, "STOPPING=1", |l| l == "STOPPING=1");
    assert!(wait_output(child, 15).status.success());
}

/// `systemd-analyze verify` on both units, with `ExecStart` pointing at the
/// built binary (verify checks that it exists), and the unit's timeouts
/// checked against the worker's defaults.
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let have = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        println!("skipped: systemd-analyze is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ah-worker-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["ah-worker.service", "ah-worker@.service"] {
        let text = std::fs::read_to_string(root().join("config").join(name)).unwrap();
        let keys = |key: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(keys("Type"), ["notify"], "{name}");
        assert_eq!(keys("NotifyAccess"), ["main"], "{name}");
        assert_eq!(keys("KillSignal"), ["SIGTERM"], "{name}");
        assert_eq!(keys("KillMode"), ["mixed"], "{name}");
        assert_eq!(keys("ExecReload"), ["/bin/kill -HUP $MAINPID"], "{name}");
        let stop: u64 = keys("TimeoutStopSec")[0].parse().unwrap();
        let shutdown = ah_worker::config::DEFAULT_SHUTDOWN_TIMEOUT.as_secs();
        assert!(
            stop >= shutdown + 10,
            "{name}: TimeoutStopSec={stop} leaves no margin over shutdown_timeout {shutdown}s"
        );
        let watchdog: u64 = keys("WatchdogSec")[0].parse().unwrap();
        assert!(watchdog >= 10, "{name}: WatchdogSec={watchdog}");
        assert!(
            keys("EnvironmentFile").contains(&"-/etc/default/ah-worker".to_owned()),
            "{name}"
        );

        let copy = dir.join(name);
        std::fs::write(
            &copy,
            text.replace("/usr/local/bin/ah-worker", env!("CARGO_BIN_EXE_ah-worker")),
        )
        .unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ours: Vec<&str> = stderr.lines().filter(|l| l.contains(name)).collect();
        assert!(
            out.status.success() && ours.is_empty(),
            "systemd-analyze verify {name}: {:?}\n{stderr}",
            out.status
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A config file the test rewrites between reloads.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(test: &str, text: &str) -> ConfigFile {
        let path = std::env::temp_dir().join(format!(
            "ah-worker-reload-{}-{test}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        ConfigFile(path)
    }

    /// Replace the file at once, as careful deploy tools do: a reload never
    /// reads half a file.
    fn write(&self, text: &str) {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn worker_ids(t: &mut Ns) -> Vec<String> {
    let mut ids: Vec<String> = t.conn.smembers(t.key("workers")).unwrap();
    ids.sort();
    ids
}

/// HUP and wait for the reload to be applied: RELOADING=1 (with
/// MONOTONIC_USEC) then READY=1.
fn reload(child: &Child, n: &mut NotifySocket) {
    signal(child, "HUP");
    let msg = n.wait(10, "RELOADING=1", |l| l == "RELOADING=1");
    assert!(msg.contains("\nMONOTONIC_USEC="), "{msg:?}");
    n.wait(30, "READY=1 after the reload", |l| l == "READY=1");
}

/// The JSON log lines of a finished worker.
fn json_logs(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn reloads_under_load_apply_queues_and_concurrency_and_run_every_job_exactly_once() {
    let mut t = Ns::new("reloadload");
    let file = ConfigFile::new("load", "queues = [\"a\"]\nconcurrency = 4\n");
    let mut n = NotifySocket::path("reloadload");
    const N: usize = 1600;
    for i in 0..N {
        let queue = if i % 2 == 0 { "a" } else { "b" };
        t.push(
            queue,
            format!(r#"{{"class":"AhWorker::Count","args":["counts","{i}",0.01]}}"#).as_bytes(),
        );
    }
    let child = spawn(&t, &n, &[], &["--config", file.arg()]);
    n.wait(15, "READY=1", |l| l == "READY=1");
    assert_eq!(worker_ids(&mut t).len(), 4);
    let steps: [(&str, usize, &str); 3] = [
        ("[\"a\", \"b\"]", 8, "a,b"),
        ("[\"b\"]", 2, "b"),
        ("[\"b\", \"a\"]", 6, "b,a"),
    ];
    for (queues, concurrency, id_part) in steps {
        file.write(&format!("queues = {queues}\nconcurrency = {concurrency}\n"));
        reload(&child, &mut n);
        let ids = worker_ids(&mut t);
        assert_eq!(ids.len(), concurrency, "{ids:?}");
        assert!(
            ids.iter().all(|id| id.ends_with(&format!(":{id_part}"))),
            "{ids:?}"
        );
        let processed = t.int("stat:processed");
        assert!(
            (processed as usize) < N,
            "the load must still be running at each reload ({processed} done)"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    crate::util::wait_for(60, "every job", || t.int("stat:processed") as usize == N);
    signal(&child, "TERM");
    let out = wait_output(child, 20);
    assert!(out.status.success());
    let counts: std::collections::HashMap<String, i64> = t.conn.hgetall(t.key("counts")).unwrap();
    assert_eq!(counts.len(), N, "every job ran");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "jobs run more than once: {twice:?}");
    assert!(t.failures().is_empty());
    assert!(t.list("queue:a").is_empty() && t.list("queue:b").is_empty());
    assert_eq!(n.count("RELOADING=1"), 3);
    assert_eq!(n.count("READY=1"), 4);
}

#[test]
fn an_invalid_configuration_on_reload_is_refused_and_the_running_one_carries_on() {
    let mut t = Ns::new("reloadbad");
    let file = ConfigFile::new("bad", "queues = [\"q\"]\nconcurrency = 2\n");
    let mut n = NotifySocket::path("reloadbad");
    let child = spawn(
        &t,
        &n,
        &[],
        &["--config", file.arg(), "--log-format", "json"],
    );
    n.wait(15, "READY=1", |l| l == "READY=1");
    let before = worker_ids(&mut t);

    // Not a number, then a plugin whose program does not exist.
    file.write("queues = [\"q\"]\nconcurrency = \"many\"\n");
    signal(&child, "HUP");
    std::thread::sleep(Duration::from_millis(300));
    file.write(
        "queues = [\"q\"]\nconcurrency = 3\n[[plugins]]\nname = \"p\"\nkind = \"exec\"\nclasses = [\"Plug::B\"]\ncommand = [\"/no/such/program\"]\n",
    );
    signal(&child, "HUP");
    std::thread::sleep(Duration::from_millis(300));

    // The old configuration still runs.
    t.push("q", br#"{"class":"AhWorker::Noop","args":[]}"#);
    crate::util::wait_for(10, "a job under the old configuration", || {
        t.int("stat:processed") == 1
    });
    assert_eq!(worker_ids(&mut t), before);
    n.collect(Duration::from_millis(200));
    assert_eq!(n.count("RELOADING=1"), 0, "{:?}", n.seen_lines());

    // A valid one still applies, plugins included.
    file.write(
        "queues = [\"q\"]\nconcurrency = 3\n[[plugins]]\nname = \"p\"\nkind = \"exec\"\nclasses = [\"Plug::B\"]\ncommand = [\"true\"]\n",
    );
    reload(&child, &mut n);
    assert_eq!(worker_ids(&mut t).len(), 3);
    t.push("q", br#"{"class":"Plug::B","args":[]}"#);
    crate::util::wait_for(10, "the new plugin's job", || t.int("stat:processed") == 2);
    assert!(t.failures().is_empty(), "{:?}", t.failures());

    signal(&child, "TERM");
    let out = wait_output(child, 20);
    assert!(out.status.success());
    let refused: Vec<String> = json_logs(&out)
        .iter()
        .filter(|l| {
            l["level"] == "ERROR"
                && l["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("reload refused")
        })
        .map(|l| l["error"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused[0].contains("\"many\"") && refused[0].contains("concurrency"),
        "{refused:?}"
    );
    assert!(refused[1].contains("/no/such/program"), "{refused:?}");
}

#[test]
fn term_during_a_reload_stops_and_puts_the_running_job_back() {
    let mut t = Ns::new("reloadterm");
    let file = ConfigFile::new(
        "term",
        "queues = [\"q\"]\nconcurrency = 1\nshutdown_timeout = \"1s\"\n",
    );
    let mut n = NotifySocket::path("reloadterm");
    const LONG: &str = r#"{"class":"AhWorker::Sleep","args":[30]}"#;
    const NEXT: &str = r#"{"class":"AhWorker::Noop","args":[]}"#;
    t.push("q", LONG.as_bytes());
    t.push("q", NEXT.as_bytes());
    let child = spawn(&t, &n, &[], &["--config", file.arg()]);
    n.wait(15, "READY=1", |l| l == "READY=1");
    crate::util::wait_for(10, "the long job to start", || t.list("queue:q").len() == 1);
    signal(&child, "HUP");
    n.wait(10, "RELOADING=1", |l| l == "RELOADING=1");
    // The drain waits for the 30 s job; a TERM turns it into a stop.
    signal(&child, "TERM");
    n.wait(5, "STOPPING=1", |l| l == "STOPPING=1");
    let out = wait_output(child, 10);
    assert!(out.status.success());
    assert_eq!(t.list("queue:q"), [LONG, NEXT], "put back at the head");
    assert_eq!(t.int("stat:processed"), 0);
    assert!(t.failures().is_empty());
    assert_eq!(n.count("READY=1"), 1, "{:?}", n.seen_lines());
    assert!(worker_ids(&mut t).is_empty());
}
