//! The scheduler's tick: state transitions, planning, expiry and dispatch, in that order; and
//! [`run`], the daemon's loop of ticks until shutdown.
//!
//! `tick(now)` is the whole daemon's work for one instant; [`run`] calls it in a loop, the
//! `run-once` command and the demo call it directly with the clock they were given. Every
//! comparison with time uses `now`, never the database's clock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::dispatch::handoff::{self, Hand, Handed};
use crate::dispatch::{DispatchError, DispatchReport, Dispatcher};
use crate::domain::{
    Audience, Channel, Decision, Notice, Outcome, PlannedDelivery, Policy, Reach, Recipient, RecipientId, Window,
    WindowStatus, Zone,
};
use crate::planner;
use crate::planner::pace::{AudienceSize, Capacity, FanOutPlan, Lead, Leads, Pacer};
use crate::storage::{
    Claim, Claimed, ClaimedBatch, ClaimedDelivery, CorruptClaim, FanOutPage, HandOver, PAGE, Released, Store,
    StoreError, WrittenPage,
};

#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
}

/// A window running past its planned end that no operator has confirmed.
#[derive(Debug, Clone, Serialize)]
pub struct Alarm {
    pub window_id: i64,
    pub title: String,
    pub ends_at: DateTime<Utc>,
    pub message: String,
}

impl Alarm {
    pub fn overrun(w: &Window, now: DateTime<Utc>) -> Option<Alarm> {
        w.overrun(now).then(|| Alarm {
            window_id: w.id.0,
            title: w.title.en.clone(),
            ends_at: w.schedule.ends_at(),
            message: format!(
                "window {} ('{}') passed its planned end {} {} ago and is not confirmed complete: run `tangazo window complete {}` or `tangazo window extend {} --end …`",
                w.id,
                w.title.en,
                w.schedule.ends_at().to_rfc3339(),
                humanize(now - w.schedule.ends_at()),
                w.id,
                w.id
            ),
        })
    }
}

fn humanize(d: chrono::TimeDelta) -> String {
    let m = d.num_minutes();
    if m < 120 {
        format!("{m} min")
    } else {
        format!("{} h {} min", m / 60, m % 60)
    }
}

/// How a long tick is going.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// Fanning a notice out: rows enqueued so far, recipients read up to this id.
    Planning {
        window: i64,
        notice: Notice,
        enqueued: u64,
        read_up_to: i64,
    },
    /// Sending: the running totals.
    Sending(DispatchReport),
}

/// Told how a long tick is going; called from the ticking task.
pub type ProgressSink<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// A window the scheduler moved on: `started`, or `completed` by itself at its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub window: i64,
    pub revision: u32,
    pub status: &'static str,
}

impl std::fmt::Display for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            "completed" => write!(
                f,
                "window {} completed by itself at its end (r{})",
                self.window, self.revision
            ),
            status => write!(f, "window {} {status} (r{})", self.window, self.revision),
        }
    }
}

/// A notice decided in this tick: planned (with the deliveries it enqueued), or recorded as a
/// whole (skipped, superseded, expired).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoticeDecision {
    pub window: i64,
    pub revision: u32,
    pub notice: String,
    pub audience: &'static str,
    pub outcome: &'static str,
    /// Rows enqueued (planned notices only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<u64>,
    /// An interrupted fan-out continued after this recipient id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_after: Option<i64>,
}

impl NoticeDecision {
    fn new(window: &Window, d: &Decision) -> NoticeDecision {
        NoticeDecision {
            window: window.id.0,
            revision: d.revision,
            notice: d.notice.to_string(),
            audience: d.audience.as_str(),
            outcome: d.outcome.as_str(),
            deliveries: None,
            resumed_after: None,
        }
    }
}

impl std::fmt::Display for NoticeDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let audience = match self.audience {
            "customer" => "customers",
            _ => "billers",
        };
        write!(
            f,
            "window {} r{} {} for {audience}: ",
            self.window, self.revision, self.notice
        )?;
        match (self.deliveries, self.resumed_after) {
            (Some(0), _) => write!(f, "nobody to tell"),
            (Some(n), None) => write!(f, "{n} deliveries"),
            (Some(n), Some(after)) => write!(f, "{n} more deliveries (resumed after recipient {after})"),
            (None, _) => write!(f, "{}", self.outcome),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TickReport {
    pub transitions: Vec<Transition>,
    pub planned: Vec<NoticeDecision>,
    pub recorded: Vec<NoticeDecision>,
    pub enqueued: u64,
    pub superseded: u64,
    pub expired: u64,
    /// Claims whose lease had lapsed, settled at the start of the tick.
    pub released: Released,
    pub dispatch: DispatchReport,
    /// Rows this worker still holds claimed after the tick (normally none).
    pub left_claimed: u64,
    pub alarms: Vec<Alarm>,
    /// Recipients whose stored row does not read back, by id, with why: skipped, not fatal.
    pub unreadable: BTreeMap<i64, String>,
    /// Wall-clock time spent on transitions and planning (every window's fan-outs), in seconds.
    pub plan_seconds: f64,
    /// Wall-clock time spent dispatching, in seconds. Sending runs beside planning, so the two
    /// overlap: this runs from the end of the transitions to the last batch's outcome.
    pub dispatch_seconds: f64,
    /// Whether this process led (planned and moved windows on); `false`: another daemon,
    /// named in `leader`, did, and this one only dispatched.
    pub led: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Fan-outs planned in this tick that the capacity cannot finish by their deadline.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cannot_meet_deadline: Vec<FanOutPlan>,
}

/// Recipients per page of a fan-out paced at a rate (see `fan_out`).
const PACED_PAGE: i64 = 2_000;

/// The shortest wait between two ticks of the daemon.
const MIN_PAUSE: Duration = Duration::from_millis(10);

/// How often planning that gives way to sending looks again.
const GIVE_WAY_STEP: Duration = Duration::from_millis(10);

/// Audience sizes are counted at most this often (a count reads every recipient).
const SIZES_FRESH_FOR: Duration = Duration::from_secs(60);

pub struct Scheduler {
    store: Store,
    policy: Policy,
    dispatcher: Dispatcher,
    /// Messages per second of each channel's first backend.
    capacity: Capacity,
    /// Audience sizes per channel, with when they were counted.
    sizes: tokio::sync::Mutex<Option<(std::time::Instant, BTreeMap<Audience, AudienceSize>)>>,
    /// The term this tick leads in; `None` when not leading.
    term: std::sync::Mutex<Option<Term>>,
}

/// A term of the scheduler's lead: when it began (see `Store::lead`), and when its lease was
/// last taken or renewed (real time, read before the database was asked).
#[derive(Debug, Clone, Copy)]
struct Term {
    since: i64,
    renewed: std::time::Instant,
}

/// The part of its lease after which a leader renews it before it plans on. Until then no
/// other daemon can have taken the lead: `Store::lead` lets another in only once the lease
/// has lapsed.
const RENEW_AFTER_PART: u32 = 4;

/// The part of its lease after which a daemon that does not lead ends its tick's sending, to
/// ask for the lead again at the next.
const ASK_FOR_THE_LEAD_PART: u32 = 3;

/// How long a tick sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// Until nothing is due (`run-once`, and every tick of the leader).
    UntilNothingIsDue,
    /// The daemon's: a tick that does not lead sends for a third of a lease at most, then
    /// ends, and the next asks for the lead.
    AskingForTheLead,
}

impl Scheduler {
    pub fn new(store: Store, policy: Policy, dispatcher: Dispatcher) -> Scheduler {
        let senders = dispatcher.senders();
        let firsts: Vec<(Channel, &str, Option<f64>)> = Channel::ALL
            .into_iter()
            .filter_map(|c| senders.route(c).first().map(|r| (c, r.sender.name(), r.rate)))
            .collect();
        let capacity = Capacity::of_first_backends(&firsts);
        Scheduler {
            store,
            policy,
            dispatcher,
            capacity,
            sizes: tokio::sync::Mutex::new(None),
            term: std::sync::Mutex::new(None),
        }
    }

    /// The name this scheduler leads and claims under.
    pub fn owner(&self) -> &str {
        self.dispatcher.owner()
    }

    fn lease(&self) -> Duration {
        self.dispatcher.config().lease.to_std()
    }

    /// Gives up the lead (at the end of a run), so another process plans at once.
    pub async fn step_down(&self) -> Result<(), StoreError> {
        self.store.step_down(self.owner()).await
    }

    /// How long the daemon waits before its next tick: `every`, or less when a delivery's slot
    /// comes sooner, so a paced fan-out is sent as its slots fall due and not a tick late.
    pub async fn pause_before_next_tick(&self, clock: &Clock, every: Duration) -> Duration {
        if !clock.advances() {
            return every;
        }
        let now = clock.now();
        match self.store.next_slot(now).await {
            Ok(Some(slot)) => (slot - now).to_std().unwrap_or_default().clamp(MIN_PAUSE, every),
            Ok(None) => every,
            Err(e) => {
                tracing::warn!(error = %crate::domain::error_chain(&e), "cannot read when the next delivery falls due");
                every
            }
        }
    }

    /// The dispatcher that sends for this scheduler.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    fn term(&self) -> std::sync::MutexGuard<'_, Option<Term>> {
        self.term.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes or renews the lead at the start of a tick: whether this scheduler leads.
    async fn lead(&self) -> Result<bool, StoreError> {
        let renewed = std::time::Instant::now();
        let term = self.store.lead(self.owner(), self.lease()).await?;
        *self.term() = term.map(|since| Term { since, renewed });
        Ok(term.is_some())
    }

    /// Whether this scheduler still leads in the term its tick began with; renews the lease.
    /// A leader that was paused past its lease and replaced finds out here, before it writes:
    /// another daemon leads now, or led meanwhile and let its own lease lapse (waiting, say,
    /// on a lock the paused leader held). In the second case the lease is given up again:
    /// the daemon whose tick comes next leads, in a term of its own, from what is committed.
    ///
    /// A lease taken or renewed less than a quarter of it ago still holds, and is not renewed
    /// yet: a large fan-out asks at every page, and on SQLite each renewal would take a turn
    /// of the one writer from planning and sending.
    async fn still_leading(&self) -> Result<bool, StoreError> {
        let lease = self.lease();
        let began = *self.term();
        if began.is_some_and(|t| t.renewed.elapsed() < lease / RENEW_AFTER_PART) {
            return Ok(true);
        }
        let renewed = std::time::Instant::now();
        let term = self.store.lead(self.owner(), lease).await?;
        match term {
            None => {
                tracing::warn!(
                    owner = self.owner(),
                    "another daemon leads now: this one stops planning"
                );
            }
            Some(since) if Some(since) != began.map(|t| t.since) => {
                tracing::warn!(
                    owner = self.owner(),
                    "another daemon led meanwhile: this one stops planning and gives up the lead"
                );
                self.store.step_down(self.owner()).await?;
            }
            Some(since) => {
                *self.term() = Some(Term { since, renewed });
                return Ok(true);
            }
        }
        *self.term() = None;
        Ok(false)
    }

    /// Whether a fan-out's rows that can go out at once are written claimed for this process's
    /// own lanes (see `Store::hands_over`).
    pub async fn hands_over(&self) -> Result<bool, StoreError> {
        self.store.hands_over(self.owner()).await
    }

    /// Each audience's fan-out length at the capacity, and its quiet hours.
    async fn leads(&self) -> Result<Leads, StoreError> {
        let mut leads = Leads {
            customers: Lead {
                spread: chrono::TimeDelta::zero(),
                quiet_hours: self.policy.customers.quiet_hours(),
            },
            billers: Lead {
                spread: chrono::TimeDelta::zero(),
                quiet_hours: self.policy.billers.quiet_hours(),
            },
        };
        if !self.capacity.is_limited() {
            return Ok(leads);
        }
        let sizes = self.audience_sizes().await?;
        for audience in Audience::ALL {
            let spread = sizes
                .get(&audience)
                .map(|s| self.capacity.spread(s))
                .unwrap_or_default();
            match audience {
                Audience::Customer => leads.customers.spread = spread,
                Audience::Biller => leads.billers.spread = spread,
            }
        }
        Ok(leads)
    }

    async fn audience_sizes(&self) -> Result<BTreeMap<Audience, AudienceSize>, StoreError> {
        let mut cached = self.sizes.lock().await;
        if let Some((at, sizes)) = cached.as_ref()
            && at.elapsed() < SIZES_FRESH_FOR
        {
            return Ok(sizes.clone());
        }
        let sizes = self.store.all_audience_sizes().await?;
        *cached = Some((std::time::Instant::now(), sizes.clone()));
        Ok(sizes)
    }

    /// One tick: transitions and planning at the instant `clock` reads when it starts, then
    /// dispatch, which reads `clock` again for every batch. `stop` is checked between dispatch
    /// batches (shutdown).
    pub async fn tick(&self, clock: &Clock, stop: &CancellationToken) -> Result<TickReport, TickError> {
        self.tick_reporting(clock, stop, &|_| {}).await
    }

    /// `tick`, telling `progress` how a long fan-out or send is going (after every page of
    /// recipients and every dispatched batch).
    pub async fn tick_reporting(
        &self,
        clock: &Clock,
        stop: &CancellationToken,
        progress: ProgressSink<'_>,
    ) -> Result<TickReport, TickError> {
        self.tick_as(clock, stop, progress, Sending::UntilNothingIsDue).await
    }

    /// A tick; as the daemon's ([`Sending::AskingForTheLead`]), one that does not lead ends its
    /// sending every third of a lease.
    async fn tick_as(
        &self,
        clock: &Clock,
        stop: &CancellationToken,
        progress: ProgressSink<'_>,
        sending_until: Sending,
    ) -> Result<TickReport, TickError> {
        let now = clock.now();
        let mut report = TickReport {
            released: self.store.release_lapsed_claims(now).await?,
            ..TickReport::default()
        };
        let planning = std::time::Instant::now();
        report.led = self.lead().await?;
        let led = report.led;
        let windows = if report.led {
            self.store.open_windows().await?
        } else {
            report.leader = self.store.leader().await?;
            Vec::new()
        };
        let leads = if windows.is_empty() {
            Leads::default()
        } else {
            self.leads().await?
        };
        // Transitions first, so nothing of a revision they supersede goes out this tick.
        let mut moved = Vec::with_capacity(windows.len());
        for window in windows {
            if !self.still_leading().await? {
                report.led = false;
                report.leader = self.store.leader().await?;
                break;
            }
            moved.push(self.transition(window, now, &mut report).await?);
        }
        // Then planning and sending together: the first pages of a large fan-out go out (at
        // their slots, when paced) while the rest is planned.
        let enqueued = CancellationToken::new();
        // The rows of a fan-out that can go out at once are written claimed and handed to this
        // process's lanes where no other process would claim them (see `hands_over`).
        let (hand, handed) = if self.hands_over().await? {
            let (hand, handed) = handoff::channel(self.dispatcher.config().batches_in_flight);
            (Some(hand), Some(handed))
        } else {
            (None, None)
        };
        let plan = async {
            // Dropped when planning ends, so a lane waiting for a batch stops waiting.
            let hand = hand;
            // However planning ends, sending finishes what is due and stops.
            let _enqueued = enqueued.clone().drop_guard();
            for window in &moved {
                if report.led && !self.still_leading().await? {
                    report.led = false;
                    report.leader = self.store.leader().await?;
                }
                if !report.led {
                    break;
                }
                self.plan(window, clock, now, &leads, hand.as_ref(), &mut report, progress)
                    .await?;
                // Raised once for the window's state (its revision), not at every tick;
                // `deliveries summary` shows it for as long as it holds.
                if let Some(alarm) = Alarm::overrun(window, now)
                    && self
                        .store
                        .raise_alarm_once(window, "overrun", &alarm.message, now)
                        .await?
                {
                    tracing::warn!(window = window.id.0, "{}", alarm.message);
                    report.alarms.push(alarm);
                }
            }
            self.store.after_bulk_load(report.enqueued).await?;
            report.plan_seconds = planning.elapsed().as_secs_f64();
            report.expired = self.store.expire_due(now).await?;
            Ok::<(), StoreError>(())
        };
        let sending = std::time::Instant::now();
        // A daemon that does not lead asks for the lead again at least every third of a lease:
        // its tick's sending ends then (the batches in flight finish) and the next tick begins
        // with the ask, so a long backlog does not keep it from taking over from a leader
        // that died or stalled.
        let asks_again = !led && sending_until == Sending::AskingForTheLead;
        let sending_ends = stop.child_token();
        let send = async {
            let report_sending = |r: &DispatchReport| progress(Progress::Sending(*r));
            let sent = async {
                match &handed {
                    Some(handed) => {
                        self.dispatcher
                            .run_handed(clock, None, handed, &enqueued, &sending_ends, &report_sending)
                            .await
                    }
                    None => {
                        self.dispatcher
                            .run_alongside(clock, None, &enqueued, &sending_ends, &report_sending)
                            .await
                    }
                }
            };
            tokio::pin!(sent);
            let sent = tokio::select! {
                sent = &mut sent => sent,
                () = tokio::time::sleep(self.lease() / ASK_FOR_THE_LEAD_PART), if asks_again => {
                    sending_ends.cancel();
                    sent.await
                }
            };
            (sent, sending.elapsed().as_secs_f64())
        };
        let (planned, (sent, dispatch_seconds)) = tokio::join!(plan, send);
        planned?;
        report.dispatch = sent?;
        report.dispatch_seconds = dispatch_seconds;
        report.left_claimed = self.dispatcher.left_claimed().await?;
        Ok(report)
    }

    /// Starts windows whose time has come and completes those that complete themselves.
    async fn transition(
        &self,
        mut window: Window,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<Window, StoreError> {
        if window.status == WindowStatus::Scheduled && now >= window.schedule.starts_at() {
            let next = window.start(now).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let Some(superseded) = self.save_transition(&window, &next, now).await? else {
                return self.store.window(window.id).await;
            };
            report.superseded += superseded;
            tracing::info!(window = next.id.0, revision = next.revision, "window started");
            report.transitions.push(Transition {
                window: next.id.0,
                revision: next.revision,
                status: "started",
            });
            window = next;
        }
        if window.status == WindowStatus::InProgress && window.auto_complete && now >= window.schedule.ends_at() {
            let next = window.complete(now).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let Some(superseded) = self.save_transition(&window, &next, now).await? else {
                return self.store.window(window.id).await;
            };
            report.superseded += superseded;
            tracing::info!(
                window = next.id.0,
                revision = next.revision,
                "window completed automatically"
            );
            report.transitions.push(Transition {
                window: next.id.0,
                revision: next.revision,
                status: "completed",
            });
            window = next;
        }
        Ok(window)
    }

    /// Saves a transition the scheduler makes. `None`: the window changed meanwhile (an
    /// operator, or another daemon that moved it on first): not an error, the tick goes on with
    /// the window as it is now.
    async fn save_transition(
        &self,
        old: &Window,
        next: &Window,
        now: DateTime<Utc>,
    ) -> Result<Option<u64>, StoreError> {
        match self.store.save_change(old, next, "scheduler", now).await {
            Ok(n) => Ok(Some(n)),
            Err(StoreError::Conflict { id, expected }) => {
                tracing::info!(
                    window = id.0,
                    expected,
                    "window changed meanwhile: its transition is left to the change"
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn plan(
        &self,
        window: &Window,
        clock: &Clock,
        now: DateTime<Utc>,
        leads: &Leads,
        hand: Option<&Hand>,
        report: &mut TickReport,
        progress: ProgressSink<'_>,
    ) -> Result<(), StoreError> {
        // First what an earlier tick recorded but did not finish fanning out (it was stopped or
        // killed): from the first recipient it had not committed.
        for (decision, after) in self.store.open_fan_outs(window.id, window.revision).await? {
            let Some(n) = self
                .fan_out(window, &decision, after, clock, hand, progress, &mut report.unreadable)
                .await?
            else {
                return Ok(());
            };
            report.enqueued += n;
            tracing::info!(window = window.id.0, revision = decision.revision, notice = %decision.notice, audience = %decision.audience, deliveries = n, after = after.0, "fan-out resumed");
            report.planned.push(NoticeDecision {
                deliveries: Some(n),
                resumed_after: Some(after.0),
                ..NoticeDecision::new(window, &decision)
            });
        }
        let decided = self.store.decided(window.id, window.revision).await?;
        for decision in planner::decide_paced(window, &self.policy, &decided, now, leads) {
            // Recorded before its rows, so an interrupted fan-out is resumed, not re-decided.
            report.superseded += self.store.record_decision(window.id, &decision, now).await?;
            if decision.outcome == Outcome::Planned {
                self.check_deadline(window, &decision, now, report).await?;
                let Some(n) = self
                    .fan_out(
                        window,
                        &decision,
                        RecipientId(0),
                        clock,
                        hand,
                        progress,
                        &mut report.unreadable,
                    )
                    .await?
                else {
                    // The window changed meanwhile: its next revision is planned next tick.
                    return Ok(());
                };
                report.enqueued += n;
                tracing::info!(window = window.id.0, revision = decision.revision, notice = %decision.notice, audience = %decision.audience, deliveries = n, "notice planned");
                report.planned.push(NoticeDecision {
                    deliveries: Some(n),
                    ..NoticeDecision::new(window, &decision)
                });
            } else {
                tracing::info!(window = window.id.0, revision = decision.revision, notice = %decision.notice, audience = %decision.audience, outcome = decision.outcome.as_str(), "notice recorded");
                report.recorded.push(NoticeDecision::new(window, &decision));
            }
        }
        if let Some(last) = terminal_notice(window) {
            let decided = self.store.decided(window.id, window.revision).await?;
            if Audience::ALL.iter().all(|a| decided.contains(&(last, *a)))
                && self.store.open_fan_outs(window.id, window.revision).await?.is_empty()
            {
                self.store.close_window(window.id).await?;
            }
        }
        Ok(())
    }

    /// Says so, with the numbers, when the capacity cannot finish a planned fan-out by its
    /// deadline: before any of it is sent.
    async fn check_deadline(
        &self,
        window: &Window,
        decision: &Decision,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<(), StoreError> {
        if !self.capacity.is_limited() {
            return Ok(());
        }
        let sizes = self.audience_sizes().await?;
        let size = sizes.get(&decision.audience).cloned().unwrap_or_default();
        let start = decision.due_at.max(now);
        let plan = planner::pace::fan_out_plan(
            decision.notice,
            decision.audience,
            start,
            decision.deadline,
            &size,
            &self.capacity,
            start,
            start,
        );
        if !plan.feasible() {
            tracing::warn!(
                window = window.id.0,
                notice = %decision.notice,
                audience = decision.audience.as_str(),
                deliveries = plan.total(),
                start = %plan.start.to_rfc3339(),
                expected_end = %plan.end.to_rfc3339(),
                deadline = %plan.deadline.to_rfc3339(),
                short_by_seconds = -plan.slack().num_seconds(),
                "the capacity cannot reach everyone before the deadline: what is not sent by then expires"
            );
            report.cannot_meet_deadline.push(plan);
        }
        Ok(())
    }

    /// The pacer of a decision's fan-out: slots from when it begins at each channel's rate,
    /// out of the recipients' quiet hours where the notice keeps them. `None`: nothing to pace.
    async fn pacer(
        &self,
        window: &Window,
        decision: &Decision,
        after: RecipientId,
        clock: &Clock,
    ) -> Result<Option<Pacer>, StoreError> {
        let now = clock.now();
        let quiet = self
            .policy
            .for_audience(decision.audience)
            .quiet_hours()
            .filter(|_| planner::pace::keeps_quiet(window, decision.notice, decision.reach, now));
        if quiet.is_none() && !self.capacity.is_limited() {
            return Ok(None);
        }
        let done = if after == RecipientId(0) {
            AudienceSize::new()
        } else {
            self.store
                .enqueued_per_channel(window.id, decision.revision, decision.notice, decision.audience)
                .await?
        };
        let rates = if self.capacity.is_limited() {
            let sizes = self.audience_sizes().await?;
            self.capacity
                .rates(&sizes.get(&decision.audience).cloned().unwrap_or_default())
        } else {
            BTreeMap::new()
        };
        // The first slot is no earlier than this moment (the clock read again, after the counts
        // above): a slot that passed while the fan-out was being sized would be late already.
        Ok(Some(Pacer::new(
            decision.due_at.max(clock.now()),
            decision.deadline,
            now,
            rates,
            quiet,
            done,
        )))
    }

    /// Waits while planning gives way to sending (see [`planner::pace::gives_way`]): until
    /// sending has caught up with its slots, stopped claiming, or is about to run out of rows,
    /// or for `at_most`. Returns how long it waited.
    async fn give_way(&self, clock: &Clock, planned_until: DateTime<Utc>, at_most: Duration) -> Duration {
        let since = tokio::time::Instant::now();
        while since.elapsed() < at_most
            && planner::pace::gives_way(self.dispatcher.behind(), planned_until - clock.now())
        {
            tokio::time::sleep(GIVE_WAY_STEP).await;
        }
        let waited = since.elapsed();
        if waited >= GIVE_WAY_STEP {
            tracing::debug!(waited_ms = waited.as_millis() as u64, "planning gave way to sending");
        }
        waited
    }

    /// Enqueues a planned decision's deliveries for the recipients after `after`, a page at a
    /// time, each page committed with the fan-out's progress. `None`: the window changed
    /// meanwhile, or another daemon leads now, and the rest of this revision's fan-out is not
    /// enqueued here.
    ///
    /// On PostgreSQL two pages are written at once, each on a connection of its own, and the
    /// next is read and planned meanwhile: the server's work per row is what bounds planning,
    /// and one page's insert keeps one of its processes busy. The later page records its
    /// progress only once the earlier has committed (see [`Store::enqueue_page_handing`]), so
    /// the fan-out's progress still moves a page at a time, in order. On SQLite a page is
    /// written, then the next read: reading ahead there took the one writer's turns back to
    /// back, and sending waited for the end of planning for no shorter run (BENCHMARKS.md,
    /// *2 December, night*).
    #[allow(clippy::too_many_arguments)]
    async fn fan_out(
        &self,
        window: &Window,
        decision: &Decision,
        after: RecipientId,
        clock: &Clock,
        mut hand: Option<&Hand>,
        progress: ProgressSink<'_>,
        unreadable: &mut BTreeMap<i64, String>,
    ) -> Result<Option<u64>, StoreError> {
        let pacer = self.pacer(window, decision, after, clock).await?;
        // A fan-out paced at a rate has its first slots come due while the rest is planned, and
        // sending takes turns with planning to write (SQLite) or shares the server with it
        // (PostgreSQL): smaller pages keep each turn short enough for sending to keep up with
        // the slots, and let planning give way to it often enough.
        let paced_at_a_rate = pacer.is_some() && self.capacity.is_limited();
        let mut pages = Pages {
            window,
            decision,
            after,
            size: if paced_at_a_rate { PACED_PAGE } else { PAGE },
            pacer,
            paced_at_a_rate,
            planned_until: None,
            began: tokio::time::Instant::now(),
            waited: Duration::ZERO,
            unreadable,
            done: false,
        };
        let mut written = Written {
            enqueued: 0,
            analyze_at: crate::storage::FIRST_ANALYZE,
        };
        let turns = self.store.writes_take_turns();
        let at_once = if turns { 1 } else { 2 };
        let mut in_flight: VecDeque<PageWrite> = VecDeque::with_capacity(at_once);
        let mut read_from = after;
        // The last page started: told when it commits, as the page after it waits to be.
        let mut committed: Option<tokio::sync::oneshot::Receiver<()>> = None;
        let mut next = self.plan_page(&mut pages, clock).await?;
        loop {
            if let Some(page) = next.take() {
                if !self.still_leading().await? {
                    self.abandon(in_flight).await;
                    return Ok(None);
                }
                let hands = hand.is_some() && self.hands_over().await?;
                let from = std::mem::replace(&mut read_from, page.read_up_to);
                let (write, done) = self.write_page(window, decision, from, page, hands, clock, committed.take());
                in_flight.push_back(write);
                committed = (!turns).then_some(done);
            }
            // The oldest write is waited for once `at_once` are under way, or once there is no
            // page left to plan.
            let finishing = if in_flight.len() >= at_once || pages.done {
                in_flight.pop_front()
            } else {
                None
            };
            let (settled, ahead) = {
                let settle = async {
                    match finishing {
                        Some(w) => {
                            self.settle(w, window, decision, &mut hand, &mut written, progress)
                                .await
                        }
                        None => Ok(true),
                    }
                };
                let ahead = async {
                    if pages.done {
                        Ok(None)
                    } else {
                        self.plan_page(&mut pages, clock).await
                    }
                };
                if turns {
                    match settle.await {
                        Ok(true) => (Ok(true), ahead.await),
                        stopped => (stopped, Ok(None)),
                    }
                } else {
                    tokio::join!(settle, ahead)
                }
            };
            next = match (settled, ahead) {
                (Ok(true), Ok(next)) => next,
                (settled, ahead) => {
                    self.abandon(in_flight).await;
                    settled?;
                    ahead?;
                    return Ok(None);
                }
            };
            if pages.done && next.is_none() && in_flight.is_empty() {
                break;
            }
        }
        self.store.close_fan_out(window.id, decision).await?;
        Ok(Some(written.enqueued))
    }

    /// Starts writing a planned page, with its rows that can go out at once written claimed
    /// for this process's lanes if `hands`, on a task of its own: it goes on while the next
    /// page is planned, and whatever this task does meanwhile. Its progress is recorded once
    /// `earlier` tells the page before committed; the receiver returned is told when this one
    /// has.
    #[allow(clippy::too_many_arguments)]
    fn write_page(
        &self,
        window: &Window,
        decision: &Decision,
        read_from: RecipientId,
        page: PlannedPage,
        hands: bool,
        clock: &Clock,
        earlier: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> (PageWrite, tokio::sync::oneshot::Receiver<()>) {
        let (tell, told) = tokio::sync::oneshot::channel();
        let mark = FanOutPage {
            window: window.id,
            revision: decision.revision,
            notice: decision.notice,
            audience: decision.audience,
            read_from,
            read_up_to: page.read_up_to,
        };
        let config = self.dispatcher.config();
        let owner = self.dispatcher.owner().to_owned();
        let (lease, batch, now) = (config.lease.to_std(), config.batch_size, clock.now());
        let store = self.store.clone();
        // Before the page is written: no batch's lease began earlier.
        let written_at = Handed::stamp();
        let task = tokio::spawn(async move {
            let over = hands.then(|| HandOver {
                owner: &owner,
                lease,
                batch,
                now,
            });
            let written = store
                .enqueue_page_after(&mark, &page.rows, over.as_ref(), earlier)
                .await;
            if matches!(written, Ok(Some(_))) {
                // The next page may have stopped waiting already: nothing to tell then.
                let _ = tell.send(());
            }
            (written, page)
        });
        (PageWrite { task, written_at }, told)
    }

    /// Waits for the pages still being written when a fan-out stops early, and gives back the
    /// batches they wrote claimed: no lane will be handed them. (A page after one that did not
    /// commit writes nothing.)
    async fn abandon(&self, in_flight: VecDeque<PageWrite>) {
        for write in in_flight {
            let Ok((Ok(Some(written)), _)) = write.task.await else {
                continue;
            };
            for batch in written.claimed {
                if let Err(e) = self.store.give_back(batch.token).await {
                    tracing::warn!(
                        token = batch.token,
                        "a batch written claimed stays claimed until its lease lapses: {e}"
                    );
                }
            }
        }
    }

    /// Waits for a page's write to end, then counts its rows, reports progress and hands its
    /// batches written claimed to the lanes (or, if they have stopped, back to the queue).
    /// `false`: the page was refused, and the fan-out stops here.
    async fn settle(
        &self,
        write: PageWrite,
        window: &Window,
        decision: &Decision,
        hand: &mut Option<&Hand>,
        totals: &mut Written,
        progress: ProgressSink<'_>,
    ) -> Result<bool, StoreError> {
        let (written, page) = match write.task.await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Err(StoreError::Closed),
        };
        let Some(written) = written? else {
            tracing::info!(window = window.id.0, revision = decision.revision, notice = %decision.notice, "fan-out stopped: the window changed, or its progress moved elsewhere");
            return Ok(false);
        };
        totals.enqueued += written.inserted;
        if totals.enqueued >= totals.analyze_at {
            self.store.analyze_growing_queue().await?;
            totals.analyze_at = totals.enqueued.saturating_mul(2);
        }
        progress(Progress::Planning {
            window: window.id.0,
            notice: decision.notice,
            enqueued: totals.enqueued,
            read_up_to: page.read_up_to.0,
        });
        // Once the page is told planned: its batches written claimed go to the lanes, or, if
        // they have stopped, back to the queue.
        for batch in written.claimed {
            match *hand {
                Some(h)
                    if h.hand(&self.store, Handed::new(page.claim(&batch), write.written_at))
                        .await => {}
                Some(_) => *hand = None,
                None => {
                    self.store.give_back(batch.token).await?;
                }
            }
        }
        Ok(true)
    }

    /// Reads the fan-out's next page of recipients and plans its deliveries, giving way to
    /// sending first when paced (see `give_way`); `None` once every recipient has been read.
    async fn plan_page(&self, pages: &mut Pages<'_>, clock: &Clock) -> Result<Option<PlannedPage>, StoreError> {
        let (window, decision) = (pages.window, pages.decision);
        if let Some(until) = pages.planned_until {
            // The latest slot planned so far, when paced at a rate: planning gives way to
            // sending while it is well ahead of the slots and sending is behind them, for no
            // longer in all than it has worked (a tick's planning takes at most twice as long
            // as on its own).
            let worked = pages.began.elapsed().saturating_sub(pages.waited);
            pages.waited += self.give_way(clock, until, worked.saturating_sub(pages.waited)).await;
        }
        let page = self
            .store
            .recipients_page(Some(decision.audience), pages.after, pages.size)
            .await?;
        let Some((first, last)) = page.range() else {
            pages.done = true;
            return Ok(None);
        };
        for (id, why) in &page.unreadable {
            tracing::warn!(window = window.id.0, recipient = id.0, notice = %decision.notice, "recipient skipped: {why}");
            pages.unreadable.insert(id.0, why.clone());
        }
        let told: HashSet<RecipientId> = match decision.reach {
            Reach::Eligible => HashSet::new(),
            Reach::AlreadyTold | Reach::NotYetTold => self.store.told_among(window.id, first, last).await?,
        };
        pages.after = last;
        // Room for a row per recipient (more if some have two channels): the vector is not
        // copied a dozen times over as it grows from empty.
        let mut rows: Vec<PlannedDelivery> = Vec::with_capacity(page.recipients.len());
        rows.extend(planner::fan_out(decision, window, &page.recipients, |id| {
            told.contains(&id)
        }));
        // A biller's webhook notice goes to each of its endpoints that wants it.
        let billers: Vec<RecipientId> = rows
            .iter()
            .filter(|r| r.channel == crate::domain::Channel::Webhook)
            .map(|r| r.recipient)
            .collect();
        let mut rows = if billers.is_empty() {
            rows
        } else {
            let endpoints = self.store.endpoint_routes(&billers).await?;
            crate::domain::per_endpoint(rows, &endpoints, &window.components)
        };
        if let Some(pacer) = pages.pacer.as_mut() {
            let zones: HashMap<RecipientId, Zone> = page.recipients.iter().map(|r| (r.id, r.profile.zone)).collect();
            for row in &mut rows {
                let zone = zones.get(&row.recipient).copied().unwrap_or_default();
                row.due_at = pacer.slot(row.channel, zone);
            }
            if pages.paced_at_a_rate {
                pages.planned_until = rows.iter().map(|r| r.due_at).max().max(pages.planned_until);
            }
        }
        Ok(Some(PlannedPage {
            rows,
            recipients: page.recipients,
            read_up_to: last,
        }))
    }
}

/// Where a fan-out's reading and planning stand, from one page to the next.
struct Pages<'a> {
    window: &'a Window,
    decision: &'a Decision,
    /// The last recipient read.
    after: RecipientId,
    size: i64,
    pacer: Option<Pacer>,
    paced_at_a_rate: bool,
    /// The latest slot planned so far, when paced at a rate.
    planned_until: Option<DateTime<Utc>>,
    began: tokio::time::Instant,
    /// How long planning has given way to sending so far.
    waited: Duration,
    unreadable: &'a mut BTreeMap<i64, String>,
    /// Every recipient has been read.
    done: bool,
}

/// A page being written on a task of its own (see `Scheduler::write_page`).
struct PageWrite {
    task: tokio::task::JoinHandle<(Result<Option<WrittenPage>, StoreError>, PlannedPage)>,
    /// When it began: no batch it writes claimed had its lease begin earlier.
    written_at: tokio::time::Instant,
}

/// A fan-out's rows written so far, and when the queue's statistics are next brought up to
/// date.
struct Written {
    enqueued: u64,
    analyze_at: u64,
}

/// A page of a fan-out, planned and not yet written.
struct PlannedPage {
    rows: Vec<PlannedDelivery>,
    /// The recipients read, in id order: what a batch written claimed is addressed with.
    recipients: Vec<Recipient>,
    /// The last recipient of the page: the fan-out's progress once it is written.
    read_up_to: RecipientId,
}

impl PlannedPage {
    /// A batch of this page written claimed, as a lane sends it: each row as planned, addressed
    /// as its recipient was read.
    fn claim(&self, batch: &ClaimedBatch) -> Claim {
        let rows: Vec<Claimed> = batch
            .rows
            .iter()
            .map(|&(id, at)| {
                let d = &self.rows[at];
                let recipient = self
                    .recipients
                    .binary_search_by_key(&d.recipient, |r| r.id)
                    .map(|i| &self.recipients[i].profile)
                    .map_err(|_| CorruptClaim {
                        id,
                        reason: format!("recipient {} is not on the page it was planned from", d.recipient.0),
                    })?;
                Ok(ClaimedDelivery {
                    id,
                    window: Some(d.window),
                    broadcast: None,
                    revision: d.revision,
                    notice: Some(d.notice),
                    channel: d.channel,
                    attempts: 1,
                    deadline: d.deadline,
                    recipient: d.recipient,
                    possibly_duplicate: false,
                    audience: recipient.kind,
                    phone: recipient.phone.clone(),
                    email: recipient.email.clone(),
                    locale: recipient.locale,
                    zone: recipient.zone,
                    endpoint: None,
                })
            })
            .collect();
        let oldest_due = batch.rows.iter().map(|&(_, at)| self.rows[at].due_at).min();
        Claim {
            token: batch.token,
            rows,
            oldest_due,
            last: None,
        }
    }
}

/// The last notice a finished window owes; once decided for every audience the window closes.
fn terminal_notice(w: &Window) -> Option<Notice> {
    match w.status {
        WindowStatus::Completed => Some(Notice::Completed),
        WindowStatus::Cancelled => Some(Notice::Cancelled),
        WindowStatus::Scheduled | WindowStatus::InProgress => None,
    }
}

/// The daemon: a tick every `every` on `clock` until `shutdown` is cancelled. A tick in flight
/// finishes its current batch; a failed tick (the database went away, say) is logged and tried
/// again at the next one. It takes part in the deployment's rates while it runs (see
/// [`taking_part`]); stopping, it gives up the lead and its row.
pub async fn run(scheduler: Scheduler, clock: Clock, every: Duration, shutdown: CancellationToken) {
    tracing::info!(
        tick_seconds = every.as_secs(),
        owner = scheduler.owner(),
        "daemon started"
    );
    let ticks = async {
        while !shutdown.is_cancelled() {
            let now = clock.now();
            match scheduler
                .tick_as(&clock, &shutdown, &|_| {}, Sending::AskingForTheLead)
                .await
            {
                Ok(r) => {
                    let d = &r.dispatch;
                    // A paced fan-out makes many short ticks that only send (each batch is
                    // logged already): those are debug lines.
                    let planned =
                        r.enqueued + r.superseded + r.expired + r.released.total() > 0 || !r.transitions.is_empty();
                    macro_rules! tick_line {
                        ($level:ident) => {
                            tracing::$level!(
                                at = %now.to_rfc3339(), led = r.led, enqueued = r.enqueued, superseded = r.superseded, expired = r.expired,
                                released = r.released.returned, released_expired = r.released.expired,
                                sent = d.sent, possibly_duplicate = d.possibly_duplicate, retrying = d.retried, failed = d.failed,
                                lost = d.lost, left_claimed = r.left_claimed,
                                plan_seconds = r.plan_seconds, dispatch_seconds = r.dispatch_seconds, "tick"
                            )
                        };
                    }
                    if planned {
                        tick_line!(info);
                    } else if d.claimed > 0 {
                        tick_line!(debug);
                    }
                }
                Err(e) => tracing::error!(error = %crate::domain::error_chain(&e), "tick failed"),
            }
            let pause = scheduler.pause_before_next_tick(&clock, every).await;
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    };
    taking_part(&scheduler.dispatcher, ticks).await;
    match scheduler.dispatcher.left_claimed().await {
        Ok(left_claimed) => tracing::info!(left_claimed, "daemon stopped"),
        Err(e) => tracing::info!(
            error = %crate::domain::error_chain(&e),
            "daemon stopped; cannot count the rows it left claimed"
        ),
    }
}

/// Runs `work` with `dispatcher` taking part in the deployment's rates: every third of the
/// lease it records that it is alive (with its totals) and paces its backends to its part of
/// each rate among the processes alive. When `work` ends it leaves: its row goes, and the
/// lead if it held it. The daemon, `run-once` and `broadcast` send this way.
pub async fn taking_part<T>(dispatcher: &Dispatcher, work: impl std::future::Future<Output = T>) -> T {
    let stop = CancellationToken::new();
    let work = async {
        let out = work.await;
        stop.cancel();
        out
    };
    let (out, ()) = tokio::join!(work, heartbeat(dispatcher, &stop));
    if let Err(e) = dispatcher.store().leave(dispatcher.owner()).await {
        tracing::warn!(error = %crate::domain::error_chain(&e), "cannot give up the lead and this process's row");
    }
    out
}

async fn heartbeat(dispatcher: &Dispatcher, stop: &CancellationToken) {
    let lease = dispatcher.config().lease.to_std();
    let every = (lease / 3).max(Duration::from_millis(200));
    let share = dispatcher.senders().share().clone();
    let mut last = (std::time::Instant::now(), 0u64);
    let mut live_before = 0;
    while !stop.is_cancelled() {
        let sent = dispatcher.sent_total();
        let seconds = last.0.elapsed().as_secs_f64();
        let rate = if seconds > 0.0 {
            (sent - last.1) as f64 / seconds
        } else {
            0.0
        };
        last = (std::time::Instant::now(), sent);
        match dispatcher.store().beat(dispatcher.owner(), lease, sent, rate).await {
            Ok(live) => {
                if live != live_before {
                    tracing::info!(
                        daemons = live,
                        "processes sending: each takes its part of every backend's rate"
                    );
                    live_before = live;
                }
                share.set(live);
            }
            Err(e) => {
                tracing::warn!(error = %crate::domain::error_chain(&e), "cannot record that this process is alive")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => {}
        }
    }
}
