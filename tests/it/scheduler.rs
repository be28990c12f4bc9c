//! The scheduler's tick end to end on both stores: planning, sending to the file outbox,
//! idempotence at a fixed clock, and changes in the middle of a window's life.

use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use tangazo::channels::BuildContext;
use tangazo::config::{Config, Overrides};
use tangazo::domain::{Locale, RecipientId};
use tangazo::scheduler::Scheduler;
use tangazo::shutdown::CancellationToken;

use crate::helpers::{TestDb, biller, customer, new_window, start, utc};
use crate::on_both;
use crate::sms_sink;

on_both!(
    run_once_twice_at_the_same_now_does_nothing_twice,
    a_window_from_announcement_to_completion,
    cancel_tells_only_those_told,
    an_interrupted_fan_out_resumes_after_the_last_committed_page,
    a_recipient_whose_row_cannot_be_read_is_skipped_and_named,
    two_schedulers_starting_the_same_windows_never_fail_a_tick,
    a_large_fan_out_is_sent_while_it_is_still_being_planned,
    a_tick_stopped_while_it_sends_a_fan_out_leaves_nothing_claimed,
    a_fan_out_is_written_claimed_for_its_own_lanes_only_while_no_other_process_sends,
    a_handed_fan_out_beside_another_worker_for_longer_than_a_lease_goes_out_once,
    a_handed_broadcast_beside_another_worker_for_longer_than_a_lease_goes_out_once,
    a_fan_out_renews_the_lead_once_a_quarter_of_the_lease_not_at_every_page,
);

fn config(outbox: &Path) -> Config {
    config_with(outbox, "")
}

/// The file outbox in `outbox`, and `more` of the file's text after it.
fn config_with(outbox: &Path, more: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tangazo.toml");
    std::fs::write(
        &path,
        format!(
            "[senders.outbox]\ntype = \"file\"\ndir = {:?}\n{more}",
            outbox.display().to_string()
        ),
    )
    .unwrap();
    Config::load(&path, true, std::iter::empty(), &Overrides::default()).unwrap()
}

fn lines(outbox: &Path) -> usize {
    ["sms", "email", "webhook"]
        .iter()
        .map(|c| {
            std::fs::read_to_string(outbox.join(format!("{c}.jsonl")))
                .map(|s| s.lines().count())
                .unwrap_or(0)
        })
        .sum()
}

struct Rig {
    scheduler: Scheduler,
    outbox: tempfile::TempDir,
}

impl Rig {
    fn new(db: &TestDb) -> Rig {
        Rig::named(db, "test", "")
    }
    /// A scheduler owned by `owner`, with `more` of its configuration file.
    fn named(db: &TestDb, owner: &str, more: &str) -> Rig {
        let outbox = tempfile::tempdir().unwrap();
        let config = config_with(outbox.path(), more);
        let scheduler =
            tangazo::app::scheduler(&config, &db.store, &BuildContext::with_console(std::io::sink()), owner).unwrap();
        Rig { scheduler, outbox }
    }
    async fn tick(&self, now: DateTime<Utc>) -> tangazo::scheduler::TickReport {
        self.scheduler
            .tick(&tangazo::clock::Clock::Fixed(now), &CancellationToken::new())
            .await
            .unwrap()
    }
    async fn tick_reporting(
        &self,
        now: DateTime<Utc>,
        progress: tangazo::scheduler::ProgressSink<'_>,
    ) -> tangazo::scheduler::TickReport {
        self.scheduler
            .tick_reporting(&tangazo::clock::Clock::Fixed(now), &CancellationToken::new(), progress)
            .await
            .unwrap()
    }
    fn sent(&self) -> usize {
        lines(self.outbox.path())
    }
}

async fn seed(db: &TestDb) {
    let mut people: Vec<_> = (0..20)
        .map(|i| customer(i, if i % 3 == 0 { Locale::Sw } else { Locale::En }))
        .collect();
    people[5].opt_out = true;
    people.push(biller(100));
    db.store
        .upsert_recipients(&people, utc(2015, 4, 1, 0, 0))
        .await
        .unwrap();
}

/// 19 reachable customers (the 10 even ones have email; number 5 opted out) and one biller on
/// email and webhook.
const ANNOUNCEMENT_ROWS: usize = 19 + 10 + 2;

/// Two schedulers that both believe they lead (a leader that stalled past its lease, and the
/// one that replaced it) start the same ten windows at the same instant: each window starts
/// once, and neither tick fails on the other's transition.
async fn two_schedulers_starting_the_same_windows_never_fail_a_tick(db: &TestDb) {
    seed(db).await;
    let created = start() - TimeDelta::hours(100);
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(db.store.create_window(new_window(6), created, "test").await.unwrap().id);
    }
    let (a, b) = (Rig::new(db), Rig::new(db));
    a.tick(created).await;
    let at = start() + TimeDelta::minutes(1);
    let (ra, rb) = tokio::join!(a.tick(at), b.tick(at));
    let started = ra.transitions.len() + rb.transitions.len();
    assert_eq!(started, 10, "{:?} {:?}", ra.transitions, rb.transitions);
    for id in ids {
        let w = db.store.window(id).await.unwrap();
        assert_eq!((w.status.as_str(), w.revision), ("in_progress", 2));
        let starts = db
            .store
            .history(id)
            .await
            .unwrap()
            .iter()
            .filter(|h| h.action == "started")
            .count();
        assert_eq!(starts, 1);
    }
}

/// One damaged row neither stops the tick nor the fan-out: everyone else is told, and the
/// report names the row and why.
async fn a_recipient_whose_row_cannot_be_read_is_skipped_and_named(db: &TestDb) {
    seed(db).await;
    db.execute("UPDATE recipients SET locale = 'xx' WHERE id = 2").await;
    let rig = Rig::new(db);
    let created = start() - TimeDelta::hours(100);
    db.store.create_window(new_window(48), created, "ops").await.unwrap();
    let report = rig.tick(created).await;
    // Recipient 2 is a customer on SMS only (odd ones have no email).
    assert_eq!(report.enqueued as usize, ANNOUNCEMENT_ROWS - 1);
    assert_eq!(report.dispatch.sent as usize, ANNOUNCEMENT_ROWS - 1);
    assert_eq!(report.unreadable.len(), 1, "{:?}", report.unreadable);
    let why = &report.unreadable[&2];
    assert!(why.contains("recipient 2") && why.contains("xx"), "{why}");
    // The next tick does not trip over it again for the same notice.
    let again = rig.tick(created + TimeDelta::minutes(1)).await;
    assert_eq!((again.enqueued, again.unreadable.len()), (0, 0));
}

async fn run_once_twice_at_the_same_now_does_nothing_twice(db: &TestDb) {
    seed(db).await;
    let rig = Rig::new(db);
    let created = start() - TimeDelta::hours(100);
    db.store.create_window(new_window(48), created, "ops").await.unwrap();
    let first = rig.tick(created).await;
    assert_eq!(first.enqueued as usize, ANNOUNCEMENT_ROWS);
    assert_eq!(first.dispatch.sent as usize, ANNOUNCEMENT_ROWS);
    let (bodies, rows) = db.store.sizes().await.unwrap();
    let second = rig.tick(created).await;
    assert_eq!((second.enqueued, second.dispatch.claimed), (0, 0));
    assert!(second.planned.is_empty() && second.recorded.is_empty());
    assert_eq!(rig.sent(), ANNOUNCEMENT_ROWS);
    assert_eq!(db.store.sizes().await.unwrap(), (bodies, rows));
    // Bodies are stored once per (notice, channel, locale, zone), not per recipient.
    assert_eq!(
        bodies,
        2 + 2 + 2,
        "sms en/sw, email en/sw (Nairobi), email+webhook for the Berlin biller"
    );
}

async fn a_window_from_announcement_to_completion(db: &TestDb) {
    seed(db).await;
    let rig = Rig::new(db);
    let created = start() - TimeDelta::hours(100);
    let w = db.store.create_window(new_window(48), created, "ops").await.unwrap();
    rig.tick(created).await;
    let mut hour = created;
    while hour < start() + TimeDelta::hours(40) {
        hour += TimeDelta::hours(1);
        rig.tick(hour).await;
    }
    // announced, 72h, 24h, 1h and started for the customers; 168h was past for the biller.
    let per_notice = ANNOUNCEMENT_ROWS;
    assert_eq!(rig.sent(), per_notice * 5);
    // The work overruns: the operator extends the end; those told hear about it.
    let now = start() + TimeDelta::hours(40);
    let running = db.store.window(w.id).await.unwrap();
    let extended = running.extend(start() + TimeDelta::hours(54), now).unwrap();
    db.store.save_change(&running, &extended, "ops", now).await.unwrap();
    let r = rig.tick(now).await;
    assert_eq!(
        r.dispatch.sent as usize, per_notice,
        "rescheduled to everyone already told"
    );
    // No alarm before the new end, one after it until the operator confirms.
    assert!(rig.tick(start() + TimeDelta::hours(53)).await.alarms.is_empty());
    let late = start() + TimeDelta::hours(55);
    assert_eq!(rig.tick(late).await.alarms.len(), 1);
    // Raised once for that state, not at every tick; the history says when.
    assert!(rig.tick(late + TimeDelta::minutes(30)).await.alarms.is_empty());
    let history = db.store.history(w.id).await.unwrap();
    assert_eq!(history.iter().filter(|h| h.action == "alarm").count(), 1);
    let w2 = db.store.window(w.id).await.unwrap();
    db.store
        .save_change(&w2, &w2.complete(late).unwrap(), "ops", late)
        .await
        .unwrap();
    let r = rig.tick(late).await;
    assert_eq!(r.dispatch.sent as usize, per_notice);
    assert!(r.alarms.is_empty());
    assert!(
        db.store.open_windows().await.unwrap().is_empty(),
        "a completed window closes once its notice is planned"
    );
    let log = db.store.notice_log(Some(w.id)).await.unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (log[0].notice.as_str(), log[0].outcome.as_str()),
        ("reminder:168h", "skipped")
    );
}

async fn cancel_tells_only_those_told(db: &TestDb) {
    seed(db).await;
    let rig = Rig::new(db);
    let created = start() - TimeDelta::hours(100);
    let w = db.store.create_window(new_window(48), created, "ops").await.unwrap();
    rig.tick(created).await;
    // Someone imported after the announcement was never told.
    db.store
        .upsert_recipients(&[customer(500, Locale::En)], created)
        .await
        .unwrap();
    let now = created + TimeDelta::hours(2);
    let cancelled = w.cancel(Some("vendor delay".into()), now).unwrap();
    db.store.save_change(&w, &cancelled, "ops", now).await.unwrap();
    let before = rig.sent();
    let r = rig.tick(now).await;
    assert_eq!(r.dispatch.sent as usize, ANNOUNCEMENT_ROWS);
    assert_eq!(rig.sent(), before + ANNOUNCEMENT_ROWS);
    let newcomer = db
        .store
        .recipients_page(None, RecipientId(0), 100)
        .await
        .unwrap()
        .recipients
        .last()
        .unwrap()
        .id;
    assert!(db.store.told_among(w.id, newcomer, newcomer).await.unwrap().is_empty());
    // Nothing else is ever planned for a cancelled window.
    let r = rig.tick(start() - TimeDelta::hours(1)).await;
    assert_eq!((r.enqueued, r.dispatch.claimed), (0, 0));
}

/// The daemon loop runs as a spawned task and stops when its token is cancelled. (Real time,
/// with ticks 10 ms apart: SQLite's pool timeouts would fire at once on a paused tokio clock.)
#[tokio::test]
async fn the_daemon_loop_runs_spawned_and_stops_on_its_token() {
    let db = TestDb::sqlite().await;
    seed(&db).await;
    let outbox = tempfile::tempdir().unwrap();
    let config = config(outbox.path());
    let scheduler =
        tangazo::app::scheduler(&config, &db.store, &BuildContext::with_console(std::io::sink()), "test").unwrap();
    let created = start() - TimeDelta::hours(100);
    db.store.create_window(new_window(48), created, "ops").await.unwrap();
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(tangazo::scheduler::run(
        scheduler,
        tangazo::clock::Clock::Fixed(created),
        std::time::Duration::from_millis(10),
        stop.clone(),
    ));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while lines(outbox.path()) < ANNOUNCEMENT_ROWS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon never sent the announcement"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // A few more ticks at the same instant send nothing twice.
    let ticks_later = db.store.sizes().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!daemon.is_finished(), "the loop runs until it is told to stop");
    stop.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), daemon)
        .await
        .expect("the loop stops once its token is cancelled")
        .unwrap();
    assert_eq!(
        lines(outbox.path()),
        ANNOUNCEMENT_ROWS,
        "ticking again sent nothing twice"
    );
    assert_eq!(db.store.sizes().await.unwrap(), ticks_later);
    db.finish().await;
}

/// A tick killed after committing the first part of a fan-out: the next tick continues after
/// the last committed recipient instead of reading the audience from the start.
async fn an_interrupted_fan_out_resumes_after_the_last_committed_page(db: &TestDb) {
    seed(db).await;
    let rig = Rig::new(db);
    let created = start() - TimeDelta::hours(100);
    let w = db.store.create_window(new_window(48), created, "ops").await.unwrap();
    // What the killed tick got done: the customer announcement recorded, and the rows of the
    // first eight customers committed with the fan-out's progress.
    let decisions = tangazo::planner::decide(&w, &config(rig.outbox.path()).policy, &Default::default(), created);
    let announce = decisions
        .iter()
        .find(|d| d.audience == tangazo::domain::Audience::Customer && d.outcome == tangazo::domain::Outcome::Planned)
        .unwrap();
    db.store.record_decision(w.id, announce, created).await.unwrap();
    let first = db
        .store
        .recipients_page(None, RecipientId(0), 8)
        .await
        .unwrap()
        .recipients;
    let rows: Vec<_> = tangazo::planner::fan_out(announce, &w, &first, |_| false).collect();
    let page = tangazo::storage::FanOutPage {
        window: w.id,
        revision: 1,
        notice: announce.notice,
        audience: announce.audience,
        read_from: RecipientId(0),
        read_up_to: first.last().unwrap().id,
    };
    let committed = db.store.enqueue_page(&page, &rows).await.unwrap().unwrap();
    assert!(committed > 0);
    let r = rig.tick(created).await;
    assert!(
        r.planned.iter().any(|p| p.resumed_after == Some(page.read_up_to.0)),
        "{:?}",
        r.planned
    );
    assert_eq!(
        r.enqueued as usize + committed as usize,
        ANNOUNCEMENT_ROWS,
        "each row once"
    );
    assert_eq!(rig.sent(), ANNOUNCEMENT_ROWS);
    assert!(db.store.open_fan_outs(w.id, 1).await.unwrap().is_empty());
    // Nothing is resumed twice.
    let again = rig.tick(created).await;
    assert_eq!((again.enqueued, again.dispatch.claimed), (0, 0));
}

/// `n` customers who read English, each with a phone and the even ones an email.
async fn english_customers(db: &TestDb, n: u32) {
    let people: Vec<_> = (0..n).map(|i| customer(i, Locale::En)).collect();
    db.store
        .upsert_recipients(&people, utc(2015, 4, 1, 0, 0))
        .await
        .unwrap();
}

/// Sending does not wait for the whole fan-out: the first pages go out while later ones are
/// still being planned, and every row goes out once by the end of the tick.
async fn a_large_fan_out_is_sent_while_it_is_still_being_planned(db: &TestDb) {
    english_customers(db, 40_000).await;
    let rig = Rig::new(db);
    let created = start() - TimeDelta::hours(100);
    db.store.create_window(new_window(48), created, "ops").await.unwrap();
    let events = std::sync::Mutex::new(Vec::new());
    let progress = |p: tangazo::scheduler::Progress| {
        events.lock().unwrap().push(match p {
            tangazo::scheduler::Progress::Planning { .. } => "planned a page",
            tangazo::scheduler::Progress::Sending(_) => "sent a batch",
        });
    };
    let report = rig.tick_reporting(created, &progress).await;
    let events = events.into_inner().unwrap();
    let first_sent = events.iter().position(|e| *e == "sent a batch").unwrap();
    let last_planned = events.iter().rposition(|e| *e == "planned a page").unwrap();
    assert!(
        first_sent < last_planned,
        "a batch went out before the last page was planned: {events:?}"
    );
    // An SMS each, and an email for the even ones.
    assert_eq!(report.enqueued, 60_000);
    assert_eq!(report.dispatch.sent, 60_000);
    assert_eq!(rig.sent(), 60_000);
}

/// Sending stopped after its first batch while the fan-out is still being planned (the planner
/// writes the rows that can go out at once claimed, for its own lanes): nothing is
/// left claimed, nothing is flagged as possibly sent, and the next tick sends the rest, each
/// row once.
async fn a_tick_stopped_while_it_sends_a_fan_out_leaves_nothing_claimed(db: &TestDb) {
    english_customers(db, 40_000).await;
    let rig = Rig::new(db);
    let created = start() - TimeDelta::hours(100);
    let w = db.store.create_window(new_window(48), created, "ops").await.unwrap();
    let stop = CancellationToken::new();
    let progress = |p: tangazo::scheduler::Progress| {
        if matches!(p, tangazo::scheduler::Progress::Sending(_)) {
            stop.cancel();
        }
    };
    let clock = tangazo::clock::Clock::Fixed(created);
    // A planner left waiting for lanes that stopped would never end.
    let first = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        rig.scheduler.tick_reporting(&clock, &stop, &progress),
    )
    .await
    .expect("the tick ends once sending stopped")
    .unwrap();
    assert_eq!(first.enqueued, 60_000, "planning goes on to the end");
    assert!(
        first.dispatch.sent > 0 && first.dispatch.sent < 60_000,
        "{:?}",
        first.dispatch
    );
    assert_eq!(first.left_claimed, 0);
    let rows = db.store.deliveries(w.id, None, None).await.unwrap();
    assert!(rows.iter().all(|r| !r.possibly_duplicate));
    assert!(rows.iter().all(|r| r.state != tangazo::domain::DeliveryState::Claimed));

    let second = rig.tick(created).await;
    assert_eq!(first.dispatch.sent + second.dispatch.sent, 60_000);
    assert_eq!(rig.sent(), 60_000, "each row once");
}

/// A cancellation that commits while a fan-out is between pages stops it: the pages after the
/// change are never enqueued, and what was enqueued before is superseded, never failed.
async fn a_change_between_fan_out_pages_stops_the_old_revision(db: &TestDb) {
    english_customers(db, 25_000).await;
    let rig = Rig::new(db);
    let created = start() - TimeDelta::hours(100);
    let w = db.store.create_window(new_window(48), created, "ops").await.unwrap();
    let (to_change, changed) = (std::sync::mpsc::channel::<()>(), std::sync::mpsc::channel::<()>());
    let (ask, wait) = (to_change.0, std::sync::Mutex::new(changed.1));
    let (told, done) = (to_change.1, changed.0);
    let store = db.store.clone();
    let operator = tokio::spawn(async move {
        tokio::task::spawn_blocking(move || told.recv().unwrap()).await.unwrap();
        let before = store.window(w.id).await.unwrap();
        let cancelled = before.cancel(Some("vendor delay".into()), created).unwrap();
        store.save_change(&before, &cancelled, "ops", created).await.unwrap();
        done.send(()).unwrap();
    });
    let asked = std::sync::atomic::AtomicBool::new(false);
    let progress = |p: tangazo::scheduler::Progress| {
        if matches!(p, tangazo::scheduler::Progress::Planning { .. })
            && !asked.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            // After the first page commits, the operator cancels, and the fan-out goes on only
            // once that has committed.
            ask.send(()).unwrap();
            tokio::task::block_in_place(|| wait.lock().unwrap().recv().unwrap());
        }
    };
    let report = rig.tick_reporting(created, &progress).await;
    operator.await.unwrap();
    let rows = db.store.deliveries(w.id, None, None).await.unwrap();
    // The first page of customers, an SMS each and an email for the even ones. On PostgreSQL
    // two pages are written at once: when the first is told planned the second is under way,
    // and if it holds the window's lock by the time the change asks for it, the change waits
    // for it to commit too; if not, it is refused.
    let page = usize::try_from(tangazo::storage::PAGE).unwrap();
    let pages = rows.len() / (page + page / 2);
    assert_eq!(rows.len() % (page + page / 2), 0, "whole pages");
    assert!(
        pages == 1 || (pages == 2 && !db.store.writes_take_turns()),
        "only the pages begun before the change: {pages}"
    );
    assert!(
        rows.iter()
            .all(|r| r.revision == 1 && r.state == tangazo::domain::DeliveryState::Superseded)
    );
    assert_eq!(report.dispatch.sent, 0);
    assert_eq!(rig.sent(), 0);
}

mod interleaved {
    //! The fan-out and the operator run at once: a runtime with two workers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let db = crate::helpers::TestDb::sqlite().await;
        super::a_change_between_fan_out_pages_stops_the_old_revision(&db).await;
        db.finish().await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs TANGAZO_TEST_POSTGRES; run with -- --include-ignored"]
    async fn postgres() {
        let db = crate::helpers::TestDb::postgres().await;
        super::a_change_between_fan_out_pages_stops_the_old_revision(&db).await;
        db.finish().await;
    }
}

/// Rows written claimed for this process's lanes are rows no other process can claim. On
/// PostgreSQL, where several daemons share the queue, the scheduler writes a fan-out so only
/// while no other process is alive, and asks again at every page; on SQLite always.
async fn a_fan_out_is_written_claimed_for_its_own_lanes_only_while_no_other_process_sends(db: &TestDb) {
    let rig = Rig::new(db);
    assert!(rig.scheduler.hands_over().await.unwrap(), "alone");
    let lease = std::time::Duration::from_secs(3600);
    assert_eq!(db.store.beat("other", lease, 0, 0.0).await.unwrap(), 1);
    assert_eq!(db.store.others_alive("other").await.unwrap(), 0);
    assert_eq!(db.store.others_alive(rig.scheduler.owner()).await.unwrap(), 1);
    let sqlite = db.store.writes_take_turns();
    assert_eq!(
        rig.scheduler.hands_over().await.unwrap(),
        sqlite,
        "another process alive"
    );
    // Gone, or its beat lapsed: alone again.
    db.store.leave("other").await.unwrap();
    assert!(rig.scheduler.hands_over().await.unwrap(), "the other left");
    db.store.beat("other", std::time::Duration::ZERO, 0, 0.0).await.unwrap();
    assert!(rig.scheduler.hands_over().await.unwrap(), "the other's beat lapsed");

    // A fan-out planned while the other is alive is the same fan-out: every row once.
    english_customers(db, 12_000).await;
    db.store.beat("other", lease, 0, 0.0).await.unwrap();
    let created = start() - TimeDelta::hours(100);
    let w = db.store.create_window(new_window(48), created, "ops").await.unwrap();
    let report = rig.tick(created).await;
    assert_eq!(report.enqueued, 18_000);
    assert_eq!(report.dispatch.sent, 18_000);
    assert_eq!(report.left_claimed, 0);
    let rows = db.store.deliveries(w.id, None, None).await.unwrap();
    assert!(rows.iter().all(|r| r.state == tangazo::domain::DeliveryState::Sent));
}

/// A tick of `rig`'s, telling `progress`, while `other`'s dispatcher claims from the same queue
/// until the tick ends: the tick's report and the other's.
async fn tick_beside(
    rig: &Rig,
    other: &Rig,
    clock: &tangazo::clock::Clock,
    progress: tangazo::scheduler::ProgressSink<'_>,
) -> (tangazo::scheduler::TickReport, tangazo::dispatch::DispatchReport) {
    let (stop, ticked) = (CancellationToken::new(), CancellationToken::new());
    let tick = async {
        let report = rig.scheduler.tick_reporting(clock, &stop, progress).await.unwrap();
        ticked.cancel();
        report
    };
    let beside = other
        .scheduler
        .dispatcher()
        .run_alongside(clock, None, &ticked, &stop, &|_| {});
    let (report, beside) = tokio::join!(tick, beside);
    (report, beside.unwrap())
}

/// A local SMS gateway that holds each request, and the configuration that sends SMS through
/// it with a one-second lease: sending to `customers` customers, a request for each hundred of
/// them, lasts longer than the lease however fast the rest of the run.
async fn slow_sms_with_a_short_lease(customers: u32) -> (std::sync::Arc<sms_sink::Sink>, String) {
    // 100 numbers a request (Africa's Talking's default batch), each request held in turn.
    let requests = customers.div_ceil(100);
    let hold = std::time::Duration::from_millis(1500 / u64::from(requests)).max(std::time::Duration::from_millis(1));
    let (sink, base) = sms_sink::start(hold).await;
    let more = format!(
        "{}[dispatch]\nlease = \"1s\"\nbatch_size = 500\n",
        sms_sink::sender(&base)
    );
    (sink, more)
}

/// Every number the sink was sent arrived once, and there are `n` of them.
fn each_reached_once(sink: &sms_sink::Sink, n: usize) {
    let per_number = sink.per_number();
    assert_eq!(per_number.len(), n, "every customer reached by SMS");
    let twice: Vec<_> = per_number.iter().filter(|&(_, &k)| k > 1).collect();
    assert!(twice.is_empty(), "reached more than once: {twice:?}");
}

/// A fan-out written claimed and handed to the tick's own lanes while another worker claims
/// from the same queue and settles lapsed claims, on the real clock, with a one-second lease
/// that the run outlasts (the SMS gateway is slow): every row goes out once and nothing is left
/// claimed. (A batch that waits past its lease is
/// `store::a_batch_written_claimed_that_waited_past_its_lease_goes_back_unsent`.)
async fn a_handed_fan_out_beside_another_worker_for_longer_than_a_lease_goes_out_once(db: &TestDb) {
    // Three pages of customers; each has a phone, and every other one an email.
    const N: u32 = 12_000;
    const ROWS: usize = N as usize * 3 / 2;
    english_customers(db, N).await;
    let (sink, more) = slow_sms_with_a_short_lease(N).await;
    let (rig, other) = (Rig::named(db, "test", &more), Rig::named(db, "other", &more));
    assert!(rig.scheduler.hands_over().await.unwrap());
    let created = start() - TimeDelta::hours(100);
    let w = db.store.create_window(new_window(48), created, "ops").await.unwrap();
    // Real time, from the window's creation on.
    let clock = tangazo::clock::Clock::starting_at(created);
    let began = std::time::Instant::now();
    let (report, beside) = tick_beside(&rig, &other, &clock, &|_| {}).await;
    assert!(
        began.elapsed() > std::time::Duration::from_secs(1),
        "the run outlasts a lease"
    );
    assert_eq!(report.enqueued, ROWS as u64);
    assert_eq!(report.dispatch.sent + beside.sent, ROWS as u64);
    each_reached_once(&sink, N as usize);
    assert_eq!(rig.sent() + other.sent(), ROWS - N as usize, "every email once");
    let rows = db.store.deliveries(w.id, None, None).await.unwrap();
    assert_eq!(rows.len(), ROWS);
    assert!(rows.iter().all(|r| r.state == tangazo::domain::DeliveryState::Sent));
    // Not asserted: that no row is flagged as possibly sent twice. On a loaded machine a lane
    // can stall past a one-second lease, and the other worker then settles its claim: the rows
    // are flagged, as a lapsed claim's rows always are, and still go out once (above).
}

/// A broadcast recorded with its rows handed to its own lanes (as `tangazo broadcast` does)
/// while another worker claims from the same queue and settles lapsed claims, on the real
/// clock, with a one-second lease that the run outlasts (the SMS gateway is slow): every row
/// goes out once.
async fn a_handed_broadcast_beside_another_worker_for_longer_than_a_lease_goes_out_once(db: &TestDb) {
    use tangazo::broadcast::{Content, Handing, enqueue_audience};
    use tangazo::domain::{AudienceFilter, Channel};
    const N: usize = 12_000;
    english_customers(db, N as u32).await;
    let (sink, more) = slow_sms_with_a_short_lease(N as u32).await;
    let (rig, other) = (Rig::named(db, "broadcast:1", &more), Rig::named(db, "other", &more));
    let created = start() - TimeDelta::hours(100);
    let clock = tangazo::clock::Clock::starting_at(created);
    let content = Content::Message(crate::helpers::free_message("Pay bill is back"));
    let filter = AudienceFilter {
        channels: vec![Channel::Sms],
        ..AudienceFilter::default()
    };
    let b = db
        .store
        .create_broadcast(
            &content.to_new("pay-bill-back".into(), filter, created + TimeDelta::hours(24)),
            created,
            "ops",
        )
        .await
        .unwrap();
    let dispatcher = rig.scheduler.dispatcher();
    assert!(db.store.hands_over(dispatcher.owner()).await.unwrap());
    let config = dispatcher.config();
    let (hand, handed) = tangazo::dispatch::handoff::channel(config.batches_in_flight);
    let handing = Handing {
        hand,
        owner: dispatcher.owner(),
        lease: config.lease.to_std(),
        batch: config.batch_size,
        clock: &clock,
        unpaced: true,
    };
    let (stop, recorded) = (CancellationToken::new(), CancellationToken::new());
    let began = std::time::Instant::now();
    let record = async {
        let n = enqueue_audience(&db.store, &content, &b, created, Some(handing), &stop).await;
        recorded.cancel();
        n
    };
    let send = dispatcher.run_handed(&clock, Some(b.id), &handed, &recorded, &stop, &|_| {});
    let beside = other
        .scheduler
        .dispatcher()
        .run_alongside(&clock, None, &recorded, &stop, &|_| {});
    let (enqueued, sent, beside) = tokio::join!(record, send, beside);
    let (sent, beside) = (sent.unwrap(), beside.unwrap());
    assert!(
        began.elapsed() > std::time::Duration::from_secs(1),
        "the run outlasts a lease"
    );
    assert_eq!(enqueued.unwrap(), Some(N as u64));
    assert!(sent.handed > 0, "rows were handed over");
    assert_eq!(sent.sent + beside.sent, N as u64);
    each_reached_once(&sink, N);
    assert_eq!(rig.sent() + other.sent(), 0, "nothing but SMS");
    let states = tangazo::broadcast::states(&db.store, b.id).await.unwrap();
    assert_eq!(states.get(tangazo::domain::DeliveryState::Sent), N as i64);
    assert_eq!(states.open(), 0, "nothing left claimed");
}

/// On PostgreSQL a process alone writes its fan-out's due rows claimed for its own lanes. A
/// daemon that starts in the middle of the fan-out finds every page whose writing began after
/// its first beat pending and takes its share of them; every row goes out once. Two pages are
/// written at once there: when the first is told planned, the second is already under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TANGAZO_TEST_POSTGRES; run with -- --include-ignored"]
async fn a_daemon_that_joins_a_handed_fan_out_on_postgres_gets_the_pages_written_after_it() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tangazo::scheduler::Progress;
    let db = TestDb::postgres().await;
    english_customers(&db, 40_000).await;
    let (rig, other) = (Rig::new(&db), Rig::named(&db, "other", ""));
    assert!(rig.scheduler.hands_over().await.unwrap(), "alone at the start");
    let created = start() - TimeDelta::hours(100);
    let w = db.store.create_window(new_window(48), created, "ops").await.unwrap();
    let clock = tangazo::clock::Clock::Fixed(created);
    // Rows enqueued by the first page, once it is written; the other daemon beats then, while
    // the second page is being written and before the third is begun. And rows enqueued by
    // the first two pages.
    let first_page = AtomicU64::new(0);
    let two_pages = AtomicU64::new(0);
    let progress = |p: Progress| {
        let Progress::Planning { enqueued, .. } = p else {
            return;
        };
        if first_page.load(Ordering::SeqCst) != 0 && two_pages.load(Ordering::SeqCst) == 0 {
            two_pages.store(enqueued, Ordering::SeqCst);
        }
        if first_page.load(Ordering::SeqCst) == 0 {
            first_page.store(enqueued, Ordering::SeqCst);
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(db.store.beat(
                    "other",
                    std::time::Duration::from_secs(3600),
                    0,
                    0.0,
                ))
            })
            .unwrap();
        }
    };
    let (report, beside) = tick_beside(&rig, &other, &clock, &progress).await;
    let (first, two) = (first_page.load(Ordering::SeqCst), two_pages.load(Ordering::SeqCst));
    assert_eq!(report.enqueued, 60_000);
    assert!(
        first > 0 && two == 2 * first && two < 60_000,
        "{first} rows in the first page, {two} in two"
    );
    assert_eq!(
        report.dispatch.handed, two,
        "the rows of the two pages begun before the other beat only were written claimed and handed over"
    );
    assert!(beside.sent > 0, "the newcomer took a share of the later pages");
    assert_eq!(report.dispatch.sent + beside.sent, 60_000);
    assert_eq!(rig.sent() + other.sent(), 60_000);
    let rows = db.store.deliveries(w.id, None, None).await.unwrap();
    assert_eq!(rows.len(), 60_000);
    assert!(rows.iter().all(|r| r.state == tangazo::domain::DeliveryState::Sent));
    drop((rig, other));
    db.finish().await;
}

/// On PostgreSQL a fan-out that stops while a page is still being written (here: another
/// daemon took the lead) waits for that page and gives back the batches it wrote claimed for
/// this process's lanes: nothing is left claimed or flagged, and no page after it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TANGAZO_TEST_POSTGRES; run with -- --include-ignored"]
async fn a_fan_out_that_stops_while_a_page_is_written_gives_back_what_it_wrote_claimed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tangazo::scheduler::Progress;
    let db = TestDb::postgres().await;
    english_customers(&db, 40_000).await;
    // A lease long enough that no batch handed to a lane lapses while it waits on a loaded
    // machine (that flags its rows as possibly sent, see ARCHITECTURE.md).
    let rig = Rig::named(&db, "test", "[dispatch]\nlease = \"10s\"\n");
    let created = start() - TimeDelta::hours(100);
    let w = db.store.create_window(new_window(48), created, "ops").await.unwrap();
    // Once the first page is written (the second is under way by then), the lead moves to
    // another daemon; past a quarter of the lease, the next page asks who leads.
    let first = AtomicBool::new(true);
    let progress = |p: Progress| {
        if matches!(p, Progress::Planning { .. }) && first.swap(false, Ordering::SeqCst) {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    db.store.step_down("test").await.unwrap();
                    let lease = std::time::Duration::from_secs(3600);
                    assert!(db.store.lead("other", lease).await.unwrap().is_some());
                    tokio::time::sleep(std::time::Duration::from_millis(2_600)).await;
                })
            });
        }
    };
    let report = rig.tick_reporting(created, &progress).await;
    assert_eq!(report.left_claimed, 0, "nothing left claimed");
    let rows = db.store.deliveries(w.id, None, None).await.unwrap();
    // The two pages written, an SMS each and an email for the even ones.
    let page = usize::try_from(tangazo::storage::PAGE).unwrap();
    assert_eq!(
        rows.len(),
        2 * (page + page / 2),
        "the page under way was written, none after"
    );
    assert!(rows.iter().all(|r| r.state != tangazo::domain::DeliveryState::Claimed));
    assert!(rows.iter().all(|r| !r.possibly_duplicate));
    let sent = rows
        .iter()
        .filter(|r| r.state == tangazo::domain::DeliveryState::Sent)
        .count();
    assert_eq!((rig.sent(), report.dispatch.sent), (sent, sent as u64));
    db.finish().await;
}

/// When the scheduler's lease was last taken or renewed (Unix ms, the database's clock).
async fn lead_renewed_at(db: &TestDb, lease: std::time::Duration) -> i64 {
    const UNTIL: &str = "SELECT until FROM leader WHERE role = 'scheduler'";
    let until: i64 = if db.store.writes_take_turns() {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        sqlx::query_scalar(UNTIL).fetch_one(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query_scalar(UNTIL).fetch_one(&pool).await.unwrap()
    };
    until - i64::try_from(lease.as_millis()).unwrap()
}

/// A leader checks it still leads before every page it writes, but the lease it took or
/// renewed less than a quarter of it ago still holds: a fan-out of several pages writes the
/// lead once, at the start of its tick, not a turn of SQLite's one writer per page.
async fn a_fan_out_renews_the_lead_once_a_quarter_of_the_lease_not_at_every_page(db: &TestDb) {
    let lease = std::time::Duration::from_secs(600);
    let rig = Rig::named(db, "test", "[dispatch]\nlease = \"600s\"\n");
    english_customers(db, 16_000).await;
    let created = start() - TimeDelta::hours(100);
    db.store.create_window(new_window(48), created, "ops").await.unwrap();
    let pages = std::sync::Mutex::new(Vec::new());
    let progress = |p: tangazo::scheduler::Progress| {
        if matches!(p, tangazo::scheduler::Progress::Planning { .. }) {
            pages.lock().unwrap().push(Utc::now().timestamp_millis());
        }
    };
    let report = rig.tick_reporting(created, &progress).await;
    assert_eq!(report.enqueued, 24_000);
    let pages = pages.into_inner().unwrap();
    assert!(pages.len() >= 4, "pages: {pages:?}");
    // Renewed at every page, the last renewal would come after the page before the last.
    let renewed = lead_renewed_at(db, lease).await;
    assert!(
        renewed < pages[0],
        "the lead was renewed at {renewed}, after the first page was written at {}",
        pages[0]
    );
}
