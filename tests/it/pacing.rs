//! Deadline-aware pacing and quiet hours, end to end through the scheduler on a manual clock
//! (each tick at an instant the test picks), on both stores.

use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use tangazo::channels::BuildContext;
use tangazo::clock::Clock;
use tangazo::config::{Config, Overrides};
use tangazo::domain::{NewWindow, Profile, Schedule, WindowId};
use tangazo::scheduler::{Scheduler, TickReport};
use tangazo::shutdown::CancellationToken;
use tangazo::storage::DeliveryRow;

use crate::helpers::{TestDb, new_window, sms_customer, utc};
use crate::on_both;

on_both!(
    a_large_audience_at_a_low_rate_starts_early_and_ends_before_its_deadline,
    an_impossible_deadline_is_reported_before_anything_is_sent,
    quiet_hours_are_kept_in_each_recipients_zone,
    a_deadline_inside_quiet_hours_sends_before_they_begin,
    a_paused_window_is_not_sent_until_resumed,
    a_daemon_with_a_long_tick_sends_a_paced_fan_out_as_its_slots_fall_due,
);

/// SMS through a file outbox in `dir`; `sms` is the rest of the `outbox` table (its rate),
/// `policy` the customers' policy table.
fn config(dir: &Path, sms: &str, policy: &str) -> Config {
    let path = dir.join("tangazo.toml");
    let outbox = dir.join("outbox").display().to_string();
    std::fs::write(
        &path,
        format!(
            "[policy.customers]\n{policy}\n[senders.outbox]\ntype = \"file\"\ndir = {outbox:?}\n{sms}\n\
             [dispatch]\nbatch_size = 500\n"
        ),
    )
    .unwrap();
    Config::load(&path, true, std::iter::empty(), &Overrides::default()).unwrap()
}

fn scheduler(db: &TestDb, config: &Config) -> Scheduler {
    tangazo::app::scheduler(
        config,
        &db.store,
        &BuildContext::with_console(std::io::sink()),
        "pacing",
    )
    .unwrap()
}

async fn window(db: &TestDb, start: DateTime<Utc>, created: DateTime<Utc>) -> WindowId {
    let new = NewWindow {
        schedule: Schedule::new(start, start + TimeDelta::hours(4)).unwrap(),
        ..new_window(4)
    };
    db.store.create_window(new, created, "test").await.unwrap().id
}

async fn tick(s: &Scheduler, at: DateTime<Utc>) -> TickReport {
    s.tick(&Clock::Fixed(at), &CancellationToken::new()).await.unwrap()
}

/// What a tick planned for customers (billers have reminders of their own, and none here).
fn for_customers(r: &TickReport) -> Vec<&tangazo::scheduler::NoticeDecision> {
    r.planned.iter().filter(|p| p.audience == "customer").collect()
}

async fn rows(db: &TestDb, w: WindowId, notice: &str) -> Vec<DeliveryRow> {
    db.store
        .deliveries(w, None, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.notice == notice)
        .collect()
}

/// 9,500 customers, SMS through a backend taking 2,000 a second, its slots planned at 1,900 a
/// second (the rest is room to catch up): a fan-out of 5 s. A reminder 2 s before the start
/// would end 3 s after it if it began at its time; it begins 5 s early instead, each delivery
/// in its own slot, and the last is sent before the start.
async fn a_large_audience_at_a_low_rate_starts_early_and_ends_before_its_deadline(db: &TestDb) {
    const N: u32 = 9_500;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        "rate = 2000\nburst = 200",
        "reminders = [\"2s\"]\nquiet_hours = \"off\"",
    );
    let people: Vec<Profile> = (0..N).map(|i| sms_customer(i, "Africa/Nairobi")).collect();
    db.store
        .upsert_recipients(&people, utc(2015, 4, 1, 0, 0))
        .await
        .unwrap();
    let start = utc(2015, 4, 17, 12, 0);
    let w = window(db, start, start - TimeDelta::hours(48)).await;
    let s = scheduler(db, &config);
    // The announcement, long before; all of it sent a minute later.
    tick(&s, start - TimeDelta::hours(48)).await;
    tick(&s, start - TimeDelta::hours(47)).await;
    assert_eq!(
        rows(db, w, "announced")
            .await
            .iter()
            .filter(|r| r.sent_at.is_some())
            .count(),
        N as usize
    );

    // 8 s before the start the reminder is not due yet; 7 s before, it is planned.
    let r = tick(&s, start - TimeDelta::seconds(8)).await;
    assert!(for_customers(&r).is_empty(), "{:?}", r.planned);
    let mut now = start - TimeDelta::seconds(7);
    let r = tick(&s, now).await;
    assert_eq!(for_customers(&r).len(), 1, "{:?}", r.planned);
    assert_eq!(for_customers(&r)[0].notice, "reminder:2s");
    assert!(r.cannot_meet_deadline.is_empty());
    let planned = rows(db, w, "reminder:2s").await;
    assert_eq!(planned.len(), N as usize);
    let first = planned.iter().map(|r| r.due_at).min().unwrap();
    let last = planned.iter().map(|r| r.due_at).max().unwrap();
    assert_eq!(first, start - TimeDelta::seconds(7), "begins early");
    assert!(
        last <= start - TimeDelta::seconds(2),
        "the last slot at its time: {last}"
    );
    assert!(
        last >= start - TimeDelta::seconds(3),
        "spread over the whole fan-out: {last}"
    );
    // A tick every second of the manual clock sends what has fallen due by then.
    let mut sent_per_tick = Vec::new();
    while now < start {
        let r = tick(&s, now).await;
        sent_per_tick.push(r.dispatch.sent);
        now += TimeDelta::seconds(1);
    }
    let done = rows(db, w, "reminder:2s").await;
    assert!(done.iter().all(|r| r.sent_at.is_some()), "everyone reminded");
    let last_sent = done.iter().filter_map(|r| r.sent_at).max().unwrap();
    assert!(last_sent < start, "the last before the deadline: {last_sent}");
    // Sent as their slots fell due, not all at once: about 2,000 a tick.
    assert!(sent_per_tick.iter().all(|&n| n <= 2_001 * 2), "{sent_per_tick:?}");
    assert!(
        sent_per_tick.iter().filter(|&&n| n > 0).count() >= 5,
        "{sent_per_tick:?}"
    );
}

/// A window starting in 5 s for 19,000 customers at 2,000 SMS a second (planned at 1,900, the
/// rest left to catch up): the announcement
/// cannot reach them all in time. `window add` says so with the numbers, and so does the tick
/// before its first batch; the rest expires at the deadline rather than going out late.
async fn an_impossible_deadline_is_reported_before_anything_is_sent(db: &TestDb) {
    const N: u32 = 19_000;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        "rate = 2000",
        "reminders = [\"24h\"]\nquiet_hours = \"off\"",
    );
    let people: Vec<Profile> = (0..N).map(|i| sms_customer(i, "Africa/Nairobi")).collect();
    db.store
        .upsert_recipients(&people, utc(2015, 4, 1, 0, 0))
        .await
        .unwrap();
    let now = utc(2015, 4, 17, 12, 0);
    let start = now + TimeDelta::seconds(5);

    // The command line, before anything is recorded beyond the window.
    let db_url = db.url.clone();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tangazo"))
        .args(["--config"])
        .arg(dir.path().join("tangazo.toml"))
        .args([
            "--database",
            &db_url,
            "--now",
            "2015-04-17T12:00:00Z",
            "window",
            "add",
            "--title",
            "Tight",
        ])
        .args([
            "--components",
            "send-money",
            "--start",
            "2015-04-17T12:00:05Z",
            "--end",
            "2015-04-17T16:00:00Z",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: the announced notice to 19000 customer deliveries cannot all go out before its deadline 2015-04-17T12:00:05+00:00")
            && stderr.contains("it needs 10 s"),
        "{stderr}"
    );
    assert_eq!(db.store.sizes().await.unwrap().1, 0, "nothing queued by window add");

    let s = scheduler(db, &config);
    let r = tick(&s, now).await;
    assert_eq!(r.cannot_meet_deadline.len(), 1, "{:?}", r.cannot_meet_deadline);
    let late = &r.cannot_meet_deadline[0];
    assert_eq!((late.notice.as_str(), late.total()), ("announced", u64::from(N)));
    assert_eq!(late.deadline, start);
    assert_eq!(late.end - late.start, TimeDelta::seconds(10));
    // Past the deadline, what was not sent expires; nothing is sent late.
    for k in 1..=8 {
        tick(&s, now + TimeDelta::seconds(k)).await;
    }
    let w = db.store.windows().await.unwrap()[0].id;
    let all = rows(db, w, "announced").await;
    assert!(all.iter().filter_map(|r| r.sent_at).all(|t| t < start));
    let sent = all.iter().filter(|r| r.sent_at.is_some()).count();
    assert!(sent > 0 && sent < N as usize, "{sent} sent");
}

/// A customer in London and one in Nairobi (in that order), a window starting at `start` with
/// one `reminder` and quiet hours of 21:00-07:00, announced a week before.
async fn london_and_nairobi(
    db: &TestDb,
    reminder: &str,
    start: DateTime<Utc>,
) -> (tempfile::TempDir, Scheduler, WindowId) {
    let dir = tempfile::tempdir().unwrap();
    let policy = format!("reminders = [\"{reminder}\"]\nquiet_hours = \"21:00-07:00\"");
    let config = config(dir.path(), "", &policy);
    db.store
        .upsert_recipients(
            &[sms_customer(1, "Europe/London"), sms_customer(2, "Africa/Nairobi")],
            utc(2015, 4, 1, 0, 0),
        )
        .await
        .unwrap();
    let w = window(db, start, utc(2015, 4, 10, 9, 0)).await;
    let s = scheduler(db, &config);
    tick(&s, utc(2015, 4, 10, 9, 0)).await;
    (dir, s, w)
}

/// A T−24 h reminder due at 19:30 UTC: 20:30 in London (BST), 22:30 in Nairobi, inside its
/// quiet hours. London hears it at once, Nairobi at 07:00 EAT the next morning.
async fn quiet_hours_are_kept_in_each_recipients_zone(db: &TestDb) {
    let start = utc(2015, 4, 17, 19, 30);
    let nominal = start - TimeDelta::hours(24);
    let (_dir, s, w) = london_and_nairobi(db, "24h", start).await;
    tick(&s, nominal).await;
    let reminded = rows(db, w, "reminder:24h").await;
    assert_eq!(reminded.len(), 2);
    let (london, nairobi) = (&reminded[0], &reminded[1]);
    assert_eq!(london.due_at, nominal);
    assert_eq!(nairobi.due_at, utc(2015, 4, 17, 4, 0), "07:00 EAT");
    assert!(london.sent_at.is_some() && nairobi.sent_at.is_none());
    tick(&s, utc(2015, 4, 17, 3, 59)).await;
    assert!(rows(db, w, "reminder:24h").await[1].sent_at.is_none());
    tick(&s, utc(2015, 4, 17, 4, 0)).await;
    let sent_at = rows(db, w, "reminder:24h").await[1].sent_at.unwrap();
    assert!(
        sent_at > utc(2015, 4, 17, 3, 59) && sent_at <= utc(2015, 4, 17, 4, 0),
        "{sent_at}"
    );
}

/// A T−1 h reminder due at 22:30 EAT for a window starting at 23:30 EAT: the end of quiet
/// hours would be too late, so Nairobi hears it before they begin (20:59:59 EAT). It is
/// planned ten hours ahead, the length of quiet hours, so that there is time to.
async fn a_deadline_inside_quiet_hours_sends_before_they_begin(db: &TestDb) {
    let start = utc(2015, 4, 17, 20, 30);
    let nominal = start - TimeDelta::hours(1);
    let (_dir, s, w) = london_and_nairobi(db, "1h", start).await;
    let r = tick(&s, nominal - TimeDelta::hours(10) - TimeDelta::minutes(1)).await;
    assert!(for_customers(&r).is_empty(), "{:?}", r.planned);
    let r = tick(&s, nominal - TimeDelta::hours(10)).await;
    assert_eq!(for_customers(&r).len(), 1, "{:?}", r.planned);
    let reminded = rows(db, w, "reminder:1h").await;
    assert_eq!(reminded[0].due_at, nominal, "London: 20:30 BST, not quiet");
    assert_eq!(
        reminded[1].due_at,
        utc(2015, 4, 17, 17, 59) + TimeDelta::seconds(59),
        "20:59:59 EAT"
    );
    assert!(reminded.iter().all(|r| r.sent_at.is_none()));
    tick(&s, utc(2015, 4, 17, 18, 0)).await;
    let reminded = rows(db, w, "reminder:1h").await;
    assert!(reminded[0].sent_at.is_none() && reminded[1].sent_at.is_some());
    tick(&s, nominal).await;
    assert!(rows(db, w, "reminder:1h").await.iter().all(|r| r.sent_at.is_some()));
}

/// `deliveries pause`: no tick claims the window's rows until `resume`.
async fn a_paused_window_is_not_sent_until_resumed(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "", "reminders = [\"24h\"]\nquiet_hours = \"off\"");
    db.store
        .upsert_recipients(
            &[sms_customer(1, "Africa/Nairobi"), sms_customer(2, "Africa/Nairobi")],
            utc(2015, 4, 1, 0, 0),
        )
        .await
        .unwrap();
    let created = utc(2015, 4, 10, 9, 0);
    let w = window(db, utc(2015, 4, 17, 12, 0), created).await;
    assert!(db.store.pause_window(w, "test", created).await.unwrap());
    assert!(!db.store.pause_window(w, "test", created).await.unwrap(), "once");
    let s = scheduler(db, &config);
    let r = tick(&s, created).await;
    assert_eq!((r.enqueued, r.dispatch.sent), (2, 0), "planned, not sent");
    assert_eq!(db.store.paused_windows().await.unwrap()[0].window, w.0);
    assert!(db.store.resume_window(w).await.unwrap());
    assert!(!db.store.resume_window(w).await.unwrap());
    let r = tick(&s, created + TimeDelta::minutes(1)).await;
    assert_eq!(r.dispatch.sent, 2);
}

/// A daemon with a 30 s tick and SMS at 100 a second: 300 customers' announcement is paced
/// over 3 s, and the daemon wakes for the slots rather than the tick, so nothing goes out
/// anywhere near a tick late (real clock, the daemon as its own process).
async fn a_daemon_with_a_long_tick_sends_a_paced_fan_out_as_its_slots_fall_due(db: &TestDb) {
    const N: u32 = 300;
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), "rate = 100", "quiet_hours = \"off\"");
    let people: Vec<Profile> = (0..N).map(|i| sms_customer(i, "Africa/Nairobi")).collect();
    db.store.upsert_recipients(&people, Utc::now()).await.unwrap();
    let start = Utc::now() + TimeDelta::hours(6);
    let w = window(db, start, Utc::now()).await;
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_tangazo"))
        .arg("--config")
        .arg(dir.path().join("tangazo.toml"))
        .args(["--database", &db.url, "daemon", "--tick", "30"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(25);
    let sent = loop {
        let rows = rows(db, w, "announced").await;
        if rows.len() == N as usize && rows.iter().all(|r| r.sent_at.is_some()) {
            break rows;
        }
        assert!(
            std::time::Instant::now() < until,
            "not all sent within 25 s: {}",
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status();
    let _ = daemon.wait();
    let first = sent.iter().map(|r| r.due_at).min().unwrap();
    let last = sent.iter().map(|r| r.due_at).max().unwrap();
    assert!(
        last - first >= TimeDelta::milliseconds(2_900),
        "paced over 3 s: {first} to {last}"
    );
    let latest = sent.iter().map(|r| r.sent_at.unwrap() - r.due_at).max().unwrap();
    assert!(
        latest < TimeDelta::seconds(5),
        "a delivery went out {latest} after its slot"
    );
}
