//! The chaos run, short version: `scripts/chaos --short` enqueues 1500
//! counting jobs on a private redis-server of its own, SIGKILLs workers at
//! random moments, restarts Redis once and restarts every worker with
//! SIGTERM, then checks from Redis that every job ran, none failed, no
//! registration is left and duplicates stay within what the kills explain.
//! The script prints one summary line on stdout and exits 0 only if every
//! check holds.

use std::path::Path;
use std::process::Command;

#[test]
fn chaos_short_run_loses_nothing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(root.join("scripts/chaos"))
        .arg("--short")
        .current_dir(root)
        .env("AH_WORKER_BIN", env!("CARGO_BIN_EXE_ah-worker"))
        .output()
        .expect("scripts/chaos must be runnable (bash, redis-server, redis-cli)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!(
        "scripts/chaos --short: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(output.status.success(), "{report}");
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        last.starts_with("chaos:"),
        "no summary line at the end\n{report}"
    );
    for check in ["missing=0", "failed=0", "stale=0"] {
        assert!(
            last.split_whitespace().any(|word| word == check),
            "summary line lacks {check}\n{report}"
        );
    }
}
