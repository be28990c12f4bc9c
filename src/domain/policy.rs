//! What the operator's policy asks of every window, and what the planner decided about each
//! notice: the vocabulary shared by the planner, which makes decisions, and storage, which
//! records them.
//!
//! Pure data.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::{Audience, Notice, QuietHours, Span};

/// Reminder offsets and quiet hours for one audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudiencePolicy {
    reminders: Vec<Span>,
    quiet_hours: Option<QuietHours>,
}

impl AudiencePolicy {
    /// Offsets are kept largest first, without duplicates. A reminder comes before the start:
    /// an offset of zero or less is refused.
    pub fn new(mut reminders: Vec<Span>) -> Result<AudiencePolicy, PolicyError> {
        if let Some(bad) = reminders.iter().find(|s| s.secs() <= 0) {
            return Err(PolicyError::ReminderNotBeforeStart(*bad));
        }
        reminders.sort_by(|a, b| b.cmp(a));
        reminders.dedup();
        Ok(AudiencePolicy {
            reminders,
            quiet_hours: None,
        })
    }

    /// The same, with routine notices kept out of `quiet` in each recipient's zone.
    pub fn with_quiet_hours(self, quiet_hours: Option<QuietHours>) -> AudiencePolicy {
        AudiencePolicy { quiet_hours, ..self }
    }

    pub fn reminders(&self) -> &[Span] {
        &self.reminders
    }

    pub fn quiet_hours(&self) -> Option<QuietHours> {
        self.quiet_hours
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub customers: AudiencePolicy,
    pub billers: AudiencePolicy,
    /// How long after the end a `completed` notice is still worth sending.
    pub completed_grace: Span,
}

impl Policy {
    pub fn for_audience(&self, audience: Audience) -> &AudiencePolicy {
        match audience {
            Audience::Customer => &self.customers,
            Audience::Biller => &self.billers,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        let positive = |hours: &[i64], quiet_hours| AudiencePolicy {
            reminders: hours.iter().map(|h| Span::hours(*h)).collect(),
            quiet_hours,
        };
        let night = QuietHours::new(
            chrono::NaiveTime::from_hms_opt(21, 0, 0).unwrap_or_default(),
            chrono::NaiveTime::from_hms_opt(7, 0, 0).unwrap_or_default(),
        )
        .ok();
        Policy {
            customers: positive(&[72, 24, 1], night),
            billers: positive(&[168, 72, 24, 1], None),
            completed_grace: Span::hours(24),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("a reminder must come before the start, not at it ({0})")]
    ReminderNotBeforeStart(Span),
}

/// Which recipients of an audience a notice is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reach {
    /// Everyone who is subscribed and not opted out.
    Eligible,
    /// Only those who were already told something about this window.
    AlreadyTold,
    /// Only those who were not: after a change, they get the current facts, not a correction.
    NotYetTold,
}

impl Reach {
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::Eligible => "eligible",
            Reach::AlreadyTold => "already_told",
            Reach::NotYetTold => "not_yet_told",
        }
    }
}

impl std::str::FromStr for Reach {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Reach::Eligible, Reach::AlreadyTold, Reach::NotYetTold]
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown reach '{s}'"))
    }
}

/// What happened to a (revision, notice, audience): recorded once in the notice log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Due now: fan it out.
    Planned,
    /// Its time had passed before the current schedule existed.
    Skipped,
    /// Overtaken by a later notice that is due at the same time.
    Superseded,
    /// Its deadline passed before it could be planned.
    Expired,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Planned => "planned",
            Outcome::Skipped => "skipped",
            Outcome::Superseded => "superseded",
            Outcome::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub revision: u32,
    pub notice: Notice,
    pub audience: Audience,
    pub outcome: Outcome,
    pub reach: Reach,
    pub due_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    /// Earlier notices of the same revision and audience whose unsent deliveries this one
    /// makes pointless (catch-up: only the latest reminder goes out).
    pub supersedes: Vec<Notice>,
}

/// The (notice, audience) pairs of the window's current revision already in the notice log.
pub type Decided = HashSet<(Notice, Audience)>;
