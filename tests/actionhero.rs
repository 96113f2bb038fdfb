//! actionHero's shared state, round-tripped with the real actionHero 7.1.1
//! code (tests/node/ah7.js loads its cache, stats and chatRoom initializers
//! onto a minimal api object; all their Redis access is actionHero's own).

use std::process::Stdio;
use std::time::Duration;

use ah_worker::actionhero::{ActionHero, CacheError, Settings};
use redis::Commands;
use serde_json::{Value, json};

use crate::util::{InProcess, Ns, root, wait_for_async};

/// Run ah7.js with this test's key prefix.
fn ah7(t: &Ns, args: &[&str]) -> Value {
    let out = std::process::Command::new("node")
        .arg(root().join("tests/node/ah7.js"))
        .args(args)
        .env("REDIS_URL", &t.url)
        .env("AH7_KEY_PREFIX", prefix(t))
        .stdin(Stdio::null())
        .output()
        .expect("node must be installed");
    assert!(
        out.status.success(),
        "ah7.js {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn prefix(t: &Ns) -> String {
    format!("{}-actionHero", t.ns)
}

/// Our side, with the same prefix and a server id of our own.
async fn ours(t: &Ns, server_id: &str) -> ActionHero {
    let mut s = Settings::seed(server_id);
    s.prefix = prefix(t);
    s.lock_prefix = format!("{}:lock:", s.prefix);
    s.stats_keys = vec![format!("{}:stats", s.prefix)];
    let store = ah_worker::resque::Store::connect(&t.target(), &t.ns)
        .await
        .unwrap();
    ActionHero::new(store.connection(), &s)
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_entries_round_trip_with_actionhero() {
    let t = Ns::new("ahcache");
    let ah = ours(&t, "ah-worker-1").await;
    // Written by actionHero, read by us.
    ah7(
        &t,
        &[
            "cache-save",
            "sayHello:alice",
            r#"{"name":"alice","n":[1,2]}"#,
        ],
    );
    let entry = ah
        .cache
        .load("sayHello:alice", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.value, json!({"name": "alice", "n": [1, 2]}));
    assert_eq!(entry.expire_timestamp, None);
    assert!(entry.created_at.is_some() && entry.read_at.is_some());
    // Written by us, read by actionHero (and its readAt update read back by us).
    ah.cache
        .save(
            "from:rust",
            json!({"ok": true, "list": []}),
            Some(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let theirs = ah7(&t, &["cache-load", "from:rust"]);
    assert_eq!(theirs["value"], json!({"ok": true, "list": []}));
    assert!(theirs["expireTimestamp"].as_i64().unwrap() > theirs["createdAt"].as_i64().unwrap());
    assert!(theirs["readAt"].is_i64());
    let again = ah.cache.load("from:rust", None).await.unwrap().unwrap();
    assert_eq!(again.created_at, theirs["createdAt"].as_i64());
    // Destroy on one side is gone on the other; size agrees.
    assert_eq!(ah7(&t, &["cache-size"]), json!({"size": 2}));
    assert!(ah.cache.destroy("sayHello:alice").await.unwrap());
    assert_eq!(
        ah7(&t, &["cache-load", "sayHello:alice"]),
        json!({"error": "Object not found"})
    );
    assert_eq!(ah.cache.list().await.unwrap(), ["from:rust"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_refresh_and_the_sweep_behave_as_actionhero() {
    let t = Ns::new("ahexpire");
    let ah = ours(&t, "ah-worker-1").await;
    ah.cache
        .save("short", json!(1), Some(Duration::from_millis(300)))
        .await
        .unwrap();
    ah.cache
        .save("long", json!(2), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    ah7(&t, &["cache-save", "theirs:short", "3", "300"]);
    // Refresh on read moves the expiry.
    let before = ah
        .cache
        .load("long", None)
        .await
        .unwrap()
        .unwrap()
        .expire_timestamp
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let refreshed = ah
        .cache
        .load("long", Some(Duration::from_secs(120)))
        .await
        .unwrap()
        .unwrap();
    assert!(refreshed.expire_timestamp.unwrap() > before + 50_000);
    // Read after expiry: both sides say expired; the entries stay for the sweep.
    assert_eq!(
        ah.cache.load("short", None).await.unwrap(),
        Err(CacheError::Expired)
    );
    assert_eq!(
        ah.cache.load("theirs:short", None).await.unwrap(),
        Err(CacheError::Expired)
    );
    assert_eq!(
        ah7(&t, &["cache-load", "short"]),
        json!({"error": "Object expired"})
    );
    assert_eq!(ah.cache.size().await.unwrap(), 3);
    // One sweeper per period across the fleet: a second node in the same
    // period does nothing.
    let other = ours(&t, "ah-worker-2").await;
    assert_eq!(ah.cache.sweep(Duration::from_secs(60)).await.unwrap(), 2);
    ah.cache
        .save("short2", json!(4), Some(Duration::from_millis(1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        other.cache.sweep(Duration::from_secs(60)).await.unwrap(),
        0,
        "the sweep lock is held"
    );
    assert_eq!(ah.cache.list().await.unwrap(), ["long", "short2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_locks_exclude_other_processes_and_expire() {
    let t = Ns::new("ahlock");
    let a = ours(&t, "node-a").await;
    let b = ours(&t, "node-b").await;
    assert!(
        a.cache
            .lock("report", Duration::from_millis(500))
            .await
            .unwrap()
    );
    assert!(
        a.cache
            .lock("report", Duration::from_millis(500))
            .await
            .unwrap(),
        "the holder renews"
    );
    assert!(
        !b.cache
            .lock("report", Duration::from_secs(5))
            .await
            .unwrap(),
        "contention"
    );
    assert!(!b.cache.unlock("report").await.unwrap(), "not the holder");
    assert!(a.cache.unlock("report").await.unwrap());
    assert!(
        b.cache
            .lock("report", Duration::from_millis(300))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        a.cache
            .lock("report", Duration::from_secs(5))
            .await
            .unwrap(),
        "a dead holder's lock expires"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_are_flushed_within_a_second_and_on_stop_and_read_by_actionhero() {
    let mut t = Ns::new("ahstats");
    ah7(&t, &["stats-increment", "tasks:sayHello", "2"]);
    let mut config = t.config(&["q"], 1);
    let mut settings = Settings::seed("ah-worker-1");
    settings.prefix = prefix(&t);
    settings.stats_keys = vec![format!("{}:stats", prefix(&t))];
    config.actionhero = Some(settings);
    t.push("q", br#"{"class":"AhWorker::Noop","args":[]}"#);
    t.push("q", br#"{"class":"AhWorker::Fail","args":["x"]}"#);
    let w = InProcess::builtin(config);
    let hash = format!("{}:stats", prefix(&t));
    wait_for_async(3, "a flush within about a second", || {
        t.conn
            .hget::<_, _, Option<i64>>(&hash, "tasks:AhWorker::Fail")
            .unwrap()
            == Some(1)
    })
    .await;
    let theirs = ah7(&t, &["stats-get"]);
    let stats = &theirs[&hash];
    assert_eq!(stats["tasks:AhWorker::Noop"], json!("1"));
    assert_eq!(stats["exceptions:tasks"], json!("1"));
    assert_eq!(stats["ah-worker:failed:AhWorker::Fail"], json!("1"));
    assert_eq!(
        stats["tasks:sayHello"],
        json!("2"),
        "actionHero's own counts are kept"
    );
    // Counted just before a stop: written on the way out.
    t.push("q", br#"{"class":"AhWorker::Noop","args":[]}"#);
    wait_for_async(5, "the third job", || t.int("stat:processed") == 3).await;
    w.stop().await;
    assert_eq!(
        t.conn
            .hget::<_, _, i64>(&hash, "tasks:AhWorker::Noop")
            .unwrap(),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_room_members_round_trip_in_both_layouts() {
    let t = Ns::new("ahrooms");
    let ah = ours(&t, "ah-worker-1").await;
    // 7.1 layout: actionHero creates the room and a connection joins.
    ah7(&t, &["room-add", "lobby"]);
    ah7(&t, &["room-join", "lobby", "conn-from-node"]);
    assert_eq!(ah.rooms.list().await.unwrap(), ["lobby"]);
    let status = ah.rooms.status("lobby").await.unwrap();
    assert_eq!(status["membersCount"], json!(1));
    assert_eq!(
        status["members"]["conn-from-node"]["id"],
        json!("conn-from-node")
    );
    // We add one; actionHero sees it.
    assert!(
        ah.rooms
            .add_member("lobby", "conn-from-rust")
            .await
            .unwrap()
    );
    assert!(
        !ah.rooms
            .add_member("lobby", "conn-from-rust")
            .await
            .unwrap(),
        "already a member"
    );
    assert!(
        !ah.rooms.add_member("nowhere", "x").await.unwrap(),
        "rooms must exist"
    );
    let theirs = ah7(&t, &["room-status", "lobby"]);
    assert_eq!(theirs["membersCount"], json!(2));
    assert!(theirs["members"]["conn-from-rust"]["joinedAt"].is_i64());
    // actionHero removes ours; we remove theirs.
    ah7(&t, &["room-leave", "lobby", "conn-from-rust"]);
    assert!(
        ah.rooms
            .remove_member("lobby", "conn-from-node")
            .await
            .unwrap()
    );
    assert_eq!(ah7(&t, &["room-status", "lobby"])["membersCount"], json!(0));

    // 7.0 layout: member lists under a configurable key template.
    let mut s = Settings::seed("ah-worker-1");
    s.room_layout = ah_worker::actionhero::RoomLayout::MemberLists;
    s.room_members_key = format!("{}:roomMembers:{{room}}", t.ns);
    let store = ah_worker::resque::Store::connect(&t.target(), &t.ns)
        .await
        .unwrap();
    let old = ActionHero::new(store.connection(), &s);
    assert!(old.rooms.add_member("defaultRoom", "c1").await.unwrap());
    assert!(old.rooms.add_member("defaultRoom", "c2").await.unwrap());
    let mut conn = redis::Client::open(t.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let list: Vec<String> = conn
        .lrange(format!("{}:roomMembers:defaultRoom", t.ns), 0, -1)
        .unwrap();
    assert_eq!(list, ["c1", "c2"]);
    assert_eq!(
        old.rooms.status("defaultRoom").await.unwrap()["membersCount"],
        json!(2)
    );
    assert_eq!(old.rooms.list().await.unwrap(), ["defaultRoom"]);
}

#[test]
fn the_cli_reads_and_writes_the_shared_state() {
    let t = Ns::new("ahcli");
    let config = crate::util::ConfigFile::new(
        &t.ns,
        &format!("[actionhero]\nprefix = \"{}\"\n", prefix(&t)),
    );
    let run = |args: &[&str]| {
        let mut all = vec!["--config", config.arg()];
        all.extend_from_slice(args);
        let o = t.bin().args(&all).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(
        run(&["cache", "set", "greeting", r#"{"hi":"there"}"#]).0,
        Some(0)
    );
    assert_eq!(
        ah7(&t, &["cache-load", "greeting"])["value"],
        json!({"hi": "there"})
    );
    let (code, out, _) = run(&["cache", "get", "greeting"]);
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with(r#"{"value":{"hi":"there"},"expireTimestamp":null,"createdAt":"#),
        "{out}"
    );
    assert_eq!(run(&["cache", "list"]).1, "greeting\n");
    assert_eq!(run(&["cache", "del", "greeting"]).0, Some(0));
    let (code, _, err) = run(&["cache", "get", "greeting"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("Object not found"), "{err}");
    let (_, out, _) = run(&["stats"]);
    assert!(out.contains("cache:totalCachedObjects  1"), "{out}");
    assert_eq!(run(&["rooms", "create", "lobby"]).0, Some(0));
    assert_eq!(run(&["rooms", "add", "lobby", "c9"]).0, Some(0));
    assert_eq!(run(&["rooms", "list"]).1, "lobby\n");
    assert!(
        run(&["rooms", "members", "lobby"])
            .1
            .contains(r#""membersCount":1"#)
    );
    assert_eq!(ah7(&t, &["room-status", "lobby"])["membersCount"], json!(1));
    assert_eq!(run(&["rooms", "remove", "lobby", "c9"]).0, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn coprocess_plugins_reach_the_cache_stats_and_rooms() {
    let mut t = Ns::new("ahplugin");
    let script = std::env::temp_dir().join(format!("ah-worker-{}-plugin.py", t.ns));
    std::fs::write(
        &script,
        r#"import json, sys
calls = 0
def call(method, params):
    global calls
    calls += 1
    cid = "c%d" % calls
    print(json.dumps({"type": "call", "id": cid, "method": method, "params": params}), flush=True)
    while True:
        msg = json.loads(sys.stdin.readline())
        if msg.get("type") == "reply" and msg["id"] == cid:
            return msg
for line in sys.stdin:
    job = json.loads(line)
    if job.get("type") != "job":
        continue
    call("cache.save", {"key": "plugin:key", "value": {"from": "python"}})
    loaded = call("cache.load", {"key": "plugin:key"})
    call("stats.increment", {"key": "plugin:calls", "by": 2})
    call("rooms.create", {"room": "plugins"})
    added = call("rooms.add", {"room": "plugins", "id": "py-1"})
    missing = call("cache.load", {"key": "nope"})
    ok = loaded["ok"] and loaded["result"]["value"] == {"from": "python"} and added["result"] is True \
        and missing == {"type": "reply", "id": missing["id"], "ok": False, "error": "Object not found"}
    print(json.dumps({"type": "result", "id": job["id"], "ok": ok, "error": json.dumps([loaded, added, missing])}), flush=True)
"#,
    )
    .unwrap();
    let p = crate::util::plugin(&format!(
        "name = \"py\"\nkind = \"coprocess\"\nclasses = [\"Py::State\"]\ncommand = [\"python3\", \"{}\"]\n",
        script.display()
    ));
    t.push("q", br#"{"class":"Py::State","args":[]}"#);
    let mut config = t.config(&["q"], 1);
    config.interval = Duration::ZERO;
    config.plugins = vec![p];
    let mut settings = Settings::seed("ah-worker-1");
    settings.prefix = prefix(&t);
    settings.stats_keys = vec![format!("{}:stats", prefix(&t))];
    config.actionhero = Some(settings);
    InProcess::builtin(config).join().await;
    assert!(t.failures().is_empty(), "{:?}", t.failures());
    assert_eq!(
        ah7(&t, &["cache-load", "plugin:key"])["value"],
        json!({"from": "python"})
    );
    assert_eq!(
        ah7(&t, &["room-status", "plugins"])["membersCount"],
        json!(1)
    );
    let calls: i64 = t
        .conn
        .hget(format!("{}:stats", prefix(&t)), "plugin:calls")
        .unwrap();
    assert_eq!(calls, 2, "flushed when the worker stopped");
}
