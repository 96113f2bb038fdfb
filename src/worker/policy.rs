//! Per-class job behaviour from the `[[classes]]` tables of the config file:
//! retries, node-resque's JobLock / QueueLock / DelayQueueLock, and
//! actionHero recurring tasks (`frequency`).
//!
//! ```toml
//! [[classes]]
//! classes = ["SendEmail", "Mail::*"]
//! retry = { attempts = 3, backoff = ["5s", "1m"] }   # or backoff = "exponential", base = "5s", cap = "1h", jitter = true
//! job_lock = { timeout = "1h", re_enqueue = true }
//! queue_lock = { timeout = "1h" }
//! delay_queue_lock = true
//! recurring = { frequency = "60s", queue = "default", style = "actionhero7" }
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::config::parse_duration;
use crate::glob::fnmatch;

/// How long between attempts.
#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    /// The n-th retry waits the n-th delay (the last one repeats).
    List(Vec<Duration>),
    /// `base × 2ⁿ`, at most `cap`, optionally ±50 % jitter.
    Exponential {
        /// First delay.
        base: Duration,
        /// Longest delay.
        cap: Duration,
        /// Spread retries of many jobs.
        jitter: bool,
    },
}

/// Retries through the delayed queue, counted in node-resque's Retry plugin
/// keys so attempts keep counting when a job moves between Node and here.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Attempts in all (node-resque's `retryLimit`): 1 means no retry.
    pub attempts: u32,
    /// Delays.
    pub backoff: Backoff,
}

impl Retry {
    /// The delay (whole seconds, at least 1) before each retry, first retry
    /// first; `attempts - 1` entries (at least one).
    pub fn delays(&self) -> Vec<u64> {
        let n = self.attempts.saturating_sub(1).max(1) as usize;
        (0..n)
            .map(|i| {
                let d = match &self.backoff {
                    Backoff::List(list) => list[i.min(list.len() - 1)],
                    Backoff::Exponential { base, cap, jitter } => {
                        let exp = base
                            .saturating_mul(1u32.checked_shl(i as u32).unwrap_or(u32::MAX))
                            .min(*cap);
                        if *jitter {
                            // ±50 %, from the clock's nanoseconds: spread, not security.
                            let nanos = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.subsec_nanos())
                                .unwrap_or(0);
                            let f = 0.5
                                + ((nanos
                                    .wrapping_mul(2654435761)
                                    .wrapping_add(i as u32 * 40503))
                                    % 1000) as f64
                                    / 1000.0;
                            exp.mul_f64(f)
                        } else {
                            exp
                        }
                    }
                };
                d.as_secs().max(1)
            })
            .collect()
    }
}

/// node-resque's JobLock: one identical job (class, queue, args) running.
#[derive(Debug, Clone, PartialEq)]
pub struct JobLock {
    /// Lock TTL: a holder that dies frees it after this.
    pub timeout: Duration,
    /// When the lock is held: try again in a second (true) or drop the job.
    pub re_enqueue: bool,
}

/// How a recurring task's payload is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecurringStyle {
    /// actionHero 7 (node-resque 0.2): `args` an object, namespaced
    /// `timestamps:` members.
    ActionHero7,
    /// Modern actionHero: `args` `[{}]`, plain members.
    Modern,
}

/// An actionHero recurring task: re-enqueued `frequency` after every run.
#[derive(Debug, Clone, PartialEq)]
pub struct Recurring {
    /// Delay between runs.
    pub frequency: Duration,
    /// Its queue.
    pub queue: String,
    /// Payload style.
    pub style: RecurringStyle,
}

/// What applies to some classes.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPolicy {
    /// Names or glob patterns.
    pub classes: Vec<String>,
    /// Retries.
    pub retry: Option<Retry>,
    /// JobLock.
    pub job_lock: Option<JobLock>,
    /// QueueLock TTL.
    pub queue_lock: Option<Duration>,
    /// DelayQueueLock.
    pub delay_queue_lock: bool,
    /// actionHero recurring task (exact class names only).
    pub recurring: Option<Recurring>,
}

impl ClassPolicy {
    /// The payload of one link of a recurring task's chain.
    pub fn recurring_payload(class: &str, r: &Recurring) -> String {
        match r.style {
            RecurringStyle::ActionHero7 => crate::resque::payload::encode_job_verbatim_args(
                class,
                &r.queue,
                &serde_json::json!({}),
            ),
            RecurringStyle::Modern => {
                crate::resque::payload::encode_job(class, &r.queue, serde_json::json!([{}]))
            }
        }
    }
}

/// Every class policy; the first whose classes match applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policies(pub Vec<ClassPolicy>);

impl Policies {
    /// The policy of `class`.
    pub fn of(&self, class: &str) -> Option<&ClassPolicy> {
        self.0
            .iter()
            .find(|p| p.classes.iter().any(|c| c == class || fnmatch(c, class)))
    }

    /// Whether any policy exists (the worker skips the lookups otherwise).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    classes: Vec<String>,
    retry: Option<RawRetry>,
    job_lock: Option<RawLock>,
    queue_lock: Option<RawLock>,
    #[serde(default)]
    delay_queue_lock: bool,
    recurring: Option<RawRecurring>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: u32,
    backoff: Option<toml::Value>,
    base: Option<String>,
    cap: Option<String>,
    #[serde(default)]
    jitter: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLock {
    timeout: Option<String>,
    re_enqueue: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecurring {
    frequency: String,
    queue: Option<String>,
    style: Option<String>,
}

/// Default lock TTL, as node-resque's plugins.
const LOCK_TIMEOUT: Duration = Duration::from_secs(3600);

impl ClassPolicy {
    /// Validate a `[[classes]]` table; the error says what is wrong.
    pub fn from_toml(value: toml::Value, source: &str) -> Result<ClassPolicy, String> {
        let raw: RawPolicy = value
            .try_into()
            .map_err(|e: toml::de::Error| format!("[[classes]] in {source}: {}", e.message()))?;
        let who = format!("[[classes]] {:?} in {source}", raw.classes);
        if raw.classes.is_empty() {
            return Err(format!("{who}: `classes` is empty"));
        }
        let dur = |what: &str, text: &str| {
            parse_duration(text)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("{who}: {what} {text:?} is not a positive duration"))
        };
        let retry = match raw.retry {
            None => None,
            Some(r) => {
                if r.attempts == 0 {
                    return Err(format!("{who}: retry.attempts must be at least 1"));
                }
                let backoff = match &r.backoff {
                    None => Backoff::List(vec![Duration::from_secs(5)]),
                    Some(toml::Value::Array(list)) if !list.is_empty() => Backoff::List(
                        list.iter()
                            .map(|v| {
                                dur(
                                    "a retry.backoff delay",
                                    v.as_str().unwrap_or(&v.to_string()),
                                )
                            })
                            .collect::<Result<_, _>>()?,
                    ),
                    Some(toml::Value::String(s)) if s == "exponential" => Backoff::Exponential {
                        base: dur("retry.base", r.base.as_deref().unwrap_or("5s"))?,
                        cap: dur("retry.cap", r.cap.as_deref().unwrap_or("1h"))?,
                        jitter: r.jitter,
                    },
                    Some(other) => {
                        return Err(format!(
                            "{who}: retry.backoff {other} must be a list of delays or \"exponential\""
                        ));
                    }
                };
                Some(Retry {
                    attempts: r.attempts,
                    backoff,
                })
            }
        };
        let lock = |l: &RawLock, what: &str| -> Result<Duration, String> {
            l.timeout
                .as_deref()
                .map(|t| dur(what, t))
                .unwrap_or(Ok(LOCK_TIMEOUT))
        };
        let job_lock = match &raw.job_lock {
            None => None,
            Some(l) => Some(JobLock {
                timeout: lock(l, "job_lock.timeout")?,
                re_enqueue: l.re_enqueue.unwrap_or(true),
            }),
        };
        let queue_lock = match &raw.queue_lock {
            None => None,
            Some(l) => Some(lock(l, "queue_lock.timeout")?),
        };
        let recurring = match raw.recurring {
            None => None,
            Some(r) => {
                if raw.classes.iter().any(|c| crate::glob::is_pattern(c)) {
                    return Err(format!("{who}: recurring tasks need exact class names"));
                }
                let style = match r.style.as_deref() {
                    None | Some("actionhero7") => RecurringStyle::ActionHero7,
                    Some("modern") => RecurringStyle::Modern,
                    Some(other) => {
                        return Err(format!(
                            "{who}: recurring.style {other:?}: expected actionhero7 or modern"
                        ));
                    }
                };
                Some(Recurring {
                    frequency: dur("recurring.frequency", &r.frequency)?,
                    queue: r.queue.unwrap_or_else(|| "default".into()),
                    style,
                })
            }
        };
        Ok(ClassPolicy {
            classes: raw.classes,
            retry,
            job_lock,
            queue_lock,
            delay_queue_lock: raw.delay_queue_lock,
            recurring,
        })
    }
}

/// The args part of a job's lock keys: `JSON.stringify(args)` of the args
/// as written (an object for actionHero 7 jobs, an array otherwise).
pub fn lock_args(job: &crate::resque::Job) -> String {
    match (job.args_object, job.args.first()) {
        (true, Some(obj)) => obj.to_string(),
        _ => crate::resque::payload::args_json(&job.args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Result<ClassPolicy, String> {
        ClassPolicy::from_toml(toml::from_str(text).unwrap(), "test")
    }

    #[test]
    fn parses_every_part() {
        let p = policy(
            "classes = [\"A\"]\nretry = { attempts = 3, backoff = [\"5s\", \"1m\"] }\njob_lock = {}\nqueue_lock = { timeout = \"10m\" }\ndelay_queue_lock = true\nrecurring = { frequency = \"60s\" }\n",
        )
        .unwrap();
        assert_eq!(p.retry.as_ref().unwrap().delays(), [5, 60]);
        assert_eq!(
            p.job_lock,
            Some(JobLock {
                timeout: LOCK_TIMEOUT,
                re_enqueue: true
            })
        );
        assert_eq!(p.queue_lock, Some(Duration::from_secs(600)));
        assert_eq!(
            p.recurring.as_ref().unwrap().style,
            RecurringStyle::ActionHero7
        );
        assert_eq!(
            ClassPolicy::recurring_payload("tick", p.recurring.as_ref().unwrap()),
            r#"{"class":"tick","queue":"default","args":{}}"#
        );
    }

    #[test]
    fn exponential_backoff_is_capped() {
        let r = Retry {
            attempts: 6,
            backoff: Backoff::Exponential {
                base: Duration::from_secs(2),
                cap: Duration::from_secs(10),
                jitter: false,
            },
        };
        assert_eq!(r.delays(), [2, 4, 8, 10, 10]);
        let j = Retry {
            attempts: 4,
            backoff: Backoff::Exponential {
                base: Duration::from_secs(100),
                cap: Duration::from_secs(1000),
                jitter: true,
            },
        };
        for (d, base) in j.delays().iter().zip([100u64, 200, 400]) {
            assert!(*d >= base / 2 && *d <= base * 3 / 2, "{d} vs {base}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(
            policy("classes = [\"A\"]\nretry = { attempts = 0 }\n")
                .unwrap_err()
                .contains("attempts")
        );
        assert!(
            policy("classes = [\"A*\"]\nrecurring = { frequency = \"1m\" }\n")
                .unwrap_err()
                .contains("exact")
        );
        assert!(
            policy("classes = [\"A\"]\nretry = { attempts = 2, backoff = \"soon\" }\n")
                .unwrap_err()
                .contains("backoff")
        );
    }
}
