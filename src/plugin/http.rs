//! `http` plugins: the job object is POSTed as JSON to a URL over a
//! keep-alive connection pool; a 2xx answer is success.
//!
//! `https://` URLs are checked against the system's roots (rustls with the
//! platform verifier, which also reads `SSL_CERT_FILE` / `SSL_CERT_DIR`).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::{JobObject, PluginSpec};
use crate::handler::{BoxFuture, Handler, JobContext, JobError};
use crate::resque::Job;

/// How much of a failed answer's body goes into the failure record.
const BODY_PREFIX: usize = 500;
/// Idle keep-alive connections kept per host.
const POOL_IDLE: usize = 32;

/// Check a plugin URL at start-up.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("`url` {url:?} is not a valid URL: {e}"))?;
    match parsed.scheme() {
        "http" | "https" if parsed.host().is_some() => Ok(()),
        "http" | "https" => Err(format!("`url` {url:?} has no host")),
        other => Err(format!(
            "`url` {url:?}: scheme {other:?} is not http or https"
        )),
    }
}

/// An HTTP client builder whose TLS uses the process's rustls provider
/// (ring, the one `rediss://` uses), installed on first use.
pub fn client_builder() -> reqwest::ClientBuilder {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        // Fails only when another provider is already the default: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// Check a header at start-up.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("header name {name:?} is invalid"))?;
    HeaderValue::from_str(value).map_err(|_| format!("the value of header {name:?} is invalid"))?;
    Ok(())
}

/// An `http` plugin.
#[derive(Debug)]
pub struct HttpPlugin {
    name: String,
    url: String,
    client: reqwest::Client,
}

impl HttpPlugin {
    /// The plugin of `spec`; `headers` were checked by [`check_header`].
    pub fn new(
        spec: &PluginSpec,
        url: &str,
        headers: &BTreeMap<String, String>,
    ) -> Result<HttpPlugin, String> {
        let mut map = HeaderMap::new();
        map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_str(v).map_err(|e| e.to_string())?;
            map.insert(name, value);
        }
        let client = client_builder()
            .default_headers(map)
            .timeout(spec.timeout)
            .pool_max_idle_per_host(POOL_IDLE)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpPlugin {
            name: spec.name.clone(),
            url: url.to_owned(),
            client,
        })
    }
}

impl Handler for HttpPlugin {
    fn perform(&self, job: Job, ctx: JobContext) -> BoxFuture {
        let body = JobObject::new(&job, &ctx, None).to_json();
        let request = self.client.post(&self.url).body(body);
        let name = self.name.clone();
        let url = self.url.clone();
        Box::pin(async move {
            let response = request.send().await.map_err(|e| {
                let what = if e.is_timeout() {
                    "timed out"
                } else {
                    "request failed"
                };
                JobError::new(
                    "AhWorker::HttpError",
                    format!("plugin {name}: POST {url} {what}: {e}"),
                )
            })?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let body = response.text().await.unwrap_or_default();
            let mut start: String = body.chars().take(BODY_PREFIX).collect();
            if start.len() < body.len() {
                start.push('…');
            }
            Err(JobError::new(
                "AhWorker::HttpError",
                format!("HTTP {}: {}", status.as_u16(), start.trim()),
            )
            .into())
        })
    }
}
