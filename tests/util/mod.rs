//! Test harness: a private `redis-server` per test process, one namespace
//! per test, the ah-worker binary and the real node-resque peer.
//!
//! The server is started on a free port and stops by itself when the test
//! process exits (a small shell guard watches the parent). Set
//! `AH_WORKER_TEST_REDIS_URL` to use another server you own; tests touch only
//! their own namespace there and never flush anything.

#![allow(dead_code)]

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ah_worker::config::{Config, LogFormat};
use ah_worker::handler::Registry;
use ah_worker::shutdown::{Control, Controller, StopReport};
use redis::Commands;

static SERVER: OnceLock<String> = OnceLock::new();
/// The shared server, alive as long as the test process.
static GUARDS: Mutex<Vec<RedisGuard>> = Mutex::new(Vec::new());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The URL of the test Redis, starting it on first use.
pub fn redis_url() -> &'static str {
    SERVER.get_or_init(|| {
        if let Ok(url) = std::env::var("AH_WORKER_TEST_REDIS_URL") {
            return url;
        }
        let port = free_port();
        let guard = start_redis(port, &[]);
        GUARDS.lock().unwrap().push(guard);
        format!("redis://127.0.0.1:{port}/0")
    })
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` started by the tests. It stops when dropped, and in
/// any case when the test process exits (a small shell guard watches it).
pub struct RedisGuard {
    /// The guard shell.
    guard: Child,
    /// The server's pid.
    pub pid: u32,
    /// Its port.
    pub port: u16,
}

impl RedisGuard {
    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(self.pid.to_string())
            .status();
        let _ = self.guard.kill();
        let _ = self.guard.wait();
    }
}

/// Start a `redis-server` on `port` with `extra` arguments; waits until it
/// answers PING.
pub fn start_redis(port: u16, extra: &[&str]) -> RedisGuard {
    start_server(
        &format!(
            "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no \
             --dir {} --dbfilename ah-worker-test-{port}.rdb {}",
            std::env::temp_dir().display(),
            extra.join(" ")
        ),
        port,
    )
}

/// Start a `redis-sentinel` on `port` with the config file `conf` (which
/// it rewrites); waits until it answers PING.
pub fn start_sentinel(port: u16, conf: &Path) -> RedisGuard {
    start_server(
        &format!(
            "redis-sentinel {} --port {port} --bind 127.0.0.1",
            conf.display()
        ),
        port,
    )
}

/// Run the server `command` (listening on plain TCP `port`) under a guard
/// shell that stops it when this test process exits.
fn start_server(command: &str, port: u16) -> RedisGuard {
    use std::io::BufRead as _;
    let script = format!(
        "{command} >/dev/null 2>&1 & r=$!; echo $r; \
         while kill -0 {parent} 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 0.2; done; kill $r 2>/dev/null",
        parent = std::process::id()
    );
    let mut guard = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sh must exist");
    let mut line = String::new();
    std::io::BufReader::new(guard.stdout.take().expect("piped"))
        .read_line(&mut line)
        .unwrap();
    let guard = RedisGuard {
        guard,
        pid: line
            .trim()
            .parse()
            .expect("the guard prints the server pid"),
        port,
    };
    let url = guard.url();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection())
            && redis::cmd("PING").query::<String>(&mut c).is_ok()
        {
            return guard;
        }
        assert!(
            Instant::now() < deadline,
            "{command} did not start (is it installed? scripts/install-deps)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One test's namespace on the test server.
pub struct Ns {
    pub ns: String,
    pub url: String,
    pub conn: redis::Connection,
}

impl Ns {
    /// A fresh namespace named after the test.
    pub fn new(test: &str) -> Ns {
        Ns::on(redis_url(), test)
    }

    /// A fresh namespace on the server at `url`.
    pub fn on(url: &str, test: &str) -> Ns {
        let url = url.to_owned();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let ns = format!("t{}-{n}-{test}", std::process::id());
        let conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        Ns { ns, url, conn }
    }

    /// Where the test server is, for the library's connection types.
    pub fn target(&self) -> ah_worker::connection::Target {
        ah_worker::connection::Target::new(&self.url, &Default::default()).unwrap()
    }

    /// Open a new connection (after the server restarted).
    pub fn reconnect(&mut self) {
        self.conn = redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
    }

    /// `<ns>:<rest>`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.ns)
    }

    /// Run a command on the test server.
    pub fn cmd<T: redis::FromRedisValue>(&mut self, args: &[&str]) -> T {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut self.conn)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Push raw bytes onto a queue, as any enqueuer does.
    pub fn push(&mut self, queue: &str, payload: &[u8]) {
        let _: () = self.conn.sadd(self.key("queues"), queue).unwrap();
        let _: () = self
            .conn
            .rpush(self.key(&format!("queue:{queue}")), payload)
            .unwrap();
    }

    /// The list `<ns>:<rest>` as strings.
    pub fn list(&mut self, rest: &str) -> Vec<String> {
        self.conn.lrange(self.key(rest), 0, -1).unwrap()
    }

    /// An integer key, 0 when absent.
    pub fn int(&mut self, rest: &str) -> i64 {
        self.conn
            .get::<_, Option<i64>>(self.key(rest))
            .unwrap()
            .unwrap_or(0)
    }

    /// Every key of the namespace, without the prefix, sorted.
    pub fn keys(&mut self) -> Vec<String> {
        let prefix = format!("{}:", self.ns);
        let mut keys: Vec<String> = self
            .conn
            .scan_match::<_, String>(format!("{prefix}*"))
            .unwrap()
            .map(|k| k[prefix.len()..].to_owned())
            .collect();
        keys.sort();
        keys
    }

    /// The failure records, parsed.
    pub fn failures(&mut self) -> Vec<serde_json::Value> {
        self.list("failed")
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect()
    }

    /// A worker config for this namespace.
    pub fn config(&self, queues: &[&str], concurrency: usize) -> Config {
        Config {
            redis_url: self.url.clone(),
            redis: self.target(),
            redis_tls: Default::default(),
            namespace: self.ns.clone(),
            queues: queues.iter().map(|s| s.to_string()).collect(),
            concurrency,
            interval: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(30),
            log_format: LogFormat::Text,
            log_level: None,
            config_file: None,
            plugins: Vec::new(),
            unknown_class: ah_worker::worker::UnknownClass::Fail,
            dead_after: Duration::from_secs(30),
            dead_worker_jobs: ah_worker::worker::DeadWorkerJobs::Requeue,
            max_recoveries: 3,
            host_name: None,
            threads: 1,
            scheduler: false,
            scheduler_lock_ttl: Duration::from_secs(30),
            schedules: Vec::new(),
            policies: Default::default(),
            actionhero: None,
            faye: None,
            metrics_listen: None,
        }
    }

    /// The ah-worker binary with a clean environment pointing at this namespace.
    pub fn bin(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ah-worker"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REDIS_URL", &self.url)
            .env("AH_WORKER_NAMESPACE", &self.ns)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        c
    }

    /// Run the node-resque peer (`tests/node/peer.js`) and parse its JSON line.
    pub fn node(&self, args: &[&str]) -> serde_json::Value {
        let out = self
            .node_cmd(args)
            .output()
            .expect("node must be installed");
        assert!(
            out.status.success(),
            "peer.js {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("peer.js {args:?} printed {stdout:?}: {e}"))
    }

    /// The node peer command, to spawn it in the background.
    pub fn node_cmd(&self, args: &[&str]) -> Command {
        let dir = root().join("tests/node");
        assert!(
            dir.join("node_modules/node-resque").exists(),
            "node peers not installed: run scripts/install-deps"
        );
        let mut c = Command::new("node");
        c.arg(dir.join("peer.js"))
            .args(args)
            .env("REDIS_URL", &self.url)
            .env("RESQUE_NAMESPACE", &self.ns)
            .stdin(Stdio::null());
        c
    }
}

/// A worker running in this process.
pub struct InProcess {
    pub controller: Controller,
    pub task: tokio::task::JoinHandle<anyhow::Result<StopReport>>,
}

impl InProcess {
    /// Start a worker with `registry`.
    pub fn start(config: Config, registry: Registry) -> InProcess {
        let (controller, control) = Controller::new();
        let task =
            tokio::spawn(async move { ah_worker::app::run(&config, registry, control).await });
        InProcess { controller, task }
    }

    /// Start a worker with the built-in handlers.
    pub fn builtin(config: Config) -> InProcess {
        InProcess::start(config, Registry::with_builtin())
    }

    /// Send `Stop` and wait for the report.
    pub async fn stop(self) -> StopReport {
        self.controller.send(Control::Stop);
        self.join().await
    }

    /// Wait for the worker to end by itself.
    pub async fn join(self) -> StopReport {
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("worker did not stop within 60 s")
            .expect("worker task panicked")
            .expect("worker failed")
    }
}

/// Poll `cond` every 10 ms until it holds; panic with `what` after `secs`.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Async variant of [`wait_for`] for tests on the tokio runtime.
pub async fn wait_for_async(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Send a signal to a child process.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

/// Wait for a child to exit (at most `secs`) and return its output.
pub fn wait_output(mut child: Child, secs: u64) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {secs}s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_output`] from async tests, off the runtime's threads.
pub async fn wait_output_async(child: Child, secs: u64) -> Output {
    tokio::task::spawn_blocking(move || wait_output(child, secs))
        .await
        .unwrap()
}

/// Read a fixture file.
pub fn fixture(name: &str) -> serde_json::Value {
    let path: &Path = &root().join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A plugin declaration from TOML text.
pub fn plugin(text: &str) -> ah_worker::plugin::PluginSpec {
    ah_worker::plugin::PluginSpec::from_toml(toml::from_str(text).unwrap(), "test").unwrap()
}

/// A minimal HTTP/1.1 endpoint on 127.0.0.1 for `http` plugin tests. It
/// answers each POST by the job's class: `Http::Ok` 200, `Http::Fail` 500
/// with a body, `Http::Slow` 200 after 5 s, `Http::Drop` closes the
/// connection without answering (a handler dying mid-job); it keeps
/// connections alive and records every body it received.
pub struct FakeHttp {
    pub url: String,
    pub bodies: std::sync::Arc<Mutex<Vec<serde_json::Value>>>,
    pub connections: std::sync::Arc<AtomicUsize>,
}

impl FakeHttp {
    pub async fn start() -> FakeHttp {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jobs", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(Mutex::new(Vec::new()));
        let connections = std::sync::Arc::new(AtomicUsize::new(0));
        let (b, c) = (bodies.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::Relaxed);
                let bodies = b.clone();
                tokio::spawn(async move {
                    let (r, mut w) = sock.into_split();
                    let mut r = BufReader::new(r);
                    loop {
                        let mut len = 0usize;
                        let mut line = String::new();
                        // Request line and headers.
                        loop {
                            line.clear();
                            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; len];
                        r.read_exact(&mut body).await.unwrap();
                        let job: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        bodies.lock().unwrap().push(job.clone());
                        let (status, text) = match job["class"].as_str().unwrap_or("") {
                            "Http::Fail" => ("500 Internal Server Error", "boom: something broke"),
                            "Http::Drop" => return,
                            "Http::Slow" => {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                                ("200 OK", "late")
                            }
                            _ => ("200 OK", "ok"),
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{text}",
                            text.len()
                        );
                        if w.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeHttp {
            url,
            bodies,
            connections,
        }
    }
}

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ah-worker-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config file in the temp directory, named after `test` (unique per
/// test: a namespace does), removed when dropped; it can be rewritten at
/// once (between reloads).
pub struct ConfigFile(PathBuf);

impl ConfigFile {
    pub fn new(test: &str, text: &str) -> ConfigFile {
        let path = std::env::temp_dir().join(format!(
            "ah-worker-config-{}-{test}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        ConfigFile(path)
    }

    /// Replace the file at once, as careful deploy tools do: a reload never
    /// reads half a file.
    pub fn write(&self, text: &str) {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }

    pub fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A notify socket the tests bind, as systemd does, and every message it
/// received.
pub struct NotifySocket {
    sock: UnixDatagram,
    /// The `NOTIFY_SOCKET` value.
    pub target: String,
    path: Option<PathBuf>,
    pub seen: Vec<String>,
}

impl NotifySocket {
    /// A socket at a path in the temp directory.
    pub fn path(test: &str) -> NotifySocket {
        let path = std::env::temp_dir().join(format!(
            "ah-worker-notify-{}-{test}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket::with(sock, path.display().to_string(), Some(path))
    }

    /// A socket with an abstract name (`@name`).
    pub fn abstract_name(test: &str) -> NotifySocket {
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
    pub fn next(&mut self) -> Option<String> {
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.seen.push(msg.clone());
        Some(msg)
    }

    /// Wait up to `secs` for a message with a line for which `want` holds;
    /// returns that message.
    pub fn wait(&mut self, secs: u64, what: &str, want: impl Fn(&str) -> bool) -> String {
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
    pub fn collect(&mut self, d: Duration) -> Vec<String> {
        let deadline = Instant::now() + d;
        let mut got = Vec::new();
        while Instant::now() < deadline {
            got.extend(self.next());
        }
        got
    }

    pub fn seen_lines(&self) -> Vec<&str> {
        self.seen.iter().flat_map(|m| m.lines()).collect()
    }

    pub fn count(&self, line: &str) -> usize {
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

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl must be installed (scripts/install-deps)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `<name>-ca.pem` and, signed by it, `<name>-server.pem` for
/// localhost and `<name>-client.pem` (keys next to them).
pub fn certificates(dir: &Path, name: &str) {
    let ca = format!("{name}-ca");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    for who in ["server", "client"] {
        let base = format!("{name}-{who}");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                &format!("{base}.key"),
                "-out",
                &format!("{base}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &format!("{base}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-extfile",
                "san.ext",
                "-out",
                &format!("{base}.pem"),
            ],
        );
    }
}

/// A child process killed (and reaped) when dropped, also on a panic.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
