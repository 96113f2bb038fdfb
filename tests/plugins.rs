//! Handler plugins of every kind against a real redis-server: success,
//! failure, timeout, crash, callbacks, limits, the example plugins, and
//! start-up checks.

use std::time::Duration;

use ah_worker::shutdown::StopReason;
use ah_worker::worker::UnknownClass;
use redis::Commands;
use serde_json::{Value, json};

use crate::util::{FakeHttp, InProcess, Ns, plugin, wait_for_async};

const PY: &str = r#"
name = "python-example"
kind = "coprocess"
classes = ["Py::*"]
command = ["python3", "examples/plugins/python/coprocess.py"]
processes = 1
in_flight = 8
timeout = "30s"
"#;

fn example(path: &str) -> ah_worker::plugin::PluginSpec {
    plugin(&std::fs::read_to_string(crate::util::root().join(path)).unwrap())
}

fn job(class: &str, args: Value) -> Vec<u8> {
    json!({"class": class, "args": args})
        .to_string()
        .into_bytes()
}

/// Drain `jobs` from queue `q` with `plugins`, concurrency `c`.
async fn drain(
    t: &mut Ns,
    plugins: Vec<ah_worker::plugin::PluginSpec>,
    c: usize,
    jobs: &[Vec<u8>],
) {
    for j in jobs {
        t.push("q", j);
    }
    let mut config = t.config(&["q"], c);
    config.interval = Duration::ZERO;
    config.plugins = plugins;
    let report = InProcess::builtin(config).join().await;
    assert_eq!(report.reason, StopReason::Drained);
}

fn failure_of<'a>(failures: &'a [Value], class: &str) -> &'a Value {
    failures
        .iter()
        .find(|f| f["payload"]["class"] == json!(class))
        .unwrap_or_else(|| panic!("no failure for {class}: {failures:?}"))
}

// ---------------------------------------------------------------- exec

#[tokio::test(flavor = "multi_thread")]
async fn exec_success_failure_and_the_shell_example() {
    let mut t = Ns::new("execbasic");
    let plugins = vec![example("examples/plugins/shell/exec-plugin.toml")];
    drain(
        &mut t,
        plugins,
        2,
        &[
            job("ShExec::Demo", json!(["ok"])),
            job("ShExec::Demo", json!(["fail"])),
        ],
    )
    .await;
    assert_eq!(t.int("stat:processed"), 2);
    let f = t.failures();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["exception"], json!("AhWorker::ExecFailed"));
    assert_eq!(
        f[0]["error"],
        json!(r#"refusing: args ["fail"] contain "fail""#)
    );
    assert!(
        f[0]["backtrace"]
            .as_array()
            .unwrap()
            .contains(&json!("exited with status 1"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_timeout_kills_the_whole_process_group() {
    let mut t = Ns::new("exectimeout");
    let pidfile = std::env::temp_dir().join(format!("ah-worker-{}-grandchild.pid", t.ns));
    let p = plugin(&format!(
        r#"
name = "slow"
kind = "exec"
classes = ["Slow"]
command = ["sh", "-c", "sleep 60 & echo $! > {}; wait"]
timeout = "1s"
"#,
        pidfile.display()
    ));
    drain(
        &mut t,
        vec![p],
        1,
        &[job("Slow", json!([])), job("AhWorker::Noop", json!([]))],
    )
    .await;
    let f = t.failures();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["exception"], json!("AhWorker::Timeout"));
    assert_eq!(
        t.int("stat:processed"),
        2,
        "the slot was free again for the next job"
    );
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    // Killed means gone or a zombie (state Z) nobody reaped yet.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    wait_for_async(5, "the grandchild to be killed", || !alive()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_death_by_signal_is_a_failure() {
    let mut t = Ns::new("execcrash");
    let p = plugin(
        r#"
name = "crashy"
kind = "exec"
classes = ["Crash"]
command = ["sh", "-c", "echo about to die >&2; kill -9 $$"]
"#,
    );
    drain(
        &mut t,
        vec![p],
        1,
        &[job("Crash", json!([])), job("AhWorker::Noop", json!([]))],
    )
    .await;
    let f = t.failures();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["error"], json!("about to die"));
    assert!(
        f[0]["backtrace"]
            .as_array()
            .unwrap()
            .contains(&json!("killed by signal 9"))
    );
    assert_eq!(t.int("stat:processed"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_gets_the_job_on_stdin_and_in_its_environment() {
    let mut t = Ns::new("execinput");
    let out = std::env::temp_dir().join(format!("ah-worker-{}-input", t.ns));
    let p = plugin(&format!(
        r#"
name = "echo"
kind = "exec"
classes = ["Task"]
command = ["sh", "-c", "cat > {0}; echo \"$AH_JOB_CLASS|$AH_JOB_QUEUE|$AH_JOB_ARGS|$GREETING\" >> {0}"]
env = {{ GREETING = "hi" }}
"#,
        out.display()
    ));
    // actionHero 7 style: args is an object.
    t.push("q", br#"{"class":"Task","queue":"q","args":{"to":"x"}}"#);
    drain(&mut t, vec![p], 1, &[]).await;
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    let object: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(object["class"], json!("Task"));
    assert_eq!(object["args"], json!([{"to": "x"}]));
    assert_eq!(object["inputs"], json!({"to": "x"}));
    assert!(object["worker"].as_str().unwrap().ends_with(":q"));
    assert_eq!(lines.next().unwrap(), r#"Task|q|[{"to":"x"}]|hi"#);
}

// ---------------------------------------------------------------- coprocess

#[tokio::test(flavor = "multi_thread")]
async fn coprocess_success_failure_and_a_callback_that_enqueues() {
    let mut t = Ns::new("copybasic");
    drain(
        &mut t,
        vec![plugin(PY)],
        2,
        &[
            job("Py::Echo", json!([1])),
            job("Py::Fail", json!(["no recipient"])),
            job("Py::Enqueue", json!(["AhWorker::Noop", "later", [7]])),
            job(
                "Py::Enqueue",
                json!(["AhWorker::Noop", "delayed", [8], 3600]),
            ),
            job("Py::Nope", json!([])),
        ],
    )
    .await;
    assert_eq!(t.int("stat:processed"), 5);
    let f = t.failures();
    assert_eq!(f.len(), 2);
    let fail = failure_of(&f, "Py::Fail");
    assert_eq!(fail["exception"], json!("ArgumentError"));
    assert_eq!(fail["error"], json!("no recipient"));
    assert!(!fail["backtrace"].as_array().unwrap().is_empty());
    assert_eq!(failure_of(&f, "Py::Nope")["exception"], json!("NameError"));
    // The callback enqueued, in node-resque's format.
    assert_eq!(
        t.list("queue:later"),
        [r#"{"class":"AhWorker::Noop","queue":"later","args":[7]}"#]
    );
    // ... and scheduled, in the delayed-queue layout.
    let due: Vec<(String, f64)> = t
        .conn
        .zrange_withscores(t.key("delayed_queue_schedule"), 0, -1)
        .unwrap();
    assert_eq!(due.len(), 1);
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((due[0].1 - now - 3600.0).abs() < 60.0, "{due:?}");
    let delayed = t.list(&format!("delayed:{}", due[0].0));
    assert_eq!(
        delayed,
        [r#"{"class":"AhWorker::Noop","queue":"delayed","args":[8]}"#]
    );
    let ts: Vec<String> = t
        .conn
        .smembers(t.key(&format!("timestamps:{}", delayed[0])))
        .unwrap();
    assert_eq!(ts, [format!("delayed:{}", due[0].0)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn coprocess_runs_several_jobs_in_flight_in_one_process() {
    let mut t = Ns::new("copyinflight");
    for _ in 0..4 {
        t.push("q", &job("Py::Sleep", json!([1.5])));
    }
    let mut config = t.config(&["q"], 4);
    config.plugins = vec![plugin(PY)];
    let w = InProcess::builtin(config);
    wait_for_async(20, "four jobs in flight at once", || {
        t.keys()
            .iter()
            .filter(|k| k.starts_with("worker:") && k.ends_with(":q") && !k.contains("ping"))
            .count()
            == 4
    })
    .await;
    wait_for_async(20, "all four done", || t.int("stat:processed") == 4).await;
    assert!(t.failures().is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn coprocess_crash_fails_its_job_and_the_process_restarts() {
    let mut t = Ns::new("copycrash");
    drain(
        &mut t,
        vec![plugin(PY)],
        1,
        &[
            job("Py::Crash", json!([])),
            job("Py::Echo", json!(["after the crash"])),
        ],
    )
    .await;
    let f = t.failures();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["exception"], json!("AhWorker::PluginCrashed"));
    assert!(
        f[0]["error"].as_str().unwrap().contains("exit status: 3"),
        "{}",
        f[0]
    );
    assert_eq!(
        t.int("stat:processed"),
        2,
        "the restarted process ran the next job"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn coprocess_crash_can_put_in_flight_jobs_back() {
    let mut t = Ns::new("copyrequeue");
    // A unique marker in argv lets the test find and kill this process.
    let marker = format!("--marker={}", t.ns);
    let p = plugin(&format!(
        r#"
name = "python-requeue"
kind = "coprocess"
classes = ["Py::*"]
command = ["python3", "examples/plugins/python/coprocess.py", "{marker}"]
on_crash = "requeue"
"#
    ));
    let sleeper = job("Py::Sleep", json!([30]));
    t.push("q", &sleeper);
    let mut config = t.config(&["q"], 1);
    config.shutdown_timeout = Duration::from_millis(200);
    config.plugins = vec![p];
    let w = InProcess::builtin(config);
    let status_key = || -> Option<String> {
        let keys = crate::util::Ns::on(&t.url, "peek")
            .conn
            .scan_match::<_, String>(t.key("worker:*+1:q"))
            .unwrap()
            .collect::<Vec<_>>();
        keys.into_iter().next()
    };
    wait_for_async(20, "the job in flight", || status_key().is_some()).await;
    let key = status_key().unwrap();
    let first: String = t.conn.get(&key).unwrap();
    // Let a second pass, so the status of the next take differs in run_at.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let killed = std::process::Command::new("pkill")
        .args(["-9", "-f", "--", &marker])
        .status()
        .unwrap();
    assert!(killed.success());
    // Put back, then taken again by the restarted process.
    wait_for_async(20, "the job to run again", || {
        t.conn
            .get::<_, Option<String>>(&key)
            .unwrap()
            .is_some_and(|s| s != first)
    })
    .await;
    assert!(t.failures().is_empty(), "put back, not failed");
    assert_eq!(t.int("stat:processed"), 0);
    w.stop().await;
    // Stopped at the deadline: put back once more, bytes intact.
    assert_eq!(t.list("queue:q"), [String::from_utf8(sleeper).unwrap()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn coprocess_timeout_fails_the_job_and_frees_the_slot() {
    let mut t = Ns::new("copytimeout");
    let p = plugin(&PY.replace("timeout = \"30s\"", "timeout = \"1s\""));
    drain(
        &mut t,
        vec![p],
        1,
        &[job("Py::Sleep", json!([20])), job("Py::Echo", json!([]))],
    )
    .await;
    let f = t.failures();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["exception"], json!("AhWorker::Timeout"));
    assert_eq!(t.int("stat:processed"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_and_shell_example_plugins_work_with_callbacks() {
    let mut t = Ns::new("examples");
    let plugins = vec![
        example("examples/plugins/node/plugin.toml"),
        example("examples/plugins/shell/plugin.toml"),
    ];
    drain(
        &mut t,
        plugins,
        2,
        &[
            job("Node::Echo", json!(["hi"])),
            job("Node::Fail", json!(["node says no"])),
            job("Node::Enqueue", json!(["AhWorker::Noop", "from-node", [1]])),
            job("Sh::Echo", json!([])),
            job("Sh::Fail", json!([])),
            job("Sh::Enqueue", json!(["from-shell"])),
        ],
    )
    .await;
    assert_eq!(t.int("stat:processed"), 6);
    let f = t.failures();
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(failure_of(&f, "Node::Fail")["error"], json!("node says no"));
    assert_eq!(failure_of(&f, "Sh::Fail")["error"], json!("shell says no"));
    assert_eq!(
        t.list("queue:from-node"),
        [r#"{"class":"AhWorker::Noop","queue":"from-node","args":[1]}"#]
    );
    assert_eq!(
        t.list("queue:from-shell"),
        [r#"{"class":"AhWorker::Noop","queue":"from-shell","args":[]}"#]
    );
}

// ---------------------------------------------------------------- http

#[tokio::test(flavor = "multi_thread")]
async fn http_success_failure_and_timeout_over_kept_alive_connections() {
    let mut t = Ns::new("http");
    let server = FakeHttp::start().await;
    let p = plugin(&format!(
        r#"
name = "web"
kind = "http"
classes = ["Http::*"]
url = "{}"
timeout = "1s"
headers = {{ Authorization = "Bearer t" }}
"#,
        server.url
    ));
    let mut jobs: Vec<Vec<u8>> = (0..5).map(|i| job("Http::Ok", json!([i]))).collect();
    jobs.push(job("Http::Fail", json!([])));
    jobs.push(job("Http::Slow", json!([])));
    jobs.push(job("Http::Drop", json!([])));
    drain(&mut t, vec![p], 1, &jobs).await;
    assert_eq!(t.int("stat:processed"), 8);
    let f = t.failures();
    assert_eq!(f.len(), 3);
    let dropped = failure_of(&f, "Http::Drop");
    assert_eq!(dropped["exception"], json!("AhWorker::HttpError"));
    assert!(
        dropped["error"]
            .as_str()
            .unwrap()
            .contains("request failed"),
        "{dropped}"
    );
    let fail = failure_of(&f, "Http::Fail");
    assert_eq!(fail["exception"], json!("AhWorker::HttpError"));
    assert_eq!(fail["error"], json!("HTTP 500: boom: something broke"));
    let slow = failure_of(&f, "Http::Slow");
    assert!(
        slow["error"].as_str().unwrap().contains("timed out"),
        "{slow}"
    );
    let bodies = server.bodies.lock().unwrap();
    assert_eq!(bodies[0]["class"], json!("Http::Ok"));
    assert_eq!(bodies[0]["queue"], json!("q"));
    assert!(
        server
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            <= 3,
        "connections are kept alive"
    );
}

// ---------------------------------------------------------------- together

#[tokio::test(flavor = "multi_thread")]
async fn one_config_with_every_kind_processes_a_mixed_queue() {
    let mut t = Ns::new("mixed");
    let server = FakeHttp::start().await;
    let mut registry = ah_worker::handler::Registry::with_builtin();
    registry.register_fn("Native::Job", |_job, _ctx| async { Ok(()) });
    let plugins = vec![
        plugin(PY),
        example("examples/plugins/shell/exec-plugin.toml"),
        plugin(&format!(
            "name = \"web\"\nkind = \"http\"\nclasses = [\"Http::*\"]\nurl = \"{}\"\n",
            server.url
        )),
    ];
    let classes = [
        "Py::Echo",
        "ShExec::Job",
        "Http::Ok",
        "Native::Job",
        "AhWorker::Noop",
    ];
    for round in 0..4 {
        for class in classes {
            t.push("q", &job(class, json!([round])));
        }
    }
    let mut config = t.config(&["q"], 4);
    config.interval = Duration::ZERO;
    config.plugins = plugins;
    InProcess::start(config, registry).join().await;
    assert_eq!(t.int("stat:processed"), 20);
    assert!(t.failures().is_empty(), "{:?}", t.failures());
    assert_eq!(server.bodies.lock().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capped_plugin_does_not_hold_up_other_classes() {
    let mut t = Ns::new("limit");
    let p = plugin(&format!("{PY}max_in_flight = 1\n"));
    t.push("q", &job("Py::Sleep", json!([3])));
    t.push("q", &job("Py::Sleep", json!([3])));
    for i in 0..3 {
        t.push("q", &job("AhWorker::Noop", json!([i])));
    }
    let mut config = t.config(&["q"], 3);
    config.plugins = vec![p];
    let w = InProcess::builtin(config);
    // The no-ops behind the second sleep run while the first sleep holds the cap.
    wait_for_async(20, "the three no-ops", || t.int("stat:processed") == 3).await;
    let queued = t.list("queue:q");
    assert_eq!(
        queued.len(),
        1,
        "the second sleep waits for the cap: {queued:?}"
    );
    assert!(queued[0].contains("Py::Sleep"));
    wait_for_async(30, "both sleeps", || t.int("stat:processed") == 5).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_classes_can_be_left_for_other_workers_without_spinning() {
    // A private server, so its command counts are ours alone.
    let port = crate::util::free_port();
    let server = crate::util::start_redis(port, &[]);
    let mut t = Ns::on(&server.url(), "unknown");
    let foreign = br#"{"class":"Ruby::Only","args":[]}"#;
    t.push("q", foreign);
    t.push("q", br#"{"class":"AhWorker::Noop","args":[]}"#);
    let mut config = t.config(&["q"], 2);
    config.unknown_class = UnknownClass::Requeue;
    let w = InProcess::builtin(config);
    wait_for_async(10, "the known job", || t.int("stat:processed") == 1).await;
    let calls = |t: &mut Ns| -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut t.conn)
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .map(|n| n.parse().unwrap())
            .unwrap_or(0)
    };
    let before = calls(&mut t);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let steps = calls(&mut t) - before;
    assert!(
        steps <= 12,
        "{steps} steps in 3 s: the worker spins on the unknown job"
    );
    assert_eq!(
        t.list("queue:q"),
        [String::from_utf8(foreign.to_vec()).unwrap()]
    );
    assert!(t.failures().is_empty());
    // A job arriving behind it still runs.
    t.push("q", br#"{"class":"AhWorker::Noop","args":[2]}"#);
    wait_for_async(10, "the job behind the unknown one", || {
        t.int("stat:processed") == 2
    })
    .await;
    w.stop().await;
}

// ---------------------------------------------------------------- start-up

#[test]
fn broken_plugins_stop_start_up_with_status_2_and_a_precise_message() {
    let t = Ns::new("brokenplugin");
    let dir = std::env::temp_dir().join(format!("ah-worker-plugins-{}", t.ns));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| t.bin().args(args).output().unwrap();

    std::fs::write(dir.join("a.toml"), "name = \"mailer\"\nkind = \"exec\"\nclasses = [\"Mail\"]\ncommand = [\"/opt/missing/mailer\"]\n").unwrap();
    let o = run(&["--plugins-dir", dir.to_str().unwrap(), "--queues", "q"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("\"mailer\"")
            && e.contains("a.toml")
            && e.contains("/opt/missing/mailer")
            && e.contains("does not exist"),
        "{e}"
    );

    std::fs::write(
        dir.join("a.toml"),
        "name = \"one\"\nkind = \"exec\"\nclasses = [\"Mail\"]\ncommand = [\"true\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b.toml"),
        "name = \"two\"\nkind = \"http\"\nclasses = [\"Mail\"]\nurl = \"http://127.0.0.1:9/x\"\n",
    )
    .unwrap();
    let o = run(&["--plugins-dir", dir.to_str().unwrap(), "--queues", "q"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("\"Mail\"") && e.contains("one") && e.contains("two"),
        "{e}"
    );

    std::fs::remove_file(dir.join("b.toml")).unwrap();
    std::fs::write(dir.join("a.toml"), "name = \"builtin\"\nkind = \"exec\"\nclasses = [\"AhWorker::Noop\"]\ncommand = [\"true\"]\n").unwrap();
    let o = run(&["--plugins-dir", dir.to_str().unwrap(), "--queues", "q"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("AhWorker::Noop"));

    std::fs::write(
        dir.join("a.toml"),
        "name = \"web\"\nkind = \"http\"\nclasses = [\"W\"]\nurl = \"ftp://x/y\"\n",
    )
    .unwrap();
    let o = run(&["--plugins-dir", dir.to_str().unwrap(), "--queues", "q"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ftp"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A Node HTTPS server with `cert`/`key` that appends each request body to
/// `log` and answers 200; returns it and its port.
fn https_server(dir: &std::path::Path, log: &std::path::Path) -> (std::process::Child, u16) {
    use std::io::BufRead as _;
    let script = r#"
const https = require('https'), fs = require('fs');
const [key, cert, log] = process.argv.slice(1);
const server = https.createServer({ key: fs.readFileSync(key), cert: fs.readFileSync(cert) }, (req, res) => {
  let body = '';
  req.on('data', (d) => (body += d));
  req.on('end', () => { fs.appendFileSync(log, body + '\n'); res.writeHead(200); res.end('ok'); });
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
"#;
    let mut child = std::process::Command::new("node")
        .args(["-e", script])
        .arg(dir.join("web-server.key"))
        .arg(dir.join("web-server.pem"))
        .arg(log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node must be installed");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (
        child,
        line.trim().parse().expect("the server prints its port"),
    )
}

#[test]
fn an_http_plugin_speaks_https_checked_against_the_trusted_roots() {
    let mut t = Ns::new("https");
    let dir = crate::util::TempDir::new("https");
    crate::util::certificates(&dir.0, "web");
    crate::util::certificates(&dir.0, "other");
    let log = dir.0.join("requests.log");
    let (server, port) = https_server(&dir.0, &log);
    let _server = crate::util::KillOnDrop(server);
    let config = crate::util::ConfigFile::new(
        "https",
        &format!(
            r#"
[[plugins]]
name = "secure"
kind = "http"
classes = ["Https::*"]
url = "https://localhost:{port}/jobs"
timeout = "5s"
"#
        ),
    );
    let run = |t: &Ns, env: &[(&str, std::path::PathBuf)]| {
        let mut c = t.bin();
        c.args(["--config", config.arg(), "--queues", "q", "--interval", "0"]);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // Trusted through SSL_CERT_FILE: the job is POSTed over TLS.
    t.push("q", &job("Https::Ok", json!([1])));
    run(&t, &[("SSL_CERT_FILE", dir.0.join("web-ca.pem"))]);
    let posted = std::fs::read_to_string(&log).unwrap();
    assert!(posted.contains(r#""class":"Https::Ok""#), "{posted}");
    assert_eq!(t.int("stat:processed"), 1);
    assert!(t.failures().is_empty(), "{:?}", t.failures());

    // A certificate no trusted root signed (the trusted CA is another
    // one): the job fails, nothing is sent.
    t.push("q", &job("Https::Ok", json!([2])));
    run(&t, &[("SSL_CERT_FILE", dir.0.join("other-ca.pem"))]);
    let failures = t.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), posted);
}
