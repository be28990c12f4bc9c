//! What to do after a failed attempt: pure, so the schedule is tested without a clock.

use chrono::{DateTime, TimeDelta, Utc};

use crate::channels::SendError;
use crate::domain::Span;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    RetryAt(DateTime<Utc>),
    Fail(String),
    Expire(String),
}

/// How a backend's failures are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry<'a> {
    /// `schedule[i]` is the pause after attempt `i + 1`.
    pub schedule: &'a [Span],
    /// Each pause is stretched or shrunk by up to this fraction.
    pub jitter: f64,
    /// A provider's `Retry-After` is honoured up to this long.
    pub retry_after_max: Option<Span>,
}

/// `attempts` counts the attempt that just failed; `spread` in [-1, 1] picks where in the
/// jitter band this retry falls. A provider's `Retry-After` (clamped) lengthens the pause,
/// never shortens it. A retry that would start at or after the deadline is not made.
pub fn after_failure(
    err: &SendError,
    attempts: u32,
    retry: &Retry<'_>,
    spread: f64,
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
) -> AfterFailure {
    if matches!(err, SendError::TooLate) {
        return AfterFailure::Expire(err.to_string());
    }
    if err.is_permanent() {
        return AfterFailure::Fail(err.to_string());
    }
    let Some(pause) = retry.schedule.get(attempts.saturating_sub(1) as usize) else {
        return AfterFailure::Fail(format!("gave up after {attempts} attempts: {err}"));
    };
    let factor = 1.0 + retry.jitter * spread.clamp(-1.0, 1.0);
    let mut delay = TimeDelta::milliseconds((pause.secs() as f64 * 1000.0 * factor).round() as i64);
    if let Some(mut after) = err.retry_after().and_then(|d| TimeDelta::from_std(d).ok()) {
        if let Some(max) = retry.retry_after_max {
            after = after.min(max.delta());
        }
        delay = delay.max(after);
    }
    let at = now + delay;
    if at >= deadline {
        AfterFailure::Expire(format!("next attempt would be after the deadline: {err}"))
    } else {
        AfterFailure::RetryAt(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::time::Duration;

    fn transient(retry_after: Option<u64>) -> SendError {
        SendError::Transient {
            message: "busy".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn schedule_then_give_up() {
        let now = Utc.with_ymd_and_hms(2015, 4, 17, 0, 0, 0).unwrap();
        let deadline = now + TimeDelta::hours(10);
        let schedule = ["30s".parse().unwrap(), "10m".parse().unwrap()];
        let retry = Retry {
            schedule: &schedule,
            jitter: 0.0,
            retry_after_max: None,
        };
        let after = |err: &SendError, attempts, deadline| after_failure(err, attempts, &retry, 0.7, now, deadline);
        assert_eq!(
            after(&transient(None), 1, deadline),
            AfterFailure::RetryAt(now + TimeDelta::seconds(30))
        );
        assert_eq!(
            after(&transient(None), 2, deadline),
            AfterFailure::RetryAt(now + TimeDelta::minutes(10))
        );
        assert!(matches!(after(&transient(None), 3, deadline), AfterFailure::Fail(_)));
        assert_eq!(
            after(&transient(Some(120)), 1, deadline),
            AfterFailure::RetryAt(now + TimeDelta::minutes(2))
        );
        assert!(matches!(
            after(&SendError::Permanent { message: "invalid number".into() }, 1, deadline),
            AfterFailure::Fail(m) if m == "invalid number"
        ));
        let close = now + TimeDelta::seconds(20);
        assert!(matches!(after(&transient(None), 1, close), AfterFailure::Expire(_)));
    }

    #[test]
    fn jitter_spreads_pauses_and_retry_after_is_clamped() {
        let now = Utc.with_ymd_and_hms(2015, 4, 17, 0, 0, 0).unwrap();
        let deadline = now + TimeDelta::hours(10);
        let schedule = ["100s".parse().unwrap()];
        let retry = Retry {
            schedule: &schedule,
            jitter: 0.2,
            retry_after_max: Some("5m".parse().unwrap()),
        };
        for (spread, seconds) in [(-1.0, 80), (0.0, 100), (0.5, 110), (1.0, 120), (7.0, 120)] {
            assert_eq!(
                after_failure(&transient(None), 1, &retry, spread, now, deadline),
                AfterFailure::RetryAt(now + TimeDelta::seconds(seconds)),
                "spread {spread}"
            );
        }
        // A day's Retry-After is held to the five-minute clamp.
        assert_eq!(
            after_failure(&transient(Some(86_400)), 1, &retry, 0.0, now, deadline),
            AfterFailure::RetryAt(now + TimeDelta::minutes(5))
        );
    }
}
