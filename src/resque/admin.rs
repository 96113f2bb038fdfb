//! What the admin CLI reads and repairs in the shared Resque state, as
//! resque-web and node-resque's `Queue` API see it: queue depths, counters,
//! the delayed queue's size, registered workers with what they are working
//! on, and the `failed` list (paged, retried, removed, cleared).
//!
//! Every peer writes these values in its own dialect, so the views here are
//! lenient: Ruby's failure record (`failed_at, payload, exception, error,
//! backtrace, worker, queue`, maybe `retried_at`), node-resque's (`worker,
//! queue, payload, exception, error, backtrace, failed_at`, `backtrace` maybe
//! `null`, `exception`/`error` maybe missing), and the status values and time
//! formats of Ruby, node-resque and ah-worker. A field a peer did not write is
//! `None`, never an error.
//!
//! Not here: judging which workers are dead (that is
//! [`crate::worker::Recoverer`]'s rule) and presenting anything (`crate::admin`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, NaiveDateTime, Utc};
use redis::{AsyncCommands, Script};
use serde_json::Value;
use serde_json::value::RawValue;

use super::store::Store;
use crate::error::Result;

/// How many list entries or keys one read asks for.
pub const PAGE: usize = 500;

static FAILED_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/failed.lua")));

static CLEAR_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new("local n = redis.call('LLEN', KEYS[1]) redis.call('DEL', KEYS[1]) return n")
});

/// A time as any peer writes one, in UTC: ISO 8601 / RFC 3339 (`run_at`,
/// heartbeats), Ruby's `failed_at` (`2026/11/30 03:49:06 UTC`, or a numeric
/// zone), Ruby's `Time#to_s` (`2026-11-30 03:49:20 +0000`), JavaScript's
/// `Date#toString` (`Tue Jun 03 2025 09:44:26 GMT-0700 (Pacific Daylight
/// Time)`) and Unix seconds (node-resque's `:started`). `None` for anything
/// else, e.g. a zone abbreviation other than UTC/GMT.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.to_utc());
    }
    if let Ok(secs) = text.parse::<i64>() {
        return DateTime::from_timestamp(secs, 0);
    }
    // JavaScript: drop the zone's name in parentheses.
    let js = text.split(" (").next().unwrap_or(text);
    if let Ok(t) = DateTime::parse_from_str(js, "%a %b %d %Y %H:%M:%S GMT%z") {
        return Some(t.to_utc());
    }
    // Ruby: "<date> <time> <zone>", the date with '/' or '-'.
    let (datetime, zone) = text.rsplit_once(' ')?;
    let datetime = datetime.replace('/', "-");
    let naive = NaiveDateTime::parse_from_str(&datetime, "%Y-%m-%d %H:%M:%S").ok()?;
    let offset_secs = match zone {
        "UTC" | "GMT" | "Z" => 0,
        _ => {
            let (sign, digits) = match zone.as_bytes().first()? {
                b'+' => (1, &zone[1..]),
                b'-' => (-1, &zone[1..]),
                _ => return None,
            };
            let digits = digits.replace(':', "");
            let (h, m) = match digits.len() {
                2 => (digits.parse::<i64>().ok()?, 0),
                4 => (digits[..2].parse().ok()?, digits[2..].parse().ok()?),
                _ => return None,
            };
            sign * (h * 3600 + m * 60)
        }
    };
    Some((naive - chrono::Duration::seconds(offset_secs)).and_utc())
}

/// The text of a JSON string value, `None` for anything else.
fn string_of(raw: Option<&RawValue>) -> Option<String> {
    match serde_json::from_str::<Value>(raw?.get()).ok()? {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// A payload's class and args, when it is a job object.
fn class_and_args(payload: &str) -> (Option<String>, Option<Value>) {
    match serde_json::from_str::<Value>(payload) {
        Ok(Value::Object(mut map)) => (
            match map.remove("class") {
                Some(Value::String(c)) if !c.is_empty() => Some(c),
                _ => None,
            },
            map.remove("args"),
        ),
        _ => (None, None),
    }
}

/// One entry of the `failed` list, read leniently.
///
/// Ruby's record:
/// ```json
/// {"failed_at":"2026/11/30 03:49:06 UTC","payload":{"class":"FailJob","args":["x"]},
///  "exception":"RuntimeError","error":"bad thing","backtrace":["run1.rb:5"],
///  "worker":"vm:9192:high,low","queue":"low"}
/// ```
/// node-resque's:
/// ```json
/// {"worker":"host:12+1","queue":"low","payload":{"class":"FailJob","queue":"low","args":["x"]},
///  "exception":"Error","error":"bad thing","backtrace":["at perform (job.js:3)"],
///  "failed_at":"Tue Jun 03 2025 09:44:26 GMT-0700 (Pacific Daylight Time)"}
/// ```
#[derive(Debug, Clone)]
pub struct FailedEntry {
    /// Its index in the list when it was read.
    pub index: usize,
    /// Its exact bytes in the list (what retry and remove match on).
    pub raw: Vec<u8>,
    /// The record, `None` when the entry is not a JSON object.
    pub record: Option<FailureRecord>,
}

/// The fields of a failure record (each `None` when absent or not a string).
#[derive(Debug, Clone, Default)]
pub struct FailureRecord {
    /// When it failed, as the peer wrote it (see [`parse_time`]).
    pub failed_at: Option<String>,
    /// The payload's exact JSON text within the record.
    pub payload: Option<Box<RawValue>>,
    /// The payload's class, when the payload is a job object.
    pub class: Option<String>,
    /// The payload's args.
    pub args: Option<Value>,
    /// Exception class name.
    pub exception: Option<String>,
    /// Exception message.
    pub error: Option<String>,
    /// Frames; empty when absent or `null`.
    pub backtrace: Vec<String>,
    /// The worker id that ran it.
    pub worker: Option<String>,
    /// The queue it came from.
    pub queue: Option<String>,
    /// Set by resque-web's "Retry" (it keeps the entry).
    pub retried_at: Option<String>,
}

impl FailedEntry {
    /// Read an entry found at `index`.
    pub fn parse(index: usize, raw: Vec<u8>) -> FailedEntry {
        let record = serde_json::from_slice::<BTreeMap<String, Box<RawValue>>>(&raw)
            .ok()
            .map(|fields| {
                let get = |name: &str| string_of(fields.get(name).map(|v| &**v));
                let payload = fields.get("payload").cloned();
                let (class, args) = payload
                    .as_deref()
                    .map(|p| class_and_args(p.get()))
                    .unwrap_or_default();
                let backtrace = fields
                    .get("backtrace")
                    .and_then(|b| serde_json::from_str::<Vec<Value>>(b.get()).ok())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|f| match f {
                        Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect();
                FailureRecord {
                    failed_at: get("failed_at"),
                    payload,
                    class,
                    args,
                    exception: get("exception"),
                    error: get("error"),
                    backtrace,
                    worker: get("worker"),
                    queue: get("queue"),
                    retried_at: get("retried_at"),
                }
            });
        FailedEntry { index, raw, record }
    }

    /// Where a retry puts it: the record's queue (else the payload's) and the
    /// payload's exact bytes, as it was first enqueued. An error says why it
    /// cannot be retried.
    pub fn retry_target(&self) -> Result<(String, Vec<u8>), &'static str> {
        let record = self
            .record
            .as_ref()
            .ok_or("the entry is not a failure record")?;
        let payload = record.payload.as_ref().ok_or("the record has no payload")?;
        if record.class.is_none() {
            return Err("the payload is not a job with a class (it would fail again)");
        }
        let queue = record
            .queue
            .clone()
            .filter(|q| !q.is_empty())
            .or_else(|| match serde_json::from_str::<Value>(payload.get()) {
                Ok(Value::Object(map)) => map.get("queue")?.as_str().map(str::to_owned),
                _ => None,
            })
            .filter(|q| !q.is_empty())
            .ok_or("the record names no queue")?;
        Ok((queue, payload.get().as_bytes().to_vec()))
    }
}

/// What a worker's status key (`worker:<id>`) says it is working on.
///
/// Ruby: `{"queue":"slow","run_at":"2026-11-30T03:49:20Z","payload":{...}}`;
/// node-resque adds `"worker"` (any key order, `run_at` from
/// `Date#toString`); ah-worker writes `queue, run_at, payload, worker`.
#[derive(Debug, Clone, Default)]
pub struct WorkingOn {
    /// The queue the job came from.
    pub queue: Option<String>,
    /// When it started, as written (see [`parse_time`]).
    pub run_at: Option<String>,
    /// The job's class.
    pub class: Option<String>,
    /// The job's args.
    pub args: Option<Value>,
}

impl WorkingOn {
    /// Read a status value (unreadable parts are `None`).
    pub fn parse(raw: &[u8]) -> WorkingOn {
        let Ok(fields) = serde_json::from_slice::<BTreeMap<String, Box<RawValue>>>(raw) else {
            return WorkingOn::default();
        };
        let get = |name: &str| string_of(fields.get(name).map(|v| &**v));
        let (class, args) = fields
            .get("payload")
            .map(|p| class_and_args(p.get()))
            .unwrap_or_default();
        WorkingOn {
            queue: get("queue"),
            run_at: get("run_at"),
            class,
            args,
        }
    }
}

/// A registered worker, with what every peer records about it.
#[derive(Debug, Clone)]
pub struct WorkerRecord {
    /// The `workers` member: `host:pid:queues` (Ruby), `host:pid+n:queues`
    /// (ah-worker, node-resque's MultiWorker).
    pub id: String,
    /// Host part (Ruby: `id.split(':', 3)`).
    pub host: String,
    /// Pid part as written (`4242`, `4242+3`).
    pub pid: String,
    /// The queue list.
    pub queues: Vec<String>,
    /// node-resque's worker name: `host:pid` (everything before the queues).
    pub name: String,
    /// What it is working on; `None` when idle.
    pub working_on: Option<WorkingOn>,
    /// `worker:<id>:started` as written.
    pub started: Option<String>,
    /// Ruby's `workers:heartbeat` field as written.
    pub heartbeat: Option<String>,
    /// node-resque's `worker:ping:<name>` time, Unix seconds.
    pub ping: Option<i64>,
}

impl WorkerRecord {
    fn new(id: String) -> WorkerRecord {
        let mut parts = id.splitn(3, ':');
        let host = parts.next().unwrap_or_default().to_owned();
        let pid = parts.next().unwrap_or_default().to_owned();
        let queues = parts
            .next()
            .map(|q| q.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        WorkerRecord {
            name: format!("{host}:{pid}"),
            id,
            host,
            pid,
            queues,
            working_on: None,
            started: None,
            heartbeat: None,
            ping: None,
        }
    }

    /// The OS pid: the id's pid part without an ah-worker `+n` slot suffix.
    pub fn os_pid(&self) -> Option<u32> {
        self.pid.split('+').next()?.parse().ok()
    }

    /// The ah-worker process registry field (`host:pid`) and slot number of
    /// an id shaped `host:pid+n:queues`.
    pub fn process_slot(&self) -> Option<(String, usize)> {
        let (pid, slot) = self.pid.split_once('+')?;
        pid.parse::<u32>().ok()?;
        Some((format!("{}:{pid}", self.host), slot.parse().ok()?))
    }
}

/// The delayed queue's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelayedSummary {
    /// Delayed jobs in all.
    pub jobs: u64,
    /// Distinct due times.
    pub times: u64,
    /// The earliest due time, Unix seconds.
    pub next: Option<i64>,
}

/// What one [`Store::failed_apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Targets still in the list and acted on.
    pub done: usize,
    /// The window was as read (so every target was there).
    pub intact: bool,
}

/// One entry to act on in [`Store::failed_apply`].
#[derive(Debug, Clone)]
pub struct FailedTarget {
    /// Its offset in the window.
    pub offset: usize,
    /// Retry into this queue with `payload`; `None` removes it.
    pub retry: Option<(String, Vec<u8>)>,
}

impl Store {
    /// `stat:processed` and `stat:failed` (0 when absent).
    pub async fn counters(&self) -> Result<(i64, i64)> {
        let mut conn = self.connection();
        let (p, f): (Option<i64>, Option<i64>) = redis::pipe()
            .get(self.keys().stat("processed"))
            .get(self.keys().stat("failed"))
            .query_async(&mut conn)
            .await?;
        Ok((p.unwrap_or(0), f.unwrap_or(0)))
    }

    /// Whether `pause-all-workers` is set (Ruby: `value.strip.downcase == "true"`).
    pub async fn paused_all(&self) -> Result<bool> {
        let mut conn = self.connection();
        let v: Option<String> = conn.get(self.keys().pause_all_workers()).await?;
        Ok(v.is_some_and(|v| v.trim().eq_ignore_ascii_case("true")))
    }

    /// Who holds Ruby resque-scheduler's master lock.
    pub async fn ruby_master(&self) -> Result<Option<String>> {
        let mut conn = self.connection();
        Ok(conn.get(self.keys().ruby_master_lock()).await?)
    }

    /// How many jobs wait in the delayed queue, at how many due times. Read
    /// in pages, so a large schedule does not stall Redis.
    pub async fn delayed_summary(&self) -> Result<DelayedSummary> {
        let mut conn = self.connection();
        let key = self.keys().delayed_schedule();
        let mut summary = DelayedSummary::default();
        let mut start = 0;
        loop {
            let times: Vec<i64> = conn.zrange(&key, start, start + PAGE as isize - 1).await?;
            if times.is_empty() {
                break;
            }
            summary.next = summary.next.or(times.first().copied());
            let mut pipe = redis::pipe();
            for ts in &times {
                pipe.llen(self.keys().delayed(*ts));
            }
            let lens: Vec<u64> = pipe.query_async(&mut conn).await?;
            summary.jobs += lens.iter().sum::<u64>();
            summary.times += times.len() as u64;
            start += times.len() as isize;
        }
        Ok(summary)
    }

    /// Every registered worker, with its status, start time, heartbeat and
    /// ping, sorted by id.
    pub async fn worker_records(&self) -> Result<Vec<WorkerRecord>> {
        let k = self.keys();
        let mut conn = self.connection();
        let mut ids: Vec<String> = conn.smembers(k.workers()).await?;
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(PAGE) {
            let mut pipe = redis::pipe();
            let records: Vec<WorkerRecord> = chunk.iter().cloned().map(WorkerRecord::new).collect();
            for w in &records {
                pipe.get(k.worker(&w.id))
                    .get(k.worker_started(&w.id))
                    .hget(k.heartbeats(), &w.id)
                    .get(k.worker_ping(&w.name));
            }
            type Row = (
                Option<Vec<u8>>,
                Option<String>,
                Option<String>,
                Option<String>,
            );
            let rows: Vec<Row> = {
                let flat: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
                flat.chunks(4)
                    .map(|c| {
                        Ok((
                            redis::from_redis_value(&c[0])?,
                            redis::from_redis_value(&c[1])?,
                            redis::from_redis_value(&c[2])?,
                            redis::from_redis_value(&c[3])?,
                        ))
                    })
                    .collect::<std::result::Result<_, redis::RedisError>>()?
            };
            for (mut w, (status, started, heartbeat, ping)) in records.into_iter().zip(rows) {
                w.working_on = status.map(|s| WorkingOn::parse(&s));
                w.started = started;
                w.heartbeat = heartbeat;
                w.ping = ping
                    .and_then(|p| serde_json::from_str::<Value>(&p).ok())
                    .and_then(|p| p.get("time")?.as_i64());
                out.push(w);
            }
        }
        Ok(out)
    }

    /// `LLEN failed`: what resque-web and node-resque's `failedCount()` show.
    pub async fn failed_len(&self) -> Result<u64> {
        let mut conn = self.connection();
        Ok(conn.llen(self.keys().failed()).await?)
    }

    /// Up to `count` entries of `failed` from index `start`, as stored.
    pub async fn failed_range(&self, start: usize, count: usize) -> Result<Vec<Vec<u8>>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.connection();
        Ok(conn
            .lrange(
                self.keys().failed(),
                start as isize,
                (start + count) as isize - 1,
            )
            .await?)
    }

    /// Retry or remove `targets` of the window `window` read at `start`, in
    /// one atomic step (see `scripts/failed.lua`). `tombstone` must be a
    /// value no entry can equal.
    pub async fn failed_apply(
        &self,
        start: usize,
        window: &[Vec<u8>],
        targets: &[FailedTarget],
        tombstone: &str,
    ) -> Result<Applied> {
        let mut inv = FAILED_SCRIPT.prepare_invoke();
        inv.arg(self.keys().prefix())
            .arg(start)
            .arg(tombstone)
            .arg(window.len());
        for entry in window {
            inv.arg(&entry[..]);
        }
        inv.arg(targets.len());
        for t in targets {
            match &t.retry {
                Some((queue, payload)) => inv.arg(t.offset + 1).arg(queue).arg(&payload[..]),
                None => inv.arg(t.offset + 1).arg("").arg(""),
            };
        }
        let mut conn = self.connection();
        let (done, intact): (usize, i64) = inv.invoke_async(&mut conn).await?;
        Ok(Applied {
            done,
            intact: intact == 1,
        })
    }

    /// Delete the whole `failed` list (resque-web's "Clear"); returns how
    /// many entries it held.
    pub async fn failed_clear(&self) -> Result<u64> {
        let mut conn = self.connection();
        Ok(CLEAR_SCRIPT
            .key(self.keys().failed())
            .invoke_async(&mut conn)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> Option<String> {
        parse_time(s).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
    }

    #[test]
    fn reads_every_peers_time_format() {
        let want = Some("2026-11-30T03:49:06Z".to_owned());
        assert_eq!(utc("2026/11/30 03:49:06 UTC"), want);
        assert_eq!(utc("2026/11/30 00:49:06 -03"), want);
        assert_eq!(utc("2026-11-30 09:19:06 +0530"), want);
        assert_eq!(utc("2026-11-30T03:49:06Z"), want);
        assert_eq!(utc("2026-11-30T03:49:06+00:00"), want);
        assert_eq!(
            utc("Sun Nov 29 2026 19:49:06 GMT-0800 (Pacific Standard Time)"),
            want
        );
        assert_eq!(utc("1796010546"), want);
        assert_eq!(utc("2026/11/30 03:49:06 EST"), None);
        assert_eq!(utc("yesterday"), None);
    }

    #[test]
    fn reads_ruby_and_node_failure_records() {
        let ruby = br#"{"failed_at":"2026/11/30 03:49:06 UTC","payload":{"class":"FailJob","args":[30.0]},"exception":"ArgumentError","error":"bad","backtrace":["a.rb:5"],"worker":"vm:1:low","queue":"low"}"#;
        let e = FailedEntry::parse(3, ruby.to_vec());
        let r = e.record.as_ref().unwrap();
        assert_eq!(r.class.as_deref(), Some("FailJob"));
        assert_eq!(r.backtrace, ["a.rb:5"]);
        assert_eq!(
            e.retry_target().unwrap(),
            (
                "low".to_owned(),
                br#"{"class":"FailJob","args":[30.0]}"#.to_vec()
            )
        );

        let node = br#"{"worker":"h:1+1","queue":"q","payload":{"class":"X","queue":"q","args":[]},"backtrace":null,"failed_at":"Tue Jun 03 2025 09:44:26 GMT-0700 (Pacific Daylight Time)"}"#;
        let r = FailedEntry::parse(0, node.to_vec()).record.unwrap();
        assert_eq!(r.exception, None);
        assert!(r.backtrace.is_empty());
        assert_eq!(r.worker.as_deref(), Some("h:1+1"));

        let junk = FailedEntry::parse(0, b"not json".to_vec());
        assert!(junk.record.is_none());
        assert!(junk.retry_target().is_err());
        let malformed = FailedEntry::parse(
            0,
            br#"{"payload":"{oops","queue":"q","exception":"AhWorker::MalformedPayload"}"#.to_vec(),
        );
        assert!(malformed.retry_target().is_err());
    }

    #[test]
    fn a_retry_without_a_record_queue_uses_the_payloads() {
        let e = FailedEntry::parse(
            0,
            br#"{"payload":{"class":"X","queue":"mail","args":[]},"queue":""}"#.to_vec(),
        );
        assert_eq!(e.retry_target().unwrap().0, "mail");
    }

    #[test]
    fn reads_worker_ids_and_status_values() {
        let w = WorkerRecord::new("web-1:4242+3:a:b,c".into());
        assert_eq!((w.host.as_str(), w.pid.as_str()), ("web-1", "4242+3"));
        assert_eq!(w.queues, ["a:b", "c"]);
        assert_eq!(w.name, "web-1:4242+3");
        assert_eq!(w.process_slot(), Some(("web-1:4242".to_owned(), 3)));
        assert_eq!(WorkerRecord::new("vm:99:q".into()).process_slot(), None);

        let s = WorkingOn::parse(
            br#"{"run_at":"Tue Jun 03 2025 09:44:26 GMT-0700","payload":{"class":"C","args":[1]},"queue":"q","worker":"h:1+1"}"#,
        );
        assert_eq!(s.class.as_deref(), Some("C"));
        assert_eq!(s.queue.as_deref(), Some("q"));
        assert!(WorkingOn::parse(b"garbage").class.is_none());
    }
}
