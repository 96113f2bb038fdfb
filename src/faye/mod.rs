//! Faye pub/sub with Node peers: the only module that knows Faye's channel
//! grammar, the faye-redis engine's keys and the Bayeux message shapes.
//!
//! Two transports, chosen in the `[faye]` config section:
//! - [`engine`]: a peer of the faye-redis 0.2.0 engine on the Redis the
//!   Node Faye servers share (actionHero's setup): no Faye server needed,
//!   but Faye's server extensions do not see what we publish;
//! - [`http`]: a Bayeux client of a Faye server URL (messages pushed down
//!   an event stream or a WebSocket, or long polls), whose extensions
//!   (auth) see every message.
//!
//! On top of either, a [`Faye`] handle publishes (handlers, plugins, the
//! CLI, actionHero chat via [`Faye::say`]) and subscribes; [`bridge`] turns
//! messages into jobs by the config's rules and publishes job events.
//!
//! Faye delivers **at most once**: no acks, no replay. Messages published
//! while a subscriber re-registers (after its Redis or Faye server restarted,
//! or after it was collected) are lost, and so are messages in a long-poll
//! reply lost in transit. Reference: faye.md (faye 1.4.3, faye-redis 0.2.0).
//!
//! Not here: TLS to the Faye server (`https://`, `wss://`), Faye 0.8 /
//! faye-redis 0.1 layouts, Redis Cluster (faye-redis does not support it).

pub mod bridge;
pub mod channel;
pub mod engine;
pub mod http;
pub mod keys;
pub mod message;
mod retry;
pub mod settings;

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use bridge::{JobEvent, spawn_bridge};
pub use message::Message;
pub use settings::{ArgsFrom, Rule, Settings, Transport};

/// What can go wrong talking to Faye.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FayeError {
    /// A channel name or pattern Faye would refuse.
    #[error("invalid channel {channel:?}: {reason}")]
    Channel {
        /// The name.
        channel: String,
        /// Why.
        reason: channel::Invalid,
    },
    /// A Redis command or connection failed.
    #[error("redis")]
    Redis(#[from] redis::RedisError),
    /// The HTTP request failed (connection, timeout).
    #[error("request to the faye server at {url} failed")]
    Http {
        /// The Faye URL.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The WebSocket to the server failed (connection, timeout, closed).
    #[error("websocket to the faye server at {url} failed")]
    WebSocket {
        /// The socket's URL.
        url: String,
        /// The socket error.
        source: tokio_tungstenite::tungstenite::Error,
    },
    /// The server answered with an HTTP error status.
    #[error("faye server at {url} answered HTTP {status}: {body}")]
    Status {
        /// The Faye URL.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The server refused a message (`successful: false`).
    #[error("faye refused {channel}: {error}")]
    Refused {
        /// The channel of the refused message.
        channel: String,
        /// Faye's error string (`code:params:message`, or an extension's text).
        error: String,
        /// What its advice says to do next.
        reconnect: message::Reconnect,
    },
    /// The server refused one of our subscriptions (`403`, or a server
    /// extension's own reason, e.g. actionHero's refusal of wildcards).
    #[error("faye refused the subscription to {pattern}: {error}")]
    SubscriptionRefused {
        /// The name or pattern.
        pattern: String,
        /// Faye's error string.
        error: String,
    },
    /// The server answered something Bayeux does not allow.
    #[error("unexpected answer from the faye server at {url}: {detail}")]
    Protocol {
        /// The Faye URL.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// Faye has not answered since the worker started; a task keeps trying.
    #[error("{what} has not answered yet; retrying in the background")]
    Unavailable {
        /// What we wait for ("faye's redis").
        what: &'static str,
    },
    /// A setting needed for this call is missing.
    #[error("{0}")]
    NotConfigured(String),
}

fn checked(name: &str, check: fn(&str) -> Result<(), channel::Invalid>) -> Result<(), FayeError> {
    check(name).map_err(|reason| FayeError::Channel {
        channel: name.to_owned(),
        reason,
    })
}

/// The Redis of the redis transport.
fn redis_target(
    url: &str,
    tls: &crate::connection::TlsFiles,
) -> Result<crate::connection::Target, FayeError> {
    crate::connection::Target::new(url, tls)
        .map_err(|e| FayeError::NotConfigured(format!("[faye] redis: {e}")))
}

/// The Bayeux client of the http transport.
fn bayeux(settings: &Settings, url: &str, connection: http::Connection) -> Result<Conn, FayeError> {
    http::Bayeux::new(url, connection, settings.ext.clone(), settings.timeout).map(Conn::Http)
}

// One per process, behind an Arc: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Conn {
    Redis(engine::Engine),
    Http(http::Bayeux),
}

#[derive(Debug)]
struct Inner {
    conn: Conn,
    chat: settings::Chat,
    events: Option<bridge::EventSink>,
}

/// A handle on Faye: publish, say, subscribe. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Faye {
    inner: Arc<Inner>,
}

impl Faye {
    /// Connect as `settings` say, for a short-lived use such as the CLI: the
    /// redis transport opens its connection now and fails if Redis does not
    /// answer; the http one connects on first use.
    pub async fn connect(settings: &Settings) -> Result<Faye, FayeError> {
        let conn = match &settings.transport {
            Transport::Redis {
                url,
                tls,
                namespace,
            } => Conn::Redis(
                engine::Engine::connect(&redis_target(url, tls)?, namespace, settings.timeout)
                    .await?,
            ),
            Transport::Http { url, connection } => bayeux(settings, url, *connection)?,
        };
        Ok(Faye::with(conn, settings))
    }

    /// Start Faye for a long-running worker: never waits for Faye and never
    /// fails because it is unreachable (only on settings it cannot use).
    /// The redis transport connects in the returned task, retrying with
    /// capped backoff until `stop`; until then publishes fail with
    /// [`FayeError::Unavailable`] and subscriptions wait. The http
    /// transport needs no task: each subscription retries its handshake by
    /// itself, and each publish is one request.
    pub fn start(
        settings: &Settings,
        stop: &CancellationToken,
    ) -> Result<(Faye, Option<tokio::task::JoinHandle<()>>), FayeError> {
        let (conn, task) = match &settings.transport {
            Transport::Redis {
                url,
                tls,
                namespace,
            } => {
                let (engine, task) = engine::Engine::connect_in_background(
                    &redis_target(url, tls)?,
                    namespace,
                    settings.timeout,
                    stop.clone(),
                );
                (Conn::Redis(engine), Some(task))
            }
            Transport::Http { url, connection } => (bayeux(settings, url, *connection)?, None),
        };
        Ok((Faye::with(conn, settings), task))
    }

    fn with(conn: Conn, settings: &Settings) -> Faye {
        Faye {
            inner: Arc::new(Inner {
                conn,
                chat: settings.chat.clone(),
                events: settings.events.clone().map(bridge::EventSink::new),
            }),
        }
    }

    /// Publish `data` on the concrete channel `channel` to every subscriber
    /// of every matching name and pattern.
    pub async fn publish(&self, channel: &str, data: Value) -> Result<(), FayeError> {
        checked(channel, channel::check_publish)?;
        let message = Message::new(channel, data, None);
        match &self.inner.conn {
            Conn::Redis(e) => e.publish(&message).await.map(|_| ()),
            Conn::Http(b) => b.publish(&message).await,
        }
    }

    /// actionHero's `say`: `message` to the members of `room` on every
    /// actionHero node, in actionHero's chat format
    /// `{serverToken, serverId, message, sentAt, connection: {id, room}}`.
    /// The connection id is `0`, as actionHero marks its own server-side
    /// broadcasts, so no member is skipped as the sender.
    pub async fn say(&self, room: &str, message: Value) -> Result<(), FayeError> {
        let chat = &self.inner.chat;
        let token = chat.server_token.as_deref().ok_or_else(|| {
            FayeError::NotConfigured(
                "say needs actionHero's serverToken: set server_token in the [faye] section".into(),
            )
        })?;
        let data = json!({
            "serverToken": token,
            "serverId": chat.server_id,
            "message": message,
            "sentAt": chrono::Utc::now().timestamp_millis(),
            "connection": {"id": 0, "room": room},
        });
        self.publish(&chat.channel, data).await
    }

    /// Subscribe to `patterns` (names or wildcard patterns) until `stop` or
    /// [`Subscription::close`]: a background task keeps the subscription
    /// alive through reconnects and hands messages to the [`Subscription`].
    pub fn subscribe(
        &self,
        patterns: &[String],
        stop: &CancellationToken,
    ) -> Result<Subscription, FayeError> {
        self.subscribe_as(patterns, false, stop)
    }

    /// Subscribe as one of a group of competing consumers: over the redis
    /// transport every process subscribing the same `patterns` shares one
    /// engine client, so each message reaches **one** of them (the bridge
    /// uses this, so a fleet turns a publish into one job). Over HTTP each
    /// process is its own client and gets every message.
    pub fn subscribe_shared(
        &self,
        patterns: &[String],
        stop: &CancellationToken,
    ) -> Result<Subscription, FayeError> {
        self.subscribe_as(patterns, true, stop)
    }

    fn subscribe_as(
        &self,
        patterns: &[String],
        shared: bool,
        stop: &CancellationToken,
    ) -> Result<Subscription, FayeError> {
        for p in patterns {
            checked(p, channel::check_subscribe)?;
        }
        // Unbounded: the subscriber must keep pinging and draining whatever
        // the consumer does; a bound would only move the backlog back into
        // stalled pings, and a stale subscriber loses its messages anyway.
        let (tx, rx) = mpsc::unbounded_channel();
        let (id_tx, id_rx) = watch::channel(None);
        let shared = match &self.inner.conn {
            Conn::Redis(e) if shared => {
                Some(message::shared_client_id(e.keys().namespace(), patterns))
            }
            _ => None,
        };
        let feed = Feed {
            patterns: patterns.to_vec(),
            messages: tx,
            client: id_tx,
            shared,
        };
        let stop = stop.child_token();
        let span = tracing::info_span!("faye_subscription", patterns = ?patterns);
        let task = match &self.inner.conn {
            Conn::Redis(e) => {
                tokio::spawn(e.clone().subscribe(feed, stop.clone()).instrument(span))
            }
            Conn::Http(b) => tokio::spawn(b.clone().subscribe(feed, stop.clone()).instrument(span)),
        };
        Ok(Subscription {
            rx,
            id: id_rx,
            stop,
            task,
        })
    }
}

/// Where a subscription task hands what it gets.
#[derive(Debug)]
struct Feed {
    /// The names and patterns subscribed to.
    patterns: Vec<String>,
    /// Messages received, in order.
    messages: mpsc::UnboundedSender<Message>,
    /// The client id holding the subscription now.
    client: watch::Sender<Option<String>>,
    /// A client id shared with every process subscribing the same patterns
    /// (redis transport only): each message reaches one of them.
    shared: Option<String>,
}

impl Feed {
    /// Hand `message` on if one of our patterns matches it (Faye delivers
    /// only those; this guards against a foreign entry in our queue).
    fn deliver(&self, message: Message) {
        if self
            .patterns
            .iter()
            .any(|p| channel::matches(p, &message.channel))
        {
            let _ = self.messages.send(message);
        } else {
            tracing::debug!(channel = %message.channel, "message for none of our patterns; ignored");
        }
    }

    /// A new client id holds the subscription.
    fn client(&self, id: &str) {
        self.client.send_replace(Some(id.to_owned()));
    }
}

/// How long a clean shutdown may take to destroy or disconnect a client.
const LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Destroy or disconnect `client` at shutdown, best effort: if `goodbye`
/// fails or takes longer than [`LEAVE_TIMEOUT`], the Faye servers collect
/// the client after their timeout.
async fn leave(client: &str, goodbye: impl std::future::Future<Output = Result<(), FayeError>>) {
    match tokio::time::timeout(LEAVE_TIMEOUT, goodbye).await {
        Ok(Ok(())) => tracing::info!(client, "faye client left"),
        Ok(Err(e)) => {
            tracing::warn!(client, error = %e, "faye client could not leave; the servers collect it")
        }
        Err(_) => tracing::warn!(
            client,
            "faye client timed out leaving; the servers collect it"
        ),
    }
}

/// A live subscription: messages in arrival order, and the client id that
/// currently holds it.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Message>,
    id: watch::Receiver<Option<String>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    /// The next message; `None` once the subscription ended.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// The Faye client id holding the subscription now (a new one after
    /// every re-registration or re-handshake), `None` before the first.
    pub fn client_id(&self) -> Option<String> {
        self.id.borrow().clone()
    }

    /// Wait until the subscription is in place (registered and subscribed);
    /// returns the client id, or `None` if it ended first.
    pub async fn ready(&mut self) -> Option<String> {
        self.id
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|id| id.clone())
    }

    /// Stop, and wait until the client is destroyed / disconnected.
    pub async fn close(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
