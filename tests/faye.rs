//! Faye interop with the real faye 1.4.3 + faye-redis 0.2.0 (tests/node,
//! pinned in its package-lock; tests/node/faye-peer.js runs a Faye server and
//! faye.Client subscribers and publishers): both transports, both
//! directions, wildcards, liveness past the server timeout, restarts of the
//! Faye server and of Redis, the bridge to jobs, job events, order, the CLI
//! (publish, say, subscribe), the plugin calls (faye.publish, faye.say), a
//! worker started while Faye is down, and a subscription the server
//! refuses. Issue 8.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ah_worker::faye::http::Connection;
use ah_worker::faye::{Faye, Settings, Subscription, Transport};
use redis::Commands;
use serde_json::{Value, json};

use crate::util::{
    InProcess, Ns, free_port, root, signal, start_redis, wait_for_async, wait_output_async,
};

/// The Node peer script.
fn peer() -> Command {
    let dir = root().join("tests/node");
    assert!(
        dir.join("node_modules/faye-redis").exists(),
        "faye peers not installed: run scripts/install-deps"
    );
    let mut c = Command::new("node");
    c.arg(dir.join("faye-peer.js"));
    c
}

/// A Faye server: faye 1.4.3's NodeAdapter at `/faye` with the faye-redis
/// engine (or the memory engine), killed on drop.
struct FayeServer {
    child: Child,
    port: u16,
    args: Vec<String>,
    redis: String,
    /// The `ext.token` it requires of every message (`FAYE_TOKEN`).
    token: Option<String>,
    /// Its environment besides `REDIS_URL` (`FAYE_TOKEN`, ...).
    env: Vec<(&'static str, String)>,
}

impl FayeServer {
    /// A faye-redis server on `redis` under `ns` with `timeout` seconds and a
    /// GC sweep every `gc` seconds.
    fn redis(redis: &str, ns: &str, timeout: f64, gc: u32) -> FayeServer {
        FayeServer::redis_on(free_port(), redis, ns, timeout, gc)
    }

    /// [`FayeServer::redis`] on a given port.
    fn redis_on(port: u16, redis: &str, ns: &str, timeout: f64, gc: u32) -> FayeServer {
        FayeServer::start(
            port,
            redis,
            vec![
                ns.into(),
                timeout.to_string(),
                "redis".into(),
                gc.to_string(),
            ],
        )
    }

    /// A memory-engine server: it forgets every client when it restarts.
    fn memory(timeout: f64) -> FayeServer {
        FayeServer::start(
            free_port(),
            "redis://127.0.0.1:1/0",
            vec!["-".into(), timeout.to_string(), "memory".into()],
        )
    }

    fn start(port: u16, redis: &str, args: Vec<String>) -> FayeServer {
        FayeServer {
            child: FayeServer::spawn(port, &args, redis, &[]),
            port,
            args,
            redis: redis.to_owned(),
            token: None,
            env: Vec::new(),
        }
    }

    /// The same server, refusing every message without `ext.token`.
    fn requiring_token(mut self, token: &str) -> FayeServer {
        self.token = Some(token.to_owned());
        self.env.push(("FAYE_TOKEN", token.to_owned()));
        self.restart();
        self
    }

    /// The same server with `env` set (see faye-peer.js: `FAYE_LOG`,
    /// `FAYE_NO_WILDCARDS`).
    fn with_env(mut self, env: &[(&'static str, &str)]) -> FayeServer {
        self.env
            .extend(env.iter().map(|(k, v)| (*k, v.to_string())));
        self.restart();
        self
    }

    /// A faye-peer client command for this server (with its token).
    fn client(&self, command: &str) -> Command {
        let mut c = peer();
        c.arg(command).arg(self.url());
        if let Some(token) = &self.token {
            c.env("FAYE_TOKEN", token);
        }
        c
    }

    /// Start the process and wait for its `{"listening":port}` line.
    fn spawn(port: u16, args: &[String], redis: &str, env: &[(&str, String)]) -> Child {
        let mut cmd = peer();
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd
            .arg("server")
            .arg(port.to_string())
            .args(args)
            .env("REDIS_URL", redis)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node must be installed");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&line).ok(),
            Some(json!({"listening": port})),
            "faye server did not start: {line:?}"
        );
        child
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/faye", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kill it and start it again on the same port.
    fn restart(&mut self) {
        self.stop();
        self.child = FayeServer::spawn(self.port, &self.args, &self.redis, &self.env);
    }
}

impl Drop for FayeServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The JSON lines `who` prints on `out`, collected by a thread as they come.
fn json_lines(
    out: impl std::io::Read + Send + 'static,
    who: &'static str,
) -> Arc<Mutex<Vec<Value>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{who} printed {line:?}: {e}"));
            sink.lock().unwrap().push(v);
        }
    });
    lines
}

/// A Node `faye.Client` subscribed to some channels, printing what it gets.
struct NodeSubscriber {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl NodeSubscriber {
    /// Subscribe and wait until the server acknowledged every subscription.
    async fn start(server: &FayeServer, patterns: &[&str]) -> NodeSubscriber {
        let mut child = server
            .client("subscribe")
            .args(patterns)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node must be installed");
        let lines = json_lines(child.stdout.take().unwrap(), "faye-peer");
        let s = NodeSubscriber { child, lines };
        wait_for_async(10, "the node subscriber to be subscribed", || {
            s.lines.lock().unwrap().first() == Some(&json!({"ready": true}))
        })
        .await;
        s
    }

    /// Messages received so far, `{"channel","data"}` each.
    fn messages(&self) -> Vec<Value> {
        self.lines.lock().unwrap()[1..].to_vec()
    }

    /// Wait until at least `n` messages arrived; returns them all.
    async fn wait(&self, n: usize, what: &str) -> Vec<Value> {
        wait_for_async(15, what, || self.messages().len() >= n).await;
        self.messages()
    }
}

impl Drop for NodeSubscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publish once from a Node `faye.Client` and wait for the server's ack.
async fn node_publish(server: &FayeServer, channel: &str, data: Value) {
    let mut cmd = server.client("publish");
    cmd.args([channel, &data.to_string()]);
    run_peer(cmd).await;
}

async fn run_peer(mut cmd: Command) -> Value {
    let out = tokio::task::spawn_blocking(move || cmd.stdin(Stdio::null()).output())
        .await
        .unwrap()
        .expect("node must be installed");
    assert!(
        out.status.success(),
        "faye-peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The faye-redis namespace of a test.
fn faye_ns(t: &Ns) -> String {
    format!("{}:faye:", t.ns)
}

fn redis_settings(url: &str, ns: &str, timeout: Duration) -> Settings {
    let mut s = Settings::defaults(url, &Default::default(), "rust-test");
    s.transport = Transport::Redis {
        url: url.to_owned(),
        tls: Default::default(),
        namespace: ns.to_owned(),
    };
    s.timeout = timeout;
    s
}

/// The Python example coprocess plugin (its `Py::Publish` and `Py::Say`
/// use the faye.publish and faye.say calls).
fn python_plugin() -> ah_worker::plugin::PluginSpec {
    crate::util::plugin(
        r#"
name = "python-example"
kind = "coprocess"
classes = ["Py::*"]
command = ["python3", "examples/plugins/python/coprocess.py"]
"#,
    )
}

/// A `[faye]` section's body, as the config file gives it, over the
/// worker's Redis at `redis_url`.
fn faye_section(body: &str, redis_url: &str) -> Settings {
    Settings::from_toml(
        toml::from_str(body).unwrap(),
        redis_url,
        &Default::default(),
        "rust-test",
    )
    .unwrap()
}

fn http_settings(server: &FayeServer, timeout: Duration) -> Settings {
    http_settings_with(server, timeout, Connection::EventSource)
}

fn http_settings_with(server: &FayeServer, timeout: Duration, connection: Connection) -> Settings {
    let mut s = Settings::defaults("redis://unused", &Default::default(), "rust-test");
    s.transport = Transport::Http {
        url: server.url(),
        connection,
    };
    s.timeout = timeout;
    s
}

/// A Faye handle per transport: the engine peer on `ns` at `url`, and the
/// Bayeux clients of `server` receiving on an event stream and on a
/// WebSocket.
async fn transports(
    url: &str,
    ns: &str,
    server: &FayeServer,
    timeout: Duration,
) -> (Faye, Faye, Faye) {
    let engine = Faye::connect(&redis_settings(url, ns, timeout))
        .await
        .unwrap();
    let http = Faye::connect(&http_settings(server, timeout))
        .await
        .unwrap();
    let ws = Faye::connect(&http_settings_with(server, timeout, Connection::WebSocket))
        .await
        .unwrap();
    (engine, http, ws)
}

/// The next message of `sub`, within 10 s.
async fn next(sub: &mut Subscription) -> ah_worker::faye::Message {
    tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("no message within 10 s")
        .expect("the subscription ended")
}

fn patterns(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| s.to_string()).collect()
}

/// Both directions over one transport: a Node client publishes to our
/// wildcard subscription, we publish to a Node client's wildcard one.
async fn exchange_both_ways(faye: &Faye, server: &FayeServer) {
    let stop = tokio_util::sync::CancellationToken::new();
    let mut ours = faye.subscribe(&patterns(&["/node/**"]), &stop).unwrap();
    ours.ready().await.expect("subscribed");
    // Published first, on a channel we did not subscribe to: must not arrive.
    node_publish(server, "/other/x", json!({"skip": true})).await;
    node_publish(server, "/node/a/b", json!({"from": "node"})).await;
    let m = next(&mut ours).await;
    assert_eq!(m.channel, "/node/a/b");
    assert_eq!(m.data, json!({"from": "node"}));

    let theirs = NodeSubscriber::start(server, &["/rust/*"]).await;
    faye.publish("/rust/deep/er", json!({"skip": true}))
        .await
        .unwrap();
    faye.publish("/rust/x", json!({"from": "rust", "list": [1, "é"]}))
        .await
        .unwrap();
    let got = theirs.wait(1, "our message at the node client").await;
    assert_eq!(
        got[0],
        json!({"channel": "/rust/x", "data": {"from": "rust", "list": [1, "é"]}})
    );
    ours.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_engine_peer_and_node_clients_exchange_messages_both_ways() {
    let t = Ns::new("fayeredis");
    let ns = faye_ns(&t);
    let server = FayeServer::redis(&t.url, &ns, 2.0, 60);
    let faye = Faye::connect(&redis_settings(&t.url, &ns, Duration::from_secs(2)))
        .await
        .unwrap();
    exchange_both_ways(&faye, &server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bayeux_http_client_and_node_clients_exchange_messages_both_ways() {
    let t = Ns::new("fayehttp");
    // The server refuses any message without the token in its ext: every
    // message of ours carries the configured ext.
    let server = FayeServer::redis(&t.url, &faye_ns(&t), 2.0, 60).requiring_token("s3cret");
    for connection in [
        Connection::EventSource,
        Connection::LongPolling,
        Connection::WebSocket,
    ] {
        let mut settings = http_settings_with(&server, Duration::from_secs(2), connection);
        settings.ext = Some(json!({"token": "s3cret"}));
        let faye = Faye::connect(&settings).await.unwrap();
        exchange_both_ways(&faye, &server).await;
    }
    // Without it, Faye's refusal comes back as an error naming the reason.
    let faye = Faye::connect(&http_settings(&server, Duration::from_secs(2)))
        .await
        .unwrap();
    let err = faye.publish("/rust/x", json!(1)).await.unwrap_err();
    assert!(err.to_string().contains("403::token required"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_peer_writes_the_faye_redis_layout() {
    let mut t = Ns::new("fayelayout");
    let ns = faye_ns(&t);
    let faye = Faye::connect(&redis_settings(&t.url, &ns, Duration::from_secs(2)))
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let before = chrono::Utc::now().timestamp_millis();
    let mut sub = faye.subscribe(&patterns(&["/l/**"]), &stop).unwrap();
    let id = sub.ready().await.unwrap();
    assert_eq!(id.len(), 31);
    // Registered with a real timestamp, subscribed on both sides.
    let score: f64 = t.conn.zscore(format!("{ns}/clients"), &id).unwrap();
    assert!(score as i64 >= before, "score {score} is a real time");
    let channels: Vec<String> = t
        .conn
        .smembers(format!("{ns}/clients/{id}/channels"))
        .unwrap();
    assert_eq!(channels, ["/l/**"]);
    let members: Vec<String> = t.conn.smembers(format!("{ns}/channels/l/**")).unwrap();
    assert_eq!(members, std::slice::from_ref(&id));

    // A stale subscriber (last ping long ago) and a live one we drain by
    // hand: the message is queued for the live one only, in Faye's shape.
    let stale_ping = chrono::Utc::now().timestamp_millis() - 60_000;
    let _: () = t
        .conn
        .zadd(format!("{ns}/clients"), "stalepeer", stale_ping)
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let _: () = t
        .conn
        .zadd(format!("{ns}/clients"), "handpeer", now)
        .unwrap();
    for cid in ["stalepeer", "handpeer"] {
        let _: () = t.conn.sadd(format!("{ns}/channels/l/*"), cid).unwrap();
    }
    faye.publish("/l/x", json!({"k": [1, 2]})).await.unwrap();
    let queued: Vec<String> = t
        .conn
        .lrange(format!("{ns}/clients/handpeer/messages"), 0, -1)
        .unwrap();
    let stored: serde_json::Map<String, Value> = serde_json::from_str(&queued[0]).unwrap();
    let keys: Vec<&str> = stored.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["channel", "data", "id"],
        "no successful, advice or error"
    );
    assert_eq!(stored["data"], json!({"k": [1, 2]}));
    let stale: bool = t
        .conn
        .exists(format!("{ns}/clients/stalepeer/messages"))
        .unwrap();
    assert!(!stale, "a dead client's queue is dropped, as Node does");
    // Our own subscriber got it too (one copy, through /l/**).
    assert_eq!(next(&mut sub).await.channel, "/l/x");

    // A clean shutdown destroys our client as faye-redis's destroyClient.
    sub.close().await;
    let score: Option<f64> = t.conn.zscore(format!("{ns}/clients"), &id).unwrap();
    assert_eq!(score, None);
    let members: Vec<String> = t.conn.smembers(format!("{ns}/channels/l/**")).unwrap();
    assert!(members.is_empty());
    let left: bool = t
        .conn
        .exists(format!("{ns}/clients/{id}/channels"))
        .unwrap();
    assert!(!left);
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_client_registers_again_after_being_collected() {
    let mut t = Ns::new("fayecollect");
    let ns = faye_ns(&t);
    let faye = Faye::connect(&redis_settings(&t.url, &ns, Duration::from_secs(1)))
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut sub = faye.subscribe(&patterns(&["/c/*"]), &stop).unwrap();
    let first = sub.ready().await.unwrap();
    // What faye-redis's GC does to a client: gone from the set, its
    // subscriptions removed, `close` published with its id.
    let _: () = t.conn.zrem(format!("{ns}/clients"), &first).unwrap();
    let _: () = t.conn.srem(format!("{ns}/channels/c/*"), &first).unwrap();
    let _: () = t
        .conn
        .publish(format!("{ns}/notifications/close"), &first)
        .unwrap();
    wait_for_async(5, "a new registration after close", || {
        sub.client_id().is_some_and(|id| id != first)
    })
    .await;
    let second = sub.client_id().unwrap();
    faye.publish("/c/x", json!(1)).await.unwrap();
    assert_eq!(next(&mut sub).await.data, json!(1));
    // Removed without a notification: the next ping notices.
    let _: () = t.conn.zrem(format!("{ns}/clients"), &second).unwrap();
    wait_for_async(5, "a new registration after a silent removal", || {
        sub.client_id().is_some_and(|id| id != second)
    })
    .await;
    let members: Vec<String> = t.conn.smembers(format!("{ns}/channels/c/*")).unwrap();
    assert!(members.contains(&sub.client_id().unwrap()), "{members:?}");
    faye.publish("/c/y", json!(2)).await.unwrap();
    assert_eq!(next(&mut sub).await.data, json!(2));
    sub.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_outlive_twice_the_server_timeout() {
    let t = Ns::new("fayealive");
    let ns = faye_ns(&t);
    // timeout 1 s, GC every second: an idle client is unknown after 1.6 s
    // and destroyed by the first sweep after 2 s.
    let server = FayeServer::redis(&t.url, &ns, 1.0, 1);
    let timeout = Duration::from_secs(1);
    let (engine, http, ws) = transports(&t.url, &ns, &server, timeout).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut a = engine.subscribe(&patterns(&["/alive/**"]), &stop).unwrap();
    let mut b = http.subscribe(&patterns(&["/alive/*"]), &stop).unwrap();
    let mut c = ws.subscribe(&patterns(&["/alive/*"]), &stop).unwrap();
    let (id_a, id_b) = (a.ready().await.unwrap(), b.ready().await.unwrap());
    let id_c = c.ready().await.unwrap();
    // The point of the test is time passing: 2 T plus a GC period, and more.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(a.client_id(), Some(id_a), "never re-registered: kept alive");
    assert_eq!(b.client_id(), Some(id_b), "never re-handshaken: kept alive");
    assert_eq!(c.client_id(), Some(id_c), "never re-handshaken: kept alive");
    node_publish(&server, "/alive/x", json!("still here")).await;
    for sub in [&mut a, &mut b, &mut c] {
        assert_eq!(next(sub).await.data, json!("still here"));
    }
    a.close().await;
    b.close().await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_transport_keeps_receiving_across_a_faye_server_restart() {
    let t = Ns::new("fayerestart");
    let ns = faye_ns(&t);
    let mut server = FayeServer::redis(&t.url, &ns, 2.0, 60);
    let timeout = Duration::from_secs(2);
    let (engine, http, ws) = transports(&t.url, &ns, &server, timeout).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut a = engine.subscribe(&patterns(&["/r/*"]), &stop).unwrap();
    let mut b = http.subscribe(&patterns(&["/r/*"]), &stop).unwrap();
    let mut c = ws.subscribe(&patterns(&["/r/*"]), &stop).unwrap();
    a.ready().await.unwrap();
    b.ready().await.unwrap();
    c.ready().await.unwrap();
    let node = NodeSubscriber::start(&server, &["/r/*"]).await;
    server.restart();
    // Through the new server process: Node publishes, both of ours receive
    // (the http one on its next long poll); we publish, the Node client,
    // reconnected to the new process, receives.
    node_publish(&server, "/r/after", json!("restarted")).await;
    assert_eq!(next(&mut a).await.data, json!("restarted"));
    assert_eq!(next(&mut b).await.data, json!("restarted"));
    assert_eq!(next(&mut c).await.data, json!("restarted"));
    let got = node.wait(1, "the node client to get the message").await;
    assert_eq!(got[0]["data"], json!("restarted"));
    engine.publish("/r/ours", json!("from rust")).await.unwrap();
    let got = node.wait(2, "the node client to get ours").await;
    assert_eq!(got[1]["data"], json!("from rust"));
    a.close().await;
    b.close().await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_subscriber_handshakes_again_when_the_server_forgot_it() {
    // The memory engine loses every client with the process: the next
    // connect gets 401 / advice handshake.
    let mut server = FayeServer::memory(1.0);
    for connection in [Connection::EventSource, Connection::WebSocket] {
        let settings = http_settings_with(&server, Duration::from_secs(1), connection);
        let faye = Faye::connect(&settings).await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let mut sub = faye.subscribe(&patterns(&["/m/**"]), &stop).unwrap();
        let first = sub.ready().await.unwrap();
        server.restart();
        wait_for_async(10, "a new handshake", || {
            sub.client_id().is_some_and(|id| id != first)
        })
        .await;
        node_publish(&server, "/m/x/y", json!("resubscribed")).await;
        assert_eq!(
            next(&mut sub).await.data,
            json!("resubscribed"),
            "{connection:?}"
        );
        sub.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn both_sides_recover_after_redis_restarts() {
    // A Redis of our own, restarted empty (no persistence): every Faye
    // client, subscription and queued message is gone.
    let port = free_port();
    let mut redis_server = start_redis(port, &[]);
    let url = redis_server.url();
    let t = Ns::on(&url, "fayeredisrestart");
    let ns = faye_ns(&t);
    let server = FayeServer::redis(&url, &ns, 1.0, 60);
    let faye = Faye::connect(&redis_settings(&url, &ns, Duration::from_secs(1)))
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut ours = faye.subscribe(&patterns(&["/rr/*"]), &stop).unwrap();
    let first = ours.ready().await.unwrap();
    let node = NodeSubscriber::start(&server, &["/rr/*"]).await;

    drop(redis_server);
    redis_server = start_redis(port, &[]);
    let back = Instant::now();
    wait_for_async(15, "our engine client to register again", || {
        ours.client_id().is_some_and(|id| id != first)
    })
    .await;
    // Faye is at-most-once: until both sides are registered again, messages
    // are lost. Publish every 200 ms until one arrives, each way.
    let mut n = 0;
    let to_us = loop {
        n += 1;
        node_publish(&server, "/rr/node", json!(n)).await;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), ours.recv()).await {
            break m;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "node → us never recovered"
        );
    };
    let node_gap = back.elapsed();
    let mut k = 0;
    loop {
        k += 1;
        // Publishing may fail while our connection reconnects.
        let _ = faye.publish("/rr/rust", json!(k)).await;
        if !node.messages().is_empty() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "us → node never recovered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "faye after a Redis restart: node → us after {node_gap:?} ({} publishes lost), us → node after {:?} ({} lost)",
        n - 1,
        back.elapsed(),
        k - 1
    );
    assert_eq!(to_us.channel, "/rr/node");
    ours.close().await;
    drop(redis_server);
}

#[tokio::test(flavor = "multi_thread")]
async fn bridge_rules_turn_node_publishes_into_jobs() {
    let mut t = Ns::new("fayebridge");
    let ns = faye_ns(&t);
    let server = FayeServer::redis(&t.url, &ns, 2.0, 60);
    let settings = faye_section(
        &format!(
            r#"
namespace = "{ns}"
timeout = 2
[[subscribe]]
channel = "/jobs/count"
class = "AhWorker::Count"
queue = "faye"
[[subscribe]]
channel = "/jobs/fail/*"
class = "AhWorker::Fail"
queue = "faye"
args = "message"
"#
        ),
        &t.url,
    );
    let mut config = t.config(&["faye"], 2);
    config.faye = Some(settings);
    let worker = InProcess::builtin(config);
    wait_for_async(10, "the bridge to subscribe", || {
        let members: Vec<String> = t
            .conn
            .smembers(format!("{ns}/channels/jobs/fail/*"))
            .unwrap();
        !members.is_empty()
    })
    .await;
    // data ["key", "field"] is the args list of AhWorker::Count.
    node_publish(&server, "/jobs/count", json!(["fayecount", "hits"])).await;
    node_publish(&server, "/jobs/fail/x", json!({"why": "asked"})).await;
    wait_for_async(10, "the bridged jobs to run", || {
        let hits: Option<i64> = t.conn.hget(t.key("fayecount"), "hits").unwrap();
        hits == Some(1) && t.list("failed").len() == 1
    })
    .await;
    let failure = &t.failures()[0];
    assert_eq!(failure["payload"]["class"], json!("AhWorker::Fail"));
    let arg = &failure["payload"]["args"][0];
    assert_eq!(arg["channel"], json!("/jobs/fail/x"));
    assert_eq!(arg["data"], json!({"why": "asked"}));
    assert!(arg["id"].is_string());
    assert_eq!(t.int("stat:processed"), 2);
    worker.stop().await;
    // The bridge's client is shared with the fleet: it stays subscribed for
    // the other workers with these rules (the Faye servers collect it once
    // none pings it).
    let members: Vec<String> = t
        .conn
        .smembers(format!("{ns}/channels/jobs/count"))
        .unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_with_the_same_rules_make_one_job_of_each_publish() {
    let mut t = Ns::new("fayefleet");
    let ns = faye_ns(&t);
    let rules = format!(
        r#"
namespace = "{ns}"
timeout = 2
[[subscribe]]
channel = "/fleet/*"
class = "AhWorker::Count"
queue = "fleet"
"#
    );
    let mut workers = Vec::new();
    for host in ["fleet-a", "fleet-b", "fleet-c"] {
        let mut config = t.config(&["fleet"], 2);
        config.host_name = Some(host.into());
        config.faye = Some(faye_section(&rules, &t.url));
        workers.push(InProcess::builtin(config));
    }
    wait_for_async(10, "the bridges to subscribe", || {
        let members: Vec<String> = t.conn.smembers(format!("{ns}/channels/fleet/*")).unwrap();
        !members.is_empty()
    })
    .await;
    let members: Vec<String> = t.conn.smembers(format!("{ns}/channels/fleet/*")).unwrap();
    assert_eq!(
        members.len(),
        1,
        "one engine client for the three: {members:?}"
    );
    let publisher = Faye::connect(&redis_settings(&t.url, &ns, Duration::from_secs(2)))
        .await
        .unwrap();
    let n = 60;
    for i in 0..n {
        publisher
            .publish(
                &format!("/fleet/m{}", i % 3),
                json!(["fleetcount", format!("m{i}")]),
            )
            .await
            .unwrap();
    }
    wait_for_async(20, "every publish performed", || {
        t.conn.hlen::<_, usize>(t.key("fleetcount")).unwrap() == n
    })
    .await;
    // Give a duplicate time to show up, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts: std::collections::HashMap<String, i64> =
        t.conn.hgetall(t.key("fleetcount")).unwrap();
    assert!(counts.values().all(|c| *c == 1), "{counts:?}");
    assert_eq!(t.int("stat:processed"), n as i64);
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn job_events_reach_a_node_subscriber() {
    let mut t = Ns::new("fayeevents");
    let server = FayeServer::redis(&t.url, &faye_ns(&t), 2.0, 60);
    let node = NodeSubscriber::start(&server, &["/ahw/**"]).await;
    let settings = faye_section(
        &format!(
            r#"
transport = "http"
url = "{}"
timeout = 2
[events]
channel = "/ahw/events"
classes = ["AhWorker::*"]
"#,
            server.url()
        ),
        &t.url,
    );
    t.push("ev", br#"{"class":"AhWorker::Noop","args":[]}"#);
    t.push(
        "ev",
        br#"{"class":"AhWorker::Fail","args":["broken on purpose"]}"#,
    );
    let mut config = t.config(&["ev"], 1);
    config.interval = Duration::ZERO;
    config.faye = Some(settings);
    InProcess::builtin(config).join().await;
    let got = node.wait(4, "four job events").await;
    let events: Vec<&Value> = got.iter().map(|m| &m["data"]).collect();
    assert!(got.iter().all(|m| m["channel"] == json!("/ahw/events")));
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["class"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("started", "AhWorker::Noop"),
            ("succeeded", "AhWorker::Noop"),
            ("started", "AhWorker::Fail"),
            ("failed", "AhWorker::Fail"),
        ]
    );
    assert!(events.iter().all(|e| e["queue"] == json!("ev")));
    assert!(events[1]["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(events[3]["exception"], json!("RuntimeError"));
    assert_eq!(events[3]["error"], json!("broken on purpose"));
    assert!(events[0].get("duration_ms").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn order_of_messages_from_one_publisher_is_kept() {
    const N: usize = 200;
    let t = Ns::new("fayeorder");
    let ns = faye_ns(&t);
    let server = FayeServer::redis(&t.url, &ns, 2.0, 60);
    let timeout = Duration::from_secs(2);
    let (engine, http, ws) = transports(&t.url, &ns, &server, timeout).await;
    let in_order = |got: Vec<Value>| {
        let ns: Vec<u64> = got
            .iter()
            .map(|m| m["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, (0..N as u64).collect::<Vec<_>>());
    };

    // Node → us, on each transport.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut a = engine.subscribe(&patterns(&["/o/node"]), &stop).unwrap();
    let mut b = http.subscribe(&patterns(&["/o/*"]), &stop).unwrap();
    let mut c = ws.subscribe(&patterns(&["/o/node"]), &stop).unwrap();
    a.ready().await.unwrap();
    b.ready().await.unwrap();
    c.ready().await.unwrap();
    let mut cmd = server.client("publish-many");
    cmd.args(["/o/node", &N.to_string()]);
    let started = Instant::now();
    assert_eq!(run_peer(cmd).await["count"], json!(N));
    for sub in [&mut a, &mut b, &mut c] {
        let mut got = Vec::new();
        for _ in 0..N {
            got.push(json!({"data": next(sub).await.data}));
        }
        in_order(got);
    }
    eprintln!(
        "{N} messages node → us (three ways) in {:?}",
        started.elapsed()
    );

    // Us → Node, on each transport.
    for (name, faye, channel) in [("redis", &engine, "/o/redis"), ("http", &http, "/o/http")] {
        let node = NodeSubscriber::start(&server, &[channel]).await;
        let started = Instant::now();
        for n in 0..N {
            faye.publish(channel, json!({"n": n})).await.unwrap();
        }
        in_order(node.wait(N, "all our messages").await);
        eprintln!(
            "{N} messages us → node over {name} in {:?}",
            started.elapsed()
        );
    }
    a.close().await;
    b.close().await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn say_and_publish_from_the_cli_reach_node_clients() {
    let t = Ns::new("fayecli");
    let ns = faye_ns(&t);
    let server = FayeServer::redis(&t.url, &ns, 2.0, 60);
    let node = NodeSubscriber::start(&server, &["/actionhero/chat/chat", "/cli/*"]).await;
    let config = FayeConfig::new(
        &t,
        "cli",
        &format!("namespace = \"{ns}\"\nserver_token = \"tok3n\"\nserver_id = \"worker-7\""),
    );
    let cli = |args: &[&str]| config.command(&t, args).output().unwrap();
    let before = chrono::Utc::now().timestamp_millis();
    for args in [
        &["say", "lobby", "hello from rust"][..],
        &["faye", "publish", "/cli/x", r#"{"via":"cli"}"#],
    ] {
        let out = cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let got = node.wait(2, "the chat message and the publish").await;
    let chat = &got[0];
    assert_eq!(chat["channel"], json!("/actionhero/chat/chat"));
    let data = &chat["data"];
    assert_eq!(data["serverToken"], json!("tok3n"));
    assert_eq!(data["serverId"], json!("worker-7"));
    assert_eq!(data["message"], json!("hello from rust"));
    assert_eq!(data["connection"], json!({"id": 0, "room": "lobby"}));
    assert!(data["sentAt"].as_i64().unwrap() >= before);
    assert_eq!(got[1], json!({"channel": "/cli/x", "data": {"via": "cli"}}));
    // Bad input is a usage error (exit 2) naming the problem.
    assert_eq!(
        cli(&["faye", "publish", "/cli/x", "{not json"])
            .status
            .code(),
        Some(2)
    );
    let out = cli(&["faye", "publish", "/cli.x", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid channel \"/cli.x\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coprocess_plugin_publishes_and_says_through_the_worker() {
    let mut t = Ns::new("fayeplugin");
    let ns = faye_ns(&t);
    let server = FayeServer::redis(&t.url, &ns, 2.0, 60);
    let node = NodeSubscriber::start(&server, &["/plug/*", "/actionhero/chat/chat"]).await;
    t.push(
        "q",
        br#"{"class":"Py::Publish","args":["/plug/x",{"from":"python"}]}"#,
    );
    t.push("q", br#"{"class":"Py::Publish","args":["/plug.bad",1]}"#);
    t.push(
        "q",
        br#"{"class":"Py::Say","args":["lobby","hello from python"]}"#,
    );
    let mut config = t.config(&["q"], 1);
    config.interval = Duration::ZERO;
    let mut settings = redis_settings(&t.url, &ns, Duration::from_secs(2));
    settings.chat.server_token = Some("tok3n".into());
    settings.chat.server_id = "worker-py".into();
    config.faye = Some(settings);
    config.plugins = vec![python_plugin()];
    let before = chrono::Utc::now().timestamp_millis();
    InProcess::builtin(config).join().await;
    let got = node.wait(2, "the plugin's message and chat line").await;
    assert_eq!(
        got[0],
        json!({"channel": "/plug/x", "data": {"from": "python"}})
    );
    // faye.say: actionHero's chat format on its chat channel, as a
    // server-side broadcast (connection id 0) to the room.
    assert_eq!(got[1]["channel"], json!("/actionhero/chat/chat"));
    let chat = &got[1]["data"];
    let keys: Vec<&str> = chat
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["serverToken", "serverId", "message", "sentAt", "connection"]
    );
    assert_eq!(chat["serverToken"], json!("tok3n"));
    assert_eq!(chat["serverId"], json!("worker-py"));
    assert_eq!(chat["message"], json!("hello from python"));
    assert_eq!(chat["connection"], json!({"id": 0, "room": "lobby"}));
    assert!(chat["sentAt"].as_i64().unwrap() >= before);
    let failures = t.failures();
    assert_eq!(failures.len(), 1);
    let error = failures[0]["error"].as_str().unwrap();
    assert!(
        error.contains("faye.publish failed: invalid channel"),
        "{error}"
    );
}

/// A worker whose Faye is not up when it starts (its own Redis for the
/// redis transport, the Faye server for http) keeps running jobs, and once
/// Faye answers, its bridge rule subscribes and job events flow.
async fn faye_comes_up_after_the_worker(transport: &str) {
    let mut t = Ns::new(&format!("fayelate{transport}"));
    let ns = faye_ns(&t);
    // The redis transport's Redis, or the Faye server's port: nothing
    // listens there yet.
    let port = free_port();
    let faye_redis = format!("redis://127.0.0.1:{port}/0");
    let where_ = match transport {
        "redis" => format!("redis = \"{faye_redis}\"\nnamespace = \"{ns}\""),
        _ => format!("url = \"http://127.0.0.1:{port}/faye\""),
    };
    let settings = faye_section(
        &format!(
            r#"
transport = "{transport}"
{where_}
timeout = 2
[events]
channel = "/late-events/jobs"
[[subscribe]]
channel = "/late/*"
class = "AhWorker::Count"
queue = "late"
"#
        ),
        &t.url,
    );
    t.push(
        "late",
        br#"{"class":"AhWorker::Count","args":["fayelate","before"]}"#,
    );
    // A plugin's publish meanwhile fails its job with a clear error.
    t.push(
        "late",
        br#"{"class":"Py::Publish","args":["/late-events/early",1]}"#,
    );
    let mut config = t.config(&["late"], 1);
    config.interval = Duration::from_millis(100);
    config.faye = Some(settings);
    config.plugins = vec![python_plugin()];
    let worker = InProcess::builtin(config);
    let counted =
        |t: &mut Ns, field: &str| -> Option<i64> { t.conn.hget(t.key("fayelate"), field).unwrap() };
    wait_for_async(10, "jobs to run while faye is down", || {
        counted(&mut t, "before") == Some(1) && t.list("failed").len() == 1
    })
    .await;
    let error = t.failures()[0]["error"].as_str().unwrap().to_owned();
    let expected = match transport {
        "redis" => "faye.publish failed: faye's redis has not answered yet",
        _ => "faye.publish failed: request to the faye server",
    };
    assert!(error.starts_with(expected), "{error}");
    // Long enough for a few failed attempts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!worker.task.is_finished(), "the worker keeps running");

    // Faye comes up: for the redis transport its Redis and a Faye server on
    // it; for http the Faye server on the configured port (on the tests'
    // Redis).
    let (_redis_guard, server, faye_redis) = match transport {
        "redis" => {
            let guard = start_redis(port, &[]);
            let server = FayeServer::redis(&faye_redis, &ns, 2.0, 60);
            (Some(guard), server, faye_redis)
        }
        _ => (
            None,
            FayeServer::redis_on(port, &t.url, &ns, 2.0, 60),
            t.url.clone(),
        ),
    };
    let mut faye_conn = redis::Client::open(faye_redis)
        .unwrap()
        .get_connection()
        .unwrap();
    let came_up = Instant::now();
    wait_for_async(20, "the bridge to subscribe once faye answers", || {
        let members: Vec<String> = faye_conn.smembers(format!("{ns}/channels/late/*")).unwrap();
        !members.is_empty()
    })
    .await;
    eprintln!(
        "faye over {transport} came up; the bridge subscribed {:?} later",
        came_up.elapsed()
    );
    let events = NodeSubscriber::start(&server, &["/late-events/*"]).await;
    node_publish(&server, "/late/x", json!(["fayelate", "after"])).await;
    wait_for_async(10, "the bridged job to run", || {
        counted(&mut t, "after") == Some(1)
    })
    .await;
    let got = events.wait(2, "the bridged job's events").await;
    assert_eq!(got[0]["data"]["event"], json!("started"));
    assert_eq!(got[1]["data"]["event"], json!("succeeded"));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_starts_while_faye_redis_is_down_and_bridges_once_it_answers() {
    faye_comes_up_after_the_worker("redis").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_starts_while_the_faye_server_is_down_and_bridges_once_it_answers() {
    faye_comes_up_after_the_worker("http").await;
}

/// A config file holding `[faye]` with `body` (removed on drop, as every
/// [`crate::util::ConfigFile`]).
struct FayeConfig(crate::util::ConfigFile);

impl FayeConfig {
    fn new(t: &Ns, name: &str, body: &str) -> FayeConfig {
        FayeConfig(crate::util::ConfigFile::new(
            &format!("{}-{name}", t.ns),
            &format!("[faye]\n{body}\n"),
        ))
    }

    /// `ah-worker --config <this> <args>`.
    fn command(&self, t: &Ns, args: &[&str]) -> Command {
        let mut c = t.bin();
        c.args(["--config", self.0.arg()]).args(args);
        c
    }

    /// `ah-worker --config <this> faye subscribe <patterns>`.
    fn subscribe(&self, t: &Ns, patterns: &[&str]) -> Command {
        let mut c = self.command(t, &["faye", "subscribe"]);
        c.args(patterns);
        c
    }
}

/// The JSON lines of a Faye server's `FAYE_LOG`; removes the file.
fn read_log(log: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap();
    let _ = std::fs::remove_file(log);
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// TERM `child` and wait (10 s at most) for its exit and output.
async fn terminate(child: Child) -> std::process::Output {
    signal(&child, "TERM");
    wait_output_async(child, 10).await
}

/// The Faye clients subscribed to `channel` (a name or pattern) on `ns`.
fn subscribers(t: &mut Ns, ns: &str, channel: &str) -> Vec<String> {
    t.conn.smembers(format!("{ns}/channels{channel}")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_faye_subscribe_cli_prints_what_a_node_client_publishes() {
    let mut t = Ns::new("fayeclisub");
    let ns = faye_ns(&t);
    let server = FayeServer::redis(&t.url, &ns, 2.0, 60);
    for (transport, body) in [
        ("redis", format!("namespace = \"{ns}\"\ntimeout = 2")),
        (
            "http",
            format!(
                "transport = \"http\"\nurl = \"{}\"\ntimeout = 2",
                server.url()
            ),
        ),
    ] {
        let config = FayeConfig::new(&t, transport, &body);
        let mut child = config
            .subscribe(&t, &["/cli/**", "/other"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let printed = json_lines(child.stdout.take().unwrap(), "ah-worker faye subscribe");
        wait_for_async(10, "the cli to subscribe", || {
            !subscribers(&mut t, &ns, "/cli/**").is_empty()
                && !subscribers(&mut t, &ns, "/other").is_empty()
        })
        .await;
        node_publish(&server, "/elsewhere", json!("not for us")).await;
        node_publish(&server, "/cli/a/b", json!({"n": 1, "s": "é"})).await;
        node_publish(&server, "/other", json!("text")).await;
        wait_for_async(10, "two printed messages", || {
            printed.lock().unwrap().len() >= 2
        })
        .await;
        let out = terminate(child).await;
        assert!(out.status.success(), "{transport}: {:?}", out.status);
        assert_eq!(
            *printed.lock().unwrap(),
            [
                json!({"channel": "/cli/a/b", "data": {"n": 1, "s": "é"}}),
                json!({"channel": "/other", "data": "text"}),
            ],
            "{transport}"
        );
        // It left on TERM: no subscriber remains.
        assert!(
            subscribers(&mut t, &ns, "/cli/**").is_empty(),
            "{transport}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_subscription_is_reported_once_and_retried_with_backoff() {
    let mut t = Ns::new("fayerefused");
    let ns = faye_ns(&t);
    let log = std::env::temp_dir().join(format!("{}.subscribes", t.ns));
    // actionHero's extension: no wildcard subscriptions.
    let server = FayeServer::redis(&t.url, &ns, 2.0, 60).with_env(&[
        ("FAYE_NO_WILDCARDS", "1"),
        ("FAYE_LOG", &log.display().to_string()),
    ]);
    let config = FayeConfig::new(
        &t,
        "refused",
        &format!(
            "transport = \"http\"\nurl = \"{}\"\ntimeout = 2",
            server.url()
        ),
    );
    let child = config
        .subscribe(&t, &["/plain", "/wild/*"])
        .env("AH_WORKER_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let window = Duration::from_secs(8);
    tokio::time::sleep(window).await;
    let out = terminate(child).await;
    assert!(out.status.success(), "{:?}", out.status);
    let seen = read_log(&log);
    let refused = seen.iter().filter(|s| s["refused"] == json!(true)).count();
    // Backoff from 0.1 s doubling: about 7 attempts in 8 s; a hot loop
    // would make hundreds.
    eprintln!("{refused} refused subscriptions in {window:?}");
    assert!(
        (3..=15).contains(&refused),
        "{refused} refused subscriptions in {window:?}"
    );
    // Reported once for the whole streak, with the pattern and the
    // server's reason.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["level"] == json!("WARN"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert_eq!(
        warnings[0]["error"],
        json!(
            "faye refused the subscription to /wild/*: actionhero does not allow wildcard subscriptions"
        )
    );
    // Each refused client was disconnected, not left for collection (one
    // may be mid-attempt when TERM came).
    let clients: usize = t.conn.zcard(format!("{ns}/clients")).unwrap();
    assert!(clients <= 1, "{clients} clients left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_session_runs_on_its_socket_and_rebinds_after_a_server_restart() {
    let t = Ns::new("fayews");
    let ns = faye_ns(&t);
    let log = std::env::temp_dir().join(format!("{}.meta", t.ns));
    let mut server = FayeServer::redis(&t.url, &ns, 2.0, 60)
        .with_env(&[("FAYE_LOG", &log.display().to_string())]);
    let faye = Faye::connect(&http_settings_with(
        &server,
        Duration::from_secs(2),
        Connection::WebSocket,
    ))
    .await
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut sub = faye.subscribe(&patterns(&["/ws/*"]), &stop).unwrap();
    let id = sub.ready().await.unwrap();
    node_publish(&server, "/ws/before", json!(1)).await;
    assert_eq!(next(&mut sub).await.data, json!(1));
    // The socket breaks with the server; a new one is bound to the same
    // client id, which faye-redis still knows, and gets what was queued.
    server.restart();
    node_publish(&server, "/ws/after", json!(2)).await;
    let m = next(&mut sub).await;
    assert_eq!((m.channel.as_str(), m.data), ("/ws/after", json!(2)));
    assert_eq!(sub.client_id(), Some(id.clone()), "no new handshake");
    sub.close().await;
    // Our connects (the Node clients' are in the log too): on the socket,
    // and again after the restart, with the same client id.
    let ours: Vec<Value> = read_log(&log)
        .into_iter()
        .filter(|l| l["channel"] == json!("/meta/connect") && l["clientId"] == json!(id))
        .collect();
    assert!(ours.len() >= 2, "{ours:?}");
    assert!(
        ours.iter()
            .all(|c| c["connectionType"] == json!("websocket")),
        "{ours:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_transport_speaks_https_to_a_faye_server() {
    let mut t = Ns::new("fayehttps");
    let ns = faye_ns(&t);
    let dir = crate::util::TempDir::new("fayehttps");
    crate::util::certificates(&dir.0, "faye");
    let key = dir.0.join("faye-server.key").display().to_string();
    let cert = dir.0.join("faye-server.pem").display().to_string();
    // Two servers on one faye-redis namespace: ours speaks HTTPS, the Node
    // client's plain HTTP; faye-redis carries the messages between them.
    let secure = FayeServer::redis(&t.url, &ns, 2.0, 60)
        .with_env(&[("FAYE_TLS_KEY", &key), ("FAYE_TLS_CERT", &cert)]);
    let plain = FayeServer::redis(&t.url, &ns, 2.0, 60);
    let node = NodeSubscriber::start(&plain, &["/secure/**"]).await;
    let config = FayeConfig::new(
        &t,
        "https",
        &format!(
            "transport = \"http\"\nurl = \"https://localhost:{}/faye\"\ntimeout = 2",
            secure.port
        ),
    );
    let ca = dir.0.join("faye-ca.pem");

    // Publish over HTTPS, trusted through SSL_CERT_FILE.
    let out = config
        .command(&t, &["faye", "publish", "/secure/a", r#"{"over":"tls"}"#])
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = node.wait(1, "the publish over https").await;
    assert_eq!(
        got[0],
        json!({"channel": "/secure/a", "data": {"over": "tls"}})
    );

    // Subscribe over HTTPS: a Node publish reaches the CLI.
    let mut child = config
        .subscribe(&t, &["/secure/**"])
        .env("SSL_CERT_FILE", &ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let printed = json_lines(child.stdout.take().unwrap(), "ah-worker faye subscribe");
    wait_for_async(10, "the cli to subscribe over https", || {
        subscribers(&mut t, &ns, "/secure/**").len() >= 2
    })
    .await;
    node_publish(&plain, "/secure/b", json!({"n": 2})).await;
    wait_for_async(10, "the message printed", || {
        !printed.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        printed.lock().unwrap()[0],
        json!({"channel": "/secure/b", "data": {"n": 2}})
    );
    let _ = child.kill();
    let _ = child.wait();

    // Without the CA trusted, the publish fails with exit 1.
    let out = config
        .command(&t, &["faye", "publish", "/secure/a", "1"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
