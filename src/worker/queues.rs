//! Which queues a worker serves, in which order: Ruby Resque's rules.
//!
//! A list without patterns or exclusions is used as is. A list with a
//! pattern (`*`, `?`, `[...]`, `{`/`}`) or a `!skip` entry is dynamic: it is
//! rebuilt from the `queues` set, each entry in turn contributing the known
//! queues it matches (sorted, exclusions removed), duplicates dropped.

use crate::glob::fnmatch;

/// The configured queue list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    entries: Vec<String>,
    skips: Vec<String>,
    dynamic: bool,
}

impl QueueSpec {
    /// A spec from configured entries (`!name` entries are exclusions).
    pub fn new(configured: &[String]) -> QueueSpec {
        let (skips, entries): (Vec<&String>, Vec<&String>) =
            configured.iter().partition(|q| q.starts_with('!'));
        let skips: Vec<String> = skips.iter().map(|s| s[1..].to_owned()).collect();
        let dynamic = !skips.is_empty()
            || entries
                .iter()
                .any(|q| q.contains(['*', '?', '[', ']', '{', '}']));
        QueueSpec {
            entries: entries.into_iter().cloned().collect(),
            skips,
            dynamic,
        }
    }

    /// The queue part of the worker id: the entries as configured, without
    /// the exclusions (Ruby: `QUEUE=*,!low` gives `host:pid:*`).
    pub fn id_part(&self) -> String {
        self.entries.join(",")
    }

    /// Whether the list depends on the `queues` set.
    pub fn is_dynamic(&self) -> bool {
        self.dynamic
    }

    /// The queues to serve, in priority order, given the known queue names.
    pub fn resolve(&self, known: &[String]) -> Vec<String> {
        if !self.dynamic {
            return self.entries.clone();
        }
        let mut out: Vec<String> = Vec::new();
        for pattern in &self.entries {
            let mut matched: Vec<&String> = known
                .iter()
                .filter(|q| fnmatch(pattern, q) && !self.skips.iter().any(|s| fnmatch(s, q)))
                .collect();
            matched.sort();
            for q in matched {
                if !out.contains(q) {
                    out.push(q.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(list: &[&str]) -> QueueSpec {
        QueueSpec::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn known(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_lists_are_kept_in_order() {
        let s = spec(&["high", "low"]);
        assert!(!s.is_dynamic());
        assert_eq!(s.resolve(&known(&["a"])), ["high", "low"]);
        assert_eq!(s.id_part(), "high,low");
    }

    #[test]
    fn star_is_every_known_queue_sorted() {
        let s = spec(&["*"]);
        assert_eq!(
            s.resolve(&known(&["mail", "default", "a:b"])),
            ["a:b", "default", "mail"]
        );
    }

    #[test]
    fn first_entries_keep_priority_and_exclusions_apply() {
        let s = spec(&["critical", "*", "!low"]);
        assert_eq!(s.id_part(), "critical,*");
        assert_eq!(
            s.resolve(&known(&["low", "mail", "critical", "default"])),
            ["critical", "default", "mail"]
        );
    }
}
