//! The optional HTTP listener (`metrics_listen`): Prometheus metrics at
//! `/metrics` and health at `/health`.
//!
//! Two read-only GET endpoints do not need an HTTP framework: this is a
//! minimal HTTP/1.1 server on a tokio `TcpListener`, one request per
//! connection (`Connection: close`), with a bounded request size, a read
//! timeout and a cap on concurrent connections. Bind it to loopback
//! (`127.0.0.1:9187`) unless the network in front of it is trusted: it has
//! no authentication.
//!
//! `/metrics` speaks the Prometheus text format 0.0.4
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/>): HELP
//! and TYPE lines, then samples; names start with `ah_worker_`. Queue depths
//! are read from Redis at scrape time, with a short timeout.
//!
//! `/health` (also `/health/ready`): 200 while the worker is registered,
//! its job loop keeps its promise ([`crate::vitals::Pulse`]) and Redis
//! answered recently; 503 otherwise. `/health/live`: 200 unless the job loop
//! is wedged. Both answer a small JSON object.
//!
//! Does not own: the numbers ([`crate::vitals`]).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::vitals::{DURATION_BUCKETS_US, JobOutcome, Phase, Vitals};

/// Redis must have answered within this long for `/health` to say ok: the
/// heartbeat calls it at least every 5 s.
pub const REDIS_FRESH: Duration = Duration::from_secs(15);
/// How long a scrape waits for the queue depths.
pub const DEPTH_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one request may take, from connection to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request accepted (request line and headers).
const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;

/// Bind the listener (before anything else starts, so a taken port is a
/// start-up error).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve `/metrics` and `/health` of `vitals` on `listener` until `cancel`.
pub fn spawn(
    listener: TcpListener,
    vitals: Arc<Vitals>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let addr = listener.local_addr().ok();
    let span = info_span!("metrics", addr = ?addr);
    tokio::spawn(
        async move {
            info!("serving /metrics and /health");
            let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
            loop {
                // Cancel-safety: `accept` loses no connection when the stop
                // wins (the listener closes with it); requests in flight run
                // in their own tasks and end with their connection.
                let (stream, peer) = tokio::select! {
                    _ = cancel.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    debug!(%peer, "too many connections; closing");
                    continue;
                };
                let vitals = vitals.clone();
                tokio::spawn(
                    async move {
                        match tokio::time::timeout(REQUEST_TIMEOUT, serve(stream, &vitals)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => debug!(error = %e, "request failed"),
                            Err(_) => debug!("request timed out"),
                        }
                        drop(permit);
                    }
                    .instrument(debug_span_for(peer)),
                );
            }
        }
        .instrument(span),
    )
}

fn debug_span_for(peer: SocketAddr) -> tracing::Span {
    tracing::debug_span!("request", %peer)
}

/// Read one request, answer it, close.
async fn serve(mut stream: TcpStream, vitals: &Vitals) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    let (status, content_type, body) = match parse_request_line(&head) {
        None => (400, "text/plain", "bad request\n".to_owned()),
        Some((method, _)) if method != "GET" && method != "HEAD" => {
            (405, "text/plain", "only GET and HEAD\n".to_owned())
        }
        Some((_, "/metrics")) => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            render(vitals, &queue_depths(vitals).await),
        ),
        Some((_, "/health" | "/health/ready")) => health(vitals, true),
        Some((_, "/health/live")) => health(vitals, false),
        Some(_) => (
            404,
            "text/plain",
            "not found: try /metrics or /health\n".to_owned(),
        ),
    };
    let head_only = parse_request_line(&head).is_some_and(|(m, _)| m == "HEAD");
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    if status == 405 {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    if !head_only {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The request line and headers, up to the blank line.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= MAX_REQUEST {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// `GET /path?query HTTP/1.1` → (`GET`, `/path`).
fn parse_request_line(head: &str) -> Option<(&str, &str)> {
    let mut parts = head.lines().next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    Some((method, target.split('?').next().unwrap_or(target)))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    }
}

/// Ready (`ready`) or live: status, content type and JSON body.
fn health(vitals: &Vitals, ready: bool) -> (u16, &'static str, String) {
    let phase = vitals.phase();
    let looping = phase == Phase::Starting || vitals.pulse.alive();
    let redis = vitals.redis_fresh(REDIS_FRESH);
    let ok = if ready {
        looping && redis && matches!(phase, Phase::Running | Phase::Reloading)
    } else {
        looping
    };
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "phase": phase.name(),
        "loop": if looping { "ok" } else { "stalled" },
        "redis": if redis { "ok" } else { "unreachable" },
        "redis_last_ok_seconds_ago": vitals.redis_ok_age().map(|d| d.as_secs_f64()),
        "slots": vitals.slots(),
        "busy": vitals.busy(),
        "paused": vitals.paused(),
    });
    (
        if ok { 200 } else { 503 },
        "application/json",
        format!("{body}\n"),
    )
}

/// The depth of each queue the running configuration serves, or nothing if
/// Redis does not answer in time.
async fn queue_depths(vitals: &Vitals) -> Vec<(String, u64)> {
    let Some((store, spec)) = vitals.queues() else {
        return Vec::new();
    };
    let read = async {
        let known = if spec.is_dynamic() {
            store.queue_names().await?
        } else {
            Vec::new()
        };
        let queues = spec.resolve(&known);
        let depths = store.queue_lengths(&queues).await?;
        crate::Result::<Vec<(String, u64)>>::Ok(queues.into_iter().zip(depths).collect())
    };
    match tokio::time::timeout(DEPTH_TIMEOUT, read).await {
        Ok(Ok(depths)) => depths,
        Ok(Err(e)) => {
            debug!(error = %e, "cannot read the queue depths");
            Vec::new()
        }
        Err(_) => {
            debug!("queue depths timed out");
            Vec::new()
        }
    }
}

/// The Prometheus text of `vitals`, with the queue `depths` read for this
/// scrape.
pub fn render(vitals: &Vitals, depths: &[(String, u64)]) -> String {
    let mut out = String::with_capacity(4096);
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP ah_worker_{name} {help}");
        let _ = writeln!(out, "# TYPE ah_worker_{name} {kind}");
    };
    family(
        &mut out,
        "build_info",
        "gauge",
        "The version running; always 1.",
    );
    let _ = writeln!(
        out,
        "ah_worker_build_info{{version=\"{}\"}} 1",
        escape(env!("CARGO_PKG_VERSION"))
    );
    let (applied, refused) = vitals.reloads();
    let single: [(&str, &str, &str, f64); 8] = [
        (
            "process_start_time_seconds",
            "gauge",
            "When the process started, Unix seconds.",
            vitals.started_unix(),
        ),
        (
            "ready",
            "gauge",
            "1 while registered and taking jobs (or paused), else 0.",
            f64::from(u8::from(vitals.phase() == Phase::Running)),
        ),
        (
            "paused",
            "gauge",
            "1 while paused (USR2), else 0.",
            f64::from(u8::from(vitals.paused())),
        ),
        (
            "slots",
            "gauge",
            "Job slots of this process.",
            vitals.slots() as f64,
        ),
        (
            "slots_busy",
            "gauge",
            "Slots running a job or recording its outcome.",
            vitals.busy() as f64,
        ),
        (
            "last_heartbeat_timestamp_seconds",
            "gauge",
            "When the heartbeat last wrote this process's entry (Redis's clock), Unix seconds; 0 before the first.",
            vitals.last_heartbeat_unix(),
        ),
        (
            "redis_errors_total",
            "counter",
            "Failed Redis calls.",
            vitals.redis_errors() as f64,
        ),
        (
            "redis_reconnects_total",
            "counter",
            "Times Redis answered again after failed calls.",
            vitals.reconnects() as f64,
        ),
    ];
    for (name, kind, help, value) in single {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "ah_worker_{name} {value}");
    }
    family(
        &mut out,
        "reloads_total",
        "counter",
        "Configuration reloads (HUP), by result.",
    );
    let _ = writeln!(
        out,
        "ah_worker_reloads_total{{result=\"applied\"}} {applied}"
    );
    let _ = writeln!(
        out,
        "ah_worker_reloads_total{{result=\"refused\"}} {refused}"
    );

    family(
        &mut out,
        "queue_depth",
        "gauge",
        "Jobs waiting in each queue this worker serves, read at scrape time (absent when Redis does not answer within 1 s).",
    );
    for (queue, depth) in depths {
        let _ = writeln!(
            out,
            "ah_worker_queue_depth{{queue=\"{}\"}} {depth}",
            escape(queue)
        );
    }

    let series = vitals.series();
    family(
        &mut out,
        "jobs_total",
        "counter",
        "Jobs run, by queue, class and outcome (succeeded, failed, put_back, deferred).",
    );
    let counts: Vec<_> = series.iter().map(|s| s.counts()).collect();
    for (s, c) in series.iter().zip(&counts) {
        let (q, class) = (escape(&s.queue), escape(&s.class));
        for (outcome, n) in JobOutcome::ALL.iter().zip(c.outcomes) {
            let _ = writeln!(
                out,
                "ah_worker_jobs_total{{queue=\"{q}\",class=\"{class}\",outcome=\"{}\"}} {n}",
                outcome.label()
            );
        }
    }
    family(
        &mut out,
        "job_duration_seconds",
        "histogram",
        "Time from a job's start to its outcome, by queue and class.",
    );
    for (s, c) in series.iter().zip(&counts) {
        let labels = format!(
            "queue=\"{}\",class=\"{}\"",
            escape(&s.queue),
            escape(&s.class)
        );
        for (bound, n) in DURATION_BUCKETS_US.iter().zip(c.cumulative) {
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "ah_worker_job_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "ah_worker_job_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
            c.count
        );
        let _ = writeln!(
            out,
            "ah_worker_job_duration_seconds_sum{{{labels}}} {}",
            c.sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "ah_worker_job_duration_seconds_count{{{labels}}} {}",
            c.count
        );
    }
    out
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"A"b\c"#), r#"A\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        assert_eq!(escape("Plain::Class"), "Plain::Class");
    }

    #[test]
    fn request_lines_parse() {
        assert_eq!(
            parse_request_line("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(parse_request_line("GET /metrics\r\n\r\n"), None);
        assert_eq!(parse_request_line(""), None);
    }

    #[test]
    fn health_needs_a_live_loop_and_fresh_redis() {
        let v = Vitals::new(Duration::from_secs(1));
        assert_eq!(health(&v, true).0, 503, "starting");
        assert_eq!(health(&v, false).0, 200, "alive while starting");
        v.set_phase(Phase::Running);
        v.pulse.beat(Duration::from_secs(10));
        assert_eq!(health(&v, true).0, 503, "redis never answered");
        v.redis_ok();
        let (status, _, body) = health(&v, true);
        assert_eq!(status, 200, "{body}");
        v.redis_failed("heartbeat", &std::io::Error::other("refused"));
        let (status, _, body) = health(&v, true);
        assert_eq!(status, 503);
        assert!(body.contains("\"redis\":\"unreachable\""), "{body}");
        assert_eq!(health(&v, false).0, 200, "live: Redis is not the loop");
    }
}
