//! The bridge between Faye and the job queues: subscribe rules that turn
//! messages into jobs, and job events published as jobs start and finish.
//!
//! A rule's job is enqueued through the worker's ordinary enqueue path
//! ([`Services::enqueue`], class locks included). Over the redis transport
//! the processes with the same rules share one engine client
//! ([`super::Faye::subscribe_shared`]), so a fleet enqueues one job per
//! message; over HTTP each process is its own client and gets every message.
//!
//! Job events go through a bounded buffer to one publishing task, so a job
//! never waits for Faye; when Faye is slower than the jobs for long enough
//! to fill it, events are dropped (and counted in the log).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use super::settings::{ArgsFrom, Events, Rule};
use super::{Faye, FayeError, Message, channel};
use crate::handler::Services;

/// Job events waiting to be published, at most.
const EVENT_BUFFER: usize = 10_000;
/// At shutdown, events still buffered are published for at most this long.
const EVENT_FLUSH: Duration = Duration::from_secs(2);
/// A failed enqueue (Redis away) is retried with backoff this long before
/// the message is given up (Faye itself is at-most-once).
const ENQUEUE_RETRY_FOR: Duration = Duration::from_secs(60);

/// What happened to a job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent<'a> {
    /// Its handler starts.
    Started,
    /// Its handler returned success after `duration`.
    Succeeded {
        /// How long the handler ran.
        duration: Duration,
    },
    /// Its handler failed after `duration`.
    Failed {
        /// How long the handler ran.
        duration: Duration,
        /// The failure's exception name.
        exception: &'a str,
        /// The failure's message.
        error: &'a str,
    },
}

impl JobEvent<'_> {
    /// The event's `data`:
    /// `{"event":"failed","class","queue","worker","at":<ms>,"duration_ms","exception","error"}`.
    fn data(&self, class: &str, queue: &str, worker: &str) -> Value {
        let mut v = json!({
            "event": "started",
            "class": class,
            "queue": queue,
            "worker": worker,
            "at": chrono::Utc::now().timestamp_millis(),
        });
        let ms = |d: &Duration| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
        match self {
            JobEvent::Started => {}
            JobEvent::Succeeded { duration } => {
                v["event"] = json!("succeeded");
                v["duration_ms"] = json!(ms(duration));
            }
            JobEvent::Failed {
                duration,
                exception,
                error,
            } => {
                v["event"] = json!("failed");
                v["duration_ms"] = json!(ms(duration));
                v["exception"] = json!(exception);
                v["error"] = json!(error);
            }
        }
        v
    }
}

/// The buffer between jobs and the event publisher.
#[derive(Debug)]
pub(super) struct EventSink {
    settings: Events,
    tx: mpsc::Sender<Value>,
    rx: Mutex<Option<mpsc::Receiver<Value>>>,
    dropped: AtomicU64,
}

impl EventSink {
    pub(super) fn new(settings: Events) -> EventSink {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        EventSink {
            settings,
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
        }
    }
}

impl Faye {
    /// Whether events of jobs of `class` are published.
    pub fn wants_job_events(&self, class: &str) -> bool {
        self.inner.events.as_ref().is_some_and(|s| {
            s.settings
                .classes
                .iter()
                .any(|p| crate::glob::fnmatch(p, class))
        })
    }

    /// Queue a job event for publishing; never waits.
    pub fn job_event(&self, event: JobEvent<'_>, class: &str, queue: &str, worker: &str) {
        let Some(sink) = &self.inner.events else {
            return;
        };
        if sink.tx.try_send(event.data(class, queue, worker)).is_err() {
            let n = sink.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n == 1 || n.is_multiple_of(1000) {
                warn!(
                    dropped = n,
                    "faye job events dropped: the publisher cannot keep up"
                );
            }
        }
    }

    /// Start the task publishing job events, if they are configured; it
    /// runs until `stop`, then publishes what is buffered for at most
    /// two seconds.
    pub fn spawn_events(&self, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        let sink = self.inner.events.as_ref()?;
        let mut rx = sink.rx.lock().expect("events lock").take()?;
        let channel = sink.settings.channel.clone();
        let faye = self.clone();
        let span = tracing::info_span!("faye_events", channel = %channel);
        Some(tokio::spawn(
            async move {
                let mut failed = FailedEvents::default();
                loop {
                    // Cancel-safety: recv loses nothing when stop wins; the
                    // events still buffered are flushed below.
                    let data = tokio::select! {
                        _ = stop.cancelled() => break,
                        d = rx.recv() => match d { Some(d) => d, None => return },
                    };
                    failed.record(faye.publish(&channel, data).await);
                }
                let flush = async {
                    while let Ok(data) = rx.try_recv() {
                        failed.record(faye.publish(&channel, data).await);
                    }
                };
                if tokio::time::timeout(EVENT_FLUSH, flush).await.is_err() {
                    warn!("job events still buffered at shutdown were dropped");
                }
                info!(
                    dropped = faye
                        .inner
                        .events
                        .as_ref()
                        .map_or(0, |s| s.dropped.load(Ordering::Relaxed)),
                    "faye job events stopped"
                );
            }
            .instrument(span),
        ))
    }
}

/// Counts the job events lost to failed publishes (Faye away): the first
/// of a streak and every 1000th are logged at warn, the end at info, so a
/// long outage does not log once per job.
#[derive(Debug, Default)]
struct FailedEvents {
    /// Events dropped since publishing last worked.
    streak: u64,
}

impl FailedEvents {
    fn record(&mut self, sent: Result<(), FayeError>) {
        match sent {
            Ok(()) => {
                if self.streak > 0 {
                    info!(dropped = self.streak, "faye job events publish again");
                }
                self.streak = 0;
            }
            Err(e) => {
                self.streak += 1;
                if self.streak == 1 || self.streak.is_multiple_of(1000) {
                    warn!(error = %e, dropped = self.streak,
                        "cannot publish faye job events; dropped (logged again every 1000)");
                }
            }
        }
    }
}

/// The args of the job a rule makes of `message`.
fn job_args(rule: &Rule, message: &Message) -> Value {
    match rule.args {
        ArgsFrom::Data => message.data.clone(),
        ArgsFrom::Message => json!([{
            "channel": message.channel,
            "data": message.data,
            "id": message.id,
        }]),
    }
}

/// Subscribe to every rule's channel and enqueue a job for each rule a
/// message matches, until `stop`. `None` without rules.
pub fn spawn_bridge(
    faye: &Faye,
    rules: Vec<Rule>,
    services: Services,
    stop: CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, FayeError> {
    if rules.is_empty() {
        return Ok(None);
    }
    let mut patterns: Vec<String> = rules.iter().map(|r| r.channel.clone()).collect();
    patterns.sort();
    patterns.dedup();
    // Shared: a fleet of workers with the same rules makes one job of a
    // publish, not one each.
    let mut subscription = faye.subscribe_shared(&patterns, &stop)?;
    let span = tracing::info_span!("faye_bridge", rules = rules.len());
    Ok(Some(tokio::spawn(
        async move {
            loop {
                // Cancel-safety: recv loses nothing when stop wins; a message
                // already received is enqueued to the end (below, outside
                // the select) before stop is looked at again.
                let message = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = subscription.recv() => match m { Some(m) => m, None => break },
                };
                for rule in rules
                    .iter()
                    .filter(|r| channel::matches(&r.channel, &message.channel))
                {
                    enqueue(&services, rule, &message, &stop).await;
                }
            }
            subscription.close().await;
            info!("faye bridge stopped");
        }
        .instrument(span),
    )))
}

/// Enqueue `rule`'s job for `message`, retrying while Redis is away.
async fn enqueue(services: &Services, rule: &Rule, message: &Message, stop: &CancellationToken) {
    let args = job_args(rule, message);
    let deadline = tokio::time::Instant::now() + ENQUEUE_RETRY_FOR;
    let mut backoff = crate::backoff::Backoff::new();
    loop {
        match services
            .enqueue(&rule.class, &rule.queue, args.clone(), None)
            .await
        {
            Ok(true) => {
                debug!(channel = %message.channel, class = %rule.class, queue = %rule.queue, "faye message enqueued");
                return;
            }
            Ok(false) => {
                info!(channel = %message.channel, class = %rule.class, "faye message not enqueued: the class's queue lock holds an identical job");
                return;
            }
            Err(e) if tokio::time::Instant::now() < deadline && !stop.is_cancelled() => {
                let delay = backoff.failed();
                warn!(error = %e, retry_in = ?delay, class = %rule.class, "cannot enqueue a faye message; retrying");
                // Cancel-safety: only a sleep is raced; a stop gives the
                // message one last attempt.
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => {
                warn!(error = %e, channel = %message.channel, class = %rule.class, "faye message dropped: cannot enqueue it");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_args_are_the_data_or_the_message() {
        let m = Message {
            channel: "/jobs/a".into(),
            data: json!(["k", "f"]),
            id: Some("7".into()),
            client_id: Some("c".into()),
            ext: Some(json!({"secret": 1})),
        };
        let mut rule = Rule {
            channel: "/jobs/*".into(),
            class: "X".into(),
            queue: "q".into(),
            args: ArgsFrom::Data,
        };
        assert_eq!(job_args(&rule, &m), json!(["k", "f"]));
        rule.args = ArgsFrom::Message;
        assert_eq!(
            job_args(&rule, &m),
            json!([{"channel": "/jobs/a", "data": ["k", "f"], "id": "7"}])
        );
    }

    #[test]
    fn event_data_names_class_queue_duration_and_error() {
        let d = JobEvent::Failed {
            duration: Duration::from_micros(1500),
            exception: "RuntimeError",
            error: "boom",
        }
        .data("C", "q", "w");
        assert_eq!(d["event"], "failed");
        assert_eq!(d["duration_ms"], 1.5);
        assert_eq!(
            (d["class"].as_str(), d["queue"].as_str()),
            (Some("C"), Some("q"))
        );
        assert_eq!(
            (d["exception"].as_str(), d["error"].as_str()),
            (Some("RuntimeError"), Some("boom"))
        );
        let s = JobEvent::Started.data("C", "q", "w");
        assert_eq!(s["event"], "started");
        assert!(s.get("duration_ms").is_none());
    }
}
