//! Retrying Faye with capped backoff, and saying so once per failure streak.
//!
//! Every task that keeps Faye going in the background (the connector to
//! the faye-redis Redis, the engine and Bayeux subscribers) waits 0.1 s
//! after a first failure, doubling up to a cap, and logs the **first**
//! failure of a streak at warn; the attempts after it go to debug, and the
//! end of the streak is logged at info with how many attempts failed. A
//! Faye that stays away for hours thus costs one warning, not one per
//! attempt, and never a hot loop.
//!
//! Not here: what counts as a failure and what to do after one; the
//! callers decide that.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::FayeError;
use crate::backoff::Backoff;

/// The longest wait after a refusal (a server extension said no, e.g. to a
/// wildcard subscription): a refusal is a policy that changes with a
/// redeploy, not within seconds, so asking often only adds load.
pub(super) const REFUSED_MAX: Duration = Duration::from_secs(30);

/// Backoff and streak logging for one kind of attempt.
#[derive(Debug)]
pub(super) struct Retry {
    /// What is attempted, for the log ("faye handshake and subscribe").
    what: &'static str,
    /// The waits between attempts ([`crate::backoff`]).
    backoff: Backoff,
    /// Failed attempts in the current streak.
    failures: u32,
}

impl Retry {
    /// A new streak-less retry for `what`.
    pub(super) fn new(what: &'static str) -> Retry {
        Retry {
            what,
            backoff: Backoff::new(),
            failures: 0,
        }
    }

    /// Failed attempts in the current streak.
    #[cfg(test)]
    fn failures(&self) -> u32 {
        self.failures
    }

    /// An attempt failed with `error`: log it (warn if it starts a streak,
    /// debug otherwise) and return how long to wait before the next one,
    /// doubling the wait up to `max`.
    pub(super) fn failed_with_max(&mut self, error: &FayeError, max: Duration) -> Duration {
        self.failures += 1;
        let wait = self.backoff.failed_up_to(max);
        let error = chain(error);
        if self.failures == 1 {
            warn!(what = self.what, error, retry_in = ?wait,
                "faye: attempt failed; retrying with backoff (further failures at debug level until one succeeds)");
        } else {
            debug!(what = self.what, error, retry_in = ?wait, failures = self.failures,
                "faye: attempt failed again");
        }
        wait
    }

    /// [`Retry::failed_with_max`] with the usual cap, [`crate::backoff::MAX`].
    pub(super) fn failed(&mut self, error: &FayeError) -> Duration {
        self.failed_with_max(error, crate::backoff::MAX)
    }

    /// An attempt succeeded: the streak, if any, ends (logged at info) and
    /// the next failure waits [`crate::backoff::MIN`] again.
    pub(super) fn succeeded(&mut self) {
        if self.failures > 0 {
            info!(
                what = self.what,
                failed_attempts = self.failures,
                "faye: attempt succeeded after failures"
            );
        }
        self.failures = 0;
        self.backoff.succeeded();
    }

    /// Record the failure and sleep its wait unless stopped; `false` when
    /// stopped.
    pub(super) async fn pause(&mut self, error: &FayeError, stop: &CancellationToken) -> bool {
        let wait = self.failed(error);
        sleep_or_stop(stop, wait).await
    }
}

/// `error` and its sources, `: `-separated: our errors' own text does not
/// repeat their source's ("redis: Connection refused (os error 111)"). A
/// source that only repeats the text before it is left out (redis's errors
/// show their io error's text and also give it as their source).
pub(super) fn chain(error: &FayeError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        let next = e.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// Sleep `wait` unless stopped; `false` when stopped.
pub(super) async fn sleep_or_stop(stop: &CancellationToken, wait: Duration) -> bool {
    // Cancel-safety: only a sleep is raced; nothing is in flight.
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_reset_on_success() {
        let down = FayeError::NotConfigured("down".into());
        let mut r = Retry::new("test");
        let waits: Vec<u128> = (0..8).map(|_| r.failed(&down).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(r.failures(), 8);
        r.succeeded();
        assert_eq!(r.failures(), 0);
        assert_eq!(r.failed(&down), crate::backoff::MIN);
        let refused: Vec<u64> = (0..10)
            .map(|_| r.failed_with_max(&down, REFUSED_MAX).as_secs())
            .collect();
        assert_eq!(*refused.last().unwrap(), 30);
    }

    #[test]
    fn errors_are_logged_with_their_sources() {
        let e = FayeError::from(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        )));
        assert_eq!(chain(&e), "redis: refused");
    }
}
