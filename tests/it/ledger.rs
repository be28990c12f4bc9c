//! The ledger under real time, on both stores: two workers with a lease much shorter than the
//! run (their batches at the default size outlive it) while lapsed claims are settled beside
//! them, a run that starts just before a deadline, and a change committed in mid-dispatch. These
//! cases run on the real clock on purpose — leases are real elapsed time — and take seconds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use tangazo::channels::BuildContext;
use tangazo::clock::Clock;
use tangazo::config::{Config, Overrides};
use tangazo::dispatch::Dispatcher;
use tangazo::domain::{RecipientId, Schedule, Window, WindowId};
use tangazo::shutdown::CancellationToken;

use crate::helpers::{TestDb, customer, new_window, start, utc};
use crate::on_both;

on_both!(
    two_workers_with_short_leases_send_nothing_twice,
    two_workers_at_the_default_batch_size_hold_batches_longer_than_a_lease,
    a_dead_workers_claim_is_sent_by_a_live_worker_within_its_run,
    a_run_that_starts_just_before_a_deadline_sends_nothing_after_it,
    a_cancel_in_mid_dispatch_supersedes_the_rest_and_records_what_went_out,
    a_reschedule_in_mid_dispatch_supersedes_the_rest_and_records_what_went_out,
);

/// A claim whose read-back is slow on a loaded database has used most of its lease by the time
/// its batch reaches a lane. The lease is renewed at once then, counted from the claim's write,
/// rather than a third of a lease after the read-back: nothing lapses while the batch goes out,
/// though lapsed claims are settled twenty times a second beside it.
///
/// On PostgreSQL, where another transaction's lock on the recipients holds up the read-back
/// (which joins them) but not the claim's write (which does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TANGAZO_TEST_POSTGRES; run with -- --include-ignored"]
async fn a_claim_read_back_slowly_is_renewed_at_once_and_does_not_lapse() {
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    // A 3-second lease; the 100 rows take a second to go out at 100 a second.
    let config = config(dir.path(), 100.0, 100, "3s");
    let n = 100;
    let w = queue(&db, n, start()).await;
    let clock = Clock::Fixed(utc(2015, 4, 10, 6, 0));
    let worker = dispatcher(&db, &config, "slow-reader");
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE recipients IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let done = CancellationToken::new();
    let work = async {
        let report = worker.run_due(&clock, &stop).await.unwrap();
        done.cancel();
        report
    };
    // The read-back waits 2.4 s of the 3-second lease: renewed a third of a lease after it
    // returned, the claim would lapse 0.4 s before its first renewal.
    let release = async {
        tokio::time::sleep(std::time::Duration::from_millis(2400)).await;
        lock.commit().await.unwrap();
    };
    let settler = settle_lapsed_until(&db, &clock, &done, std::time::Duration::from_millis(50), None);
    let (report, (), settled) = tokio::join!(work, release, settler);
    assert_eq!(settled, 0, "the slow claim lapsed");
    assert_eq!(report.sent, u64::from(n), "{report:?}");
    assert_eq!(report.lost + report.possibly_duplicate, 0, "{report:?}");
    assert_eq!(outbox(&[dir.path()]).len(), n as usize);
    assert_eq!(states(&db, w).await, BTreeMap::from([("sent".into(), i64::from(n))]));
    pool.close().await;
    db.finish().await;
}

/// A file outbox in `dir` paced at `rate` per second, `batch` rows a claim, a `lease`.
fn config(dir: &Path, rate: f64, batch: usize, lease: &str) -> Config {
    write_config(
        dir,
        &format!("rate = {rate}\n[dispatch]\nbatch_size = {batch}\nlease = \"{lease}\"\n"),
    )
}

/// A file outbox in `dir` with no rate.
fn config_unpaced(dir: &Path) -> Config {
    write_config(dir, "")
}

/// A configuration whose `outbox` sender writes to `dir/outbox`; `more` follows its table.
fn write_config(dir: &Path, more: &str) -> Config {
    let path = dir.join("tangazo.toml");
    let outbox = dir.join("outbox").display().to_string();
    std::fs::write(
        &path,
        format!("[senders.outbox]\ntype = \"file\"\ndir = {outbox:?}\n{more}"),
    )
    .unwrap();
    Config::load(&path, true, std::iter::empty(), &Overrides::default()).unwrap()
}

fn dispatcher(db: &TestDb, config: &Config, owner: &str) -> Dispatcher {
    tangazo::app::dispatcher(config, &db.store, &BuildContext::with_console(std::io::sink()), owner).unwrap()
}

/// `n` customers and one SMS each for a new window, due now, deadline `deadline`.
async fn queue(db: &TestDb, n: u32, deadline: DateTime<Utc>) -> WindowId {
    let people: Vec<_> = (0..n).map(|i| customer(i, tangazo::domain::Locale::En)).collect();
    db.store
        .upsert_recipients(&people, utc(2015, 4, 1, 0, 0))
        .await
        .unwrap();
    let w = db
        .store
        .create_window(new_window(48), utc(2015, 4, 10, 6, 0), "t")
        .await
        .unwrap();
    let people = db
        .store
        .recipients_page(None, RecipientId(0), i64::from(n))
        .await
        .unwrap()
        .recipients;
    let rows = crate::helpers::announced_sms(w.id, &people, utc(2015, 4, 10, 6, 0), deadline);
    db.store.enqueue(&rows).await.unwrap();
    w.id
}

/// Every outbox line under `dirs`, as JSON.
fn outbox(dirs: &[&Path]) -> Vec<serde_json::Value> {
    dirs.iter()
        .filter_map(|d| std::fs::read_to_string(d.join("outbox/sms.jsonl")).ok())
        .flat_map(|text| {
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn states(db: &TestDb, w: WindowId) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for r in db.store.summary(Some(w)).await.unwrap() {
        *out.entry(r.state.as_str().to_owned()).or_default() += r.count;
    }
    out
}

/// What other daemons' ticks do beside a run: settles every claim whose lease has lapsed,
/// once `every`, until `done`; how many were settled. Once one is, `stop` (if given) is
/// cancelled.
async fn settle_lapsed_until(
    db: &TestDb,
    clock: &Clock,
    done: &CancellationToken,
    every: std::time::Duration,
    stop: Option<&CancellationToken>,
) -> u64 {
    let mut settled = 0;
    loop {
        tokio::select! {
            () = done.cancelled() => return settled,
            () = tokio::time::sleep(every) => {
                settled += db.store.release_lapsed_claims(clock.now()).await.unwrap().total();
                if settled > 0 && let Some(stop) = stop {
                    stop.cancel();
                }
            }
        }
    }
}

/// Runs both workers to the end while doing what other daemons' ticks do meanwhile: settle
/// every claim whose lease has lapsed, five times a second. Their reports, and how many claims
/// were settled. Once one is, the workers are stopped: a batch that always outlives its lease
/// would otherwise be settled and claimed again for ever.
async fn run_both_settling_lapsed(
    db: &TestDb,
    (a, b): (&Dispatcher, &Dispatcher),
    clock: &Clock,
) -> (
    tangazo::dispatch::DispatchReport,
    tangazo::dispatch::DispatchReport,
    u64,
) {
    let stop = CancellationToken::new();
    let done = CancellationToken::new();
    let workers = async {
        let reports = tokio::join!(a.run_due(clock, &stop), b.run_due(clock, &stop));
        done.cancel();
        reports
    };
    let settler = settle_lapsed_until(db, clock, &done, std::time::Duration::from_millis(200), Some(&stop));
    let ((ra, rb), settled) = tokio::join!(workers, settler);
    (ra.unwrap(), rb.unwrap(), settled)
}

/// Two workers, a 2-second lease, a run of about 20 seconds: leases are renewed while batches
/// are in flight, so no claim lapses, neither takes the other's rows, and nothing goes out
/// twice.
async fn two_workers_with_short_leases_send_nothing_twice(db: &TestDb) {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Ten a second each, ten a claim: 400 rows take two workers about 20 s.
    let (ca, cb) = (config(a.path(), 10.0, 10, "2s"), config(b.path(), 10.0, 10, "2s"));
    let w = queue(db, 400, start()).await;
    let clock = Clock::Fixed(utc(2015, 4, 10, 6, 0));
    let (da, db_) = (dispatcher(db, &ca, "worker-a"), dispatcher(db, &cb, "worker-b"));
    let (ra, rb, settled) = run_both_settling_lapsed(db, (&da, &db_), &clock).await;
    assert_eq!(settled, 0, "a claim in flight lapsed");
    assert_eq!(ra.sent + rb.sent, 400);
    assert!(ra.sent > 100 && rb.sent > 100, "both worked: {ra:?} {rb:?}");
    assert_eq!(ra.lost + rb.lost + ra.possibly_duplicate + rb.possibly_duplicate, 0);
    let lines = outbox(&[a.path(), b.path()]);
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for l in &lines {
        *per_key
            .entry(l["idempotency_key"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_key.len(), 400);
    assert!(per_key.values().all(|n| *n == 1), "a message went out twice");
    assert_eq!(states(db, w).await, BTreeMap::from([("sent".into(), 400)]));
}

/// The default batch size, 2,000, with a 3-second lease and a sender that takes about eight
/// seconds for a batch: each batch outlives its lease twice over and is renewed meanwhile, so
/// no claim lapses, neither worker takes the other's rows, and nothing goes out twice.
async fn two_workers_at_the_default_batch_size_hold_batches_longer_than_a_lease(db: &TestDb) {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let more = "rate = 500\n[dispatch]\nlease = \"3s\"\n";
    let (ca, cb) = (write_config(a.path(), more), write_config(b.path(), more));
    assert_eq!(ca.dispatch.batch_size, 2000, "the test is of the default batch size");
    // Each worker sends 500 a second, and its two lanes each claim a batch of 2,000 at once:
    // the two share that rate, so each batch is held about eight seconds.
    let n = 8_000;
    let w = queue(db, n, start()).await;
    let clock = Clock::Fixed(utc(2015, 4, 10, 6, 0));
    let (da, db_) = (dispatcher(db, &ca, "worker-a"), dispatcher(db, &cb, "worker-b"));
    let began = std::time::Instant::now();
    let (ra, rb, settled) = run_both_settling_lapsed(db, (&da, &db_), &clock).await;
    assert_eq!(settled, 0, "a claim in flight lapsed");
    // Not a measure of speed: the rate limit makes the run at least this long, which is what
    // the test is about.
    assert!(
        began.elapsed() >= std::time::Duration::from_secs(6),
        "the run is longer than two leases"
    );
    assert_eq!(ra.sent + rb.sent, u64::from(n));
    assert!(ra.sent >= 2000 && rb.sent >= 2000, "both worked: {ra:?} {rb:?}");
    assert_eq!(ra.lost + rb.lost + ra.possibly_duplicate + rb.possibly_duplicate, 0);
    let lines = outbox(&[a.path(), b.path()]);
    assert_eq!(lines.len(), n as usize, "one line per delivery");
    let keys: HashSet<&str> = lines.iter().map(|l| l["idempotency_key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), n as usize, "a message went out twice");
    assert_eq!(states(db, w).await, BTreeMap::from([("sent".into(), i64::from(n))]));
}

/// A worker claims 500 rows and dies; another is in the middle of a run of about three seconds
/// when that claim's one-second lease lapses. It settles the claim and sends those rows within
/// its run, flagged possibly duplicate, rather than leaving them claimed until the run ends.
async fn a_dead_workers_claim_is_sent_by_a_live_worker_within_its_run(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    // A 2-second lease: the live worker settles lapsed claims every second.
    let config = config(dir.path(), 1000.0, 100, "2s");
    let n = 3000;
    let w = queue(db, n, start()).await;
    let clock = Clock::Fixed(utc(2015, 4, 10, 6, 0));
    let dead = db
        .store
        .claim_due(
            clock.now(),
            500,
            "dead-worker",
            std::time::Duration::from_secs(1),
            None,
            tangazo::storage::Position::FRONT,
        )
        .await
        .unwrap();
    assert_eq!(dead.rows.len(), 500);
    let live = dispatcher(db, &config, "live-worker");
    let report = live.run_due(&clock, &CancellationToken::new()).await.unwrap();
    assert_eq!(report.sent, u64::from(n), "{report:?}");
    assert_eq!(report.possibly_duplicate, 500, "{report:?}");
    assert_eq!(outbox(&[dir.path()]).len(), n as usize);
    assert_eq!(states(db, w).await, BTreeMap::from([("sent".into(), i64::from(n))]));
}

/// The clock reads three seconds before the deadline and runs; the backend takes ten a second,
/// so about thirty go out and the rest expire. None goes after the deadline, and each sent_at
/// is when it went.
async fn a_run_that_starts_just_before_a_deadline_sends_nothing_after_it(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 10.0, 5, "30s");
    let deadline = start();
    let w = queue(db, 100, deadline).await;
    let clock = Clock::starting_at(deadline - TimeDelta::seconds(3));
    let d = dispatcher(db, &config, "late-worker");
    let report = d.run_due(&clock, &CancellationToken::new()).await.unwrap();
    assert!(report.sent > 0 && report.sent < 100, "{report:?}");
    let sent = outbox(&[dir.path()]).len() as u64;
    assert_eq!(sent, report.sent, "the outbox and the ledger agree");
    // What was never claimed (due, but past the deadline by its turn) expires at the next tick.
    db.store.expire_due(clock.now()).await.unwrap();
    let s = states(db, w).await;
    assert_eq!(s.get("sent").copied().unwrap_or(0) as u64, report.sent);
    assert_eq!(
        s.get("sent").copied().unwrap_or(0) + s.get("expired").copied().unwrap_or(0),
        100,
        "{s:?}"
    );
    // The ledger's times: each before the deadline, and not all the same instant.
    let times = sent_times(db, w).await;
    assert!(times.iter().all(|t| *t < deadline), "a message went after its deadline");
    let spread = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    assert!(
        spread >= TimeDelta::seconds(1),
        "sent_at is each batch's own time, not the run's start"
    );
}

async fn sent_times(db: &TestDb, w: WindowId) -> Vec<DateTime<Utc>> {
    let rows = db
        .store
        .deliveries(w, Some(tangazo::domain::DeliveryState::Sent), None)
        .await
        .unwrap();
    rows.iter().filter_map(|r| r.sent_at).collect()
}

/// A cancellation commits while a paced dispatch is working through the announcement.
async fn a_cancel_in_mid_dispatch_supersedes_the_rest_and_records_what_went_out(db: &TestDb) {
    change_in_mid_dispatch(
        db,
        |w, at| w.cancel(Some("vendor delay".into()), at).unwrap(),
        "cancelled",
    )
    .await;
}

/// A reschedule commits while a paced dispatch is working through the announcement.
async fn a_reschedule_in_mid_dispatch_supersedes_the_rest_and_records_what_went_out(db: &TestDb) {
    change_in_mid_dispatch(
        db,
        |w, at| {
            let later = Schedule::new(start() + TimeDelta::days(7), start() + TimeDelta::days(8)).unwrap();
            w.reschedule(later, at).unwrap()
        },
        "rescheduled",
    )
    .await;
}

/// No row fails because of the change; nothing of the old revision goes out after it (but the
/// batches then in flight, recorded sent); the outbox and the ledger agree on who was told; and
/// the follow-up notice reaches exactly them.
async fn change_in_mid_dispatch(db: &TestDb, change: impl Fn(&Window, DateTime<Utc>) -> Window, follow_up: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 20.0, 10, "30s");
    let w = queue(db, 100, start()).await;
    let at = utc(2015, 4, 10, 6, 0);
    let clock = Clock::Fixed(at);
    let d = Arc::new(dispatcher(db, &config, "worker"));
    let sending = {
        let d = Arc::clone(&d);
        tokio::spawn(async move { d.run_due(&clock, &CancellationToken::new()).await })
    };
    // Once a couple of batches are out, the operator makes the change.
    let outbox_path = dir.path().to_owned();
    while outbox(&[&outbox_path]).len() < 20 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let window = db.store.window(w).await.unwrap();
    db.store
        .save_change(&window, &change(&window, at), "ops", at)
        .await
        .unwrap();
    let at_change = outbox(&[dir.path()]).len();
    let report = sending.await.unwrap().unwrap();
    let lines = outbox(&[dir.path()]);
    // Each lane of the dispatcher has at most one batch of 10 in flight.
    let in_flight = config.dispatch.batches_in_flight * 10;
    assert!(
        lines.len() <= at_change + in_flight,
        "at most the batches in flight went out after the change: {} then {}",
        at_change,
        lines.len()
    );
    let s = states(db, w).await;
    assert_eq!(s.get("failed"), None, "{s:?}");
    assert_eq!(s.get("sent").copied().unwrap_or(0) as usize, lines.len(), "{s:?}");
    assert_eq!(
        s.get("sent").copied().unwrap_or(0) + s.get("superseded").copied().unwrap_or(0),
        100
    );
    assert_eq!(report.sent as usize, lines.len());
    let told_in_outbox: HashSet<String> = lines.iter().map(|l| l["to"].as_str().unwrap().to_owned()).collect();
    let told = db
        .store
        .told_among(w, RecipientId(1), RecipientId(i64::MAX))
        .await
        .unwrap();
    assert_eq!(told.len(), told_in_outbox.len());

    // The follow-up, planned and sent by a tick: to exactly those told.
    let fast = tempfile::tempdir().unwrap();
    let scheduler = tangazo::app::scheduler(
        &config_unpaced(fast.path()),
        &db.store,
        &BuildContext::with_console(std::io::sink()),
        "ticker",
    )
    .unwrap();
    scheduler.tick(&clock, &CancellationToken::new()).await.unwrap();
    let notices = outbox(&[fast.path()]);
    let follow: HashSet<String> = notices
        .iter()
        .filter(|l| l["notice"] == follow_up && l["channel"] == "sms")
        .map(|l| l["to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        follow, told_in_outbox,
        "the {follow_up} notice goes to exactly those told"
    );
    if follow_up == "rescheduled" {
        // Those not told yet get the announcement with the new times instead.
        let announced = notices
            .iter()
            .filter(|l| l["notice"] == "announced" && l["channel"] == "sms")
            .count();
        assert_eq!(announced, 100 - told_in_outbox.len());
    }
}
