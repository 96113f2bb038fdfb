//! Command-line and configuration errors: exit status 2 and a message naming
//! the value and what was expected.

use std::process::Output;

use crate::util::Ns;

fn run(t: &Ns, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = t.bin();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_bad_flag_exits_2_naming_the_value() {
    let t = Ns::new("badflag");
    let o = run(&t, &["--concurrency", "lots"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("\"lots\"") && e.contains("--concurrency") && e.contains("expected"),
        "{e}"
    );

    let o = run(&t, &["--no-such-flag"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--no-such-flag"));
}

#[test]
fn a_bad_environment_value_exits_2() {
    let t = Ns::new("badenv");
    let o = run(&t, &[], &[("INTERVAL", "often")]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("\"often\"") && e.contains("INTERVAL"), "{e}");
}

#[test]
fn a_bad_config_file_exits_2_naming_the_file_and_problem() {
    let t = Ns::new("badfile");
    let config =
        crate::util::ConfigFile::new(&t.ns, "queues = [\"a\"]\nshutdown_timeout = \"forever\"\n");
    let o = run(&t, &["--config", config.arg()], &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("\"forever\"") && e.contains("shutdown_timeout") && e.contains(config.arg()),
        "{e}"
    );

    config.write("queues = [\"a\"\n");
    let o = run(&t, &["--config", config.arg()], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid config file"), "{}", stderr(&o));

    let o = run(&t, &["--config", "/nonexistent/ah-worker.toml"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/ah-worker.toml"));
}

#[test]
fn the_example_config_is_valid_and_drains() {
    let mut t = Ns::new("example");
    t.push("default", br#"{"class":"AhWorker::Noop","args":[]}"#);
    let example = crate::util::root().join("config/ah-worker.toml");
    // Flags override the file's queues and interval, so it drains and exits.
    let o = run(
        &t,
        &[
            "--config",
            example.to_str().unwrap(),
            "--queues",
            "default",
            "--interval",
            "0",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(t.int("stat:processed"), 1);
}

#[test]
fn enqueue_writes_node_resques_payload() {
    let mut t = Ns::new("enqueue");
    let o = run(
        &t,
        &[
            "enqueue",
            "SendEmail",
            "--queue",
            "mail",
            "--args",
            r#"[{"to":"a@b"}]"#,
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        t.list("queue:mail"),
        [r#"{"class":"SendEmail","queue":"mail","args":[{"to":"a@b"}]}"#]
    );
    let queues: Vec<String> = t.cmd(&["SMEMBERS", &t.key("queues")]);
    assert_eq!(queues, ["mail"]);
    let o = run(&t, &["enqueue", "X", "--args", "{nope"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not JSON"));
}
