//! Broadcasts: recorded once under their name, with their rows in the same queue.

use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;

use super::rows::{Broadcast, BroadcastRow, NewBroadcast};
use super::{Pool, ROWS_PER_STATEMENT, Store, StoreError};
use crate::domain::{Channel, RecipientId, to_millis};

impl Store {
    /// Records a broadcast under its name, or returns the one already recorded under it if it
    /// is the same broadcast (a rerun). The same name for a different broadcast is refused.
    pub async fn create_broadcast(
        &self,
        b: &NewBroadcast,
        now: DateTime<Utc>,
        actor: &str,
    ) -> Result<Broadcast, StoreError> {
        let encode = |what| move |source| StoreError::Encode { what, source };
        let message = b
            .message
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(encode("the broadcast message"))?;
        let filter = serde_json::to_string(&b.filter).map_err(encode("the audience filter"))?;
        on_pool!(self, p => {
            sqlx::query(
                "INSERT INTO broadcasts (name, window_id, revision, notice, message, filter, deadline, created_at, actor) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name) DO NOTHING",
            )
            .bind(&b.name)
            .bind(b.window.map(|w| w.0))
            .bind(b.revision.map(i64::from))
            .bind(b.notice.map(|n| n.to_string()))
            .bind(&message)
            .bind(&filter)
            .bind(to_millis(b.deadline))
            .bind(to_millis(now))
            .bind(actor)
            .execute(p)
            .await?;
        });
        let stored = self
            .broadcast_named(&b.name)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("broadcast '{}' vanished", b.name)))?;
        let same = stored.window == b.window
            && stored.revision == b.revision
            && stored.notice == b.notice
            && stored.message == b.message
            && stored.filter == b.filter;
        if !same {
            return Err(StoreError::BroadcastNameTaken(b.name.clone()));
        }
        Ok(stored)
    }

    pub async fn broadcast(&self, id: i64) -> Result<Broadcast, StoreError> {
        let row: Option<BroadcastRow> = on_pool!(self, p => sqlx::query_as(
            "SELECT id, name, window_id, revision, notice, message, filter, deadline FROM broadcasts WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(p)
        .await?);
        row.ok_or_else(|| StoreError::Corrupt(format!("no broadcast {id}")))?
            .try_into()
    }

    async fn broadcast_named(&self, name: &str) -> Result<Option<Broadcast>, StoreError> {
        let row: Option<BroadcastRow> = on_pool!(self, p => sqlx::query_as(
            "SELECT id, name, window_id, revision, notice, message, filter, deadline FROM broadcasts WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(p)
        .await?);
        row.map(Broadcast::try_from).transpose()
    }

    /// Enqueues a broadcast's rows in one transaction; rows already queued are left alone.
    pub async fn enqueue_broadcast(
        &self,
        b: &Broadcast,
        rows: &[(RecipientId, Channel, Option<i64>)],
        due_at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let notice = b.notice.map(|n| n.to_string()).unwrap_or_else(|| "message".to_owned());
        // Sending goes on beside recording: on SQLite the two take turns to write.
        let _turn = self.write_turn().await;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            // The window's lock, as a page of its fan-out takes it: the two enqueue one after
            // the other, each seeing the other's rows (see `Store::enqueue_page`).
            if let Some(window) = b.window {
                sqlx::query("UPDATE windows SET revision = revision WHERE id = $1")
                    .bind(window.0)
                    .execute(&mut *tx)
                    .await?;
            }
            let mut inserted = 0;
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut qb = QueryBuilder::new(
                    "WITH v (window_id, broadcast_id, revision, notice, recipient_id, channel, endpoint_id, due_at, deadline) AS (",
                );
                qb.push_values(chunk, |mut q, (recipient, channel, endpoint)| {
                    q.push_bind(b.window.map(|w| w.0))
                        .push_bind(b.id)
                        .push_bind(i64::from(b.revision.unwrap_or(0)))
                        .push_bind(notice.clone())
                        .push_bind(recipient.0)
                        .push_bind(channel.as_str())
                        .push_bind(*endpoint)
                        .push_bind(to_millis(due_at))
                        .push_bind(to_millis(b.deadline));
                });
                qb.push(
                    ") INSERT INTO deliveries (window_id, broadcast_id, revision, notice, recipient_id, channel, endpoint_id, due_at, deadline) \
                     SELECT v.window_id, v.broadcast_id, v.revision, v.notice, v.recipient_id, v.channel, v.endpoint_id, v.due_at, v.deadline FROM v",
                );
                // A window notice is not sent again to whom the window's own rows already
                // carry it. A free message has no window, so nothing could match: the check is
                // left out rather than planned against the whole ledger.
                qb.push(if b.window.is_some() {
                    " WHERE NOT EXISTS (SELECT 1 FROM deliveries w WHERE w.broadcast_id IS NULL \
                     AND w.window_id = v.window_id AND w.revision = v.revision AND w.notice = v.notice \
                     AND w.recipient_id = v.recipient_id AND w.channel = v.channel \
                     AND COALESCE(w.endpoint_id, 0) = COALESCE(v.endpoint_id, 0) AND w.state IN ('pending', 'claimed', 'sent')) \
                     ON CONFLICT DO NOTHING"
                } else {
                    super::UNCONDITIONAL_UPSERT
                });
                inserted += qb.build().execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            Ok(inserted)
        })
    }
}
