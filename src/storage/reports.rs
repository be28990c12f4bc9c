//! Reports over the ledger: counts by window, broadcast, notice, channel and state; a window's
//! deliveries one by one; and the operator's re-queue of failed ones.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::rows::instant;
use super::{Pool, Store, StoreError};
use crate::domain::{DeliveryState, EmailAddress, PhoneNumber, WindowId, to_millis};

/// One delivery, for an operator's listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRow {
    pub id: i64,
    pub broadcast_id: Option<i64>,
    pub revision: i64,
    pub notice: String,
    pub channel: String,
    pub state: DeliveryState,
    pub attempts: i64,
    pub recipient_id: i64,
    /// The recipient's address on this channel, masked (`+2547•••••678`).
    pub to: String,
    pub last_error: Option<String>,
    /// Its slot: when it falls due (paced, out of quiet hours).
    pub due_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub backend: Option<String>,
    pub possibly_duplicate: bool,
    /// What the SMS provider later reported of the handset: delivered or undelivered.
    pub handset: Option<String>,
}

/// What re-queueing a window's deliveries did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Requeued {
    /// Back in the queue, due now.
    pub requeued: u64,
    /// Left as they were: their deadline has passed.
    pub too_late: u64,
}

#[derive(sqlx::FromRow)]
struct DeliveryListRow {
    id: i64,
    broadcast_id: Option<i64>,
    revision: i64,
    notice: String,
    channel: String,
    state: String,
    attempts: i64,
    recipient_id: i64,
    phone: Option<String>,
    email: Option<String>,
    last_error: Option<String>,
    due_at: i64,
    deadline: i64,
    sent_at: Option<i64>,
    backend: Option<String>,
    possibly_duplicate: bool,
    handset: Option<String>,
}

/// A count of deliveries by window, notice, channel and state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SummaryRow {
    pub window_id: Option<i64>,
    pub broadcast_id: Option<i64>,
    pub notice: String,
    pub channel: String,
    pub state: DeliveryState,
    pub count: i64,
    /// Of those, rows flagged possibly duplicate (an earlier claim lapsed).
    pub possibly_duplicate: i64,
}

impl Store {
    /// How many of one broadcast's rows are in each state. They are found through the
    /// broadcast's own index: a broadcast that has just begun reads none of the ledger's other
    /// rows, and one of a million rows is counted without sorting them all by window, notice and
    /// channel first (0.18 s against 0.58 s on SQLite).
    pub async fn broadcast_states(&self, broadcast: i64) -> Result<Vec<(DeliveryState, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = on_pool!(self, p => sqlx::query_as(
            "SELECT state, COUNT(*) FROM deliveries WHERE broadcast_id = $1 GROUP BY state",
        )
        .bind(broadcast)
        .fetch_all(p)
        .await?);
        rows.into_iter()
            .map(|(state, n)| {
                let state = state
                    .parse()
                    .map_err(|e: String| StoreError::Corrupt(format!("broadcast {broadcast}: {e}")))?;
                Ok((state, n))
            })
            .collect()
    }

    /// Counts by window (or broadcast), notice, channel and state: of one window's rows, or of
    /// every row.
    pub async fn summary(&self, window: Option<WindowId>) -> Result<Vec<SummaryRow>, StoreError> {
        let rows = on_pool!(self, p => sqlx::query(
            "SELECT window_id, broadcast_id, notice, channel, state, COUNT(*) AS n, \
             SUM(CASE WHEN possibly_duplicate THEN 1 ELSE 0 END) AS flagged FROM deliveries \
             WHERE ($1 IS NULL OR window_id = $1) \
             GROUP BY window_id, broadcast_id, notice, channel, state \
             ORDER BY MIN(id), window_id, broadcast_id, notice, channel, state",
        )
        .bind(window.map(|w| w.0))
        .fetch_all(p)
        .await?
        .into_iter()
        .map(|r| -> Result<SummaryRow, sqlx::Error> {
            Ok(SummaryRow {
                window_id: r.try_get("window_id")?,
                broadcast_id: r.try_get("broadcast_id")?,
                notice: r.try_get("notice")?,
                channel: r.try_get("channel")?,
                state: r
                    .try_get::<String, _>("state")?
                    .parse()
                    .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
                count: r.try_get("n")?,
                possibly_duplicate: r.try_get("flagged")?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// Counts by notice kind, channel, recipient locale and state (the demo's report).
    pub async fn locale_summary(
        &self,
        window: WindowId,
    ) -> Result<Vec<(String, String, String, String, i64)>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT d.notice, d.channel, r.locale, d.state, COUNT(*) FROM deliveries d JOIN recipients r ON r.id = d.recipient_id \
             WHERE d.window_id = $1 GROUP BY d.notice, d.channel, r.locale, d.state ORDER BY MIN(d.due_at), d.notice, d.channel, r.locale, d.state",
        )
        .bind(window.0)
        .fetch_all(p)
        .await?))
    }

    /// How many rows each table holds: `(bodies, deliveries)`.
    pub async fn sizes(&self) -> Result<(i64, i64), StoreError> {
        on_pool!(self, p => {
            let bodies: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bodies").fetch_one(p).await?;
            let deliveries: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries").fetch_one(p).await?;
            Ok((bodies, deliveries))
        })
    }

    /// A window's deliveries (of one state, or all), in id order: all of them, or a page of
    /// `limit` after id `after`.
    pub async fn deliveries(
        &self,
        window: WindowId,
        state: Option<DeliveryState>,
        page: Option<(i64, i64)>,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let (after, limit) = page.unwrap_or((0, i64::MAX));
        let rows: Vec<DeliveryListRow> = on_pool!(self, p => sqlx::query_as(
            "SELECT d.id, d.broadcast_id, d.revision, d.notice, d.channel, d.state, d.attempts, d.recipient_id, r.phone, r.email, \
             d.last_error, d.due_at, d.deadline, d.sent_at, d.backend, d.possibly_duplicate, d.handset \
             FROM deliveries d JOIN recipients r ON r.id = d.recipient_id \
             WHERE d.window_id = $1 AND ($2 IS NULL OR d.state = $2) AND d.id > $3 ORDER BY d.id LIMIT $4",
        )
        .bind(window.0)
        .bind(state.map(DeliveryState::as_str))
        .bind(after)
        .bind(limit)
        .fetch_all(p)
        .await?);
        rows.into_iter()
            .map(|r| {
                let to = match r.channel.as_str() {
                    "sms" => r.phone.map(|p| PhoneNumber::from_trusted(p).masked()),
                    "email" => r.email.map(|e| EmailAddress::from_trusted(e).masked()),
                    _ => Some(format!("recipient {}", r.recipient_id)),
                }
                .unwrap_or_default();
                Ok(DeliveryRow {
                    id: r.id,
                    broadcast_id: r.broadcast_id,
                    revision: r.revision,
                    notice: r.notice,
                    channel: r.channel,
                    state: r
                        .state
                        .parse()
                        .map_err(|e: String| StoreError::Corrupt(format!("delivery {}: {e}", r.id)))?,
                    attempts: r.attempts,
                    recipient_id: r.recipient_id,
                    to,
                    last_error: r.last_error,
                    due_at: instant("delivery", r.id, r.due_at)?,
                    deadline: instant("delivery", r.id, r.deadline)?,
                    sent_at: r.sent_at.map(|t| instant("delivery", r.id, t)).transpose()?,
                    backend: r.backend,
                    possibly_duplicate: r.possibly_duplicate,
                    handset: r.handset,
                })
            })
            .collect()
    }

    /// Puts a window's deliveries in `state` (failed, expired) back in the queue, due at `now`,
    /// where their deadline is still ahead; the rest stay as they were. With `dry_run`,
    /// changes nothing and says what it would do.
    pub async fn requeue(
        &self,
        window: WindowId,
        state: DeliveryState,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<Requeued, StoreError> {
        let now_ms = to_millis(now);
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let (can, cannot): (i64, i64) = sqlx::query_as(
                "SELECT COALESCE(SUM(CASE WHEN deadline > $3 THEN 1 ELSE 0 END), 0), \
                 COALESCE(SUM(CASE WHEN deadline <= $3 THEN 1 ELSE 0 END), 0) \
                 FROM deliveries WHERE window_id = $1 AND state = $2",
            )
            .bind(window.0)
            .bind(state.as_str())
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await?;
            if !dry_run {
                sqlx::query(
                    "UPDATE deliveries SET state = 'pending', due_at = $3, \
                     last_error = 'requeued by an operator after: ' || COALESCE(last_error, $2) \
                     WHERE window_id = $1 AND state = $2 AND deadline > $3",
                )
                .bind(window.0)
                .bind(state.as_str())
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(Requeued {
                requeued: u64::try_from(can).unwrap_or_default(),
                too_late: u64::try_from(cannot).unwrap_or_default(),
            })
        })
    }
}
