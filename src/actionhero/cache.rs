//! actionHero's cache (`api.cache`): save, load, destroy, size, list, locks
//! and the expiry sweep, in the seed-era hash layout or the modern one.

use std::time::Duration;

use redis::AsyncCommands as _;
use serde::Serialize;
use serde_json::Value;

use super::{Settings, Stats, now_ms};

/// Where cache entries live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLayout {
    /// One hash `<prefix>:cache`, field = key (actionHero 5–7.1). Expiry is
    /// logical: checked on read, removed by the sweep.
    Hash,
    /// One string per key `<cache_prefix><key>` with a Redis TTL
    /// (actionHero 7.2 and later).
    Strings,
}

/// Why a load found nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// No entry (actionHero's message).
    #[error("Object not found")]
    NotFound,
    /// An entry past its expiry, left for the sweep (hash layout only; in the
    /// string layout Redis deletes it, so it is not found).
    #[error("Object expired")]
    Expired,
}

/// A cache entry as actionHero stores it (hash layout):
/// `{"value":…,"expireTimestamp":<ms|null>,"createdAt":<ms>,"readAt":<ms|null>}`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    /// The cached value.
    pub value: Value,
    /// When it expires (ms), if ever.
    #[serde(default)]
    pub expire_timestamp: Option<i64>,
    /// When it was saved (ms).
    #[serde(default)]
    pub created_at: Option<i64>,
    /// When it was last loaded (ms).
    #[serde(default)]
    pub read_at: Option<i64>,
}

/// The cache.
#[derive(Clone)]
pub struct Cache {
    conn: crate::connection::Conn,
    layout: CacheLayout,
    hash: String,
    string_prefix: String,
    lock_prefix: String,
    holder: String,
    stats: Stats,
    cas: redis::Script,
    unlock: redis::Script,
}

/// Replace a hash field only if it still holds the value read (a concurrent
/// save wins over a load's `readAt` update), or delete it (`ARGV[3]` empty).
const CAS: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1";

/// Release a lock held by `ARGV[1]` (or already gone); 0 if someone else holds it.
const UNLOCK: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 1 end
if v == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0";

impl Cache {
    pub(super) fn new(conn: crate::connection::Conn, s: &Settings, stats: Stats) -> Cache {
        Cache {
            conn,
            layout: s.cache_layout,
            hash: s.cache_hash(),
            string_prefix: s.cache_prefix.clone(),
            lock_prefix: s.lock_prefix.clone(),
            holder: s.server_id.clone(),
            stats,
            cas: redis::Script::new(CAS),
            unlock: redis::Script::new(UNLOCK),
        }
    }

    /// `api.cache.save(key, value, expireTimeMS)`.
    pub async fn save(
        &self,
        key: &str,
        value: Value,
        expire: Option<Duration>,
    ) -> crate::Result<()> {
        let now = now_ms();
        let mut conn = self.conn.clone();
        match self.layout {
            CacheLayout::Hash => {
                let entry = CacheEntry {
                    value,
                    expire_timestamp: expire.map(|d| now + d.as_millis() as i64),
                    created_at: Some(now),
                    read_at: None,
                };
                let json = serde_json::to_string(&entry).expect("JSON values serialise");
                conn.hset::<_, _, _, ()>(&self.hash, key, json).await?;
            }
            CacheLayout::Strings => {
                let json = serde_json::json!({"value": value, "createdAt": now}).to_string();
                let k = format!("{}{key}", self.string_prefix);
                match expire {
                    Some(d) => {
                        conn.pset_ex::<_, _, ()>(k, json, d.as_millis().max(1) as u64)
                            .await?
                    }
                    None => conn.set::<_, _, ()>(k, json).await?,
                }
            }
        }
        self.stats.increment("cache:cachedObjects", 1);
        self.stats.increment("cache:totalCachedObjects", 1);
        Ok(())
    }

    /// `api.cache.load(key, {expireTimeMS})`: the entry, with `readAt` set
    /// (and, with `refresh`, a new expiry for an entry that has one).
    pub async fn load(
        &self,
        key: &str,
        refresh: Option<Duration>,
    ) -> crate::Result<Result<CacheEntry, CacheError>> {
        let now = now_ms();
        let mut conn = self.conn.clone();
        match self.layout {
            CacheLayout::Hash => loop {
                let raw: Option<String> = conn.hget(&self.hash, key).await?;
                let Some(raw) = raw else {
                    return Ok(Err(CacheError::NotFound));
                };
                let Ok(mut entry) = serde_json::from_str::<CacheEntry>(&raw) else {
                    return Ok(Err(CacheError::NotFound));
                };
                if entry.expire_timestamp.is_some_and(|t| t < now) {
                    return Ok(Err(CacheError::Expired));
                }
                entry.read_at = Some(now);
                if let (Some(d), Some(_)) = (refresh, entry.expire_timestamp) {
                    entry.expire_timestamp = Some(now + d.as_millis() as i64);
                }
                let json = serde_json::to_string(&entry).expect("JSON values serialise");
                let swapped: i64 = self
                    .cas
                    .key(&self.hash)
                    .arg(key)
                    .arg(&raw)
                    .arg(&json)
                    .invoke_async(&mut conn)
                    .await?;
                if swapped == 1 {
                    return Ok(Ok(entry));
                }
                // Saved meanwhile: read the new entry.
            },
            CacheLayout::Strings => {
                let k = format!("{}{key}", self.string_prefix);
                let raw: Option<String> = conn.get(&k).await?;
                let Some(entry) = raw.and_then(|r| serde_json::from_str::<CacheEntry>(&r).ok())
                else {
                    return Ok(Err(CacheError::NotFound));
                };
                if let Some(d) = refresh {
                    conn.pexpire::<_, ()>(&k, d.as_millis().max(1) as i64)
                        .await?;
                }
                Ok(Ok(entry))
            }
        }
    }

    /// `api.cache.destroy(key)`: whether something was removed.
    pub async fn destroy(&self, key: &str) -> crate::Result<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = match self.layout {
            CacheLayout::Hash => conn.hdel(&self.hash, key).await?,
            CacheLayout::Strings => conn.del(format!("{}{key}", self.string_prefix)).await?,
        };
        self.stats.increment("cache:cachedObjects", -1);
        Ok(n == 1)
    }

    /// `api.cache.size()`.
    pub async fn size(&self) -> crate::Result<usize> {
        Ok(self.list().await?.len())
    }

    /// Every key, sorted.
    pub async fn list(&self) -> crate::Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let mut keys: Vec<String> = match self.layout {
            CacheLayout::Hash => conn.hkeys(&self.hash).await?,
            CacheLayout::Strings => {
                let pattern = format!("{}*", self.string_prefix);
                super::scan(&mut conn, &pattern)
                    .await?
                    .into_iter()
                    .map(|k| k[self.string_prefix.len()..].to_owned())
                    .collect()
            }
        };
        keys.sort();
        Ok(keys)
    }

    /// `api.cache.lock(key, ms)`: take (or renew, if ours) the lock on `key`.
    pub async fn lock(&self, key: &str, ttl: Duration) -> crate::Result<bool> {
        let k = format!("{}{key}", self.lock_prefix);
        let mut conn = self.conn.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(&k)
            .arg(&self.holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await?;
        if taken.is_some() {
            return Ok(true);
        }
        let holder: Option<String> = conn.get(&k).await?;
        if holder.as_deref() == Some(self.holder.as_str()) {
            conn.pexpire::<_, ()>(&k, ttl.as_millis().max(1) as i64)
                .await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// `api.cache.unlock(key)`: release our lock; `false` if someone else holds it.
    pub async fn unlock(&self, key: &str) -> crate::Result<bool> {
        let k = format!("{}{key}", self.lock_prefix);
        let mut conn = self.conn.clone();
        let n: i64 = self
            .unlock
            .key(&k)
            .arg(&self.holder)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Sweep every `every` until `cancel` (see [`Cache::sweep`]).
    pub fn spawn_sweeper(
        &self,
        every: Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                // Cancel-safety: a sweep is only raced between runs.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match cache.sweep(every).await {
                    Ok(n) if n > 0 => tracing::debug!(removed = n, "expired cache entries swept"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cache sweep failed"),
                }
            }
        })
    }

    /// Remove expired entries of the hash layout; only the process holding
    /// the sweep lock for this period does it, so the fleet sweeps once per
    /// period, not once per node. Returns how many were removed.
    pub async fn sweep(&self, period: Duration) -> crate::Result<usize> {
        if self.layout != CacheLayout::Hash
            || !self.lock(&format!("{}:sweep", self.hash), period).await?
        {
            return Ok(0);
        }
        let now = now_ms();
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> = conn.hgetall(&self.hash).await?;
        let mut removed = 0;
        for (key, raw) in all {
            let expired = serde_json::from_str::<CacheEntry>(&raw)
                .is_ok_and(|e| e.expire_timestamp.is_some_and(|t| t < now));
            if expired {
                let n: i64 = self
                    .cas
                    .key(&self.hash)
                    .arg(&key)
                    .arg(&raw)
                    .arg("")
                    .invoke_async(&mut conn)
                    .await?;
                removed += n as usize;
            }
        }
        if removed > 0 {
            self.stats
                .increment("cache:cachedObjects", -(removed as i64));
        }
        Ok(removed)
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}
