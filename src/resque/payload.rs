//! The JSON shapes of the Resque contract: job payloads, the "working on"
//! status value, failure records, node-resque pings, and the time formats
//! each peer writes.
//!
//! Ruby Resque writes `{"class","args"}`, node-resque `{"class","queue","args"}`
//! and actionHero 7 (node-resque 0.2) an object as `args`. We accept all three
//! and never re-encode a payload: the bytes taken from the queue are the bytes
//! written into the status key, the failure record and back into a queue.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// Exception name of a failure record for a payload that cannot be run.
pub const MALFORMED_EXCEPTION: &str = "AhWorker::MalformedPayload";

/// `run_at` of a status value: Ruby's `Time.now.utc.iso8601`, e.g.
/// `2026-11-30T03:49:20Z`. node-resque reads it with `Date.parse`.
pub fn run_at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `worker:<id>:started`: Ruby's `Time.now.to_s`, e.g. `2026-11-30 03:49:20 +0000`.
/// resque-web shows it as is; node-resque never parses it.
pub fn started(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S +0000").to_string()
}

/// A `workers:heartbeat` value: Ruby's `Time#iso8601` with a numeric offset,
/// e.g. `2026-11-30T03:49:20+00:00` (Ruby reads it back with `Time.parse`).
pub fn heartbeat(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

/// `failed_at` of a failure record: Ruby's `"%Y/%m/%d %H:%M:%S %Z"`, always
/// written in UTC, e.g. `2026/11/30 03:49:06 UTC`.
pub fn failed_at(t: DateTime<Utc>) -> String {
    t.format("%Y/%m/%d %H:%M:%S UTC").to_string()
}

/// node-resque's `worker:ping:<name>` value:
/// `{"time":1764474560,"name":"host:12+1","queues":"default,mail"}`.
pub fn ping(t: DateTime<Utc>, name: &str, queues: &str) -> String {
    #[derive(Serialize)]
    struct Ping<'a> {
        time: i64,
        name: &'a str,
        queues: &'a str,
    }
    let ping = Ping {
        time: t.timestamp(),
        name,
        queues,
    };
    serde_json::to_string(&ping).expect("a struct of strings and an integer always serialises")
}

/// Encode `s` as a JSON string the way both `JSON.stringify` and Ruby's JSON
/// do for the strings we write (no escaping of `/` or non-ASCII).
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a str always serialises")
}

/// Text before the payload in a status value `{"queue","run_at","payload","worker"}`:
/// `{"queue":"q","run_at":"...","payload":`. The take script splices the job's
/// bytes in verbatim between this and [`status_tail`], and Rust rebuilds the
/// same value for the fenced ack.
pub fn status_head(queue_json: &str, run_at: &str) -> String {
    format!(r#"{{"queue":{queue_json},"run_at":"{run_at}","payload":"#)
}

/// Text after the payload in a status value: `,"worker":"host:1+1"}`.
pub fn status_tail(worker_name: &str) -> String {
    format!(r#","worker":{}}}"#, json_string(worker_name))
}

/// A job ready to run: a payload that decoded into a class and its arguments.
///
/// ```json
/// {"class":"SendEmail","queue":"mail","args":[{"to":"a@b"}]}
/// ```
#[derive(Debug, Clone)]
pub struct Job {
    /// The job's class; it selects the handler.
    pub class: String,
    /// The queue it was taken from.
    pub queue: String,
    /// The arguments: `args` as given, an object wrapped as `[object]`
    /// (actionHero 7), a missing or `null` `args` as `[]`.
    pub args: Vec<Value>,
    /// `args` was written as an object (actionHero 7), not an array.
    pub args_object: bool,
}

/// Why a payload cannot be run. Its text is the failure record's `error`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    /// The bytes are not UTF-8, so not JSON.
    #[error("payload is not valid UTF-8 (the failure's payload holds its bytes in base64)")]
    NotUtf8,
    /// The text is not JSON.
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("payload is a JSON {0}, expected an object with \"class\" and \"args\"")]
    NotAnObject(&'static str),
    /// No `class` field.
    #[error("payload has no \"class\"")]
    MissingClass,
    /// `class` is not a non-empty string.
    #[error("payload \"class\" is a JSON {0}, expected a non-empty string")]
    BadClass(&'static str),
    /// `args` is neither an array, an object nor null.
    #[error("payload \"args\" is a JSON {0}, expected an array (or an object)")]
    BadArgs(&'static str),
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Job {
    /// Decode a payload taken from `queue`.
    pub fn parse(queue: &str, raw: &[u8]) -> Result<Job, Malformed> {
        let text = std::str::from_utf8(raw).map_err(|_| Malformed::NotUtf8)?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| Malformed::NotJson(e.to_string()))?;
        let Value::Object(mut map) = value else {
            return Err(Malformed::NotAnObject(kind(&value)));
        };
        let class = match map.remove("class") {
            None => return Err(Malformed::MissingClass),
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(other) => return Err(Malformed::BadClass(kind(&other))),
        };
        let (args, args_object) = match map.remove("args") {
            None | Some(Value::Null) => (Vec::new(), false),
            Some(Value::Array(a)) => (a, false),
            Some(obj @ Value::Object(_)) => (vec![obj], true),
            Some(other) => return Err(Malformed::BadArgs(kind(&other))),
        };
        Ok(Job {
            class,
            queue: queue.to_owned(),
            args,
            args_object,
        })
    }
}

/// The `payload` field of a failure record for raw queue bytes: the bytes
/// themselves when they are JSON, a JSON string holding the text when they
/// are UTF-8 but not JSON, and a JSON string of their base64 otherwise.
/// Nothing of the original is lost in any case.
pub fn payload_for_record(raw: &[u8]) -> Box<RawValue> {
    match std::str::from_utf8(raw) {
        // JSON with whitespace around it would lose that whitespace when
        // embedded, so it is kept as a string like any other text.
        Ok(text) => match serde_json::from_str::<Box<RawValue>>(text) {
            Ok(v) if v.get().len() == text.len() => v,
            _ => RawValue::from_string(json_string(text))
                .expect("json_string always produces valid JSON"),
        },
        Err(_) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
            RawValue::from_string(json_string(&b64)).expect("a JSON string is valid JSON")
        }
    }
}

/// A failure record as Ruby's `Failure::Redis#save` writes it, fields in its
/// order (`failed_at, payload, exception, error, backtrace, worker, queue`):
///
/// ```json
/// {"failed_at":"2026/11/30 03:49:06 UTC","payload":{"class":"FailJob","args":["x"]},
///  "exception":"RuntimeError","error":"bad thing","backtrace":["..."],
///  "worker":"vm:9192+1:high,low","queue":"low"}
/// ```
///
/// node-resque's `failed()` parses it, and its `removeFailed()` finds it again
/// because the encoding is compact JSON just as `JSON.stringify` writes it.
#[derive(Debug, Serialize)]
pub struct Failure {
    /// See [`failed_at`].
    pub failed_at: String,
    /// The job's original bytes (see [`payload_for_record`]).
    pub payload: Box<RawValue>,
    /// Exception class name, e.g. `RuntimeError`.
    pub exception: String,
    /// Exception message.
    pub error: String,
    /// Frames or causes, innermost last; always an array (resque-web joins it).
    pub backtrace: Vec<String>,
    /// The full worker id `host:pid+n:queues`.
    pub worker: String,
    /// The queue the job came from.
    pub queue: String,
}

impl Failure {
    /// The record's JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("strings and valid raw JSON always serialise")
    }
}

/// node-resque's Retry plugin key for `args`: each argument as
/// `JSON.stringify` writes an object (arrays and null included) or as
/// `String()` writes a primitive, joined with `-`, then the first whitespace
/// character removed (node-resque removes only the first).
pub fn retry_args_key(args: &[Value]) -> String {
    let parts: Vec<String> = args
        .iter()
        .map(|a| match a {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => other.to_string(),
        })
        .collect();
    let mut key = parts.join("-");
    if let Some(i) = key.find(char::is_whitespace) {
        key.remove(i);
    }
    key
}

/// `JSON.stringify(args)` of an args array, as node-resque's lock keys use.
pub fn args_json(args: &[Value]) -> String {
    serde_json::to_string(args).expect("JSON values always serialise")
}

/// A job payload as actionHero 7 (node-resque 0.2) wrote it: `args` kept as
/// given, an object included: `{"class":"tick","queue":"default","args":{}}`.
pub fn encode_job_verbatim_args(class: &str, queue: &str, args: &Value) -> String {
    #[derive(Serialize)]
    struct Payload<'a> {
        class: &'a str,
        queue: &'a str,
        args: &'a Value,
    }
    serde_json::to_string(&Payload { class, queue, args }).expect("JSON values always serialise")
}

/// A job payload as node-resque's `Queue.encode` writes it:
/// `{"class":"C","queue":"q","args":[...]}`, compact, keys in that order; a
/// non-array `args` is wrapped in an array, as node-resque does since 0.8.
pub fn encode_job(class: &str, queue: &str, args: Value) -> String {
    let args = match args {
        Value::Array(a) => Value::Array(a),
        other => Value::Array(vec![other]),
    };
    encode_job_verbatim_args(class, queue, &args)
}

/// An entry of ah-worker's process registry (`ah-worker:processes`): the
/// slots a process registered and when it last beat (Unix ms, Redis clock).
///
/// ```json
/// {"beat":1764474560123,"slots":10,"queues":"default,mail"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ProcessEntry {
    /// Last heartbeat, Unix milliseconds.
    pub beat: i64,
    /// Number of slots (`host:pid+1` .. `+slots`).
    pub slots: usize,
    /// The queue part of its worker ids.
    pub queues: String,
}

/// Split a status value we wrote (see [`status_head`]) into its queue and
/// the payload's original bytes, so a job found in a status key can be
/// resumed or put back verbatim. Works on bytes, since a malformed payload
/// need not be UTF-8. Returns `None` for a value of another shape.
pub fn split_status(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let rest = value.strip_prefix(br#"{"queue":"#)?;
    let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<String>();
    let queue = stream.next()?.ok()?;
    let rest = &rest[stream.byte_offset()..];
    // `,"run_at":"YYYY-MM-DDTHH:MM:SSZ","payload":` (or with milliseconds,
    // as node-resque writes it)
    let rest = rest.strip_prefix(br#","run_at":""#)?;
    let marker = br#"","payload":"#;
    let end = rest
        .get(..40.min(rest.len()))?
        .windows(marker.len())
        .position(|w| w == marker)?;
    let rest = &rest[end + marker.len()..];
    let at = rest
        .windows(br#","worker":"#.len())
        .rposition(|w| w == br#","worker":"#)?;
    let stored = &rest[..at];
    // A malformed payload is stored as a JSON string of its bytes.
    let bytes = if stored.first() == Some(&b'"') {
        serde_json::from_slice::<String>(stored).ok()?.into_bytes()
    } else {
        stored.to_vec()
    };
    Some((queue, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 30, 3, 49, 6).unwrap()
    }

    #[test]
    fn time_formats_match_ruby_in_utc() {
        assert_eq!(run_at(t()), "2026-11-30T03:49:06Z");
        assert_eq!(started(t()), "2026-11-30 03:49:06 +0000");
        assert_eq!(heartbeat(t()), "2026-11-30T03:49:06+00:00");
        assert_eq!(failed_at(t()), "2026/11/30 03:49:06 UTC");
    }

    #[test]
    fn ping_matches_node_resque() {
        assert_eq!(
            ping(t(), "h:7+1", "a,b"),
            format!(
                r#"{{"time":{},"name":"h:7+1","queues":"a,b"}}"#,
                t().timestamp()
            )
        );
    }

    #[test]
    fn status_value_keeps_field_order_and_payload_bytes() {
        let payload = r#"{"class":"X","args":[30.0, 1e20]}"#;
        let v = format!(
            "{}{}{}",
            status_head(&json_string("slow"), &run_at(t())),
            payload,
            status_tail("h:7+2")
        );
        assert_eq!(
            v,
            r#"{"queue":"slow","run_at":"2026-11-30T03:49:06Z","payload":{"class":"X","args":[30.0, 1e20]},"worker":"h:7+2"}"#
        );
        let (q, bytes) = split_status(v.as_bytes()).unwrap();
        assert_eq!(q, "slow");
        assert_eq!(bytes, payload.as_bytes());
    }

    #[test]
    fn parses_ruby_node_and_actionhero7_payloads() {
        let ruby = Job::parse("q", br#"{"class":"A","args":[1,"x"]}"#).unwrap();
        assert_eq!((ruby.class.as_str(), ruby.args.len()), ("A", 2));
        let node = Job::parse("q", br#"{"class":"B","queue":"q","args":[]}"#).unwrap();
        assert!(node.args.is_empty());
        let ah7 = Job::parse("q", br#"{"class":"C","queue":"q","args":{"a":1}}"#).unwrap();
        assert_eq!(ah7.args, vec![serde_json::json!({"a":1})]);
        let no_args = Job::parse("q", br#"{"class":"D"}"#).unwrap();
        assert!(no_args.args.is_empty());
    }

    #[test]
    fn names_what_is_wrong_with_a_payload() {
        let e = |b: &[u8]| Job::parse("q", b).unwrap_err();
        assert_eq!(e(b"\xff\xfe"), Malformed::NotUtf8);
        assert!(matches!(e(b"{nope"), Malformed::NotJson(_)));
        assert_eq!(e(b"[1,2]"), Malformed::NotAnObject("array"));
        assert_eq!(e(b"\"s\""), Malformed::NotAnObject("string"));
        assert_eq!(e(br#"{"args":[]}"#), Malformed::MissingClass);
        assert_eq!(e(br#"{"class":7}"#), Malformed::BadClass("number"));
        assert_eq!(e(br#"{"class":""}"#), Malformed::BadClass("string"));
        assert_eq!(
            e(br#"{"class":"A","args":"x"}"#),
            Malformed::BadArgs("string")
        );
    }

    #[test]
    fn failure_record_has_rubys_field_order() {
        let f = Failure {
            failed_at: failed_at(t()),
            payload: payload_for_record(br#"{"class":"FailJob","args":["x"]}"#),
            exception: "RuntimeError".into(),
            error: "bad thing é".into(),
            backtrace: vec!["a".into()],
            worker: "vm:9192+1:high,low".into(),
            queue: "low".into(),
        };
        assert_eq!(
            f.to_json(),
            r#"{"failed_at":"2026/11/30 03:49:06 UTC","payload":{"class":"FailJob","args":["x"]},"exception":"RuntimeError","error":"bad thing é","backtrace":["a"],"worker":"vm:9192+1:high,low","queue":"low"}"#
        );
    }

    #[test]
    fn encodes_jobs_like_node_resque() {
        assert_eq!(
            encode_job("Send", "mail", serde_json::json!([{"to": "a/é", "n": 1}])),
            r#"{"class":"Send","queue":"mail","args":[{"to":"a/é","n":1}]}"#
        );
        assert_eq!(
            encode_job("X", "q", serde_json::json!({"b": 1, "a": 2})),
            r#"{"class":"X","queue":"q","args":[{"b":1,"a":2}]}"#
        );
    }

    #[test]
    fn node_resque_plugin_keys() {
        let args = vec![
            serde_json::json!(1),
            serde_json::json!("a b c"),
            serde_json::json!({"x": [1]}),
            Value::Null,
        ];
        assert_eq!(retry_args_key(&args), r#"1-ab c-{"x":[1]}-null"#);
        assert_eq!(args_json(&[serde_json::json!({})]), "[{}]");
        assert_eq!(
            encode_job_verbatim_args("tick", "default", &serde_json::json!({})),
            r#"{"class":"tick","queue":"default","args":{}}"#
        );
    }

    #[test]
    fn record_payload_keeps_every_original_byte() {
        assert_eq!(payload_for_record(b"[1, 2]").get(), "[1, 2]");
        assert_eq!(payload_for_record(b"{oops").get(), r#""{oops""#);
        let b64 = payload_for_record(b"\xff\x00a");
        let decoded: String = serde_json::from_str(b64.get()).unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(decoded)
                .unwrap(),
            b"\xff\x00a"
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic_and_records_keep_them(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Job::parse("q", &raw);
            let record = payload_for_record(&raw);
            let embedded = record.get().as_bytes();
            let back = if embedded == raw.as_slice() {
                raw.clone() // JSON, embedded verbatim
            } else {
                let text: String = serde_json::from_str(record.get()).unwrap();
                if std::str::from_utf8(&raw).is_ok() {
                    text.into_bytes()
                } else {
                    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
                }
            };
            prop_assert_eq!(back, raw);
        }

        #[test]
        fn status_values_split_back_into_queue_and_payload(
            queue in "[ -~]{1,30}",
            class in "[A-Za-z:]{1,20}",
            n in any::<i64>(),
        ) {
            let payload = format!(r#"{{"class":{},"args":[{n}]}}"#, json_string(&class));
            let value = format!("{}{payload}{}", status_head(&json_string(&queue), "2026-11-30T03:49:20Z"), status_tail("h:1+1"));
            let (q, bytes) = split_status(value.as_bytes()).unwrap();
            prop_assert_eq!(q, queue);
            prop_assert_eq!(bytes, payload.into_bytes());
        }
    }
}
