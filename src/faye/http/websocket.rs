//! Faye's `websocket` connection type: a whole Bayeux session on one socket.
//!
//! The socket is opened on the mount's path (`ws://` for the configured
//! `http://` URL, no subprotocol). Each frame we send is a JSON array of
//! messages; the server answers each frame with one array frame and pushes
//! every delivered message as a one-element array frame. Faye accepts the
//! handshake and the subscriptions over the socket, but binds the socket to
//! our client id only when a `/meta/connect` carrying it arrives: until
//! then, what is published for us waits in the engine. So the first connect
//! goes out as soon as the subscriptions are in; after that one connect is
//! outstanding at a time, held by the server up to its timeout, and the next
//! one follows its reply after `advice.interval`.
//!
//! A socket that breaks (closed, unreadable, or silent past the held
//! connect's deadline) is replaced by a new one, bound again by a connect
//! with the same client id, on which the server then delivers what was
//! queued meanwhile; a client the server forgot answers that connect with
//! `401` / advice `handshake`, and the session ends for a new one.
//! Publishing and the goodbye `/meta/disconnect` stay on HTTP POST.
//! Reference: faye.md §3.1–3.2.

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message as Frame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Bayeux, End, Next, REQUEST_TIMEOUT, Session, connect_limit, next_step};
use crate::faye::message::{Reply, Request, WEBSOCKET, message_id};
use crate::faye::retry::Retry;
use crate::faye::{FayeError, Feed};

/// A WebSocket to a Faye mount.
pub(super) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The socket URL of the Faye mount at `url` (`http://` → `ws://`; the
/// settings allow only `http://`).
fn socket_url(url: &str) -> String {
    match url.strip_prefix("http") {
        Some(rest) => format!("ws{rest}"),
        None => url.to_owned(),
    }
}

fn failed(url: &str, source: tungstenite::Error) -> FayeError {
    FayeError::WebSocket {
        url: socket_url(url),
        source,
    }
}

fn timed_out(url: &str) -> FayeError {
    failed(
        url,
        tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into()),
    )
}

/// Open a socket to the Faye mount at `url`.
pub(super) async fn open(url: &str) -> Result<Socket, FayeError> {
    let opening = tokio_tungstenite::connect_async(socket_url(url));
    match tokio::time::timeout(REQUEST_TIMEOUT, opening).await {
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(source)) => Err(failed(url, source)),
        Err(_) => Err(timed_out(url)),
    }
}

/// Send `requests` as one array frame.
async fn send(socket: &mut Socket, url: &str, requests: &[&Request<'_>]) -> Result<(), FayeError> {
    let text = serde_json::to_string(requests).expect("requests serialise");
    socket
        .send(Frame::text(text))
        .await
        .map_err(|source| failed(url, source))
}

/// The next array frame's messages. Pings are answered by the socket
/// itself; an unreadable frame is logged and skipped. Cancel-safe: a frame
/// is taken off the socket only in the poll that returns it.
async fn next_batch(socket: &mut Socket, url: &str) -> Result<Vec<Reply>, FayeError> {
    loop {
        let text = match socket.next().await {
            Some(Ok(Frame::Text(text))) => text,
            Some(Ok(Frame::Close(_))) | None => {
                return Err(failed(url, tungstenite::Error::ConnectionClosed));
            }
            Some(Ok(_)) => continue,
            Some(Err(source)) => return Err(failed(url, source)),
        };
        match serde_json::from_str::<Vec<Reply>>(text.as_str()) {
            Ok(replies) => return Ok(replies),
            Err(e) => warn!(error = %e, "faye websocket: unreadable frame; ignored"),
        }
    }
}

/// Send `requests` and wait for a reply to each; returns everything the
/// server sent meanwhile. Used before the socket is bound to a client id,
/// so nothing but replies is expected.
pub(super) async fn exchange(
    socket: &mut Socket,
    url: &str,
    requests: &[&Request<'_>],
) -> Result<Vec<Reply>, FayeError> {
    send(socket, url, requests).await?;
    let mut waiting: Vec<&str> = requests.iter().map(|r| r.id()).collect();
    let collect = async {
        let mut replies = Vec::new();
        while !waiting.is_empty() {
            for reply in next_batch(socket, url).await? {
                waiting.retain(|id| !reply.answers(id));
                replies.push(reply);
            }
        }
        Ok(replies)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, collect)
        .await
        .unwrap_or_else(|_| Err(timed_out(url)))
}

impl Bayeux {
    /// Run a session that began on a socket until it ends: deliver what the
    /// server pushes, keep one `/meta/connect` outstanding, and replace the
    /// socket when it breaks.
    pub(super) async fn socket_session(
        &self,
        session: Session,
        feed: &Feed,
        stop: &CancellationToken,
    ) -> End {
        let Session {
            client,
            mut advice,
            mut socket,
            ..
        } = session;
        let mut retry = Retry::new("faye websocket and connect");
        // The outstanding connect: its id, and when we stop waiting for its
        // reply and take the socket for dead.
        let mut pending: Option<(String, Instant)> = None;
        let mut next_connect = Instant::now();
        loop {
            let Some(ws) = socket.as_mut() else {
                // Cancel-safety: an open cut short is dropped with its
                // connection; nothing was received on it.
                let opened = tokio::select! {
                    _ = stop.cancelled() => return End::Stop(Some(client)),
                    r = open(&self.url) => r,
                };
                match opened {
                    Ok(s) => {
                        debug!(client, "faye websocket reopened; binding it with a connect");
                        socket = Some(s);
                        pending = None;
                        next_connect = Instant::now();
                    }
                    Err(e) => {
                        if !retry.pause(&e, stop).await {
                            return End::Stop(Some(client));
                        }
                    }
                }
                continue;
            };
            let reply_by = pending.as_ref().map(|(_, by)| *by);
            // Cancel-safety: `next_batch` takes a frame off the socket only
            // when it completes, so losing the race to a timer or to stop
            // drops nothing; a connect, once started, is sent to completion
            // in its branch. When stop wins, messages still in flight to us
            // are lost (at-most-once) and the disconnect follows.
            let broken = tokio::select! {
                _ = stop.cancelled() => return End::Stop(Some(client)),
                batch = next_batch(ws, &self.url) => match batch {
                    Ok(replies) => {
                        let mut end = None;
                        for reply in replies {
                            if pending.as_ref().is_some_and(|(id, _)| reply.answers(id)) {
                                pending = None;
                                match next_step(&reply, &mut advice, &client) {
                                    Next::Again(wait) => {
                                        retry.succeeded();
                                        next_connect = Instant::now() + wait.unwrap_or_default();
                                    }
                                    Next::Retry(e) => next_connect = Instant::now() + retry.failed(&e),
                                    Next::End(e) => end = Some(e),
                                }
                            } else if let Some(m) = reply.into_message() {
                                feed.deliver(m);
                            }
                        }
                        if let Some(end) = end {
                            return end;
                        }
                        None
                    }
                    Err(e) => Some(e),
                },
                _ = tokio::time::sleep_until(next_connect), if pending.is_none() => {
                    let id = message_id();
                    let hold = advice.hold(self.timeout);
                    let connect = Request::Connect {
                        client_id: &client,
                        connection_type: WEBSOCKET,
                        id: id.clone(),
                        ext: self.ext.as_ref(),
                    };
                    pending = Some((id, Instant::now() + connect_limit(hold)));
                    send(ws, &self.url, &[&connect]).await.err()
                }
                _ = tokio::time::sleep_until(reply_by.unwrap_or_else(Instant::now)), if reply_by.is_some() => {
                    Some(timed_out(&self.url))
                }
            };
            if let Some(e) = broken {
                socket = None;
                if !retry.pause(&e, stop).await {
                    return End::Stop(Some(client));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_url_is_the_mount_over_ws() {
        assert_eq!(
            socket_url("http://127.0.0.1:8080/faye"),
            "ws://127.0.0.1:8080/faye"
        );
    }
}
