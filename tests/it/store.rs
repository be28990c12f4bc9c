//! The store conformance suite: every case runs on SQLite and on PostgreSQL.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::TimeDelta;
use tangazo::domain::{
    Audience, AudienceFilter, Channel, Locale, Localized, Notice, PlannedDelivery, RecipientId, Schedule, Span,
    WindowId, WindowStatus,
};
use tangazo::domain::{Decision, Outcome, Reach};
use tangazo::storage::{
    Claim, ClaimedDelivery, CorruptClaim, FanOutPage, Finish, HandOver, NewBroadcast, Position, StoreError,
};

use crate::helpers::{TestDb, biller, customer, free_message, new_window, start, utc};
use crate::on_both;

on_both!(
    windows_keep_history_and_refuse_stale_changes,
    enqueue_is_idempotent,
    claims_finish_expire_and_lapse,
    a_new_daemon_settles_a_dead_daemons_claims,
    changes_supersede_unsent_deliveries_of_older_revisions,
    upsert_updates_by_natural_key_and_keeps_opt_outs,
    told_and_decisions,
    broadcasts_are_named_keyed_and_scoped,
    a_fan_out_page_skips_whom_a_broadcast_of_its_window_reaches,
    a_page_planned_again_writes_its_new_rows_and_its_progress,
    the_claim_uses_the_due_index_on_a_large_queue,
    webhook_endpoints_are_kept_rotated_disabled_and_removed,
    a_success_is_kept_on_its_row_and_every_try_is_read_back,
    a_lead_keeps_its_term_until_another_daemon_leads_between,
    a_page_s_rows_that_can_go_out_at_once_are_written_claimed_in_batches,
    a_page_s_rows_are_written_as_planned_column_by_column,
    a_page_written_claimed_tells_each_batch_the_ids_of_its_own_rows,
    a_batch_written_claimed_that_waited_past_its_lease_goes_back_unsent,
    a_broadcast_s_rows_that_can_go_out_at_once_are_written_claimed_in_batches,
    a_paused_window_s_pending_rows_are_held_out_of_the_claims_index,
    a_batch_sent_with_many_bodies_keeps_each_row_s_own_body,
    an_audience_is_counted_the_same_by_groups_as_one_by_one,
);

const LEASE: Duration = Duration::from_secs(300);

/// Claims and parses: (the lease token, the rows).
async fn claim(
    db: &TestDb,
    now: chrono::DateTime<chrono::Utc>,
    limit: i64,
    owner: &str,
    lease: Duration,
    broadcast: Option<i64>,
) -> (i64, Vec<ClaimedDelivery>) {
    let claim = db
        .store
        .claim_due(now, limit, owner, lease, broadcast, Position::FRONT)
        .await
        .unwrap();
    (claim.token, claim.rows.into_iter().map(Result::unwrap).collect())
}

async fn states(db: &TestDb, window: WindowId) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for r in db.store.summary(Some(window)).await.unwrap() {
        *out.entry(r.state.as_str().to_owned()).or_default() += r.count;
    }
    out
}

fn planned(
    window: WindowId,
    revision: u32,
    notice: Notice,
    recipients: &[i64],
    due_hours_before: i64,
) -> Vec<PlannedDelivery> {
    recipients
        .iter()
        .map(|&r| PlannedDelivery {
            window,
            revision,
            notice,
            recipient: RecipientId(r),
            channel: Channel::Sms,
            endpoint: None,
            due_at: start() - TimeDelta::hours(due_hours_before),
            deadline: start(),
        })
        .collect()
}

/// The first page of window `w`'s customer announcement at revision 1, up to `read_up_to`.
fn first_announced_page(w: WindowId, read_up_to: i64) -> FanOutPage {
    FanOutPage {
        window: w,
        revision: 1,
        notice: Notice::Announced,
        audience: Audience::Customer,
        read_from: RecipientId(0),
        read_up_to: RecipientId(read_up_to),
    }
}

/// Records window `w`'s customer `notice` planned at revision 1, as the scheduler does before
/// it writes the fan-out's first page: its progress starts at `RecipientId(0)`.
async fn fan_out_recorded(db: &TestDb, w: WindowId, notice: Notice) {
    let decision = Decision {
        revision: 1,
        notice,
        audience: Audience::Customer,
        outcome: Outcome::Planned,
        reach: Reach::Eligible,
        due_at: utc(2015, 4, 10, 6, 0),
        deadline: start(),
        supersedes: Vec::new(),
    };
    db.store
        .record_decision(w, &decision, utc(2015, 4, 10, 6, 0))
        .await
        .unwrap();
}

/// A new window whose announcement is planned for each of `recipients`, pending and due 100
/// hours before it starts.
async fn announced_to(db: &TestDb, recipients: &[i64]) -> tangazo::domain::Window {
    let w = db
        .store
        .create_window(new_window(48), utc(2015, 4, 10, 6, 0), "t")
        .await
        .unwrap();
    db.store
        .enqueue(&planned(w.id, 1, Notice::Announced, recipients, 100))
        .await
        .unwrap();
    w
}

async fn seed(db: &TestDb, n: u32) -> Vec<i64> {
    let people: Vec<_> = (0..n).map(|i| customer(i, Locale::En)).collect();
    db.store
        .upsert_recipients(&people, utc(2015, 4, 1, 0, 0))
        .await
        .unwrap();
    db.store
        .recipients_page(None, RecipientId(0), 1000)
        .await
        .unwrap()
        .recipients
        .iter()
        .map(|r| r.id.0)
        .collect()
}

async fn windows_keep_history_and_refuse_stale_changes(db: &TestDb) {
    let created = utc(2015, 4, 10, 6, 0);
    let w = db.store.create_window(new_window(48), created, "alice").await.unwrap();
    assert_eq!(db.store.window(w.id).await.unwrap(), w);
    let moved = w
        .reschedule(
            Schedule::new(start() + TimeDelta::hours(24), start() + TimeDelta::hours(72)).unwrap(),
            created,
        )
        .unwrap();
    db.store.save_change(&w, &moved, "bob", created).await.unwrap();
    let again = w.cancel(None, created).unwrap();
    assert!(matches!(
        db.store.save_change(&w, &again, "carol", created).await,
        Err(StoreError::Conflict { .. })
    ));
    let stored = db.store.window(w.id).await.unwrap();
    assert_eq!(stored, moved);
    let history = db.store.history(w.id).await.unwrap();
    let summary: Vec<(u32, &str, &str)> = history
        .iter()
        .map(|h| (h.revision, h.action.as_str(), h.actor.as_str()))
        .collect();
    assert_eq!(summary, [(1, "created", "alice"), (2, "rescheduled", "bob")]);
    assert!(matches!(
        db.store.window(WindowId(999)).await,
        Err(StoreError::NoSuchWindow(_))
    ));
    assert_eq!(db.store.open_windows().await.unwrap().len(), 1);
}

async fn enqueue_is_idempotent(db: &TestDb) {
    let ids = seed(db, 25).await;
    let w = db
        .store
        .create_window(new_window(48), utc(2015, 4, 10, 6, 0), "t")
        .await
        .unwrap();
    let rows = planned(w.id, 1, Notice::Announced, &ids, 100);
    assert_eq!(db.store.enqueue(&rows).await.unwrap(), 25);
    assert_eq!(db.store.enqueue(&rows).await.unwrap(), 0);
    assert_eq!(db.store.enqueue(&rows[..10]).await.unwrap(), 0);
    let other = planned(w.id, 1, Notice::reminder(Span::hours(24)), &ids, 24);
    assert_eq!(db.store.enqueue(&other).await.unwrap(), 25);
    assert_eq!(states(db, w.id).await, BTreeMap::from([("pending".into(), 50)]));
    // Rows of several notices in one call keep each its own notice.
    let mut mixed = planned(w.id, 1, Notice::reminder(Span::hours(1)), &ids[..3], 1);
    mixed.extend(planned(w.id, 1, Notice::reminder(Span::hours(72)), &ids[..2], 72));
    assert_eq!(db.store.enqueue(&mixed).await.unwrap(), 5);
    assert_eq!(db.store.enqueue(&mixed).await.unwrap(), 0);
    let notices = count(
        db,
        "SELECT COUNT(*) FROM deliveries WHERE notice IN ('reminder:1h', 'reminder:72h') AND revision = 1",
    );
    assert_eq!(notices.await, 5);
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM deliveries WHERE notice = 'reminder:72h'").await,
        2
    );
}

async fn claims_finish_expire_and_lapse(db: &TestDb) {
    let ids = seed(db, 10).await;
    let w = announced_to(db, &ids).await;
    let now = start() - TimeDelta::hours(50);
    // Not due yet: nothing to claim before the due time.
    let (_, early) = claim(db, start() - TimeDelta::hours(101), 100, "w1", LEASE, None).await;
    assert!(early.is_empty());
    let (t1, first) = claim(db, now, 4, "w1", LEASE, None).await;
    assert_eq!(first.len(), 4);
    assert!(
        first
            .iter()
            .all(|c| c.attempts == 1 && c.phone.is_some() && !c.possibly_duplicate)
    );
    // The second worker's lease is already over: it will be taken for dead.
    let (t2, second) = claim(db, now, 100, "w2", Duration::ZERO, None).await;
    assert_eq!(second.len(), 6, "a claimed delivery is not claimed twice");
    assert_ne!(t1, t2);
    let sent_at = now + TimeDelta::seconds(3);
    let finishes = vec![
        Finish::Sent {
            id: first[0].id,
            at: sent_at,
            backend: "file".into(),
            provider_id: None,
            body_id: None,
            latency: Duration::from_millis(7),
        },
        Finish::Failed {
            id: first[1].id,
            error: "invalid number".into(),
        },
        Finish::Retry {
            id: first[2].id,
            at: now + TimeDelta::minutes(1),
            error: "busy".into(),
            maybe_sent: false,
        },
        Finish::Sent {
            id: first[3].id,
            at: sent_at,
            backend: "file".into(),
            provider_id: Some("p-1".into()),
            body_id: None,
            latency: Duration::from_millis(7),
        },
    ];
    // Fenced: the outcomes need the claim's own token.
    assert_eq!(
        db.store.finish(t2, &finishes).await.unwrap().len(),
        4,
        "another token writes nothing"
    );
    assert!(db.store.finish(t1, &finishes).await.unwrap().is_empty());
    // The retry is not due before its time, then it is.
    assert!(claim(db, now, 100, "w3", LEASE, None).await.1.is_empty());
    let (_, retry) = claim(db, now + TimeDelta::minutes(2), 100, "w3", LEASE, None).await;
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].attempts, 2);
    // Renewal keeps a live claim; a lapsed one is settled and flagged: it may have gone out.
    assert_eq!(db.store.renew(t2, Duration::ZERO).await.unwrap(), 6);
    let released = db.store.release_lapsed_claims(now).await.unwrap();
    assert_eq!(
        (released.returned, released.expired, released.superseded),
        (6, 0, 0),
        "the live claim of w3 stays"
    );
    let (t4, again) = claim(db, now, 100, "w4", LEASE, None).await;
    assert_eq!(again.len(), 6);
    assert!(again.iter().all(|c| c.possibly_duplicate && c.attempts == 2));
    // The lapsed worker comes back and finishes late: nothing of it is recorded.
    let late = vec![Finish::Sent {
        id: second[0].id,
        at: sent_at,
        backend: "file".into(),
        provider_id: None,
        body_id: None,
        latency: Duration::from_millis(7),
    }];
    assert_eq!(db.store.finish(t2, &late).await.unwrap(), vec![second[0].id]);
    assert_eq!(db.store.claimed_by("w4").await.unwrap(), 6);
    // w4 dies holding them, and the deadline passes before they are looked at: expired, with
    // the reason, not silently superseded or sent.
    db.store.renew(t4, Duration::ZERO).await.unwrap();
    let released = db.store.release_lapsed_claims(start()).await.unwrap();
    assert_eq!((released.returned, released.expired), (0, 6));
    let (_, none) = claim(db, start() - TimeDelta::hours(1), 100, "w5", LEASE, None).await;
    assert!(none.is_empty());
    // Deadline passed: everything unsent expires, nothing sent changes.
    db.store.release_lapsed_claims(start()).await.unwrap();
    assert_eq!(
        db.store.expire_due(start()).await.unwrap(),
        0,
        "w3's retry is still claimed"
    );
    assert_eq!(
        states(db, w.id).await,
        BTreeMap::from([
            ("claimed".into(), 1),
            ("expired".into(), 6),
            ("failed".into(), 1),
            ("sent".into(), 2)
        ])
    );
    let flagged: i64 = db
        .store
        .summary(Some(w.id))
        .await
        .unwrap()
        .iter()
        .map(|r| r.possibly_duplicate)
        .sum();
    assert_eq!(flagged, 6);
}

/// A SQLite daemon that takes the lock settles what the dead daemon before it left claimed at
/// once, flagged; claims of other kinds of worker are left to their leases.
async fn a_new_daemon_settles_a_dead_daemons_claims(db: &TestDb) {
    let ids = seed(db, 4).await;
    announced_to(db, &ids).await;
    let now = start() - TimeDelta::hours(50);
    claim(db, now, 2, "daemon@host:1", LEASE, None).await;
    claim(db, now, 2, "broadcast:7", LEASE, None).await;
    let released = db.store.release_dead_daemons("daemon@host:2", now).await.unwrap();
    assert_eq!(released.returned, 2);
    assert_eq!(db.store.claimed_by("broadcast:7").await.unwrap(), 2);
    let (_, again) = claim(db, now, 10, "daemon@host:2", LEASE, None).await;
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|c| c.possibly_duplicate));
}

async fn changes_supersede_unsent_deliveries_of_older_revisions(db: &TestDb) {
    let ids = seed(db, 6).await;
    let created = utc(2015, 4, 10, 6, 0);
    let w = db.store.create_window(new_window(48), created, "t").await.unwrap();
    db.store
        .enqueue(&planned(w.id, 1, Notice::Announced, &ids, 100))
        .await
        .unwrap();
    let now = start() - TimeDelta::hours(90);
    let (token, claimed) = claim(db, now, 2, "w", LEASE, None).await;
    let sent = |id| Finish::Sent {
        id,
        at: now,
        backend: "file".into(),
        provider_id: None,
        body_id: None,
        latency: Duration::from_millis(7),
    };
    db.store.finish(token, &[sent(claimed[0].id)]).await.unwrap();
    // One sent, one in flight, four queued: the cancellation supersedes the four queued and
    // leaves the one in flight to its worker.
    let reason = Localized {
        en: "vendor delay".into(),
        sw: Some("msambazaji amechelewa".into()),
    };
    let cancelled = w.cancel(Some(reason.clone()), now).unwrap();
    assert_eq!(db.store.save_change(&w, &cancelled, "ops", now).await.unwrap(), 4);
    // It went out while the change committed: the ledger says so, and it counts as told.
    assert!(db.store.finish(token, &[sent(claimed[1].id)]).await.unwrap().is_empty());
    assert_eq!(
        states(db, w.id).await,
        BTreeMap::from([("sent".into(), 2), ("superseded".into(), 4)])
    );
    let stored = db.store.window(w.id).await.unwrap();
    assert_eq!((stored.status, stored.revision), (WindowStatus::Cancelled, 2));
    assert_eq!(stored.cancel_reason, Some(reason), "both languages are kept");
    // A fan-out page of the old revision is refused once the change has committed.
    let page = FanOutPage {
        window: w.id,
        revision: 1,
        notice: Notice::reminder(Span::hours(24)),
        audience: Audience::Customer,
        read_from: RecipientId(0),
        read_up_to: RecipientId(ids[5]),
    };
    let rows = planned(w.id, 1, Notice::reminder(Span::hours(24)), &ids, 24);
    assert_eq!(db.store.enqueue_page(&page, &rows).await.unwrap(), None);
    assert_eq!(
        states(db, w.id).await.values().sum::<i64>(),
        6,
        "nothing of it was enqueued"
    );
}

async fn upsert_updates_by_natural_key_and_keeps_opt_outs(db: &TestDb) {
    let now = utc(2015, 4, 1, 0, 0);
    let mut a = customer(1, Locale::En);
    let b = biller(2);
    db.store.upsert_recipients(&[a.clone(), b.clone()], now).await.unwrap();
    assert_eq!(db.store.count_recipients().await.unwrap(), 2);
    assert!(
        db.store
            .set_opt_out(a.phone.as_ref().unwrap().as_str(), true, now)
            .await
            .unwrap()
    );
    assert!(!db.store.set_opt_out("+254799999999", true, now).await.unwrap());
    // Re-import with a new name and locale and opt_out = false: updated, still opted out.
    a.name = "Renamed".into();
    a.locale = Locale::Sw;
    db.store.upsert_recipients(&[a.clone(), a.clone()], now).await.unwrap();
    assert_eq!(db.store.count_recipients().await.unwrap(), 2);
    let all = db
        .store
        .recipients_page(None, RecipientId(0), 10)
        .await
        .unwrap()
        .recipients;
    let first = &all[0].profile;
    assert_eq!(
        (first.name.as_str(), first.locale, first.opt_out),
        ("Renamed", Locale::Sw, true)
    );
    let billers = db
        .store
        .recipients_page(Some(Audience::Biller), RecipientId(0), 10)
        .await
        .unwrap()
        .recipients;
    assert_eq!(billers.len(), 1);
    assert_eq!(billers[0].profile, b);
    assert!(
        db.store
            .set_opt_out(a.phone.as_ref().unwrap().as_str(), false, now)
            .await
            .unwrap()
    );
    let all = db
        .store
        .recipients_page(None, RecipientId(0), 10)
        .await
        .unwrap()
        .recipients;
    assert!(!all[0].profile.opt_out);
}

async fn told_and_decisions(db: &TestDb) {
    let ids = seed(db, 5).await;
    let w = db
        .store
        .create_window(new_window(48), utc(2015, 4, 10, 6, 0), "t")
        .await
        .unwrap();
    let r72 = Notice::reminder(Span::hours(72));
    db.store.enqueue(&planned(w.id, 1, r72, &ids, 72)).await.unwrap();
    let now = start() - TimeDelta::hours(71);
    let (token, claimed) = claim(db, now, 2, "w", LEASE, None).await;
    let sent: Vec<Finish> = claimed
        .iter()
        .map(|c| Finish::Sent {
            id: c.id,
            at: now,
            backend: "file".into(),
            provider_id: None,
            body_id: None,
            latency: Duration::from_millis(7),
        })
        .collect();
    db.store.finish(token, &sent).await.unwrap();
    let told = db
        .store
        .told_among(w.id, RecipientId(ids[0]), RecipientId(ids[4]))
        .await
        .unwrap();
    assert_eq!(told.len(), 2);
    assert!(told.contains(&claimed[0].recipient));
    // A later reminder supersedes the unsent rest of the earlier one for its audience.
    let d = Decision {
        revision: 1,
        notice: Notice::reminder(Span::hours(24)),
        audience: Audience::Customer,
        outcome: Outcome::Planned,
        reach: Reach::Eligible,
        due_at: start() - TimeDelta::hours(24),
        deadline: start(),
        supersedes: vec![r72],
    };
    assert_eq!(db.store.record_decision(w.id, &d, now).await.unwrap(), 3);
    assert_eq!(db.store.record_decision(w.id, &d, now).await.unwrap(), 0);
    let decided = db.store.decided(w.id, 1).await.unwrap();
    assert!(decided.contains(&(Notice::reminder(Span::hours(24)), Audience::Customer)));
    assert_eq!(decided.len(), 1);
    assert!(db.store.decided(w.id, 2).await.unwrap().is_empty());
}

async fn broadcasts_are_named_keyed_and_scoped(db: &TestDb) {
    let ids = seed(db, 4).await;
    let now = utc(2015, 4, 20, 7, 0);
    let message = free_message("Pay bill is back");
    let new = NewBroadcast {
        name: "pay-bill-back".into(),
        window: None,
        revision: None,
        notice: None,
        message: Some(message.clone()),
        filter: AudienceFilter {
            channels: vec![Channel::Sms],
            ..AudienceFilter::default()
        },
        deadline: now + TimeDelta::hours(24),
    };
    let b = db.store.create_broadcast(&new, now, "ops").await.unwrap();
    assert_eq!(
        db.store.create_broadcast(&new, now, "ops").await.unwrap(),
        b,
        "a rerun finds the same broadcast"
    );
    let other = NewBroadcast {
        message: Some(free_message("Other")),
        ..new.clone()
    };
    assert!(matches!(
        db.store.create_broadcast(&other, now, "ops").await,
        Err(StoreError::BroadcastNameTaken(_))
    ));
    assert_eq!(db.store.broadcast(b.id).await.unwrap().message, Some(message));

    let rows: Vec<(RecipientId, Channel, Option<i64>)> =
        ids.iter().map(|&i| (RecipientId(i), Channel::Sms, None)).collect();
    assert_eq!(db.store.enqueue_broadcast(&b, &rows, now).await.unwrap(), 4);
    assert_eq!(
        db.store.enqueue_broadcast(&b, &rows, now).await.unwrap(),
        0,
        "keyed by (broadcast, recipient, channel)"
    );
    // A window's own rows for the same recipients are another key.
    let w = db
        .store
        .create_window(new_window(48), utc(2015, 4, 10, 6, 0), "t")
        .await
        .unwrap();
    assert_eq!(
        db.store
            .enqueue(&planned(w.id, 1, Notice::Announced, &ids, 100))
            .await
            .unwrap(),
        4
    );
    let (_, claimed) = claim(db, now, 100, "b", LEASE, Some(b.id)).await;
    assert_eq!(claimed.len(), 4, "only the broadcast's rows");
    assert!(claimed.iter().all(|c| c.broadcast == Some(b.id) && c.window.is_none()));
    assert_eq!(
        db.store.broadcast_states(b.id).await.unwrap(),
        vec![(tangazo::domain::DeliveryState::Claimed, 4)],
        "the broadcast's rows, not the window's"
    );

    // Canary seeds: stored once, never in an audience page; an existing recipient stays as is.
    let existing = customer(0, Locale::En);
    let staff = customer(900, Locale::Sw);
    let seeded = db
        .store
        .seed_recipients(&[existing.clone(), staff.clone()], now)
        .await
        .unwrap();
    assert_eq!(seeded.len(), 2);
    assert_eq!(seeded[0].profile.name, existing.name);
    let audience = db
        .store
        .recipients_page(None, RecipientId(0), 100)
        .await
        .unwrap()
        .recipients;
    assert_eq!(audience.len(), 4, "the new seed is not in the audience");
    assert!(
        db.store
            .seed_recipients(std::slice::from_ref(&staff), now)
            .await
            .unwrap()[0]
            .id
            == seeded[1].id
    );
    // Imported later as a customer, the seed joins the audience.
    db.store.upsert_recipients(&[staff], now).await.unwrap();
    assert_eq!(
        db.store
            .recipients_page(None, RecipientId(0), 100)
            .await
            .unwrap()
            .recipients
            .len(),
        5
    );
}

/// The claim is served by the due-order index once the queue is large, so its cost does not
/// grow with the queue: the plan is read with EXPLAIN after a bulk load.
/// A page of a window's fan-out leaves out the recipients a broadcast of the same notice already
/// reaches, and checks nobody when no broadcast of the window exists; a broadcast of the window
/// leaves out whom the pages reached.
async fn a_fan_out_page_skips_whom_a_broadcast_of_its_window_reaches(db: &TestDb) {
    let ids = seed(db, 6).await;
    let created = utc(2015, 4, 10, 6, 0);
    let now = utc(2015, 4, 10, 7, 0);
    let notice = Notice::Announced;
    let page = |w: WindowId, read_up_to: i64| FanOutPage {
        window: w,
        revision: 1,
        notice,
        audience: Audience::Customer,
        read_from: RecipientId(0),
        read_up_to: RecipientId(read_up_to),
    };
    // No broadcast: every row of the page goes in.
    let quiet = db.store.create_window(new_window(48), created, "t").await.unwrap();
    fan_out_recorded(db, quiet.id, notice).await;
    let rows = planned(quiet.id, 1, notice, &ids[..3], 100);
    assert_eq!(
        db.store.enqueue_page(&page(quiet.id, ids[2]), &rows).await.unwrap(),
        Some(3)
    );

    // A broadcast of the window's announcement reached the first two.
    let w = db.store.create_window(new_window(48), created, "t").await.unwrap();
    let b = db
        .store
        .create_broadcast(
            &NewBroadcast {
                name: "announce-again".into(),
                window: Some(w.id),
                revision: Some(1),
                notice: Some(notice),
                message: None,
                filter: AudienceFilter {
                    channels: vec![Channel::Sms],
                    ..AudienceFilter::default()
                },
                deadline: start(),
            },
            now,
            "ops",
        )
        .await
        .unwrap();
    let reached: Vec<_> = ids[..2].iter().map(|&i| (RecipientId(i), Channel::Sms, None)).collect();
    assert_eq!(db.store.enqueue_broadcast(&b, &reached, now).await.unwrap(), 2);
    fan_out_recorded(db, w.id, notice).await;
    let rows = planned(w.id, 1, notice, &ids[..4], 100);
    assert_eq!(
        db.store.enqueue_page(&page(w.id, ids[3]), &rows).await.unwrap(),
        Some(2),
        "the two the broadcast reaches are left out"
    );
    // And the other way round: the broadcast, run again wider, leaves out whom the page reached.
    let everyone: Vec<_> = ids.iter().map(|&i| (RecipientId(i), Channel::Sms, None)).collect();
    assert_eq!(db.store.enqueue_broadcast(&b, &everyone, now).await.unwrap(), 2);
    assert_eq!(states(db, w.id).await, BTreeMap::from([("pending".into(), 6)]));
}

/// A page follows on from the fan-out's progress or is refused. One whose rows are partly in
/// the queue already writes only its new rows, handed or not, and its progress commits with
/// them: a row already there does not fail the page.
async fn a_page_planned_again_writes_its_new_rows_and_its_progress(db: &TestDb) {
    let ids = seed(db, 8).await;
    let created = utc(2015, 4, 10, 6, 0);
    let now = start() - TimeDelta::hours(50);
    let w = db.store.create_window(new_window(48), created, "t").await.unwrap();
    fan_out_recorded(db, w.id, Notice::Announced).await;
    let page = |read_from: i64, read_up_to: i64| FanOutPage {
        window: w.id,
        revision: 1,
        notice: Notice::Announced,
        audience: Audience::Customer,
        read_from: RecipientId(read_from),
        read_up_to: RecipientId(read_up_to),
    };
    let progress = || async {
        let open = db.store.open_fan_outs(w.id, 1).await.unwrap();
        assert_eq!(open.len(), 1);
        open[0].1.0
    };
    let rows = planned(w.id, 1, Notice::Announced, &ids, 100);
    assert_eq!(
        db.store.enqueue_page(&page(0, ids[2]), &rows[..3]).await.unwrap(),
        Some(3)
    );
    assert_eq!(progress().await, ids[2]);
    // The progress has moved on from where this page follows: it is refused, nothing written.
    assert_eq!(db.store.enqueue_page(&page(0, ids[4]), &rows[..5]).await.unwrap(), None);
    assert_eq!(states(db, w.id).await, BTreeMap::from([("pending".into(), 3)]));
    assert_eq!(
        db.store.enqueue_page(&page(ids[2], ids[4]), &rows[..5]).await.unwrap(),
        Some(2),
        "the three already queued are left alone"
    );
    assert_eq!(progress().await, ids[4]);
    // Handed: the new rows are written claimed, those already queued stay as they were.
    let hand = HandOver {
        owner: "daemon@a",
        lease: LEASE,
        batch: 10,
        now,
    };
    let written = db
        .store
        .enqueue_page_handing(&page(ids[4], ids[7]), &rows, Some(&hand))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(written.inserted, 3);
    let handed: Vec<usize> = written
        .claimed
        .iter()
        .flat_map(|b| b.rows.iter().map(|&(_, at)| at))
        .collect();
    assert_eq!(handed, vec![5, 6, 7], "only the new rows are handed");
    assert_eq!(progress().await, ids[7]);
    assert_eq!(
        states(db, w.id).await,
        BTreeMap::from([("claimed".into(), 3), ("pending".into(), 5)])
    );
}

/// 30,000 customers with a window's announcement pending for each.
async fn a_large_queue(db: &TestDb) {
    let people: Vec<_> = (0..30_000).map(|i| customer(i, Locale::En)).collect();
    db.store
        .upsert_recipients(&people, utc(2015, 4, 1, 0, 0))
        .await
        .unwrap();
    let ids: Vec<i64> = (1..=30_000).collect();
    announced_to(db, &ids).await;
}

async fn the_claim_uses_the_due_index_on_a_large_queue(db: &TestDb) {
    a_large_queue(db).await;
    db.store.after_bulk_load(30_000).await.unwrap();
    let now = tangazo::domain::to_millis(start() - TimeDelta::hours(50));
    let postgres = db.url.starts_with("postgres");
    let (file, explain) = if postgres {
        ("postgres", "EXPLAIN ")
    } else {
        ("sqlite", "EXPLAIN QUERY PLAN ")
    };
    let sql = std::fs::read_to_string(format!(
        "{}/src/storage/sql/{file}/claim.sql",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let sql = format!("{explain}{sql}");
    // A claim from half way along the queue, as a long run's claims are.
    let half_way = (tangazo::domain::to_millis(start() - TimeDelta::hours(100)), 15_000_i64);
    // The same query and binds on either pool; the plan's text is column `$col` of its rows.
    macro_rules! explain {
        ($pool:ty, $row:ty, $col:tt) => {{
            let pool = <$pool>::connect(&db.url).await.unwrap();
            let rows: Vec<$row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind("w")
                .bind(60_000_i64)
                .bind(now)
                .bind(500_i64)
                .bind(None::<i64>)
                .bind(1_i64)
                .bind(half_way.0)
                .bind(half_way.1)
                .fetch_all(&pool)
                .await
                .unwrap();
            pool.close().await;
            rows.into_iter().map(|r| r.$col).collect::<Vec<String>>()
        }};
    }
    let plan = if postgres {
        explain!(sqlx::PgPool, (String,), 0)
    } else {
        explain!(sqlx::SqlitePool, (i64, i64, i64, String), 3)
    };
    let plan = plan.join("\n");
    assert!(plan.contains("deliveries_due"), "{plan}");
    // The scan starts at the position, not at the front of the index.
    let starts_there = if postgres {
        "Index Cond: ((ROW(due_at, id) > ROW("
    } else {
        "USING INDEX deliveries_due (due_at>?"
    };
    assert!(plan.contains(starts_there), "the claim scans from the front:\n{plan}");
    assert!(
        !plan.contains("Sort") && !plan.contains("TEMP B-TREE"),
        "the claim sorts the queue:\n{plan}"
    );
}

/// Billers' webhook endpoints on both stores: registration, the routes fan-out reads, secret
/// rotation (the previous secret signs until its overlap ends), the failure streak, disabling,
/// a claimed webhook row carrying its endpoint, and removal (kept, disabled, once used).
async fn webhook_endpoints_are_kept_rotated_disabled_and_removed(db: &TestDb) {
    use tangazo::domain::{EventType, NoticeKind, Secret};
    use tangazo::storage::NewEndpoint;
    let now = utc(2015, 4, 10, 6, 0);
    db.store.upsert_recipients(&[biller(1)], now).await.unwrap();
    let who = db
        .store
        .recipients_page(None, RecipientId(0), 1)
        .await
        .unwrap()
        .recipients[0]
        .id;
    let new = |url: &str, events: Vec<EventType>| NewEndpoint {
        recipient: who,
        url: url.into(),
        secret: Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        events,
        components: vec!["pay-bill".parse().unwrap()],
    };
    let first = db
        .store
        .add_endpoint(&new("https://a.example/hook", vec![]), now)
        .await
        .unwrap();
    let second = db
        .store
        .add_endpoint(
            &new("https://b.example/hook", vec![EventType(NoticeKind::Cancelled)]),
            now,
        )
        .await
        .unwrap();
    let listed = db.store.endpoints(Some(who)).await.unwrap();
    assert_eq!(listed.iter().map(|e| e.id).collect::<Vec<_>>(), [first, second]);
    assert_eq!(listed[1].events, ["window.cancelled"]);
    let routes = db.store.endpoint_routes(&[who]).await.unwrap();
    assert_eq!(routes[&who].len(), 2);
    assert!(routes[&who][1].wants(NoticeKind::Cancelled, &["pay-bill".parse().unwrap()]));
    assert!(!routes[&who][1].wants(NoticeKind::Announced, &["pay-bill".parse().unwrap()]));

    // The secret is kept whole; a rotation keeps the old one signing for the overlap.
    let (info, secret) = db.store.endpoint_with_secret(first).await.unwrap().unwrap();
    assert_eq!(
        (info.url.as_str(), secret.expose()),
        ("https://a.example/hook", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    );
    let rotated = Secret::new("whsec_bmV3IHNlY3JldCBvZiB0d2VudHktZm91ciBi");
    assert!(
        db.store
            .rotate_endpoint_secret(first, &rotated, chrono::Utc::now() + TimeDelta::hours(24))
            .await
            .unwrap()
    );
    // A webhook row for the endpoint, claimed: it carries the URL and both secrets.
    let w = db.store.create_window(new_window(24), now, "ops").await.unwrap();
    let row = PlannedDelivery {
        window: w.id,
        revision: 1,
        notice: Notice::Announced,
        recipient: who,
        channel: Channel::Webhook,
        endpoint: Some(first),
        due_at: now,
        deadline: start(),
    };
    assert_eq!(
        db.store.enqueue(&[row.clone(), row]).await.unwrap(),
        1,
        "keyed by endpoint too"
    );
    let (_, claimed) = claim(db, now, 10, "w", LEASE, None).await;
    let endpoint = claimed[0].endpoint.clone().unwrap();
    assert_eq!(endpoint.url, "https://a.example/hook");
    let secrets: Vec<&str> = endpoint.secrets.iter().map(Secret::expose).collect();
    assert_eq!(secrets, [rotated.expose(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);

    // The failure streak: its start is kept until a success ends it.
    assert_eq!(db.store.endpoint_outcome(second, false, now).await.unwrap(), Some(now));
    let later = now + TimeDelta::days(2);
    assert_eq!(
        db.store.endpoint_outcome(second, false, later).await.unwrap(),
        Some(now)
    );
    assert_eq!(db.store.endpoint_outcome(second, true, later).await.unwrap(), None);
    assert_eq!(
        db.store.endpoint_outcome(second, false, later).await.unwrap(),
        Some(later)
    );
    assert!(
        db.store
            .set_endpoint_disabled(second, Some("the receiver answered 410 Gone"))
            .await
            .unwrap()
    );
    assert!(!db.store.endpoint_routes(&[who]).await.unwrap()[&who][1].enabled);

    // Removal: one never used goes; one with deliveries stays, disabled.
    assert!(db.store.remove_endpoint(second).await.unwrap());
    assert!(db.store.remove_endpoint(first).await.unwrap());
    let left = db.store.endpoints(None).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].id, left[0].disabled.as_deref()), (first, Some("removed")));
    assert!(!db.store.remove_endpoint(999).await.unwrap());
}

/// The SQLite built into the binary is compiled as `.cargo/config.toml` says: without memory
/// statistics or memory management, each of which puts one mutex shared by every connection
/// on SQLite's allocations or page fetches.
#[tokio::test]
async fn the_built_in_sqlite_shares_no_mutex_between_connections() {
    use sqlx::Connection as _;
    let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:").await.unwrap();
    let options: Vec<String> = sqlx::query_scalar("PRAGMA compile_options")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert!(options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"), "{options:?}");
    assert!(!options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"), "{options:?}");
}

/// SQLite's writes go through the store's own writing connection; once the store is closed, a
/// write is refused with an error that says so, and nothing waits for a connection that is gone.
#[tokio::test]
async fn a_closed_sqlite_store_refuses_writes_with_an_error() {
    let db = TestDb::sqlite().await;
    db.store.close().await;
    let err = db
        .store
        .claim_due(start(), 10, "after-close", LEASE, None, Position::FRONT)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Closed), "{err:?}");
    assert_eq!(err.to_string(), "the database was closed");
    let err = db.store.lead("after-close", LEASE).await.unwrap_err();
    assert!(matches!(err, StoreError::Closed), "{err:?}");
}

/// Writing a row of SQLite's ledger builds no temporary index: the check on its state names
/// each state, where a list (`state IN (…)`) was built into a temporary index for every row
/// planned, claimed or recorded sent (migration 0014). The check still refuses a state that
/// is not one.
#[tokio::test]
async fn writing_a_sqlite_ledger_row_builds_no_temporary_index() {
    use sqlx::{Connection as _, Row as _};
    let db = TestDb::sqlite().await;
    let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    let insert = "INSERT INTO deliveries (window_id, revision, notice, recipient_id, channel, due_at, deadline) \
                  VALUES (1, 1, 'announced', 1, 'sms', 1, 2)";
    let update = "UPDATE deliveries SET state = 'sent', sent_at = 1, backend = 'file' WHERE id = 1";
    for sql in [insert, update] {
        let opcodes: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get("opcode"))
            .collect();
        assert!(opcodes.iter().any(|o| o == "Insert"), "{sql}: {opcodes:?}");
        assert!(!opcodes.iter().any(|o| o == "OpenEphemeral"), "{sql}: {opcodes:?}");
    }
    sqlx::query(insert).execute(&mut conn).await.unwrap();
    sqlx::query(update).execute(&mut conn).await.unwrap();
    let refused = sqlx::query("UPDATE deliveries SET state = 'lost' WHERE id = 1")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("CHECK constraint failed"), "{refused}");
    conn.close().await.unwrap();
    db.finish().await;
}

/// A SQLite file the store creates has pages of 16 KiB; one made before keeps its own size.
#[tokio::test]
async fn a_new_sqlite_file_has_16_kib_pages_and_an_older_one_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let page_size = |url: String| async move {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let size: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&pool).await.unwrap();
        pool.close().await;
        size
    };
    let new = format!("sqlite://{}", dir.path().join("new.db").display());
    tangazo::storage::Store::connect(&new).await.unwrap().close().await;
    assert_eq!(page_size(new).await, 16_384);

    let old = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    sqlx::raw_sql("CREATE TABLE before_tangazo (x INTEGER)")
        .execute(&sqlx::SqlitePool::connect(&old).await.unwrap())
        .await
        .unwrap();
    tangazo::storage::Store::connect(&old).await.unwrap().close().await;
    assert_eq!(page_size(old).await, 4_096);
}

/// Migration 0013 builds SQLite's ledger again without its references to windows, recipients,
/// broadcasts and bodies (as PostgreSQL's 0011 dropped them), and 0014 builds it again: every
/// row and every index come through, and the attempts log still may name only deliveries that
/// exist.
#[tokio::test]
async fn the_sqlite_ledger_rebuilt_without_parent_checks_keeps_every_row() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    use std::str::FromStr as _;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let connect = || async {
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true)
            .foreign_keys(true);
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap()
    };
    let pool = connect().await;
    sqlx::migrate!("migrations/sqlite").run_to(12, &pool).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO windows (id, title_en, components, starts_at, ends_at, prev_starts_at, prev_ends_at, zone, status, \
             revision, last_change, auto_complete, created_at, revised_at) \
         VALUES (1, 'Migration', 'send-money', 2000, 3000, 2000, 3000, 'Africa/Nairobi', 'scheduled', 1, 'created', TRUE, 1, 1);
         INSERT INTO recipients (id, natural_key, kind, name, phone, locale, zone, updated_at) \
         VALUES (1, '+254700000001', 'customer', 'Wanjiku', '+254700000001', 'sw', 'Africa/Nairobi', 1),
                (2, 'kplc@example.com', 'biller', 'KPLC', NULL, 'en', 'Africa/Nairobi', 1);
         INSERT INTO bodies (id, cache_key, content) VALUES (1, 'k', 'Huduma itasimama');
         INSERT INTO webhook_endpoints (id, recipient_id, url, secret, created_at) VALUES (1, 2, 'https://kplc.example/hook', 'whsec_x', 1);
         INSERT INTO deliveries (id, window_id, revision, notice, recipient_id, channel, state, attempts, due_at, deadline, \
             sent_at, backend, provider_id, body_id, lease_owner, lease_token, sent_latency_ms) \
         VALUES (1, 1, 1, 'announced', 1, 'sms', 'sent', 2, 100, 2000, 150, 'at', 'ATXid_1', 1, 'd@h:1', 7, 12);
         INSERT INTO deliveries (id, window_id, revision, notice, recipient_id, channel, due_at, deadline) \
         VALUES (2, 1, 1, 'reminder_1h', 1, 'sms', 1900, 2000);
         INSERT INTO deliveries (id, window_id, revision, notice, recipient_id, channel, state, attempts, due_at, deadline, \
             last_error, endpoint_id, possibly_duplicate) \
         VALUES (3, 1, 1, 'announced', 2, 'webhook', 'failed', 5, 100, 2000, 'the receiver answered 500', 1, TRUE);
         INSERT INTO attempts (delivery_id, at, backend, outcome, latency_ms, error) \
         VALUES (1, 120, 'twilio', 'failed', 30, 'timed out'), (3, 130, 'webhook', 'failed', 40, 'HTTP 500');",
    )
    .execute(&pool)
    .await
    .unwrap();
    const ROWS: &str = "SELECT json_group_array(json_array(id, window_id, broadcast_id, revision, notice, recipient_id, \
         channel, state, attempts, due_at, deadline, last_error, sent_at, backend, provider_id, body_id, lease_owner, \
         lease_until, lease_token, possibly_duplicate, endpoint_id, handset, handset_at, sent_latency_ms)) \
         FROM (SELECT * FROM deliveries ORDER BY id)";
    const INDEXES: &str = "SELECT group_concat(sql, char(10)) FROM \
         (SELECT sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'deliveries' AND sql IS NOT NULL ORDER BY name)";
    let read = |pool: sqlx::SqlitePool| async move {
        let rows: String = sqlx::query_scalar(ROWS).fetch_one(&pool).await.unwrap();
        let indexes: String = sqlx::query_scalar(INDEXES).fetch_one(&pool).await.unwrap();
        (rows, indexes)
    };
    let before = read(pool.clone()).await;
    // The rebuilds, 0013 and 0014: every row, every index.
    sqlx::migrate!("migrations/sqlite").run_to(14, &pool).await.unwrap();
    let rebuilt = read(pool.clone()).await;
    assert_eq!(rebuilt.0, before.0, "every row, every column");
    assert_eq!(rebuilt.1, before.1, "the same indexes");
    pool.close().await;

    // And the migrations since.
    let store = tangazo::storage::Store::connect(&url).await.unwrap();
    assert!(store.migrations_current().await.unwrap());
    store.close().await;
    let pool = connect().await;
    let after = read(pool.clone()).await;
    assert_eq!(after.0, before.0, "every row, every column");
    let references: Vec<String> = sqlx::query_scalar("SELECT \"table\" FROM pragma_foreign_key_list('deliveries')")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(references, ["webhook_endpoints"]);
    let broken: Vec<String> = sqlx::query_scalar("SELECT \"table\" FROM pragma_foreign_key_check")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    // The log's reference now names the new table.
    let orphan = sqlx::query(
        "INSERT INTO attempts (delivery_id, at, backend, outcome, latency_ms) VALUES (99, 1, 'x', 'failed', 1)",
    )
    .execute(&pool)
    .await
    .unwrap_err();
    assert!(orphan.to_string().contains("FOREIGN KEY"), "{orphan}");
    // What the ledger no longer checks: a body id no table holds.
    sqlx::query("UPDATE deliveries SET body_id = 42 WHERE id = 1")
        .execute(&pool)
        .await
        .unwrap();
}

/// Rows in the attempts log itself, read with a connection of the store's own dialect.
async fn logged_attempts(db: &TestDb) -> i64 {
    count(db, "SELECT COUNT(*) FROM attempts").await
}

/// A count read with a connection of the store's own dialect.
async fn count(db: &TestDb, sql: &'static str) -> i64 {
    if db.url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
    }
}

async fn a_success_is_kept_on_its_row_and_every_try_is_read_back(db: &TestDb) {
    use tangazo::domain::Secret;
    use tangazo::storage::{Attempt, NewEndpoint};
    let now = start() - TimeDelta::hours(50);
    db.store.upsert_recipients(&[biller(1)], now).await.unwrap();
    // The biller first, then two customers.
    let ids = seed(db, 2).await;
    let who = RecipientId(ids[0]);
    let endpoint = db
        .store
        .add_endpoint(
            &NewEndpoint {
                recipient: who,
                url: "https://a.example/hook".into(),
                secret: Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                events: vec![],
                components: vec![],
            },
            now,
        )
        .await
        .unwrap();
    let w = db.store.create_window(new_window(48), now, "t").await.unwrap();
    let mut rows = planned(w.id, 1, Notice::Announced, &ids, 100);
    rows[0].channel = Channel::Webhook;
    rows[0].endpoint = Some(endpoint);
    db.store.enqueue(&rows).await.unwrap();
    let failed_try = |id: i64, at| Attempt {
        delivery: id,
        at,
        backend: "primary".into(),
        outcome: "transient",
        status: Some("HTTP 503".into()),
        latency_ms: 40,
        provider_id: None,
        error: Some("HTTP 503 Service Unavailable".into()),
    };
    let sent = |id: i64, at, backend: &str, provider_id: Option<&str>, ms| Finish::Sent {
        id,
        at,
        backend: backend.into(),
        provider_id: provider_id.map(str::to_owned),
        body_id: None,
        latency: Duration::from_millis(ms),
    };

    // The webhook fails over to a second backend; an SMS goes out through the file outbox.
    let (t1, claimed) = claim(db, now, 10, "w1", LEASE, None).await;
    let by_channel = |c: Channel| claimed.iter().find(|r| r.channel == c).unwrap().id;
    let (hook, sms) = (by_channel(Channel::Webhook), by_channel(Channel::Sms));
    let third = claimed
        .iter()
        .map(|r| r.id)
        .find(|&id| id != hook && id != sms)
        .unwrap();
    let at = now + TimeDelta::seconds(1);
    let lost = db
        .store
        .finish_with_attempts(
            t1,
            &[
                sent(hook, at, "backup", Some("msg-1"), 12),
                sent(sms, at, "file", None, 3),
                Finish::Retry {
                    id: third,
                    at: now + TimeDelta::minutes(1),
                    error: "primary: HTTP 503".into(),
                    maybe_sent: false,
                },
            ],
            &[failed_try(hook, at), failed_try(third, at)],
        )
        .await
        .unwrap();
    assert!(lost.is_empty());
    assert_eq!(logged_attempts(db).await, 2, "the log holds the failures alone");
    let outcomes = |tries: &[tangazo::storage::AttemptInfo]| {
        tries
            .iter()
            .map(|a| {
                (
                    a.outcome.clone(),
                    a.backend.clone(),
                    a.latency_ms,
                    a.provider_id.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let hook_tries = db.store.attempts(hook).await.unwrap();
    assert_eq!(
        outcomes(&hook_tries),
        [
            ("transient".into(), "primary".into(), 40, None),
            ("sent".into(), "backup".into(), 12, Some("msg-1".into())),
        ]
    );
    assert_eq!(hook_tries[1].at, at);
    assert_eq!(hook_tries[0].status.as_deref(), Some("HTTP 503"));
    assert_eq!(hook_tries[1].error, None);
    assert_eq!(
        outcomes(&db.store.attempts(sms).await.unwrap()),
        [("sent".into(), "file".into(), 3, None)]
    );
    // The endpoint's recent attempts, newest first, and no other recipient's.
    assert_eq!(
        outcomes(&db.store.endpoint_attempts(endpoint, 10).await.unwrap()),
        [
            ("sent".into(), "backup".into(), 12, Some("msg-1".into())),
            ("transient".into(), "primary".into(), 40, None),
        ]
    );
    assert_eq!(db.store.endpoint_attempts(endpoint, 1).await.unwrap().len(), 1);

    // A claim that lapsed records nothing on the row, but its success is still in the log.
    let (t2, retried) = claim(db, now + TimeDelta::minutes(2), 10, "w2", Duration::ZERO, None).await;
    assert_eq!(retried.iter().map(|r| r.id).collect::<Vec<_>>(), [third]);
    assert_eq!(db.store.release_lapsed_claims(now).await.unwrap().returned, 1);
    let (t3, again) = claim(db, now + TimeDelta::minutes(2), 10, "w3", LEASE, None).await;
    assert_eq!(again.len(), 1);
    let late = [sent(third, at, "twilio", Some("SM-old"), 30)];
    assert_eq!(db.store.finish_with_attempts(t2, &late, &[]).await.unwrap(), [third]);
    let fresh = [sent(third, at + TimeDelta::minutes(3), "twilio", Some("SM-new"), 20)];
    assert!(db.store.finish_with_attempts(t3, &fresh, &[]).await.unwrap().is_empty());
    assert_eq!(
        outcomes(&db.store.attempts(third).await.unwrap()),
        [
            ("transient".into(), "primary".into(), 40, None),
            ("sent".into(), "twilio".into(), 30, Some("SM-old".into())),
            ("sent".into(), "twilio".into(), 20, Some("SM-new".into())),
        ]
    );
    assert_eq!(logged_attempts(db).await, 3);

    // A provider's report finds its delivery by either id: on the row or in the log.
    for id in ["SM-new", "SM-old"] {
        let found = db.store.record_handset("twilio", id, "delivered", at).await.unwrap();
        assert_eq!(found.map(|r| r.delivery), Some(third), "{id}");
    }
    // Not an id of this backend's, or not an id at all.
    for id in ["msg-1", "SM-none"] {
        let found = db.store.record_handset("twilio", id, "delivered", at).await.unwrap();
        assert!(found.is_none(), "{id}");
    }

    // The latency histogram counts every try, from both places.
    let m = db.store.metrics(now).await.unwrap();
    assert_eq!((m.latency_count, m.latency_sum_ms), (6, 40 + 12 + 3 + 40 + 30 + 20));
    let within = |bound: u64| m.latency_buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
    assert_eq!((within(5), within(25), within(50)), (1, 3, 6));
}

async fn a_lead_keeps_its_term_until_another_daemon_leads_between(db: &TestDb) {
    // Instants are whole milliseconds: a pause between terms keeps their starts apart.
    let apart = || tokio::time::sleep(Duration::from_millis(5));
    let term = db.store.lead("a", Duration::ZERO).await.unwrap().expect("a leads");
    apart().await;
    // Renewed past its lapse with nobody else leading: the same term.
    assert_eq!(db.store.lead("a", Duration::ZERO).await.unwrap(), Some(term));
    apart().await;
    // Another takes the lapsed lease, in a term of its own.
    let other = db.store.lead("b", Duration::ZERO).await.unwrap().expect("b leads");
    assert_ne!(other, term);
    apart().await;
    // Once the other's lease lapses too, the first leads again, in a new term.
    let again = db.store.lead("a", LEASE).await.unwrap().expect("a leads again");
    assert!(again > term, "{again} after {term}");
    assert_eq!(db.store.lead("b", LEASE).await.unwrap(), None);
    assert_eq!(db.store.lead("a", LEASE).await.unwrap(), Some(again));
}

/// Records every row of a batch written claimed sent through the file outbox, under its token.
async fn record_sent(db: &TestDb, batch: &tangazo::storage::ClaimedBatch, now: chrono::DateTime<chrono::Utc>) {
    let sent = sent_at(batch.rows.iter().map(|&(id, _)| id), now);
    assert!(db.store.finish(batch.token, &sent).await.unwrap().is_empty());
}

/// Each of `ids` sent through the file outbox at `now`.
fn sent_at(ids: impl IntoIterator<Item = i64>, now: chrono::DateTime<chrono::Utc>) -> Vec<Finish> {
    ids.into_iter()
        .map(|id| Finish::Sent {
            id,
            at: now,
            backend: "file".into(),
            provider_id: None,
            body_id: None,
            latency: Duration::from_millis(1),
        })
        .collect()
}

/// A fan-out's page can be written with the rows that can go out at once already claimed, in
/// batches under their own tokens: due, before their deadline, of a window not paused. The
/// rest is written pending, as usual. A batch no lane takes goes back to the queue as if never
/// claimed.
async fn a_page_s_rows_that_can_go_out_at_once_are_written_claimed_in_batches(db: &TestDb) {
    let ids = seed(db, 8).await;
    let created = utc(2015, 4, 10, 6, 0);
    let now = start() - TimeDelta::hours(50);
    let w = db.store.create_window(new_window(48), created, "t").await.unwrap();
    fan_out_recorded(db, w.id, Notice::Announced).await;
    let page = |read_from: i64, read_up_to: i64| FanOutPage {
        window: w.id,
        revision: 1,
        notice: Notice::Announced,
        audience: Audience::Customer,
        read_from: RecipientId(read_from),
        read_up_to: RecipientId(read_up_to),
    };
    let hand = HandOver {
        owner: "daemon@a",
        lease: LEASE,
        batch: 2,
        now,
    };
    // Due 100 hours before the start, so due at `now`: but one is due later, and one's deadline
    // has passed.
    let mut rows = planned(w.id, 1, Notice::Announced, &ids[..5], 100);
    rows[3].due_at = now + TimeDelta::hours(1);
    rows[4].deadline = now;
    let written = db
        .store
        .enqueue_page_handing(&page(0, ids[4]), &rows, Some(&hand))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(written.inserted, 5);
    let batches: Vec<Vec<usize>> = written
        .claimed
        .iter()
        .map(|b| b.rows.iter().map(|&(_, at)| at).collect())
        .collect();
    assert_eq!(batches, vec![vec![0, 1], vec![2]], "two to a batch, the due ones only");
    assert_ne!(written.claimed[0].token, written.claimed[1].token);
    assert_eq!(
        states(db, w.id).await,
        BTreeMap::from([("claimed".into(), 3), ("pending".into(), 2)])
    );
    assert_eq!(db.store.claimed_by("daemon@a").await.unwrap(), 3);
    // The claimed rows are not claimed again; the pending ones are not yet due or past their
    // deadline.
    assert!(claim(db, now, 10, "b", LEASE, None).await.1.is_empty());

    // The first batch is recorded under its token, as a claim's would be.
    record_sent(db, &written.claimed[0], now).await;
    // The second is given back: pending, its attempt not counted, not flagged.
    assert_eq!(db.store.give_back(written.claimed[1].token).await.unwrap(), 1);
    let (_, again) = claim(db, now, 10, "b", LEASE, None).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, written.claimed[1].rows[0].0);
    assert_eq!((again[0].attempts, again[0].possibly_duplicate), (1, false));

    // Rows already in the queue are not written again, claimed or not.
    let twice = db
        .store
        .enqueue_page_handing(&page(ids[4], ids[4]), &rows, Some(&hand))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((twice.inserted, twice.claimed.len()), (0, 0));

    // A paused window's rows are written pending: claims leave them be until it resumes.
    assert!(db.store.pause_window(w.id, "ops", now).await.unwrap());
    let later = planned(w.id, 1, Notice::Announced, &ids[5..], 100);
    let paused = db
        .store
        .enqueue_page_handing(&page(ids[4], ids[7]), &later, Some(&hand))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((paused.inserted, paused.claimed.len()), (3, 0));
    assert_eq!(
        states(db, w.id).await,
        BTreeMap::from([("claimed".into(), 1), ("pending".into(), 5), ("sent".into(), 2)])
    );
}

/// Pausing a window holds its pending rows out of the claims' index, so a claim does not walk
/// them to reach the rows behind; rows written for it while it is paused, by its fan-out or a
/// broadcast of it, are written held. Other windows' rows are claimed meanwhile. Resuming lets
/// every one of them be claimed again.
async fn a_paused_window_s_pending_rows_are_held_out_of_the_claims_index(db: &TestDb) {
    let ids = seed(db, 6).await;
    let created = utc(2015, 4, 10, 6, 0);
    let now = start() - TimeDelta::hours(50);
    let paused = db.store.create_window(new_window(48), created, "t").await.unwrap();
    let other = db.store.create_window(new_window(48), created, "t").await.unwrap();
    for w in [paused.id, other.id] {
        db.store
            .enqueue(&planned(w, 1, Notice::Announced, &ids[..2], 100))
            .await
            .unwrap();
    }
    let held = async || count(db, "SELECT COUNT(*) FROM deliveries WHERE held").await;
    assert_eq!(held().await, 0);

    assert!(db.store.pause_window(paused.id, "ops", now).await.unwrap());
    assert_eq!(held().await, 2, "the paused window's pending rows");
    // Written while paused: a page of its fan-out, given a hand-over (it claims none of them),
    // and a broadcast of it.
    fan_out_recorded(db, paused.id, Notice::Announced).await;
    let page = first_announced_page(paused.id, ids[3]);
    let hand = HandOver {
        owner: "daemon@a",
        lease: LEASE,
        batch: 10,
        now,
    };
    let written = db
        .store
        .enqueue_page_handing(
            &page,
            &planned(paused.id, 1, Notice::Announced, &ids[2..4], 100),
            Some(&hand),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((written.inserted, written.claimed.len()), (2, 0));
    let b = db
        .store
        .create_broadcast(
            &NewBroadcast {
                name: "again".into(),
                window: Some(paused.id),
                revision: Some(1),
                notice: Some(Notice::Announced),
                message: None,
                filter: AudienceFilter::default(),
                deadline: start(),
            },
            now,
            "ops",
        )
        .await
        .unwrap();
    let one = [(RecipientId(ids[5]), Channel::Sms, None)];
    assert_eq!(db.store.enqueue_broadcast(&b, &one, now).await.unwrap(), 1);
    assert_eq!(held().await, 5, "and the rows written for it since");

    let (_, claimed) = claim(db, now, 10, "b", LEASE, None).await;
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|d| d.window == Some(other.id)), "{claimed:?}");

    assert!(db.store.resume_window(paused.id).await.unwrap());
    assert_eq!(held().await, 0);
    let (_, claimed) = claim(db, now, 10, "b", LEASE, None).await;
    assert_eq!(claimed.len(), 5, "every row of the window once it resumes");
}

/// A broadcast's rows can be written as a fan-out's page can: those that can go out at once
/// claimed, in batches under their own tokens, matched to the rows given by index; the rest
/// pending. Whom the window's own rows reach is left out either way.
async fn a_broadcast_s_rows_that_can_go_out_at_once_are_written_claimed_in_batches(db: &TestDb) {
    let ids = seed(db, 6).await;
    let now = start() - TimeDelta::hours(50);
    let w = db
        .store
        .create_window(new_window(48), utc(2015, 4, 10, 6, 0), "t")
        .await
        .unwrap();
    // The window's own announcement reached the first.
    assert_eq!(
        db.store
            .enqueue(&planned(w.id, 1, Notice::Announced, &ids[..1], 100))
            .await
            .unwrap(),
        1
    );
    let new = |name: &str, deadline| NewBroadcast {
        name: name.into(),
        window: Some(w.id),
        revision: Some(1),
        notice: Some(Notice::Announced),
        message: None,
        filter: AudienceFilter {
            channels: vec![Channel::Sms],
            ..AudienceFilter::default()
        },
        deadline,
    };
    let b = db
        .store
        .create_broadcast(&new("again", start()), now, "ops")
        .await
        .unwrap();
    let hand = HandOver {
        owner: "broadcast:1",
        lease: LEASE,
        batch: 2,
        now,
    };
    let rows: Vec<(RecipientId, Channel, Option<i64>)> =
        ids[..5].iter().map(|&i| (RecipientId(i), Channel::Sms, None)).collect();
    let written = db
        .store
        .enqueue_broadcast_handing(&b, &rows, now, Some(&hand))
        .await
        .unwrap();
    assert_eq!(written.inserted, 4, "the one the window's rows reach is left out");
    let batches: Vec<Vec<usize>> = written
        .claimed
        .iter()
        .map(|batch| batch.rows.iter().map(|&(_, at)| at).collect())
        .collect();
    // Tokens go two to a batch over the rows given: the row left out leaves its batch one short.
    assert_eq!(batches, vec![vec![1], vec![2, 3], vec![4]], "by index into the rows");
    assert_eq!(db.store.claimed_by("broadcast:1").await.unwrap(), 4);
    assert!(claim(db, now, 10, "b", LEASE, Some(b.id)).await.1.is_empty());
    // Each id read back is the row written for that recipient.
    record_sent(db, &written.claimed[1], now).await;
    let told = db
        .store
        .told_among(w.id, RecipientId(ids[0]), RecipientId(ids[5]))
        .await
        .unwrap();
    assert_eq!(
        told,
        [RecipientId(ids[2]), RecipientId(ids[3])].into(),
        "the rows sent under the second batch's token are the third and fourth recipients'"
    );

    // Written again: nothing new, nothing claimed.
    let twice = db
        .store
        .enqueue_broadcast_handing(&b, &rows, now, Some(&hand))
        .await
        .unwrap();
    assert_eq!((twice.inserted, twice.claimed.len()), (0, 0));

    // Past its deadline at `now`: written pending, for expiry to settle.
    let late = db.store.create_broadcast(&new("late", now), now, "ops").await.unwrap();
    let one = [(RecipientId(ids[5]), Channel::Sms, None)];
    let written = db
        .store
        .enqueue_broadcast_handing(&late, &one, now, Some(&hand))
        .await
        .unwrap();
    assert_eq!((written.inserted, written.claimed.len()), (1, 0));

    // A paused window's broadcast is written pending: claims leave it be until it resumes.
    assert!(db.store.pause_window(w.id, "ops", now).await.unwrap());
    let paused = db
        .store
        .create_broadcast(&new("paused", start()), now, "ops")
        .await
        .unwrap();
    let written = db
        .store
        .enqueue_broadcast_handing(&paused, &one, now, Some(&hand))
        .await
        .unwrap();
    assert_eq!((written.inserted, written.claimed.len()), (1, 0));
    assert_eq!(
        db.store.claimed_by("broadcast:1").await.unwrap(),
        2,
        "the first and last batches"
    );
}

/// A page's rows read back column by column as they were planned and written: pending,
/// claimed (its owner's name as given, whatever its characters; the lease from the
/// database's clock) and held. On PostgreSQL a page no broadcast reaches is written by `COPY`,
/// in its text format.
async fn a_page_s_rows_are_written_as_planned_column_by_column(db: &TestDb) {
    type Row = (
        String,
        Option<String>,
        Option<i64>,
        Option<i64>,
        i64,
        bool,
        i64,
        i64,
        String,
        String,
        Option<i64>,
        i64,
        i64,
    );
    async fn rows_of(db: &TestDb, w: WindowId) -> Vec<Row> {
        let sql = format!(
            "SELECT state, lease_owner, lease_token, lease_until, attempts, held, due_at, deadline, notice, channel, \
             endpoint_id, revision, recipient_id FROM deliveries WHERE window_id = {} ORDER BY recipient_id",
            w.0
        );
        query_all(db, sql).await
    }
    let ids = seed(db, 6).await;
    let now = start() - TimeDelta::hours(50);
    let created = utc(2015, 4, 10, 6, 0);
    let owner = "daemon@a\tb\\c\nd";
    let lease = Duration::from_secs(300);
    let ms = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis();
    for (paused, hand) in [(false, true), (false, false), (true, true)] {
        let w = db.store.create_window(new_window(48), created, "t").await.unwrap();
        fan_out_recorded(db, w.id, Notice::Announced).await;
        if paused {
            db.store.pause_window(w.id, "t", created).await.unwrap();
        }
        let page = first_announced_page(w.id, ids[2]);
        // Due 100 hours before the start, so due at `now`, but the third an hour after it.
        let mut rows = planned(w.id, 1, Notice::Announced, &ids[..3], 100);
        rows[2].due_at = now + TimeDelta::hours(1);
        let hand_over = HandOver {
            owner,
            lease,
            batch: 10,
            now,
        };
        let before = chrono::Utc::now();
        let written = db
            .store
            .enqueue_page_handing(&page, &rows, hand.then_some(&hand_over))
            .await
            .unwrap()
            .unwrap();
        let after = chrono::Utc::now();
        assert_eq!(written.inserted, 3);
        let read = rows_of(db, w.id).await;
        assert_eq!(read.len(), 3);
        for (i, (got, planned)) in read.iter().zip(&rows).enumerate() {
            let (
                state,
                lease_owner,
                token,
                until,
                attempts,
                held,
                due_at,
                deadline,
                notice,
                channel,
                endpoint,
                revision,
                recipient,
            ) = got;
            assert_eq!(
                (
                    *due_at,
                    *deadline,
                    notice.as_str(),
                    channel.as_str(),
                    *endpoint,
                    *revision,
                    *recipient
                ),
                (
                    ms(planned.due_at),
                    ms(planned.deadline),
                    "announced",
                    "sms",
                    None,
                    1,
                    planned.recipient.0
                ),
                "row {i}, paused {paused}, handed {hand}"
            );
            assert_eq!(*held, paused, "row {i}");
            if hand && !paused && i < 2 {
                assert_eq!(
                    (state.as_str(), lease_owner.as_deref(), *attempts),
                    ("claimed", Some(owner), 1)
                );
                assert_eq!(*token, Some(written.claimed[0].token));
                let until = until.expect("a lease");
                let lease_ms = i64::try_from(lease.as_millis()).unwrap();
                // The database's clock, read on this machine: a second either side.
                assert!(
                    until >= ms(before) + lease_ms - 1000 && until <= ms(after) + lease_ms + 1000,
                    "{until}"
                );
            } else {
                assert_eq!(
                    (state.as_str(), lease_owner.as_deref(), *token, *until, *attempts),
                    ("pending", None, None, None, 0),
                    "row {i}, paused {paused}, handed {hand}"
                );
            }
        }
    }
}

/// Runs `sql` on a connection of its own and reads every row it returns.
async fn query_all<T>(db: &TestDb, sql: String) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    T: Send + Unpin,
{
    use sqlx::Connection as _;
    if db.url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut c)
            .await
            .unwrap()
    } else {
        let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut c)
            .await
            .unwrap()
    }
}

/// Each batch a page writes claimed names its rows by id and by their place in the page, and
/// the two agree with the ledger: in a ledger whose last row was deleted, for a page that
/// takes several statements with pending rows between the claimed ones, and for a page some of
/// whose rows were in the ledger already.
async fn a_page_written_claimed_tells_each_batch_the_ids_of_its_own_rows(db: &TestDb) {
    let ids = seed(db, 700).await;
    let created = utc(2015, 4, 10, 6, 0);
    let now = start() - TimeDelta::hours(50);
    // Rows of another window before, the last of them deleted.
    let other = db.store.create_window(new_window(48), created, "t").await.unwrap();
    db.store
        .enqueue(&planned(other.id, 1, Notice::Announced, &ids[..5], 100))
        .await
        .unwrap();
    let deleted: Vec<(i64,)> = query_all(
        db,
        "DELETE FROM deliveries WHERE id = (SELECT MAX(id) FROM deliveries) RETURNING id".into(),
    )
    .await;
    assert_eq!(deleted.len(), 1);

    let w = db.store.create_window(new_window(48), created, "t").await.unwrap();
    fan_out_recorded(db, w.id, Notice::Announced).await;
    let hand = HandOver {
        owner: "daemon@a",
        lease: LEASE,
        batch: 250,
        now,
    };
    // Each recipient by SMS and by email, every seventh row due an hour after `now`.
    let page_of = |recipients: &[i64]| -> Vec<PlannedDelivery> {
        let mut rows: Vec<PlannedDelivery> = planned(w.id, 1, Notice::Announced, recipients, 100)
            .into_iter()
            .flat_map(|d| {
                [
                    PlannedDelivery { ..d },
                    PlannedDelivery {
                        channel: Channel::Email,
                        ..d
                    },
                ]
            })
            .collect();
        for d in rows.iter_mut().step_by(7) {
            d.due_at = now + TimeDelta::hours(1);
        }
        rows
    };
    let first = page_of(&ids[..600]);
    // The second page's first rows were written by the first.
    let second = page_of(&ids[590..]);
    let pages = [
        (first_announced_page(w.id, ids[599]), &first, 1200),
        (
            FanOutPage {
                read_from: RecipientId(ids[599]),
                ..first_announced_page(w.id, ids[699])
            },
            &second,
            200,
        ),
    ];
    let mut claimed: i64 = 0;
    for (n, (page, rows, new)) in pages.into_iter().enumerate() {
        let written = db
            .store
            .enqueue_page_handing(&page, rows, Some(&hand))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(written.inserted, new, "page {n}");
        let ledger: BTreeMap<i64, (i64, String, String, Option<i64>)> =
            query_all::<(i64, i64, String, String, Option<i64>)>(
                db,
                format!(
                    "SELECT id, recipient_id, channel, state, lease_token FROM deliveries WHERE window_id = {}",
                    w.id.0
                ),
            )
            .await
            .into_iter()
            .map(|(id, recipient, channel, state, token)| (id, (recipient, channel, state, token)))
            .collect();
        let mut told = 0;
        for batch in &written.claimed {
            assert!(batch.rows.len() <= 250, "page {n}");
            assert!(batch.rows.is_sorted(), "page {n}: in id order");
            for &(id, at) in &batch.rows {
                let d = &rows[at];
                assert_eq!(
                    ledger.get(&id),
                    Some(&(
                        d.recipient.0,
                        d.channel.as_str().to_owned(),
                        "claimed".to_owned(),
                        Some(batch.token)
                    )),
                    "page {n}: delivery {id}, row {at}"
                );
                told += 1;
            }
        }
        // Every row due now and new in this page is in a batch: the page's others are pending.
        let due_new = rows
            .iter()
            .enumerate()
            .filter(|(at, d)| d.due_at <= now && (n == 0 || *at >= 20))
            .count();
        assert_eq!(told, due_new, "page {n}");
        claimed += i64::try_from(told).unwrap();
    }
    assert_eq!(
        states(db, w.id).await,
        BTreeMap::from([("claimed".into(), claimed), ("pending".into(), 1400 - claimed)])
    );
}

/// A batch written claimed that a lane takes late has its lease renewed first; if its lease
/// lapsed and its rows were settled meanwhile, the lane does not send it, and its rows are
/// back in the queue.
async fn a_batch_written_claimed_that_waited_past_its_lease_goes_back_unsent(db: &TestDb) {
    use tangazo::dispatch::handoff::{Handed, ready};
    let ids = seed(db, 4).await;
    let now = start() - TimeDelta::hours(50);
    let w = db
        .store
        .create_window(new_window(48), utc(2015, 4, 10, 6, 0), "t")
        .await
        .unwrap();
    fan_out_recorded(db, w.id, Notice::Announced).await;
    let page = first_announced_page(w.id, ids[3]);
    // Written with a lease that lapses at once.
    let hand = HandOver {
        owner: "daemon@a",
        lease: Duration::ZERO,
        batch: 2,
        now,
    };
    let rows = planned(w.id, 1, Notice::Announced, &ids, 100);
    let written = db
        .store
        .enqueue_page_handing(&page, &rows, Some(&hand))
        .await
        .unwrap()
        .unwrap();
    let as_claim = |i: usize| {
        let batch = &written.claimed[i];
        let claim = Claim {
            token: batch.token,
            rows: batch
                .rows
                .iter()
                .map(|&(id, _)| {
                    Err(CorruptClaim {
                        id,
                        reason: "only the count matters here".into(),
                    })
                })
                .collect(),
            oldest_due: None,
            last: None,
        };
        Handed::new(claim, tokio::time::Instant::now())
    };
    // Taken "late" (any wait is a third of a zero lease): still claimed, so renewed and sent,
    // its lease set anew once it was taken.
    let handed = as_claim(0);
    let stamped = handed.at();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let taken = ready(&db.store, handed, Duration::ZERO).await;
    assert_eq!(taken.as_ref().map(|(c, _)| c.token), Some(written.claimed[0].token));
    assert!(taken.is_some_and(|(_, leased)| leased >= stamped + Duration::from_millis(5)));
    // The other batch's lease lapses and a lapsed-claims pass settles it before a lane takes it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let released = db.store.release_lapsed_claims(now).await.unwrap();
    assert_eq!(released.total(), 4, "both batches lapsed");
    assert!(ready(&db.store, as_claim(1), Duration::ZERO).await.is_none());
    assert_eq!(states(db, w.id).await, BTreeMap::from([("pending".into(), 4)]));
}

/// When a queue's statistics were taken: after its rows were sent and claimed, or while they
/// were all still pending.
enum Statistics {
    Current,
    WhilePending,
}

/// A long run's queue on PostgreSQL: of 30,000 rows, most sent, each batch's token kept on its
/// rows, and one batch of 2,000 claimed under token 99. Returns a connection to it.
async fn a_long_run_s_queue(db: &TestDb, statistics: Statistics) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    a_large_queue(db).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let analyze = "ANALYZE deliveries";
    let updates = [
        "UPDATE deliveries SET state = 'sent', lease_token = id / 2000 WHERE id <= 28000",
        "UPDATE deliveries SET state = 'claimed', lease_token = 99, lease_owner = 'w', lease_until = 0 WHERE id > 28000",
    ];
    let order = match statistics {
        Statistics::Current => [updates[0], updates[1], analyze],
        Statistics::WhilePending => [analyze, updates[0], updates[1]],
    };
    for sql in order {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    conn
}

/// PostgreSQL's plan for `sql` (an `EXPLAIN`), its lines joined.
async fn plan_of(conn: &mut sqlx::PgConnection, sql: &str) -> String {
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await
        .unwrap();
    plan.join("\n")
}

/// Prepares the store's PostgreSQL statement in `src/storage/sql/postgres/{file}` as `name`.
async fn prepare(conn: &mut sqlx::PgConnection, name: &str, file: &str) {
    let statement = std::fs::read_to_string(format!(
        "{}/src/storage/sql/postgres/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("PREPARE {name} AS {statement}")))
        .execute(conn)
        .await
        .unwrap();
}

/// On PostgreSQL, marking a batch sent looks each of its rows up by id, whatever plan the
/// prepared statement settles on. In the generic plan PostgreSQL keeps after a few runs, the
/// token's claimed rows were estimated at one, and reaching them through the claimed rows'
/// index made a loop over every id of the batch for each of its rows (BENCHMARKS.md,
/// *PostgreSQL fan-outs written claimed*).
#[tokio::test]
#[ignore = "needs TANGAZO_TEST_POSTGRES; run with -- --include-ignored"]
async fn marking_a_batch_sent_on_postgres_looks_its_rows_up_by_id_in_the_generic_plan() {
    use sqlx::Connection as _;
    let db = TestDb::postgres().await;
    let mut conn = a_long_run_s_queue(&db, Statistics::Current).await;
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut conn)
        .await
        .unwrap();
    prepare(&mut conn, "mark_sent", "mark_sent.sql").await;
    let plan = plan_of(
        &mut conn,
        "EXPLAIN EXECUTE mark_sent('file', 99, '{28001,28002}', '{0,0}', '{NULL,NULL}', '{1,1}', '{NULL,NULL}')",
    )
    .await;
    assert!(plan.contains("Index Cond: (id = v.id)"), "{plan}");
    assert!(!plan.contains("deliveries_lease_token"), "{plan}");
    conn.close().await.unwrap();
    db.finish().await;
}

/// On PostgreSQL a settled claim is forgotten through the token index, whatever the ledger's
/// statistics. Taken while a fan-out's first rows were claimed under a few tokens, they make a
/// token look to hold hundreds of claimed rows; looked for with `NOT EXISTS`, the plan then
/// scanned the whole ledger for an early match that a settled claim never has, after every
/// batch (BENCHMARKS.md, *4 December, late*).
#[tokio::test]
#[ignore = "needs TANGAZO_TEST_POSTGRES; run with -- --include-ignored"]
async fn a_settled_claim_on_postgres_is_forgotten_through_the_token_index_under_stale_statistics() {
    use sqlx::Connection as _;
    let db = TestDb::postgres().await;
    a_large_queue(&db).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for sql in [
        "UPDATE deliveries SET state = 'claimed', lease_token = id % 3",
        "ANALYZE deliveries",
        "UPDATE deliveries SET state = 'sent', lease_token = id / 2000 + 3",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    prepare(&mut conn, "forget", "forget_if_settled.sql").await;
    for mode in ["force_custom_plan", "force_generic_plan"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let plan = plan_of(&mut conn, "EXPLAIN EXECUTE forget(7)").await;
        assert!(plan.contains("deliveries_lease_token"), "{mode}: {plan}");
        assert!(!plan.contains("Seq Scan on deliveries"), "{mode}: {plan}");
    }
    conn.close().await.unwrap();
    db.finish().await;
}

/// On PostgreSQL a batch written claimed and then recorded sent is rewritten in place: each
/// sent row is a heap-only version on its own page, which no index gains an entry for
/// (migration `sent_in_place`). A claim is kept in `claims` while any of its rows is claimed,
/// and forgotten by the outcome that settles its last row, by giving its batch back, or once
/// its lease has lapsed with none of its rows still claimed; a lapsed claim whose row another
/// transaction holds keeps its own until that row is settled.
#[tokio::test]
#[ignore = "needs TANGAZO_TEST_POSTGRES; run with -- --include-ignored"]
async fn a_batch_recorded_sent_on_postgres_is_rewritten_in_place_and_its_claim_forgotten() {
    use sqlx::Connection as _;
    let db = TestDb::postgres().await;
    let ids = seed(&db, 610).await;
    let now = start() - TimeDelta::hours(50);
    let w = db
        .store
        .create_window(new_window(48), utc(2015, 4, 10, 6, 0), "t")
        .await
        .unwrap();
    fan_out_recorded(&db, w.id, Notice::Announced).await;
    let hand = HandOver {
        owner: "daemon@a",
        lease: LEASE,
        batch: 250,
        now,
    };
    let rows = planned(w.id, 1, Notice::Announced, &ids[..600], 100);
    let written = db
        .store
        .enqueue_page_handing(&first_announced_page(w.id, ids[599]), &rows, Some(&hand))
        .await
        .unwrap()
        .unwrap();
    let mut tokens: Vec<i64> = written.claimed.iter().map(|b| b.token).collect();
    tokens.sort_unstable();
    assert_eq!(tokens.len(), 3, "600 rows in batches of 250");
    let claims = async || -> Vec<i64> {
        query_all::<(i64,)>(&db, "SELECT lease_token FROM claims ORDER BY lease_token".into())
            .await
            .into_iter()
            .map(|(t,)| t)
            .collect()
    };
    assert_eq!(claims().await, tokens, "each batch's claim is recorded with its rows");
    let (first, rest) = written.claimed.split_first().unwrap();
    let first_ids: Vec<i64> = first.rows.iter().map(|&(id, _)| id).collect();
    let (early, late) = first_ids.split_at(100);
    let finish = async |ids: &[i64]| {
        let sent = sent_at(ids.iter().copied(), now);
        assert!(db.store.finish(first.token, &sent).await.unwrap().is_empty());
    };
    finish(early).await;
    assert_eq!(claims().await, tokens, "a claim with rows still claimed is kept");
    finish(late).await;
    assert!(
        !claims().await.contains(&first.token),
        "its last row settled, the claim is forgotten"
    );
    for batch in rest {
        record_sent(&db, batch, now).await;
    }
    assert!(claims().await.is_empty());
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    assert_eq!(sent_in_place(&mut conn).await, (600, 600));

    for &token in &tokens {
        assert_eq!(
            db.store.renew(token, Duration::ZERO).await.unwrap(),
            0,
            "nothing is left claimed"
        );
    }
    assert_eq!(db.store.release_lapsed_claims(now).await.unwrap().returned, 0);

    // A lapsed claim with a row another transaction holds: the others go back, the claim
    // stays until that row is settled too.
    announced_to(&db, &ids[600..]).await;
    let (token, claimed) = claim(&db, now, 10, "w", LEASE, None).await;
    assert_eq!(claimed.len(), 10);
    assert_eq!(claims().await, vec![token]);
    db.store.renew(token, Duration::ZERO).await.unwrap();
    let mut holder = conn.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE")
        .bind(claimed[0].id)
        .execute(&mut *holder)
        .await
        .unwrap();
    assert_eq!(db.store.release_lapsed_claims(now).await.unwrap().returned, 9);
    assert_eq!(claims().await, vec![token], "one of its rows is still claimed");
    holder.rollback().await.unwrap();
    assert_eq!(db.store.release_lapsed_claims(now).await.unwrap().returned, 1);
    assert!(claims().await.is_empty());

    // A batch given back is forgotten with it.
    let (token, claimed) = claim(&db, now, 10, "w", LEASE, None).await;
    assert_eq!(claimed.len(), 10);
    assert_eq!(claims().await, vec![token]);
    assert_eq!(db.store.give_back(token).await.unwrap(), 10);
    assert!(claims().await.is_empty());
    db.finish().await;
}

/// How many rows of the ledger are sent, and how many of those are a heap-only version, written
/// in place (PostgreSQL; each found by its `ctid`, page and item, with `HEAP_ONLY_TUPLE`, 0x8000
/// of `t_infomask2`).
async fn sent_in_place(conn: &mut sqlx::PgConnection) -> (i64, i64) {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pageinspect")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE (i.t_infomask2 & 32768) <> 0) \
         FROM deliveries d, LATERAL heap_page_items(get_raw_page('deliveries', (d.ctid::text::point)[0]::int)) i \
         WHERE i.lp = (d.ctid::text::point)[1]::int AND d.state = 'sent'",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// On PostgreSQL a row claimed from the queue, not written claimed, is recorded sent in place
/// too where its page has room for its pending, claimed and sent versions at once (the ledger
/// filled to 25 %, README's *Room on the ledger's pages*), even while a transaction that
/// began before its claim committed still runs (another lane's or daemon's statement) and its
/// pending version cannot be pruned. Recording it sent changes no column an index names, for
/// a row claimed from the queue as for one written claimed. At the default 45 % only 38 of
/// the 400 find room.
#[tokio::test]
#[ignore = "needs TANGAZO_TEST_POSTGRES; run with -- --include-ignored"]
async fn a_row_claimed_from_the_queue_on_postgres_is_recorded_sent_in_place_beside_an_older_transaction() {
    use sqlx::Connection as _;
    let db = TestDb::postgres().await;
    let ids = seed(&db, 400).await;
    let now = start() - TimeDelta::hours(50);
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("ALTER TABLE deliveries SET (fillfactor = 25)")
        .execute(&mut conn)
        .await
        .unwrap();
    announced_to(&db, &ids).await;
    let mut older = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut older)
        .await
        .unwrap();
    let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'")
        .fetch_one(&mut older)
        .await
        .unwrap();
    assert_eq!(pending, 400);
    let (token, claimed) = claim(&db, now, 400, "w", LEASE, None).await;
    assert_eq!(claimed.len(), 400);
    let sent = sent_at(claimed.iter().map(|c| c.id), now);
    assert!(db.store.finish(token, &sent).await.unwrap().is_empty());
    assert_eq!(sent_in_place(&mut conn).await, (400, 400));
    sqlx::query("COMMIT").execute(&mut older).await.unwrap();
    older.close().await.unwrap();
    conn.close().await.unwrap();
    db.finish().await;
}

/// A claim's rows are looked up on PostgreSQL by their token through the token index, even
/// under statistics taken while every row was pending, which count no row claimed or sent:
/// the told index, which holds every row claimed or sent too, is no way to them. With it as
/// one, a read-back walked every row sent so far (BENCHMARKS.md, *4 December, evening*).
#[tokio::test]
#[ignore = "needs TANGAZO_TEST_POSTGRES; run with -- --include-ignored"]
async fn a_claim_s_rows_are_read_back_by_token_on_postgres_under_stale_statistics() {
    let db = TestDb::postgres().await;
    let mut conn = a_long_run_s_queue(&db, Statistics::WhilePending).await;
    let plan = plan_of(
        &mut conn,
        "EXPLAIN SELECT d.id FROM deliveries d JOIN recipients r ON r.id = d.recipient_id \
         WHERE d.lease_token = 99 AND d.state = 'claimed' AND d.leased ORDER BY d.id",
    )
    .await;
    assert!(plan.contains("deliveries_lease_token"), "{plan}");
    assert!(!plan.contains("deliveries_told"), "{plan}");
    db.finish().await;
}

/// A row as recorded sent: (id, state, backend, body, sent at in ms, latency in ms, provider id).
type SentRecord = (
    i64,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

/// A row sent: (id, backend, body, when, provider id, latency in ms).
type SentBy<'a> = (
    i64,
    &'a str,
    Option<i64>,
    chrono::DateTime<chrono::Utc>,
    Option<&'a str>,
    u64,
);

/// A batch's sent rows are recorded in one statement a backend, however many bodies they went
/// out with, and each row keeps its own body, time, latency and provider id: rows that share
/// a body, rows whose bodies alternate (given in no order), more bodies than one statement
/// numbers, rows each with its own time and provider id, and two backends in one batch. A row
/// named that is not claimed under the batch's token is told back and keeps what it had.
async fn a_batch_sent_with_many_bodies_keeps_each_row_s_own_body(db: &TestDb) {
    let ids = seed(db, 340).await;
    let now = start() - TimeDelta::hours(50);
    let w = db.store.create_window(new_window(48), now, "t").await.unwrap();
    db.store
        .enqueue(&planned(w.id, 1, Notice::Announced, &ids, 100))
        .await
        .unwrap();
    let mut bodies = Vec::new();
    for i in 0..300 {
        bodies.push(
            db.store
                .body_id(&format!("body-{i}"), &format!("Text {i}"))
                .await
                .unwrap(),
        );
    }
    let at = now + TimeDelta::seconds(1);
    let ms = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis();
    let mut expected: BTreeMap<i64, SentRecord> = BTreeMap::new();
    let mut finish = async |token: i64, sent: Vec<SentBy<'_>>| {
        let outcomes: Vec<Finish> = sent
            .iter()
            .map(|&(id, backend, body_id, at, provider_id, latency)| Finish::Sent {
                id,
                at,
                backend: backend.into(),
                provider_id: provider_id.map(str::to_owned),
                body_id,
                latency: Duration::from_millis(latency),
            })
            .collect();
        let lost = db.store.finish(token, &outcomes).await.unwrap();
        for &(id, backend, body, at, provider_id, latency) in &sent {
            if !lost.contains(&id) {
                let latency = i64::try_from(latency).unwrap();
                let record = (
                    id,
                    "sent".into(),
                    Some(backend.into()),
                    body,
                    Some(ms(at)),
                    Some(latency),
                    provider_id.map(str::to_owned),
                );
                expected.insert(id, record);
            }
        }
        lost
    };

    // Ten rows with one body.
    let (t1, first) = claim(db, now, 10, "w", LEASE, None).await;
    let one_body: Vec<_> = first
        .iter()
        .map(|r| (r.id, "file", Some(bodies[0]), at, None, 2))
        .collect();
    assert!(finish(t1, one_body).await.is_empty());

    // Twenty rows whose bodies alternate, one of them none, listed last first; and a row of
    // the first batch, sent already, named again.
    let (t2, second) = claim(db, now, 20, "w", LEASE, None).await;
    let mut alternating: Vec<_> = second
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id, "file", (i % 4 != 3).then(|| bodies[i % 3]), at, None, 2))
        .rev()
        .collect();
    alternating.push((first[0].id, "file", Some(bodies[1]), at, None, 2));
    assert_eq!(finish(t2, alternating).await, [first[0].id]);

    // Three hundred rows with three hundred bodies.
    let (t3, third) = claim(db, now, 300, "w", LEASE, None).await;
    assert_eq!(third.len(), 300);
    let many: Vec<_> = third
        .iter()
        .zip(&bodies)
        .map(|(r, &b)| (r.id, "file", Some(b), at, None, 3))
        .collect();
    assert!(finish(t3, many).await.is_empty());

    // Rows each with its own time, latency and provider id, through two backends.
    let (t4, fourth) = claim(db, now, 10, "w", LEASE, None).await;
    let own: Vec<_> = fourth
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let backend = if i % 2 == 0 { "twilio" } else { "backup" };
            let pid = ["SM-1", "SM-2", "SM-3"].get(i % 4).copied();
            (
                r.id,
                backend,
                Some(bodies[i % 2 + 5]),
                at + TimeDelta::milliseconds(i as i64),
                pid,
                10 + i as u64,
            )
        })
        .collect();
    assert!(finish(t4, own).await.is_empty());

    let recorded: Vec<SentRecord> = query_all(
        db,
        "SELECT id, state, backend, body_id, sent_at, sent_latency_ms, provider_id FROM deliveries WHERE state = 'sent' ORDER BY id"
            .into(),
    )
    .await;
    assert_eq!(recorded.len(), 340);
    assert_eq!(recorded, expected.into_values().collect::<Vec<_>>());
}

/// A broadcast's audience is counted by groups of recipients alike, in the database; given a
/// subset of natural keys, or once a recipient does not read back, it is read one recipient at a
/// time. Both count the same, whatever the filter and the content.
async fn an_audience_is_counted_the_same_by_groups_as_one_by_one(db: &TestDb) {
    use tangazo::broadcast::{Content, Scan, scan};
    use tangazo::domain::{ComponentId, EmailAddress, PhoneNumber, Profile, Zone};
    const PEOPLE: u32 = 400;
    let component = |c: &str| c.parse::<ComponentId>().unwrap();
    // Each trait from its own bits of a scrambled index, so that no two go together.
    let traits = |i: u32| u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 24;
    let opted_out = |i: u32| traits(i) >> 28 & 7 == 0;
    let people: Vec<Profile> = (0..PEOPLE)
        .map(|i| {
            let t = traits(i);
            let phone = (t % 3 != 2).then(|| PhoneNumber::parse(&format!("07{:08}", 20_000_000 + i)).unwrap());
            let email = (t % 3 != 0).then(|| EmailAddress::parse(&format!("p{i}@example.co.ke")).unwrap());
            let components = match t >> 4 & 3 {
                0 => vec![component("withdraw")],
                1 => vec![component("pay-bill"), component("send-money")],
                _ => vec![],
            };
            let channels = match t >> 8 & 3 {
                0 if phone.is_some() => vec![Channel::Sms],
                1 if email.is_some() => vec![Channel::Email],
                _ => vec![],
            };
            Profile::new(
                if t >> 12 & 3 == 3 {
                    Audience::Biller
                } else {
                    Audience::Customer
                },
                &format!("P {i}"),
                phone,
                email,
                if t >> 16 & 1 == 0 { Locale::En } else { Locale::Sw },
                if t >> 20 & 3 == 0 {
                    "Europe/Berlin"
                } else {
                    "Africa/Nairobi"
                }
                .parse::<Zone>()
                .unwrap(),
                components,
                channels,
                opted_out(i),
            )
            .unwrap()
        })
        .collect();
    let admitted = u64::try_from((0..PEOPLE).filter(|&i| !opted_out(i)).count()).unwrap();
    db.store
        .upsert_recipients(&people, utc(2015, 4, 1, 0, 0))
        .await
        .unwrap();
    let window = db
        .store
        .create_window(new_window(48), utc(2015, 4, 10, 6, 0), "t")
        .await
        .unwrap();
    let contents = [
        Content::Message(free_message("M-PESA is back")),
        Content::Notice {
            window: Box::new(window),
            notice: Notice::Announced,
        },
    ];
    let filters = [
        AudienceFilter::default(),
        AudienceFilter {
            audiences: vec![Audience::Customer],
            ..AudienceFilter::default()
        },
        AudienceFilter {
            audiences: vec![Audience::Biller],
            channels: vec![Channel::Email],
            ..AudienceFilter::default()
        },
        AudienceFilter {
            components: vec![component("pay-bill")],
            locale: Some(Locale::Sw),
            ..AudienceFilter::default()
        },
    ];
    let everyone: Vec<String> = people.iter().map(Profile::natural_key).collect();
    let counts = |s: Scan| (s.recipients, s.messages);
    let all_of = |filter: &AudienceFilter| AudienceFilter {
        subset: Some(everyone.clone()),
        ..filter.clone()
    };
    let groups = db
        .store
        .recipients_grouped(None)
        .await
        .unwrap()
        .expect("every group reads back");
    assert_eq!(groups.iter().map(|(_, n)| n).sum::<u64>(), u64::from(PEOPLE));
    assert!(groups.len() < 200, "{} groups", groups.len());
    let by_groups = scan(&db.store, &contents[0], &filters[0]).await.unwrap();
    assert_eq!(by_groups.recipients, admitted);
    // A free message to everyone reaches all who did not opt out, by SMS and by email, in both
    // languages, of both kinds; it reads the same in every zone.
    assert_eq!(by_groups.messages.len(), 8, "{:?}", by_groups.messages);
    for content in &contents {
        for filter in &filters {
            let by_groups = counts(scan(&db.store, content, filter).await.unwrap());
            assert!(by_groups.0 > 0, "{filter:?}");
            let one_by_one = counts(scan(&db.store, content, &all_of(filter)).await.unwrap());
            assert_eq!(by_groups, one_by_one, "{filter:?}");
        }
    }
    // A recipient that does not read back is left out, as a fan-out leaves it out.
    let admitted_one = (0..PEOPLE).find(|&i| !opted_out(i)).unwrap() as usize;
    db.execute(&format!(
        "UPDATE recipients SET locale = 'xx' WHERE natural_key = '{}'",
        people[admitted_one].natural_key()
    ))
    .await;
    let without_one = counts(scan(&db.store, &contents[0], &filters[0]).await.unwrap());
    assert_eq!(without_one.0, admitted - 1);
    let one_by_one = counts(scan(&db.store, &contents[0], &all_of(&filters[0])).await.unwrap());
    assert_eq!(without_one, one_by_one);
}
