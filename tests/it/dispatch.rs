//! The dispatcher's handling of what backends report: failover on a transient failure, retries
//! on the schedule, a permanent failure is final, a retry past the deadline is not made. The
//! backends here are scripted implementations of the `Sender` trait; the store is real.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tangazo::channels::{BoxFuture, FileSender, Message, Receipt, SendError, Sender, Senders};
use tangazo::clock::Clock;
use tangazo::config::{Config, Overrides};
use tangazo::dispatch::{DispatchConfig, Dispatcher};
use tangazo::domain::{Channel, Locale, Notice, PlannedDelivery, RecipientId, WindowId};
use tangazo::render::Renderer;
use tangazo::shutdown::CancellationToken;

use crate::helpers::{TestDb, customer, new_window, start, utc};
use crate::on_both;

on_both!(
    transient_failures_fail_over_then_retry_then_give_up,
    permanent_failures_are_final_and_late_retries_expire,
    a_late_reminder_says_how_long_is_left,
    a_gateway_out_of_balance_fails_over_and_an_uncertain_send_is_retried_flagged,
    sending_tells_how_far_behind_its_slots_it_runs,
    rows_queued_behind_the_last_claim_still_go_out,
);

/// Answers each call with the next scripted outcome (the last one repeats), for every message.
struct Scripted {
    name: &'static str,
    script: Vec<Result<(), SendError>>,
    calls: Mutex<usize>,
    seen: Mutex<Vec<String>>,
}

impl Scripted {
    fn new(name: &'static str, script: Vec<Result<(), SendError>>) -> Arc<Scripted> {
        Arc::new(Scripted {
            name,
            script,
            calls: Mutex::new(0),
            seen: Mutex::new(Vec::new()),
        })
    }
}

impl Sender for Scripted {
    fn name(&self) -> &str {
        self.name
    }
    fn send<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Result<Receipt, SendError>>> {
        Box::pin(async move {
            let mut calls = self.calls.lock().unwrap();
            let outcome = self.script[(*calls).min(self.script.len() - 1)].clone();
            *calls += 1;
            self.seen
                .lock()
                .unwrap()
                .extend(batch.iter().map(|m| m.idempotency_key.clone()));
            batch
                .iter()
                .map(|_| {
                    outcome.clone().map(|()| Receipt {
                        provider_id: Some("p-1".into()),
                        ..Receipt::default()
                    })
                })
                .collect()
        })
    }
}

fn busy(retry_after: Option<u64>) -> Result<(), SendError> {
    Err(SendError::Transient {
        message: "429 too many requests".into(),
        retry_after: retry_after.map(Duration::from_secs),
    })
}

fn dispatcher(db: &TestDb, sms: Vec<Arc<dyn Sender>>) -> Dispatcher {
    let config = Config::defaults(&Overrides::default()).unwrap();
    let renderer = Renderer::load(None, "M-PESA", &config.components)
        .unwrap()
        .with_sms_limit(2);
    let routes = BTreeMap::from([(Channel::Sms, sms)]);
    let dispatch = DispatchConfig {
        batch_size: 100,
        batches_in_flight: 2,
        retry: vec!["1m".parse().unwrap(), "10m".parse().unwrap()],
        lease: "5m".parse().unwrap(),
        tick: "30s".parse().unwrap(),
    };
    Dispatcher::new(
        db.store.clone(),
        Arc::new(renderer),
        Senders::from_routes(routes),
        dispatch,
        config.components,
        "t".into(),
    )
}

async fn one_sms(db: &TestDb, deadline: DateTime<Utc>) -> WindowId {
    db.store
        .upsert_recipients(&[customer(1, Locale::En)], utc(2015, 4, 1, 0, 0))
        .await
        .unwrap();
    sms_for_new_window(db, 48, deadline).await
}

/// A new window with one SMS queued for the (single) recipient.
async fn sms_for_new_window(db: &TestDb, hours: i64, deadline: DateTime<Utc>) -> WindowId {
    let w = db
        .store
        .create_window(new_window(hours), utc(2015, 4, 10, 6, 0), "t")
        .await
        .unwrap();
    let row = PlannedDelivery {
        window: w.id,
        revision: 1,
        notice: Notice::Announced,
        recipient: db
            .store
            .recipients_page(None, RecipientId(0), 1)
            .await
            .unwrap()
            .recipients[0]
            .id,
        channel: Channel::Sms,
        endpoint: None,
        due_at: utc(2015, 4, 10, 6, 0),
        deadline,
    };
    db.store.enqueue(&[row]).await.unwrap();
    w.id
}

/// Claims go on from the last row claimed rather than from the front of the queue; rows that
/// land behind that place (here: slots earlier than those already sent, queued after them) are
/// still found, and a run does not end while any is due.
async fn rows_queued_behind_the_last_claim_still_go_out(db: &TestDb) {
    let people: Vec<_> = (0..250).map(|i| customer(i, Locale::En)).collect();
    db.store
        .upsert_recipients(&people, utc(2015, 4, 1, 0, 0))
        .await
        .unwrap();
    let ids: Vec<RecipientId> = db
        .store
        .recipients_page(None, RecipientId(0), 250)
        .await
        .unwrap()
        .recipients
        .iter()
        .map(|r| r.id)
        .collect();
    let queue = |w: WindowId, due_at: DateTime<Utc>| -> Vec<PlannedDelivery> {
        ids.iter()
            .map(|&recipient| PlannedDelivery {
                window: w,
                revision: 1,
                notice: Notice::Announced,
                recipient,
                channel: Channel::Sms,
                endpoint: None,
                due_at,
                deadline: start(),
            })
            .collect()
    };
    let sms = Scripted::new("sms", vec![Ok(())]);
    let d = dispatcher(db, vec![sms.clone()]);
    let clock = Clock::Fixed(utc(2015, 4, 10, 7, 0));
    let stop = CancellationToken::new();
    let mut sent = 0;
    for (n, due_at) in [utc(2015, 4, 10, 6, 30), utc(2015, 4, 10, 6, 0), utc(2015, 4, 10, 5, 0)]
        .into_iter()
        .enumerate()
    {
        // Each window's rows are due before the last ones sent.
        let w = db
            .store
            .create_window(new_window(48 + n as i64), utc(2015, 4, 10, 6, 0), "t")
            .await
            .unwrap();
        db.store.enqueue(&queue(w.id, due_at)).await.unwrap();
        let r = d.run_due(&clock, &stop).await.unwrap();
        sent += r.sent;
        assert_eq!(r.sent, 250, "run {n}: {r:?}");
        assert_eq!(state(db, w.id).await, "sent");
    }
    assert_eq!(sent, 750);
    assert_eq!(sms.seen.lock().unwrap().len(), 750, "each sent once");
}

async fn state(db: &TestDb, w: WindowId) -> String {
    let rows = db.store.summary(Some(w)).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0].state.as_str().to_owned()
}

/// What planning beside sending reads to give way: how late the rows of the latest claim were
/// when claimed, and nothing before any claim.
async fn sending_tells_how_far_behind_its_slots_it_runs(db: &TestDb) {
    one_sms(db, start()).await;
    let outbox = tempfile::tempdir().unwrap();
    let file: Arc<dyn Sender> = Arc::new(FileSender::new("outbox", outbox.path().to_owned()));
    let d = dispatcher(db, vec![file]);
    assert_eq!(d.behind(), None, "no claim yet");
    // Due at 06:00, claimed 90 s later.
    let clock = Clock::Fixed(utc(2015, 4, 10, 6, 0) + TimeDelta::seconds(90));
    let seen = Mutex::new(Vec::new());
    let r = d
        .run_scoped(&clock, None, &CancellationToken::new(), &|_| {
            seen.lock().unwrap().push(d.behind())
        })
        .await
        .unwrap();
    assert_eq!(r.sent, 1);
    assert_eq!(*seen.lock().unwrap(), [Some(Duration::from_secs(90))]);
}

async fn transient_failures_fail_over_then_retry_then_give_up(db: &TestDb) {
    let w = one_sms(db, start()).await;
    let primary = Scripted::new("primary", vec![busy(None)]);
    let outbox = tempfile::tempdir().unwrap();
    let backup: Arc<dyn Sender> = Arc::new(FileSender::new("backup", outbox.path().to_owned()));
    // Failover: the first backend's transient failure goes to the next one, which sends.
    let d = dispatcher(db, vec![primary.clone(), backup]);
    let now = utc(2015, 4, 10, 6, 0);
    let r = d.run_due(&Clock::Fixed(now), &CancellationToken::new()).await.unwrap();
    assert_eq!((r.sent, r.retried), (1, 0));
    assert_eq!(primary.seen.lock().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_to_string(outbox.path().join("sms.jsonl"))
            .unwrap()
            .lines()
            .count(),
        1
    );

    // Only a busy backend: retried on the schedule (Retry-After lengthens a pause), then failed.
    let w2 = one_sms_again(db).await;
    let only = Scripted::new("only", vec![busy(Some(300))]);
    let d = dispatcher(db, vec![only.clone()]);
    let r = d.run_due(&Clock::Fixed(now), &CancellationToken::new()).await.unwrap();
    assert_eq!(r.retried, 1);
    assert_eq!(
        d.run_due(&Clock::Fixed(now + TimeDelta::minutes(4)), &CancellationToken::new())
            .await
            .unwrap()
            .claimed,
        0,
        "not before 5 minutes"
    );
    let r = d
        .run_due(&Clock::Fixed(now + TimeDelta::minutes(5)), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.retried, 1);
    assert_eq!(
        d.run_due(&Clock::Fixed(now + TimeDelta::minutes(14)), &CancellationToken::new())
            .await
            .unwrap()
            .claimed,
        0,
        "then 10 minutes"
    );
    let r = d
        .run_due(&Clock::Fixed(now + TimeDelta::minutes(15)), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.failed, 1, "the schedule has two retries");
    assert_eq!(only.seen.lock().unwrap().len(), 3);
    assert_eq!(state(db, w2).await, "failed");
    assert_eq!(state(db, w).await, "sent");
}

/// Real gateway backends behind the dispatcher: Africa's Talking out of balance hands the
/// message to Twilio at once, and the delivery records Twilio; a Twilio 5xx may have been
/// accepted, so the message waits for its retry and is flagged possibly duplicate.
async fn a_gateway_out_of_balance_fails_over_and_an_uncertain_send_is_retried_flagged(db: &TestDb) {
    use crate::providers::{build, talking_config, talking_server, twilio_config, twilio_server};
    // Customer 5's number ends in 05 (the fake Africa's Talking answers 405 for it); customer
    // 3's in 03 (the fake Twilio answers 502).
    db.store
        .upsert_recipients(&[customer(5, Locale::En)], utc(2015, 4, 1, 0, 0))
        .await
        .unwrap();
    let w = sms_for_new_window(db, 48, start()).await;
    let (talking, talking_base) = talking_server().await;
    let (twilio, twilio_base) = twilio_server().await;
    let d = dispatcher(
        db,
        vec![
            build(&talking_config(&talking_base, 100)),
            build(&twilio_config(&twilio_base)),
        ],
    );
    let now = utc(2015, 4, 10, 6, 0);
    let r = d.run_due(&Clock::Fixed(now), &CancellationToken::new()).await.unwrap();
    assert_eq!((r.sent, r.retried), (1, 0));
    assert_eq!(
        (
            talking.requests.lock().unwrap().len(),
            twilio.requests.lock().unwrap().len()
        ),
        (1, 1)
    );
    let sent = db.store.deliveries(w, None, None).await.unwrap();
    assert_eq!(sent[0].backend.as_deref(), Some("gw"), "{sent:?}");
    // Both tries are in the attempts log, in order.
    let tries = db.store.attempts(sent[0].id).await.unwrap();
    let outcomes: Vec<&str> = tries.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["paused", "sent"], "{tries:?}");
    assert!(tries[0].error.as_deref().unwrap().contains("405"), "{tries:?}");
    assert_eq!(tries[0].outcome, "paused");
    // The pause is an alarm on the window, raised once.
    let alarms: Vec<_> = db
        .store
        .history(w)
        .await
        .unwrap()
        .into_iter()
        .filter(|h| h.action == "alarm")
        .collect();
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert!(
        alarms[0].details["message"].as_str().unwrap().contains("insufficient")
            || alarms[0].details["message"].as_str().unwrap().contains("405"),
        "{alarms:?}"
    );
    assert!(tries[1].error.is_none() && tries[1].latency_ms < 10_000, "{tries:?}");
    // Each try is timed when its backend answered: the failure before the success that followed.
    assert!(tries[0].at <= tries[1].at && tries[1].at <= now, "{tries:?}");

    let (_, twilio_base) = twilio_server().await;
    db.store
        .upsert_recipients(&[customer(3, Locale::En)], utc(2015, 4, 1, 0, 0))
        .await
        .unwrap();
    let w2 = db.store.create_window(new_window(24), now, "t").await.unwrap().id;
    let third = db
        .store
        .recipients_page(None, RecipientId(1), 1)
        .await
        .unwrap()
        .recipients[0]
        .id;
    let row = PlannedDelivery {
        window: w2,
        revision: 1,
        notice: Notice::Announced,
        recipient: third,
        channel: Channel::Sms,
        endpoint: None,
        due_at: now,
        deadline: start(),
    };
    db.store.enqueue(&[row]).await.unwrap();
    let d = dispatcher(db, vec![build(&twilio_config(&twilio_base))]);
    let r = d.run_due(&Clock::Fixed(now), &CancellationToken::new()).await.unwrap();
    assert_eq!((r.sent, r.retried), (0, 1));
    let waiting = db.store.deliveries(w2, None, None).await.unwrap();
    assert!(waiting[0].possibly_duplicate, "{waiting:?}");
    assert!(waiting[0].last_error.as_deref().unwrap().contains("502"), "{waiting:?}");
    let tries = db.store.attempts(waiting[0].id).await.unwrap();
    assert_eq!(
        (tries[0].outcome.as_str(), tries[0].status.as_deref()),
        ("uncertain", Some("HTTP 502"))
    );

    // A provider's error that quotes the number: the ledger and the log hold it masked.
    db.store
        .upsert_recipients(&[customer(4, Locale::En)], utc(2015, 4, 1, 0, 0))
        .await
        .unwrap();
    let w3 = db.store.create_window(new_window(24), now, "t").await.unwrap().id;
    let fourth = db
        .store
        .recipients_page(None, RecipientId(2), 1)
        .await
        .unwrap()
        .recipients[0]
        .id;
    db.store
        .enqueue(&[PlannedDelivery {
            window: w3,
            revision: 1,
            notice: Notice::Announced,
            recipient: fourth,
            channel: Channel::Sms,
            endpoint: None,
            due_at: now,
            deadline: start(),
        }])
        .await
        .unwrap();
    let r = d.run_due(&Clock::Fixed(now), &CancellationToken::new()).await.unwrap();
    assert_eq!(r.failed, 1);
    let failed = db.store.deliveries(w3, None, None).await.unwrap();
    let error = failed[0].last_error.clone().unwrap();
    assert!(
        error.contains("21211") && !error.contains("+254710000004") && error.contains("+2547"),
        "{error}"
    );
    let tries = db.store.attempts(failed[0].id).await.unwrap();
    let logged = tries[0].error.clone().unwrap();
    assert!(
        !logged.contains("+254710000004") && tries[0].status.as_deref() == Some("HTTP 400"),
        "{tries:?}"
    );
}

/// A second window with the same recipient, for a fresh delivery.
async fn one_sms_again(db: &TestDb) -> WindowId {
    sms_for_new_window(db, 24, start()).await
}

async fn permanent_failures_are_final_and_late_retries_expire(db: &TestDb) {
    let now = utc(2015, 4, 10, 6, 0);
    let w = one_sms(db, now + TimeDelta::seconds(30)).await;
    // A transient failure whose next attempt would land after the deadline: expired, not retried.
    let d = dispatcher(db, vec![Scripted::new("slow", vec![busy(None)])]);
    let r = d.run_due(&Clock::Fixed(now), &CancellationToken::new()).await.unwrap();
    assert_eq!((r.expired, r.retried), (1, 0));
    assert_eq!(state(db, w).await, "expired");

    let w2 = one_sms_again(db).await;
    let invalid = Scripted::new(
        "strict",
        vec![Err(SendError::Permanent {
            message: "403 invalid phone number".into(),
        })],
    );
    let backup = Scripted::new("never", vec![Ok(())]);
    let d = dispatcher(db, vec![invalid, backup.clone()]);
    let r = d.run_due(&Clock::Fixed(now), &CancellationToken::new()).await.unwrap();
    assert_eq!(r.failed, 1);
    assert!(
        backup.seen.lock().unwrap().is_empty(),
        "a permanent failure does not fail over"
    );
    assert_eq!(state(db, w2).await, "failed");
    assert!(
        d.run_due(&Clock::Fixed(now + TimeDelta::hours(1)), &CancellationToken::new())
            .await
            .unwrap()
            .claimed
            == 0
    );
}

/// A 24-hour reminder that goes out late says how long is really left, in both languages, and
/// one sent on time says 24 hours: bodies are rendered per lead time, not once per notice.
async fn a_late_reminder_says_how_long_is_left(db: &TestDb) {
    db.store
        .upsert_recipients(
            &[customer(0, Locale::En), customer(1, Locale::Sw)],
            utc(2015, 4, 1, 0, 0),
        )
        .await
        .unwrap();
    let w = db
        .store
        .create_window(new_window(48), utc(2015, 4, 10, 6, 0), "t")
        .await
        .unwrap();
    let people = db
        .store
        .recipients_page(None, RecipientId(0), 10)
        .await
        .unwrap()
        .recipients;
    let reminder = Notice::reminder("24h".parse().unwrap());
    let rows: Vec<PlannedDelivery> =
        crate::helpers::announced_sms(w.id, &people, start() - TimeDelta::hours(24), start())
            .into_iter()
            .map(|r| PlannedDelivery { notice: reminder, ..r })
            .collect();
    db.store.enqueue(&rows).await.unwrap();
    let outbox = tempfile::tempdir().unwrap();
    let file: Arc<dyn Sender> = Arc::new(FileSender::new("outbox", outbox.path().to_owned()));
    let d = dispatcher(db, vec![file]);
    // Five hours late.
    d.run_due(&Clock::Fixed(start() - TimeDelta::hours(19)), &CancellationToken::new())
        .await
        .unwrap();
    let text = std::fs::read_to_string(outbox.path().join("sms.jsonl")).unwrap();
    assert!(text.contains("Maintenance starts in 19 hours"), "{text}");
    assert!(text.contains("matengenezo yataanza baada ya saa 19"), "{text}");
    assert!(!text.contains("24 hours") && !text.contains("saa 24"), "{text}");
}
