//! Broadcasts: recorded once under their name, with their rows in the same queue.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, QueryBuilder};

use super::queue::{
    CopyPage, Inserted, Writing, claimed_after, copy_int, copy_new_first, copy_opt_int, copy_text, insert_new_first,
    inserted_columns,
};
use super::rows::{Broadcast, BroadcastRow, NewBroadcast};
use super::{Dialect, HandOver, Pool, ROWS_PER_STATEMENT, Store, StoreError, WrittenPage};
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
        Ok(self.enqueue_broadcast_handing(b, rows, due_at, None).await?.inserted)
    }

    /// `enqueue_broadcast`, writing the rows `hand` can take claimed already, as
    /// [`Store::enqueue_page_handing`] does a fan-out's: those due at `hand.now` and before the
    /// deadline, not to a webhook endpoint, of no paused window. The batches are matched to
    /// `rows` by index. A paused window's rows are written held, as a fan-out's are.
    pub async fn enqueue_broadcast_handing(
        &self,
        b: &Broadcast,
        rows: &[(RecipientId, Channel, Option<i64>)],
        due_at: DateTime<Utc>,
        hand: Option<&HandOver<'_>>,
    ) -> Result<WrittenPage, StoreError> {
        if rows.is_empty() {
            return Ok(WrittenPage::default());
        }
        // Sending goes on beside recording: on SQLite the two take turns to write.
        on_writer!(self, p => {
            let mut tx = p.begin().await?;
            let mut paused = false;
            // The window's lock, as a page of its fan-out takes it: the two enqueue one after
            // the other, each seeing the other's rows (see `Store::enqueue_page`).
            if let Some(window) = b.window {
                sqlx::query("UPDATE windows SET revision = revision WHERE id = $1")
                    .bind(window.0)
                    .execute(&mut *tx)
                    .await?;
                paused = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM paused_windows WHERE window_id = $1)")
                    .bind(window.0)
                    .fetch_one(&mut *tx)
                    .await?;
            }
            let tokens = match hand {
                Some(hand) if !paused => hand.tokens(rows.iter().map(|r| (due_at, b.deadline, r.2.is_some()))),
                _ => Vec::new(),
            };
            let writing = Writing::of(paused, hand, &tokens);
            let inserted = tx.insert_broadcast(b, rows, to_millis(due_at), &writing).await?;
            let planned = rows.iter().map(|r| (r.0, r.1));
            let claimed = claimed_after(&mut *tx, &writing, inserted.ids.as_deref(), planned).await?;
            tx.commit().await?;
            Ok(WrittenPage {
                inserted: inserted.count,
                claimed,
            })
        })
    }
}

/// The columns a broadcast's row sets.
const BROADCAST_COLUMNS: &str =
    "window_id, broadcast_id, revision, notice, recipient_id, channel, endpoint_id, due_at, deadline";

/// What a broadcast's rows share, as the columns of a one-row `c` (`$1` to `$6` in
/// PostgreSQL; each a bound value of SQLite's builder).
const SHARED: &str = "c (window_id, broadcast_id, revision, notice, due_at, deadline";

/// The end of a broadcast's insert. A window notice is not sent again to whom the window's
/// own rows already carry it. A free message has no window, so nothing could match: the check
/// is left out rather than planned against the whole ledger.
fn broadcast_tail(b: &Broadcast) -> &'static str {
    if b.window.is_some() {
        " WHERE NOT EXISTS (SELECT 1 FROM deliveries w WHERE w.broadcast_id IS NULL \
         AND w.window_id = v.window_id AND w.revision = v.revision AND w.notice = v.notice \
         AND w.recipient_id = v.recipient_id AND w.channel = v.channel \
         AND COALESCE(w.endpoint_id, 0) = COALESCE(v.endpoint_id, 0) AND w.state IN ('pending', 'claimed', 'sent')) \
         ON CONFLICT DO NOTHING"
    } else {
        super::UNCONDITIONAL_UPSERT
    }
}

/// The notice column of a broadcast's rows.
fn notice(b: &Broadcast) -> String {
    b.notice.map(|n| n.to_string()).unwrap_or_else(|| "message".to_owned())
}

/// Inserting a broadcast's rows inside a transaction, written as `writing` says; the count of
/// new rows. The values every row shares are bound once.
trait InsertBroadcast {
    async fn insert_broadcast(
        &mut self,
        b: &Broadcast,
        rows: &[(RecipientId, Channel, Option<i64>)],
        due_at: i64,
        writing: &Writing<'_>,
    ) -> Result<Inserted, sqlx::Error>;
}

impl InsertBroadcast for sqlx::SqliteConnection {
    async fn insert_broadcast(
        &mut self,
        b: &Broadcast,
        rows: &[(RecipientId, Channel, Option<i64>)],
        due_at: i64,
        writing: &Writing<'_>,
    ) -> Result<Inserted, sqlx::Error> {
        let claiming = writing.claiming();
        let (columns, values) = inserted_columns(BROADCAST_COLUMNS, writing, Dialect::Sqlite, "c.owner", "c.lease");
        let notice = notice(b);
        let mut inserted = Inserted::start(claiming.is_some());
        for (n, chunk) in rows.chunks(ROWS_PER_STATEMENT).enumerate() {
            let first = n * ROWS_PER_STATEMENT;
            let mut qb = QueryBuilder::new(format!(
                "WITH {SHARED}{}) AS (SELECT ",
                if claiming.is_some() { ", owner, lease" } else { "" }
            ));
            let mut shared = qb.separated(", ");
            shared
                .push_bind(b.window.map(|w| w.0))
                .push_bind(b.id)
                .push_bind(i64::from(b.revision.unwrap_or(0)))
                .push_bind(&notice)
                .push_bind(due_at)
                .push_bind(to_millis(b.deadline));
            if let Some(c) = claiming {
                shared.push_bind(c.owner).push_bind(c.lease_ms);
            }
            qb.push(format!(
                "), u (recipient_id, channel, endpoint_id{}) AS (",
                if claiming.is_some() { ", lease_token" } else { "" }
            ));
            qb.push_values(
                chunk.iter().enumerate(),
                |mut q, (i, (recipient, channel, endpoint))| {
                    q.push_bind(recipient.0)
                        .push_bind(channel.as_str())
                        .push_bind(*endpoint);
                    if let Some(c) = claiming {
                        q.push_bind(c.tokens.get(first + i).copied().flatten());
                    }
                },
            );
            qb.push(format!(
                "), v AS (SELECT c.window_id, c.broadcast_id, c.revision, c.notice, u.recipient_id, u.channel, \
                 u.endpoint_id, c.due_at, c.deadline{} FROM u, c) \
                 INSERT INTO deliveries ({columns}) SELECT {values} FROM v{}{}",
                if claiming.is_some() { ", u.lease_token" } else { "" },
                if claiming.is_some() { ", c" } else { "" },
                broadcast_tail(b)
            ));
            inserted.add_sqlite(&qb.build().execute(&mut *self).await?, chunk.len());
        }
        Ok(inserted)
    }
}

impl InsertBroadcast for sqlx::PgConnection {
    /// One statement for the whole page, the rows' own columns bound as arrays and
    /// `unnest`ed inside the database.
    async fn insert_broadcast(
        &mut self,
        b: &Broadcast,
        rows: &[(RecipientId, Channel, Option<i64>)],
        due_at: i64,
        writing: &Writing<'_>,
    ) -> Result<Inserted, sqlx::Error> {
        let claiming = writing.claiming();
        let (columns, values) = inserted_columns(BROADCAST_COLUMNS, writing, Dialect::Postgres, "$11", "$12");
        let (token_array, token_column) = if claiming.is_some() {
            (", $10::bigint[]", ", lease_token")
        } else {
            ("", "")
        };
        let sql = format!(
            "WITH {SHARED}) AS (SELECT $1::bigint, $2::bigint, $3::bigint, $4::text, $5::bigint, $6::bigint), \
             v AS (SELECT c.window_id, c.broadcast_id, c.revision, c.notice, u.recipient_id, u.channel, u.endpoint_id, \
             c.due_at, c.deadline{token_column} FROM c, \
             unnest($7::bigint[], $8::text[], $9::bigint[]{token_array}) AS u (recipient_id, channel, endpoint_id{token_column})) \
             INSERT INTO deliveries ({columns}) SELECT {values} FROM v{}",
            broadcast_tail(b)
        );
        let query = |sql: String| {
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(b.window.map(|w| w.0))
                .bind(b.id)
                .bind(i64::from(b.revision.unwrap_or(0)))
                .bind(notice(b))
                .bind(due_at)
                .bind(to_millis(b.deadline))
                .bind(rows.iter().map(|r| r.0.0).collect::<Vec<i64>>())
                .bind(rows.iter().map(|r| r.1.as_str()).collect::<Vec<&str>>())
                .bind(rows.iter().map(|r| r.2).collect::<Vec<Option<i64>>>());
            if let Some(c) = claiming {
                let tokens: Vec<Option<i64>> = (0..rows.len()).map(|i| c.tokens.get(i).copied().flatten()).collect();
                q = q.bind(tokens).bind(c.owner.to_owned()).bind(c.lease_ms);
            }
            q
        };
        if b.window.is_some() {
            return insert_new_first(self, sql, query).await.map(Inserted::counted);
        }
        // A free message's rows are kept out by their idempotency key alone: the page is
        // `COPY`d, as a fan-out's is.
        let (notice, deadline) = (notice(b), to_millis(b.deadline));
        let own = |out: &mut Vec<u8>, i: usize| {
            let (recipient, channel, endpoint) = rows[i];
            out.extend_from_slice(b"\\N\t");
            copy_int(out, b.id);
            out.push(b'\t');
            copy_int(out, i64::from(b.revision.unwrap_or(0)));
            out.push(b'\t');
            copy_text(out, &notice);
            out.push(b'\t');
            copy_int(out, recipient.0);
            out.push(b'\t');
            copy_text(out, channel.as_str());
            out.push(b'\t');
            copy_opt_int(out, endpoint);
            out.push(b'\t');
            copy_int(out, due_at);
            out.push(b'\t');
            copy_int(out, deadline);
        };
        let page = CopyPage {
            columns: BROADCAST_COLUMNS,
            rows: rows.len(),
        };
        copy_new_first(self, page, own, writing, || query(sql))
            .await
            .map(Inserted::counted)
    }
}
