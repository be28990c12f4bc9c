//! Dispatch: claim due deliveries, render each body once, hand batches to the channel's
//! senders, and record every outcome.
//!
//! Nothing is sent without a `deliveries` row claimed first. Bodies are rendered once per
//! (window, revision, notice, channel, locale, zone) and stored once in `bodies`. Failures are
//! classified by the backend; this module only asks the classification and applies the retry
//! schedule. Depends on `storage`, `render`, `channels` and `domain`.

pub mod handoff;
pub mod retry;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use crate::channels::{Address, Message, Receipt, SendError, Senders, send_on_time};
use crate::clock::Clock;
use crate::domain::{
    Audience, Channel, ComponentId, ComponentNames, Locale, Notice, Rendered, Span, Window, WindowId, Zone,
    broadcast_key, error_chain, fingerprint, idempotency_key,
};
use crate::render::{NoticeFacts, RenderError, Renderer, lead_time};
use crate::storage::{Attempt, Broadcast, Claim, ClaimedDelivery, Finish, Position, Store, StoreError};
use retry::{AfterFailure, Retry, after_failure};

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DispatchReport {
    pub claimed: u64,
    pub sent: u64,
    pub retried: u64,
    pub failed: u64,
    pub expired: u64,
    /// Claimed, but the window moved on before they went out.
    pub superseded: u64,
    /// Sent again although an earlier attempt may have gone out (its worker died).
    pub possibly_duplicate: u64,
    /// Outcomes not recorded because the lease was lost (another worker took the rows over).
    pub lost: u64,
    /// Of the rows claimed, those written claimed for these lanes by the planner or a
    /// broadcast's recording and handed over (`handoff`), rather than claimed from the queue.
    pub handed: u64,
}

impl DispatchReport {
    fn add(&mut self, other: DispatchReport) {
        self.claimed += other.claimed;
        self.sent += other.sent;
        self.retried += other.retried;
        self.failed += other.failed;
        self.expired += other.expired;
        self.superseded += other.superseded;
        self.possibly_duplicate += other.possibly_duplicate;
        self.lost += other.lost;
        self.handed += other.handed;
    }
}

/// How the dispatcher works the queue: batch size, the retry schedule, the claim lease (real
/// time, renewed until a batch's outcomes are recorded), and the daemon's tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchConfig {
    pub batch_size: usize,
    /// Batches claimed and sent at once by one dispatcher.
    pub batches_in_flight: usize,
    pub retry: Vec<Span>,
    pub lease: Span,
    pub tick: Span,
}

/// How soon a lane looks again for due rows while a fan-out is still being enqueued.
const LOOK_AGAIN: std::time::Duration = std::time::Duration::from_millis(25);

/// While the planner hands a lane batches written claimed, how often it claims from the queue
/// all the same: rows of other notices, and retries, are not held up by a long fan-out.
const CLAIM_BESIDE_HANDED_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// How often the lanes look at the whole queue rather than past their last claim (see
/// [`Cursor`]), while such a look is quick.
const LOOK_FROM_THE_FRONT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A look from the front that took this long is not made again for `LOOK_FROM_THE_FRONT_SHARE`
/// times as long, so that such looks take at most a twentieth of a lane's time...
const LOOK_FROM_THE_FRONT_SHARE: u32 = 20;

/// ...but the lanes look from the front at least this often, however long a look takes.
const LOOK_FROM_THE_FRONT_AT_LEAST_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// How long what a claim found about lateness still says how sending runs.
const BEHIND_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// An endpoint failing for this long without a success is disabled.
pub const ENDPOINT_FAILING_LIMIT: Span = Span::hours(5 * 24);

pub struct Dispatcher {
    store: Store,
    renderer: Arc<Renderer>,
    senders: Senders,
    config: DispatchConfig,
    components: BTreeMap<ComponentId, ComponentNames>,
    owner: String,
    /// Deliveries this dispatcher recorded sent since it was made.
    sent: Arc<std::sync::atomic::AtomicU64>,
    /// When its latest claim that found rows was made (real time), and how far behind their
    /// slots they were.
    latest_claim: Arc<std::sync::Mutex<Option<(tokio::time::Instant, std::time::Duration)>>>,
    /// Where its lanes claim from next.
    cursor: Arc<std::sync::Mutex<Cursor>>,
    /// When its lanes last settled lapsed claims (real time).
    settled_at: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

/// Where a dispatcher's lanes claim from: past the last row they claimed, so that a claim does
/// not walk every row already sent (on PostgreSQL their index entries stay until a vacuum, and a
/// claim from the front of a 10-million-row fan-out read tens of thousands of index pages).
///
/// A row can come back behind that place: a lapsed claim released (the lanes settle lapsed
/// claims before a look from the front, every half lease), a window resumed, a row planned with
/// an earlier slot than one already claimed (a channel not paced beside one that is), a page
/// committed after a later one. So the lanes look from the front of the queue whenever the
/// scope changes, always before a run concludes that nothing is due, and otherwise every
/// [`LOOK_FROM_THE_FRONT_EVERY`] — or, once such a look is slow, every
/// [`LOOK_FROM_THE_FRONT_SHARE`] times as long as the last one took, up to
/// [`LOOK_FROM_THE_FRONT_AT_LEAST_EVERY`]. On PostgreSQL a look from the front walks the index
/// entries of every row sent since the last vacuum: 650 ms at the end of a 10-million-row run.
/// Made once a second, such looks took a third of two lanes' time.
///
/// A look from the front moves the cursor back to where it found rows; a claim that began
/// before it cannot move the cursor on past them.
#[derive(Debug)]
struct Cursor {
    /// The broadcast the position was found in (`None`: all rows).
    scope: Option<i64>,
    at: Position,
    /// Bumped by every look from the front.
    epoch: u64,
    /// When the last look from the front began; `None`: never.
    looked_from_the_front: Option<tokio::time::Instant>,
    /// How long the last look from the front took.
    front_took: std::time::Duration,
}

impl Default for Cursor {
    fn default() -> Cursor {
        Cursor {
            scope: None,
            at: Position::FRONT,
            epoch: 0,
            looked_from_the_front: None,
            front_took: std::time::Duration::ZERO,
        }
    }
}

/// One claim's start: where, and under which epoch of the cursor.
#[derive(Debug, Clone, Copy)]
struct ClaimFrom {
    after: Position,
    epoch: u64,
}

impl ClaimFrom {
    fn looks_from_the_front(self) -> bool {
        self.after == Position::FRONT
    }
}

impl Cursor {
    /// Where the next claim in `scope` starts: from the front when `front` asks for it, when
    /// the scope changed, or when the last look from the front is old.
    fn start(&mut self, scope: Option<i64>, front: bool) -> ClaimFrom {
        let every = (self.front_took * LOOK_FROM_THE_FRONT_SHARE)
            .clamp(LOOK_FROM_THE_FRONT_EVERY, LOOK_FROM_THE_FRONT_AT_LEAST_EVERY);
        let stale = self.looked_from_the_front.is_none_or(|at| at.elapsed() >= every);
        if front || stale || scope != self.scope {
            self.scope = scope;
            self.looked_from_the_front = Some(tokio::time::Instant::now());
            self.epoch += 1;
            return ClaimFrom {
                after: Position::FRONT,
                epoch: self.epoch,
            };
        }
        ClaimFrom {
            after: self.at,
            epoch: self.epoch,
        }
    }

    /// What a claim that started `from` found, the position of its last row, and how long it
    /// took.
    fn claimed(&mut self, from: ClaimFrom, last: Option<Position>, took: std::time::Duration) {
        if from.epoch != self.epoch {
            return;
        }
        if from.looks_from_the_front() {
            self.front_took = took;
        }
        let Some(last) = last else { return };
        self.at = if from.looks_from_the_front() {
            last
        } else {
            self.at.max(last)
        };
    }
}

/// Told the running totals after every batch; called from the dispatching task.
pub type ReportSink<'a> = &'a (dyn Fn(&DispatchReport) + Send + Sync);

/// A rendered body and its row in `bodies`.
struct Body {
    id: i64,
    content: Arc<Rendered>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        renderer: Arc<Renderer>,
        senders: Senders,
        config: DispatchConfig,
        components: BTreeMap<ComponentId, ComponentNames>,
        owner: String,
    ) -> Dispatcher {
        Dispatcher {
            store,
            renderer,
            senders,
            config,
            components,
            owner,
            sent: Arc::default(),
            latest_claim: Arc::default(),
            settled_at: Arc::default(),
            cursor: Arc::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The name on this dispatcher's claims.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn config(&self) -> &DispatchConfig {
        &self.config
    }

    pub fn senders(&self) -> &Senders {
        &self.senders
    }

    /// Deliveries this dispatcher recorded sent since it was made.
    pub fn sent_total(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How far behind its slots sending runs: from the earliest slot among the rows of the
    /// latest claim that found any to the moment they were claimed. `None` when no claim found
    /// rows in the last second: nothing is due, or sending is not running or waits on a
    /// backend, and it cannot say. (A lane that finds nothing does not erase what another,
    /// busy one found.)
    pub fn behind(&self) -> Option<std::time::Duration> {
        let latest = *self
            .latest_claim
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        latest
            .filter(|(at, _)| at.elapsed() < BEHIND_FRESH_FOR)
            .map(|(_, behind)| behind)
    }

    /// Works the queue until nothing is due or `stop` is cancelled (checked between batches: a
    /// batch in flight finishes). `clock` is read for every batch: what is due, and what is
    /// past its deadline, is judged when the batch is claimed.
    pub async fn run_due(&self, clock: &Clock, stop: &CancellationToken) -> Result<DispatchReport, DispatchError> {
        self.run_scoped(clock, None, stop, &|_| {}).await
    }

    /// `run_due` limited to one broadcast's deliveries (`None`: all), reporting the running
    /// totals after every batch.
    pub async fn run_scoped(
        &self,
        clock: &Clock,
        broadcast: Option<i64>,
        stop: &CancellationToken,
        progress: ReportSink<'_>,
    ) -> Result<DispatchReport, DispatchError> {
        self.run_lanes(clock, broadcast, None, None, stop, progress).await
    }

    /// `run_scoped` while rows are still being enqueued: until `enqueued` is cancelled, a lane
    /// that finds nothing due looks again shortly (rows committed meanwhile, slots come due)
    /// rather than stopping; after it, it stops when nothing is due, as `run_scoped` does. So
    /// the first pages of a large fan-out go out while the rest is planned.
    pub async fn run_alongside(
        &self,
        clock: &Clock,
        broadcast: Option<i64>,
        enqueued: &CancellationToken,
        stop: &CancellationToken,
        progress: ReportSink<'_>,
    ) -> Result<DispatchReport, DispatchError> {
        self.run_lanes(clock, broadcast, Some(enqueued), None, stop, progress)
            .await
    }

    /// `run_alongside`, the lanes also taking the batches the planner writes claimed for them
    /// (see [`handoff`]): first, but claiming from the queue at least every
    /// [`CLAIM_BESIDE_HANDED_EVERY`] all the same. The planner hands its last batch before it
    /// cancels `enqueued`.
    pub async fn run_handed(
        &self,
        clock: &Clock,
        broadcast: Option<i64>,
        handed: &handoff::Handoff,
        enqueued: &CancellationToken,
        stop: &CancellationToken,
        progress: ReportSink<'_>,
    ) -> Result<DispatchReport, DispatchError> {
        let report = self
            .run_lanes(clock, broadcast, Some(enqueued), Some(handed), stop, progress)
            .await;
        // Stopped, or failed: what no lane took goes back to the queue.
        handed.close(&self.store).await;
        report
    }

    async fn run_lanes(
        &self,
        clock: &Clock,
        broadcast: Option<i64>,
        enqueued: Option<&CancellationToken>,
        handed: Option<&handoff::Handoff>,
        stop: &CancellationToken,
        progress: ReportSink<'_>,
    ) -> Result<DispatchReport, DispatchError> {
        let report = std::sync::Mutex::new(DispatchReport::default());
        // Several lanes, each claiming and sending its own batches: while one waits for a
        // backend's answer, the others go on. Each stops when nothing is due.
        let lanes = (0..self.config.batches_in_flight.max(1))
            .map(|_| self.lane(clock, broadcast, enqueued, handed, stop, progress, &report));
        for result in futures_util::future::join_all(lanes).await {
            result?;
        }
        Ok(report.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// One lane of `run_lanes`: claims and dispatches batches until nothing is due (and, given
    /// `enqueued`, until that is cancelled), taking `handed` batches first when given.
    #[allow(clippy::too_many_arguments)]
    async fn lane(
        &self,
        clock: &Clock,
        broadcast: Option<i64>,
        enqueued: Option<&CancellationToken>,
        handed: Option<&handoff::Handoff>,
        stop: &CancellationToken,
        progress: ReportSink<'_>,
        report: &std::sync::Mutex<DispatchReport>,
    ) -> Result<(), DispatchError> {
        let mut cache = Cache::default();
        let lease = self.config.lease.to_std();
        let batch_size = i64::try_from(self.config.batch_size).unwrap_or(i64::MAX);
        let mut front = false;
        // When this lane last claimed from the queue (real time).
        let mut claimed_at: Option<tokio::time::Instant> = None;
        // A handed batch that arrived while the lane waited.
        let mut arrived: Option<handoff::Handed> = None;
        while !stop.is_cancelled() {
            // Read before the claim: once enqueueing has ended, an empty claim has seen it all
            // (the planner hands its last batch before enqueueing ends).
            let last_look = enqueued.is_none_or(CancellationToken::is_cancelled);
            let now = clock.now();
            let queue_turn = claimed_at.is_none_or(|at| at.elapsed() >= CLAIM_BESIDE_HANDED_EVERY);
            let waiting = match (arrived.take(), handed) {
                (Some(batch), _) => Some(batch),
                (None, Some(handed)) if !queue_turn => handed.take().await,
                _ => None,
            };
            let handed_over = waiting.is_some();
            // The claim, and when its lease was last set (at the latest): its renewals count
            // from then, not from when it reached the lane.
            let (claim, leased) = match waiting {
                Some(batch) => match handoff::ready(&self.store, batch, lease).await {
                    Some(ready) => ready,
                    None => continue,
                },
                None => {
                    claimed_at = Some(tokio::time::Instant::now());
                    let from = self.cursor().start(broadcast, std::mem::take(&mut front));
                    if from.looks_from_the_front() && self.time_to_settle() {
                        // The claims of a worker that died or stalled go back to the queue,
                        // behind the cursor: a long run would otherwise leave them claimed
                        // until it ends and the next tick settles them.
                        self.settle_lapsed(now).await?;
                    }
                    let started = tokio::time::Instant::now();
                    let claim = self
                        .store
                        .claim_due(now, batch_size, &self.owner, lease, broadcast, from.after)
                        .await?;
                    self.cursor().claimed(from, claim.last, started.elapsed());
                    if claim.rows.is_empty() {
                        if let Some(handed) = handed
                            && let Some(batch) = handed.take().await
                        {
                            arrived = Some(batch);
                            continue;
                        }
                        // Rows may wait behind the cursor: only the whole queue says nothing is
                        // due.
                        if last_look && !from.looks_from_the_front() {
                            front = true;
                            continue;
                        }
                        match enqueued {
                            Some(enqueued) if !last_look => {
                                let next_handed = async {
                                    match handed {
                                        Some(handed) => handed.next().await,
                                        None => std::future::pending().await,
                                    }
                                };
                                tokio::select! {
                                    () = enqueued.cancelled() => {}
                                    () = stop.cancelled() => {}
                                    () = tokio::time::sleep(LOOK_AGAIN) => {}
                                    batch = next_handed => arrived = Some(batch),
                                }
                                continue;
                            }
                            _ => break,
                        }
                    }
                    (claim, started)
                }
            };
            if let Some(due) = claim.oldest_due {
                let behind = (now - due).to_std().unwrap_or_default();
                *self
                    .latest_claim
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((tokio::time::Instant::now(), behind));
            }
            let mut r = self.dispatch_batch(claim, leased, clock, &mut cache).await?;
            if handed_over {
                r.handed = r.claimed;
            }
            self.sent.fetch_add(r.sent, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                claimed = r.claimed,
                sent = r.sent,
                retried = r.retried,
                failed = r.failed,
                expired = r.expired,
                superseded = r.superseded,
                possibly_duplicate = r.possibly_duplicate,
                lost = r.lost,
                handed = handed_over,
                "batch dispatched"
            );
            let total = {
                let mut total = report.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                total.add(r);
                *total
            };
            progress(&total);
        }
        // A batch that arrived as the lane stopped goes back to the queue with the rest (see
        // `run_handed`).
        if let Some(batch) = arrived {
            handoff::give_back(&self.store, batch).await;
        }
        Ok(())
    }

    /// Whether half a lease (at least a second) has passed since the lanes last settled lapsed
    /// claims; if so, the clock starts again. Another worker's claim lapses a lease after its
    /// last renewal, so it is settled within a lease and a half. Not at every look from the
    /// front: settling is four statements each time, whether or not any claim lapsed.
    fn time_to_settle(&self) -> bool {
        let every = (self.config.lease.to_std() / 2).max(std::time::Duration::from_secs(1));
        let mut at = self
            .settled_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if at.is_some_and(|at| at.elapsed() < every) {
            return false;
        }
        *at = Some(tokio::time::Instant::now());
        true
    }

    /// Settles the claims whose lease has lapsed (see `Store::release_lapsed_claims`).
    async fn settle_lapsed(&self, now: DateTime<Utc>) -> Result<(), DispatchError> {
        let released = self.store.release_lapsed_claims(now).await?;
        if released.total() > 0 {
            tracing::warn!(
                returned = released.returned,
                expired = released.expired,
                superseded = released.superseded,
                "claims whose lease lapsed were settled: their worker died or stalled"
            );
        }
        Ok(())
    }

    fn cursor(&self) -> std::sync::MutexGuard<'_, Cursor> {
        self.cursor.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many rows this dispatcher holds claimed (after a run: none, unless it was stopped
    /// while the database was unreachable).
    pub async fn left_claimed(&self) -> Result<u64, DispatchError> {
        Ok(self.store.claimed_by(&self.owner).await?)
    }

    /// Prepares, sends and records one claimed batch, renewing its lease every third of it
    /// from `leased` (when the lease was last set, at the latest) until its outcomes are
    /// recorded: rendering a large batch, waiting for the rate and waiting for the turn to write
    /// may each take a while. The first renewal counts from `leased`, not from now: a claim
    /// whose write or read-back was slow (a loaded database) has used some of its lease already.
    async fn dispatch_batch(
        &self,
        claim: Claim,
        leased: tokio::time::Instant,
        clock: &Clock,
        cache: &mut Cache,
    ) -> Result<DispatchReport, DispatchError> {
        let token = claim.token;
        let lease = self.config.lease.to_std();
        let done = CancellationToken::new();
        let work = async {
            let report = self.work_batch(claim, clock, cache).await;
            done.cancel();
            report
        };
        // Each renewal runs to its end, beside the work rather than in its way: the work may
        // hold the database's write lock meanwhile.
        let renewing = async {
            let every = (lease / 3).max(std::time::Duration::from_millis(50));
            let mut renew = tokio::time::interval_at(leased + every, every);
            // A renewal that came late (at once, for a slow claim) sets the pace from then on.
            renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = done.cancelled() => break,
                    _ = renew.tick() => {}
                }
                if let Err(e) = self.store.renew(token, lease).await {
                    tracing::warn!(error = %error_chain(&e), token, "cannot renew the lease of a batch in flight");
                }
            }
        };
        tokio::join!(work, renewing).0
    }

    async fn work_batch(
        &self,
        claim: Claim,
        clock: &Clock,
        cache: &mut Cache,
    ) -> Result<DispatchReport, DispatchError> {
        let Claim {
            token, rows: claimed, ..
        } = claim;
        let now = clock.now();
        let mut report = DispatchReport {
            claimed: claimed.len() as u64,
            ..DispatchReport::default()
        };
        // Windows are read afresh for every batch: a change committed since the last one
        // supersedes what it claimed of the old revision.
        cache.windows.clear();
        let mut finishes = Vec::with_capacity(claimed.len());
        // (claimed row, message, body id), grouped by channel below.
        let mut ready: Vec<(ClaimedDelivery, Message, i64)> = Vec::with_capacity(claimed.len());
        let real_now = tokio::time::Instant::now();
        for row in claimed {
            let row = match row {
                Ok(row) => row,
                Err(corrupt) => {
                    report.failed += 1;
                    finishes.push(Finish::Failed {
                        id: corrupt.id,
                        error: corrupt.reason,
                    });
                    continue;
                }
            };
            match self.prepare(&row, now, cache).await {
                Ok((mut message, body_id)) => {
                    // The deadline, on the real clock: a slow backend or a long wait for the
                    // rate cannot carry the message past it.
                    message.not_after = Some(real_now + (row.deadline - now).to_std().unwrap_or_default());
                    ready.push((row, message, body_id))
                }
                Err(Prepare::Store(e)) => return Err(e.into()),
                Err(Prepare::Fail(error)) => {
                    report.failed += 1;
                    finishes.push(Finish::Failed { id: row.id, error });
                }
                Err(Prepare::Superseded(error)) => {
                    report.superseded += 1;
                    finishes.push(Finish::Superseded { id: row.id, error });
                }
            }
        }
        self.store
            .record_biller_events(&std::mem::take(&mut cache.events), now)
            .await?;
        let mut attempts = Vec::new();
        self.send_ready(ready, clock, &mut report, &mut finishes, &mut attempts)
            .await;
        let lost = self.store.finish_with_attempts(token, &finishes, &attempts).await?;
        if !lost.is_empty() {
            tracing::warn!(
                token,
                rows = lost.len(),
                "outcomes not recorded: the lease was lost and another worker holds these rows"
            );
        }
        report.lost = lost.len() as u64;
        Ok(report)
    }

    /// Sends the prepared messages channel by channel and notes each outcome.
    async fn send_ready(
        &self,
        ready: Vec<(ClaimedDelivery, Message, i64)>,
        clock: &Clock,
        report: &mut DispatchReport,
        finishes: &mut Vec<Finish>,
        attempts: &mut Vec<Attempt>,
    ) {
        // Grouped by channel, moved rather than copied: a message carries its whole body. Each
        // group is made with room for its messages, not grown from empty.
        let mut groups: Vec<ChannelGroup> = Channel::ALL
            .into_iter()
            .map(|c| {
                let n = ready.iter().filter(|(_, m, _)| m.channel == c).count();
                (c, Vec::with_capacity(n), Vec::with_capacity(n))
            })
            .collect();
        for (row, message, body_id) in ready {
            if let Some((_, rows, messages)) = groups.iter_mut().find(|(c, _, _)| *c == message.channel) {
                rows.push((row, body_id));
                messages.push(message);
            }
        }
        let sends = groups.into_iter().filter(|(_, _, messages)| !messages.is_empty()).map(
            |(channel, rows, messages)| async move {
                let messages = Arc::new(messages);
                let results = self.send_with_failover(channel, &messages).await;
                (channel, rows, messages, results)
            },
        );
        // Endpoints that took a message: any failure streak of theirs ends.
        let mut answered: Vec<i64> = Vec::new();
        // Backends that paused themselves, by window they held up: raised as alarms below.
        let mut paused: std::collections::BTreeSet<(WindowId, String)> = std::collections::BTreeSet::new();
        // The channels are worked at once: a slow SMS gateway does not hold up the email.
        for (channel, rows, messages, results) in futures_util::future::join_all(sends).await {
            // Read once the backends have answered: when they accepted, and what a retry waits from.
            let now = clock.now();
            // The real instant `now` was read at: messages handed over together get one time.
            let real_now = tokio::time::Instant::now();
            // The clock's time at an earlier real instant.
            let at = |instant: tokio::time::Instant| {
                TimeDelta::from_std(real_now.saturating_duration_since(instant)).map_or(now, |ago| now - ago)
            };
            for (((row, body_id), outcome), message) in rows.into_iter().zip(results).zip(messages.iter()) {
                let row = &row;
                let backend = outcome.backend;
                // Every try goes to the attempts log but a success, which the row keeps.
                let mut latency = std::time::Duration::ZERO;
                for t in &outcome.tries {
                    match &t.result {
                        Ok(_) => latency = t.latency,
                        // When its backend answered: before a later backend's success.
                        Err(err) => attempts.push(attempt(row.id, &message.to, t, err, at(t.answered))),
                    }
                    if let (Err(SendError::Paused { message: why, .. }), Some(window)) = (&t.result, row.window) {
                        paused.insert((window, format!("sender {} is paused: {why}", t.backend)));
                    }
                }
                if let Some(endpoint) = &row.endpoint {
                    if outcome.result.is_ok() {
                        // Streaks ended by a success are closed together, below.
                        answered.push(endpoint.id);
                    }
                    // The streak is bookkeeping: failing to keep it does not hold up the sends.
                    else if let Err(e) = self.endpoint_outcome(row, endpoint, &outcome.result, now).await {
                        tracing::warn!(endpoint = endpoint.id, error = %e, "could not record the endpoint's outcome");
                    }
                }
                match outcome.result {
                    Ok(receipt) => {
                        report.sent += 1;
                        if row.possibly_duplicate {
                            report.possibly_duplicate += 1;
                        }
                        finishes.push(Finish::Sent {
                            id: row.id,
                            // When it was handed over, not when the batch's last one was.
                            at: receipt.handed_at.map_or(now, at),
                            backend: backend.to_owned(),
                            provider_id: receipt.provider_id,
                            body_id: Some(body_id),
                            latency,
                        });
                    }
                    Err(err) => {
                        let shown = masked(&message.to, err.to_string());
                        let route = self.senders.route(channel).get(outcome.route);
                        let policy = route.map(|r| &r.retry);
                        let retry = Retry {
                            schedule: policy.and_then(|p| p.schedule.as_deref()).unwrap_or(&self.config.retry),
                            jitter: policy.map_or(0.0, |p| p.jitter),
                            retry_after_max: policy.and_then(|p| p.retry_after_max),
                        };
                        match after_failure(&err, row.attempts, &retry, spread(row), now, row.deadline) {
                            AfterFailure::RetryAt(at) => {
                                report.retried += 1;
                                tracing::warn!(delivery = row.id, %channel, backend, error = %shown, retry_at = %at, "transient send failure");
                                finishes.push(Finish::Retry {
                                    id: row.id,
                                    at,
                                    error: format!("{backend}: {shown}"),
                                    maybe_sent: err.may_have_been_sent(),
                                });
                            }
                            AfterFailure::Fail(error) => {
                                let error = masked(&message.to, error);
                                report.failed += 1;
                                tracing::warn!(delivery = row.id, %channel, backend, error, "delivery failed");
                                finishes.push(Finish::Failed {
                                    id: row.id,
                                    error: format!("{backend}: {error}"),
                                });
                            }
                            AfterFailure::Expire(error) => {
                                let error = masked(&message.to, error);
                                report.expired += 1;
                                finishes.push(Finish::Expired {
                                    id: row.id,
                                    error: format!("{backend}: {error}"),
                                });
                            }
                        }
                    }
                }
            }
        }
        if let Err(e) = self.store.endpoints_answered(&answered).await {
            tracing::warn!(endpoints = answered.len(), error = %e, "could not record the endpoints' outcomes");
        }
        for (window, why) in paused {
            if let Err(e) = self.alarm(window, &why, clock.now()).await {
                tracing::warn!(window = window.0, error = %e, "could not record the alarm");
            }
        }
    }

    /// Raises `why` on `window` (once for its revision): `deliveries summary` shows it.
    async fn alarm(&self, window: WindowId, why: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let w = self.store.window(window).await?;
        if self.store.raise_alarm_once(&w, "sender paused", why, now).await? {
            tracing::error!(window = window.0, "ALARM: {why}");
        }
        Ok(())
    }

    /// Keeps an endpoint's failure streak: a 410 disables it at once, and so does failing for
    /// longer than [`ENDPOINT_FAILING_LIMIT`] without a success; a success ends the streak.
    async fn endpoint_outcome(
        &self,
        row: &ClaimedDelivery,
        target: &crate::storage::Endpoint,
        result: &Result<Receipt, SendError>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let endpoint = target.id;
        let reason = match result {
            Err(SendError::Gone { .. }) => Some("the receiver answered 410 Gone".to_owned()),
            Err(SendError::TooLate) => None,
            other => {
                let since = self.store.endpoint_outcome(endpoint, other.is_ok(), now).await?;
                since
                    .filter(|s| now - *s >= ENDPOINT_FAILING_LIMIT.delta())
                    .map(|s| format!("failing since {}", s.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
            }
        };
        if let Some(reason) = reason {
            tracing::warn!(
                endpoint,
                reason,
                "webhook endpoint disabled: re-enable it with `tangazo webhooks enable`"
            );
            self.store.set_endpoint_disabled(endpoint, Some(&reason)).await?;
            if row.email.is_some() {
                self.tell_biller(row.recipient, target, &reason, now).await?;
            }
        }
        Ok(())
    }

    /// Emails the biller that its endpoint was disabled, as a one-recipient broadcast: it goes
    /// through the email channel like any message, and is recorded like one.
    async fn tell_biller(
        &self,
        biller: crate::domain::RecipientId,
        target: &crate::storage::Endpoint,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        use crate::domain::{Audience, AudienceFilter, MessageText};
        let text = |en: bool| {
            if en {
                format!(
                    "Your webhook endpoint {} (endpoint {}) no longer receives outage events: {reason}.\n\n\
                     Fix the receiver, then ask the {} operators to enable it again.",
                    target.url,
                    target.id,
                    self.renderer.service()
                )
            } else {
                format!(
                    "Anwani yenu ya webhook {} (namba {}) haipokei tena taarifa za matengenezo: {reason}.\n\n\
                     Rekebisheni kipokezi, kisha waombeni waendeshaji wa {} waiwashe tena.",
                    target.url,
                    target.id,
                    self.renderer.service()
                )
            }
        };
        let message = crate::domain::Message::new(
            MessageText {
                text: text(true),
                subject: Some(format!(
                    "{}: your webhook endpoint is disabled",
                    self.renderer.service()
                )),
            },
            Some(MessageText {
                text: text(false),
                subject: Some(format!("{}: anwani yenu ya webhook imezimwa", self.renderer.service())),
            }),
        );
        let Ok(message) = message else {
            return Ok(());
        };
        let b = self
            .store
            .create_broadcast(
                &crate::storage::NewBroadcast {
                    name: format!("webhook-endpoint-{}-disabled-{}", target.id, now.timestamp_millis()),
                    window: None,
                    revision: None,
                    notice: None,
                    message: Some(message),
                    filter: AudienceFilter {
                        audiences: vec![Audience::Biller],
                        channels: vec![Channel::Email],
                        ..AudienceFilter::default()
                    },
                    deadline: now + chrono::TimeDelta::days(2),
                },
                now,
                "tangazo",
            )
            .await?;
        self.store
            .enqueue_broadcast(&b, &[(biller, Channel::Email, None)], now)
            .await?;
        tracing::info!(
            endpoint = target.id,
            biller = biller.0,
            "the biller is told by email that its endpoint is disabled"
        );
        Ok(())
    }

    /// Tries the channel's senders in order: what one backend failed transiently goes to the
    /// next; a permanent failure or a success is final. Returns, per message, the backend that
    /// had the last word and its result.
    async fn send_with_failover(&self, channel: Channel, messages: &Arc<Vec<Message>>) -> Vec<SendOutcome<'_>> {
        let route = self.senders.route(channel);
        let mut results: Vec<SendOutcome> = messages
            .iter()
            .map(|_| SendOutcome {
                backend: "none",
                route: usize::MAX,
                result: Err(SendError::Permanent {
                    message: format!("no sender configured for {channel}"),
                }),
                tries: Vec::new(),
            })
            .collect();
        let mut pending: Vec<usize> = (0..messages.len()).collect();
        for (index, backend) in route.iter().enumerate() {
            if pending.is_empty() {
                break;
            }
            let sender = &backend.sender;
            // The first backend gets the messages as they are; a later one what is left.
            let batch = if pending.len() == messages.len() {
                Arc::clone(messages)
            } else {
                Arc::new(pending.iter().map(|&i| messages[i].clone()).collect())
            };
            let started = tokio::time::Instant::now();
            let outcome = send_on_a_worker(sender, batch).await;
            let answered = tokio::time::Instant::now();
            let latency = answered.saturating_duration_since(started);
            let mut still = Vec::new();
            for (k, &i) in pending.iter().enumerate() {
                let r = outcome.get(k).cloned().unwrap_or_else(|| {
                    Err(SendError::Transient {
                        message: format!("{} returned no result", sender.name()),
                        retry_after: None,
                    })
                });
                if matches!(&r, Err(e) if e.fails_over()) {
                    still.push(i);
                }
                let mut tries = std::mem::take(&mut results[i].tries);
                tries.push(Try {
                    backend: sender.name(),
                    result: r.clone(),
                    latency,
                    answered,
                });
                results[i] = SendOutcome {
                    backend: sender.name(),
                    route: index,
                    result: r,
                    tries,
                };
            }
            pending = still;
        }
        results
    }

    async fn prepare(
        &self,
        row: &ClaimedDelivery,
        now: DateTime<Utc>,
        cache: &mut Cache,
    ) -> Result<(Message, i64), Prepare> {
        let corrupt = |what: &str| Prepare::Fail(format!("stored delivery has an invalid {what}"));
        let (channel, locale, zone, revision, recipient) =
            (row.channel, row.locale, row.zone, row.revision, row.recipient);
        // Every email carries its recipient's one-click unsubscribe token (RFC 8058).
        let unsubscribe = match channel {
            Channel::Email => {
                if cache.signing.is_none() {
                    cache.signing = Some(self.store.signing_key().await.map_err(Prepare::Store)?);
                }
                cache.signing.as_ref().map(|k| k.unsubscribe_token(recipient))
            }
            Channel::Sms | Channel::Webhook => None,
        };
        let to = match channel {
            Channel::Sms => Address::Phone(
                row.phone
                    .clone()
                    .ok_or_else(|| Prepare::Fail("recipient has no phone number".into()))?,
            ),
            Channel::Email => Address::Email(
                row.email
                    .clone()
                    .ok_or_else(|| Prepare::Fail("recipient has no email address".into()))?,
            ),
            Channel::Webhook => Address::Endpoint {
                biller: recipient,
                endpoint: match &row.endpoint {
                    Some(e) if e.disabled.is_some() => {
                        return Err(Prepare::Fail(format!(
                            "webhook endpoint {} is disabled ({})",
                            e.id,
                            e.disabled.as_deref().unwrap_or_default()
                        )));
                    }
                    Some(e) => Some(crate::channels::Endpoint {
                        id: e.id,
                        url: e.url.clone(),
                        secrets: e.secrets.clone(),
                    }),
                    None => None,
                },
            },
        };
        let broadcast = match row.broadcast {
            Some(id) => Some(match cache.broadcasts.entry(id) {
                Entry::Occupied(e) => Arc::clone(e.get()),
                Entry::Vacant(e) => {
                    Arc::clone(e.insert(Arc::new(self.store.broadcast(id).await.map_err(Prepare::Store)?)))
                }
            }),
            None => None,
        };
        // A free message has no window; everything else renders a window's notice.
        if let Some(b) = broadcast.as_ref().filter(|b| b.window.is_none()) {
            let text = b.message.as_ref().ok_or_else(|| corrupt("broadcast"))?;
            let key = BodyKey::Message {
                broadcast: b.id,
                channel,
                locale,
            };
            let body = self
                .body(cache, key, || {
                    self.renderer.render_message(text, &b.name, channel, locale)
                })
                .await?;
            let message = Message {
                idempotency_key: broadcast_key(b.id, recipient, channel, row.endpoint.as_ref().map(|e| e.id)),
                channel,
                to,
                kind: "message".to_owned(),
                notice: "message".to_owned(),
                window_id: None,
                broadcast: Some(b.name.clone()),
                revision,
                locale,
                attempt: row.attempts,
                possibly_duplicate: row.possibly_duplicate,
                not_after: None,
                unsubscribe,
                content: Arc::clone(&body.content),
            };
            let body_id = body.id;
            Self::record_event(cache, &message, recipient, || {
                broadcast_key(b.id, recipient, channel, None)
            });
            return Ok((message, body_id));
        }
        let notice = row.notice.ok_or_else(|| corrupt("notice"))?;
        let window_id = row.window.ok_or_else(|| corrupt("window"))?;
        let window = match cache.windows.entry(window_id) {
            Entry::Occupied(e) => Arc::clone(e.get()),
            Entry::Vacant(e) => {
                Arc::clone(e.insert(Arc::new(self.store.window(window_id).await.map_err(Prepare::Store)?)))
            }
        };
        if window.revision > revision {
            // The window moved on after this row was claimed and before it went out.
            return Err(Prepare::Superseded(format!(
                "superseded by revision {} before it was sent",
                window.revision
            )));
        }
        if window.revision < revision {
            return Err(Prepare::Fail(format!(
                "window {window_id} is at revision {}, behind this delivery's {revision}",
                window.revision
            )));
        }
        // Relative phrases are true when sent: one body per lead time (to the hour, or five
        // minutes in the last two hours) before the start.
        let lead = lead_time(now, window.schedule.starts_at());
        let audience = row.audience;
        let key = BodyKey::Notice {
            window: window_id,
            revision,
            notice,
            audience,
            channel,
            locale,
            zone,
            lead,
        };
        // The facts are gathered only when the body is not cached yet: not once per delivery.
        let body = self
            .body(cache, key, || {
                let facts = NoticeFacts::new(&window, notice, &self.components, now);
                self.renderer.render(&facts, audience, channel, locale, zone)
            })
            .await?;
        let message = Message {
            idempotency_key: match &broadcast {
                Some(b) => broadcast_key(b.id, recipient, channel, row.endpoint.as_ref().map(|e| e.id)),
                None => idempotency_key(
                    window_id,
                    revision,
                    notice,
                    recipient,
                    channel,
                    row.endpoint.as_ref().map(|e| e.id),
                ),
            },
            channel,
            to,
            kind: notice.kind().as_str().to_owned(),
            notice: notice.to_string(),
            window_id: Some(window_id.0),
            broadcast: broadcast.as_ref().map(|b| b.name.clone()),
            revision,
            locale,
            attempt: row.attempts,
            possibly_duplicate: row.possibly_duplicate,
            not_after: None,
            unsubscribe,
            content: Arc::clone(&body.content),
        };
        let body_id = body.id;
        // The event's identity is the biller's, whatever the endpoint.
        Self::record_event(cache, &message, recipient, || match &broadcast {
            Some(b) => broadcast_key(b.id, recipient, channel, None),
            None => idempotency_key(window_id, revision, notice, recipient, channel, None),
        });
        Ok((message, body_id))
    }

    /// Notes a webhook event for the biller's sequence (`GET /v1/events`, replays); the batch's
    /// events are kept together, once each, before anything is sent.
    fn record_event(
        cache: &mut Cache,
        message: &Message,
        recipient: crate::domain::RecipientId,
        key: impl FnOnce() -> String,
    ) {
        if let Rendered::Webhook { payload } = &*message.content {
            cache.events.push(crate::storage::NewBillerEvent {
                recipient,
                key: key(),
                kind: payload["type"].as_str().unwrap_or_default().to_owned(),
                payload: payload.to_string(),
            });
        }
    }

    /// The body for `key`, rendered and stored the first time it is asked for in this run.
    async fn body<'c>(
        &self,
        cache: &'c mut Cache,
        key: BodyKey,
        render: impl FnOnce() -> Result<Rendered, RenderError>,
    ) -> Result<&'c Body, Prepare> {
        Ok(match cache.bodies.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let content = render().map_err(|e| Prepare::Fail(e.to_string()))?;
                let json = serde_json::to_string(&content).map_err(|e| Prepare::Fail(e.to_string()))?;
                // The fingerprint keeps a corrected wording (same revision) from reusing a stale row.
                let stored_key = format!("{}#{:016x}", e.key(), fingerprint(json.as_bytes()));
                let id = self.store.body_id(&stored_key, &json).await.map_err(Prepare::Store)?;
                e.insert(Body {
                    id,
                    content: Arc::new(content),
                })
            }
        })
    }
}

/// How long an error text in the attempts log may be.
const ERROR_TEXT: usize = 300;

/// A failed try as the attempts log keeps it: the outcome's class, the provider's status if
/// its message names one, and the error with the recipient's address masked, cut short. (A
/// successful try is kept on the delivery's row: `Finish::Sent`.)
fn attempt(delivery: i64, to: &Address, t: &Try<'_>, err: &SendError, at: DateTime<Utc>) -> Attempt {
    let outcome = match err {
        SendError::Transient { .. } => "transient",
        SendError::Paused { .. } => "paused",
        SendError::Uncertain { .. } => "uncertain",
        SendError::Permanent { .. } => "permanent",
        SendError::Gone { .. } => "gone",
        SendError::TooLate => "too_late",
    };
    let text = masked(to, err.to_string());
    let error = match text.char_indices().nth(ERROR_TEXT) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    };
    Attempt {
        delivery,
        at,
        backend: t.backend.to_owned(),
        outcome,
        status: provider_status(&error),
        latency_ms: u64::try_from(t.latency.as_millis()).unwrap_or(u64::MAX),
        provider_id: None,
        error: Some(error),
    }
}

/// `text` with the recipient's address masked (`+2547•••••678`): a provider's error may quote
/// it, and logs and the ledger never hold it whole.
fn masked(to: &Address, text: String) -> String {
    let (plain, masked) = match to {
        Address::Phone(p) => (p.as_str().to_owned(), p.masked()),
        Address::Email(m) => (m.as_str().to_owned(), m.masked()),
        Address::Endpoint { .. } => return text,
    };
    text.replace(&plain, &masked)
}

/// `HTTP 502` or `SMTP 451` where an error text names the provider's status.
fn provider_status(text: &str) -> Option<String> {
    ["HTTP ", "SMTP "].iter().find_map(|prefix| {
        let at = text.find(prefix)?;
        let code: String = text[at + prefix.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        (code.len() == 3).then(|| format!("{prefix}{code}"))
    })
}

/// Where in the jitter band a delivery's retry falls, in [-1, 1]: derived from the delivery and
/// its attempt, so retries of many rows spread out and a rerun of the same decision agrees.
fn spread(row: &ClaimedDelivery) -> f64 {
    let h = fingerprint(format!("{}.{}", row.id, row.attempts).as_bytes());
    (h % 2001) as f64 / 1000.0 - 1.0
}

/// What happened to one message: the backend with the last word (its name, and its place in
/// the channel's route), and its result.
struct SendOutcome<'a> {
    backend: &'a str,
    route: usize,
    result: Result<Receipt, SendError>,
    /// Every backend tried, in order: for the attempts log.
    tries: Vec<Try<'a>>,
}

/// One backend's go at a message.
struct Try<'a> {
    backend: &'a str,
    result: Result<Receipt, SendError>,
    latency: std::time::Duration,
    /// When the backend's call returned.
    answered: tokio::time::Instant,
}

/// A batch's messages on one channel, with their rows and body ids.
type ChannelGroup = (Channel, Vec<(ClaimedDelivery, i64)>, Vec<Message>);

/// What one dispatch run has already loaded or rendered.
#[derive(Default)]
struct Cache {
    windows: CacheMap<WindowId, Arc<Window>>,
    broadcasts: CacheMap<i64, Arc<Broadcast>>,
    bodies: CacheMap<BodyKey, Body>,
    /// The deployment's signing key, read once per run when an email needs its unsubscribe
    /// token.
    signing: Option<crate::domain::SigningKey>,
    /// The batch's webhook events, kept before it is sent.
    events: Vec<crate::storage::NewBillerEvent>,
}

/// A map of the lane's cache, looked up for every delivery: hashed by multiplying and
/// rotating (as rustc's own maps do) rather than with SipHash, which cost about 1,300
/// instructions a delivery for these keys. SipHash guards a map against keys chosen to
/// collide; these keys are ids and enums of the ledger's own rows, a few per batch.
type CacheMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<CacheHasher>>;

#[derive(Default)]
struct CacheHasher(u64);

impl CacheHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for CacheHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// What one body is rendered for: a window's notice to one audience, channel, locale and
/// zone at one lead time, or a free message on one channel in one locale. Its text is the
/// body's key in `bodies`; a lookup in the batch's cache compares the fields, so no text is
/// made for each delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BodyKey {
    Notice {
        window: WindowId,
        revision: u32,
        notice: Notice,
        audience: Audience,
        channel: Channel,
        locale: Locale,
        zone: Zone,
        lead: Span,
    },
    Message {
        broadcast: i64,
        channel: Channel,
        locale: Locale,
    },
}

impl std::fmt::Display for BodyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyKey::Notice {
                window,
                revision,
                notice,
                audience,
                channel,
                locale,
                zone,
                lead,
            } => write!(
                f,
                "w{window}.r{revision}.{notice}.{audience}.{channel}.{locale}.{zone}.in{lead}"
            ),
            BodyKey::Message {
                broadcast,
                channel,
                locale,
            } => write!(f, "b{broadcast}.{channel}.{locale}"),
        }
    }
}

enum Prepare {
    Store(StoreError),
    Fail(String),
    Superseded(String),
}

/// `send_on_time` as a task of its own, so that a backend's own work for a batch (building each
/// message or request, its protocol) runs on another of the runtime's threads while the lanes
/// claim, render and record. A send the runtime cancelled (it is shutting down) may have handed
/// some messages over: each is uncertain, retried later flagged possibly duplicate, not failed
/// over.
async fn send_on_a_worker(
    sender: &Arc<dyn crate::channels::Sender>,
    batch: Arc<Vec<Message>>,
) -> Vec<Result<Receipt, SendError>> {
    let count = batch.len();
    let worker = Arc::clone(sender);
    match tokio::spawn(async move { send_on_time(worker.as_ref(), &batch).await }).await {
        Ok(results) => results,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => {
                let cancelled = SendError::Uncertain {
                    message: format!("{}: the send was cancelled, the process is stopping", sender.name()),
                    retry_after: None,
                };
                vec![Err(cancelled); count]
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{ClaimFrom, Cursor, LOOK_FROM_THE_FRONT_AT_LEAST_EVERY, LOOK_FROM_THE_FRONT_EVERY};
    use crate::storage::Position;

    fn claim(cursor: &mut Cursor, scope: Option<i64>, last: Option<Position>) -> ClaimFrom {
        let from = cursor.start(scope, false);
        cursor.claimed(from, last, std::time::Duration::ZERO);
        from
    }

    #[tokio::test(start_paused = true)]
    async fn claims_go_on_from_the_last_row_and_look_from_the_front_now_and_then() {
        let mut cursor = Cursor::default();
        // The first claim looks at the whole queue; the next ones go on past the last row.
        assert!(claim(&mut cursor, None, Some(Position::at(10, 500))).looks_from_the_front());
        assert_eq!(
            claim(&mut cursor, None, Some(Position::at(10, 1000))).after,
            Position::at(10, 500)
        );
        assert_eq!(cursor.start(None, false).after, Position::at(10, 1000));
        // An empty claim leaves the cursor where it was.
        claim(&mut cursor, None, None);
        assert_eq!(cursor.start(None, false).after, Position::at(10, 1000));
        // Asked for, or once the last look from the front is old, a claim looks at it all.
        assert!(cursor.start(None, true).looks_from_the_front());
        assert!(!cursor.start(None, false).looks_from_the_front());
        tokio::time::advance(LOOK_FROM_THE_FRONT_EVERY).await;
        assert!(cursor.start(None, false).looks_from_the_front());
        // Another scope (one broadcast's rows) starts from the front too.
        assert!(!cursor.start(None, false).looks_from_the_front());
        assert!(cursor.start(Some(7), false).looks_from_the_front());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_look_from_the_front_is_made_less_often() {
        let mut cursor = Cursor::default();
        // A quick look from the front: the next is a second later.
        let front = cursor.start(None, false);
        cursor.claimed(front, Some(Position::at(10, 500)), Duration::from_millis(30));
        tokio::time::advance(LOOK_FROM_THE_FRONT_EVERY).await;
        // One that took half a second (the entries of rows already sent walked through): the
        // next is ten seconds after it began.
        let slow = cursor.start(None, false);
        assert!(slow.looks_from_the_front());
        cursor.claimed(slow, Some(Position::at(10, 1000)), Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(9_900)).await;
        assert!(!cursor.start(None, false).looks_from_the_front());
        tokio::time::advance(Duration::from_millis(100)).await;
        // However slow, at least every fifteen seconds.
        let slower = cursor.start(None, false);
        assert!(slower.looks_from_the_front());
        cursor.claimed(slower, None, Duration::from_secs(3));
        tokio::time::advance(LOOK_FROM_THE_FRONT_AT_LEAST_EVERY - Duration::from_millis(1)).await;
        assert!(!cursor.start(None, false).looks_from_the_front());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(cursor.start(None, false).looks_from_the_front());
        // Asked for, a look from the front is made at once, however slow the last one was.
        assert!(cursor.start(None, true).looks_from_the_front());
    }

    #[tokio::test(start_paused = true)]
    async fn rows_found_behind_the_cursor_take_it_back_there() {
        let mut cursor = Cursor::default();
        claim(&mut cursor, None, Some(Position::at(10, 1000)));
        // Two lanes: one goes on past the cursor while the other looks from the front and
        // finds rows that came back behind it (a released claim, an earlier slot).
        let ahead = cursor.start(None, false);
        let front = cursor.start(None, true);
        cursor.claimed(front, Some(Position::at(5, 40)), std::time::Duration::ZERO);
        cursor.claimed(ahead, Some(Position::at(10, 1500)), std::time::Duration::ZERO);
        // The next claims go on from behind, not past the rows the lane ahead took.
        assert_eq!(cursor.start(None, false).after, Position::at(5, 40));
        let next = cursor.start(None, false);
        cursor.claimed(next, Some(Position::at(10, 1200)), std::time::Duration::ZERO);
        assert_eq!(cursor.start(None, false).after, Position::at(10, 1200));
    }

    /// A body's key in `bodies` reads as it always has, so rows stored before are found again.
    #[test]
    fn a_body_key_reads_as_the_stored_key() {
        use super::BodyKey;
        use crate::domain::{Audience, Channel, Locale, Span, WindowId};
        let notice = BodyKey::Notice {
            window: WindowId(7),
            revision: 2,
            notice: "reminder:24h".parse().unwrap(),
            audience: Audience::Customer,
            channel: Channel::Sms,
            locale: Locale::Sw,
            zone: "Africa/Nairobi".parse().unwrap(),
            lead: Span::from_secs(19 * 3600),
        };
        assert_eq!(
            notice.to_string(),
            "w7.r2.reminder:24h.customer.sms.sw.Africa/Nairobi.in19h"
        );
        let message = BodyKey::Message {
            broadcast: 3,
            channel: Channel::Email,
            locale: Locale::En,
        };
        assert_eq!(message.to_string(), "b3.email.en");
    }

    /// The cache's hasher tells apart keys that differ in one field or in the order of two,
    /// and the cache finds each body under its own key.
    #[test]
    fn the_cache_hasher_tells_keys_apart() {
        use super::{BodyKey, CacheMap};
        use crate::domain::{Audience, Channel, Locale, Span, WindowId};
        use std::hash::BuildHasher as _;
        let key = |window: i64, channel: Channel, locale: Locale, hours: i64| BodyKey::Notice {
            window: WindowId(window),
            revision: 1,
            notice: "announced".parse().unwrap(),
            audience: Audience::Customer,
            channel,
            locale,
            zone: "Africa/Nairobi".parse().unwrap(),
            lead: Span::from_secs(hours * 3600),
        };
        let keys = [
            key(1, Channel::Sms, Locale::En, 24),
            key(1, Channel::Sms, Locale::Sw, 24),
            key(1, Channel::Email, Locale::En, 24),
            key(2, Channel::Sms, Locale::En, 24),
            key(1, Channel::Sms, Locale::En, 23),
        ];
        let mut cache: CacheMap<BodyKey, usize> = CacheMap::default();
        let hashes: std::collections::HashSet<u64> = keys.iter().map(|k| cache.hasher().hash_one(k)).collect();
        assert_eq!(hashes.len(), keys.len());
        let hasher = cache.hasher().clone();
        assert_ne!(hasher.hash_one((1_u32, 2_u32)), hasher.hash_one((2_u32, 1_u32)));
        for (i, k) in keys.iter().enumerate() {
            cache.insert(*k, i);
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(cache.get(k), Some(&i));
        }
    }
}
