//! A peer of the faye-redis 0.2.0 engine: publish and subscribe through the
//! Redis that the Node Faye servers share, without a Faye server of our own.
//!
//! Publishing runs the engine's publish in one Lua script (SUNION over the
//! expanded channel, then RPUSH + PUBLISH + liveness check per subscriber),
//! so it is atomic and keeps one publisher's order. Subscribing registers an
//! engine client of our own and keeps it alive: a ping well inside the
//! servers' timeout, a dedicated pub/sub connection for the notifications,
//! an atomic drain of our queue on every notification, at start, after every
//! reconnect and on a slow timer, and a new registration when ours was
//! collected. Reference: faye.md §1–2.
//!
//! A long-running worker does not wait for that Redis: with
//! [`Engine::connect_in_background`] a task keeps trying to connect (capped
//! backoff, one warning per failure streak) while publishes fail at once
//! with [`FayeError::Unavailable`] and subscribers wait for it.
//!
//! What this path skips: Faye's incoming server extensions (auth checks such
//! as actionHero's serverToken) and the servers' `publish` event; outgoing
//! extensions still run when a Faye server delivers to its clients.

use std::time::Duration;

use crate::connection::{Conn, Target};
use futures_util::StreamExt as _;
use redis::Script;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, warn};

use super::keys::Keys;
use super::message::{Message, client_id};
use super::retry::Retry;
use super::{FayeError, Feed, channel};

/// How often we ping, as a fraction of the timeout T: faye-redis counts a
/// client alive for 1.6 T after its last ping and collects it after 2 T, so
/// T/3 survives a lost or late ping with a wide margin for clock skew
/// between hosts (scores are compared against other hosts' clocks).
const PING_DIVISOR: u32 = 3;
/// Longest ping period, whatever T is.
const PING_MAX: Duration = Duration::from_secs(20);
/// Drain on this timer too: notifications are fire-and-forget, and one sent
/// while our pub/sub connection was being re-established is never seen.
const DRAIN_EVERY: Duration = Duration::from_secs(5);
/// How long the first connection to an unreachable host may take to fail.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Milliseconds since the Unix epoch on this host's clock, as Faye's
/// `new Date().getTime()`.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The Lua scripts.
#[derive(Clone)]
struct Scripts {
    publish: Script,
    register: Script,
    ping: Script,
    destroy: Script,
}

/// Publishing and subscribing through one faye-redis namespace.
#[derive(Clone)]
pub struct Engine {
    target: Target,
    /// The shared connection, `None` until Redis first answered.
    conn: watch::Receiver<Option<Conn>>,
    keys: Keys,
    timeout: Duration,
    scripts: Scripts,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("keys", &self.keys)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Connect to the Redis at `url`, namespace `namespace`, with `timeout`
    /// the smallest `timeout` of the Faye servers sharing the namespace.
    pub async fn connect(
        target: &Target,
        namespace: &str,
        timeout: Duration,
    ) -> Result<Engine, FayeError> {
        let conn = target.connect().await?;
        Ok(Engine::new(
            target,
            watch::channel(Some(conn)).1,
            namespace,
            timeout,
        ))
    }

    /// As [`Engine::connect`], but without waiting for Redis: a task
    /// (stopped by `stop`) connects in the background, retrying with capped
    /// backoff until Redis answers. Meanwhile publishes fail with
    /// [`FayeError::Unavailable`] and subscriptions wait.
    pub fn connect_in_background(
        target: &Target,
        namespace: &str,
        timeout: Duration,
        stop: CancellationToken,
    ) -> (Engine, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(None);
        let span = tracing::info_span!("faye_redis_connect", namespace);
        let task = tokio::spawn(keep_connecting(target.clone(), tx, stop).instrument(span));
        (Engine::new(target, rx, namespace, timeout), task)
    }

    fn new(
        target: &Target,
        conn: watch::Receiver<Option<Conn>>,
        namespace: &str,
        timeout: Duration,
    ) -> Engine {
        Engine {
            target: target.clone(),
            conn,
            keys: Keys::new(namespace),
            timeout,
            scripts: Scripts {
                publish: Script::new(include_str!("scripts/publish.lua")),
                register: Script::new(include_str!("scripts/register.lua")),
                ping: Script::new(include_str!("scripts/ping.lua")),
                destroy: Script::new(include_str!("scripts/destroy.lua")),
            },
        }
    }

    /// The shared connection, or [`FayeError::Unavailable`] while Redis has
    /// not answered yet.
    fn conn(&self) -> Result<Conn, FayeError> {
        self.conn.borrow().clone().ok_or(FayeError::Unavailable {
            what: "faye's redis",
        })
    }

    /// Wait until Redis first answered; `false` if it never will (the
    /// connecting task was stopped first).
    async fn connected(&self) -> bool {
        self.conn.clone().wait_for(Option::is_some).await.is_ok()
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Pings older than this (ms since the epoch) mean "not alive":
    /// `now − 1600 × T` (T in seconds), faye-redis's `clientExists`.
    fn cutoff(&self, now: i64) -> i64 {
        now - (self.timeout.as_millis() as i64) * 8 / 5
    }

    /// Publish `message` (its channel checked by the caller) to every
    /// subscriber of every matching name or pattern. Returns how many
    /// engine clients it was queued for.
    pub async fn publish(&self, message: &Message) -> Result<usize, FayeError> {
        let json = serde_json::to_string(message).expect("a message serialises");
        let mut inv = self.scripts.publish.prepare_invoke();
        for c in channel::expand(&message.channel) {
            inv.key(self.keys.channel(&c));
        }
        let (head, tail) = self.keys.client_messages_parts();
        inv.arg(json)
            .arg(self.keys.clients())
            .arg(head)
            .arg(tail)
            .arg(self.keys.notify_messages())
            .arg(self.cutoff(now_ms()));
        let n: usize = inv.invoke_async(&mut self.conn()?).await?;
        Ok(n)
    }

    /// Register a client subscribed to `patterns`: a new one, or the
    /// `shared` one (joined if it exists); returns its id.
    async fn register(
        &self,
        patterns: &[String],
        shared: Option<&str>,
    ) -> Result<String, FayeError> {
        loop {
            let id = shared.map_or_else(client_id, str::to_owned);
            let mut inv = self.scripts.register.prepare_invoke();
            inv.key(self.keys.clients())
                .key(self.keys.client_channels(&id));
            for p in patterns {
                inv.key(self.keys.channel(p));
            }
            inv.arg(&id)
                .arg(now_ms())
                .arg(if shared.is_some() { "join" } else { "new" });
            for p in patterns {
                inv.arg(p);
            }
            let created: i64 = inv.invoke_async(&mut self.conn()?).await?;
            if created == 1 {
                return Ok(id);
            }
        }
    }

    /// Refresh `id`'s liveness; `false` if it is gone (or about to be).
    async fn ping(&self, id: &str) -> Result<bool, FayeError> {
        let now = now_ms();
        let alive: i64 = self
            .scripts
            .ping
            .key(self.keys.clients())
            .arg(id)
            .arg(now)
            .arg(self.cutoff(now))
            .invoke_async(&mut self.conn()?)
            .await?;
        Ok(alive == 1)
    }

    /// Take every message queued for `id`, atomically (one drainer wins).
    async fn drain(&self, id: &str) -> Result<Vec<String>, FayeError> {
        let queue = self.keys.client_messages(id);
        let (raw,): (Vec<String>,) = redis::pipe()
            .atomic()
            .lrange(&queue, 0, -1)
            .del(&queue)
            .ignore()
            .query_async(&mut self.conn()?)
            .await?;
        Ok(raw)
    }

    /// Destroy `id` as faye-redis does.
    async fn destroy(&self, id: &str, patterns: &[String]) -> Result<(), FayeError> {
        let mut inv = self.scripts.destroy.prepare_invoke();
        inv.key(self.keys.clients())
            .key(self.keys.client_channels(id))
            .key(self.keys.client_messages(id));
        for p in patterns {
            inv.key(self.keys.channel(p));
        }
        inv.arg(id).arg(self.keys.notify_close());
        for p in patterns {
            inv.arg(p);
        }
        let _: i64 = inv.invoke_async(&mut self.conn()?).await?;
        Ok(())
    }

    /// Keep a client subscribed to the feed's patterns until `stop`, then
    /// destroy it.
    pub(super) async fn subscribe(self, feed: Feed, stop: CancellationToken) {
        let mut sub = EngineSubscriber {
            engine: self,
            feed,
            id: None,
        };
        sub.run(&stop).await;
        // A shared client stays for the other processes of its group; once
        // none pings it, the Faye servers collect it.
        if let Some(id) = sub.id.take().filter(|_| sub.feed.shared.is_none()) {
            super::leave(&id, sub.engine.destroy(&id, &sub.feed.patterns)).await;
        }
    }
}

/// Connect to `target` until it answers (or `stop`), then hand the
/// connection to every engine sharing `tx`'s receiver.
async fn keep_connecting(target: Target, tx: watch::Sender<Option<Conn>>, stop: CancellationToken) {
    let mut retry = Retry::new("connect to faye's redis");
    loop {
        // Cancel-safety: a stop abandons a connection attempt; nothing else
        // is in flight, and publishes keep failing as before.
        let attempt = tokio::select! {
            _ = stop.cancelled() => {
                info!("stopped before faye's redis answered");
                return;
            }
            a = connect_once(&target) => a,
        };
        match attempt {
            Ok(conn) => {
                retry.succeeded();
                info!("connected to faye's redis");
                tx.send_replace(Some(conn));
                return;
            }
            Err(e) => {
                if !retry.pause(&FayeError::from(e), &stop).await {
                    info!("stopped before faye's redis answered");
                    return;
                }
            }
        }
    }
}

/// One attempt at the shared connection. A single plain connection goes
/// first: it fails at once when nothing listens, where the shared
/// connection's own retries would take some 15 s to give up, and our
/// backoff (with its one warning per streak) is the one that should pace
/// the attempts.
async fn connect_once(target: &Target) -> Result<Conn, redis::RedisError> {
    let probe = redis::AsyncConnectionConfig::new().set_connection_timeout(PROBE_TIMEOUT);
    drop(
        target
            .client()
            .await?
            .get_multiplexed_async_connection_with_config(&probe)
            .await?,
    );
    target.connect().await
}

/// The state of one subscribing engine client.
struct EngineSubscriber {
    engine: Engine,
    feed: Feed,
    /// Our registered client id, once registered.
    id: Option<String>,
}

impl EngineSubscriber {
    fn ping_every(&self) -> Duration {
        (self.engine.timeout / PING_DIVISOR).clamp(Duration::from_millis(50), PING_MAX)
    }

    /// Run until `stop`; leaves the registered id in `self.id` for the
    /// caller to destroy.
    async fn run(&mut self, stop: &CancellationToken) {
        // Cancel-safety: only the wait for Redis is raced; nothing is
        // registered yet.
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            c = self.engine.connected() => c,
        };
        if !connected {
            return;
        }
        let keys = self.engine.keys.clone();
        let mut retry = Retry::new("faye engine: listen and register");
        loop {
            // Cancel-safety: a stop only abandons the connection attempt;
            // our client, if registered, is destroyed by the caller.
            let connected = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.listen(&keys) => r,
            };
            // Listening before registering: no notification for the new id
            // can be missed; the drain below takes what came earlier.
            let ready = match connected {
                Ok(p) => self.ensure_registered().await.map(|()| p),
                Err(e) => Err(e),
            };
            let mut pubsub = match ready {
                Ok(p) => p,
                Err(e) => {
                    if !retry.pause(&e, stop).await {
                        return;
                    }
                    continue;
                }
            };
            retry.succeeded();
            self.drain().await;
            let mut messages = pubsub.on_message();
            let start = tokio::time::Instant::now();
            let mut ping = tokio::time::interval_at(start + self.ping_every(), self.ping_every());
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sweep = tokio::time::interval_at(start + DRAIN_EVERY, DRAIN_EVERY);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // Cancel-safety: every branch runs its work to completion
                // inside the branch body, never inside the raced futures: a
                // drain, once started, finishes and hands its messages on.
                // When stop wins, queued messages stay in Redis and are
                // dropped with our client by the destroy that follows.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    msg = messages.next() => {
                        let Some(msg) = msg else {
                            warn!("faye notifications: connection lost; reconnecting");
                            break;
                        };
                        let Ok(payload) = msg.get_payload::<String>() else { continue };
                        if Some(&payload) != self.id.as_ref() {
                            continue;
                        }
                        if msg.get_channel_name() == keys.notify_close() {
                            warn!(client = %payload, "faye engine client was destroyed (collected); registering anew, messages meanwhile are lost");
                            self.id = None;
                            if let Err(e) = self.ensure_registered().await {
                                warn!(error = %e, "faye engine: cannot register");
                            }
                        }
                        self.drain().await;
                    }
                    _ = ping.tick() => {
                        if let Err(e) = self.ensure_registered().await {
                            warn!(error = %e, "faye engine: ping failed");
                        }
                    }
                    _ = sweep.tick() => self.drain().await,
                }
            }
        }
    }

    /// A pub/sub connection subscribed to both notification channels.
    async fn listen(&self, keys: &Keys) -> Result<redis::aio::PubSub, FayeError> {
        let mut pubsub = self
            .engine
            .target
            .client()
            .await?
            .get_async_pubsub()
            .await?;
        pubsub
            .subscribe(&[keys.notify_messages(), keys.notify_close()])
            .await?;
        Ok(pubsub)
    }

    /// Ping our client, or register a new one if there is none or it was
    /// collected.
    async fn ensure_registered(&mut self) -> Result<(), FayeError> {
        if let Some(id) = &self.id
            && self.engine.ping(id).await?
        {
            return Ok(());
        }
        if let Some(old) = self.id.take() {
            warn!(client = %old, "faye engine client is gone or stale; registering anew, messages meanwhile are lost");
        }
        let id = self
            .engine
            .register(&self.feed.patterns, self.feed.shared.as_deref())
            .await?;
        info!(client = %id, "faye engine client registered");
        self.feed.client(&id);
        self.id = Some(id);
        Ok(())
    }

    /// Take our queue and hand each message on.
    async fn drain(&self) {
        let Some(id) = &self.id else { return };
        let raw = match self.engine.drain(id).await {
            Ok(raw) => raw,
            Err(e) => {
                warn!(error = %e, "faye engine: cannot drain the queue");
                return;
            }
        };
        for json in raw {
            match serde_json::from_str::<Message>(&json) {
                Ok(m) => self.feed.deliver(m),
                Err(e) => warn!(error = %e, "unreadable message in our faye queue; ignored"),
            }
        }
    }
}
