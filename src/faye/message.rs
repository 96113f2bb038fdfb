//! The Faye / Bayeux messages we send and receive, and their ids.
//!
//! Shapes as faye 1.4.3 accepts and produces them (reference: faye.md §1.5,
//! §3.2). A published [`Message`] never carries `successful`, `advice` or
//! `error`: the Faye client treats a message with `successful` as a reply
//! to one of its requests and applies `advice` from any message it gets
//! (`reconnect: "none"` would stop it), so those fields exist only on
//! [`Reply`], which we only parse.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bayeux protocol version we announce at handshake.
pub const BAYEUX_VERSION: &str = "1.0";
/// Connection type: messages in the replies to held `/meta/connect`s.
pub const LONG_POLLING: &str = "long-polling";
/// Connection type: messages pushed down a `text/event-stream` GET of
/// `<mount>/<clientId>`; `/meta/connect` is answered at once.
pub const EVENTSOURCE: &str = "eventsource";
/// Connection type: messages pushed as frames on a WebSocket to the mount,
/// bound to a client id by a `/meta/connect` carrying it.
pub const WEBSOCKET: &str = "websocket";

/// A message published on a channel, as Faye stores and delivers it.
///
/// ```json
/// {"channel":"/chat/fromnode","data":{"n":1},"clientId":"me1166sl0btjlaxlocha3drjgiztdo7","id":"4"}
/// ```
///
/// `clientId` is present in Redis for messages of Faye ≥ 1.1 clients and
/// absent once delivered; `ext` survives into Redis. Other fields are
/// ignored when read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The concrete channel it was published on.
    pub channel: String,
    /// The payload (absent only from Faye 1.0 publishes without data).
    #[serde(default)]
    pub data: Value,
    /// The publisher's message id (unique per publisher, not globally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The publisher's client id, when Redis still holds it.
    #[serde(rename = "clientId", default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Extension data (e.g. auth tokens); may hold secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<Value>,
}

impl Message {
    /// A message of ours on `channel` with a fresh id.
    pub fn new(channel: &str, data: Value, ext: Option<Value>) -> Message {
        Message {
            channel: channel.to_owned(),
            data,
            id: Some(message_id()),
            client_id: None,
            ext,
        }
    }
}

/// `advice` of a handshake or connect reply.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Advice {
    /// `retry`, `handshake` or `none`.
    pub reconnect: Option<String>,
    /// Milliseconds to wait before the next connect.
    pub interval: Option<f64>,
    /// Milliseconds the server holds a connect.
    pub timeout: Option<f64>,
}

/// What a reconnect advice tells the client to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Connect again with the same client id.
    Retry,
    /// Handshake again (the client id is gone) and resubscribe.
    Handshake,
    /// Stop: the server does not want this client back.
    None,
}

impl Advice {
    /// How long the server holds a connect: its `timeout`, else `default`.
    pub fn hold(&self, default: Duration) -> Duration {
        self.timeout
            .filter(|t| t.is_finite() && *t >= 0.0)
            .map_or(default, |ms| Duration::from_secs_f64(ms / 1000.0))
    }

    /// How long to wait before the next connect, if at all.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
            .filter(|i| i.is_finite() && *i > 0.0)
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
    }

    /// The reconnect advice, `default` when absent or unknown.
    pub fn reconnect(&self, default: Reconnect) -> Reconnect {
        match self.reconnect.as_deref() {
            Some("retry") => Reconnect::Retry,
            Some("handshake") => Reconnect::Handshake,
            Some("none") => Reconnect::None,
            _ => default,
        }
    }
}

/// One element of a Bayeux response array: either the reply to one of our
/// requests (it has `successful`) or a delivered message (it has `data`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Reply {
    /// The channel.
    #[serde(default)]
    pub channel: String,
    /// The request id this answers, or the publisher's id on a message.
    pub id: Option<String>,
    /// Present on replies only.
    pub successful: Option<bool>,
    /// The client id (handshake, connect, subscribe replies).
    #[serde(rename = "clientId")]
    pub client_id: Option<String>,
    /// `code:params:message`, or free text from a server extension.
    pub error: Option<String>,
    /// Handshake and connect replies.
    pub advice: Option<Advice>,
    /// A delivered message's payload.
    pub data: Option<Value>,
    /// A delivered message's ext.
    pub ext: Option<Value>,
    /// The server's connection types (handshake reply).
    #[serde(rename = "supportedConnectionTypes")]
    pub supported_connection_types: Option<Vec<String>>,
}

impl Reply {
    /// Whether this answers our request `id`: same id **and** a
    /// `successful` field, since delivered messages carry their publisher's
    /// id, which may equal ours (faye PR #509).
    pub fn answers(&self, id: &str) -> bool {
        self.successful.is_some() && self.id.as_deref() == Some(id)
    }

    /// The delivered message, if this is one.
    pub fn into_message(self) -> Option<Message> {
        if self.successful.is_some() || super::channel::is_meta(&self.channel) {
            return None;
        }
        Some(Message {
            channel: self.channel,
            data: self.data?,
            id: self.id,
            client_id: None,
            ext: self.ext,
        })
    }

    /// The error code (`401`, `403`, ...), when the error string has one.
    pub fn error_code(&self) -> Option<u16> {
        self.error
            .as_deref()
            .and_then(|e| e.split(':').next())
            .and_then(|c| c.trim().parse().ok())
    }
}

/// A Bayeux request of ours, by channel.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "channel")]
pub enum Request<'a> {
    /// Ask for a client id.
    #[serde(rename = "/meta/handshake")]
    Handshake {
        /// [`BAYEUX_VERSION`].
        version: &'a str,
        /// The connection types we speak.
        #[serde(rename = "supportedConnectionTypes")]
        supported_connection_types: &'a [&'a str],
        /// Request id.
        id: String,
        /// Configured ext.
        #[serde(skip_serializing_if = "Option::is_none")]
        ext: Option<&'a Value>,
    },
    /// Subscribe to one name or pattern.
    #[serde(rename = "/meta/subscribe")]
    Subscribe {
        /// Our client id.
        #[serde(rename = "clientId")]
        client_id: &'a str,
        /// The name or pattern.
        subscription: &'a str,
        /// Request id.
        id: String,
        /// Configured ext.
        #[serde(skip_serializing_if = "Option::is_none")]
        ext: Option<&'a Value>,
    },
    /// The long poll: held by the server until messages arrive or its
    /// timeout passes.
    #[serde(rename = "/meta/connect")]
    Connect {
        /// Our client id.
        #[serde(rename = "clientId")]
        client_id: &'a str,
        /// [`LONG_POLLING`], [`EVENTSOURCE`] or [`WEBSOCKET`].
        #[serde(rename = "connectionType")]
        connection_type: &'a str,
        /// Request id.
        id: String,
        /// Configured ext.
        #[serde(skip_serializing_if = "Option::is_none")]
        ext: Option<&'a Value>,
    },
    /// Leave: the server destroys the client id.
    #[serde(rename = "/meta/disconnect")]
    Disconnect {
        /// Our client id.
        #[serde(rename = "clientId")]
        client_id: &'a str,
        /// Request id.
        id: String,
        /// Configured ext.
        #[serde(skip_serializing_if = "Option::is_none")]
        ext: Option<&'a Value>,
    },
}

impl Request<'_> {
    /// The request's id, which its reply carries.
    pub fn id(&self) -> &str {
        match self {
            Request::Handshake { id, .. }
            | Request::Subscribe { id, .. }
            | Request::Connect { id, .. }
            | Request::Disconnect { id, .. } => id,
        }
    }
}

/// 20 random bytes (160 bits) from the operating system.
fn random_160() -> [u8; 20] {
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    bytes
}

/// `bytes` as a big-endian number in lowercase base 36, left-padded with `0`
/// to `width` digits.
fn base36(bytes: &[u8], width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n = bytes.to_vec();
    let mut out = Vec::new();
    while n.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        out.push(DIGITS[rem as usize]);
    }
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).expect("base-36 digits are ASCII")
}

/// A new engine client id as Faye makes them: 160 random bits in base 36,
/// padded to 31 characters (`[0-9a-z]{31}`).
pub fn client_id() -> String {
    base36(&random_160(), 31)
}

/// The engine client id every process with the same `patterns` on
/// `namespace` shares: 31 base-36 characters like [`client_id`]'s, but
/// derived (FNV-1a, fixed across versions) rather than random. Processes
/// sharing it share one queue, which each drains atomically: each message
/// goes to exactly one of them.
pub fn shared_client_id(namespace: &str, patterns: &[String]) -> String {
    let mut bytes = Vec::with_capacity(20);
    for seed in [
        0xcbf2_9ce4_8422_2325u64,
        0x8422_2325_cbf2_9ce4,
        0x1000_0000_01b3,
    ] {
        let mut h = seed;
        for part in std::iter::once(namespace).chain(patterns.iter().map(String::as_str)) {
            for &b in part.as_bytes().iter().chain(&[0u8]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        bytes.extend_from_slice(&h.to_be_bytes());
    }
    bytes.truncate(20);
    base36(&bytes, 31)
}

/// A message id unique across processes: a random per-process prefix and a
/// counter (`<8 chars>-<n>`, base 36).
pub fn message_id() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| base36(&random_160()[..5], 8));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}", base36(&n.to_be_bytes(), 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_client_id_is_derived_from_the_namespace_and_patterns() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let id = shared_client_id("faye:", &p(&["/a/*", "/b"]));
        assert_eq!(id.len(), 31);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert_eq!(id, shared_client_id("faye:", &p(&["/a/*", "/b"])));
        assert_ne!(id, shared_client_id("faye:", &p(&["/a/*"])));
        assert_ne!(id, shared_client_id("other:", &p(&["/a/*", "/b"])));
        // Parts are separated: ("ab", "c") is not ("a", "bc").
        assert_ne!(
            shared_client_id("ab", &p(&["c"])),
            shared_client_id("a", &p(&["bc"]))
        );
    }
    use serde_json::json;

    #[test]
    fn client_ids_are_31_base36_characters_and_differ() {
        let a = client_id();
        assert_eq!(a.len(), 31);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert_ne!(a, client_id());
        // The largest 160-bit number still fits in 31 digits.
        assert_eq!(base36(&[0xff; 20], 31).len(), 31);
        assert_eq!(base36(&[0, 0, 1, 0], 3), "074");
    }

    #[test]
    fn published_messages_carry_no_reply_fields() {
        let m = Message::new("/a/b", json!({"x": 1}), Some(json!({"token": "t"})));
        let v: Value = serde_json::to_value(&m).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["channel", "data", "id", "ext"]);
        let stored: Message = serde_json::from_str(
            r#"{"channel":"/chat/fromnode","data":{"n":1},"clientId":"me1166","id":"4","extra":"y"}"#,
        )
        .unwrap();
        assert_eq!(stored.client_id.as_deref(), Some("me1166"));
        assert_eq!(stored.data, json!({"n": 1}));
    }

    #[test]
    fn replies_match_by_id_and_successful() {
        let r: Vec<Reply> = serde_json::from_str(
            r#"[{"channel":"/meta/connect","clientId":"c","successful":true,"advice":{"reconnect":"retry","interval":0,"timeout":2000},"id":"5"},
                {"channel":"/a/b","data":{"n":1},"id":"5"}]"#,
        )
        .unwrap();
        assert!(r[0].answers("5"));
        assert!(
            !r[1].answers("5"),
            "a message with the same id is not the reply"
        );
        assert_eq!(
            r[0].advice
                .as_ref()
                .unwrap()
                .reconnect(Reconnect::Handshake),
            Reconnect::Retry
        );
        let m = r[1].clone().into_message().unwrap();
        assert_eq!((m.channel.as_str(), m.data), ("/a/b", json!({"n": 1})));
        let e: Reply =
            serde_json::from_str(r#"{"channel":"/meta/connect","successful":false,"error":"401:abc:Unknown client","id":"6"}"#)
                .unwrap();
        assert_eq!(e.error_code(), Some(401));
        let free: Reply =
            serde_json::from_str(r#"{"successful":false,"error":"no token"}"#).unwrap();
        assert_eq!(free.error_code(), None);
    }

    #[test]
    fn requests_have_bayeux_field_names() {
        let ext = json!({"token": "t"});
        let v = serde_json::to_value(Request::Connect {
            client_id: "c",
            connection_type: LONG_POLLING,
            id: "7".into(),
            ext: Some(&ext),
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"channel": "/meta/connect", "clientId": "c", "connectionType": "long-polling", "id": "7", "ext": {"token": "t"}})
        );
        let v = serde_json::to_value(Request::Handshake {
            version: BAYEUX_VERSION,
            supported_connection_types: &[LONG_POLLING],
            id: "1".into(),
            ext: None,
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"], "id": "1"})
        );
    }
}
