//! The limits every backend shares, as configuration data: how fast (`rate` messages per second
//! with a `burst` above it), how many batches at once (`concurrency`), how long one call may
//! take (`timeout`), and how failures are retried (`retry` schedule, `jitter`, and
//! `retry_after_max`, the longest a provider's `Retry-After` may push a retry out).
//!
//! Each backend supplies its defaults ([`Limits::or`] fills what the configuration leaves
//! unset); [`Limited`] enforces rate, burst, concurrency and timeout around any sender; the
//! dispatcher applies the [`RetryPolicy`] of the backend that had the last word.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

use super::{BoxFuture, Message, Receipt, SendError, Sender};
use crate::domain::Span;

/// The keys of the limits block, as they appear beside a backend's own keys.
pub const KEYS: [&str; 7] = [
    "rate",
    "burst",
    "concurrency",
    "timeout",
    "retry",
    "jitter",
    "retry_after_max",
];

/// A backend's limits; unset values take the backend's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Messages per second, sustained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Messages that may go at once above the rate after a quiet spell [default: a tenth of a
    /// second's worth of the rate].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Batches in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// The longest one call to the backend may take; a call that takes longer is a transient
    /// failure of every message in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Span>,
    /// Pauses before each retry [default: dispatch.retry].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Vec<Span>>,
    /// Each pause is lengthened or shortened by up to this fraction (0.2 = ±20 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
    /// A provider's `Retry-After` is honoured up to this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_max: Option<Span>,
}

impl Limits {
    /// These limits, with what they leave unset taken from `defaults`.
    pub fn or(&self, defaults: &Limits) -> Limits {
        Limits {
            rate: self.rate.or(defaults.rate),
            burst: self.burst.or(defaults.burst),
            concurrency: self.concurrency.or(defaults.concurrency),
            timeout: self.timeout.or(defaults.timeout),
            retry: self.retry.clone().or_else(|| defaults.retry.clone()),
            jitter: self.jitter.or(defaults.jitter),
            retry_after_max: self.retry_after_max.or(defaults.retry_after_max),
        }
    }

    /// Checks what serde cannot; the message names the key below `senders.NAME`.
    pub fn validate(&self) -> Result<(), String> {
        if self.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err("rate must be a positive number of messages per second".into());
        }
        if self.concurrency == Some(0) {
            return Err("concurrency must be at least 1".into());
        }
        if self.timeout.is_some_and(|t| t.secs() <= 0) {
            return Err("timeout must be longer than 0s".into());
        }
        if self.jitter.is_some_and(|j| !(j.is_finite() && (0.0..1.0).contains(&j))) {
            return Err("jitter must be a fraction from 0 up to (not including) 1, such as 0.2".into());
        }
        Ok(())
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            schedule: self.retry.clone(),
            jitter: self.jitter.unwrap_or(0.0),
            retry_after_max: self.retry_after_max,
        }
    }
}

/// How the dispatcher retries what a backend failed transiently.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryPolicy {
    /// The backend's own schedule; `None` takes the dispatcher's.
    pub schedule: Option<Vec<Span>>,
    /// ± fraction applied to each pause.
    pub jitter: f64,
    /// Clamp on a provider's `Retry-After`.
    pub retry_after_max: Option<Span>,
}

/// How many daemons share each backend's rate: each one takes its part, so the gateway sees
/// the configured rate in all however many run. One per process, set from the live daemons.
#[derive(Debug, Clone)]
pub struct Share(Arc<std::sync::atomic::AtomicU32>);

impl Default for Share {
    fn default() -> Self {
        Share(Arc::new(std::sync::atomic::AtomicU32::new(1)))
    }
}

impl Share {
    /// `n` daemons (at least one) share the rates from now on.
    pub fn set(&self, n: u64) {
        let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        self.0.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::Relaxed).max(1)
    }
}

/// A sender held to its limits.
pub struct Limited {
    inner: Arc<dyn Sender>,
    pace: Option<Pace>,
    permits: Option<Semaphore>,
    timeout: Option<Duration>,
}

/// Generic cell rate pacing: a chunk of a batch may start once the theoretical arrival time of
/// the messages before it, less the burst allowance, has come. Batches are cut into chunks of
/// at most the burst, so in any second the backend is handed at most rate + burst messages
/// however large a batch is. Shared by `n` daemons, each goes at a rate `n` times slower with
/// an `n`th of the burst (the same allowance in time).
struct Pace {
    interval: Duration,
    tolerance: Duration,
    chunk: usize,
    share: Share,
    tat: Mutex<Instant>,
}

impl Limited {
    /// Wraps `inner` in the limits that are set; returns it as it is when none is.
    pub fn wrap(inner: Arc<dyn Sender>, limits: &Limits, share: &Share) -> Arc<dyn Sender> {
        let pace = limits.rate.map(|rate| {
            let interval = Duration::from_secs_f64(1.0 / rate);
            // Unset, the burst is a tenth of a second's worth: batches go in chunks that size.
            let burst = limits
                .burst
                .unwrap_or_else(|| (rate / 10.0).ceil().clamp(1.0, f64::from(u32::MAX)) as u32);
            Pace {
                interval,
                tolerance: interval * burst,
                chunk: usize::try_from(burst).unwrap_or(usize::MAX).max(1),
                share: share.clone(),
                tat: Mutex::new(Instant::now()),
            }
        });
        let permits = limits.concurrency.map(Semaphore::new);
        let timeout = limits.timeout.map(|t| Duration::from_secs(t.secs().unsigned_abs()));
        if pace.is_none() && permits.is_none() && timeout.is_none() {
            return inner;
        }
        Arc::new(Limited {
            inner,
            pace,
            permits,
            timeout,
        })
    }
}

impl Pace {
    /// When a batch of `n` messages may start; books its place.
    async fn book(&self, n: usize) -> Instant {
        let interval = self.interval * self.share.get();
        let mut tat = self.tat.lock().await;
        let now = Instant::now();
        let start = now.max(tat.checked_sub(self.tolerance).unwrap_or(now));
        *tat = (*tat).max(now) + interval * u32::try_from(n).unwrap_or(u32::MAX);
        start
    }

    /// Messages per chunk: this daemon's part of the burst.
    fn chunk(&self) -> usize {
        self.chunk.div_ceil(self.share.get() as usize).max(1)
    }
}

impl Sender for Limited {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        self.inner.check()
    }

    fn send<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Result<Receipt, SendError>>> {
        Box::pin(async move {
            // Held until the call returns; a closed semaphore cannot happen (it is never closed).
            let _permit = match &self.permits {
                Some(p) => p.acquire().await.ok(),
                None => None,
            };
            let Some(pace) = &self.pace else {
                return self.call(batch).await;
            };
            // Each chunk waits for its turn and goes; the chunks of one batch are in flight
            // together, each booked in order.
            let chunks = batch.chunks(pace.chunk()).map(|chunk| async move {
                tokio::time::sleep_until(pace.book(chunk.len()).await).await;
                self.call(chunk).await
            });
            futures_util::future::join_all(chunks)
                .await
                .into_iter()
                .flatten()
                .collect()
        })
    }
}

impl Limited {
    /// One call to the backend, within the timeout. The wait for the rate may have outlasted
    /// a deadline: what is late by now is not handed over.
    async fn call(&self, batch: &[Message]) -> Vec<Result<Receipt, SendError>> {
        let send = super::send_on_time(self.inner.as_ref(), batch);
        match self.timeout {
            None => send.await,
            Some(limit) => match tokio::time::timeout(limit, send).await {
                Ok(results) => results,
                Err(_) => {
                    let error = SendError::Uncertain {
                        message: format!("{} did not answer within {} s", self.inner.name(), limit.as_secs()),
                        retry_after: Some(super::web::BUSY_FLOOR),
                    };
                    vec![Err(error); batch.len()]
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records when each call started (tokio's paused clock) and answers after `delay`.
    struct Recorder {
        delay: Duration,
        starts: std::sync::Mutex<Vec<Instant>>,
        messages: std::sync::Mutex<usize>,
    }

    impl Sender for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }
        fn send<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Result<Receipt, SendError>>> {
            Box::pin(async move {
                self.starts.lock().unwrap().push(Instant::now());
                *self.messages.lock().unwrap() += batch.len();
                tokio::time::sleep(self.delay).await;
                vec![Ok(Receipt::default()); batch.len()]
            })
        }
    }

    fn recorder(delay: Duration) -> Arc<Recorder> {
        Arc::new(Recorder {
            delay,
            starts: std::sync::Mutex::new(Vec::new()),
            messages: std::sync::Mutex::new(0),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn rate_paces_batches_and_burst_lets_the_first_ones_through() {
        let inner = recorder(Duration::ZERO);
        let limits = Limits {
            rate: Some(10.0),
            burst: Some(10),
            ..Limits::default()
        };
        let sender = Limited::wrap(inner.clone(), &limits, &Share::default());
        let t0 = Instant::now();
        let batch = super::super::sample_sms(10);
        for _ in 0..4 {
            sender.send(&batch).await;
        }
        let offsets: Vec<u64> = inner
            .starts
            .lock()
            .unwrap()
            .iter()
            .map(|s| (*s - t0).as_millis() as u64)
            .collect();
        // Ten a second with ten in hand: the first two batches go at once, then one a second.
        assert_eq!(offsets, [0, 0, 1000, 2000]);
    }

    #[tokio::test(start_paused = true)]
    async fn daemons_sharing_a_rate_each_take_their_part() {
        let inner = recorder(Duration::ZERO);
        let limits = Limits {
            rate: Some(30.0),
            burst: Some(30),
            ..Limits::default()
        };
        let share = Share::default();
        let sender = Limited::wrap(inner.clone(), &limits, &share);
        // Three daemons: ten a second each, in chunks of ten.
        share.set(3);
        let t0 = Instant::now();
        let batch = super::super::sample_sms(10);
        for _ in 0..4 {
            sender.send(&batch).await;
        }
        let offsets: Vec<u64> = inner
            .starts
            .lock()
            .unwrap()
            .iter()
            .map(|s| (*s - t0).as_millis() as u64)
            .collect();
        assert_eq!(offsets, [0, 0, 1000, 2000]);
        // One left: the whole rate again, thirty a second, after what was booked before.
        share.set(1);
        let t1 = Instant::now();
        for _ in 0..3 {
            sender.send(&super::super::sample_sms(30)).await;
        }
        let late: Vec<u64> = inner.starts.lock().unwrap()[4..]
            .iter()
            .map(|s| (*s - t1).as_millis() as u64)
            .collect();
        assert_eq!(late, [1000, 2000, 3000]);
        assert_eq!(share.get(), 1);
        share.set(0);
        assert_eq!(share.get(), 1, "never fewer than one");
    }

    /// Messages per simulated second never exceed rate + burst, however the batches are cut.
    #[tokio::test(start_paused = true)]
    async fn in_any_second_a_backend_is_handed_at_most_rate_plus_burst() {
        struct Stamps(std::sync::Mutex<Vec<Instant>>);
        impl Sender for Stamps {
            fn name(&self) -> &str {
                "stamps"
            }
            fn send<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Result<Receipt, SendError>>> {
                Box::pin(async move {
                    let now = Instant::now();
                    self.0.lock().unwrap().extend(batch.iter().map(|_| now));
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    vec![Ok(Receipt::default()); batch.len()]
                })
            }
        }
        let (rate, burst) = (20.0, 5_u32);
        let inner = Arc::new(Stamps(std::sync::Mutex::new(Vec::new())));
        let limits = Limits {
            rate: Some(rate),
            burst: Some(burst),
            concurrency: Some(3),
            ..Limits::default()
        };
        let sender = Limited::wrap(inner.clone(), &limits, &Share::default());
        let t0 = Instant::now();
        let big = super::super::sample_sms(137);
        let small = super::super::sample_sms(3);
        tokio::join!(sender.send(&big), sender.send(&small), sender.send(&big));
        let stamps: Vec<Duration> = inner.0.lock().unwrap().iter().map(|s| *s - t0).collect();
        assert_eq!(stamps.len(), 137 * 2 + 3);
        let most = stamps
            .iter()
            .map(|from| {
                stamps
                    .iter()
                    .filter(|t| **t >= *from && **t < *from + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap();
        assert!(most <= rate as usize + burst as usize, "{most} in one second");
        // And the rate is used: the whole lot takes about (277 - 25) / 20 s, not much more.
        let last = stamps.iter().max().unwrap().as_secs_f64();
        assert!(last < (277.0 - 25.0) / rate + 1.0, "took {last} s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_backend_times_out_as_a_transient_failure() {
        let limits = Limits {
            timeout: Some(Span::from_secs(2)),
            ..Limits::default()
        };
        let sender = Limited::wrap(recorder(Duration::from_secs(5)), &limits, &Share::default());
        let results = sender.send(&super::super::sample_sms(3)).await;
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(|r| matches!(r, Err(e) if e.is_transient())));
    }

    #[tokio::test(start_paused = true)]
    async fn what_the_rate_holds_past_its_deadline_is_not_sent() {
        let inner = recorder(Duration::ZERO);
        let limits = Limits {
            rate: Some(1.0),
            ..Limits::default()
        };
        let sender = Limited::wrap(inner.clone(), &limits, &Share::default());
        let mut batch = super::super::sample_sms(2);
        // The first two messages use up two seconds of the rate; the next batch has a
        // deadline one second away, so by its turn one of its messages is late.
        sender.send(&batch).await;
        batch[0].not_after = Some(Instant::now() + Duration::from_secs(1));
        batch[1].not_after = Some(Instant::now() + Duration::from_secs(10));
        let results = sender.send(&batch).await;
        assert!(matches!(results[0], Err(SendError::TooLate)), "{results:?}");
        assert!(results[1].is_ok());
        assert_eq!(
            *inner.messages.lock().unwrap(),
            3,
            "the late message never reached the backend"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_holds_calls_in_flight_to_the_limit() {
        let inner = recorder(Duration::from_secs(1));
        let limits = Limits {
            concurrency: Some(2),
            ..Limits::default()
        };
        let sender = Limited::wrap(inner.clone(), &limits, &Share::default());
        let t0 = Instant::now();
        let batch = super::super::sample_sms(1);
        tokio::join!(
            sender.send(&batch),
            sender.send(&batch),
            sender.send(&batch),
            sender.send(&batch)
        );
        let offsets: Vec<u64> = inner
            .starts
            .lock()
            .unwrap()
            .iter()
            .map(|s| (*s - t0).as_secs())
            .collect();
        assert_eq!(offsets, [0, 0, 1, 1]);
    }

    #[test]
    fn set_values_win_over_backend_defaults_and_bad_ones_are_named() {
        let defaults = Limits {
            rate: Some(50.0),
            jitter: Some(0.2),
            ..Limits::default()
        };
        let mine = Limits {
            rate: Some(5.0),
            ..Limits::default()
        };
        let merged = mine.or(&defaults);
        assert_eq!((merged.rate, merged.jitter), (Some(5.0), Some(0.2)));
        for (bad, needle) in [
            (
                Limits {
                    rate: Some(0.0),
                    ..Limits::default()
                },
                "rate",
            ),
            (
                Limits {
                    concurrency: Some(0),
                    ..Limits::default()
                },
                "concurrency",
            ),
            (
                Limits {
                    jitter: Some(1.5),
                    ..Limits::default()
                },
                "jitter",
            ),
        ] {
            assert!(bad.validate().unwrap_err().contains(needle));
        }
    }
}
