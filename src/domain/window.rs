//! Maintenance windows and their lifecycle.
//!
//! Pure. Every change is a method that takes `now` and returns the next version of the window
//! (with its revision bumped) or says why the change is not allowed. Storage persists the result.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::text::{TextError, check as check_text, limits};
use super::{ComponentId, Locale, Zone};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowId(pub i64);

impl fmt::Display for WindowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowStatus {
    Scheduled,
    InProgress,
    Completed,
    Cancelled,
}

impl WindowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowStatus::Scheduled => "scheduled",
            WindowStatus::InProgress => "in_progress",
            WindowStatus::Completed => "completed",
            WindowStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for WindowStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WindowStatus {
    type Err = WindowError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "scheduled" => Ok(WindowStatus::Scheduled),
            "in_progress" => Ok(WindowStatus::InProgress),
            "completed" => Ok(WindowStatus::Completed),
            "cancelled" => Ok(WindowStatus::Cancelled),
            other => Err(WindowError::Corrupt(format!("unknown status '{other}'"))),
        }
    }
}

/// What produced the current revision: it decides which notice that revision owes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    Created,
    Rescheduled,
    Started,
    Completed,
    Cancelled,
    /// The affected components changed: told like a reschedule.
    Amended,
}

impl Change {
    /// A change those already told must hear about (new times or new components).
    pub fn is_amendment(self) -> bool {
        matches!(self, Change::Rescheduled | Change::Amended)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Rescheduled => "rescheduled",
            Change::Started => "started",
            Change::Completed => "completed",
            Change::Cancelled => "cancelled",
            Change::Amended => "amended",
        }
    }
}

impl FromStr for Change {
    type Err = WindowError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "created" => Ok(Change::Created),
            "rescheduled" => Ok(Change::Rescheduled),
            "started" => Ok(Change::Started),
            "completed" => Ok(Change::Completed),
            "cancelled" => Ok(Change::Cancelled),
            "amended" => Ok(Change::Amended),
            other => Err(WindowError::Corrupt(format!("unknown change '{other}'"))),
        }
    }
}

/// A start and an end with the end strictly after the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
}

impl Schedule {
    pub fn new(starts_at: DateTime<Utc>, ends_at: DateTime<Utc>) -> Result<Schedule, WindowError> {
        if ends_at <= starts_at {
            return Err(WindowError::EndNotAfterStart {
                start: starts_at,
                end: ends_at,
            });
        }
        Ok(Schedule { starts_at, ends_at })
    }
    pub fn starts_at(&self) -> DateTime<Utc> {
        self.starts_at
    }
    pub fn ends_at(&self) -> DateTime<Utc> {
        self.ends_at
    }
}

/// Text in English with an optional Swahili version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Localized {
    pub en: String,
    pub sw: Option<String>,
}

/// English text with no Swahili version.
impl From<&str> for Localized {
    fn from(en: &str) -> Localized {
        Localized {
            en: en.to_owned(),
            sw: None,
        }
    }
}

impl Localized {
    pub fn get(&self, locale: Locale) -> &str {
        match (locale, &self.sw) {
            (Locale::Sw, Some(sw)) if !sw.is_empty() => sw,
            _ => &self.en,
        }
    }
}

/// What an operator supplies to create a window.
#[derive(Debug, Clone)]
pub struct NewWindow {
    pub title: Localized,
    pub description: Localized,
    pub components: Vec<ComponentId>,
    pub schedule: Schedule,
    pub zone: Zone,
    pub auto_complete: bool,
}

/// Checks a window's wording: a title, and every text within its length, free of control
/// and bidirectional characters.
fn check_wording(title: &Localized, description: &Localized) -> Result<(), WindowError> {
    if title.en.trim().is_empty() {
        return Err(WindowError::MissingTitle);
    }
    let texts = [
        ("--title", Some(&title.en), limits::TITLE, false),
        ("--title-sw", title.sw.as_ref(), limits::TITLE, false),
        ("--description", Some(&description.en), limits::DESCRIPTION, true),
        ("--description-sw", description.sw.as_ref(), limits::DESCRIPTION, true),
    ];
    for (field, text, max, multiline) in texts {
        if let Some(text) = text {
            check_text(text, max, multiline).map_err(|error| WindowError::Text { field, error })?;
        }
    }
    Ok(())
}

impl NewWindow {
    /// Refuses a window with no title, no components, or one that starts in the past.
    pub fn validate(self, now: DateTime<Utc>) -> Result<NewWindow, WindowError> {
        check_wording(&self.title, &self.description)?;
        if self.components.is_empty() {
            return Err(WindowError::NoComponents);
        }
        if self.schedule.starts_at <= now {
            return Err(WindowError::StartInPast {
                start: self.schedule.starts_at,
                now,
            });
        }
        Ok(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub id: WindowId,
    pub title: Localized,
    pub description: Localized,
    pub components: Vec<ComponentId>,
    pub schedule: Schedule,
    /// The schedule before the latest change; equal to `schedule` unless it was moved.
    pub previous: Schedule,
    pub zone: Zone,
    pub status: WindowStatus,
    pub revision: u32,
    pub last_change: Change,
    pub auto_complete: bool,
    /// Why it was cancelled, in English and optionally Swahili.
    pub cancel_reason: Option<Localized>,
    pub created_at: DateTime<Utc>,
    /// When the current revision began.
    pub revised_at: DateTime<Utc>,
}

impl Window {
    /// The first revision of a new window.
    pub fn create(id: WindowId, new: NewWindow, now: DateTime<Utc>) -> Window {
        Window {
            id,
            title: new.title,
            description: new.description,
            components: new.components,
            schedule: new.schedule,
            previous: new.schedule,
            zone: new.zone,
            status: WindowStatus::Scheduled,
            revision: 1,
            last_change: Change::Created,
            auto_complete: new.auto_complete,
            cancel_reason: None,
            created_at: now,
            revised_at: now,
        }
    }

    fn next(&self, change: Change, now: DateTime<Utc>) -> Window {
        Window {
            revision: self.revision + 1,
            last_change: change,
            revised_at: now,
            previous: self.schedule,
            ..self.clone()
        }
    }

    /// Moves a scheduled window to new times.
    pub fn reschedule(&self, to: Schedule, now: DateTime<Utc>) -> Result<Window, WindowError> {
        if self.status != WindowStatus::Scheduled {
            return Err(WindowError::NotAllowed {
                id: self.id,
                status: self.status,
                action: "reschedule",
                hint: "only a scheduled window can be rescheduled; use `window extend` to move the end of one in progress",
            });
        }
        if to == self.schedule {
            return Err(WindowError::NothingChanged(self.id));
        }
        if to.starts_at <= now {
            return Err(WindowError::StartInPast {
                start: to.starts_at,
                now,
            });
        }
        let mut w = self.next(Change::Rescheduled, now);
        w.schedule = to;
        Ok(w)
    }

    /// Moves the end of a scheduled or running window.
    pub fn extend(&self, ends_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<Window, WindowError> {
        if !matches!(self.status, WindowStatus::Scheduled | WindowStatus::InProgress) {
            return Err(WindowError::NotAllowed {
                id: self.id,
                status: self.status,
                action: "extend",
                hint: "the window is over",
            });
        }
        let to = Schedule::new(self.schedule.starts_at, ends_at)?;
        if to == self.schedule {
            return Err(WindowError::NothingChanged(self.id));
        }
        if self.status == WindowStatus::InProgress && ends_at <= now {
            return Err(WindowError::EndInPast { end: ends_at, now });
        }
        let mut w = self.next(Change::Rescheduled, now);
        w.schedule = to;
        Ok(w)
    }

    /// Calls a scheduled window off, with the reason those told will read (in English, and in
    /// Swahili for Swahili readers when given).
    pub fn cancel(&self, reason: Option<Localized>, now: DateTime<Utc>) -> Result<Window, WindowError> {
        if self.status != WindowStatus::Scheduled {
            return Err(WindowError::NotAllowed {
                id: self.id,
                status: self.status,
                action: "cancel",
                hint: "only a scheduled window can be cancelled; complete or extend one in progress",
            });
        }
        let reason = reason.map(|r| Localized {
            sw: r.sw.filter(|sw| !sw.trim().is_empty()),
            ..r
        });
        let reason = match reason {
            Some(r) if r.en.trim().is_empty() && r.sw.is_some() => return Err(WindowError::SwahiliOnly("--reason")),
            Some(r) if r.en.trim().is_empty() => None,
            other => other,
        };
        if let Some(r) = &reason {
            for (field, text) in [("--reason", Some(&r.en)), ("--reason-sw", r.sw.as_ref())] {
                if let Some(text) = text {
                    check_text(text, limits::REASON, true).map_err(|error| WindowError::Text { field, error })?;
                }
            }
        }
        let mut w = self.next(Change::Cancelled, now);
        w.status = WindowStatus::Cancelled;
        w.cancel_reason = reason;
        Ok(w)
    }

    /// Corrects the title or description. Not a new revision: nobody is re-notified for a
    /// wording change, and notices not yet rendered use the new text.
    pub fn edit_text(&self, title: Localized, description: Localized) -> Result<Window, WindowError> {
        check_wording(&title, &description)?;
        if title == self.title && description == self.description {
            return Err(WindowError::NothingChanged(self.id));
        }
        Ok(Window {
            title,
            description,
            ..self.clone()
        })
    }

    /// Changes the affected components of a scheduled or running window: a new revision, so
    /// those already told hear of it and those newly affected are told for the first time.
    pub fn change_components(&self, components: Vec<ComponentId>, now: DateTime<Utc>) -> Result<Window, WindowError> {
        if !matches!(self.status, WindowStatus::Scheduled | WindowStatus::InProgress) {
            return Err(WindowError::NotAllowed {
                id: self.id,
                status: self.status,
                action: "change the components of",
                hint: "the window is over",
            });
        }
        if components.is_empty() {
            return Err(WindowError::NoComponents);
        }
        if components == self.components {
            return Err(WindowError::NothingChanged(self.id));
        }
        let mut w = self.next(Change::Amended, now);
        w.components = components;
        Ok(w)
    }

    /// The scheduler's transition at the planned start.
    pub fn start(&self, now: DateTime<Utc>) -> Result<Window, WindowError> {
        if self.status != WindowStatus::Scheduled || now < self.schedule.starts_at {
            return Err(WindowError::NotAllowed {
                id: self.id,
                status: self.status,
                action: "start",
                hint: "a window starts at its planned start",
            });
        }
        let mut w = self.next(Change::Started, now);
        w.status = WindowStatus::InProgress;
        Ok(w)
    }

    /// The operator's confirmation that the work is over (or the automatic one at the end).
    pub fn complete(&self, now: DateTime<Utc>) -> Result<Window, WindowError> {
        if self.status != WindowStatus::InProgress {
            return Err(WindowError::NotAllowed {
                id: self.id,
                status: self.status,
                action: "complete",
                hint: "only a window in progress can be completed",
            });
        }
        let mut w = self.next(Change::Completed, now);
        w.status = WindowStatus::Completed;
        Ok(w)
    }

    /// A running window past its planned end that nobody has confirmed: an operator must act.
    pub fn overrun(&self, now: DateTime<Utc>) -> bool {
        self.status == WindowStatus::InProgress && now >= self.schedule.ends_at
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("end {end} is not after start {start}")]
    EndNotAfterStart { start: DateTime<Utc>, end: DateTime<Utc> },
    #[error("start {start} is not in the future (now is {now})")]
    StartInPast { start: DateTime<Utc>, now: DateTime<Utc> },
    #[error("end {end} is not in the future (now is {now})")]
    EndInPast { end: DateTime<Utc>, now: DateTime<Utc> },
    #[error("title is required")]
    MissingTitle,
    #[error("{field}: {error}")]
    Text { field: &'static str, error: TextError },
    #[error("at least one component is required")]
    NoComponents,
    #[error("{0}-sw needs the English text beside it: give {0} too")]
    SwahiliOnly(&'static str),
    #[error("window {id} is {status}: cannot {action} ({hint})")]
    NotAllowed {
        id: WindowId,
        status: WindowStatus,
        action: &'static str,
        hint: &'static str,
    },
    #[error("window {0} already has those values")]
    NothingChanged(WindowId),
    #[error("stored window is corrupt: {0}")]
    Corrupt(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2015, 4, 18, h, 0, 0).unwrap()
    }

    fn window() -> Window {
        let new = NewWindow {
            title: Localized {
                en: "Migration".into(),
                sw: None,
            },
            description: Localized::default(),
            components: vec!["send-money".parse().unwrap()],
            schedule: Schedule::new(at(10), at(20)).unwrap(),
            zone: Zone::NAIROBI,
            auto_complete: false,
        };
        Window::create(WindowId(1), new.validate(at(1)).unwrap(), at(1))
    }

    #[test]
    fn wording_is_held_to_its_limits() {
        let w = window();
        let long = Localized {
            en: "t".repeat(100_000),
            sw: None,
        };
        let err = w.edit_text(long, Localized::default()).unwrap_err().to_string();
        assert!(
            err.starts_with("--title: is 100000 characters long") && err.len() < 200,
            "{err}"
        );
        let sneaky = Localized {
            en: "About".into(),
            sw: Some("Habari \u{202e}".into()),
        };
        let err = w.edit_text(w.title.clone(), sneaky).unwrap_err().to_string();
        assert!(err.starts_with("--description-sw: contains a bidirectional"), "{err}");
        let err = w
            .cancel(Some("r".repeat(501).as_str().into()), at(2))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--reason: is 501 characters long"), "{err}");
        let sw_too_long = Localized {
            en: "Vendor delay".into(),
            sw: Some("r".repeat(501)),
        };
        let err = w.cancel(Some(sw_too_long), at(2)).unwrap_err().to_string();
        assert!(err.starts_with("--reason-sw: is 501 characters long"), "{err}");
        assert!(w.cancel(Some("Vendor delay\nNew date soon".into()), at(2)).is_ok());
    }

    #[test]
    fn end_must_follow_start() {
        assert!(matches!(
            Schedule::new(at(5), at(5)),
            Err(WindowError::EndNotAfterStart { .. })
        ));
        assert!(matches!(
            Schedule::new(at(6), at(5)),
            Err(WindowError::EndNotAfterStart { .. })
        ));
    }

    #[test]
    fn every_change_bumps_the_revision_and_keeps_the_old_times() {
        let w = window();
        let moved = w.reschedule(Schedule::new(at(12), at(22)).unwrap(), at(2)).unwrap();
        assert_eq!((moved.revision, moved.last_change), (2, Change::Rescheduled));
        assert_eq!(moved.previous, w.schedule);
        let started = moved.start(at(12)).unwrap();
        assert_eq!((started.revision, started.status), (3, WindowStatus::InProgress));
        let extended = started.extend(at(23), at(13)).unwrap();
        assert_eq!(extended.previous.ends_at(), at(22));
        let done = extended.complete(at(23)).unwrap();
        assert_eq!((done.revision, done.status), (5, WindowStatus::Completed));
    }

    #[test]
    fn illegal_moves_are_refused() {
        let w = window();
        assert!(w.complete(at(2)).is_err());
        assert!(w.start(at(9)).is_err());
        assert!(matches!(
            w.reschedule(w.schedule, at(2)),
            Err(WindowError::NothingChanged(_))
        ));
        let running = w.start(at(10)).unwrap();
        assert!(running.cancel(None, at(11)).is_err());
        assert!(
            running
                .reschedule(Schedule::new(at(12), at(22)).unwrap(), at(11))
                .is_err()
        );
        assert!(matches!(
            running.extend(at(10), at(11)),
            Err(WindowError::EndNotAfterStart { .. })
        ));
        assert!(running.overrun(at(20)));
        let cancelled = w.cancel(Some("no longer needed".into()), at(3)).unwrap();
        assert!(cancelled.extend(at(21), at(4)).is_err());
    }
}
