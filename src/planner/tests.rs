use std::collections::HashSet;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};

use super::*;
use crate::domain::{
    AudiencePolicy, Channel, ComponentId, EmailAddress, Locale, Localized, NewWindow, PhoneNumber, Profile, Schedule,
    WindowId, Zone,
};

/// 2015-04-18 00:00 EAT, the start of the M-Pesa migration.
fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2015, 4, 17, 21, 0, 0).unwrap()
}

fn hours(h: i64) -> TimeDelta {
    TimeDelta::hours(h)
}

fn comp(s: &str) -> ComponentId {
    s.parse().unwrap()
}

fn window_created_at(created: DateTime<Utc>) -> Window {
    let new = NewWindow {
        title: Localized {
            en: "Data centre move".into(),
            sw: None,
        },
        description: Localized::default(),
        components: vec![comp("send-money"), comp("withdraw")],
        schedule: Schedule::new(start(), start() + hours(48)).unwrap(),
        zone: Zone::NAIROBI,
        auto_complete: false,
    };
    Window::create(WindowId(7), new.validate(created).unwrap(), created)
}

fn recipient(id: i64, kind: Audience, components: &[&str], opt_out: bool) -> Recipient {
    Recipient {
        id: RecipientId(id),
        profile: Profile::new(
            kind,
            &format!("R{id}"),
            Some(PhoneNumber::parse(&format!("07{:08}", 10_000_000 + id)).unwrap()),
            Some(EmailAddress::parse(&format!("r{id}@example.co.ke")).unwrap()),
            Locale::En,
            Zone::NAIROBI,
            components.iter().map(|c| comp(c)).collect(),
            vec![],
            opt_out,
        )
        .unwrap(),
    }
}

/// Runs `decide` at each instant, remembering what was decided, as the scheduler does.
fn run(window: &Window, policy: &Policy, ticks: &[DateTime<Utc>]) -> Vec<Decision> {
    let mut decided = Decided::new();
    let mut all = Vec::new();
    for &now in ticks {
        for d in decide(window, policy, &decided, now) {
            decided.insert((d.notice, d.audience));
            all.push(d);
        }
    }
    all
}

fn planned(decisions: &[Decision], audience: Audience) -> Vec<String> {
    decisions
        .iter()
        .filter(|d| d.audience == audience && d.outcome == Outcome::Planned)
        .map(|d| d.notice.to_string())
        .collect()
}

fn with_outcome(decisions: &[Decision], audience: Audience, outcome: Outcome) -> Vec<String> {
    decisions
        .iter()
        .filter(|d| d.audience == audience && d.outcome == outcome)
        .map(|d| d.notice.to_string())
        .collect()
}

fn hourly(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = vec![];
    let mut t = from;
    while t < to {
        out.push(t);
        t += hours(1);
    }
    out
}

#[test]
fn default_offsets_per_audience() {
    let created = start() - hours(10 * 24);
    let w = window_created_at(created);
    let decisions = run(&w, &Policy::default(), &hourly(created, start()));
    assert_eq!(
        planned(&decisions, Audience::Customer),
        ["announced", "reminder:72h", "reminder:24h", "reminder:1h"]
    );
    assert_eq!(
        planned(&decisions, Audience::Biller),
        [
            "announced",
            "reminder:168h",
            "reminder:72h",
            "reminder:24h",
            "reminder:1h"
        ]
    );
    // Each reminder is due exactly its offset before the start, with the start as deadline.
    for d in decisions.iter().filter(|d| d.notice.kind() == NoticeKind::Reminder) {
        assert_eq!(d.due_at, start() - d.notice.offset().unwrap().delta());
        assert_eq!(d.deadline, start());
    }
    let announced = &decisions[0];
    assert_eq!((announced.due_at, announced.deadline), (created, start()));
}

#[test]
fn offsets_are_configurable_per_audience() {
    let policy = Policy {
        customers: AudiencePolicy::new(vec![Span::hours(2)]).unwrap(),
        billers: AudiencePolicy::new(vec![Span::hours(336), Span::hours(12)]).unwrap(),
        completed_grace: Span::hours(24),
    };
    let created = start() - hours(20 * 24);
    let decisions = run(&window_created_at(created), &policy, &hourly(created, start()));
    assert_eq!(planned(&decisions, Audience::Customer), ["announced", "reminder:2h"]);
    assert_eq!(
        planned(&decisions, Audience::Biller),
        ["announced", "reminder:336h", "reminder:12h"]
    );
}

#[test]
fn catch_up_sends_only_the_latest_reminder() {
    let created = start() - hours(10 * 24);
    let w = window_created_at(created);
    // The daemon ran at creation, then was down until 20 hours before the start.
    let decisions = run(&w, &Policy::default(), &[created, start() - hours(20)]);
    assert_eq!(planned(&decisions, Audience::Customer), ["announced", "reminder:24h"]);
    assert_eq!(
        with_outcome(&decisions, Audience::Customer, Outcome::Superseded),
        ["reminder:72h"]
    );
    assert_eq!(
        with_outcome(&decisions, Audience::Biller, Outcome::Superseded),
        ["reminder:168h", "reminder:72h"]
    );
    let latest = decisions
        .iter()
        .find(|d| d.audience == Audience::Customer && d.notice.to_string() == "reminder:24h")
        .unwrap();
    // Whatever of the 72h reminder is still queued is superseded by this one.
    assert_eq!(latest.supersedes, vec![Notice::reminder(Span::hours(72))]);
}

#[test]
fn a_late_announcement_overtakes_reminders_due_with_it() {
    let created = start() - hours(100);
    let w = window_created_at(created);
    // Nothing ran until 2 hours before the start.
    let decisions = run(&w, &Policy::default(), &[start() - hours(2)]);
    assert_eq!(planned(&decisions, Audience::Customer), ["announced"]);
    assert_eq!(
        with_outcome(&decisions, Audience::Customer, Outcome::Superseded),
        ["reminder:72h", "reminder:24h"]
    );
}

#[test]
fn reminders_already_past_at_creation_are_skipped_once() {
    let created = start() - hours(30);
    let w = window_created_at(created);
    let ticks = hourly(created, start());
    let decisions = run(&w, &Policy::default(), &ticks);
    assert_eq!(
        planned(&decisions, Audience::Customer),
        ["announced", "reminder:24h", "reminder:1h"]
    );
    assert_eq!(
        with_outcome(&decisions, Audience::Customer, Outcome::Skipped),
        ["reminder:72h"]
    );
    assert_eq!(
        with_outcome(&decisions, Audience::Biller, Outcome::Skipped),
        ["reminder:168h", "reminder:72h"]
    );
    // Recorded once per (notice, audience) however many ticks ran, and never per recipient.
    let skipped = decisions.iter().filter(|d| d.outcome == Outcome::Skipped).count();
    assert_eq!(skipped, 3);
}

#[test]
fn reminder_due_exactly_at_creation_is_skipped() {
    let created = start() - hours(24);
    let decisions = run(&window_created_at(created), &Policy::default(), &[created]);
    assert_eq!(
        with_outcome(&decisions, Audience::Customer, Outcome::Skipped),
        ["reminder:72h", "reminder:24h"]
    );
    assert_eq!(planned(&decisions, Audience::Customer), ["announced"]);
}

#[test]
fn deadlines_of_every_notice() {
    let policy = Policy::default();
    let created = start() - hours(100);
    let w = window_created_at(created);
    let d = decide(&w, &policy, &Decided::new(), created);
    let planned: Vec<&Decision> = d.iter().filter(|d| d.outcome == Outcome::Planned).collect();
    assert_eq!(planned.len(), 2);
    assert!(
        planned
            .iter()
            .all(|d| d.notice.kind() == NoticeKind::Announced && d.deadline == start())
    );

    let running = w.start(start()).unwrap();
    let d = decide(&running, &policy, &Decided::new(), start() + hours(1));
    assert_eq!(d[0].notice.kind(), NoticeKind::Started);
    assert_eq!((d[0].due_at, d[0].deadline), (start(), start() + hours(48)));

    // Extension while in progress: the correction is worth sending until the new end.
    let extended = running.extend(start() + hours(52), start() + hours(40)).unwrap();
    let d = decide(&extended, &policy, &Decided::new(), start() + hours(40));
    let resched = d.iter().find(|d| d.notice.kind() == NoticeKind::Rescheduled).unwrap();
    assert_eq!(resched.deadline, start() + hours(52));
    assert_eq!(resched.reach, Reach::AlreadyTold);
    let started_again = d.iter().find(|d| d.notice.kind() == NoticeKind::Started).unwrap();
    assert_eq!(started_again.reach, Reach::NotYetTold);

    let done = extended.complete(start() + hours(51)).unwrap();
    let d = decide(&done, &policy, &Decided::new(), start() + hours(51));
    assert_eq!(d[0].notice.kind(), NoticeKind::Completed);
    assert_eq!(d[0].deadline, start() + hours(52 + 24));
    // A completion notice planned after its grace has run out is recorded expired, not sent.
    let d = decide(&done, &policy, &Decided::new(), start() + hours(52 + 24));
    assert_eq!(d.len(), 2, "one completion per audience: {d:?}");
    assert!(
        d.iter()
            .all(|d| d.notice == Notice::Completed && d.outcome == Outcome::Expired)
    );

    // Reschedule before the start: the earlier of the old and new start.
    let later = Schedule::new(start() + hours(24), start() + hours(72)).unwrap();
    let moved = w.reschedule(later, created + hours(1)).unwrap();
    let d = decide(&moved, &policy, &Decided::new(), created + hours(1));
    let resched = d.iter().find(|d| d.notice.kind() == NoticeKind::Rescheduled).unwrap();
    assert_eq!(resched.deadline, start());
    let earlier = Schedule::new(start() - hours(12), start() + hours(36)).unwrap();
    let moved = w.reschedule(earlier, created + hours(1)).unwrap();
    let d = decide(&moved, &policy, &Decided::new(), created + hours(1));
    let resched = d.iter().find(|d| d.notice.kind() == NoticeKind::Rescheduled).unwrap();
    assert_eq!(resched.deadline, start() - hours(12));

    let cancelled = w.cancel(None, created + hours(2)).unwrap();
    let d = decide(&cancelled, &policy, &Decided::new(), created + hours(2));
    assert_eq!(d.len(), 2, "one cancellation per audience: {d:?}");
    assert!(
        d.iter()
            .all(|d| d.notice.kind() == NoticeKind::Cancelled && d.deadline == start())
    );
    assert!(d.iter().all(|d| d.reach == Reach::AlreadyTold));
}

#[test]
fn reschedule_tells_only_those_already_told_and_restarts_reminders() {
    let policy = Policy::default();
    let created = start() - hours(100);
    let w = window_created_at(created);
    let people: Vec<Recipient> = (1..=4).map(|i| recipient(i, Audience::Customer, &[], false)).collect();
    let told = |id: RecipientId| id.0 <= 2;
    let later = Schedule::new(start() + hours(24 * 7), start() + hours(24 * 9)).unwrap();
    let moved = w.reschedule(later, created + hours(10)).unwrap();
    let (decisions, rows) = plan(&moved, &people, told, &policy, &Decided::new(), created + hours(10));
    let by_notice = |n: &str| -> Vec<i64> {
        let mut ids: Vec<i64> = rows
            .iter()
            .filter(|r| r.notice.to_string() == n)
            .map(|r| r.recipient.0)
            .collect();
        ids.dedup();
        ids
    };
    assert_eq!(by_notice("rescheduled"), [1, 2]);
    assert_eq!(by_notice("announced"), [3, 4]);
    assert!(rows.iter().all(|r| r.revision == 2));
    // The new schedule gets its own reminders at the new times.
    let decisions_later = run(
        &moved,
        &policy,
        &hourly(created + hours(10), moved.schedule.starts_at()),
    );
    assert!(!decisions.is_empty() && decisions.iter().all(|d| d.revision == 2));
    assert!(!decisions_later.is_empty() && decisions_later.iter().all(|d| d.revision == 2));
    assert_eq!(
        planned(&decisions_later, Audience::Customer),
        [
            "rescheduled",
            "announced",
            "reminder:72h",
            "reminder:24h",
            "reminder:1h"
        ]
    );
    let r24 = decisions_later
        .iter()
        .find(|d| d.notice.to_string() == "reminder:24h" && d.audience == Audience::Customer)
        .unwrap();
    assert_eq!(r24.due_at, later.starts_at() - hours(24));

    // Cancel: only those told hear about it.
    let cancelled = w.cancel(Some("vendor delay".into()), created + hours(5)).unwrap();
    let (_, rows) = plan(&cancelled, &people, told, &policy, &Decided::new(), created + hours(5));
    let ids: HashSet<i64> = rows.iter().map(|r| r.recipient.0).collect();
    assert_eq!(ids, HashSet::from([1, 2]));
    assert!(rows.iter().all(|r| r.notice.kind() == NoticeKind::Cancelled));
}

#[test]
fn opt_outs_and_component_filters() {
    let policy = Policy::default();
    let created = start() - hours(100);
    let w = window_created_at(created);
    let people = vec![
        recipient(1, Audience::Customer, &[], false),
        recipient(2, Audience::Customer, &["withdraw"], false),
        recipient(3, Audience::Customer, &["pay-bill"], false),
        recipient(4, Audience::Customer, &[], true),
        recipient(5, Audience::Biller, &["pay-bill", "send-money"], false),
        recipient(6, Audience::Biller, &["buy-goods"], false),
    ];
    let (_, rows) = plan(&w, &people, |_| false, &policy, &Decided::new(), created);
    let mut got: Vec<(i64, Channel)> = rows.iter().map(|r| (r.recipient.0, r.channel)).collect();
    got.sort();
    assert_eq!(
        got,
        [
            (1, Channel::Sms),
            (1, Channel::Email),
            (2, Channel::Sms),
            (2, Channel::Email),
            (5, Channel::Sms),
            (5, Channel::Email)
        ]
    );
    assert!(rows.iter().all(|r| r.notice.kind() == NoticeKind::Announced));
}

#[test]
fn deciding_again_yields_nothing_new() {
    let created = start() - hours(100);
    let w = window_created_at(created);
    let policy = Policy::default();
    let first = decide(&w, &policy, &Decided::new(), start() - hours(30));
    // The announcement and the 72 h reminder (overtaken by it) for each audience; the billers'
    // week-ahead reminder was past before the window existed.
    let mut seen: Vec<String> = first
        .iter()
        .map(|d| format!("{} {} {}", d.audience, d.notice, d.outcome.as_str()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "biller announced planned",
            "biller reminder:168h skipped",
            "biller reminder:72h superseded",
            "customer announced planned",
            "customer reminder:72h superseded",
        ]
    );
    let decided: Decided = first.iter().map(|d| (d.notice, d.audience)).collect();
    assert!(decide(&w, &policy, &decided, start() - hours(30)).is_empty());
}

#[test]
fn a_paced_reminder_is_decided_its_fan_out_ahead_and_due_when_the_fan_out_begins() {
    let created = start() - hours(24 * 5);
    let w = window_created_at(created);
    let policy = Policy::default();
    let leads = pace::Leads {
        customers: pace::Lead {
            spread: hours(6),
            quiet_hours: None,
        },
        billers: pace::Lead::default(),
    };
    let reminder = Notice::reminder(Span::hours(24));
    let due = |now| {
        let decided: Decided = [Notice::Announced, Notice::reminder(Span::hours(72))]
            .into_iter()
            .flat_map(|n| [(n, Audience::Customer), (n, Audience::Biller)])
            .collect();
        decide_paced(&w, &policy, &decided, now, &leads)
            .into_iter()
            .filter(|d| d.audience == Audience::Customer && d.notice == reminder)
            .collect::<Vec<_>>()
    };
    let nominal = start() - hours(24);
    assert!(due(nominal - hours(6) - TimeDelta::minutes(1)).is_empty());
    let d = due(nominal - hours(6));
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].outcome, d[0].due_at, d[0].deadline),
        (Outcome::Planned, nominal - hours(6), start())
    );
    // Decided late (the daemon was down), its fan-out begins at once.
    let late = due(nominal - hours(2));
    assert_eq!(late[0].due_at, nominal - hours(2));
    // Unpaced, nothing changes: decided at its time.
    assert!(
        decide(&w, &policy, &Decided::new(), nominal - hours(1))
            .iter()
            .all(|d| d.notice != reminder || d.audience != Audience::Customer || d.outcome != Outcome::Planned)
    );
}

#[test]
fn quiet_hours_decide_a_close_reminder_ahead_by_their_length() {
    let created = start() - hours(24 * 5);
    let w = window_created_at(created);
    let policy = Policy::default();
    let night: crate::domain::QuietHours = "21:00-07:00".parse().unwrap();
    let leads = pace::Leads {
        customers: pace::Lead {
            spread: TimeDelta::zero(),
            quiet_hours: Some(night),
        },
        billers: pace::Lead::default(),
    };
    let decided: Decided = [
        Notice::Announced,
        Notice::reminder(Span::hours(72)),
        Notice::reminder(Span::hours(24)),
    ]
    .into_iter()
    .flat_map(|n| [(n, Audience::Customer), (n, Audience::Biller)])
    .collect();
    let one_hour = Notice::reminder(Span::hours(1));
    let planned_at = |now| {
        decide_paced(&w, &policy, &decided, now, &leads)
            .iter()
            .any(|d| d.audience == Audience::Customer && d.notice == one_hour && d.outcome == Outcome::Planned)
    };
    // An hour before the start is ten hours too close for quiet hours: decided eleven ahead.
    assert!(!planned_at(start() - hours(11) - TimeDelta::minutes(1)));
    assert!(planned_at(start() - hours(11)));
}
