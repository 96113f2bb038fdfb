//! actionHero's stats: increments buffered in memory and flushed about every
//! second as `HINCRBY`s in one `MULTI` to each configured hash, as
//! actionHero 6.4–11 does (`api.stats.increment` / `writeFrequency`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands as _;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info_span, warn};

/// The stats buffer.
#[derive(Clone)]
pub struct Stats {
    conn: crate::connection::Conn,
    keys: Vec<String>,
    pending: Arc<Mutex<HashMap<String, i64>>>,
}

impl Stats {
    /// A buffer flushing to `keys`.
    pub fn new(conn: crate::connection::Conn, keys: Vec<String>) -> Stats {
        Stats {
            conn,
            keys,
            pending: Arc::default(),
        }
    }

    /// Count `n` on `key` (flushed later).
    pub fn increment(&self, key: &str, n: i64) {
        *self
            .pending
            .lock()
            .expect("stats lock")
            .entry(key.to_owned())
            .or_default() += n;
    }

    /// Write what is buffered: `MULTI; HINCRBY <hash> <key> <n> ...; EXEC`
    /// per hash. On failure the counts go back into the buffer.
    pub async fn flush(&self) -> crate::Result<()> {
        let batch: HashMap<String, i64> =
            std::mem::take(&mut *self.pending.lock().expect("stats lock"));
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for hash in &self.keys {
            for (k, n) in &batch {
                pipe.hincr(hash, k, *n).ignore();
            }
        }
        let mut conn = self.conn.clone();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            let mut pending = self.pending.lock().expect("stats lock");
            for (k, n) in batch {
                *pending.entry(k).or_default() += n;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Every stat of the first hash, as `api.stats.getAll` shows it.
    pub async fn get_all(&self) -> crate::Result<HashMap<String, i64>> {
        let Some(hash) = self.keys.first() else {
            return Ok(HashMap::new());
        };
        let mut conn = self.conn.clone();
        Ok(conn.hgetall(hash).await?)
    }

    /// Flush every `every` until `cancel`, then once more, so nothing counted
    /// is lost on a graceful stop.
    pub fn spawn_flusher(
        &self,
        every: Duration,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let stats = self.clone();
        tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    // Cancel-safety: only the timer is raced; the final flush
                    // below writes whatever is buffered.
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    if let Err(e) = stats.flush().await {
                        warn!(error = %e, "stats flush failed; kept for the next one");
                    }
                }
                for _ in 0..5 {
                    match stats.flush().await {
                        Ok(()) => return,
                        Err(e) => {
                            warn!(error = %e, "final stats flush failed; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
            .instrument(info_span!("stats")),
        )
    }
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}
