//! The delivery queue: enqueue (idempotent by key), expiry, fenced claims with a lease, stored
//! bodies, and the outcome of each attempt.
//!
//! Leases are real elapsed time on the database's clock (PostgreSQL's `clock_timestamp()`,
//! SQLite's `unixepoch('subsec')`: the machine's), so workers with skewed clocks, or rehearsing
//! with `--now`, agree on when a lease lapses. Due times and deadlines are compared with the
//! injected clock the caller passes. Every claim carries a token; every write of a claimed row
//! names it. The claim's SQL differs per dialect and lives in `sql/{sqlite,postgres}/claim.sql`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{AssertSqlSafe, QueryBuilder};

use super::Attempt;
use super::attempts::insert_attempts;
use super::rows::{ClaimRow, Claimed};
use super::{Dialect, Pool, ROWS_PER_STATEMENT, Store, StoreError, json_ids};
use crate::domain::{Audience, Channel, Notice, PlannedDelivery, RecipientId, WindowId, fingerprint, to_millis};

/// How a claimed delivery ended this attempt.
#[derive(Debug, Clone)]
pub enum Finish {
    Sent {
        id: i64,
        /// When the backend accepted it.
        at: DateTime<Utc>,
        backend: String,
        provider_id: Option<String>,
        body_id: Option<i64>,
        /// How long the backend's call took: the successful attempt is kept on the row.
        latency: Duration,
    },
    Retry {
        id: i64,
        at: DateTime<Utc>,
        error: String,
        /// The provider may have accepted the failed attempt: the next is possibly a duplicate.
        maybe_sent: bool,
    },
    Failed {
        id: i64,
        error: String,
    },
    Expired {
        id: i64,
        error: String,
    },
    /// The window moved on before this row went out.
    Superseded {
        id: i64,
        error: String,
    },
}

impl Finish {
    fn id(&self) -> i64 {
        match self {
            Finish::Sent { id, .. }
            | Finish::Retry { id, .. }
            | Finish::Failed { id, .. }
            | Finish::Expired { id, .. }
            | Finish::Superseded { id, .. } => *id,
        }
    }
}

/// Rows claimed together under one lease token.
#[derive(Debug)]
pub struct Claim {
    pub token: i64,
    pub rows: Vec<Claimed>,
    /// The earliest slot among the claimed rows: how far behind them sending runs.
    pub oldest_due: Option<DateTime<Utc>>,
    /// The queue position of the last row claimed (in claim order): where the next claim may
    /// start.
    pub last: Option<Position>,
}

/// A place in the queue's claim order, `(due_at, id)`. A claim looks only past a position, so
/// a long run does not walk, at every claim, the index entries of rows already sent (on
/// PostgreSQL they stay in the index until a vacuum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    due_at: i64,
    id: i64,
}

impl Position {
    /// Before every row: a claim from here looks at the whole queue.
    pub const FRONT: Position = Position {
        due_at: i64::MIN,
        id: i64::MIN,
    };

    #[cfg(test)]
    pub(crate) fn at(due_at: i64, id: i64) -> Position {
        Position { due_at, id }
    }
}

/// What releasing lapsed (or dead workers') claims did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Released {
    /// Back in the queue, flagged possibly duplicate.
    pub returned: u64,
    /// Past their deadline: expired, "may have been sent before the crash".
    pub expired: u64,
    /// Of a revision the window has left: superseded, flagged.
    pub superseded: u64,
}

impl Released {
    pub fn total(&self) -> u64 {
        self.returned + self.expired + self.superseded
    }
}

/// Which fan-out a page of rows belongs to.
#[derive(Debug, Clone, Copy)]
pub struct FanOutPage {
    pub window: WindowId,
    pub revision: u32,
    pub notice: Notice,
    pub audience: Audience,
    /// The fan-out's progress the page follows on from: the last recipient of the page
    /// before it (`RecipientId(0)` for the first). The page is written only if the progress
    /// recorded is this, so pages commit in order even when two are written at once.
    pub read_from: RecipientId,
    /// The last recipient id read: a restart continues after it.
    pub read_up_to: RecipientId,
}

/// Whose claims the rows of a page that can be sent at once are written under (see
/// [`Store::enqueue_page_handing`]).
#[derive(Debug, Clone, Copy)]
pub struct HandOver<'a> {
    pub owner: &'a str,
    pub lease: Duration,
    /// Rows per token: a lane's batch.
    pub batch: usize,
    /// What is due, and what is past its deadline, is judged at this instant.
    pub now: DateTime<Utc>,
}

impl HandOver<'_> {
    /// A token for each row written claimed, a new one every `batch` rows; `None` for a row
    /// written pending. Each row is given as its due time, its deadline and whether it goes to
    /// a webhook endpoint.
    pub(super) fn tokens(
        &self,
        rows: impl IntoIterator<Item = (DateTime<Utc>, DateTime<Utc>, bool)>,
    ) -> Vec<Option<i64>> {
        let mut token = new_token();
        let mut in_batch = 0;
        rows.into_iter()
            .map(|(due_at, deadline, to_endpoint)| {
                if due_at > self.now || deadline <= self.now || to_endpoint {
                    return None;
                }
                if in_batch == self.batch.max(1) {
                    token = new_token();
                    in_batch = 0;
                }
                in_batch += 1;
                Some(token)
            })
            .collect()
    }
}

/// A fan-out's page once written.
#[derive(Debug, Default)]
pub struct WrittenPage {
    /// Rows that were new.
    pub inserted: u64,
    /// The batches written claimed, in token order.
    pub claimed: Vec<ClaimedBatch>,
}

/// Rows of a page written claimed under one token: each row's id and its index in the page's
/// planned rows, in id order.
#[derive(Debug)]
pub struct ClaimedBatch {
    pub token: i64,
    pub rows: Vec<(i64, usize)>,
}

/// Matches the rows read back by token to the rows they were written from, given as each
/// one's recipient and channel: one row each in a page of one notice or broadcast, webhook
/// rows aside, which are never written claimed.
pub(super) fn claimed_batches(
    rows: impl IntoIterator<Item = (RecipientId, Channel)>,
    tokens: &[i64],
    written: Vec<(i64, i64, i64, String)>,
) -> Result<Vec<ClaimedBatch>, StoreError> {
    let index: std::collections::HashMap<(i64, &str), usize> = rows
        .into_iter()
        .enumerate()
        .map(|(i, (recipient, channel))| ((recipient.0, channel.as_str()), i))
        .collect();
    let mut batches: Vec<ClaimedBatch> = tokens
        .iter()
        .map(|&token| ClaimedBatch {
            token,
            rows: Vec::new(),
        })
        .collect();
    for (token, id, recipient, channel) in written {
        let at = index
            .get(&(recipient, channel.as_str()))
            .ok_or_else(|| StoreError::Corrupt(format!("delivery {id} written claimed matches no planned row")))?;
        let batch = batches
            .iter_mut()
            .find(|b| b.token == token)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery {id} is claimed under an unknown token")))?;
        batch.rows.push((id, *at));
    }
    batches.retain(|b| !b.rows.is_empty());
    for b in &mut batches {
        b.rows.sort_unstable();
    }
    Ok(batches)
}

/// What an insert wrote: how many rows were new and, where the store tells it without a read,
/// each row's id in the order the rows were given.
#[derive(Debug, Default)]
pub(super) struct Inserted {
    pub(super) count: u64,
    /// Known on SQLite when every row of every statement was new: a table's new row is given
    /// the id one above the largest in the table (its `INTEGER PRIMARY KEY` has no
    /// `AUTOINCREMENT`), and a statement inserts its rows in the order of its `VALUES`, so a
    /// statement of `n` new rows wrote the ids up to its last insert's, `n` of them in order.
    pub(super) ids: Option<Vec<i64>>,
}

impl Inserted {
    /// Nothing written yet; the ids are kept only if `with_ids`.
    pub(super) fn start(with_ids: bool) -> Inserted {
        Inserted {
            count: 0,
            ids: with_ids.then(Vec::new),
        }
    }

    /// A count alone.
    pub(super) fn counted(count: u64) -> Inserted {
        Inserted { count, ids: None }
    }

    /// Adds one SQLite statement that inserted from `len` rows: its ids if every row was new.
    pub(super) fn add_sqlite(&mut self, done: &sqlx::sqlite::SqliteQueryResult, len: usize) {
        let new = done.rows_affected();
        self.count += new;
        let last = done.last_insert_rowid();
        match i64::try_from(len) {
            Ok(n) if new == len as u64 && last >= n => {
                if let Some(ids) = &mut self.ids {
                    ids.extend(last - n + 1..=last);
                }
            }
            _ => self.ids = None,
        }
    }
}

/// The batches `writing` wrote claimed (none unless it claims): from the ids the insert told
/// where it told them, else read back by token and matched to the rows, given as each one's
/// recipient and channel.
pub(super) async fn claimed_after<C: WrittenClaimed>(
    conn: &mut C,
    writing: &Writing<'_>,
    ids: Option<&[i64]>,
    rows: impl IntoIterator<Item = (RecipientId, Channel)>,
) -> Result<Vec<ClaimedBatch>, StoreError> {
    let Some(claiming) = writing.claiming() else {
        return Ok(Vec::new());
    };
    let distinct = claiming.distinct();
    conn.record_claims(claiming, &distinct).await?;
    if let Some(ids) = ids.filter(|ids| ids.len() == claiming.tokens.len()) {
        return Ok(batches_by_id(claiming.tokens, ids));
    }
    let written = conn.written_claimed(&distinct).await?;
    claimed_batches(rows, &distinct, written)
}

/// The batches of rows given a token, each row's id from `ids` (in the rows' order, so
/// ascending), in the order their tokens first appear.
fn batches_by_id(tokens: &[Option<i64>], ids: &[i64]) -> Vec<ClaimedBatch> {
    let mut batches: Vec<ClaimedBatch> = Vec::new();
    for (at, (token, &id)) in tokens.iter().zip(ids).enumerate() {
        let Some(token) = *token else { continue };
        match batches.iter_mut().rev().find(|b| b.token == token) {
            Some(batch) => batch.rows.push((id, at)),
            None => batches.push(ClaimedBatch {
                token,
                rows: vec![(id, at)],
            }),
        }
    }
    batches
}

/// The database's clock in Unix milliseconds, as a SQL expression of each dialect.
pub(super) fn db_now_ms(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
        Dialect::Postgres => "(floor(extract(epoch from clock_timestamp()) * 1000))::bigint",
    }
}

/// What the dispatcher needs of each row claimed under the token `$1`, in id order.
const CLAIMED_ROWS: &str = "SELECT d.id, d.window_id, d.broadcast_id, d.revision, d.notice, d.channel, d.attempts, d.due_at, d.deadline, \
     d.recipient_id, d.possibly_duplicate, r.kind AS audience, r.phone, r.email, r.locale, r.zone, \
     d.endpoint_id, e.url AS endpoint_url, e.secret AS endpoint_secret, e.previous_secret AS endpoint_previous_secret, \
     e.previous_until AS endpoint_previous_until, e.disabled_reason AS endpoint_disabled \
     FROM deliveries d JOIN recipients r ON r.id = d.recipient_id \
     LEFT JOIN webhook_endpoints e ON e.id = d.endpoint_id \
     WHERE d.lease_token = $1 AND d.state = 'claimed' AND d.leased ORDER BY d.id";

/// `CLAIMED_ROWS` as one JSON array of objects (SQLite).
const CLAIMED_JSON_SQLITE: &str = "SELECT COALESCE(json_group_array(json_object('id', d.id, 'window_id', d.window_id, \
     'broadcast_id', d.broadcast_id, 'revision', d.revision, 'notice', d.notice, 'channel', d.channel, 'attempts', d.attempts, \
     'due_at', d.due_at, 'deadline', d.deadline, 'recipient_id', d.recipient_id, \
     'possibly_duplicate', json(CASE WHEN d.possibly_duplicate THEN 'true' ELSE 'false' END), \
     'audience', r.kind, 'phone', r.phone, 'email', r.email, 'locale', r.locale, 'zone', r.zone, \
     'endpoint_id', d.endpoint_id, 'endpoint_url', e.url, 'endpoint_secret', e.secret, \
     'endpoint_previous_secret', e.previous_secret, 'endpoint_previous_until', e.previous_until, \
     'endpoint_disabled', e.disabled_reason) ORDER BY d.id), '[]') \
     FROM deliveries d JOIN recipients r ON r.id = d.recipient_id \
     LEFT JOIN webhook_endpoints e ON e.id = d.endpoint_id \
     WHERE d.lease_token = $1 AND d.state = 'claimed'";

/// Reading back the rows claimed under a token, in id order.
trait ReadClaimed {
    /// The rows claimed under `token`, of which there are about `expected`.
    async fn read_claimed(&mut self, token: i64, expected: usize) -> Result<Vec<ClaimRow>, StoreError>;
}

impl ReadClaimed for sqlx::SqliteConnection {
    /// One row of JSON rather than a row per delivery: each row sqlx reads from SQLite is a
    /// hand-over between its worker thread and this task.
    async fn read_claimed(&mut self, token: i64, expected: usize) -> Result<Vec<ClaimRow>, StoreError> {
        let json: String = sqlx::query_scalar(CLAIMED_JSON_SQLITE)
            .bind(token)
            .fetch_one(&mut *self)
            .await?;
        super::json_rows(&json, expected).map_err(|e| StoreError::Corrupt(format!("claimed rows: {e}")))
    }
}

impl ReadClaimed for sqlx::PgConnection {
    async fn read_claimed(&mut self, token: i64, _expected: usize) -> Result<Vec<ClaimRow>, StoreError> {
        Ok(sqlx::query_as(CLAIMED_ROWS).bind(token).fetch_all(&mut *self).await?)
    }
}

/// A lease token no other claim has: this process, this instant, this count.
fn new_token() -> i64 {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{}.{}.{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    );
    // Positive, so it reads well in logs.
    (fingerprint(seed.as_bytes()) >> 1) as i64
}

pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The condition that keeps a planned row `v` out when a broadcast of the same notice already
/// reaches its recipient on that channel (told once, whichever path told them).
const NOT_TOLD_BY_BROADCAST: &str = "NOT EXISTS (SELECT 1 FROM deliveries b WHERE b.broadcast_id IS NOT NULL \
     AND b.window_id = v.window_id AND b.recipient_id = v.recipient_id AND b.revision = v.revision \
     AND b.notice = v.notice AND b.channel = v.channel AND COALESCE(b.endpoint_id, 0) = COALESCE(v.endpoint_id, 0) \
     AND b.state IN ('pending', 'claimed', 'sent'))";

/// Whether a broadcast may already reach some of the rows being enqueued, so each row must be
/// checked against the broadcasts' rows (`NOT_TOLD_BY_BROADCAST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broadcasts {
    /// A broadcast of the same notice may exist: check every row.
    MayReach,
    /// None exists: the check is left out. It is a lookup per row, and with stale statistics
    /// PostgreSQL chose to run it as a scan of the whole ledger for every page.
    NoneReach,
}

/// Inserting planned rows inside a transaction, `ON CONFLICT DO NOTHING`, except for a
/// recipient a broadcast of the same notice already reaches on that channel; the count of new
/// rows. Each dialect passes a whole page in as few statements as it can.
trait InsertPlanned {
    async fn insert_planned(&mut self, rows: &[PlannedDelivery], broadcasts: Broadcasts) -> Result<u64, sqlx::Error> {
        Ok(self.insert_planned_as(rows, broadcasts, &Writing::Pending).await?.count)
    }
    /// `insert_planned`, the rows written as `writing` says (see [`Store::enqueue_page_handing`]).
    async fn insert_planned_as(
        &mut self,
        rows: &[PlannedDelivery],
        broadcasts: Broadcasts,
        writing: &Writing<'_>,
    ) -> Result<Inserted, sqlx::Error>;
}

/// Reading back the rows just written claimed.
pub(super) trait WrittenClaimed {
    /// What the rows written claimed under `tokens` are: (token, id, recipient, channel).
    async fn written_claimed(&mut self, tokens: &[i64]) -> Result<Vec<(i64, i64, i64, String)>, StoreError>;

    /// Records the claims `tokens` of `claiming`, beside their rows, where the store keeps
    /// claims apart from rows (PostgreSQL's `claims`, migration `sent_in_place`).
    async fn record_claims(&mut self, claiming: &Claiming<'_>, tokens: &[i64]) -> Result<(), StoreError>;
}

/// Rows written claimed as they are enqueued: a token per row (`None`: pending, as usual),
/// the owner and the lease.
pub(super) struct Claiming<'a> {
    pub(super) tokens: &'a [Option<i64>],
    pub(super) owner: &'a str,
    pub(super) lease_ms: i64,
}

impl<'a> Claiming<'a> {
    /// What `hand` claims of rows given `tokens` (see `HandOver::tokens`); `None` if no row
    /// has one.
    pub(super) fn of(hand: Option<&HandOver<'a>>, tokens: &'a [Option<i64>]) -> Option<Claiming<'a>> {
        hand.filter(|_| tokens.iter().any(Option::is_some))
            .map(|hand| Claiming {
                tokens,
                owner: hand.owner,
                lease_ms: millis(hand.lease),
            })
    }

    /// The distinct tokens, in order.
    pub(super) fn distinct(&self) -> Vec<i64> {
        let mut distinct: Vec<i64> = self.tokens.iter().flatten().copied().collect();
        distinct.dedup();
        distinct
    }
}

/// How rows are written: pending, those given a token claimed under it for its owner, or held
/// out of the claim's index because their window is paused (migration `paused_rows_held`).
pub(super) enum Writing<'a> {
    Pending,
    Claiming(Claiming<'a>),
    Held,
}

impl<'a> Writing<'a> {
    /// Held if the rows' window is `paused`, else claimed as `hand` claims rows given `tokens`
    /// (see [`Claiming::of`]), else pending.
    pub(super) fn of(paused: bool, hand: Option<&HandOver<'a>>, tokens: &'a [Option<i64>]) -> Writing<'a> {
        if paused {
            return Writing::Held;
        }
        Claiming::of(hand, tokens).map_or(Writing::Pending, Writing::Claiming)
    }

    pub(super) fn claiming(&self) -> Option<&Claiming<'a>> {
        match self {
            Writing::Claiming(c) => Some(c),
            Writing::Pending | Writing::Held => None,
        }
    }
}

/// An insert's columns set from `v` (`columns`, each as `v.column`), and those `writing` sets:
/// when claiming, the claim's (a row with a token is claimed, one without pending; `$owner`
/// and `$lease` are the claim's owner and lease as the dialect binds them); when held, `held`.
pub(super) fn inserted_columns(
    columns: &str,
    writing: &Writing<'_>,
    dialect: Dialect,
    owner: &str,
    lease: &str,
) -> (String, String) {
    let from_v = columns
        .split(", ")
        .map(|c| format!("v.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    match writing {
        Writing::Pending => return (columns.to_owned(), from_v),
        Writing::Held => return (format!("{columns}, held"), format!("{from_v}, TRUE")),
        Writing::Claiming(_) => {}
    }
    let now = db_now_ms(dialect);
    (
        format!("{columns}, state, lease_owner, lease_token, lease_until, attempts"),
        format!(
            "{from_v}, CASE WHEN v.lease_token IS NULL THEN 'pending' ELSE 'claimed' END, \
             CASE WHEN v.lease_token IS NULL THEN NULL ELSE {owner} END, v.lease_token, \
             CASE WHEN v.lease_token IS NULL THEN NULL ELSE {now} + {lease} END, \
             CASE WHEN v.lease_token IS NULL THEN 0 ELSE 1 END"
        ),
    )
}

/// The columns a planned row sets.
const PLANNED_COLUMNS: &str = "window_id, revision, notice, recipient_id, channel, endpoint_id, due_at, deadline";

/// The end of the insert: the told-once check where it is needed, and the idempotency key.
fn insert_tail(broadcasts: Broadcasts) -> String {
    match broadcasts {
        Broadcasts::MayReach => format!(" WHERE {NOT_TOLD_BY_BROADCAST}{SKIP_CONFLICTS}"),
        Broadcasts::NoneReach => super::UNCONDITIONAL_UPSERT.to_owned(),
    }
}

/// The window, revision and notice every row shares, if they all do (a fan-out's page).
fn shared_notice(rows: &[PlannedDelivery]) -> Option<(WindowId, u32, Notice)> {
    let first = rows.first()?;
    let shared = (first.window, first.revision, first.notice);
    rows.iter()
        .all(|d| (d.window, d.revision, d.notice) == shared)
        .then_some(shared)
}

impl InsertPlanned for sqlx::SqliteConnection {
    async fn insert_planned_as(
        &mut self,
        rows: &[PlannedDelivery],
        broadcasts: Broadcasts,
        writing: &Writing<'_>,
    ) -> Result<Inserted, sqlx::Error> {
        let mut inserted = Inserted::start(writing.claiming().is_some());
        for (n, chunk) in rows.chunks(ROWS_PER_STATEMENT).enumerate() {
            let mut qb = QueryBuilder::new("");
            push_sqlite_insert(&mut qb, chunk, n * ROWS_PER_STATEMENT, broadcasts, writing);
            inserted.add_sqlite(&qb.build().execute(&mut *self).await?, chunk.len());
        }
        Ok(inserted)
    }
}

/// Appends to `qb` SQLite's insert of `chunk`, the rows of a page from its `first` on.
///
/// The claim's owner and lease, and the values every row shares, are read by scalar subqueries
/// of one-row tables (each run once a statement), not joined with the rows: a join made SQLite
/// copy each statement's rows into a temporary table before inserting them, where the rows
/// alone are read as they are inserted.
fn push_sqlite_insert(
    qb: &mut QueryBuilder<sqlx::Sqlite>,
    chunk: &[PlannedDelivery],
    first: usize,
    broadcasts: Broadcasts,
    writing: &Writing<'_>,
) {
    let claiming = writing.claiming();
    let (columns, values) = inserted_columns(
        PLANNED_COLUMNS,
        writing,
        Dialect::Sqlite,
        "(SELECT owner FROM c)",
        "(SELECT lease FROM c)",
    );
    let token = |i: usize| claiming.and_then(|c| c.tokens.get(first + i).copied().flatten());
    qb.push("WITH ");
    if let Some(c) = claiming {
        qb.push("c (owner, lease) AS (SELECT ")
            .push_bind(c.owner)
            .push(", ")
            .push_bind(c.lease_ms)
            .push("), ");
    }
    let lease_token = if claiming.is_some() { ", lease_token" } else { "" };
    // The rows of a fan-out's page share their window, revision and notice: bound once for the
    // statement, not once a row (each bound value is copied in and cleared again on SQLite's
    // one writer, about 600 instructions).
    let shared = shared_notice(chunk);
    match shared {
        Some((window, revision, notice)) => {
            qb.push("s (window_id, revision, notice) AS (SELECT ")
                .push_bind(window.0)
                .push(", ")
                .push_bind(i64::from(revision))
                .push(", ")
                .push_bind(notice.to_string())
                .push(format!(
                    "), r (recipient_id, channel, endpoint_id, due_at, deadline{lease_token}) AS ("
                ));
        }
        None => {
            qb.push(format!(
                "v (window_id, revision, notice, recipient_id, channel, endpoint_id, due_at, deadline{lease_token}) AS ("
            ));
        }
    }
    qb.push_values(chunk.iter().enumerate(), |mut b, (i, d): (usize, &PlannedDelivery)| {
        if shared.is_none() {
            b.push_bind(d.window.0)
                .push_bind(i64::from(d.revision))
                .push_bind(d.notice.to_string());
        }
        b.push_bind(d.recipient.0)
            .push_bind(d.channel.as_str())
            .push_bind(d.endpoint)
            .push_bind(to_millis(d.due_at))
            .push_bind(to_millis(d.deadline));
        if claiming.is_some() {
            b.push_bind(token(i));
        }
    });
    qb.push(match shared {
        Some(_) => format!(
            "), v AS (SELECT (SELECT window_id FROM s) AS window_id, (SELECT revision FROM s) AS revision, \
             (SELECT notice FROM s) AS notice, r.recipient_id, r.channel, r.endpoint_id, \
             r.due_at, r.deadline{} FROM r)",
            if claiming.is_some() { ", r.lease_token" } else { "" }
        ),
        None => ")".to_owned(),
    });
    qb.push(format!(" INSERT INTO deliveries ({columns}) SELECT {values} FROM v"));
    qb.push(insert_tail(broadcasts));
}

impl WrittenClaimed for sqlx::SqliteConnection {
    /// SQLite finds claims by their rows' own lease.
    async fn record_claims(&mut self, _claiming: &Claiming<'_>, _tokens: &[i64]) -> Result<(), StoreError> {
        Ok(())
    }

    async fn written_claimed(&mut self, tokens: &[i64]) -> Result<Vec<(i64, i64, i64, String)>, StoreError> {
        // One row of JSON, as for a claim's read-back.
        let json: String = sqlx::query_scalar(
            "SELECT COALESCE(json_group_array(json_array(lease_token, id, recipient_id, channel)), '[]') FROM deliveries \
             WHERE lease_token IN (SELECT value FROM json_each($1)) AND state = 'claimed'",
        )
        .bind(json_ids(tokens))
        .fetch_one(&mut *self)
        .await?;
        serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("rows written claimed: {e}")))
    }
}

impl InsertPlanned for sqlx::PgConnection {
    /// One statement for the whole page: its columns bound as arrays and `unnest`ed inside
    /// the database, rather than thousands of bound values in a statement text.
    async fn insert_planned_as(
        &mut self,
        rows: &[PlannedDelivery],
        broadcasts: Broadcasts,
        writing: &Writing<'_>,
    ) -> Result<Inserted, sqlx::Error> {
        if rows.is_empty() {
            return Ok(Inserted::default());
        }
        let claiming = writing.claiming();
        let (columns, values) = inserted_columns(PLANNED_COLUMNS, writing, Dialect::Postgres, "$10", "$11");
        let (token_array, token_column) = if claiming.is_some() {
            (", $9::bigint[]", ", lease_token")
        } else {
            ("", "")
        };
        let column = |f: fn(&PlannedDelivery) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let sql = format!(
            "INSERT INTO deliveries ({columns}) SELECT {values} \
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[]{token_array}) \
             AS v (window_id, revision, notice, recipient_id, channel, endpoint_id, due_at, deadline{token_column}){}",
            insert_tail(broadcasts)
        );
        let query = |sql: String| {
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(column(|d| d.window.0))
                .bind(column(|d| i64::from(d.revision)))
                .bind(rows.iter().map(|d| d.notice.to_string()).collect::<Vec<String>>())
                .bind(column(|d| d.recipient.0))
                .bind(rows.iter().map(|d| d.channel.as_str()).collect::<Vec<&str>>())
                .bind(rows.iter().map(|d| d.endpoint).collect::<Vec<Option<i64>>>())
                .bind(column(|d| to_millis(d.due_at)))
                .bind(column(|d| to_millis(d.deadline)));
            if let Some(c) = claiming {
                let tokens: Vec<Option<i64>> = (0..rows.len()).map(|i| c.tokens.get(i).copied().flatten()).collect();
                q = q.bind(tokens).bind(c.owner.to_owned()).bind(c.lease_ms);
            }
            q
        };
        match broadcasts {
            Broadcasts::NoneReach => {
                // A page's rows share their notice: its text is made once, not for every row.
                let mut notice: Option<(Notice, String)> = None;
                let own = |out: &mut Vec<u8>, i: usize| {
                    let d = &rows[i];
                    if notice.as_ref().is_none_or(|(n, _)| *n != d.notice) {
                        notice = Some((d.notice, d.notice.to_string()));
                    }
                    copy_int(out, d.window.0);
                    out.push(b'\t');
                    copy_int(out, i64::from(d.revision));
                    out.push(b'\t');
                    copy_text(out, notice.as_ref().map_or("", |(_, text)| text));
                    out.push(b'\t');
                    copy_int(out, d.recipient.0);
                    out.push(b'\t');
                    copy_text(out, d.channel.as_str());
                    out.push(b'\t');
                    copy_opt_int(out, d.endpoint);
                    out.push(b'\t');
                    copy_int(out, to_millis(d.due_at));
                    out.push(b'\t');
                    copy_int(out, to_millis(d.deadline));
                };
                let page = CopyPage {
                    columns: PLANNED_COLUMNS,
                    rows: rows.len(),
                };
                copy_new_first(self, page, own, writing, || query(sql)).await
            }
            Broadcasts::MayReach => insert_new_first(self, sql, query).await,
        }
        .map(Inserted::counted)
    }
}

/// A page of rows to `COPY`: how many, and the columns each row's own fields fill, in order
/// (the columns `Writing` sets follow them).
pub(super) struct CopyPage {
    pub columns: &'static str,
    pub rows: usize,
}

/// PostgreSQL: writes a page with `COPY` under a savepoint, `own` writing row `i`'s own fields
/// in `COPY`'s text format; only if one of them is in the ledger already (a unique violation)
/// does it go back to the savepoint and run `skipping`, the insert that leaves such rows
/// alone. `COPY` has none of an `INSERT … SELECT`'s work per row (the arrays unnested, the
/// expressions of each column, `ON CONFLICT`'s speculative insertion): a 10,000-row page takes
/// about two thirds of the time (BENCHMARKS.md). It can check nothing against the ledger, so
/// it serves the pages whose rows only their idempotency key may keep out.
pub(super) async fn copy_new_first<'q>(
    conn: &mut sqlx::PgConnection,
    page: CopyPage,
    own: impl FnMut(&mut Vec<u8>, usize),
    writing: &Writing<'_>,
    skipping: impl FnOnce() -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<u64, sqlx::Error> {
    let mut savepoint = sqlx::Connection::begin(&mut *conn).await?;
    match copy_page(&mut savepoint, page, own, writing).await {
        Ok(copied) => {
            savepoint.commit().await?;
            Ok(copied)
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            savepoint.rollback().await?;
            Ok(skipping().execute(&mut *conn).await?.rows_affected())
        }
        Err(e) => Err(e),
    }
}

/// `COPY`s a page into the ledger, written as `writing` says; a claim's lease runs from the
/// database's clock read just before, as an insert's runs from the moment it writes.
async fn copy_page(
    conn: &mut sqlx::PgConnection,
    page: CopyPage,
    own: impl FnMut(&mut Vec<u8>, usize),
    writing: &Writing<'_>,
) -> Result<u64, sqlx::Error> {
    let (more, leased_until) = match writing {
        Writing::Pending => ("", None),
        Writing::Held => (", held", None),
        Writing::Claiming(c) => {
            let now: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT {}", db_now_ms(Dialect::Postgres))))
                .fetch_one(&mut *conn)
                .await?;
            (
                ", state, lease_owner, lease_token, lease_until, attempts",
                Some(now.saturating_add(c.lease_ms)),
            )
        }
    };
    let data = copy_text_rows(page.rows, own, writing, leased_until.unwrap_or_default());
    let mut copy = conn
        .copy_in_raw(&format!("COPY deliveries ({}{more}) FROM STDIN", page.columns))
        .await?;
    copy.send(data).await?;
    copy.finish().await
}

/// `rows` rows in `COPY`'s text format: each one's own fields as `own` writes them, then the
/// columns `writing` sets (see `copy_page`); a claimed row's lease lapses at `lease_until`.
fn copy_text_rows(
    rows: usize,
    mut own: impl FnMut(&mut Vec<u8>, usize),
    writing: &Writing<'_>,
    lease_until: i64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows * 96);
    for i in 0..rows {
        own(&mut out, i);
        match writing {
            Writing::Pending => {}
            Writing::Held => out.extend_from_slice(b"\tt"),
            Writing::Claiming(c) => match c.tokens.get(i).copied().flatten() {
                Some(token) => {
                    out.extend_from_slice(b"\tclaimed\t");
                    copy_text(&mut out, c.owner);
                    out.push(b'\t');
                    copy_int(&mut out, token);
                    out.push(b'\t');
                    copy_int(&mut out, lease_until);
                    out.extend_from_slice(b"\t1");
                }
                None => out.extend_from_slice(b"\tpending\t\\N\t\\N\t\\N\t0"),
            },
        }
        out.push(b'\n');
    }
    out
}

/// `n` as a field of `COPY`'s text format.
pub(super) fn copy_int(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n`, or SQL's null, as a field of `COPY`'s text format.
pub(super) fn copy_opt_int(out: &mut Vec<u8>, n: Option<i64>) {
    match n {
        Some(n) => copy_int(out, n),
        None => out.extend_from_slice(b"\\N"),
    }
}

/// `text` as a field of `COPY`'s text format: backslash, tab, newline and carriage return
/// escaped.
pub(super) fn copy_text(out: &mut Vec<u8>, text: &str) {
    for b in text.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// How a planned insert leaves alone the rows already in the ledger (by idempotency key).
const SKIP_CONFLICTS: &str = " ON CONFLICT DO NOTHING";

/// PostgreSQL: runs `sql`, an insert ending in `ON CONFLICT DO NOTHING` and built with its
/// values by `query`, first without that clause under a savepoint; only if one of its rows is
/// in the ledger already (a unique violation) does it go back to the savepoint and run it as
/// it is. `ON CONFLICT` makes every row a speculative insertion (a check of each unique index
/// before the row is written, a token on the row, one more WAL record to confirm it): about
/// a third of a 10,000-row page's time in the server. A page planned for the first time, as
/// nearly all are, has no row in the ledger; one planned again after its lease lapsed, or a
/// broadcast resumed, pays for its plain try and is written as before.
pub(super) async fn insert_new_first<'q>(
    conn: &mut sqlx::PgConnection,
    sql: String,
    query: impl Fn(String) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<u64, sqlx::Error> {
    let Some(plain) = sql.strip_suffix(SKIP_CONFLICTS) else {
        return Ok(query(sql).execute(&mut *conn).await?.rows_affected());
    };
    let mut savepoint = sqlx::Connection::begin(&mut *conn).await?;
    match query(plain.to_owned()).execute(&mut *savepoint).await {
        Ok(done) => {
            savepoint.commit().await?;
            Ok(done.rows_affected())
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            savepoint.rollback().await?;
            Ok(query(sql).execute(&mut *conn).await?.rows_affected())
        }
        Err(e) => Err(e),
    }
}

impl WrittenClaimed for sqlx::PgConnection {
    async fn record_claims(&mut self, claiming: &Claiming<'_>, tokens: &[i64]) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO claims (lease_token, lease_owner, lease_until) SELECT DISTINCT t, $2, {} + $3 FROM unnest($1::bigint[]) AS t",
            db_now_ms(Dialect::Postgres)
        )))
        .bind(tokens)
        .bind(claiming.owner)
        .bind(claiming.lease_ms)
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn written_claimed(&mut self, tokens: &[i64]) -> Result<Vec<(i64, i64, i64, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT lease_token, id, recipient_id, channel FROM deliveries WHERE lease_token = ANY($1) AND state = 'claimed' AND leased",
        )
        .bind(tokens)
        .fetch_all(&mut *self)
        .await?)
    }
}

/// A row recorded sent: when it was handed over, how long the backend's call took, the
/// provider's id for it if any, and the body it was sent with.
#[derive(Debug, Clone, Copy)]
struct SentRow<'a> {
    id: i64,
    at: DateTime<Utc>,
    latency_ms: i64,
    provider_id: Option<&'a str>,
    body_id: Option<i64>,
}

impl SentRow<'_> {
    /// The successful try behind this row, as the attempts log keeps it.
    fn unrecorded_attempt(&self, backend: &str) -> Attempt {
        Attempt {
            delivery: self.id,
            at: self.at,
            backend: backend.to_owned(),
            outcome: "sent",
            status: None,
            latency_ms: u64::try_from(self.latency_ms).unwrap_or_default(),
            provider_id: self.provider_id.map(str::to_owned),
            error: None,
        }
    }
}

/// At most this many rows are recorded sent by one statement, so a batch of the default size
/// (2,000) is one. Its rows are bound as a few values (a JSON array for SQLite, arrays for
/// PostgreSQL), not a placeholder each, so no limit on placeholders applies.
const SENT_PER_STATEMENT: usize = 4 * ROWS_PER_STATEMENT;

/// Recording rows sent through one backend: one statement whose rows are bound as one value
/// each column (a JSON array for SQLite, arrays for PostgreSQL), so its text is prepared once.
/// Each row names its own body, so a batch whose recipients read different bodies (languages,
/// time zones) is still one statement, its rows in the order of their ids: a statement for
/// each body rewrote every page of the batch once for each body.
trait MarkSent {
    /// Marks the rows still claimed under `token` sent; how many it marked.
    async fn mark_sent(&mut self, token: i64, rows: &[SentRow<'_>], backend: &str) -> Result<u64, sqlx::Error>;
    /// Which of `ids` are not recorded sent under `token`.
    async fn not_sent_under(&mut self, token: i64, ids: &[i64]) -> Result<Vec<i64>, sqlx::Error>;
    /// Has the statements that follow in this transaction run on plans that look each row up,
    /// whatever the size of the ledger and of the batch.
    async fn rows_looked_up(&mut self) -> Result<(), sqlx::Error>;
    /// Forgets the claim `token` once none of its rows is still claimed, where the store keeps
    /// claims apart from rows (PostgreSQL's `claims`, migration `sent_in_place`).
    async fn forget_if_settled(&mut self, token: i64) -> Result<(), sqlx::Error>;
}

/// The start of SQLite's statements that record rows sent ($1 the backend, $2 the token, $3
/// the rows as JSON): the sent row's lease is cleared and its token kept (see `finish`).
/// PostgreSQL's statement is `sql/postgres/mark_sent.sql`.
macro_rules! sqlite_mark_sent {
    () => {
        "UPDATE deliveries SET state = 'sent', backend = $1, last_error = NULL, lease_until = NULL, "
    };
}

impl MarkSent for sqlx::SqliteConnection {
    /// SQLite's plans for these statements use the primary key whatever the table's size.
    async fn rows_looked_up(&mut self) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// SQLite finds claims by their rows' own lease: nothing to forget.
    async fn forget_if_settled(&mut self, _token: i64) -> Result<(), sqlx::Error> {
        Ok(())
    }

    async fn mark_sent(&mut self, token: i64, rows: &[SentRow<'_>], backend: &str) -> Result<u64, sqlx::Error> {
        // Rows handed over together with no provider ids (a file, a bulk request) share one
        // time and one call: their ids, and their bodies where those differ, are all the
        // statement needs, which SQLite reads far faster.
        if let Some(first) = rows.first()
            && rows
                .iter()
                .all(|r| r.at == first.at && r.latency_ms == first.latency_ms && r.provider_id.is_none())
        {
            let query = if rows.iter().all(|r| r.body_id == first.body_id) {
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                sqlx::query(concat!(
                    sqlite_mark_sent!(),
                    "sent_at = $4, sent_latency_ms = $5, body_id = $6 \
                     WHERE state = 'claimed' AND lease_token = $2 AND id IN (SELECT value FROM json_each($3))"
                ))
                .bind(backend)
                .bind(token)
                .bind(json_ids(&ids))
                .bind(to_millis(first.at))
                .bind(first.latency_ms)
                .bind(first.body_id)
            } else if let Some((bodies, packed)) = packed_bodies(rows) {
                // Each row as one number, its id and its body's place in $6; the unary `+`s
                // as below.
                sqlx::query(concat!(
                    sqlite_mark_sent!(),
                    "sent_at = $4, sent_latency_ms = $5, body_id = v.body \
                     FROM (SELECT value >> 8 AS id, $6 ->> (value & 255) AS body FROM json_each($3)) AS v \
                     WHERE deliveries.id = v.id AND +deliveries.state = 'claimed' AND +deliveries.lease_token = $2"
                ))
                .bind(backend)
                .bind(token)
                .bind(json_ids(&packed))
                .bind(to_millis(first.at))
                .bind(first.latency_ms)
                .bind(serde_json::Value::from(bodies).to_string())
            } else {
                return mark_sent_each(self, token, rows, backend).await;
            };
            return Ok(query.execute(&mut *self).await?.rows_affected());
        }
        mark_sent_each(self, token, rows, backend).await
    }

    async fn not_sent_under(&mut self, token: i64, ids: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT value FROM json_each($1) WHERE value NOT IN (SELECT id FROM deliveries \
             WHERE state = 'sent' AND lease_token = $2 AND id IN (SELECT value FROM json_each($1)))",
        )
        .bind(json_ids(ids))
        .bind(token)
        .fetch_all(&mut *self)
        .await
    }
}

/// `rows` as SQLite's statement for rows of several bodies reads them: the distinct bodies, in
/// the order they first come, and each row as `id × 256 + its body's place` among them. `None`
/// if there are more than 256 bodies, or an id is negative or too large to be so written.
fn packed_bodies(rows: &[SentRow<'_>]) -> Option<(Vec<Option<i64>>, Vec<i64>)> {
    let mut bodies: Vec<Option<i64>> = Vec::new();
    let mut packed = Vec::with_capacity(rows.len());
    for r in rows {
        let place = match bodies.iter().position(|b| *b == r.body_id) {
            Some(place) => place,
            None if bodies.len() < 256 => {
                bodies.push(r.body_id);
                bodies.len() - 1
            }
            None => return None,
        };
        let id = r.id.checked_mul(256).filter(|_| r.id >= 0)?;
        packed.push(id | place as i64);
    }
    Some((bodies, packed))
}

/// SQLite's record of rows sent each with its own time, latency, provider id and body.
async fn mark_sent_each(
    conn: &mut sqlx::SqliteConnection,
    token: i64,
    rows: &[SentRow<'_>],
    backend: &str,
) -> Result<u64, sqlx::Error> {
    let json = serde_json::Value::from(
        rows.iter()
            .map(|r| serde_json::json!([r.id, to_millis(r.at), r.provider_id, r.latency_ms, r.body_id]))
            .collect::<Vec<_>>(),
    )
    .to_string();
    // The unary `+`s keep SQLite from reaching the rows through the claimed rows' index and
    // scanning the JSON for each: it walks the JSON and looks each row up by its id. A
    // provider id from an earlier attempt stays unless this one has its own.
    Ok(sqlx::query(concat!(
        sqlite_mark_sent!(),
        "sent_at = v.at, sent_latency_ms = v.latency, provider_id = COALESCE(v.pid, deliveries.provider_id), \
         body_id = v.body FROM (SELECT value ->> 0 AS id, value ->> 1 AS at, value ->> 2 AS pid, value ->> 3 AS latency, \
         value ->> 4 AS body FROM json_each($3)) AS v \
         WHERE deliveries.id = v.id AND +deliveries.state = 'claimed' AND +deliveries.lease_token = $2"
    ))
    .bind(backend)
    .bind(token)
    .bind(json)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

impl MarkSent for sqlx::PgConnection {
    /// The generic plans, made without the statement's values: recording a batch sent then
    /// looks each of its rows up by id (`mark_sent.sql`, and the test
    /// `marking_a_batch_sent_on_postgres_looks_its_rows_up_by_id_in_the_generic_plan`).
    /// PostgreSQL makes a statement's first five runs on each connection custom plans, for the
    /// 2,000 ids at hand, and on a ledger of a few hundred thousand rows or fewer those read
    /// the whole ledger for each statement: a hash of the ids over a sequential scan, or, with
    /// sequential scans off, a scan of the whole primary key with the ids looped over for each
    /// row (up to 1.3 s a statement). At 100,000 the whole run took three to four times as
    /// long, and the first seconds of every run were slow (BENCHMARKS.md, *4 December, night*).
    async fn rows_looked_up(&mut self) -> Result<(), sqlx::Error> {
        sqlx::query("SET LOCAL plan_cache_mode = force_generic_plan")
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    /// A claim's rows are counted through the token index, which keeps the rows it sent (see
    /// `forget_if_settled.sql`). A claim kept until it lapsed cost more: every tick then read
    /// every row sent since the last under the claims lapsed meanwhile, and the end of a run
    /// read every row of the run (BENCHMARKS.md, *4 December, night*).
    async fn forget_if_settled(&mut self, token: i64) -> Result<(), sqlx::Error> {
        sqlx::query(include_str!("sql/postgres/forget_if_settled.sql"))
            .bind(token)
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn mark_sent(&mut self, token: i64, rows: &[SentRow<'_>], backend: &str) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(include_str!("sql/postgres/mark_sent.sql"))
            .bind(backend)
            .bind(token)
            .bind(rows.iter().map(|r| r.id).collect::<Vec<i64>>())
            .bind(rows.iter().map(|r| to_millis(r.at)).collect::<Vec<i64>>())
            .bind(rows.iter().map(|r| r.provider_id).collect::<Vec<Option<&str>>>())
            .bind(rows.iter().map(|r| r.latency_ms).collect::<Vec<i64>>())
            .bind(rows.iter().map(|r| r.body_id).collect::<Vec<Option<i64>>>())
            .execute(&mut *self)
            .await?
            .rows_affected())
    }

    async fn not_sent_under(&mut self, token: i64, ids: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT i FROM unnest($1::bigint[]) AS i WHERE i NOT IN (SELECT id FROM deliveries \
             WHERE state = 'sent' AND lease_token = $2 AND id = ANY($1))",
        )
        .bind(ids)
        .bind(token)
        .fetch_all(&mut *self)
        .await
    }
}

impl Store {
    /// Enqueues planned deliveries in one transaction. Rows already queued (same idempotency
    /// key) are left alone. Returns how many rows were new. A paused window's rows are written
    /// pending, not held (claims pass over them all the same); its fan-out writes them held.
    pub async fn enqueue(&self, rows: &[PlannedDelivery]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let inserted = tx.insert_planned(rows, Broadcasts::MayReach).await?;
            tx.commit().await?;
            Ok(inserted)
        })
    }

    /// Enqueues one page of a fan-out and records how far it got, in one transaction — if the
    /// window is still at the page's revision and the fan-out's progress is where the page
    /// follows on from (`read_from`). The window's row is locked first, so a change either
    /// commits before (and the page is refused: `None`) or waits until after (and supersedes
    /// the page's rows with the rest). On PostgreSQL the lock is shared: two pages can be
    /// written at once, the later one waiting for the earlier to commit only to record its
    /// progress, and refused if the earlier did not.
    pub async fn enqueue_page(&self, page: &FanOutPage, rows: &[PlannedDelivery]) -> Result<Option<u64>, StoreError> {
        Ok(self.enqueue_page_handing(page, rows, None).await?.map(|w| w.inserted))
    }

    /// `enqueue_page`, writing the rows `hand` can take claimed already, in batches under new
    /// tokens, for the caller to hand to its own lanes: those due at `hand.now` and before
    /// their deadline, not to a webhook endpoint, of a window not paused. Each such row is
    /// written once instead of twice (pending, then claimed) and need not be read back. A
    /// paused window's rows are written held, out of the claims' way until it resumes.
    pub async fn enqueue_page_handing(
        &self,
        page: &FanOutPage,
        rows: &[PlannedDelivery],
        hand: Option<&HandOver<'_>>,
    ) -> Result<Option<WrittenPage>, StoreError> {
        self.enqueue_page_after(page, rows, hand, None).await
    }

    /// `enqueue_page_handing`, written while the page before it may still be: its rows are
    /// inserted at once, but its progress is recorded only once `earlier` says the page
    /// before committed; if that page did not (`earlier` dropped), nothing of this one is
    /// written (`None`). On SQLite pass no `earlier`: the page would wait holding the one
    /// writer's turn.
    pub async fn enqueue_page_after(
        &self,
        page: &FanOutPage,
        rows: &[PlannedDelivery],
        hand: Option<&HandOver<'_>>,
        earlier: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Result<Option<WrittenPage>, StoreError> {
        // Sending goes on beside planning: on SQLite the two take turns to write.
        on_writer!(self, p => {
            let mut tx = p.begin().await?;
            let lock = match self.dialect() {
                Dialect::Sqlite => "UPDATE windows SET revision = revision WHERE id = $1 AND revision = $2",
                Dialect::Postgres => "SELECT 1 FROM windows WHERE id = $1 AND revision = $2 FOR SHARE",
            };
            let current = sqlx::query(lock)
                .bind(page.window.0)
                .bind(i64::from(page.revision))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if current != 1 {
                tx.rollback().await?;
                return Ok(None);
            }
            // Under the window's lock, which a broadcast of the window takes too before it
            // enqueues: one with no rows by now adds none before this page commits, and it
            // then sees this page's rows.
            let (broadcast, paused): (bool, bool) = sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM broadcasts WHERE window_id = $1), \
                 EXISTS (SELECT 1 FROM paused_windows WHERE window_id = $1)",
            )
            .bind(page.window.0)
            .fetch_one(&mut *tx)
            .await?;
            let broadcasts = if broadcast { Broadcasts::MayReach } else { Broadcasts::NoneReach };
            let tokens = match hand {
                Some(hand) if !paused => hand.tokens(rows.iter().map(|r| (r.due_at, r.deadline, r.endpoint.is_some()))),
                _ => Vec::new(),
            };
            let writing = Writing::of(paused, hand, &tokens);
            let inserted = tx.insert_planned_as(rows, broadcasts, &writing).await?;
            let planned = rows.iter().map(|r| (r.recipient, r.channel));
            let claimed = claimed_after(&mut *tx, &writing, inserted.ids.as_deref(), planned).await?;
            if let Some(earlier) = earlier
                && earlier.await.is_err()
            {
                tx.rollback().await?;
                return Ok(None);
            }
            let followed = sqlx::query(
                "UPDATE window_notices SET fanned_out_to = $5 \
                 WHERE window_id = $1 AND revision = $2 AND notice = $3 AND audience = $4 AND fanned_out_to = $6",
            )
            .bind(page.window.0)
            .bind(i64::from(page.revision))
            .bind(page.notice.to_string())
            .bind(page.audience.as_str())
            .bind(page.read_up_to.0)
            .bind(page.read_from.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if followed != 1 {
                tx.rollback().await?;
                return Ok(None);
            }
            tx.commit().await?;
            Ok(Some(WrittenPage {
                inserted: inserted.count,
                claimed,
            }))
        })
    }

    /// The rows a window's notice has in the queue already, per channel (its own rows, not a
    /// broadcast's): where a resumed fan-out's pacing goes on from.
    pub async fn enqueued_per_channel(
        &self,
        window: WindowId,
        revision: u32,
        notice: Notice,
        audience: Audience,
    ) -> Result<std::collections::BTreeMap<crate::domain::Channel, u64>, StoreError> {
        let rows: Vec<(String, i64)> = on_pool!(self, p => sqlx::query_as(
            "SELECT d.channel, COUNT(*) FROM deliveries d JOIN recipients r ON r.id = d.recipient_id \
             WHERE d.window_id = $1 AND d.revision = $2 AND d.notice = $3 AND d.broadcast_id IS NULL AND r.kind = $4 \
             GROUP BY d.channel",
        )
        .bind(window.0)
        .bind(i64::from(revision))
        .bind(notice.to_string())
        .bind(audience.as_str())
        .fetch_all(p)
        .await?);
        rows.into_iter()
            .map(|(c, n)| {
                let channel = c
                    .parse()
                    .map_err(|e: crate::domain::RecipientError| StoreError::Corrupt(e.to_string()))?;
                Ok((channel, u64::try_from(n).unwrap_or_default()))
            })
            .collect()
    }

    /// The earliest slot of a delivery still to be sent before its deadline (at `now` or
    /// before it if one is waiting already), windows paused left out: when the daemon has work
    /// again, if sooner than its next tick.
    pub async fn next_slot(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StoreError> {
        let at: Option<i64> = on_pool!(self, p => sqlx::query_scalar(
            "SELECT due_at FROM deliveries WHERE state = 'pending' AND waiting AND NOT held AND deadline > $1 \
             AND (window_id IS NULL OR window_id NOT IN (SELECT window_id FROM paused_windows)) \
             ORDER BY due_at LIMIT 1",
        )
        .bind(to_millis(now))
        .fetch_optional(p)
        .await?);
        at.map(|ms| crate::domain::from_millis(ms).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    /// Marks every unsent delivery whose deadline has passed as expired.
    pub async fn expire_due(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(on_writer!(self, p => sqlx::query(
            "UPDATE deliveries SET state = 'expired', last_error = COALESCE(last_error, 'deadline passed before it could be sent') \
             WHERE state = 'pending' AND waiting AND deadline <= $1",
        )
        .bind(to_millis(now))
        .execute(p)
        .await?
        .rows_affected()))
    }

    /// Settles claims whose lease lapsed on the database's clock (their worker died or
    /// stalled). Any of them may have gone out, so each is flagged: back to the queue, or
    /// expired if its deadline (on the injected clock, `now`) has passed, or superseded if its
    /// window has moved on.
    pub async fn release_lapsed_claims(&self, now: DateTime<Utc>) -> Result<Released, StoreError> {
        let lapsed = format!("lease_until <= {}", db_now_ms(self.dialect()));
        self.release_where(&lapsed, None, now).await
    }

    /// Settles every claim held by another daemon (`owner` prefix `daemon@`, not `me`): a SQLite
    /// daemon that holds the lock knows the previous one is dead, and need not wait out its
    /// lease.
    pub async fn release_dead_daemons(&self, me: &str, now: DateTime<Utc>) -> Result<Released, StoreError> {
        self.release_where("lease_owner LIKE 'daemon@%' AND lease_owner <> $2", Some(me), now)
            .await
    }

    async fn release_where(&self, which: &str, me: Option<&str>, now: DateTime<Utc>) -> Result<Released, StoreError> {
        // Each statement binds the same parameters ($1 the injected now, $2 the daemon's own
        // name when given); `$1 = $1` names $1 where a statement has no other use for it, since
        // a bound parameter the text never names is an error.
        let stale =
            "window_id IS NOT NULL AND revision < (SELECT w.revision FROM windows w WHERE w.id = deliveries.window_id)";
        let settle = [
            (
                "state = 'superseded', possibly_duplicate = TRUE, lease_owner = NULL, lease_until = NULL, \
                 lease_token = NULL, last_error = 'the window moved on; the claim lapsed, so it may have been sent before the crash'",
                format!("{stale} AND $1 = $1"),
            ),
            (
                "state = 'expired', possibly_duplicate = TRUE, lease_owner = NULL, lease_until = NULL, \
                 lease_token = NULL, last_error = 'the claim lapsed after the deadline: may have been sent before the crash'",
                "deadline <= $1".to_owned(),
            ),
            (
                "state = 'pending', possibly_duplicate = TRUE, lease_owner = NULL, lease_until = NULL, lease_token = NULL",
                "$1 = $1".to_owned(),
            ),
        ];
        // On PostgreSQL, rows another transaction holds are passed over, not waited for: a
        // daemon stalled in the middle of writing its claimed rows (paused, swapped out) would
        // otherwise hold up every other daemon's tick until it woke. They are settled at a
        // later tick, once it lets go (or its connection is gone). There the claims are chosen
        // by their own rows in `claims` (`which` names the same columns), and the rows found by
        // their tokens; a claim's row goes once none of its rows is still claimed, those
        // passed over included. The tokens are read first (`ARRAY(…)`, run once) and their
        // rows looked up in the token index: as a join, under statistics taken while the rows
        // were pending, the plan could be a scan of that whole index, which keeps every row
        // sent.
        let statements = settle.map(|(set, cond)| match self.dialect() {
            Dialect::Sqlite => format!("UPDATE deliveries SET {set} WHERE state = 'claimed' AND {which} AND {cond}"),
            Dialect::Postgres => format!(
                "UPDATE deliveries SET {set} WHERE id IN (SELECT id FROM deliveries \
                 WHERE lease_token = ANY(ARRAY(SELECT lease_token FROM claims WHERE {which})) \
                 AND state = 'claimed' AND leased AND {cond} FOR UPDATE SKIP LOCKED)"
            ),
        });
        // A claim's rows are counted, as in `forget_if_settled.sql`, rather than looked for with
        // `NOT EXISTS`, whose plan could scan the whole ledger for an early match.
        let forget = (self.dialect() == Dialect::Postgres).then(|| {
            format!(
                "DELETE FROM claims c WHERE {which} AND $1 = $1 AND (SELECT COUNT(*) FROM deliveries d \
                 WHERE d.lease_token = c.lease_token AND d.state = 'claimed' AND d.leased) = 0"
            )
        });
        let mut counts = [0u64; 3];
        on_writer!(self, p => {
            let mut tx = p.begin().await?;
            for (sql, count) in statements.into_iter().zip(counts.iter_mut()) {
                let mut q = sqlx::query(AssertSqlSafe(sql)).bind(to_millis(now));
                if let Some(me) = me {
                    q = q.bind(me.to_owned());
                }
                *count = q.execute(&mut *tx).await?.rows_affected();
            }
            if let Some(sql) = &forget {
                let mut q = sqlx::query(AssertSqlSafe(sql.clone())).bind(to_millis(now));
                if let Some(me) = me {
                    q = q.bind(me.to_owned());
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        let [superseded, expired, returned] = counts;
        Ok(Released {
            returned,
            expired,
            superseded,
        })
    }

    /// Claims up to `limit` deliveries due at `now` (and before their deadline) for `owner`, for
    /// `lease` of real time, oldest due first, under a new token. Only rows past `after` in
    /// claim order are looked at; [`Position::FRONT`] looks at them all.
    pub async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: i64,
        owner: &str,
        lease: Duration,
        only_broadcast: Option<i64>,
        after: Position,
    ) -> Result<Claim, StoreError> {
        let claim = match self.dialect() {
            Dialect::Sqlite => include_str!("sql/sqlite/claim.sql"),
            Dialect::Postgres => include_str!("sql/postgres/claim.sql"),
        };
        let token = new_token();
        // SQLite's claim is an update; PostgreSQL's also records the claim, and counts its rows.
        let claimed = on_writer!(self, p => {
            let query = sqlx::query(claim)
                .bind(owner)
                .bind(millis(lease))
                .bind(to_millis(now))
                .bind(limit)
                .bind(only_broadcast)
                .bind(token)
                .bind(after.due_at)
                .bind(after.id);
            match self.dialect() {
                Dialect::Sqlite => query.execute(p).await?.rows_affected(),
                Dialect::Postgres => {
                    let taken: i64 = sqlx::Row::try_get(&query.fetch_one(p).await?, 0)?;
                    u64::try_from(taken).unwrap_or_default()
                }
            }
        });
        // The rows are read back once the claim has committed, outside this process's turn to
        // write: on SQLite another connection reads them while the writer goes on with the next
        // statement. Nothing but this token's holder settles a claimed row until its lease
        // lapses, so they are all still there.
        let rows = if claimed == 0 {
            Vec::new()
        } else {
            match self
                .read_claimed(token, usize::try_from(claimed).unwrap_or_default())
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    // Unread, they were never handed to a sender: back to the queue as they were,
                    // rather than left to lapse and come back flagged as possibly sent.
                    if let Err(again) = self.give_back(token).await {
                        tracing::warn!(token, error = %again, "claimed rows could not be given back; they return when their lease lapses");
                    }
                    return Err(e);
                }
            }
        };
        let oldest_due = rows
            .iter()
            .map(|r| r.due_at)
            .min()
            .and_then(|ms| crate::domain::from_millis(ms).ok());
        let last = rows
            .iter()
            .map(|r| Position {
                due_at: r.due_at,
                id: r.id,
            })
            .max();
        Ok(Claim {
            token,
            rows: rows.into_iter().map(ClaimRow::parse).collect(),
            oldest_due,
            last,
        })
    }

    async fn read_claimed(&self, token: i64, expected: usize) -> Result<Vec<ClaimRow>, StoreError> {
        on_pool!(self, p => p.acquire().await?.read_claimed(token, expected).await)
    }

    /// Returns every row still claimed under `token` to the queue, as if the claim had not been
    /// (a claim that could not be read back, a batch written claimed that no lane took).
    pub async fn give_back(&self, token: i64) -> Result<u64, StoreError> {
        Ok(on_writer!(self, p => {
            let mut tx = p.begin().await?;
            let returned = sqlx::query(
                "UPDATE deliveries SET state = 'pending', attempts = attempts - 1, lease_owner = NULL, lease_until = NULL, \
                 lease_token = NULL WHERE lease_token = $1 AND state = 'claimed' AND leased",
            )
            .bind(token)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.forget_if_settled(token).await?;
            tx.commit().await?;
            returned
        }))
    }

    /// Extends the lease of every row still claimed under `token` by `lease` from now (the
    /// database's clock). Returns how many rows it renewed.
    ///
    /// It may run while the token's holder records their outcomes. On PostgreSQL the rows that
    /// transaction has locked are passed over rather than waited for: the two would lock the
    /// same rows in different orders, and one of them would be aborted as a deadlock.
    pub async fn renew(&self, token: i64, lease: Duration) -> Result<u64, StoreError> {
        let until = format!("lease_until = {} + $2", db_now_ms(self.dialect()));
        let sql = match self.dialect() {
            Dialect::Sqlite => format!("UPDATE deliveries SET {until} WHERE lease_token = $1 AND state = 'claimed'"),
            // The claim's own row too: its lease is the one lapsed claims are looked for by.
            Dialect::Postgres => format!(
                "WITH renewed AS (UPDATE claims SET {until} WHERE lease_token = $1) \
                 UPDATE deliveries SET {until} WHERE id IN (SELECT id FROM deliveries \
                 WHERE lease_token = $1 AND state = 'claimed' AND leased FOR UPDATE SKIP LOCKED)"
            ),
        };
        Ok(on_writer!(self, p => sqlx::query(AssertSqlSafe(sql))
            .bind(token)
            .bind(millis(lease))
            .execute(p)
            .await?
            .rows_affected()))
    }

    /// How many rows `owner` holds claimed.
    pub async fn claimed_by(&self, owner: &str) -> Result<u64, StoreError> {
        let sql = match self.dialect() {
            Dialect::Sqlite => "SELECT COUNT(*) FROM deliveries WHERE state = 'claimed' AND lease_owner = $1",
            Dialect::Postgres => {
                "SELECT COUNT(*) FROM deliveries WHERE lease_token = ANY(ARRAY(SELECT lease_token FROM claims WHERE lease_owner = $1)) \
                 AND state = 'claimed' AND leased"
            }
        };
        let n: i64 = on_pool!(self, p => sqlx::query_scalar(sql)
        .bind(owner)
        .fetch_one(p)
        .await?);
        Ok(u64::try_from(n).unwrap_or_default())
    }

    /// Stores a rendered body once per cache key and returns its id.
    pub async fn body_id(&self, cache_key: &str, content: &str) -> Result<i64, StoreError> {
        on_writer!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query("INSERT INTO bodies (cache_key, content) VALUES ($1, $2) ON CONFLICT (cache_key) DO NOTHING")
                .bind(cache_key)
                .bind(content)
                .execute(&mut *tx)
                .await?;
            let id = sqlx::query_scalar("SELECT id FROM bodies WHERE cache_key = $1").bind(cache_key).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok(id)
        })
    }

    /// Records how each delivery claimed under `token` ended this attempt, in one transaction.
    /// Only rows still claimed under that token are touched: a row whose lease lapsed and was
    /// taken over, or that was settled otherwise meanwhile, keeps what its new owner records.
    /// Returns the ids that were not recorded. A row recorded sent keeps the token of the claim
    /// that sent it (its lease is cleared); rows leaving otherwise lose it.
    pub async fn finish(&self, token: i64, outcomes: &[Finish]) -> Result<Vec<i64>, StoreError> {
        self.finish_with_attempts(token, outcomes, &[]).await
    }

    /// `finish`, appending the batch's attempts to the log in the same transaction.
    ///
    /// `attempts` are the tries that did not end a row sent: a row's successful try is kept
    /// on the row itself (`Finish::Sent` carries what the log would). Where a sent row is not
    /// recorded (its claim lapsed), its success goes to the log instead, so no try is lost.
    pub async fn finish_with_attempts(
        &self,
        token: i64,
        outcomes: &[Finish],
        attempts: &[Attempt],
    ) -> Result<Vec<i64>, StoreError> {
        // Sent rows, the common case, are one statement per backend rather than one per row.
        let mut sent: std::collections::BTreeMap<&str, Vec<SentRow<'_>>> = Default::default();
        let mut others = Vec::new();
        for f in outcomes {
            match f {
                Finish::Sent {
                    id,
                    at,
                    backend,
                    provider_id,
                    body_id,
                    latency,
                } => sent.entry(backend.as_str()).or_default().push(SentRow {
                    id: *id,
                    at: *at,
                    latency_ms: i64::try_from(latency.as_millis()).unwrap_or(i64::MAX),
                    provider_id: provider_id.as_deref(),
                    body_id: *body_id,
                }),
                other => others.push(other),
            }
        }
        let mut lost = Vec::new();
        // The successes of rows that were not recorded sent, for the log.
        let mut unrecorded: Vec<Attempt> = Vec::new();
        on_writer!(self, p => {
            let mut tx = p.begin().await?;
            tx.rows_looked_up().await?;
            for (backend, rows) in &mut sent {
                // In the order of their ids, so the rows are rewritten page by page.
                rows.sort_unstable_by_key(|r| r.id);
                for chunk in rows.chunks(SENT_PER_STATEMENT) {
                    // The row keeps its token, so the ids this statement did not reach can be
                    // told apart from those it did when fewer rows changed than were named.
                    let done = tx.mark_sent(token, chunk, backend).await?;
                    if done != chunk.len() as u64 {
                        let ids: Vec<i64> = chunk.iter().map(|r| r.id).collect();
                        let missed = tx.not_sent_under(token, &ids).await?;
                        unrecorded.extend(
                            chunk
                                .iter()
                                .filter(|r| missed.contains(&r.id))
                                .map(|r| r.unrecorded_attempt(backend)),
                        );
                        lost.extend(missed);
                    }
                }
            }
            for f in others {
                let q = match f {
                    // Recorded above.
                    Finish::Sent { .. } => continue,
                    Finish::Retry { id, at, error, maybe_sent } => sqlx::query(
                        "UPDATE deliveries SET state = 'pending', due_at = $3, last_error = $4, lease_owner = NULL, lease_until = NULL, \
                         lease_token = NULL, possibly_duplicate = (possibly_duplicate OR $5) \
                         WHERE id = $1 AND state = 'claimed' AND lease_token = $2",
                    )
                    .bind(*id)
                    .bind(token)
                    .bind(to_millis(*at))
                    .bind(error.clone())
                    .bind(*maybe_sent),
                    Finish::Failed { id, error } | Finish::Expired { id, error } | Finish::Superseded { id, error } => {
                        let state = match f {
                            Finish::Failed { .. } => "failed",
                            Finish::Expired { .. } => "expired",
                            _ => "superseded",
                        };
                        sqlx::query(
                            "UPDATE deliveries SET state = $3, last_error = $4, lease_owner = NULL, lease_until = NULL, \
                             lease_token = NULL WHERE id = $1 AND state = 'claimed' AND lease_token = $2",
                        )
                        .bind(*id)
                        .bind(token)
                        .bind(state)
                        .bind(error.clone())
                    }
                };
                if q.execute(&mut *tx).await?.rows_affected() == 0 {
                    lost.push(f.id());
                }
            }
            insert_attempts!(tx, attempts);
            insert_attempts!(tx, unrecorded);
            tx.forget_if_settled(token).await?;
            tx.commit().await?;
        });
        Ok(lost)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone as _, Utc};
    use sqlx::{Connection as _, QueryBuilder, Row as _};

    use super::{Broadcasts, Claiming, PlannedDelivery, SentRow, Writing, packed_bodies, push_sqlite_insert};
    use crate::domain::{Channel, Notice, RecipientId, WindowId};

    /// SQLite's program for the insert of `rows` written as `writing`.
    async fn opcodes(
        conn: &mut sqlx::SqliteConnection,
        rows: &[PlannedDelivery],
        writing: &Writing<'_>,
    ) -> Vec<String> {
        let mut qb = QueryBuilder::new("EXPLAIN ");
        push_sqlite_insert(&mut qb, rows, 0, Broadcasts::NoneReach, writing);
        qb.build()
            .fetch_all(conn)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get("opcode"))
            .collect()
    }

    /// A page's rows go into SQLite's ledger as they are read from the statement, never copied
    /// into a temporary table first (one `Insert` each, in a program as long as its rows): a
    /// statement of 30 rows has as many row writes in its program as one of 3, whether its rows
    /// are pending, held or written claimed, and whether they share their notice or not.
    #[tokio::test]
    async fn a_page_is_inserted_into_sqlite_without_a_temporary_table() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        crate::storage::Store::connect(&url).await.unwrap().close().await;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let at = Utc.with_ymd_and_hms(2015, 4, 10, 6, 0, 0).unwrap();
        let rows = |n: i64, shared: bool| -> Vec<PlannedDelivery> {
            (1..=n)
                .map(|r| PlannedDelivery {
                    window: WindowId(1),
                    revision: 1,
                    notice: if shared || r % 2 == 0 {
                        Notice::Announced
                    } else {
                        Notice::Started
                    },
                    recipient: RecipientId(r),
                    channel: Channel::Sms,
                    endpoint: None,
                    due_at: at,
                    deadline: at + chrono::TimeDelta::hours(1),
                })
                .collect()
        };
        let tokens: Vec<Option<i64>> = (0..30).map(|i| (i % 3 != 0).then_some(7)).collect();
        let claiming = Writing::Claiming(Claiming {
            tokens: &tokens,
            owner: "daemon@test",
            lease_ms: 60_000,
        });
        for (what, shared, writing) in [
            ("a fan-out's page, pending", true, &Writing::Pending),
            ("a fan-out's page, written claimed", true, &claiming),
            ("a fan-out's page, held", true, &Writing::Held),
            ("rows of several notices", false, &Writing::Pending),
            ("rows of several notices, written claimed", false, &claiming),
        ] {
            let writes = |ops: &[String]| ops.iter().filter(|o| *o == "Insert").count();
            let few = opcodes(&mut conn, &rows(3, shared), writing).await;
            let many = opcodes(&mut conn, &rows(30, shared), writing).await;
            assert!(writes(&few) >= 1, "{what}: {few:?}");
            assert_eq!(writes(&few), writes(&many), "{what}: {many:?}");
        }
        conn.close().await.unwrap();
    }

    /// Each row is its id times 256 plus its body's place in the list of distinct bodies, in
    /// the order they first come; 256 bodies fit, a 257th or an id too large for the room
    /// left does not.
    #[test]
    fn rows_are_packed_with_their_body_s_place_while_256_bodies_fit() {
        let at = Utc.with_ymd_and_hms(2015, 4, 10, 6, 0, 0).unwrap();
        let row = |id: i64, body_id: Option<i64>| SentRow {
            id,
            at,
            latency_ms: 1,
            provider_id: None,
            body_id,
        };
        let rows = [row(7, Some(40)), row(8, None), row(9, Some(40)), row(12, Some(2))];
        assert_eq!(
            packed_bodies(&rows),
            Some((
                vec![Some(40), None, Some(2)],
                vec![7 * 256, 8 * 256 + 1, 9 * 256, 12 * 256 + 2]
            ))
        );
        let fits: Vec<SentRow<'_>> = (0..256).map(|i| row(i, Some(1000 + i))).collect();
        let (bodies, packed) = packed_bodies(&fits).unwrap();
        assert_eq!((bodies.len(), packed[255]), (256, 255 * 256 + 255));
        let too_many: Vec<SentRow<'_>> = (0..257).map(|i| row(i, Some(1000 + i))).collect();
        assert_eq!(packed_bodies(&too_many), None);
        assert_eq!(packed_bodies(&[row(i64::MAX / 256 + 1, None)]), None);
        assert_eq!(packed_bodies(&[row(-1, None)]), None);
    }
}
