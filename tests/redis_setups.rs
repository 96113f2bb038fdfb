//! Redis as production runs it: TLS with a private CA (and client
//! certificates), an ACL user and a database index, and a Sentinel-managed
//! master that fails over in the middle of a run without losing a job.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::util::{
    self, Ns, TempDir, certificates, free_port, start_redis, start_sentinel, wait_for,
};

fn run(mut cmd: Command) -> Output {
    util::wait_output(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        60,
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Enqueue `n` no-op jobs and drain them with the binary as `env` says.
fn enqueue_and_drain(t: &Ns, env: &[(&str, &str)], n: usize) -> (Output, Output) {
    let mut enqueue = t.bin();
    enqueue
        .envs(env.iter().copied())
        .args(["enqueue", "AhWorker::Noop"]);
    let mut first = None;
    for _ in 0..n {
        let out = run(enqueue_clone(&enqueue));
        if !out.status.success() {
            return (out, Command::new("true").output().unwrap());
        }
        first.get_or_insert(out);
    }
    let mut drain = t.bin();
    drain
        .envs(env.iter().copied())
        .args(["--queues", "default", "--interval", "0"]);
    (first.expect("n > 0"), run(drain))
}

/// `Command` is not `Clone`: rebuild it from its parts.
fn enqueue_clone(c: &Command) -> Command {
    let mut n = Command::new(c.get_program());
    n.args(c.get_args()).env_clear().stdin(Stdio::null());
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            n.env(k, v);
        }
    }
    n
}

#[test]
fn tls_with_a_private_ca_and_client_certificates() {
    let dir = TempDir::new("tls");
    certificates(&dir.0, "good");
    certificates(&dir.0, "other");
    let path = |f: &str| dir.0.join(f).display().to_string();
    let tls_port = free_port();
    let (cert, key, ca) = (
        path("good-server.pem"),
        path("good-server.key"),
        path("good-ca.pem"),
    );
    let tls_port_s = tls_port.to_string();
    let server = start_redis(
        free_port(),
        &[
            "--tls-port",
            &tls_port_s,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "yes",
        ],
    );
    let mut t = Ns::on(&server.url(), "tls");
    let url = format!("rediss://localhost:{tls_port}/0");
    let client_cert = path("good-client.pem");
    let client_key = path("good-client.key");
    let good = [
        ("REDIS_URL", url.as_str()),
        ("AH_WORKER_REDIS_TLS_CA", ca.as_str()),
        ("AH_WORKER_REDIS_TLS_CERT", client_cert.as_str()),
        ("AH_WORKER_REDIS_TLS_KEY", client_key.as_str()),
    ];

    let (enqueued, drained) = enqueue_and_drain(&t, &good, 3);
    assert!(enqueued.status.success(), "{}", text(&enqueued));
    assert!(drained.status.success(), "{}", text(&drained));
    assert_eq!(t.int("stat:processed"), 3, "jobs performed over TLS");

    // A server whose certificate another CA signed is refused.
    let other_ca = path("other-ca.pem");
    let (refused, _) = enqueue_and_drain(
        &t,
        &[
            ("REDIS_URL", url.as_str()),
            ("AH_WORKER_REDIS_TLS_CA", other_ca.as_str()),
            ("AH_WORKER_REDIS_TLS_CERT", client_cert.as_str()),
            ("AH_WORKER_REDIS_TLS_KEY", client_key.as_str()),
        ],
        1,
    );
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("cannot connect to Redis"),
        "{}",
        text(&refused)
    );

    // The server requires a client certificate.
    let (no_cert, _) = enqueue_and_drain(
        &t,
        &[
            ("REDIS_URL", url.as_str()),
            ("AH_WORKER_REDIS_TLS_CA", ca.as_str()),
        ],
        1,
    );
    assert_eq!(no_cert.status.code(), Some(1), "{}", text(&no_cert));
    assert_eq!(t.cmd::<i64>(&["LLEN", &t.key("queue:default")]), 0);
}

#[test]
fn acl_user_password_and_database_index() {
    let mut t = Ns::new("acl");
    let user = format!("user-{}", t.ns);
    let secret = "s3cret-Pw";
    t.cmd::<String>(&[
        "ACL",
        "SETUSER",
        &user,
        "on",
        &format!(">{secret}"),
        "~*",
        "&*",
        "+@all",
    ]);
    let url = util::redis_url();
    let (host, db0) = url
        .strip_prefix("redis://")
        .unwrap()
        .split_once('/')
        .unwrap();
    assert_eq!(db0, "0");
    let with_user = format!("redis://{user}:{secret}@{host}/7");

    let (enqueued, drained) = enqueue_and_drain(&t, &[("REDIS_URL", &with_user)], 2);
    assert!(enqueued.status.success(), "{}", text(&enqueued));
    assert!(drained.status.success(), "{}", text(&drained));
    assert!(
        !text(&drained).contains(secret),
        "the password in a log line"
    );
    // Everything went to database 7.
    assert!(t.keys().is_empty(), "keys in database 0: {:?}", t.keys());
    let mut db7 = redis::Client::open(format!("redis://{host}/7"))
        .unwrap()
        .get_connection()
        .unwrap();
    let processed: i64 = redis::cmd("GET")
        .arg(t.key("stat:processed"))
        .query(&mut db7)
        .unwrap();
    assert_eq!(processed, 2);

    // A wrong password: one clear line without the secret.
    let wrong = format!("redis://{user}:wrong-{secret}@{host}/7");
    let (refused, _) = enqueue_and_drain(&t, &[("REDIS_URL", &wrong)], 1);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("<credentials>"),
        "{}",
        text(&refused)
    );
    assert!(!text(&refused).contains(secret), "{}", text(&refused));
    // Nor in --help with the URL in the environment.
    let help = run({
        let mut c = t.bin();
        c.env("REDIS_URL", &with_user).arg("--help");
        c
    });
    assert!(help.status.success());
    assert!(!text(&help).contains(secret));

    let _: i64 = t.cmd(&["ACL", "DELUSER", &user]);
    let _: i64 = redis::cmd("DEL")
        .arg(t.key("stat:processed"))
        .query(&mut db7)
        .unwrap();
}

/// A field of `INFO section` of the server on `port`, on a new connection
/// each time: sentinels kill client connections of the servers they
/// reconfigure.
fn info_field(port: u16, section: &str, field: &str) -> Option<String> {
    // A sentinel reconfiguring the server may reset the connection: the
    // caller asks again.
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
        .ok()?
        .get_connection()
        .ok()?;
    let info: String = redis::cmd("INFO").arg(section).query(&mut conn).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

fn connect(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
        .unwrap()
        .get_connection()
        .unwrap()
}

#[test]
fn follows_a_sentinel_failover_without_losing_a_job() {
    let dir = TempDir::new("sentinel");
    let master = start_redis(free_port(), &[]);
    let replica_of = format!("127.0.0.1 {}", master.port);
    let replica = start_redis(free_port(), &["--replicaof", &replica_of]);
    let sentinel_port = free_port();
    let conf = dir.0.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "sentinel monitor m 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds m 1000\n\
             sentinel failover-timeout m 5000\n",
            master.port
        ),
    )
    .unwrap();
    let _sentinel = start_sentinel(sentinel_port, &conf);
    let mut s = connect(sentinel_port);
    wait_for(20, "the replica in sync and known to the sentinel", || {
        info_field(replica.port, "replication", "master_link_status").as_deref() == Some("up")
            && redis::cmd("SENTINEL")
                .arg("replicas")
                .arg("m")
                .query::<Vec<redis::Value>>(&mut s)
                .is_ok_and(|v| !v.is_empty())
    });

    let mut t = Ns::on(&master.url(), "sentinel");
    let counts = t.key("counts");
    let job = |i: usize| format!(r#"{{"class":"AhWorker::Count","args":["counts","j{i}",0.005]}}"#);
    let total = 600;
    for i in 0..total / 2 {
        t.push("default", job(i).as_bytes());
    }
    let url = format!("redis+sentinel://127.0.0.1:{sentinel_port}/m/0");
    let mut worker = t.bin();
    worker
        .env("REDIS_URL", &url)
        .args(["--queues", "default", "--concurrency", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let worker = worker.spawn().unwrap();
    wait_for(20, "the first jobs done", || {
        t.cmd::<i64>(&["HLEN", &counts]) >= 50
    });

    // A sentinel that has only just found the replica may not trust it yet
    // ("no good slave") and abort: ask again until it is promoted.
    let mut asked = std::time::Instant::now() - Duration::from_secs(10);
    wait_for(30, "the replica promoted", || {
        if asked.elapsed() > Duration::from_secs(3) {
            let _ = redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg("m")
                .query::<String>(&mut s);
            asked = std::time::Instant::now();
        }
        info_field(replica.port, "replication", "role").as_deref() == Some("master")
    });
    // Jobs enqueued after the failover go to the new master.
    let mut t = Ns {
        ns: t.ns.clone(),
        url: replica.url(),
        conn: connect(replica.port),
    };
    for i in total / 2..total {
        t.push("default", job(i).as_bytes());
    }
    wait_for(40, "every job done on the new master", || {
        t.cmd::<i64>(&["HLEN", &counts]) == total as i64
            && t.cmd::<i64>(&["LLEN", &t.key("queue:default")]) == 0
    });
    util::signal(&worker, "TERM");
    let out = util::wait_output(worker, 30);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("the master moved; following it"), "{log}");

    // Nothing lost: every job ran. Replication is asynchronous, so the old
    // master may have accepted writes after the promotion that Redis then
    // dropped (a step's acks, a count): such a job runs again, as any
    // at-least-once queue does after its ack is lost.
    let done: std::collections::HashMap<String, i64> = t.cmd(&["HGETALL", &counts]);
    let missing: Vec<_> = (0..total)
        .map(|i| format!("j{i}"))
        .filter(|j| !done.contains_key(j))
        .collect();
    assert!(missing.is_empty(), "jobs never performed: {missing:?}");
    let again = done.values().filter(|n| **n > 1).count();
    eprintln!("{again} of {total} jobs ran again after the failover (writes Redis lost)");
    assert!(t.failures().is_empty(), "{:?}", t.failures());
    assert_eq!(
        t.cmd::<i64>(&["SCARD", &t.key("workers")]),
        0,
        "unregistered"
    );
}
