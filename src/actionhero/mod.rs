//! actionHero's shared state in Redis, read and written exactly as the Node
//! side does: the cache, the stats and the chat rooms. The only module that
//! knows those key strings and value shapes.
//!
//! Two eras are supported. The seed era (actionHero 5–7, the default) keeps
//! the cache in one hash `actionHero:cache` (value JSON
//! `{"value","expireTimestamp","createdAt","readAt"}`, times in ms, expiry
//! checked on read and swept), stats in `actionHero:stats`, and rooms either
//! as 7.0 member lists `actionHero:roomMembers:<room>` or, from 7.1, as
//! `actionHero:chatRoom:rooms` + `actionHero:chatRoom:members:<room>`. The
//! modern layout (actionHero 7.2+ cache) keeps one string per cache key
//! `actionhero:cache:<key>` with a Redis TTL and locks at
//! `actionhero:lock:<key>`. Prefixes are configurable.

mod cache;
mod rooms;
mod stats;

use std::time::Duration;

pub use cache::{Cache, CacheEntry, CacheError, CacheLayout};
pub use rooms::{RoomLayout, Rooms};
pub use stats::Stats;

/// Settings of the `[actionhero]` config section.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Cache layout.
    pub cache_layout: CacheLayout,
    /// Prefix of the seed-era keys (`actionHero`; `actionhero` from 7.6).
    pub prefix: String,
    /// Cache key prefix in the modern layout (`actionhero:cache:`).
    pub cache_prefix: String,
    /// Lock key prefix (`actionhero:lock:` modern, `<prefix>:lock:` seed).
    pub lock_prefix: String,
    /// Hashes stats are flushed to.
    pub stats_keys: Vec<String>,
    /// How often buffered stats are flushed.
    pub stats_flush: Duration,
    /// Chat-room layout.
    pub room_layout: RoomLayout,
    /// Key template of 7.0 member lists; `{room}` is replaced.
    pub room_members_key: String,
    /// This server's id: the lock holder name and the `host` of room members.
    pub server_id: String,
    /// Count `tasks:<class>`, `exceptions:tasks` and ah-worker's own
    /// per-class counters for every job run.
    pub task_stats: bool,
    /// How often the hash-layout cache is swept (by one node per period).
    pub sweep_every: Duration,
}

impl Settings {
    /// The seed-era defaults (actionHero 7.1).
    pub fn seed(server_id: &str) -> Settings {
        Settings {
            cache_layout: CacheLayout::Hash,
            prefix: "actionHero".into(),
            cache_prefix: "actionhero:cache:".into(),
            lock_prefix: "actionHero:lock:".into(),
            stats_keys: vec!["actionHero:stats".into()],
            stats_flush: Duration::from_secs(1),
            room_layout: RoomLayout::ChatRoom,
            room_members_key: "actionHero:roomMembers:{room}".into(),
            server_id: server_id.into(),
            task_stats: true,
            sweep_every: Duration::from_secs(60),
        }
    }

    /// The `[actionhero]` section of the config file over the seed defaults.
    pub fn from_toml(value: toml::Value, server_id: &str) -> Result<Settings, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            cache_layout: Option<String>,
            prefix: Option<String>,
            cache_prefix: Option<String>,
            lock_prefix: Option<String>,
            stats_keys: Option<Vec<String>>,
            room_layout: Option<String>,
            room_members_key: Option<String>,
            server_id: Option<String>,
            task_stats: Option<bool>,
            sweep_every: Option<String>,
        }
        let raw: Raw = value
            .try_into()
            .map_err(|e: toml::de::Error| format!("[actionhero]: {}", e.message()))?;
        let mut s = Settings::seed(raw.server_id.as_deref().unwrap_or(server_id));
        if let Some(p) = raw.prefix {
            s.lock_prefix = format!("{p}:lock:");
            s.stats_keys = vec![format!("{p}:stats")];
            s.room_members_key = format!("{p}:roomMembers:{{room}}");
            s.prefix = p;
        }
        match raw.cache_layout.as_deref() {
            None | Some("hash") => {}
            Some("strings") => {
                s.cache_layout = CacheLayout::Strings;
                s.lock_prefix = "actionhero:lock:".into();
            }
            Some(other) => {
                return Err(format!(
                    "[actionhero] cache_layout {other:?}: expected hash or strings"
                ));
            }
        }
        match raw.room_layout.as_deref() {
            None | Some("chat_room") => {}
            Some("member_lists") => s.room_layout = RoomLayout::MemberLists,
            Some(other) => {
                return Err(format!(
                    "[actionhero] room_layout {other:?}: expected chat_room or member_lists"
                ));
            }
        }
        if let Some(p) = raw.cache_prefix {
            s.cache_prefix = p;
        }
        if let Some(p) = raw.lock_prefix {
            s.lock_prefix = p;
        }
        if let Some(k) = raw.stats_keys {
            s.stats_keys = k;
        }
        if let Some(t) = raw.room_members_key {
            if !t.contains("{room}") {
                return Err(format!(
                    "[actionhero] room_members_key {t:?} must contain {{room}}"
                ));
            }
            s.room_members_key = t;
        }
        if let Some(t) = raw.task_stats {
            s.task_stats = t;
        }
        if let Some(d) = raw.sweep_every {
            s.sweep_every = crate::config::parse_duration(&d)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    format!("[actionhero] sweep_every {d:?} is not a positive duration")
                })?;
        }
        Ok(s)
    }

    /// The cache hash of the seed layout.
    pub fn cache_hash(&self) -> String {
        format!("{}:cache", self.prefix)
    }
}

/// Handle on all of actionHero's shared state.
#[derive(Debug, Clone)]
pub struct ActionHero {
    /// The cache.
    pub cache: Cache,
    /// The stats buffer.
    pub stats: Stats,
    /// The chat rooms.
    pub rooms: Rooms,
}

impl ActionHero {
    /// State on `conn` with `settings`.
    pub fn new(conn: crate::connection::Conn, settings: &Settings) -> ActionHero {
        let stats = Stats::new(conn.clone(), settings.stats_keys.clone());
        ActionHero {
            cache: Cache::new(conn.clone(), settings, stats.clone()),
            stats,
            rooms: Rooms::new(conn, settings),
        }
    }
}

impl ActionHero {
    /// Count a finished job the way actionHero's task runner does
    /// (`tasks:<class>`, and `exceptions:tasks` on a failure), plus
    /// ah-worker's own `ah-worker:processed:<class>` / `ah-worker:failed:<class>`.
    pub fn count_task(&self, class: &str, failed: bool) {
        self.stats.increment(&format!("tasks:{class}"), 1);
        self.stats
            .increment(&format!("ah-worker:processed:{class}"), 1);
        if failed {
            self.stats.increment("exceptions:tasks", 1);
            self.stats
                .increment(&format!("ah-worker:failed:{class}"), 1);
        }
    }
}

/// Milliseconds since the Unix epoch, as actionHero's `new Date().getTime()`.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Every key matching `pattern` (SCAN, never KEYS).
pub(crate) async fn scan(
    conn: &mut crate::connection::Conn,
    pattern: &str,
) -> crate::Result<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        out.extend(keys);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}
