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

/// The share of a backend's rate that slots are planned at. The rest is room for retries and
/// for sending that fell behind its slots to catch up: a limiter kept busy at exactly the rate
/// it allows never makes up a delay, so at the full rate every hiccup of the machine or the
/// database would make every later message of the fan-out that much later.
pub const PLANNED_SHARE: f64 = 0.95;

/// Messages per second each channel's first backend takes, where limited, and which backend
/// that is: channels sent through the same backend share its rate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capacity(BTreeMap<Channel, (String, f64)>);

impl Capacity {
    /// Rates per channel, each channel its own backend; rates that are not positive and finite
    /// are left out (unlimited).
    pub fn new(rates: impl IntoIterator<Item = (Channel, f64)>) -> Capacity {
        Capacity(
            rates
                .into_iter()
                .filter(|(_, r)| r.is_finite() && *r > 0.0)
                .map(|(c, r)| (c, (c.as_str().to_owned(), r)))
                .collect(),
        )
    }

    /// From each channel's first backend: its name and its rate.
    pub fn of_first_backends(firsts: &[(Channel, &str, Option<f64>)]) -> Capacity {
        Capacity(
            firsts
                .iter()
                .filter_map(|(c, name, rate)| rate.map(|r| (*c, ((*name).to_owned(), r))))
                .filter(|(_, (_, r))| r.is_finite() && *r > 0.0)
                .collect(),
        )
    }

    /// Whether any channel is paced at all.
    pub fn is_limited(&self) -> bool {
        !self.0.is_empty()
    }

    /// The rate each limited channel's slots are planned at for a fan-out of `sizes`:
    /// [`PLANNED_SHARE`] of its backend's, and a backend that several channels share is split
    /// between them in proportion to their deliveries, so they end together.
    pub fn rates(&self, sizes: &AudienceSize) -> BTreeMap<Channel, f64> {
        let size = |c: &Channel| sizes.get(c).copied().unwrap_or(0);
        self.0
            .iter()
            .map(|(c, (backend, rate))| {
                let on_backend: u64 = self
                    .0
                    .iter()
                    .filter(|(_, (b, _))| b == backend)
                    .map(|(o, _)| size(o))
                    .sum();
                let share = if on_backend == 0 || size(c) == 0 {
                    1.0
                } else {
                    size(c) as f64 / on_backend as f64
                };
                (*c, rate * share * PLANNED_SHARE)
            })
            .collect()
    }

    /// How long the fan-out of `sizes` deliveries per channel takes: its slowest channel.
    pub fn spread(&self, sizes: &AudienceSize) -> TimeDelta {
        let rates = self.rates(sizes);
        sizes
            .iter()
            .filter_map(|(c, &n)| rates.get(c).map(|r| seconds(n as f64 / r)))
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
    /// Messages per second of each paced channel.
    rates: BTreeMap<Channel, f64>,
    quiet_hours: Option<QuietHours>,
    ranks: BTreeMap<Channel, u64>,
    /// Unpaced slots out of quiet hours, by zone: the same for every recipient of a zone.
    unpaced: std::collections::HashMap<Zone, DateTime<Utc>>,
}

impl Pacer {
    /// A pacer for a fan-out starting at `start` at `rates` (per channel; see
    /// [`Capacity::rates`]); `done` counts the rows already enqueued per channel (a resumed
    /// fan-out goes on from there).
    pub fn new(
        start: DateTime<Utc>,
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
        rates: BTreeMap<Channel, f64>,
        quiet_hours: Option<QuietHours>,
        done: AudienceSize,
    ) -> Pacer {
        Pacer {
            start,
            deadline,
            now,
            rates,
            quiet_hours,
            ranks: done,
            unpaced: std::collections::HashMap::new(),
        }
    }

    /// Whether slots differ at all from the start.
    pub fn is_active(&self) -> bool {
        !self.rates.is_empty() || self.quiet_hours.is_some()
    }

    /// The next slot on `channel` for a recipient in `zone`.
    pub fn slot(&mut self, channel: Channel, zone: Zone) -> DateTime<Utc> {
        let rank = self.ranks.entry(channel).or_default();
        *rank += 1;
        let Some(&rate) = self.rates.get(&channel) else {
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

/// Sending this far behind its slots makes planning beside it give way. Behind by more than
/// the limiter's burst (a tenth of a second of the rate), it catches up only by the 5 % the
/// slots leave, a second in twenty.
pub const SENDING_BEHIND: std::time::Duration = std::time::Duration::from_millis(250);

/// Planning whose latest slot is this far ahead of the clock can stop for a while without
/// sending running out of rows.
pub const PLANNING_AHEAD: TimeDelta = TimeDelta::seconds(2);

/// Whether planning a paced fan-out beside its sending waits before its next page: sending is
/// `behind` its slots by more than [`SENDING_BEHIND`] while planning is `ahead` of them (its
/// latest slot from now) by more than it needs. The two share the machine, the database and
/// its log; on PostgreSQL, planning at full speed holds sending back below the rate.
pub fn gives_way(behind: Option<std::time::Duration>, ahead: TimeDelta) -> bool {
    behind.is_some_and(|b| b > SENDING_BEHIND) && ahead > PLANNING_AHEAD
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

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::{Localized, NewWindow, Schedule, Span, WindowId};

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2015, 4, 17, h, m, 0).unwrap()
    }

    fn sms(n: u64) -> AudienceSize {
        AudienceSize::from([(Channel::Sms, n)])
    }

    fn window(start: DateTime<Utc>, created: DateTime<Utc>) -> Window {
        let new = NewWindow {
            title: Localized {
                en: "Data centre move".into(),
                sw: None,
            },
            description: Localized::default(),
            components: vec!["send-money".parse().unwrap()],
            schedule: Schedule::new(start, start + TimeDelta::hours(48)).unwrap(),
            zone: Zone::NAIROBI,
            auto_complete: false,
        };
        Window::create(WindowId(1), new.validate(created).unwrap(), created)
    }

    /// How long what takes `at_full_rate` at a backend's rate takes at the share of it that
    /// slots are planned at.
    fn at_planned_share(at_full_rate: TimeDelta) -> TimeDelta {
        seconds(at_full_rate.as_seconds_f64() / PLANNED_SHARE)
    }

    #[test]
    fn a_fan_out_takes_as_long_as_its_slowest_channel() {
        let capacity = Capacity::new([
            (Channel::Sms, 1000.0),
            (Channel::Email, 5000.0),
            (Channel::Webhook, 0.0),
        ]);
        let rate = |c, sizes: &AudienceSize| capacity.rates(sizes).get(&c).copied();
        // 21 million SMS through a backend taking 1,000 a second are planned at 950 a second,
        // the rest left for retries and catching up: 6 h 8 min 25.264 s.
        assert_eq!(capacity.spread(&sms(21_000_000)), TimeDelta::milliseconds(22_105_264));
        let mixed = AudienceSize::from([
            (Channel::Sms, 1_000),
            (Channel::Email, 10_000),
            (Channel::Webhook, 1 << 40),
        ]);
        assert_eq!(
            capacity.spread(&mixed),
            at_planned_share(TimeDelta::seconds(2)),
            "email is slowest; webhooks unlimited"
        );
        assert_eq!(Capacity::default().spread(&mixed), TimeDelta::zero());
        assert!(!Capacity::new([(Channel::Sms, f64::NAN)]).is_limited());
        assert_eq!(rate(Channel::Sms, &mixed), Some(1000.0 * PLANNED_SHARE));
        assert_eq!(rate(Channel::Webhook, &mixed), None);
        // SMS and email through one backend at 1,000 a second, three SMS for each email: they
        // share it 750/250 and end together, 4 s for 4,000 (at the planned share).
        let shared = Capacity::of_first_backends(&[
            (Channel::Sms, "gateway", Some(1000.0)),
            (Channel::Email, "gateway", Some(1000.0)),
            (Channel::Webhook, "hooks", None),
        ]);
        let sizes = AudienceSize::from([(Channel::Sms, 3000), (Channel::Email, 1000)]);
        let rates = shared.rates(&sizes);
        assert_eq!(
            (rates[&Channel::Sms], rates[&Channel::Email]),
            (750.0 * PLANNED_SHARE, 250.0 * PLANNED_SHARE)
        );
        assert_eq!(shared.spread(&sizes), at_planned_share(TimeDelta::seconds(4)));
        assert_eq!(
            shared.rates(&sms(10))[&Channel::Sms],
            1000.0 * PLANNED_SHARE,
            "alone on it, SMS has it all"
        );
    }

    #[test]
    fn a_reminder_begins_early_enough_to_end_at_its_time() {
        let capacity = Capacity::new([(Channel::Sms, 1000.0)]);
        let nominal = at(21, 0);
        let plan = fan_out_plan(
            Notice::reminder(Span::hours(24)),
            Audience::Customer,
            nominal,
            nominal + TimeDelta::hours(24),
            &sms(21_000_000),
            &capacity,
            at(0, 0) - TimeDelta::days(7),
            at(0, 0),
        );
        assert!(plan.early);
        let spread = at_planned_share(TimeDelta::seconds(21_000));
        assert_eq!(plan.start, nominal - spread, "about six hours early");
        assert_eq!(plan.end, nominal);
        assert_eq!(plan.slack(), TimeDelta::hours(24));
        assert!(plan.feasible());
        // Decided late, it begins now and ends later than its time, still within its deadline.
        let late = fan_out_plan(
            Notice::reminder(Span::hours(24)),
            Audience::Customer,
            nominal,
            nominal + TimeDelta::hours(24),
            &sms(21_000_000),
            &capacity,
            at(0, 0) - TimeDelta::days(7),
            at(18, 0),
        );
        assert_eq!((late.start, late.end), (at(18, 0), at(18, 0) + spread));
    }

    #[test]
    fn started_is_spread_from_its_moment_and_an_impossible_deadline_shows() {
        let capacity = Capacity::new([(Channel::Sms, 1000.0)]);
        let start = at(21, 0);
        let plan = fan_out_plan(
            Notice::Started,
            Audience::Customer,
            start,
            start + TimeDelta::hours(2),
            &sms(21_000_000),
            &capacity,
            start,
            start - TimeDelta::hours(30),
        );
        assert!(!plan.early);
        assert_eq!(plan.start, start, "not before its moment");
        let spread = at_planned_share(TimeDelta::seconds(21_000));
        assert_eq!(plan.end, start + spread);
        assert!(!plan.feasible());
        assert_eq!(plan.slack(), TimeDelta::hours(2) - spread);
        assert_eq!(plan.total(), 21_000_000);
    }

    #[test]
    fn planning_gives_way_only_to_sending_that_is_behind_and_only_while_it_is_well_ahead() {
        let ms = |n| Some(std::time::Duration::from_millis(n));
        assert!(gives_way(ms(400), TimeDelta::seconds(10)));
        assert!(!gives_way(ms(40), TimeDelta::seconds(10)), "sending keeps up");
        assert!(!gives_way(Some(SENDING_BEHIND), TimeDelta::seconds(10)));
        assert!(!gives_way(None, TimeDelta::seconds(10)), "sending says nothing");
        assert!(
            !gives_way(ms(400), TimeDelta::seconds(1)),
            "sending would run out of rows"
        );
        assert!(
            !gives_way(ms(400), -TimeDelta::seconds(5)),
            "planning is behind its slots"
        );
    }

    #[test]
    fn slots_follow_each_channels_rate_and_a_resumed_fan_out_goes_on() {
        let capacity = Capacity::new([(Channel::Sms, 4.0)]);
        let begin = at(10, 0);
        let mut p = Pacer::new(
            begin,
            at(21, 0),
            begin,
            capacity.rates(&sms(5)),
            None,
            AudienceSize::new(),
        );
        assert!(p.is_active());
        let slots: Vec<_> = (0..5).map(|_| p.slot(Channel::Sms, Zone::NAIROBI)).collect();
        let ms: Vec<i64> = slots.iter().map(|s| (*s - begin).num_milliseconds()).collect();
        // 4 a second, planned at 3.8 a second: a slot every 263.2 ms (rounded up).
        assert_eq!(ms, [0, 264, 527, 790, 1053]);
        assert_eq!(p.slot(Channel::Email, Zone::NAIROBI), begin, "email is not paced");
        // Resumed after 8 SMS rows: the ninth is 8 / 3.8 s in.
        let mut resumed = Pacer::new(begin, at(21, 0), begin, capacity.rates(&sms(9)), None, sms(8));
        assert_eq!(
            resumed.slot(Channel::Sms, Zone::NAIROBI),
            begin + TimeDelta::milliseconds(2106)
        );
        let idle = Pacer::new(begin, at(21, 0), begin, BTreeMap::new(), None, AudienceSize::new());
        assert!(!idle.is_active());
    }

    #[test]
    fn slots_leave_quiet_hours_in_the_recipients_zone() {
        let night: QuietHours = "21:00-07:00".parse().unwrap();
        // 19:30 UTC: 22:30 in Nairobi (quiet), 20:30 in London (not).
        let begin = at(19, 30);
        let london: Zone = "Europe/London".parse().unwrap();
        let mut p = Pacer::new(
            begin,
            begin + TimeDelta::days(1),
            begin,
            BTreeMap::new(),
            Some(night),
            AudienceSize::new(),
        );
        assert_eq!(p.slot(Channel::Sms, london), begin);
        assert_eq!(p.slot(Channel::Sms, Zone::NAIROBI), at(4, 0) + TimeDelta::days(1));
        assert_eq!(
            p.slot(Channel::Sms, Zone::NAIROBI),
            at(4, 0) + TimeDelta::days(1),
            "the same for the zone"
        );
    }

    #[test]
    fn what_keeps_quiet_hours() {
        let start = at(21, 0);
        let w = window(start, start - TimeDelta::days(5));
        let now = start - TimeDelta::days(3);
        assert!(keeps_quiet(&w, Notice::Announced, Reach::Eligible, now));
        assert!(keeps_quiet(&w, Notice::reminder(Span::hours(1)), Reach::Eligible, now));
        assert!(!keeps_quiet(&w, Notice::Started, Reach::Eligible, now));
        assert!(!keeps_quiet(&w, Notice::Cancelled, Reach::AlreadyTold, now));
        // A change: kept quiet days ahead, not within 24 h of the start.
        let moved = w
            .reschedule(
                Schedule::new(start + TimeDelta::hours(2), start + TimeDelta::hours(50)).unwrap(),
                now,
            )
            .unwrap();
        assert!(keeps_quiet(&moved, Notice::Rescheduled, Reach::AlreadyTold, now));
        assert!(keeps_quiet(&moved, Notice::Announced, Reach::NotYetTold, now));
        let close = start - TimeDelta::hours(20);
        assert!(!keeps_quiet(&moved, Notice::Rescheduled, Reach::AlreadyTold, close));
        assert!(!keeps_quiet(&moved, Notice::Announced, Reach::NotYetTold, close));
    }

    #[test]
    fn a_window_plan_lists_what_is_still_owed() {
        let start = at(21, 0);
        let created = start - TimeDelta::days(5);
        let w = window(start, created);
        let capacity = Capacity::new([(Channel::Sms, 1000.0)]);
        let sizes = |a: Audience| match a {
            Audience::Customer => sms(21_000_000),
            Audience::Biller => AudienceSize::new(),
        };
        let plan = window_plan(&w, &Policy::default(), &sizes, &capacity, created);
        let customers: Vec<(&str, bool)> = plan
            .iter()
            .filter(|p| p.audience == "customer")
            .map(|p| (p.notice.as_str(), p.feasible()))
            .collect();
        assert_eq!(
            customers,
            [
                ("announced", true),
                ("reminder:72h", true),
                ("reminder:24h", true),
                ("reminder:1h", true),
                ("started", true),
                ("completed", true),
            ]
        );
        let one_hour = plan
            .iter()
            .find(|p| p.notice == "reminder:1h" && p.audience == "customer")
            .unwrap();
        assert_eq!(one_hour.end, start - TimeDelta::hours(1));
        let spread = at_planned_share(TimeDelta::seconds(21_000));
        assert_eq!(one_hour.start, start - TimeDelta::hours(1) - spread);
        // A window starting in an hour cannot announce itself to 21 million at 1,000 a second.
        let soon = window(created + TimeDelta::hours(1), created);
        let plan = window_plan(&soon, &Policy::default(), &sizes, &capacity, created);
        let announced = plan
            .iter()
            .find(|p| p.notice == "announced" && p.audience == "customer")
            .unwrap();
        assert!(!announced.feasible());
        assert_eq!(-announced.slack(), spread - TimeDelta::hours(1));
    }
}
