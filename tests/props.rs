//! Arbitrary bytes thrown at the payload path of a running worker: every
//! input ends as a success or as a failure record holding its original
//! bytes; the worker never crashes and loses nothing.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

use crate::util::{InProcess, Ns};

/// Payloads of every kind: random bytes, random JSON, near-miss jobs, real jobs.
fn payloads() -> impl Strategy<Value = Vec<u8>> {
    let json_leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ];
    let json = json_leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::hash_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let class = prop_oneof![
        Just(json!("AhWorker::Noop")),
        Just(json!("AhWorker::Fail")),
        Just(json!("No::Such")),
        Just(json!(42)),
        Just(Value::Null),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        json.clone().prop_map(|v| v.to_string().into_bytes()),
        (class, json.clone())
            .prop_map(|(c, a)| json!({"class": c, "args": a}).to_string().into_bytes()),
        json.prop_map(|a| json!({"class": "AhWorker::Noop", "args": [a]})
            .to_string()
            .into_bytes()),
    ]
}

/// The original bytes a failure record's payload stands for.
fn original(record: &Value) -> Vec<u8> {
    let payload = &record["payload"];
    let error = record["error"].as_str().unwrap_or("");
    match payload {
        Value::String(s) if error.contains("not valid UTF-8") => {
            base64::engine::general_purpose::STANDARD.decode(s).unwrap()
        }
        Value::String(s) if !error.contains("is a JSON string") => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn arbitrary_payloads_end_as_success_or_failure_with_their_bytes() {
    let mut t = Ns::new("props");
    let mut runner = TestRunner::deterministic();
    let strategy = payloads();
    let mut inputs: Vec<Vec<u8>> = (0..400)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    inputs.push(vec![b'x'; 5 * 1024 * 1024]); // a huge malformed one
    let mut huge = br#"{"class":"AhWorker::Noop","args":[""#.to_vec();
    huge.extend(std::iter::repeat_n(b'a', 5 * 1024 * 1024));
    huge.extend(br#""]}"#);
    inputs.push(huge);
    for p in &inputs {
        t.push("q", p);
    }
    let mut config = t.config(&["q"], 4);
    config.interval = Duration::ZERO;
    let report = InProcess::builtin(config).join().await;
    assert_eq!(
        report.performed as usize,
        inputs.len(),
        "every input was processed"
    );
    assert_eq!(t.int("stat:processed") as usize, inputs.len());
    assert!(t.list("queue:q").is_empty());

    // Every failure holds the bytes of one input; compare as multisets, with
    // JSON inputs compared as values (the record embeds them as JSON).
    let key = |bytes: &[u8]| -> String {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => format!("json:{v}"),
            Err(_) => format!(
                "raw:{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            ),
        }
    };
    let mut expected: HashMap<String, i64> = HashMap::new();
    for p in &inputs {
        *expected.entry(key(p)).or_default() += 1;
    }
    let failures = t.failures();
    for f in &failures {
        let k = key(&original(f));
        if !expected.contains_key(&k) {
            let close: Vec<&String> = expected.keys().filter(|e| e.len() == k.len()).collect();
            panic!(
                "failure for an input never enqueued: {k}\n candidates of the same length: {close:?}"
            );
        }
        let n = expected.get_mut(&k).unwrap();
        *n -= 1;
        assert!(*n >= 0, "more failures than inputs for {k}");
    }
    // What did not fail succeeded: only runnable AhWorker::Noop jobs.
    for (k, left) in expected {
        if left > 0 {
            assert!(
                k.starts_with("json:") && k.contains("\"AhWorker::Noop\""),
                "{k} neither failed nor could succeed"
            );
        }
    }
}
