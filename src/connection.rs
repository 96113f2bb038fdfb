//! Where Redis is and how to reach it: the URL forms, TLS, ACL credentials,
//! and following a Sentinel-managed master through failovers.
//!
//! URL forms:
//! - `redis://[[user]:password@]host[:port][/db]` — plain TCP;
//! - `rediss://…` — TLS (rustls), checked against the system's roots or the
//!   configured CA file; `#insecure` skips the check;
//! - `redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/master[/db]`
//!   (and `rediss+sentinel://` for TLS to sentinels and master): ask the
//!   sentinels (default port 26379) for the current master of `master`. The
//!   credentials are the master's; `?sentinel_password=…` (and
//!   `sentinel_username`) authenticate to the sentinels.
//!
//! A [`Conn`] is one multiplexed, self-reconnecting connection shared by
//! every task of the process. Behind Sentinel it also follows the master:
//! when a command fails in a way a failover explains (connection lost or
//! refused, timeout, `READONLY` from a demoted master), it asks the
//! sentinels again and, if the master moved, later commands go to the new
//! one. The failed command's error still reaches its caller, which retries
//! as after any Redis error, so a failover costs what Redis itself lost
//! (writes not yet replicated) and nothing more.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, Cmd, ConnectionAddr, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

/// How long one command may take before the connection is taken for broken.
/// Generous: a step moving large payloads is one command.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for a TCP connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The port sentinels listen on unless the URL says otherwise.
const SENTINEL_PORT: u16 = 26379;

/// Ask the sentinels at most this often while commands keep failing.
const SENTINEL_RECHECK: Duration = Duration::from_millis(500);

/// TLS files, all optional: without a CA file the system's roots are used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the certificate authority that signed the server's
    /// certificate.
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for servers that require one
    /// (`tls-auth-clients yes`).
    pub cert: Option<PathBuf>,
    /// PEM key of the client certificate.
    pub key: Option<PathBuf>,
}

/// What can go wrong before a first connection.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The URL cannot be used; the message never contains the URL, which
    /// may hold a password.
    #[error("{0}")]
    Url(String),
    /// A TLS file cannot be read.
    #[error("cannot read {path}: {source}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The redis client refused the settings.
    #[error(transparent)]
    Redis(#[from] RedisError),
}

/// A Redis to connect to, parsed and checked.
#[derive(Clone)]
pub struct Target(Arc<Kind>);

enum Kind {
    Direct(Client),
    Sentinel(Sentinel),
}

/// How to find the master through sentinels.
struct Sentinel {
    /// Resolves the master; one resolution at a time.
    client: tokio::sync::Mutex<SentinelClient>,
    master: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL or the credentials.
        match &*self.0 {
            Kind::Direct(_) => f.write_str("Target::Direct"),
            Kind::Sentinel(s) => write!(f, "Target::Sentinel({})", s.master),
        }
    }
}

impl Target {
    /// Parse `url` (see the module doc) with the TLS files for `rediss`.
    pub fn new(url: &str, tls: &TlsFiles) -> Result<Target, TargetError> {
        let url = url.trim();
        let certs = tls_certificates(tls)?;
        if let Some(rest) = url
            .strip_prefix("redis+sentinel://")
            .map(|r| (false, r))
            .or_else(|| url.strip_prefix("rediss+sentinel://").map(|r| (true, r)))
        {
            let (tls_on, rest) = rest;
            return Ok(Target(Arc::new(Kind::Sentinel(sentinel(
                tls_on, rest, certs,
            )?))));
        }
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|_| TargetError::Url("not a Redis URL".into()))?;
        let tls_url = matches!(info.addr, ConnectionAddr::TcpTls { .. });
        let client = match certs {
            Some(certs) if tls_url => Client::build_with_tls(info, certs)?,
            Some(_) => {
                return Err(TargetError::Url(
                    "TLS files are set but the URL is not rediss://".into(),
                ));
            }
            None => Client::open(info)?,
        };
        Ok(Target(Arc::new(Kind::Direct(client))))
    }

    /// The shared connection: multiplexed, reconnecting, and behind
    /// Sentinel following the master.
    pub async fn connect(&self) -> Result<Conn, RedisError> {
        match &*self.0 {
            Kind::Direct(client) => Ok(Conn(Inner::Direct(manager(client.clone()).await?))),
            Kind::Sentinel(s) => {
                let client = s.client.lock().await.async_get_client().await?;
                let current = manager(client.clone()).await?;
                tracing::info!(master = %s.master, addr = %addr_of(&client), "connected to the sentinels' master");
                Ok(Conn(Inner::Following(Arc::new(Following {
                    target: self.clone(),
                    current: Mutex::new(Current {
                        client,
                        conn: current,
                        generation: 0,
                        checked: Instant::now(),
                    }),
                }))))
            }
        }
    }

    /// A connection of its own (for blocking commands and pub/sub, which
    /// would stall a shared one), to the master as the sentinels see it now.
    pub async fn dedicated(&self) -> Result<MultiplexedConnection, RedisError> {
        self.client()
            .await?
            .get_multiplexed_async_connection()
            .await
    }

    /// A client for the Redis (the current master behind Sentinel).
    pub async fn client(&self) -> Result<Client, RedisError> {
        match &*self.0 {
            Kind::Direct(client) => Ok(client.clone()),
            Kind::Sentinel(s) => s.client.lock().await.async_get_client().await,
        }
    }
}

fn tls_certificates(tls: &TlsFiles) -> Result<Option<redis::TlsCertificates>, TargetError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| TargetError::TlsFile {
            path: path.clone(),
            source,
        })
    };
    if tls == &TlsFiles::default() {
        return Ok(None);
    }
    let client_tls = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(TargetError::Url(
                "a TLS client certificate needs both the cert and the key file".into(),
            ));
        }
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert: tls.ca.as_ref().map(read).transpose()?,
    }))
}

/// `[user[:password]@]host[:port][,…]/master[/db][?sentinel_password=…]`.
fn sentinel(
    tls: bool,
    rest: &str,
    certs: Option<redis::TlsCertificates>,
) -> Result<Sentinel, TargetError> {
    let bad = |what: &str| TargetError::Url(format!("Sentinel URL: {what}"));
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest
        .split_once('/')
        .ok_or_else(|| bad("expected /<master name> after the sentinel addresses"))?;
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut parts = path.split('/');
    let master = parts
        .next()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("the master name is missing"))?
        .to_owned();
    let db: i64 = match parts.next() {
        None | Some("") => 0,
        Some(db) => db
            .parse()
            .map_err(|_| bad("the database must be a number"))?,
    };
    let mut addrs = Vec::new();
    for host in hosts.split(',').filter(|h| !h.is_empty()) {
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) if !name.ends_with(']') || host.starts_with('[') => (
                name.trim_start_matches('[').trim_end_matches(']'),
                port.parse()
                    .map_err(|_| bad("a sentinel port is not a number"))?,
            ),
            _ => (host, SENTINEL_PORT),
        };
        addrs.push(if tls {
            ConnectionAddr::TcpTls {
                host: name.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(name.to_owned(), port)
        });
    }
    if addrs.is_empty() {
        return Err(bad("no sentinel address"));
    }
    let mut builder =
        SentinelClientBuilder::new(addrs, master.clone(), SentinelServerType::Master)?
            .set_client_to_redis_db(db);
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            builder = builder.set_client_to_redis_username(decode(user));
        }
        if let Some(p) = password {
            builder = builder.set_client_to_redis_password(decode(p));
        }
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sentinel_password", v)) => {
                builder = builder.set_client_to_sentinel_password(decode(v))
            }
            Some(("sentinel_username", v)) => {
                builder = builder.set_client_to_sentinel_username(decode(v))
            }
            _ => {
                return Err(bad(
                    "unknown query parameter (sentinel_password and sentinel_username are known)",
                ));
            }
        }
    }
    if tls {
        builder = builder
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        if let Some(certs) = certs {
            builder = builder
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs);
        }
    } else if certs.is_some() {
        return Err(bad(
            "TLS files are set but the URL is not rediss+sentinel://",
        ));
    }
    Ok(Sentinel {
        client: tokio::sync::Mutex::new(builder.build()?),
        master,
    })
}

/// Percent-decoding of URL user info (`%40` → `@`).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn manager(client: Client) -> Result<ConnectionManager, RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(RESPONSE_TIMEOUT)
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_max_delay(2_000);
    ConnectionManager::new_with_config(client, config).await
}

fn addr_of(client: &Client) -> String {
    match &client.get_connection_info().addr {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        other => format!("{other:?}"),
    }
}

/// The process's shared Redis connection (see the module doc).
#[derive(Clone)]
pub struct Conn(Inner);

#[derive(Clone)]
enum Inner {
    Direct(ConnectionManager),
    Following(Arc<Following>),
}

/// A connection to the master the sentinels name, replaced when it moves.
struct Following {
    target: Target,
    current: Mutex<Current>,
}

struct Current {
    client: Client,
    conn: ConnectionManager,
    /// Bumped on each move, so concurrent failures trigger one switch.
    generation: u64,
    /// When the sentinels were last asked.
    checked: Instant,
}

impl Following {
    fn current(&self) -> (ConnectionManager, u64) {
        let c = self.current.lock().expect("not poisoned");
        (c.conn.clone(), c.generation)
    }

    /// After a failure on `generation`: ask the sentinels where the master
    /// is, and switch if it moved.
    async fn recheck(&self, generation: u64) {
        let Kind::Sentinel(sentinel) = &*self.target.0 else {
            return;
        };
        // One resolution at a time; the others wait for it and then see
        // the new generation or the fresh check time.
        let mut resolver = sentinel.client.lock().await;
        {
            let c = self.current.lock().expect("not poisoned");
            if c.generation != generation || c.checked.elapsed() < SENTINEL_RECHECK {
                return;
            }
        }
        let found = resolver.async_get_client().await;
        let client = {
            let mut c = self.current.lock().expect("not poisoned");
            c.checked = Instant::now();
            match found {
                Ok(client)
                    if client.get_connection_info().addr != c.client.get_connection_info().addr =>
                {
                    client
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(master = %sentinel.master, error = %e, "sentinels do not name a master");
                    return;
                }
            }
        };
        // A manager connects lazily in the background when the new master
        // is not reachable yet; creating it eagerly reports that now.
        let conn = match manager(client.clone()).await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(master = %sentinel.master, addr = %addr_of(&client), error = %e, "cannot reach the new master yet");
                return;
            }
        };
        let mut c = self.current.lock().expect("not poisoned");
        tracing::warn!(
            master = %sentinel.master,
            from = %addr_of(&c.client),
            to = %addr_of(&client),
            "the master moved; following it"
        );
        c.client = client;
        c.conn = conn;
        c.generation += 1;
    }
}

/// Errors a failover explains.
fn master_may_have_moved(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(e.kind(), ErrorKind::ReadOnly | ErrorKind::MasterDown)
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Inner::Direct(conn) => conn.req_packed_command(cmd),
            Inner::Following(f) => Box::pin(async move {
                let (mut conn, generation) = f.current();
                let reply = conn.req_packed_command(cmd).await;
                if let Err(e) = &reply
                    && master_may_have_moved(e)
                {
                    f.recheck(generation).await;
                }
                reply
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Inner::Direct(conn) => conn.req_packed_commands(cmd, offset, count),
            Inner::Following(f) => Box::pin(async move {
                let (mut conn, generation) = f.current();
                let reply = conn.req_packed_commands(cmd, offset, count).await;
                if let Err(e) = &reply
                    && master_may_have_moved(e)
                {
                    f.recheck(generation).await;
                }
                reply
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Inner::Direct(conn) => conn.get_db(),
            Inner::Following(f) => f.current().0.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_url_forms() {
        let none = TlsFiles::default();
        assert!(Target::new("redis://127.0.0.1:6379/2", &none).is_ok());
        assert!(Target::new("redis://user:pw@127.0.0.1/0", &none).is_ok());
        assert!(Target::new("rediss://localhost:6380", &none).is_ok());
        assert!(Target::new("redis+sentinel://a:26379,b/mymaster/3", &none).is_ok());
        assert!(Target::new("redis+sentinel://:pw@a/mymaster?sentinel_password=x", &none).is_ok());
        for bad in [
            "http://x",
            "redis+sentinel://a:26379",
            "redis+sentinel://a/",
            "redis+sentinel://a/m/x",
            "redis+sentinel://a:p/m",
            "redis+sentinel:///m",
            "redis+sentinel://a/m?other=1",
        ] {
            assert!(Target::new(bad, &none).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_never_show_the_password() {
        let e = Target::new("redis+sentinel://u:secret@a/m/x", &TlsFiles::default())
            .expect_err("bad db");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn tls_files_need_a_tls_url() {
        let dir = std::env::temp_dir().join(format!("ah-worker-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not read until a connection").unwrap();
        let tls = TlsFiles {
            ca: Some(ca),
            ..TlsFiles::default()
        };
        let e = Target::new("redis://localhost", &tls).expect_err("not rediss");
        assert!(e.to_string().contains("rediss"), "{e}");
        let missing = TlsFiles {
            ca: Some(dir.join("missing.pem")),
            ..TlsFiles::default()
        };
        let e = Target::new("rediss://localhost", &missing).expect_err("missing");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(decode("p%40ss%3Aw"), "p@ss:w");
        assert_eq!(decode("100%"), "100%");
    }
}
