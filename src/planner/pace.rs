//! Pacing: how long a notice's fan-out takes at the channels' capacity, when it must begin so
//! that its last message lands in time, and the slot of each delivery in it.
//!
//! Pure. The capacity of a channel is the rate of its first backend (a backend behind it takes
//! over on failure, it does not add to the rate); a channel without a rate is not paced. The
//! audience size is counted per channel by the caller.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::domain::{Audience, Channel, Notice, NoticeKind, Policy, QuietHours, Reach, Window, WindowStatus, Zone};

/// Messages per second each channel can take, where limited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capacity(BTreeMap<Channel, f64>);

impl Capacity {
    /// Rates per channel; rates that are not positive and finite are left out (unlimited).
    pub fn new(rates: impl IntoIterator<Item = (Channel, f64)>) -> Capacity {
        Capacity(rates.into_iter().filter(|(_, r)| r.is_finite() && *r > 0.0).collect())
    }

    pub fn rate(&self, channel: Channel) -> Option<f64> {
        self.0.get(&channel).copied()
    }

    /// Whether any channel is paced at all.
    pub fn is_limited(&self) -> bool {
        !self.0.is_empty()
    }

    /// How long the fan-out of `sizes` deliveries per channel takes: its slowest channel.
    pub fn spread(&self, sizes: &AudienceSize) -> TimeDelta {
        sizes
            .iter()
            .filter_map(|(c, &n)| self.rate(*c).map(|r| seconds(n as f64 / r)))
            .max()
            .unwrap_or_default()
    }
}

/// Deliveries per channel of one audience.
pub type AudienceSize = BTreeMap<Channel, u64>;

fn seconds(s: f64) -> TimeDelta {
    TimeDelta::milliseconds((s * 1000.0).ceil().min(i64::MAX as f64 / 2.0) as i64)
}

/// What the planner needs to know of each audience to pace it: how long its fan-out takes,
/// and its quiet hours (planned that much earlier, so rows exist before they begin).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lead {
    pub spread: TimeDelta,
    pub quiet_hours: Option<QuietHours>,
}

/// The lead of each audience.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leads {
    pub customers: Lead,
    pub billers: Lead,
}

impl Leads {
    pub fn of(&self, audience: Audience) -> Lead {
        match audience {
            Audience::Customer => self.customers,
            Audience::Biller => self.billers,
        }
    }
}

/// Whether a notice may be sent before its nominal time: only reminders can. Everything else
/// (an announcement, `started`, `completed`, a change) is news from its moment on, and is
/// spread from then.
pub fn may_go_early(kind: NoticeKind) -> bool {
    kind == NoticeKind::Reminder
}

/// Whether a notice keeps out of quiet hours: `started` and `cancelled` never do, nor does
/// the news of a change (a reschedule, or the current facts for those not told yet) within
/// 24 hours of the start.
pub fn keeps_quiet(window: &Window, notice: Notice, reach: Reach, now: DateTime<Utc>) -> bool {
    match notice.kind() {
        NoticeKind::Started | NoticeKind::Cancelled => false,
        NoticeKind::Rescheduled => {
            window.schedule.starts_at().min(window.previous.starts_at()) - now > TimeDelta::hours(24)
        }
        NoticeKind::Announced if reach == Reach::NotYetTold => window.schedule.starts_at() - now > TimeDelta::hours(24),
        _ => true,
    }
}

/// Gives each delivery of one fan-out its slot: the fan-out's start plus its rank in its
/// channel over the channel's rate, moved out of the recipient's quiet hours when they apply.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: DateTime<Utc>,
    deadline: DateTime<Utc>,
    now: DateTime<Utc>,
    capacity: Capacity,
    quiet_hours: Option<QuietHours>,
    ranks: BTreeMap<Channel, u64>,
    /// Unpaced slots out of quiet hours, by zone: the same for every recipient of a zone.
    unpaced: std::collections::HashMap<Zone, DateTime<Utc>>,
}

impl Pacer {
    /// A pacer for a fan-out starting at `start`; `done` counts the rows already enqueued per
    /// channel (a resumed fan-out goes on from there).
    pub fn new(
        start: DateTime<Utc>,
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
        capacity: Capacity,
        quiet_hours: Option<QuietHours>,
        done: AudienceSize,
    ) -> Pacer {
        Pacer {
            start,
            deadline,
            now,
            capacity,
            quiet_hours,
            ranks: done,
            unpaced: std::collections::HashMap::new(),
        }
    }

    /// Whether slots differ at all from the start.
    pub fn is_active(&self) -> bool {
        self.capacity.is_limited() || self.quiet_hours.is_some()
    }

    /// The next slot on `channel` for a recipient in `zone`.
    pub fn slot(&mut self, channel: Channel, zone: Zone) -> DateTime<Utc> {
        let rank = self.ranks.entry(channel).or_default();
        *rank += 1;
        let Some(rate) = self.capacity.rate(channel) else {
            let (start, deadline, now) = (self.start, self.deadline, self.now);
            return match self.quiet_hours {
                Some(q) => *self
                    .unpaced
                    .entry(zone)
                    .or_insert_with(|| q.adjust(start, zone, deadline, now)),
                None => start,
            };
        };
        let paced = self.start + seconds((*rank - 1) as f64 / rate);
        match self.quiet_hours {
            Some(q) => q.adjust(paced, zone, self.deadline, self.now),
            None => paced,
        }
    }
}

/// One notice's fan-out as planned: when it begins, when its last message is expected, its
/// deadline and the slack between them (negative: the capacity cannot meet the deadline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FanOutPlan {
    pub notice: String,
    pub audience: &'static str,
    /// When the notice is nominally due.
    pub nominal: DateTime<Utc>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    /// Deliveries, per channel.
    pub deliveries: BTreeMap<String, u64>,
    /// Whether it begins before its nominal time to finish by then (reminders), rather than
    /// being spread from its moment.
    pub early: bool,
}

impl FanOutPlan {
    pub fn slack(&self) -> TimeDelta {
        self.deadline - self.end
    }

    pub fn feasible(&self) -> bool {
        self.end <= self.deadline
    }

    pub fn total(&self) -> u64 {
        self.deliveries.values().sum()
    }
}

/// The fan-out of a notice due at `nominal` with `deadline`, for `sizes` at `capacity`, seen
/// at `now`: a reminder begins early enough to end at its nominal time (not before `not_before`,
/// when the schedule was set, nor in the past); anything else is spread from its moment.
#[allow(clippy::too_many_arguments)]
pub fn fan_out_plan(
    notice: Notice,
    audience: Audience,
    nominal: DateTime<Utc>,
    deadline: DateTime<Utc>,
    sizes: &AudienceSize,
    capacity: &Capacity,
    not_before: DateTime<Utc>,
    now: DateTime<Utc>,
) -> FanOutPlan {
    let spread = capacity.spread(sizes);
    let early = may_go_early(notice.kind());
    let start = if early { nominal - spread } else { nominal };
    let start = start.max(not_before).max(now.min(nominal));
    FanOutPlan {
        notice: notice.to_string(),
        audience: audience.as_str(),
        nominal,
        start,
        end: start + spread,
        deadline,
        deliveries: sizes.iter().map(|(c, n)| (c.as_str().to_owned(), *n)).collect(),
        early,
    }
}

/// Every fan-out the window's current revision still owes, as planned at `now`: its primary
/// notice, its reminders while scheduled, `started` and `completed` to come. Notices whose
/// time has passed are left out, as are reminders skipped when the schedule was set.
pub fn window_plan(
    window: &Window,
    policy: &Policy,
    sizes: &dyn Fn(Audience) -> AudienceSize,
    capacity: &Capacity,
    now: DateTime<Utc>,
) -> Vec<FanOutPlan> {
    let start = window.schedule.starts_at();
    let end = window.schedule.ends_at();
    let mut out = Vec::new();
    for audience in Audience::ALL {
        let size = sizes(audience);
        let mut add = |notice: Notice, nominal: DateTime<Utc>, deadline: DateTime<Utc>| {
            let plan = fan_out_plan(
                notice,
                audience,
                nominal,
                deadline,
                &size,
                capacity,
                window.revised_at,
                now,
            );
            if plan.end > now || nominal >= now {
                out.push(plan);
            }
        };
        match window.status {
            WindowStatus::Scheduled => {
                let primary = if window.last_change.is_amendment() {
                    Notice::Rescheduled
                } else {
                    Notice::Announced
                };
                let primary_deadline = if primary == Notice::Rescheduled {
                    start.min(window.previous.starts_at())
                } else {
                    start
                };
                add(primary, window.revised_at, primary_deadline);
                for offset in policy.for_audience(audience).reminders() {
                    let nominal = start - offset.delta();
                    if nominal > window.revised_at {
                        add(Notice::reminder(*offset), nominal, start);
                    }
                }
                add(Notice::Started, start, end);
                add(Notice::Completed, end, end + policy.completed_grace.delta());
            }
            WindowStatus::InProgress => {
                let moment = if window.last_change.is_amendment() {
                    window.revised_at
                } else {
                    start
                };
                let notice = if window.last_change.is_amendment() {
                    Notice::Rescheduled
                } else {
                    Notice::Started
                };
                add(notice, moment, end);
                add(Notice::Completed, end, end + policy.completed_grace.delta());
            }
            WindowStatus::Completed => add(
                Notice::Completed,
                window.revised_at,
                end + policy.completed_grace.delta(),
            ),
            WindowStatus::Cancelled => add(Notice::Cancelled, window.revised_at, window.previous.starts_at()),
        }
    }
    out.sort_by_key(|p| (p.start, p.audience));
    out
}
