//! Capped exponential backoff, the one retry rhythm of the process: after a
//! failure wait 100 ms, doubling up to a cap (5 s unless the caller says
//! otherwise), and start again from 100 ms after a success. Redis or Faye
//! coming back is noticed within the cap; one that stays away costs an
//! attempt per cap, never a hot loop.

use std::time::Duration;

/// The first wait.
pub const MIN: Duration = Duration::from_millis(100);
/// The usual cap.
pub const MAX: Duration = Duration::from_secs(5);

/// The waits of one kind of attempt.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

impl Backoff {
    /// A backoff whose next wait is [`MIN`].
    pub const fn new() -> Backoff {
        Backoff { next: MIN }
    }

    /// An attempt failed: the wait before the next one, capped at [`MAX`].
    pub fn failed(&mut self) -> Duration {
        self.failed_up_to(MAX)
    }

    /// An attempt failed: the wait before the next one, capped at `max`.
    pub fn failed_up_to(&mut self, max: Duration) -> Duration {
        let wait = self.next.min(max);
        self.next = (self.next * 2).min(max);
        wait
    }

    /// The wait the next failure would return (for log lines).
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// An attempt succeeded: the next failure waits [`MIN`] again.
    pub fn succeeded(&mut self) {
        self.next = MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_starts_over_after_a_success() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..8).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.succeeded();
        assert_eq!(b.failed(), MIN);
        assert_eq!(
            b.failed_up_to(Duration::from_millis(150)),
            Duration::from_millis(150)
        );
    }
}
