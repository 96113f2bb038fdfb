//! A Bayeux client over HTTP, for Faye servers we reach by URL (their engine
//! may be anything, and their server extensions see every message we send).
//!
//! Publishing is one anonymous POST: Faye accepts a publish without a
//! handshake. Subscribing is a session: handshake, one `/meta/subscribe` per
//! pattern, then messages either pushed down an event stream (`GET
//! <mount>/<clientId>`, Faye's `eventsource` connection type) while
//! `/meta/connect`s, answered at once, keep the client alive; or pushed as
//! frames on a WebSocket (`websocket`, where the whole session runs on
//! the socket); or in the replies to `/meta/connect` long polls. Each way
//! one connect is outstanding at a time (a second for the same client id would leave the
//! first unanswered forever). A `401`, or advice `reconnect: "handshake"`,
//! starts a new session and subscribes again; advice `"none"` stops. The
//! configured `ext` goes on every message. Replies are matched by id **and**
//! `successful`. Reference: faye.md §3.
//!
//! Why the event stream first: faye-redis drains a client's queue when a
//! notification arrives while the client has a connection on the server,
//! and delivers asynchronously; a long poll answered in between (by an
//! earlier message) closes that connection, and the drained messages are
//! dropped. Under bursts that loses messages (seen: 19 of 200). A stream
//! keeps the connection for as long as it is open.

use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::message::{
    Advice, BAYEUX_VERSION, EVENTSOURCE, LONG_POLLING, Message, Reconnect, Reply, Request,
    WEBSOCKET, message_id,
};
use super::retry::{REFUSED_MAX, Retry, sleep_or_stop};
use super::{FayeError, Feed};

/// Limit of a request that the server answers at once (publish, handshake,
/// subscribe, disconnect).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A held connect may take the server's timeout plus this (the Faye client
/// allows 1.2 × the timeout; a fixed margin also covers small timeouts).
const CONNECT_MARGIN: Duration = Duration::from_secs(5);

mod websocket;

/// How a Faye server sends us messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// Pushed down a `text/event-stream`, if the server offers it (Faye
    /// does); otherwise long-polling.
    EventSource,
    /// In the replies to long polls.
    LongPolling,
    /// Pushed as frames on a WebSocket (`ws://` to the mount), which also
    /// carries the handshake, the subscriptions and the connects.
    WebSocket,
}

/// A Faye server reached over HTTP.
#[derive(Debug, Clone)]
pub struct Bayeux {
    http: reqwest::Client,
    url: String,
    connection: Connection,
    ext: Option<Value>,
    /// The hold we assume until the server's advice says otherwise: the
    /// configured timeout.
    timeout: Duration,
}

impl Bayeux {
    /// A client of the Faye mount at `url` (e.g. `http://host:8080/faye`),
    /// sending `ext` on every message.
    pub fn new(
        url: &str,
        connection: Connection,
        ext: Option<Value>,
        timeout: Duration,
    ) -> Result<Bayeux, FayeError> {
        let http = crate::plugin::http::client_builder()
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|source| FayeError::Http {
                url: url.to_owned(),
                source,
            })?;
        Ok(Bayeux {
            http,
            url: url.to_owned(),
            connection,
            ext,
            timeout,
        })
    }

    /// POST `body` (a message or an array of them); the reply array.
    async fn post(
        &self,
        body: &impl Serialize,
        timeout: Duration,
    ) -> Result<Vec<Reply>, FayeError> {
        let body = serde_json::to_string(body).expect("requests serialise");
        let http_err = |source| FayeError::Http {
            url: self.url.clone(),
            source,
        };
        let response = self
            .http
            .post(&self.url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(http_err)?;
        let status = response.status();
        let text = response.text().await.map_err(http_err)?;
        if !status.is_success() {
            return Err(FayeError::Status {
                url: self.url.clone(),
                status: status.as_u16(),
                body: text.chars().take(200).collect(),
            });
        }
        serde_json::from_str(&text).map_err(|e| FayeError::Protocol {
            url: self.url.clone(),
            detail: format!("not a JSON array of messages ({e})"),
        })
    }

    /// The reply answering request `id` in `replies`, or a protocol error.
    fn reply_to(&self, replies: &[Reply], id: &str) -> Result<Reply, FayeError> {
        replies
            .iter()
            .find(|r| r.answers(id))
            .cloned()
            .ok_or_else(|| FayeError::Protocol {
                url: self.url.clone(),
                detail: format!("no reply to request {id}"),
            })
    }

    fn refused(channel: &str, reply: &Reply, default: Reconnect) -> FayeError {
        FayeError::Refused {
            channel: channel.to_owned(),
            error: reply
                .error
                .clone()
                .unwrap_or_else(|| "no reason given".into()),
            reconnect: reply
                .advice
                .as_ref()
                .map_or(default, |a| a.reconnect(default)),
        }
    }

    /// Publish `message` (channel checked by the caller) and wait for the
    /// server's acknowledgement.
    pub async fn publish(&self, message: &Message) -> Result<(), FayeError> {
        let mut message = message.clone();
        if message.ext.is_none() {
            message.ext = self.ext.clone();
        }
        let id = message.id.clone().unwrap_or_else(message_id);
        message.id = Some(id.clone());
        let replies = self.post(&[&message], REQUEST_TIMEOUT).await?;
        let reply = self.reply_to(&replies, &id)?;
        if reply.successful == Some(true) {
            Ok(())
        } else {
            Err(Bayeux::refused(&message.channel, &reply, Reconnect::Retry))
        }
    }

    /// Send `requests` as one batch, over `socket` if the session has one,
    /// else POSTed; the replies.
    async fn exchange(
        &self,
        socket: &mut Option<websocket::Socket>,
        requests: &[&Request<'_>],
    ) -> Result<Vec<Reply>, FayeError> {
        match socket {
            None => self.post(&requests, REQUEST_TIMEOUT).await,
            Some(socket) => websocket::exchange(socket, &self.url, requests).await,
        }
    }

    /// Handshake and subscribe to every pattern: a new session.
    async fn start_session(&self, patterns: &[String]) -> Result<Session, FayeError> {
        let id = message_id();
        // With a WebSocket, the whole session runs on it.
        let (offered, mut socket): (&[&str], _) = match self.connection {
            Connection::EventSource => (&[EVENTSOURCE, LONG_POLLING], None),
            Connection::LongPolling => (&[LONG_POLLING], None),
            Connection::WebSocket => (&[WEBSOCKET], Some(websocket::open(&self.url).await?)),
        };
        let replies = self
            .exchange(
                &mut socket,
                &[&Request::Handshake {
                    version: BAYEUX_VERSION,
                    supported_connection_types: offered,
                    id: id.clone(),
                    ext: self.ext.as_ref(),
                }],
            )
            .await?;
        let reply = self.reply_to(&replies, &id)?;
        let (Some(true), Some(client)) = (reply.successful, reply.client_id.clone()) else {
            return Err(Bayeux::refused("/meta/handshake", &reply, Reconnect::Retry));
        };
        let push = self.connection == Connection::EventSource
            && reply
                .supported_connection_types
                .iter()
                .flatten()
                .any(|t| t == EVENTSOURCE);
        let advice = reply.advice.unwrap_or_default();
        // One subscribe message per pattern: with an array subscription the
        // server stops at the first refused one, leaving it unclear which
        // were taken.
        let requests: Vec<(String, Request)> = patterns
            .iter()
            .map(|p| {
                let id = message_id();
                (
                    id.clone(),
                    Request::Subscribe {
                        client_id: &client,
                        subscription: p,
                        id,
                        ext: self.ext.as_ref(),
                    },
                )
            })
            .collect();
        let body: Vec<&Request> = requests.iter().map(|(_, r)| r).collect();
        let replies = self.exchange(&mut socket, &body).await?;
        for ((id, _), pattern) in requests.iter().zip(patterns) {
            let reply = self.reply_to(&replies, id)?;
            if reply.successful != Some(true) {
                // The next attempt handshakes anew: this client id, with
                // whatever subscriptions it got, would only wait for the
                // server's collection.
                if let Err(e) = self.disconnect(&client).await {
                    tracing::debug!(client, error = %e, "cannot disconnect a refused client; the server collects it");
                }
                return Err(FayeError::SubscriptionRefused {
                    pattern: pattern.clone(),
                    error: reply.error.unwrap_or_else(|| "no reason given".into()),
                });
            }
        }
        Ok(Session {
            client,
            advice,
            push,
            socket,
        })
    }

    /// One `/meta/connect`: its reply and the messages delivered with it.
    /// A long poll is held by the server up to `hold`; with an event stream
    /// the server answers at once.
    async fn connect(
        &self,
        client: &str,
        connection_type: &str,
        hold: Duration,
    ) -> Result<(Reply, Vec<Message>), FayeError> {
        let id = message_id();
        let replies = self
            .post(
                &[Request::Connect {
                    client_id: client,
                    connection_type,
                    id: id.clone(),
                    ext: self.ext.as_ref(),
                }],
                connect_limit(hold),
            )
            .await?;
        let reply = self.reply_to(&replies, &id)?;
        let messages = replies
            .into_iter()
            .filter(|r| !r.answers(&id))
            .filter_map(Reply::into_message)
            .collect();
        Ok((reply, messages))
    }

    async fn disconnect(&self, client: &str) -> Result<(), FayeError> {
        let id = message_id();
        self.post(
            &[Request::Disconnect {
                client_id: client,
                id,
                ext: self.ext.as_ref(),
            }],
            super::LEAVE_TIMEOUT,
        )
        .await
        .map(|_| ())
    }

    /// Keep a session subscribed to the feed's patterns until `stop` (or
    /// advice `none`), then disconnect.
    pub(super) async fn subscribe(self, feed: Feed, stop: CancellationToken) {
        if let Some(client) = self.session_loop(&feed, &stop).await {
            super::leave(&client, self.disconnect(&client)).await;
        }
    }

    /// Returns the client id to disconnect, if any.
    async fn session_loop(&self, feed: &Feed, stop: &CancellationToken) -> Option<String> {
        let mut retry = Retry::new("faye handshake and subscribe");
        loop {
            // Cancel-safety: a handshake or subscribe cut short leaves at
            // most a client id the server collects after its timeout.
            let started = tokio::select! {
                _ = stop.cancelled() => return None,
                r = self.start_session(&feed.patterns) => r,
            };
            let session = match started {
                Ok(s) => s,
                Err(FayeError::Refused {
                    reconnect: Reconnect::None,
                    error: e,
                    ..
                }) => {
                    error!(error = %e, "faye server advised reconnect none; the subscription stops");
                    return None;
                }
                Err(e) => {
                    // A refusal (a server extension said no) is a policy
                    // that stays until the server is redeployed: ask seldom.
                    let wait = match e {
                        FayeError::Refused { .. } | FayeError::SubscriptionRefused { .. } => {
                            retry.failed_with_max(&e, REFUSED_MAX)
                        }
                        _ => retry.failed(&e),
                    };
                    if !sleep_or_stop(stop, wait).await {
                        return None;
                    }
                    continue;
                }
            };
            retry.succeeded();
            info!(client = %session.client, push = session.push,
                websocket = session.socket.is_some(), "faye client subscribed");
            feed.client(&session.client);
            let end = if session.socket.is_some() {
                self.socket_session(session, feed, stop).await
            } else if session.push {
                self.push_session(session, feed, stop).await
            } else {
                self.poll_session(session, feed, stop).await
            };
            match end {
                End::Handshake => {}
                End::Stop(client) => return client,
            }
        }
    }

    /// Long-polling: one `/meta/connect` held by the server at a time; its
    /// reply brings the messages.
    async fn poll_session(&self, session: Session, feed: &Feed, stop: &CancellationToken) -> End {
        let Session {
            client, mut advice, ..
        } = session;
        let mut retry = Retry::new("faye long-poll connect");
        loop {
            // Cancel-safety: a connect cut short by stop is dropped with its
            // HTTP connection; the server then forgets the held poll, and
            // anything it was about to deliver is lost (Faye is
            // at-most-once). The disconnect follows.
            let polled = tokio::select! {
                _ = stop.cancelled() => return End::Stop(Some(client)),
                r = self.connect(&client, LONG_POLLING, advice.hold(self.timeout)) => r,
            };
            let wait = match polled {
                Ok((reply, messages)) => {
                    messages.into_iter().for_each(|m| feed.deliver(m));
                    match next_step(&reply, &mut advice, &client) {
                        Next::Again(wait) => {
                            retry.succeeded();
                            wait
                        }
                        Next::Retry(error) => Some(retry.failed(&error)),
                        Next::End(end) => return end,
                    }
                }
                Err(e) if unknown_client(&e, &client) => return End::Handshake,
                Err(e) => Some(retry.failed(&e)),
            };
            if let Some(wait) = wait
                && !sleep_or_stop(stop, wait).await
            {
                return End::Stop(Some(client));
            }
        }
    }

    /// EventSource: the server pushes messages down a long-lived
    /// `text/event-stream` GET as soon as they are queued, and `/meta/connect`
    /// (answered at once) only keeps the client alive every
    /// `advice.interval`. The stream keeps the server's connection object
    /// for our client open, so no message can arrive between two polls and
    /// be dropped, which long-polling against faye-redis does under bursts.
    async fn push_session(&self, session: Session, feed: &Feed, stop: &CancellationToken) -> End {
        let Session {
            client, mut advice, ..
        } = session;
        let mut retry = Retry::new("faye event stream and connect");
        let mut stream: Option<reqwest::Response> = None;
        let mut events = EventStream::default();
        let mut next_connect = Instant::now();
        loop {
            if stream.is_none() {
                // Cancel-safety: an open cut short is dropped with its
                // connection; nothing was received on it.
                let opened = tokio::select! {
                    _ = stop.cancelled() => return End::Stop(Some(client)),
                    r = self.open_stream(&client) => r,
                };
                match opened {
                    Ok(r) => {
                        stream = Some(r);
                        events = EventStream::default();
                        // A connect now makes the server drain what was
                        // queued for us into the new stream.
                        next_connect = Instant::now();
                    }
                    Err(e) => {
                        // No connect meanwhile: a connect without our
                        // stream lets the server drain our queue into a
                        // poll it has already answered (the messages are
                        // lost). An unknown client id still gets a stream;
                        // its first connect then says 401.
                        if !retry.pause(&e, stop).await {
                            return End::Stop(Some(client));
                        }
                        continue;
                    }
                }
            }
            // Cancel-safety: `chunk` takes bytes off the stream only when it
            // completes, so losing the race to the timer or to stop drops
            // nothing; the connect runs to completion in its branch. When
            // stop wins, messages still in flight to us are lost
            // (at-most-once) and the disconnect follows.
            tokio::select! {
                _ = stop.cancelled() => return End::Stop(Some(client)),
                chunk = async { stream.as_mut().expect("opened above").chunk().await } => match chunk.map_err(|source| FayeError::Http { url: self.url.clone(), source }) {
                    Ok(Some(bytes)) => {
                        for batch in events.feed(&bytes) {
                            match serde_json::from_str::<Vec<Reply>>(&batch) {
                                Ok(replies) => replies
                                    .into_iter()
                                    .filter_map(Reply::into_message)
                                    .for_each(|m| feed.deliver(m)),
                                Err(e) => warn!(client, error = %e, "faye event stream: unreadable event; ignored"),
                            }
                        }
                    }
                    ended => {
                        stream = None;
                        let closed = ended.err().unwrap_or_else(|| FayeError::Protocol {
                            url: self.url.clone(),
                            detail: "the event stream closed".into(),
                        });
                        if !retry.pause(&closed, stop).await {
                            return End::Stop(Some(client));
                        }
                    }
                },
                _ = tokio::time::sleep_until(next_connect) => {
                    let wait = match self.connect(&client, EVENTSOURCE, Duration::ZERO).await {
                        Ok((reply, messages)) => {
                            messages.into_iter().for_each(|m| feed.deliver(m));
                            match next_step(&reply, &mut advice, &client) {
                                // With an event stream the server advises
                                // waiting its whole timeout between connects;
                                // a third of it (or of ours, if smaller) keeps
                                // us well inside its 1.6 × timeout liveness
                                // window.
                                Next::Again(interval) => {
                                    retry.succeeded();
                                    interval.unwrap_or(self.timeout).min(self.timeout) / 3
                                }
                                Next::Retry(error) => retry.failed(&error),
                                Next::End(end) => return end,
                            }
                        }
                        Err(e) if unknown_client(&e, &client) => return End::Handshake,
                        Err(e) => retry.failed(&e),
                    };
                    next_connect = Instant::now() + wait;
                }
            }
        }
    }

    /// Open the event stream of `client`.
    async fn open_stream(&self, client: &str) -> Result<reqwest::Response, FayeError> {
        let url = format!("{}/{client}", self.url.trim_end_matches('/'));
        let response = self
            .http
            .get(&url)
            .header(ACCEPT, HeaderValue::from_static("text/event-stream"))
            .send()
            .await
            .map_err(|source| FayeError::Http {
                url: url.clone(),
                source,
            })?;
        if !response.status().is_success() {
            return Err(FayeError::Status {
                url,
                status: response.status().as_u16(),
                body: String::new(),
            });
        }
        Ok(response)
    }
}

/// A session: our client id, the handshake's advice, and how the server
/// pushes: over an event stream, or on the socket the session began on.
struct Session {
    client: String,
    advice: Advice,
    push: bool,
    socket: Option<websocket::Socket>,
}

/// Why a session ended.
enum End {
    /// Handshake again (and subscribe again).
    Handshake,
    /// Stop; disconnect this client id, if any.
    Stop(Option<String>),
}

/// What to do after a connect reply.
enum Next {
    /// Connect again, after this wait (none: at once).
    Again(Option<Duration>),
    /// Connect again after the backoff delay: the server refused the
    /// connect, but did not ask for a new handshake.
    Retry(FayeError),
    /// The session ends.
    End(End),
}

/// How long to wait for the reply to a connect the server holds up to
/// `hold`.
fn connect_limit(hold: Duration) -> Duration {
    hold + hold / 5 + CONNECT_MARGIN
}

/// Apply a connect reply's advice and say what comes next.
fn next_step(reply: &Reply, advice: &mut Advice, client: &str) -> Next {
    if let Some(a) = &reply.advice {
        *advice = Advice {
            reconnect: a.reconnect.clone().or(advice.reconnect.take()),
            interval: a.interval.or(advice.interval),
            timeout: a.timeout.or(advice.timeout),
        };
    }
    let ok = reply.successful == Some(true);
    match advice.reconnect(if ok {
        Reconnect::Retry
    } else {
        Reconnect::Handshake
    }) {
        Reconnect::None => {
            error!(
                client,
                "faye server advised reconnect none; the subscription stops"
            );
            Next::End(End::Stop(None))
        }
        Reconnect::Handshake => {
            warn!(client, error = ?reply.error, "faye server asks for a new handshake (unknown client?); subscribing again, messages meanwhile are lost");
            Next::End(End::Handshake)
        }
        Reconnect::Retry if !ok => {
            Next::Retry(Bayeux::refused("/meta/connect", reply, Reconnect::Retry))
        }
        Reconnect::Retry => Next::Again(advice.interval()),
    }
}

/// Whether a connect that got no reply failed with HTTP 401 (the server
/// forgot the client: handshake again); anything else is retried with the
/// same client id.
fn unknown_client(e: &FayeError, client: &str) -> bool {
    let unknown = matches!(e, FayeError::Status { status: 401, .. });
    if unknown {
        warn!(client, "faye server: HTTP 401; handshaking again");
    }
    unknown
}

/// Splits a `text/event-stream` body into the `data` of its events.
#[derive(Debug, Default)]
struct EventStream {
    /// Bytes of an incomplete line.
    line: Vec<u8>,
    /// `data` lines of the event being read.
    data: Vec<String>,
}

impl EventStream {
    /// Feed `bytes`; returns the data of every event they complete.
    fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(std::mem::take(&mut self.data).join("\n"));
                }
            } else if let Some(rest) = line.strip_prefix("data:") {
                self.data
                    .push(rest.strip_prefix(' ').unwrap_or(rest).to_owned());
            }
            // Comments (`:` pings), `retry:`, `event:` and `id:` carry
            // nothing we use.
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{Advice, End, EventStream, Next, Reply, next_step};
    use std::time::Duration;

    fn step(reply: &str, advice: &mut Advice) -> Next {
        next_step(&serde_json::from_str::<Reply>(reply).unwrap(), advice, "c")
    }

    #[test]
    fn connect_replies_say_what_comes_next() {
        let mut advice = Advice::default();
        let ok = r#"{"channel":"/meta/connect","successful":true,"id":"1","advice":{"reconnect":"retry","interval":250,"timeout":2000}}"#;
        assert!(
            matches!(step(ok, &mut advice), Next::Again(Some(d)) if d == Duration::from_millis(250))
        );
        assert_eq!(advice.hold(Duration::ZERO), Duration::from_secs(2));
        // Advice carries over when a later reply has none.
        let bare = r#"{"channel":"/meta/connect","successful":true,"id":"2"}"#;
        assert!(matches!(step(bare, &mut advice), Next::Again(Some(_))));
        let unknown = r#"{"channel":"/meta/connect","successful":false,"error":"401:c:Unknown client","advice":{"reconnect":"handshake"},"id":"3"}"#;
        assert!(matches!(
            step(unknown, &mut advice),
            Next::End(End::Handshake)
        ));
        let none = r#"{"channel":"/meta/connect","successful":true,"advice":{"reconnect":"none"},"id":"4"}"#;
        assert!(matches!(
            step(none, &mut Advice::default()),
            Next::End(End::Stop(None))
        ));
        let refused = r#"{"channel":"/meta/connect","successful":false,"error":"no","id":"5"}"#;
        assert!(matches!(
            step(refused, &mut Advice::default()),
            Next::End(End::Handshake)
        ));
        let retry = r#"{"channel":"/meta/connect","successful":false,"error":"busy","advice":{"reconnect":"retry"},"id":"6"}"#;
        assert!(
            matches!(step(retry, &mut Advice::default()), Next::Retry(e) if e.to_string().ends_with(": busy"))
        );
    }

    #[test]
    fn event_stream_splits_events_across_chunks() {
        let mut es = EventStream::default();
        assert!(
            es.feed(b"retry: 5000\r\n\r\n:\r\n\r\ndata: [{\"a\"")
                .is_empty()
        );
        assert_eq!(
            es.feed(b":1}]\r\n\r\ndata: [2]\n\n"),
            ["[{\"a\":1}]", "[2]"]
        );
        assert_eq!(es.feed(b"data: x\r\ndata: y\r\n\r\n"), ["x\ny"]);
    }
}
