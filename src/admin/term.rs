//! Terminal output of the admin commands: the width to fit, tables that fit
//! it (long cells cut with `…`), ages, and a progress bar on stderr.
//!
//! Hand-written rather than `indicatif`/`comfy-table`: one table shape and one
//! bar are all we draw, in about a hundred lines.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// The narrowest a shrunk column gets.
const MIN_COLUMN: usize = 8;

/// How often the progress bar is redrawn at most.
const REDRAW: Duration = Duration::from_millis(100);

/// Print `text` cut to the output's width.
pub fn say(text: &str) -> std::io::Result<()> {
    writeln!(
        std::io::stdout().lock(),
        "{}",
        fit(text, width().unwrap_or(usize::MAX))
    )
}

/// The width output must fit: `COLUMNS` if set, else the terminal's when
/// stdout is one, else none (piped output is not cut).
pub fn width() -> Option<usize> {
    if let Some(cols) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|c| *c > 0)
    {
        return Some(cols);
    }
    if std::io::stdout().is_terminal() {
        return terminal_size::terminal_size().map(|(w, _)| w.0 as usize);
    }
    None
}

/// One line of `text` (control characters as spaces), cut to `max`
/// characters with a trailing `…`.
pub fn fit(text: &str, max: usize) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= max {
        return clean;
    }
    let mut out: String = clean.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A duration in seconds as a short age: `42s`, `5m07s`, `3h12m`, `4d02h`.
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// A table of text cells.
#[derive(Debug, Default)]
pub struct Table {
    /// Column headers.
    pub headers: Vec<&'static str>,
    /// Rows of cells, one per header.
    pub rows: Vec<Vec<String>>,
    /// Columns that may be cut to fit, the first given cut first.
    pub shrink: Vec<usize>,
    /// Columns aligned to the right (numbers).
    pub right: Vec<usize>,
}

impl Table {
    /// A table with these headers.
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            ..Table::default()
        }
    }

    /// Add a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The lines of the table, two spaces between columns, fitting `width`
    /// by cutting the `shrink` columns (never below `MIN_COLUMN`), then
    /// the lines.
    pub fn render(&self, width: Option<usize>) -> Vec<String> {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(fit(cell, usize::MAX).chars().count());
            }
        }
        if let Some(width) = width {
            let total = widths.iter().sum::<usize>() + 2 * n.saturating_sub(1);
            let mut excess = total.saturating_sub(width);
            for &col in &self.shrink {
                let floor = MIN_COLUMN.max(self.headers[col].chars().count());
                let cut = excess.min(widths[col].saturating_sub(floor));
                widths[col] -= cut;
                excess -= cut;
            }
        }
        let line = |cells: Vec<String>| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let cell = fit(cell, widths[i]);
                let pad = widths[i] - cell.chars().count();
                if i > 0 {
                    out.push_str("  ");
                }
                if self.right.contains(&i) {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(&cell);
                } else {
                    out.push_str(&cell);
                    if i + 1 < n {
                        out.push_str(&" ".repeat(pad));
                    }
                }
            }
            // Columns that cannot shrink further: cut the line itself.
            fit(out.trim_end(), width.unwrap_or(usize::MAX))
        };
        let mut lines = vec![line(self.headers.iter().map(|h| h.to_string()).collect())];
        lines.extend(self.rows.iter().map(|r| line(r.clone())));
        lines
    }
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
pub struct Progress {
    label: &'static str,
    total: usize,
    done: usize,
    drawn: Option<Instant>,
    enabled: bool,
}

impl Progress {
    /// A bar for `total` steps of `label` (e.g. `retrying`).
    pub fn new(label: &'static str, total: usize) -> Progress {
        Progress {
            label,
            total,
            done: 0,
            drawn: None,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// `n` more steps done.
    pub fn advance(&mut self, n: usize) {
        self.done += n;
        if !self.enabled || self.drawn.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        self.drawn = Some(Instant::now());
        let total = self.total.max(self.done).max(1);
        const BAR: usize = 30;
        let full = BAR * self.done / total;
        let _ = write!(
            std::io::stderr(),
            "\r{} [{}{}] {}/{}",
            self.label,
            "#".repeat(full),
            "-".repeat(BAR - full),
            self.done,
            total
        );
    }

    /// Erase the bar.
    pub fn finish(self) {
        if self.enabled && self.drawn.is_some() {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_with_an_ellipsis_and_flattens_lines() {
        assert_eq!(fit("short", 10), "short");
        assert_eq!(fit("a long error message", 10), "a long er…");
        assert_eq!(fit("two\nlines", 20), "two lines");
        assert_eq!(fit("é😀é😀é", 4), "é😀é…");
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(307), "5m07s");
        assert_eq!(age(3 * 3600 + 12 * 60), "3h12m");
        assert_eq!(age(4 * 86400 + 7200), "4d02h");
        assert_eq!(age(-3), "0s");
    }

    #[test]
    fn tables_fit_the_width_by_cutting_the_shrinkable_columns() {
        let mut t = Table::new(&["#", "CLASS", "ERROR"]);
        t.right = vec![0];
        t.shrink = vec![2, 1];
        t.row(vec!["7".into(), "SendEmail".into(), "x".repeat(100)]);
        t.row(vec!["12".into(), "A".into(), "short".into()]);
        let lines = t.render(Some(40));
        assert!(lines.iter().all(|l| l.chars().count() <= 40), "{lines:?}");
        assert_eq!(lines[0], " #  CLASS      ERROR");
        assert!(lines[1].starts_with(" 7  SendEmail  xxx") && lines[1].ends_with('…'));
        assert_eq!(lines[2], "12  A          short");
        // Too narrow for the columns: the lines are cut.
        assert!(t.render(Some(15)).iter().all(|l| l.chars().count() <= 15));
        // Without a width nothing is cut.
        assert!(t.render(None)[1].ends_with(&"x".repeat(100)));
    }
}
