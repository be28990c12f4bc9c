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

/// `attempts` counts the attempt that just failed. `schedule[i]` is the pause after attempt
/// `i + 1`; a provider's `Retry-After` lengthens the pause, never shortens it. A retry that
/// would start at or after the deadline is not made.
pub fn after_failure(
    err: &SendError,
    attempts: u32,
    schedule: &[Span],
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
) -> AfterFailure {
    if err.is_permanent() {
        return AfterFailure::Fail(err.to_string());
    }
    let Some(pause) = schedule.get(attempts.saturating_sub(1) as usize) else {
        return AfterFailure::Fail(format!("gave up after {attempts} attempts: {err}"));
    };
    let mut delay = pause.delta();
    if let Some(after) = err.retry_after().and_then(|d| TimeDelta::from_std(d).ok()) {
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
        assert_eq!(
            after_failure(&transient(None), 1, &schedule, now, deadline),
            AfterFailure::RetryAt(now + TimeDelta::seconds(30))
        );
        assert_eq!(
            after_failure(&transient(None), 2, &schedule, now, deadline),
            AfterFailure::RetryAt(now + TimeDelta::minutes(10))
        );
        assert!(matches!(
            after_failure(&transient(None), 3, &schedule, now, deadline),
            AfterFailure::Fail(_)
        ));
        assert_eq!(
            after_failure(&transient(Some(120)), 1, &schedule, now, deadline),
            AfterFailure::RetryAt(now + TimeDelta::minutes(2))
        );
        assert!(matches!(
            after_failure(&SendError::Permanent { message: "invalid number".into() }, 1, &schedule, now, deadline),
            AfterFailure::Fail(m) if m == "invalid number"
        ));
        let close = now + TimeDelta::seconds(20);
        assert!(matches!(
            after_failure(&transient(None), 1, &schedule, now, close),
            AfterFailure::Expire(_)
        ));
    }
}
