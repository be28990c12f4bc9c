//! The planner: which notices a window owes now, and to whom.
//!
//! Pure: a function of (window, recipients, policy, what was already decided, `now`). It does no
//! I/O and never reads the clock. The scheduler feeds it pages of recipients from storage and
//! writes what it returns; tests feed it vectors.
//!
//! Two halves:
//! - [`decide`] looks at the window's current revision and returns one [`Decision`] per
//!   (notice, audience) that is due, past, or overtaken, each recorded once in the notice log;
//! - [`fan_out`] turns a planned decision and a stream of recipients into queue rows;
//! - [`pace`] says how long a fan-out takes at the channels' capacity, when a reminder must
//!   begin to end at its time, and each delivery's slot (quiet hours included).

pub mod pace;

use chrono::{DateTime, Utc};

use crate::domain::{
    Audience, Decided, Decision, Notice, NoticeKind, Outcome, PlannedDelivery, Policy, Reach, Recipient, RecipientId,
    Span, Window, WindowStatus,
};

/// What the window's current revision owes now that has not been decided yet, unpaced.
pub fn decide(window: &Window, policy: &Policy, decided: &Decided, now: DateTime<Utc>) -> Vec<Decision> {
    decide_paced(window, policy, decided, now, &pace::Leads::default())
}

/// [`decide`], with each audience's fan-out taking `leads`: a reminder is decided early
/// enough that its fan-out, begun at `due_at`, ends at its nominal time, and earlier still by
/// the length of quiet hours where they could leave it no room before its deadline.
pub fn decide_paced(
    window: &Window,
    policy: &Policy,
    decided: &Decided,
    now: DateTime<Utc>,
    leads: &pace::Leads,
) -> Vec<Decision> {
    let mut out = Vec::new();
    let start = window.schedule.starts_at();
    for audience in Audience::ALL {
        let mut d = Decider {
            window,
            policy,
            audience,
            decided,
            now,
            lead: leads.of(audience),
            out: &mut out,
        };
        use Notice::{Announced, Cancelled, Completed, Rescheduled, Started};
        let primary = match (window.status, window.last_change) {
            (WindowStatus::Scheduled, change) if change.is_amendment() => {
                let a = d.primary(Rescheduled, Reach::AlreadyTold, window.revised_at);
                let b = d.primary(Announced, Reach::NotYetTold, window.revised_at);
                a || b
            }
            (WindowStatus::Scheduled, _) => d.primary(Announced, Reach::Eligible, window.created_at),
            (WindowStatus::InProgress, change) if change.is_amendment() => {
                let a = d.primary(Rescheduled, Reach::AlreadyTold, window.revised_at);
                let b = d.primary(Started, Reach::NotYetTold, window.revised_at);
                a || b
            }
            (WindowStatus::InProgress, _) => d.primary(Started, Reach::Eligible, start),
            (WindowStatus::Completed, _) => d.primary(Completed, Reach::Eligible, window.revised_at),
            (WindowStatus::Cancelled, _) => d.primary(Cancelled, Reach::AlreadyTold, window.revised_at),
        };
        if window.status == WindowStatus::Scheduled {
            d.reminders(policy.for_audience(audience).reminders(), primary);
        }
    }
    out
}

struct Decider<'a> {
    window: &'a Window,
    policy: &'a Policy,
    audience: Audience,
    decided: &'a Decided,
    now: DateTime<Utc>,
    lead: pace::Lead,
    out: &'a mut Vec<Decision>,
}

impl Decider<'_> {
    fn record(
        &mut self,
        notice: Notice,
        outcome: Outcome,
        reach: Reach,
        due_at: DateTime<Utc>,
        deadline: DateTime<Utc>,
    ) {
        self.out.push(Decision {
            revision: self.window.revision,
            notice,
            audience: self.audience,
            outcome,
            reach,
            due_at,
            deadline,
            supersedes: Vec::new(),
        });
    }

    /// The notice a change owes. Returns whether it is planned now.
    fn primary(&mut self, notice: Notice, reach: Reach, due_at: DateTime<Utc>) -> bool {
        let Ok(deadline) = notice_deadline(self.window, notice.kind(), self.policy) else {
            return false;
        };
        if self.decided.contains(&(notice, self.audience)) || due_at > self.now {
            return false;
        }
        if self.now >= deadline {
            self.record(notice, Outcome::Expired, reach, due_at, deadline);
            return false;
        }
        self.record(notice, Outcome::Planned, reach, due_at, deadline);
        true
    }

    /// How long before its nominal time `due_at` a reminder with `deadline` is decided: its
    /// fan-out's length, and the length of quiet hours where their end could come too late
    /// for the deadline (the rows must exist before they begin).
    fn ahead(&self, due_at: DateTime<Utc>, deadline: DateTime<Utc>) -> chrono::TimeDelta {
        let quiet = self
            .lead
            .quiet_hours
            .map(crate::domain::QuietHours::length)
            .unwrap_or_default();
        if deadline - due_at < quiet + self.lead.spread {
            self.lead.spread + quiet
        } else {
            self.lead.spread
        }
    }

    /// Reminders of a scheduled window; `offsets` largest first.
    fn reminders(&mut self, offsets: &[Span], primary_planned_now: bool) {
        let start = self.window.schedule.starts_at();
        let mut due_now = Vec::new();
        for &offset in offsets {
            let notice = Notice::reminder(offset);
            if self.decided.contains(&(notice, self.audience)) {
                continue;
            }
            let due_at = start - offset.delta();
            if due_at <= self.window.revised_at {
                // Already past when this schedule was set: recorded once, never sent.
                self.record(notice, Outcome::Skipped, Reach::Eligible, due_at, start);
            } else if due_at <= self.now {
                due_now.push(offset);
            } else if due_at - self.ahead(due_at, start) <= self.now {
                // Its fan-out must begin before its time to end by then: planned now, its rows
                // due from when the fan-out begins.
                self.out.push(Decision {
                    revision: self.window.revision,
                    notice,
                    audience: self.audience,
                    outcome: Outcome::Planned,
                    reach: Reach::Eligible,
                    due_at: (due_at - self.lead.spread).max(self.now),
                    deadline: start,
                    supersedes: Vec::new(),
                });
            }
        }
        let Some((&latest, earlier)) = due_now.split_last() else {
            return;
        };
        let overtaken = if self.now >= start {
            Outcome::Expired
        } else {
            Outcome::Superseded
        };
        // A notice planned in this same pass already carries the same facts.
        let all_overtaken = self.now >= start || primary_planned_now;
        for &offset in earlier.iter().chain(all_overtaken.then_some(&latest)) {
            self.record(
                Notice::reminder(offset),
                overtaken,
                Reach::Eligible,
                start - offset.delta(),
                start,
            );
        }
        if !all_overtaken {
            let mut d = Decision {
                revision: self.window.revision,
                notice: Notice::reminder(latest),
                audience: self.audience,
                outcome: Outcome::Planned,
                reach: Reach::Eligible,
                due_at: start - latest.delta(),
                deadline: start,
                supersedes: offsets
                    .iter()
                    .filter(|&&o| o > latest)
                    .map(|&o| Notice::reminder(o))
                    .collect(),
            };
            d.supersedes.sort();
            self.out.push(d);
        }
    }
}

/// A notice that does not fit the window's current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a '{kind}' notice does not fit window {window}, which is {status} after its last change ({change})")]
pub struct NoticeMismatch {
    pub kind: NoticeKind,
    pub window: crate::domain::WindowId,
    pub status: WindowStatus,
    pub change: &'static str,
}

/// The deadline of a notice of `kind` for the window's current revision: announced and
/// reminders → the start; started → the end; completed → end + grace; rescheduled and
/// cancelled → the earlier of the old and new start, or the new end once running. A kind that
/// does not fit the window now (a `completed` for a scheduled window) has none.
pub fn notice_deadline(window: &Window, kind: NoticeKind, policy: &Policy) -> Result<DateTime<Utc>, NoticeMismatch> {
    let start = window.schedule.starts_at();
    let end = window.schedule.ends_at();
    match (kind, window.status, window.last_change) {
        (NoticeKind::Announced | NoticeKind::Reminder, WindowStatus::Scheduled, _) => Ok(start),
        (NoticeKind::Rescheduled, WindowStatus::Scheduled, change) if change.is_amendment() => {
            Ok(start.min(window.previous.starts_at()))
        }
        (NoticeKind::Rescheduled, WindowStatus::InProgress, change) if change.is_amendment() => Ok(end),
        (NoticeKind::Started, WindowStatus::InProgress, _) => Ok(end),
        (NoticeKind::Completed, WindowStatus::Completed, _) => Ok(end + policy.completed_grace.delta()),
        (NoticeKind::Cancelled, WindowStatus::Cancelled, _) => Ok(window.previous.starts_at()),
        (kind, status, change) => Err(NoticeMismatch {
            kind,
            window: window.id,
            status,
            change: change.as_str(),
        }),
    }
}

/// The queue rows of a planned decision (none for any other outcome) for a stream of recipients (any order, any audience:
/// those it does not concern are passed over). `told` says whether a recipient was already told
/// something about this window; it is asked only for `AlreadyTold`/`NotYetTold` decisions.
pub fn fan_out<'a, I, F>(
    decision: &'a Decision,
    window: &'a Window,
    recipients: I,
    told: F,
) -> impl Iterator<Item = PlannedDelivery> + 'a
where
    I: IntoIterator<Item = &'a Recipient> + 'a,
    F: Fn(RecipientId) -> bool + 'a,
{
    // Only a planned decision owes deliveries: skipped, superseded or expired ones owe none.
    let planned = decision.outcome == Outcome::Planned;
    recipients
        .into_iter()
        .filter(move |_| planned)
        .filter(move |r| {
            let p = &r.profile;
            p.kind == decision.audience
                && !p.opt_out
                && p.cares_about(&window.components)
                && match decision.reach {
                    Reach::Eligible => true,
                    Reach::AlreadyTold => told(r.id),
                    Reach::NotYetTold => !told(r.id),
                }
        })
        .flat_map(move |r| {
            r.profile
                .effective_channels()
                .into_iter()
                .map(move |channel| PlannedDelivery {
                    endpoint: None,
                    window: window.id,
                    revision: decision.revision,
                    notice: decision.notice,
                    recipient: r.id,
                    channel,
                    due_at: decision.due_at,
                    deadline: decision.deadline,
                })
        })
}

/// Both halves at once, for callers that hold every recipient in memory: the decisions due now
/// and the deliveries of the planned ones.
pub fn plan<F>(
    window: &Window,
    recipients: &[Recipient],
    told: F,
    policy: &Policy,
    decided: &Decided,
    now: DateTime<Utc>,
) -> (Vec<Decision>, Vec<PlannedDelivery>)
where
    F: Fn(RecipientId) -> bool + Copy,
{
    let decisions = decide(window, policy, decided, now);
    let deliveries = decisions
        .iter()
        .filter(|d| d.outcome == Outcome::Planned)
        .flat_map(|d| fan_out(d, window, recipients, told).collect::<Vec<_>>())
        .collect();
    (decisions, deliveries)
}

#[cfg(test)]
mod tests;
