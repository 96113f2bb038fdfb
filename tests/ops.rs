//! Operations: systemd's notify protocol on a test `NOTIFY_SOCKET`, and the
//! unit files checked by `systemd-analyze verify`.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;

use crate::util::{ConfigFile, NotifySocket, Ns, root, signal, wait_output};

/// Start the worker with `env` and `args`, its output captured.
fn start(t: &Ns, env: &[(&str, &str)], args: &[&str]) -> Child {
    t.bin()
        .envs(env.iter().copied())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Start the worker with `notify` as its `NOTIFY_SOCKET`.
fn spawn(t: &Ns, notify: &NotifySocket, env: &[(&str, &str)], args: &[&str]) -> Child {
    let mut env = env.to_vec();
    env.push(("NOTIFY_SOCKET", &notify.target));
    start(t, &env, args)
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

/// `GET path` (or another method) on the metrics listener: status and body.
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a blank line after the headers");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(length, body.len(), "Content-Length matches the body");
    (status, body.to_owned())
}

/// Poll `path` until it answers `status` (the listener may not be up yet).
fn wait_status(port: u16, path: &str, status: u16, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        let (got, body) = if up {
            http(port, "GET", path)
        } else {
            (0, "not listening".to_owned())
        };
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {got} after {secs}s: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// A strict reader of the Prometheus text format 0.0.4: every sample
/// belongs to a family declared by HELP and TYPE before it, names and
/// labels are well-formed, label values use only the three escapes, and
/// each histogram's buckets are monotone and end in `+Inf` = `_count`.
struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        use std::collections::HashMap;
        let name_ok = |n: &str| {
            let mut chars = n.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        let mut help: HashMap<String, String> = HashMap::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples = Vec::new();
        assert!(text.ends_with('\n'), "the text ends with a newline");
        for line in text.lines() {
            assert!(!line.is_empty(), "no blank lines");
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, doc) = rest.split_once(' ').expect("HELP name text");
                assert!(name_ok(name) && !doc.is_empty(), "{line}");
                assert!(
                    help.insert(name.into(), doc.into()).is_none(),
                    "HELP twice: {line}"
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(name_ok(name), "{line}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(
                    !samples.iter().any(|(n, _, _): &Sample| n.starts_with(name)),
                    "TYPE after its samples: {line}"
                );
                assert!(
                    types.insert(name.into(), kind.into()).is_none(),
                    "TYPE twice: {line}"
                );
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment: {line}");
            let end = line.find(['{', ' ']).expect("a value");
            let name = &line[..end];
            assert!(name_ok(name), "{line}");
            let mut labels = Vec::new();
            let mut rest = &line[end..];
            if let Some(inner) = rest.strip_prefix('{') {
                let mut chars = inner.char_indices().peekable();
                loop {
                    let start = chars.peek().expect("label or }").0;
                    if inner[start..].starts_with('}') {
                        rest = &inner[start + 1..];
                        break;
                    }
                    let eq = inner[start..].find('=').expect("label=") + start;
                    let lname = &inner[start..eq];
                    assert!(name_ok(lname) && !lname.starts_with("__"), "{line}");
                    assert_eq!(&inner[eq + 1..eq + 2], "\"", "{line}");
                    while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
                        chars.next();
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().expect("closing quote") {
                            (_, '"') => break,
                            (_, '\\') => match chars.next().expect("escape").1 {
                                '\\' => value.push('\\'),
                                '"' => value.push('"'),
                                'n' => value.push('\n'),
                                c => panic!("bad escape \\{c} in {line}"),
                            },
                            (_, '\n') => panic!("raw newline in {line}"),
                            (_, c) => value.push(c),
                        }
                    }
                    labels.push((lname.to_owned(), value));
                    if chars.peek().is_some_and(|(_, c)| *c == ',') {
                        chars.next();
                    }
                }
            }
            let mut fields = rest.trim_start_matches(' ').split(' ');
            let value = fields.next().expect("value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            if let Some(ts) = fields.next() {
                ts.parse::<i64>().expect("timestamp");
            }
            assert!(fields.next().is_none(), "{line}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "no TYPE for {name}");
            assert!(help.contains_key(family), "no HELP for {name}");
            samples.push((name.to_owned(), labels, value));
        }
        let scrape = Scrape { samples };
        for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
            scrape.check_histogram(family);
        }
        scrape
    }

    fn check_histogram(&self, family: &str) {
        let bucket = format!("{family}_bucket");
        let without_le = |l: &[(String, String)]| -> Vec<(String, String)> {
            l.iter().filter(|(k, _)| k != "le").cloned().collect()
        };
        let mut groups: Vec<Vec<(String, String)>> = Vec::new();
        for (n, l, _) in &self.samples {
            if *n == bucket && !groups.contains(&without_le(l)) {
                groups.push(without_le(l));
            }
        }
        for labels in groups {
            let mut buckets: Vec<(f64, f64)> = self
                .samples
                .iter()
                .filter(|(n, l, _)| *n == bucket && without_le(l) == labels)
                .map(|(_, l, v)| {
                    let le = &l.iter().find(|(k, _)| k == "le").expect("le").1;
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    };
                    (le, *v)
                })
                .collect();
            buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family} {labels:?}: buckets not monotone: {buckets:?}"
            );
            let inf = buckets
                .last()
                .filter(|b| b.0.is_infinite())
                .expect("+Inf bucket")
                .1;
            let get = |suffix: &str| {
                self.samples
                    .iter()
                    .find(|(n, l, _)| *n == format!("{family}{suffix}") && *l == labels)
                    .unwrap_or_else(|| panic!("no {family}{suffix} for {labels:?}"))
                    .2
            };
            assert_eq!(inf, get("_count"), "{family} {labels:?}: +Inf != _count");
            assert!(get("_sum") >= 0.0);
        }
    }

    /// The value of `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|s| s.2)
    }
}

fn scrape(port: u16) -> Scrape {
    let (status, body) = http(port, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    Scrape::parse(&body)
}

#[test]
fn metrics_scrape_parses_as_prometheus_text_with_the_expected_series() {
    let mut t = Ns::new("metrics");
    let port = crate::util::free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = start(
        &t,
        &[],
        &[
            "--queues",
            "q1,q2,q3",
            "-c",
            "3",
            "--metrics-listen",
            &listen,
        ],
    );
    wait_status(port, "/health", 200, 15);
    const WEIRD: &str = "We\"ird\\Class";
    for i in 0..50 {
        t.push(
            "q1",
            format!(r#"{{"class":"AhWorker::Noop","args":[{i}]}}"#).as_bytes(),
        );
    }
    for _ in 0..5 {
        t.push("q2", br#"{"class":"AhWorker::Fail","args":["no"]}"#);
    }
    t.push("q2", br#"{"class":"We\"ird\\Class","args":[]}"#);
    let deadline = Instant::now() + Duration::from_secs(15);
    let done = |s: &Scrape| {
        s.value(
            "ah_worker_jobs_total",
            &[
                ("queue", "q1"),
                ("class", "AhWorker::Noop"),
                ("outcome", "succeeded"),
            ],
        ) == Some(50.0)
            && s.value(
                "ah_worker_jobs_total",
                &[("queue", "q2"), ("class", WEIRD), ("outcome", "failed")],
            ) == Some(1.0)
            && s.value("ah_worker_slots_busy", &[]) == Some(0.0)
    };
    while !done(&scrape(port)) {
        assert!(Instant::now() < deadline, "jobs not counted in time");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Paused, three jobs wait in q3.
    signal(&child, "USR2");
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        t.push("q3", br#"{"class":"AhWorker::Noop","args":[]}"#);
    }
    std::thread::sleep(Duration::from_millis(300));
    let s = scrape(port);
    let job = |q: &str, class: &str, outcome: &str| {
        s.value(
            "ah_worker_jobs_total",
            &[("queue", q), ("class", class), ("outcome", outcome)],
        )
    };
    assert_eq!(job("q1", "AhWorker::Noop", "succeeded"), Some(50.0));
    assert_eq!(job("q1", "AhWorker::Noop", "failed"), Some(0.0));
    assert_eq!(job("q2", "AhWorker::Fail", "failed"), Some(5.0));
    assert_eq!(job("q2", WEIRD, "failed"), Some(1.0));
    let noop = [("queue", "q1"), ("class", "AhWorker::Noop")];
    assert_eq!(
        s.value("ah_worker_job_duration_seconds_count", &noop),
        Some(50.0)
    );
    assert_eq!(
        s.value(
            "ah_worker_job_duration_seconds_bucket",
            &[("queue", "q1"), ("class", "AhWorker::Noop"), ("le", "300")]
        ),
        Some(50.0)
    );
    for (q, depth) in [("q1", 0.0), ("q2", 0.0), ("q3", 3.0)] {
        assert_eq!(
            s.value("ah_worker_queue_depth", &[("queue", q)]),
            Some(depth),
            "{q}"
        );
    }
    assert_eq!(s.value("ah_worker_slots", &[]), Some(3.0));
    assert_eq!(s.value("ah_worker_paused", &[]), Some(1.0));
    assert_eq!(s.value("ah_worker_ready", &[]), Some(1.0));
    assert_eq!(s.value("ah_worker_redis_errors_total", &[]), Some(0.0));
    assert_eq!(
        s.value(
            "ah_worker_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = s
        .value("ah_worker_process_start_time_seconds", &[])
        .unwrap();
    assert!(now - started > 0.0 && now - started < 60.0, "{started}");
    let beat = s
        .value("ah_worker_last_heartbeat_timestamp_seconds", &[])
        .unwrap();
    assert!((now - beat).abs() < 30.0, "{beat}");
    assert_eq!(
        s.value("ah_worker_reloads_total", &[("result", "applied")]),
        Some(0.0)
    );

    // Other paths and methods.
    assert_eq!(http(port, "GET", "/nope").0, 404);
    assert_eq!(http(port, "POST", "/metrics").0, 405);
    assert_eq!(http(port, "GET", "/health/live").0, 200);
    signal(&child, "TERM");
    assert!(wait_output(child, 15).status.success());
}

#[test]
fn health_follows_redis_away_and_back_and_the_loop() {
    let port = crate::util::free_port();
    let redis = crate::util::start_redis(port, &[]);
    let mut t = Ns::on(&redis.url(), "health");
    drop(redis);
    let http_port = crate::util::free_port();
    let listen = format!("127.0.0.1:{http_port}");
    // Beats every 1/3 s, so a lost Redis shows at once.
    let child = start(
        &t,
        &[("AH_WORKER_DEAD_AFTER", "1")],
        &["--queues", "q", "-c", "2", "--metrics-listen", &listen],
    );
    // No Redis yet: not ready, but alive.
    let body = wait_status(http_port, "/health", 503, 10);
    assert!(body.contains("\"phase\":\"starting\""), "{body}");
    assert_eq!(http(http_port, "GET", "/health/live").0, 200);

    let redis = crate::util::start_redis(port, &[]);
    let body = wait_status(http_port, "/health", 200, 15);
    assert!(
        body.contains("\"status\":\"ok\"") && body.contains("\"slots\":2"),
        "{body}"
    );

    drop(redis);
    let body = wait_status(http_port, "/health", 503, 10);
    assert!(body.contains("\"redis\":\"unreachable\""), "{body}");
    assert!(body.contains("\"loop\":\"ok\""), "{body}");
    assert_eq!(
        http(http_port, "GET", "/health/live").0,
        200,
        "Redis is not the loop"
    );

    let _redis = crate::util::start_redis(port, &[]);
    wait_status(http_port, "/health", 200, 20);
    let s = scrape(http_port);
    assert!(s.value("ah_worker_redis_errors_total", &[]).unwrap() >= 1.0);
    assert!(s.value("ah_worker_redis_reconnects_total", &[]).unwrap() >= 1.0);
    t.reconnect();
    signal(&child, "TERM");
    assert!(wait_output(child, 15).status.success());
}
