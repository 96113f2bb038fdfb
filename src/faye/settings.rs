//! The `[faye]` section of the config file.
//!
//! ```toml
//! [faye]
//! transport = "redis"            # or "http"
//! namespace = "faye:"            # redis: the faye-redis namespace
//! # redis = "redis://..."        # redis: default the worker's Redis
//! # url = "http://127.0.0.1:8080/faye"   # http: the Faye mount
//! # connection = "eventsource"   # http: or "long-polling", "websocket"
//! timeout = "45s"                # the smallest `timeout` of the Faye servers
//! # ext = { token = "secret" }   # http: sent on every message
//! server_token = "change-me"     # actionHero's general.serverToken, for say
//! chat_channel = "/actionhero/chat/chat"
//!
//! [faye.events]
//! channel = "/ah-worker/jobs"
//! classes = ["*"]
//!
//! [[faye.subscribe]]
//! channel = "/jobs/**"
//! class = "Report"
//! queue = "default"
//! args = "data"                  # or "message"
//! ```

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::channel;

/// The namespace actionHero gave faye-redis (the engine's own default is "").
pub const DEFAULT_NAMESPACE: &str = "faye:";
/// Faye's NodeAdapter default `timeout`; actionHero used 45 s. Set the
/// smallest timeout of the servers sharing the namespace: we ping at a
/// third of it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// actionHero's chat channel from v9 (`/actionHero/chat` in 6.x–7.x).
pub const DEFAULT_CHAT_CHANNEL: &str = "/actionhero/chat/chat";
/// The queue of a subscribe rule without one.
pub const DEFAULT_QUEUE: &str = "default";

/// How we reach Faye.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// As a peer of the faye-redis engine.
    Redis {
        /// The Redis the Faye servers share.
        url: String,
        /// TLS files for a `rediss://` URL (the worker's `redis_tls_*`).
        tls: crate::connection::TlsFiles,
        /// Their namespace, used verbatim as a key prefix.
        namespace: String,
    },
    /// As a Bayeux client of a Faye server.
    Http {
        /// The mount URL, e.g. `http://127.0.0.1:8080/faye`.
        url: String,
        /// How the server sends us messages.
        connection: super::http::Connection,
    },
}

/// What a subscribe rule passes as the job's args.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgsFrom {
    /// The message's `data`, as `ah-worker enqueue --args` takes JSON: an
    /// array is the argument list, anything else the single argument.
    Data,
    /// One argument `{"channel","data","id"}` (never `ext`, which may hold
    /// secrets), for handlers that need the concrete channel.
    Message,
}

/// A subscribe rule: messages on `channel` become jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// A channel or pattern (`/jobs/*`, `/jobs/**`).
    pub channel: String,
    /// The job's class.
    pub class: String,
    /// The job's queue.
    pub queue: String,
    /// What becomes the args.
    pub args: ArgsFrom,
}

/// Where job events go.
#[derive(Debug, Clone, PartialEq)]
pub struct Events {
    /// The channel they are published on.
    pub channel: String,
    /// Only jobs of these classes (names or glob patterns).
    pub classes: Vec<String>,
}

/// actionHero chat settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Chat {
    /// Its channel.
    pub channel: String,
    /// actionHero's `general.serverToken`; `say` needs it.
    pub server_token: Option<String>,
    /// The `serverId` we sign with.
    pub server_id: String,
}

/// The validated `[faye]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How we reach Faye.
    pub transport: Transport,
    /// The smallest Faye server `timeout`.
    pub timeout: Duration,
    /// `ext` on every Bayeux message (http transport).
    pub ext: Option<Value>,
    /// actionHero chat.
    pub chat: Chat,
    /// Job events, if published.
    pub events: Option<Events>,
    /// Subscribe rules.
    pub rules: Vec<Rule>,
}

impl Settings {
    /// The settings without a `[faye]` section (for the CLI): the worker's
    /// Redis, actionHero's namespace and chat channel.
    pub fn defaults(
        redis_url: &str,
        tls: &crate::connection::TlsFiles,
        server_id: &str,
    ) -> Settings {
        Settings {
            transport: Transport::Redis {
                url: redis_url.to_owned(),
                tls: tls.clone(),
                namespace: DEFAULT_NAMESPACE.to_owned(),
            },
            timeout: DEFAULT_TIMEOUT,
            ext: None,
            chat: Chat {
                channel: DEFAULT_CHAT_CHANNEL.to_owned(),
                server_token: None,
                server_id: server_id.to_owned(),
            },
            events: None,
            rules: Vec::new(),
        }
    }

    /// The `[faye]` section over [`Settings::defaults`].
    pub fn from_toml(
        value: toml::Value,
        redis_url: &str,
        tls: &crate::connection::TlsFiles,
        server_id: &str,
    ) -> Result<Settings, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            transport: Option<String>,
            redis: Option<String>,
            namespace: Option<String>,
            url: Option<String>,
            connection: Option<String>,
            timeout: Option<toml::Value>,
            ext: Option<toml::Value>,
            server_token: Option<String>,
            server_id: Option<String>,
            chat_channel: Option<String>,
            events: Option<RawEvents>,
            #[serde(default)]
            subscribe: Vec<RawRule>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawEvents {
            channel: String,
            classes: Option<Vec<String>>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawRule {
            channel: String,
            class: String,
            queue: Option<String>,
            args: Option<String>,
        }
        let raw: Raw = value
            .try_into()
            .map_err(|e: toml::de::Error| format!("[faye]: {}", e.message()))?;
        let mut s = Settings::defaults(
            redis_url,
            tls,
            raw.server_id.as_deref().unwrap_or(server_id),
        );
        s.transport = match raw.transport.as_deref() {
            None | Some("redis") => {
                if raw.url.is_some() || raw.connection.is_some() {
                    return Err("[faye] url and connection are for transport = \"http\"; the redis transport takes `redis`".into());
                }
                let url = raw.redis.unwrap_or_else(|| redis_url.to_owned());
                if let Err(e) = crate::connection::Target::new(&url, tls) {
                    return Err(format!(
                        "[faye] redis: {e}; expected a URL like redis://[user:password@]host:6379/0"
                    ));
                }
                Transport::Redis {
                    url,
                    tls: tls.clone(),
                    namespace: raw
                        .namespace
                        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
                }
            }
            Some("http") => {
                if raw.redis.is_some() || raw.namespace.is_some() {
                    return Err("[faye] redis and namespace are for transport = \"redis\"".into());
                }
                let url = raw.url.ok_or(
                    "[faye] transport = \"http\" needs url, e.g. \"http://127.0.0.1:8080/faye\"",
                )?;
                crate::plugin::http::check_url(&url).map_err(|e| format!("[faye] {e}"))?;
                let connection = match raw.connection.as_deref() {
                    None | Some("eventsource") => super::http::Connection::EventSource,
                    Some("long-polling") => super::http::Connection::LongPolling,
                    Some("websocket") if url.starts_with("https:") => {
                        return Err("[faye] connection = \"websocket\" needs an http:// url (wss is not built in); use eventsource with https".into());
                    }
                    Some("websocket") => super::http::Connection::WebSocket,
                    Some(other) => {
                        return Err(format!(
                            "[faye] connection {other:?}: expected eventsource, long-polling or websocket"
                        ));
                    }
                };
                Transport::Http { url, connection }
            }
            Some(other) => {
                return Err(format!(
                    "[faye] transport {other:?}: expected redis or http"
                ));
            }
        };
        if let Some(t) = raw.timeout {
            let text = match t {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            s.timeout = crate::config::parse_duration(&text)
                .filter(|d| *d >= Duration::from_millis(100))
                .ok_or_else(|| format!("[faye] timeout {text:?}: expected a duration of at least 100ms, e.g. \"45s\""))?;
        }
        if let Some(ext) = raw.ext {
            let ext = serde_json::to_value(ext).map_err(|e| format!("[faye] ext: {e}"))?;
            if !ext.is_object() {
                return Err("[faye] ext must be a table".into());
            }
            s.ext = Some(ext);
        }
        s.chat.server_token = raw.server_token;
        if let Some(c) = raw.chat_channel {
            channel::check_publish(&c).map_err(|e| format!("[faye] chat_channel {c:?}: {e}"))?;
            s.chat.channel = c;
        }
        for r in raw.subscribe {
            channel::check_subscribe(&r.channel)
                .map_err(|e| format!("[[faye.subscribe]] channel {:?}: {e}", r.channel))?;
            if r.class.trim().is_empty() {
                return Err(format!(
                    "[[faye.subscribe]] {:?}: class must not be empty",
                    r.channel
                ));
            }
            let args = match r.args.as_deref() {
                None | Some("data") => ArgsFrom::Data,
                Some("message") => ArgsFrom::Message,
                Some(other) => {
                    return Err(format!(
                        "[[faye.subscribe]] {:?}: args {other:?}: expected data or message",
                        r.channel
                    ));
                }
            };
            let queue = r.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
            if queue.trim().is_empty() || queue.contains(char::is_whitespace) {
                return Err(format!(
                    "[[faye.subscribe]] {:?}: queue {queue:?} is not a queue name",
                    r.channel
                ));
            }
            s.rules.push(Rule {
                channel: r.channel,
                class: r.class,
                queue,
                args,
            });
        }
        if let Some(e) = raw.events {
            channel::check_publish(&e.channel)
                .map_err(|err| format!("[faye.events] channel {:?}: {err}", e.channel))?;
            // An event that matched a rule would enqueue a job, whose events
            // would enqueue jobs, without end.
            if let Some(r) = s
                .rules
                .iter()
                .find(|r| channel::matches(&r.channel, &e.channel))
            {
                return Err(format!(
                    "[faye.events] channel {:?} matches the subscribe rule {:?}: every job event would start another job",
                    e.channel, r.channel
                ));
            }
            s.events = Some(Events {
                channel: e.channel,
                classes: e.classes.unwrap_or_else(|| vec!["*".to_owned()]),
            });
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, String> {
        let v: toml::Value = toml::from_str(text).unwrap();
        Settings::from_toml(
            v["faye"].clone(),
            "redis://h:1/0",
            &Default::default(),
            "host-1",
        )
    }

    #[test]
    fn defaults_follow_actionhero() {
        let s = parse("[faye]\n").unwrap();
        assert_eq!(
            s.transport,
            Transport::Redis {
                url: "redis://h:1/0".into(),
                tls: Default::default(),
                namespace: "faye:".into()
            }
        );
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!(s.chat.channel, "/actionhero/chat/chat");
        assert_eq!(s.chat.server_id, "host-1");
        assert!(s.events.is_none() && s.rules.is_empty());
    }

    #[test]
    fn a_full_section() {
        let s = parse(
            r#"
[faye]
transport = "http"
url = "http://127.0.0.1:8080/faye"
connection = "long-polling"
timeout = 2
ext = { token = "t" }
server_token = "tok"
server_id = "me"
chat_channel = "/actionHero/chat"
[faye.events]
channel = "/ah/events"
[[faye.subscribe]]
channel = "/jobs/**"
class = "Report"
[[faye.subscribe]]
channel = "/mail"
class = "Mail"
queue = "mail"
args = "message"
"#,
        )
        .unwrap();
        assert_eq!(
            s.transport,
            Transport::Http {
                url: "http://127.0.0.1:8080/faye".into(),
                connection: crate::faye::http::Connection::LongPolling
            }
        );
        assert_eq!(s.timeout, Duration::from_secs(2));
        assert_eq!(s.ext, Some(serde_json::json!({"token": "t"})));
        assert_eq!(
            (s.chat.server_token.as_deref(), s.chat.server_id.as_str()),
            (Some("tok"), "me")
        );
        assert_eq!(s.events.unwrap().classes, ["*"]);
        assert_eq!(s.rules[0].queue, "default");
        assert_eq!(s.rules[0].args, ArgsFrom::Data);
        assert_eq!(s.rules[1].args, ArgsFrom::Message);
    }

    #[test]
    fn mistakes_are_named() {
        let err = |t: &str| parse(t).unwrap_err();
        assert!(err("[faye]\ntransport = \"ws\"\n").contains("transport"));
        assert!(err("[faye]\ntransport = \"http\"\n").contains("needs url"));
        assert!(err("[faye]\ntimeout = \"soon\"\n").contains("timeout"));
        let http = "[faye]\ntransport = \"http\"\nurl = \"http://h:1/faye\"\n";
        assert!(err(&format!("{http}connection = \"ws\"\n")).contains("or websocket"));
        assert_eq!(
            parse(&format!("{http}connection = \"websocket\"\n"))
                .unwrap()
                .transport,
            Transport::Http {
                url: "http://h:1/faye".into(),
                connection: crate::faye::http::Connection::WebSocket
            }
        );
        let https = "[faye]\ntransport = \"http\"\nurl = \"https://h:1/faye\"\n";
        assert!(parse(https).is_ok());
        assert!(err(&format!("{https}connection = \"websocket\"\n")).contains("wss"));
        assert!(err("[faye]\nnamspace = \"x\"\n").contains("namspace"));
        assert!(
            err("[faye]\n[[faye.subscribe]]\nchannel = \"/a.b\"\nclass = \"X\"\n").contains("/a.b")
        );
        assert!(
            err("[faye]\n[[faye.subscribe]]\nchannel = \"/meta/*\"\nclass = \"X\"\n")
                .contains("/meta/")
        );
        let e = err(
            "[faye]\n[faye.events]\nchannel = \"/jobs/done\"\n[[faye.subscribe]]\nchannel = \"/jobs/*\"\nclass = \"X\"\n",
        );
        assert!(e.contains("every job event would start another job"), "{e}");
        assert!(err("[faye]\n[faye.events]\nchannel = \"/jobs/*\"\n").contains("pattern"));
    }
}
