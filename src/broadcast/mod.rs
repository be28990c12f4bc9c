//! Ad-hoc broadcasts, as data: what is sent (a window's notice or a free message), to whom (the
//! audience a filter admits, read a page at a time), what it would cost and how long it would
//! take, and whether a canary run allows the release. The rows go into the same `deliveries`
//! table and leave through the same dispatcher as the daemon's, so a rerun sends nothing twice.
//!
//! The command line and the HTTP API call these functions and do their own asking and
//! printing. Depends on `storage`, `render`, `domain` and `dispatch::handoff` (the batches
//! recording hands to this process's lanes).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use futures_util::future::{join_all, join3};
use serde::{Deserialize, Serialize};

use crate::domain::{
    Audience, AudienceFilter, Channel, ComponentId, ComponentNames, DeliveryState, Encoding, Locale, Matcher, Message,
    Notice, Recipient, RecipientId, Rendered, Window, Zone, fingerprint,
};
use crate::shutdown::CancellationToken;

use crate::clock::Clock;
use crate::dispatch::handoff::{Hand, Handed, Stamp};
use crate::render::{NoticeFacts, RenderError, Renderer};
use crate::storage::{
    Broadcast, Claim, Claimed, ClaimedBatch, ClaimedDelivery, CorruptClaim, HandOver, NewBroadcast, PAGE, Store,
    StoreError, WrittenPage,
};

/// Prices for estimates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Costs {
    pub currency: String,
    pub sms_segment: f64,
    pub email: f64,
    pub webhook: f64,
}

/// What is broadcast.
#[derive(Debug, Clone)]
pub enum Content {
    Notice { window: Box<Window>, notice: Notice },
    Message(Message),
}

impl Content {
    /// The components a window notice is about; a free message concerns everyone.
    pub fn window_components(&self) -> Option<&[ComponentId]> {
        match self {
            Content::Notice { window, .. } => Some(&window.components),
            Content::Message(_) => None,
        }
    }

    /// The broadcast to record for this content.
    pub fn to_new(&self, name: String, filter: AudienceFilter, deadline: DateTime<Utc>) -> NewBroadcast {
        let (window, notice, message) = match self {
            Content::Notice { window, notice } => (Some(window.as_ref()), Some(*notice), None),
            Content::Message(m) => (None, None, Some(m.clone())),
        };
        NewBroadcast {
            name,
            window: window.map(|w| w.id),
            revision: window.map(|w| w.revision),
            notice,
            message,
            filter,
            deadline,
        }
    }

    /// The content rendered for one audience, channel, locale and zone, as if sent at `now`.
    #[allow(clippy::too_many_arguments)]
    pub fn render(
        &self,
        renderer: &Renderer,
        components: &BTreeMap<ComponentId, ComponentNames>,
        audience: Audience,
        channel: Channel,
        locale: Locale,
        zone: Zone,
        now: DateTime<Utc>,
    ) -> Result<Rendered, RenderError> {
        match self {
            Content::Notice { window, notice } => {
                let facts = NoticeFacts::new(window, *notice, components, now);
                renderer.render(&facts, audience, channel, locale, zone)
            }
            Content::Message(m) => renderer.render_message(m, "preview", channel, locale),
        }
    }
}

/// The name a broadcast gets when none is given: stable for the same content and audience, so
/// running the same command twice is the same broadcast.
pub fn default_name(content: &Content, filter: &AudienceFilter) -> Result<String, serde_json::Error> {
    let filter_json = serde_json::to_string(filter)?;
    Ok(match content {
        Content::Notice { window, notice } => format!(
            "w{}-r{}-{}-{:08x}",
            window.id,
            window.revision,
            notice.to_string().replace(':', "-"),
            fingerprint(filter_json.as_bytes()) as u32
        ),
        Content::Message(m) => {
            let text = serde_json::to_string(m)? + &filter_json;
            format!("msg-{:012x}", fingerprint(text.as_bytes()) & 0xffff_ffff_ffff)
        }
    })
}

/// Pages through the recipients a filter can admit, in id order.
struct Pager {
    kinds: Vec<Option<Audience>>,
    kind: usize,
    after: RecipientId,
}

impl Pager {
    fn new(filter: &AudienceFilter) -> Pager {
        let kinds = match filter.audiences.as_slice() {
            [one] => vec![Some(*one)],
            _ => vec![None],
        };
        Pager {
            kinds,
            kind: 0,
            after: RecipientId(0),
        }
    }

    async fn next(&mut self, store: &Store) -> Result<Option<Vec<Recipient>>, StoreError> {
        while let Some(kind) = self.kinds.get(self.kind) {
            let page = store.recipients_page(*kind, self.after, PAGE).await?;
            match page.last {
                Some(last) => {
                    self.after = last;
                    for (id, why) in &page.unreadable {
                        tracing::warn!(recipient = id.0, "recipient skipped: {why}");
                    }
                    return Ok(Some(page.recipients));
                }
                None => {
                    self.kind += 1;
                    self.after = RecipientId(0);
                }
            }
        }
        Ok(None)
    }
}

/// Who would receive what: counts by channel, audience, locale and zone.
#[derive(Debug, Default)]
pub struct Scan {
    pub recipients: u64,
    pub messages: BTreeMap<(Channel, Audience, Locale, Zone), u64>,
}

impl Scan {
    pub fn total_messages(&self) -> u64 {
        self.messages.values().sum()
    }

    /// Counts `n` recipients like `r`, on the channels `matcher` admits them on.
    fn count(&mut self, matcher: &Matcher<'_>, content: &Content, r: &Recipient, n: u64) {
        let channels = matcher.channels(r, content.window_components());
        if channels.is_empty() {
            return;
        }
        self.recipients += n;
        // A free message reads the same in every zone.
        let zone = match content {
            Content::Notice { .. } => r.profile.zone,
            Content::Message(_) => Zone::NAIROBI,
        };
        for c in channels {
            *self
                .messages
                .entry((c, r.profile.kind, r.profile.locale, zone))
                .or_default() += n;
        }
    }
}

/// Counts the whole audience: nothing is recorded. The database groups the recipients by what
/// the filter and the counts look at, and each group is judged once; a subset of natural keys,
/// or a group that does not read back, has the audience read and judged one recipient at a
/// time instead. Both give the same counts.
pub async fn scan(store: &Store, content: &Content, filter: &AudienceFilter) -> Result<Scan, StoreError> {
    let matcher = filter.matcher();
    if filter.subset.is_none()
        && let Some(s) = scan_grouped(store, content, filter, &matcher).await?
    {
        return Ok(s);
    }
    let mut s = Scan::default();
    let mut pager = Pager::new(filter);
    while let Some(page) = pager.next(store).await? {
        for r in &page {
            s.count(&matcher, content, r, 1);
        }
    }
    Ok(s)
}

/// [`scan`] by groups of recipients alike; `None` if a group does not read back.
async fn scan_grouped(
    store: &Store,
    content: &Content,
    filter: &AudienceFilter,
    matcher: &Matcher<'_>,
) -> Result<Option<Scan>, StoreError> {
    let mut s = Scan::default();
    for kind in Pager::new(filter).kinds {
        let Some(groups) = store.recipients_grouped(kind).await? else {
            return Ok(None);
        };
        for (r, n) in &groups {
            s.count(matcher, content, r, *n);
        }
    }
    Ok(Some(s))
}

/// Where recording hands the rows this process can send at once: to its own lanes (see
/// `dispatch::handoff`), for as long as `Store::hands_over` allows it. Dropped when recording
/// ends, so a lane waiting for a batch stops waiting.
pub struct Handing<'a> {
    pub hand: Hand,
    /// The process whose lanes send them.
    pub owner: &'a str,
    pub lease: std::time::Duration,
    /// Rows per batch.
    pub batch: usize,
    /// What is due, and what is past its deadline, is judged on it at every page.
    pub clock: &'a Clock,
    /// Whether the lanes send as fast as the backends take it, with no rate to hold to: only
    /// then are pages written ahead of them (PostgreSQL). A page written claimed waits for the
    /// lanes to take the pages before it, and its lease runs meanwhile; paced, that wait grows
    /// with the pages ahead.
    pub unpaced: bool,
}

/// Records the broadcast's rows for the whole audience, a page at a time, due at `now`.
/// Returns how many were new, or `None` if `stop` was cancelled first: recording then ends
/// between pages, and the same broadcast again records the rest. With `handing`, each page's
/// rows that can go out at once are written claimed and handed over.
///
/// On PostgreSQL two pages are written at once, each on a connection of its own, while the
/// next two are read and the two before are handed to the lanes, as a fan-out's pages are:
/// one page's write keeps one server process busy, and the server's work bounds recording.
/// On SQLite a page is written, handed, then the next read: reading or writing ahead there
/// takes the one writer's turns from sending (see `Scheduler::fan_out`); so too when the lanes
/// are held to a rate (see `Handing::unpaced`). If recording fails,
/// the pages it wrote claimed and had not handed over go back to the queue.
pub async fn enqueue_audience(
    store: &Store,
    content: &Content,
    broadcast: &Broadcast,
    now: DateTime<Utc>,
    mut handing: Option<Handing<'_>>,
    stop: &CancellationToken,
) -> Result<Option<u64>, StoreError> {
    let matcher = broadcast.filter.matcher();
    let mut pager = Pager::new(&broadcast.filter);
    // One page at a time, written, handed, then the next read: SQLite, or lanes held to a rate.
    let turns = store.writes_take_turns() || handing.as_ref().is_some_and(|h| !h.unpaced);
    let at_once = if turns { 1 } else { 2 };
    let mut enqueued = 0;
    // Sending may run beside the recording (the CLI's broadcast does): its claims need
    // statistics of the queue as it grows.
    let mut analyze_at = crate::storage::FIRST_ANALYZE;
    // Stopped while a page is read: nothing of it is written. A page being written is not
    // given up halfway: its commit could land unseen, leaving rows claimed that no lane would
    // ever be handed.
    let mut next = match stop
        .run_until_cancelled(read_pages(store, &mut pager, &matcher, content, at_once))
        .await
    {
        Some(first) => first?,
        None => return Ok(None),
    };
    // Pages written and not yet handed over (PostgreSQL).
    let mut unsettled: Vec<WrittenRows> = Vec::new();
    let mut stopped = false;
    while !next.is_empty() {
        if stop.is_cancelled() {
            stopped = true;
            break;
        }
        let step = std::mem::take(&mut next);
        // Before the pages are written: no batch's lease began earlier.
        let written_at = Handed::stamp();
        let writes = join_all(
            step.iter()
                .map(|(_, rows)| write_page(store, broadcast, rows, now, handing.as_ref())),
        );
        let (written, ahead, lanes) = if turns {
            (writes.await, None, Ok(true))
        } else {
            let ahead = stop.run_until_cancelled(read_pages(store, &mut pager, &matcher, content, at_once));
            let hand = handing.as_ref().map(|h| &h.hand);
            let earlier = hand_over(store, broadcast, std::mem::take(&mut unsettled), hand, now);
            let (written, ahead, lanes) = join3(writes, ahead, earlier).await;
            (written, Some(ahead), lanes)
        };
        let mut failed = None;
        for ((page, rows), written) in step.into_iter().zip(written) {
            match written {
                Ok(written) => {
                    enqueued += written.inserted;
                    unsettled.push(WrittenRows {
                        page,
                        rows,
                        written,
                        written_at,
                    });
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return Err(give_back_all(store, broadcast, unsettled, now, e).await);
        }
        match lanes {
            Ok(true) => {}
            Ok(false) => handing = None,
            Err(e) => return Err(give_back_all(store, broadcast, unsettled, now, e).await),
        }
        if enqueued >= analyze_at {
            if let Err(e) = store.analyze_growing_queue().await {
                return Err(give_back_all(store, broadcast, unsettled, now, e).await);
            }
            analyze_at = enqueued.saturating_mul(2);
        }
        let ahead = match ahead {
            Some(ahead) => ahead,
            None => {
                let hand = handing.as_ref().map(|h| &h.hand);
                if !hand_over(store, broadcast, std::mem::take(&mut unsettled), hand, now).await? {
                    handing = None;
                }
                stop.run_until_cancelled(read_pages(store, &mut pager, &matcher, content, at_once))
                    .await
            }
        };
        match ahead {
            Some(Ok(ahead)) => next = ahead,
            Some(Err(e)) => return Err(give_back_all(store, broadcast, unsettled, now, e).await),
            None => stopped = true,
        }
    }
    let hand = handing.as_ref().map(|h| &h.hand);
    hand_over(store, broadcast, unsettled, hand, now).await?;
    if stopped {
        return Ok(None);
    }
    store.after_bulk_load(enqueued).await?;
    Ok(Some(enqueued))
}

/// Gives back the batches of pages written claimed that no lane will be handed, recording
/// having failed with `error`: they go back to the queue rather than wait out their lease.
/// Returns `error`.
async fn give_back_all(
    store: &Store,
    broadcast: &Broadcast,
    written: Vec<WrittenRows>,
    due_at: DateTime<Utc>,
    error: StoreError,
) -> StoreError {
    if let Err(e) = hand_over(store, broadcast, written, None, due_at).await {
        tracing::warn!(error = %e, "batches written claimed stay claimed until their lease lapses");
    }
    error
}

/// A page as written: the recipients read, the rows written from them, what the write did
/// and when it began.
struct WrittenRows {
    page: Vec<Recipient>,
    rows: Vec<(RecipientId, Channel, Option<i64>)>,
    written: WrittenPage,
    written_at: Stamp,
}

/// Hands each batch of the pages `written` wrote claimed to the lanes, or, once they have
/// stopped (or with none), back to the queue. Returns whether the lanes still take batches.
async fn hand_over(
    store: &Store,
    broadcast: &Broadcast,
    written: Vec<WrittenRows>,
    mut hand: Option<&Hand>,
    due_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    for w in &written {
        for batch in &w.written.claimed {
            let claim = claim(broadcast, &w.page, &w.rows, batch, due_at);
            match hand {
                Some(h) if h.hand(store, Handed::new(claim, w.written_at)).await => {}
                // The lanes gave it back.
                Some(_) => hand = None,
                None => {
                    store.give_back(batch.token).await?;
                }
            }
        }
    }
    Ok(hand.is_some())
}

/// The audience's next `n` pages (fewer at its end), and the rows each gets: one per channel
/// the filter admits each recipient on, one per endpoint for a biller's webhook.
#[allow(clippy::type_complexity)]
async fn read_pages(
    store: &Store,
    pager: &mut Pager,
    matcher: &Matcher<'_>,
    content: &Content,
    n: usize,
) -> Result<Vec<(Vec<Recipient>, Vec<(RecipientId, Channel, Option<i64>)>)>, StoreError> {
    let mut pages = Vec::with_capacity(n);
    while pages.len() < n {
        let Some(page) = pager.next(store).await? else {
            break;
        };
        let rows: Vec<(RecipientId, Channel)> = page
            .iter()
            .flat_map(|r| {
                matcher
                    .channels(r, content.window_components())
                    .into_iter()
                    .map(|c| (r.id, c))
            })
            .collect();
        let rows = per_endpoint(store, Some(content), rows).await?;
        pages.push((page, rows));
    }
    Ok(pages)
}

/// Writes a page's rows; with `handing`, those that can go out at once are written claimed,
/// unless another process sends now. Asked at every page: a process that started sending
/// meanwhile finds the rest pending, its share to claim.
async fn write_page(
    store: &Store,
    broadcast: &Broadcast,
    rows: &[(RecipientId, Channel, Option<i64>)],
    now: DateTime<Utc>,
    handing: Option<&Handing<'_>>,
) -> Result<WrittenPage, StoreError> {
    let over = match handing {
        Some(h) if store.hands_over(h.owner).await? => Some(HandOver {
            owner: h.owner,
            lease: h.lease,
            batch: h.batch,
            now: h.clock.now(),
        }),
        _ => None,
    };
    store
        .enqueue_broadcast_handing(broadcast, rows, now, over.as_ref())
        .await
}

/// A batch of a broadcast's rows written claimed, as a lane sends it: addressed as each
/// recipient was read (`page`, in id order; `rows` are what was written from it).
fn claim(
    broadcast: &Broadcast,
    page: &[Recipient],
    rows: &[(RecipientId, Channel, Option<i64>)],
    batch: &ClaimedBatch,
    due_at: DateTime<Utc>,
) -> Claim {
    let rows: Vec<Claimed> = batch
        .rows
        .iter()
        .map(|&(id, at)| {
            let (recipient, channel, _) = rows[at];
            let profile = page
                .binary_search_by_key(&recipient, |r| r.id)
                .map(|i| &page[i].profile)
                .map_err(|_| CorruptClaim {
                    id,
                    reason: format!("recipient {} is not on the page it was recorded from", recipient.0),
                })?;
            Ok(ClaimedDelivery {
                id,
                window: broadcast.window,
                broadcast: Some(broadcast.id),
                revision: broadcast.revision.unwrap_or(0),
                notice: broadcast.notice,
                channel,
                attempts: 1,
                deadline: broadcast.deadline,
                recipient,
                possibly_duplicate: false,
                audience: profile.kind,
                phone: profile.phone.clone(),
                email: profile.email.clone(),
                locale: profile.locale,
                zone: profile.zone,
                endpoint: None,
            })
        })
        .collect();
    Claim {
        token: batch.token,
        rows,
        oldest_due: Some(due_at),
        last: None,
    }
}

/// Records the canary seeds' rows (seed recipients on the broadcast's channels).
pub async fn enqueue_seeds(
    store: &Store,
    broadcast: &Broadcast,
    seeds: &[Recipient],
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let channels = &broadcast.filter.channels;
    let rows: Vec<(RecipientId, Channel)> = seeds
        .iter()
        .flat_map(|r| {
            r.profile
                .effective_channels()
                .into_iter()
                .filter(|c| channels.is_empty() || channels.contains(c))
                .map(|c| (r.id, c))
                .collect::<Vec<_>>()
        })
        .collect();
    let rows = per_endpoint(store, None, rows).await?;
    store.enqueue_broadcast(broadcast, &rows, now).await
}

/// The rows with each webhook row made one per endpoint of the biller that wants `content`
/// (every enabled one for a free message or a canary seed); a biller without endpoints keeps
/// its one row.
async fn per_endpoint(
    store: &Store,
    content: Option<&Content>,
    rows: Vec<(RecipientId, Channel)>,
) -> Result<Vec<(RecipientId, Channel, Option<i64>)>, StoreError> {
    let billers: Vec<RecipientId> = rows.iter().filter(|r| r.1 == Channel::Webhook).map(|r| r.0).collect();
    let endpoints = store.endpoint_routes(&billers).await?;
    let mut out = Vec::with_capacity(rows.len());
    for (recipient, channel) in rows {
        match endpoints.get(&recipient) {
            Some(list) if channel == Channel::Webhook && !list.is_empty() => {
                out.extend(
                    list.iter()
                        .filter(|e| match content {
                            Some(Content::Notice { window, notice }) => e.wants(notice.kind(), &window.components),
                            Some(Content::Message(_)) | None => e.enabled,
                        })
                        .map(|e| (recipient, channel, Some(e.id))),
                );
            }
            _ => out.push((recipient, channel, None)),
        }
    }
    Ok(out)
}

/// A line of the estimate: messages (and SMS segments) per channel, locale and encoding.
#[derive(Debug, Clone, Serialize)]
pub struct EstimateLine {
    pub channel: Channel,
    pub locale: Locale,
    pub encoding: Option<String>,
    pub messages: u64,
    pub segments: u64,
}

/// What a broadcast would send, cost and take, with a sample of each locale's SMS and email.
#[derive(Debug, Clone)]
pub struct Estimate {
    pub lines: Vec<EstimateLine>,
    pub sms_segments: u64,
    pub cost: f64,
    /// Seconds each channel would take at its first backend's rate (`None`: no rate is set).
    pub seconds: BTreeMap<Channel, Option<f64>>,
    /// The longest of those: channels are worked in parallel.
    pub seconds_total: f64,
    /// Per locale: the SMS and the email as they would go out.
    pub samples: BTreeMap<Locale, (Rendered, Rendered)>,
}

impl Estimate {
    pub fn messages_on(&self, channel: Channel) -> u64 {
        self.lines
            .iter()
            .filter(|l| l.channel == channel)
            .map(|l| l.messages)
            .sum()
    }
}

/// What the estimate needs besides the content and the audience.
pub struct EstimateInputs<'a> {
    pub renderer: &'a Renderer,
    pub components: &'a BTreeMap<ComponentId, ComponentNames>,
    pub costs: &'a Costs,
    /// Messages per second of each channel's first backend, where limited.
    pub rate: &'a dyn Fn(Channel) -> Option<f64>,
    /// The zone the samples are rendered in.
    pub sample_zone: Zone,
    /// When it would be sent.
    pub now: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum EstimateError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("an SMS rendered as something else")]
    NotSms,
}

/// Counts, SMS segments (each (locale, zone) rendered once), cost, duration and samples.
pub fn estimate(content: &Content, scan: &Scan, inputs: &EstimateInputs<'_>) -> Result<Estimate, EstimateError> {
    let render = |audience, channel, locale, zone| {
        content.render(
            inputs.renderer,
            inputs.components,
            audience,
            channel,
            locale,
            zone,
            inputs.now,
        )
    };
    let mut lines: BTreeMap<(Channel, Locale, Option<Encoding>), (u64, u64)> = BTreeMap::new();
    let mut cache: HashMap<(Audience, Locale, Zone), (Encoding, u64)> = HashMap::new();
    for (&(channel, audience, locale, zone), &n) in &scan.messages {
        let (encoding, segments) = if channel == Channel::Sms {
            let (e, s) = match cache.get(&(audience, locale, zone)) {
                Some(v) => *v,
                None => {
                    let (encoding, segments) = match render(audience, channel, locale, zone)? {
                        Rendered::Sms { encoding, segments, .. } => (encoding, segments as u64),
                        _ => return Err(EstimateError::NotSms),
                    };
                    cache.insert((audience, locale, zone), (encoding, segments));
                    (encoding, segments)
                }
            };
            (Some(e), s * n)
        } else {
            (None, 0)
        };
        let line = lines.entry((channel, locale, encoding)).or_default();
        line.0 += n;
        line.1 += segments;
    }
    let lines: Vec<EstimateLine> = lines
        .iter()
        .map(|(&(channel, locale, encoding), &(messages, segments))| EstimateLine {
            channel,
            locale,
            encoding: encoding.map(|e| e.to_string()),
            messages,
            segments,
        })
        .collect();
    let per_channel = |c: Channel| lines.iter().filter(|l| l.channel == c).map(|l| l.messages).sum::<u64>();
    let sms_segments: u64 = lines.iter().map(|l| l.segments).sum();
    let costs = inputs.costs;
    let cost = sms_segments as f64 * costs.sms_segment
        + per_channel(Channel::Email) as f64 * costs.email
        + per_channel(Channel::Webhook) as f64 * costs.webhook;
    let mut seconds = BTreeMap::new();
    for c in Channel::ALL {
        let n = per_channel(c);
        if n > 0 {
            seconds.insert(c, (inputs.rate)(c).map(|r| n as f64 / r));
        }
    }
    // Channels are worked in parallel; an unlimited backend adds nothing to the estimate.
    let seconds_total = seconds.values().flatten().fold(0.0_f64, |a, b| a.max(*b));
    let mut samples = BTreeMap::new();
    let locales: BTreeSet<Locale> = scan.messages.keys().map(|k| k.2).collect();
    // Samples are what customers read, or billers when only billers are in the audience.
    let audience = scan.messages.keys().map(|k| k.1).min().unwrap_or(Audience::Customer);
    for locale in if locales.is_empty() {
        BTreeSet::from([Locale::En])
    } else {
        locales
    } {
        let sms = render(audience, Channel::Sms, locale, inputs.sample_zone)?;
        let email = render(audience, Channel::Email, locale, inputs.sample_zone)?;
        samples.insert(locale, (sms, email));
    }
    Ok(Estimate {
        lines,
        sms_segments,
        cost,
        seconds,
        seconds_total,
        samples,
    })
}

/// A broadcast's rows by state (`"sent"`, `"failed"`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct States(pub BTreeMap<String, i64>);

impl States {
    pub fn get(&self, state: DeliveryState) -> i64 {
        self.0.get(state.as_str()).copied().unwrap_or(0)
    }
    pub fn total(&self) -> i64 {
        self.0.values().sum()
    }
    /// Rows still to be worked: pending or claimed.
    pub fn open(&self) -> i64 {
        self.get(DeliveryState::Pending) + self.get(DeliveryState::Claimed)
    }
    /// Rows in a final state.
    pub fn settled(&self) -> i64 {
        self.total() - self.open()
    }
}

/// Counts one broadcast's rows by state.
pub async fn states(store: &Store, broadcast: i64) -> Result<States, StoreError> {
    let mut out = BTreeMap::new();
    for (state, n) in store.broadcast_states(broadcast).await? {
        *out.entry(state.as_str().to_owned()).or_default() += n;
    }
    Ok(States(out))
}

/// What the canary's outcome allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canary {
    /// Every seed message went out: the audience may have it.
    Passed { sent: i64 },
    /// Some seed message failed or expired: the audience gets nothing.
    Failed { sent: i64, failed: i64 },
}

/// Judges a canary run by its rows' states.
pub fn judge_canary(states: &States) -> Canary {
    let failed = states.get(DeliveryState::Failed) + states.get(DeliveryState::Expired);
    let sent = states.get(DeliveryState::Sent);
    if failed > 0 {
        Canary::Failed { sent, failed }
    } else {
        Canary::Passed { sent }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(pairs: &[(&str, i64)]) -> States {
        States(pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect())
    }

    #[test]
    fn a_canary_passes_only_when_nothing_failed_or_expired() {
        assert_eq!(judge_canary(&states(&[("sent", 3)])), Canary::Passed { sent: 3 });
        assert_eq!(
            judge_canary(&states(&[("sent", 2), ("expired", 1)])),
            Canary::Failed { sent: 2, failed: 1 }
        );
        assert_eq!(
            judge_canary(&states(&[("failed", 1), ("pending", 4)])),
            Canary::Failed { sent: 0, failed: 1 }
        );
    }

    #[test]
    fn settled_rows_are_those_in_a_final_state() {
        let s = states(&[("pending", 2), ("claimed", 1), ("sent", 5), ("superseded", 1)]);
        assert_eq!((s.total(), s.open(), s.settled()), (9, 3, 6));
    }
}
