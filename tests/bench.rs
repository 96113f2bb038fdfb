//! The benchmark's smoke run: `scripts/bench --quick` against this build's
//! binary runs every scenario and prints a table with figures for each.
//! (The figures of a debug build mean nothing; only that they are there.)

use std::path::Path;
use std::process::Command;

/// The cells of row `row` in the table of `scenario`: the tables start with
/// `== <scenario>:` and have the columns
/// `figure | ah-worker | node-resque | ratio`.
fn row_cells(output: &str, scenario: &str, row: &str) -> Option<Vec<String>> {
    let title = format!("== {scenario}:");
    let mut lines = output.lines().skip_while(|l| !l.starts_with(&title));
    lines.next()?;
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
        .find(|cells| cells.len() == 4 && cells[0] == row)
        .map(|cells| cells.into_iter().map(str::to_owned).collect())
}

fn ah_worker_cell(output: &str, scenario: &str, row: &str) -> Option<String> {
    row_cells(output, scenario, row).map(|cells| cells[1].clone())
}

fn number(cell: &str) -> Option<f64> {
    cell.replace(',', "")
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

#[test]
fn bench_smoke_run_prints_every_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/bench"))
        .arg("--quick")
        .env("AH_WORKER_BIN", env!("CARGO_BIN_EXE_ah-worker"))
        .current_dir(root)
        .output()
        .expect("scripts/bench could not be started");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/bench --quick exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );

    let numeric_rows = [
        ("drain", "jobs/s"),
        ("drain", "worker CPU µs/job"),
        ("drain", "peak RSS MB"),
        ("drain", "Redis commands/job"),
        ("latency", "p50 ms"),
        ("latency", "p99 ms"),
        ("idle", "Redis commands/s"),
        ("idle", "worker CPU µs/s"),
        ("coprocess", "jobs/s"),
        ("exec", "jobs/s"),
        ("priority", "jobs/s"),
    ];
    for (scenario, row) in numeric_rows {
        let cell = ah_worker_cell(&stdout, scenario, row)
            .unwrap_or_else(|| panic!("no `{row}` row in the {scenario} table:\n{stdout}"));
        assert!(
            number(&cell).is_some(),
            "{scenario} `{row}`: {cell:?} is not a number:\n{stdout}"
        );
    }
    // The scenarios with a node-resque counterpart measure it too.
    for (scenario, row) in [
        ("drain", "jobs/s"),
        ("latency", "p50 ms"),
        ("priority", "jobs/s"),
    ] {
        let cells = row_cells(&stdout, scenario, row).unwrap();
        assert!(
            number(&cells[2]).is_some(),
            "{scenario} `{row}` of node-resque: {:?}\n{stdout}",
            cells[2]
        );
    }
    let first = ah_worker_cell(&stdout, "priority", "high drained first");
    assert!(
        matches!(first.as_deref(), Some("yes" | "no")),
        "priority `high drained first`: {first:?}\n{stdout}"
    );
    // --quick prints no PASS/FAIL block: debug-build figures mean nothing.
    assert!(!stdout.contains("== targets"), "{stdout}");
}
