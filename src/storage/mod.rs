//! Storage: windows, recipients, the notice log and the delivery queue, on SQLite or PostgreSQL.
//!
//! One interface, two dialects, one conformance suite (`tests/it/store.rs`). Only this module
//! mentions sqlx. Instants are stored as integer Unix milliseconds in both dialects, so one set
//! of row types and bindings serves both and SQLite compares them as integers. The SQL is shared
//! wherever the dialects agree (`$n` placeholders, `ON CONFLICT`, `RETURNING`, partial indexes);
//! where they differ (claiming with `FOR UPDATE SKIP LOCKED`) each dialect has its own text.

mod rows;

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, QueryBuilder, Row};

use crate::domain::{
    Audience, Channel, NewWindow, Notice, PlannedDelivery, Profile, Recipient, RecipientId, Window, WindowId, to_millis,
};
use crate::planner::{Decided, Decision, Outcome};
pub use rows::{Broadcast, ClaimedRow, NewBroadcast};
use rows::{BroadcastRow, RECIPIENT_COLUMNS, RecipientRow, WINDOW_COLUMNS, WindowRow, join_list};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL '{0}': use sqlite://FILE or postgres://USER@HOST:PORT/DB")]
    UnsupportedUrl(String),
    #[error("window {0} does not exist")]
    NoSuchWindow(WindowId),
    #[error("window {id} was changed by someone else (expected revision {expected}); look again and retry")]
    Conflict { id: WindowId, expected: u32 },
    #[error("a different broadcast is already recorded under the name '{0}'; choose another --name")]
    BroadcastNameTaken(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A handle to the database: cheap to clone, shared by every task.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    sqlite_file: Option<PathBuf>,
}

/// Runs the same body on either pool; `$p` is the pool (or a transaction begun on it).
macro_rules! on_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

/// Appends a window history entry inside the transaction `$tx` (either dialect).
macro_rules! append_history {
    ($tx:ident, $window:expr, $revision:expr, $at:expr, $actor:expr, $action:expr, $details:expr) => {
        sqlx::query("INSERT INTO window_history (window_id, revision, at, actor, action, details) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind($window)
            .bind($revision)
            .bind($at)
            .bind($actor)
            .bind($action)
            .bind($details)
            .execute(&mut *$tx)
            .await?
    };
}

/// Rows per multi-row INSERT statement: well under SQLite's and PostgreSQL's parameter limits.
const ROWS_PER_STATEMENT: usize = 1000;

/// One entry of a window's audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub revision: u32,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub details: serde_json::Value,
}

/// How a claimed delivery ended this attempt.
#[derive(Debug, Clone)]
pub enum Finish {
    Sent {
        id: i64,
        backend: String,
        provider_id: Option<String>,
        body_id: Option<i64>,
    },
    Retry {
        id: i64,
        at: DateTime<Utc>,
        error: String,
    },
    Failed {
        id: i64,
        error: String,
    },
    Expired {
        id: i64,
        error: String,
    },
}

/// A count of deliveries by window, notice, channel and state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SummaryRow {
    pub window_id: Option<i64>,
    pub broadcast_id: Option<i64>,
    pub notice: String,
    pub channel: String,
    pub state: String,
    pub count: i64,
}

/// A notice-level outcome from the notice log (skipped, superseded or expired as a whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoticeLogRow {
    pub window_id: i64,
    pub revision: i64,
    pub notice: String,
    pub audience: String,
    pub outcome: String,
}

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the database at `url`.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            let file = options.get_filename();
            let sqlite_file =
                (!file.as_os_str().is_empty() && file != std::path::Path::new(":memory:")).then(|| file.to_owned());
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await?;
            sqlx::migrate!("migrations/sqlite").run(&pool).await?;
            Ok(Store {
                pool: Pool::Sqlite(pool),
                sqlite_file,
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            sqlx::migrate!("migrations/postgres").run(&pool).await?;
            Ok(Store {
                pool: Pool::Postgres(pool),
                sqlite_file: None,
            })
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self.pool {
            Pool::Sqlite(_) => Dialect::Sqlite,
            Pool::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The SQLite database file, if this store is one.
    pub fn sqlite_file(&self) -> Option<&std::path::Path> {
        self.sqlite_file.as_deref()
    }

    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }

    // ----- windows -------------------------------------------------------------------------

    /// Stores a new window and its first history entry in one transaction.
    pub async fn create_window(&self, new: NewWindow, now: DateTime<Utc>, actor: &str) -> Result<Window, StoreError> {
        let draft = Window::create(WindowId(0), new, now);
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO windows (title_en, title_sw, description_en, description_sw, components, starts_at, ends_at, \
                 prev_starts_at, prev_ends_at, zone, status, revision, last_change, auto_complete, cancel_reason, created_at, revised_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) RETURNING id",
            )
            .bind(&draft.title.en)
            .bind(&draft.title.sw)
            .bind(&draft.description.en)
            .bind(&draft.description.sw)
            .bind(join_list(&draft.components))
            .bind(to_millis(draft.schedule.starts_at()))
            .bind(to_millis(draft.schedule.ends_at()))
            .bind(to_millis(draft.previous.starts_at()))
            .bind(to_millis(draft.previous.ends_at()))
            .bind(draft.zone.name())
            .bind(draft.status.as_str())
            .bind(i64::from(draft.revision))
            .bind(draft.last_change.as_str())
            .bind(draft.auto_complete)
            .bind(&draft.cancel_reason)
            .bind(to_millis(draft.created_at))
            .bind(to_millis(draft.revised_at))
            .fetch_one(&mut *tx)
            .await?;
            let window = Window { id: WindowId(id), ..draft };
            append_history!(tx, id, i64::from(window.revision), to_millis(now), actor, "created", window_details(&window).to_string());
            tx.commit().await?;
            Ok(window)
        })
    }

    /// Persists the next revision of a window, its history entry, and supersedes every unsent
    /// delivery of older revisions, in one transaction. Fails with `Conflict` if the window
    /// moved on since `before` was read.
    pub async fn save_change(
        &self,
        before: &Window,
        after: &Window,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut details = window_details(after);
        if let Some(reason) = &after.cancel_reason {
            details["reason"] = reason.clone().into();
        }
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let updated = sqlx::query(
                "UPDATE windows SET starts_at = $1, ends_at = $2, prev_starts_at = $3, prev_ends_at = $4, status = $5, \
                 revision = $6, last_change = $7, cancel_reason = $8, revised_at = $9 WHERE id = $10 AND revision = $11",
            )
            .bind(to_millis(after.schedule.starts_at()))
            .bind(to_millis(after.schedule.ends_at()))
            .bind(to_millis(after.previous.starts_at()))
            .bind(to_millis(after.previous.ends_at()))
            .bind(after.status.as_str())
            .bind(i64::from(after.revision))
            .bind(after.last_change.as_str())
            .bind(&after.cancel_reason)
            .bind(to_millis(after.revised_at))
            .bind(after.id.0)
            .bind(i64::from(before.revision))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated != 1 {
                return Err(StoreError::Conflict { id: before.id, expected: before.revision });
            }
            append_history!(tx, after.id.0, i64::from(after.revision), to_millis(now), actor, after.last_change.as_str(), details.to_string());
            let superseded = sqlx::query(
                "UPDATE deliveries SET state = 'superseded', last_error = $3, lease_owner = NULL, lease_until = NULL \
                 WHERE window_id = $1 AND revision < $2 AND state IN ('pending', 'claimed')",
            )
            .bind(after.id.0)
            .bind(i64::from(after.revision))
            .bind(format!("superseded by revision {} ({})", after.revision, after.last_change.as_str()))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(superseded)
        })
    }

    /// Stores a text-only edit (title, description): same revision, a history entry, nothing
    /// superseded. Fails with `Conflict` if the window moved on since `before` was read.
    pub async fn save_text(
        &self,
        before: &Window,
        after: &Window,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let details = serde_json::json!({
            "title": after.title.en, "title_sw": after.title.sw,
            "description": after.description.en, "description_sw": after.description.sw,
        });
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let updated = sqlx::query(
                "UPDATE windows SET title_en = $1, title_sw = $2, description_en = $3, description_sw = $4 \
                 WHERE id = $5 AND revision = $6",
            )
            .bind(&after.title.en)
            .bind(&after.title.sw)
            .bind(&after.description.en)
            .bind(&after.description.sw)
            .bind(after.id.0)
            .bind(i64::from(before.revision))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated != 1 {
                return Err(StoreError::Conflict { id: before.id, expected: before.revision });
            }
            append_history!(tx, after.id.0, i64::from(after.revision), to_millis(now), actor, "edited", details.to_string());
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn window(&self, id: WindowId) -> Result<Window, StoreError> {
        let sql = format!("SELECT {WINDOW_COLUMNS} FROM windows WHERE id = $1");
        let row: Option<WindowRow> =
            on_pool!(self, p => sqlx::query_as(AssertSqlSafe(sql)).bind(id.0).fetch_optional(p).await?);
        row.ok_or(StoreError::NoSuchWindow(id))?.try_into()
    }

    /// Every window, newest first.
    pub async fn windows(&self) -> Result<Vec<Window>, StoreError> {
        let sql = format!("SELECT {WINDOW_COLUMNS} FROM windows ORDER BY id DESC");
        let rows: Vec<WindowRow> = on_pool!(self, p => sqlx::query_as(AssertSqlSafe(sql)).fetch_all(p).await?);
        rows.into_iter().map(Window::try_from).collect()
    }

    /// Windows the scheduler still has work for, oldest first.
    pub async fn open_windows(&self) -> Result<Vec<Window>, StoreError> {
        let sql = format!("SELECT {WINDOW_COLUMNS} FROM windows WHERE closed = FALSE ORDER BY id");
        let rows: Vec<WindowRow> = on_pool!(self, p => sqlx::query_as(AssertSqlSafe(sql)).fetch_all(p).await?);
        rows.into_iter().map(Window::try_from).collect()
    }

    /// Marks a finished window whose last notice is decided: the scheduler need not look again.
    pub async fn close_window(&self, id: WindowId) -> Result<(), StoreError> {
        on_pool!(self, p => {
            sqlx::query("UPDATE windows SET closed = TRUE WHERE id = $1").bind(id.0).execute(p).await?;
        });
        Ok(())
    }

    pub async fn history(&self, id: WindowId) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows: Vec<(i64, i64, String, String, String)> = on_pool!(self, p => sqlx::query_as(
            "SELECT revision, at, actor, action, details FROM window_history WHERE window_id = $1 ORDER BY id",
        )
        .bind(id.0)
        .fetch_all(p)
        .await?);
        Ok(rows
            .into_iter()
            .map(|(revision, at, actor, action, details)| HistoryEntry {
                revision: u32::try_from(revision).unwrap_or_default(),
                at: crate::domain::from_millis(at),
                actor,
                action,
                details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
            })
            .collect())
    }

    // ----- the notice log ------------------------------------------------------------------

    /// What the window's `revision` has already decided.
    pub async fn decided(&self, window: WindowId, revision: u32) -> Result<Decided, StoreError> {
        let rows: Vec<(String, String)> = on_pool!(self, p => sqlx::query_as(
            "SELECT notice, audience FROM window_notices WHERE window_id = $1 AND revision = $2",
        )
        .bind(window.0)
        .bind(i64::from(revision))
        .fetch_all(p)
        .await?);
        rows.into_iter()
            .map(|(n, a)| {
                let notice: Notice = n.parse().map_err(|e| StoreError::Corrupt(format!("notice log: {e}")))?;
                let audience: Audience = a.parse().map_err(|e| StoreError::Corrupt(format!("notice log: {e}")))?;
                Ok((notice, audience))
            })
            .collect()
    }

    /// Records a decision once. For a planned reminder, also supersedes the unsent deliveries of
    /// the earlier reminders it overtakes, in the same transaction.
    pub async fn record_decision(&self, window: WindowId, d: &Decision, now: DateTime<Utc>) -> Result<u64, StoreError> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO window_notices (window_id, revision, notice, audience, outcome, due_at, deadline, decided_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(window.0)
            .bind(i64::from(d.revision))
            .bind(d.notice.to_string())
            .bind(d.audience.as_str())
            .bind(d.outcome.as_str())
            .bind(to_millis(d.due_at))
            .bind(to_millis(d.deadline))
            .bind(to_millis(now))
            .execute(&mut *tx)
            .await?;
            let mut superseded = 0;
            if d.outcome == Outcome::Planned {
                for earlier in &d.supersedes {
                    superseded += sqlx::query(
                        "UPDATE deliveries SET state = 'superseded', last_error = $5 \
                         WHERE window_id = $1 AND revision = $2 AND notice = $3 AND state = 'pending' \
                         AND recipient_id IN (SELECT id FROM recipients WHERE kind = $4)",
                    )
                    .bind(window.0)
                    .bind(i64::from(d.revision))
                    .bind(earlier.to_string())
                    .bind(d.audience.as_str())
                    .bind(format!("superseded by {}", d.notice))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
            }
            tx.commit().await?;
            Ok(superseded)
        })
    }

    /// Notice-level outcomes other than `planned` (skipped, superseded, expired).
    pub async fn notice_log(&self, window: Option<WindowId>) -> Result<Vec<NoticeLogRow>, StoreError> {
        let rows: Vec<(i64, i64, String, String, String)> = on_pool!(self, p => sqlx::query_as(
            "SELECT window_id, revision, notice, audience, outcome FROM window_notices \
             WHERE outcome <> 'planned' AND ($1 IS NULL OR window_id = $1) ORDER BY window_id, revision, due_at, audience",
        )
        .bind(window.map(|w| w.0))
        .fetch_all(p)
        .await?);
        Ok(rows
            .into_iter()
            .map(|(window_id, revision, notice, audience, outcome)| NoticeLogRow {
                window_id,
                revision,
                notice,
                audience,
                outcome,
            })
            .collect())
    }

    // ----- recipients ----------------------------------------------------------------------

    /// Inserts or updates recipients by natural key, in one transaction. An opt-out is never
    /// cleared by an import: only `recipients opt-in` does that. An imported address that was a
    /// canary seed becomes an ordinary recipient.
    pub async fn upsert_recipients(&self, batch: &[Profile], now: DateTime<Utc>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // PostgreSQL refuses to update one row twice in a statement: keep the last of each key.
        let mut seen = HashSet::new();
        let mut unique: Vec<&Profile> = batch.iter().rev().filter(|p| seen.insert(p.natural_key())).collect();
        unique.reverse();
        self.insert_profiles(
            &unique,
            false,
            " ON CONFLICT (natural_key) DO UPDATE SET kind = excluded.kind, name = excluded.name, \
             phone = excluded.phone, email = excluded.email, locale = excluded.locale, zone = excluded.zone, \
             components = excluded.components, channels = excluded.channels, \
             opt_out = (recipients.opt_out OR excluded.opt_out), seed = FALSE, updated_at = excluded.updated_at",
            now,
        )
        .await
    }

    /// Inserts profiles in one transaction, `ROWS_PER_STATEMENT` to a statement, each statement
    /// ending with `conflict`.
    async fn insert_profiles(
        &self,
        rows: &[&Profile],
        seed: bool,
        conflict: &'static str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO recipients (natural_key, kind, name, phone, email, locale, zone, components, channels, \
                     opt_out, seed, updated_at) ",
                );
                qb.push_values(chunk, |mut b, r| {
                    b.push_bind(r.natural_key())
                        .push_bind(r.kind.as_str())
                        .push_bind(r.name.clone())
                        .push_bind(r.phone.as_ref().map(|p| p.as_str().to_owned()))
                        .push_bind(r.email.as_ref().map(|e| e.as_str().to_owned()))
                        .push_bind(r.locale.as_str())
                        .push_bind(r.zone.name())
                        .push_bind(join_list(&r.components))
                        .push_bind(join_list(&r.channels))
                        .push_bind(r.opt_out && !seed)
                        .push_bind(seed)
                        .push_bind(to_millis(now));
                });
                qb.push(conflict);
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn count_recipients(&self) -> Result<i64, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_scalar("SELECT COUNT(*) FROM recipients").fetch_one(p).await?))
    }

    /// Counts by kind and opt-out: `(kind, opted_out, count)`; canary seeds are not counted.
    pub async fn recipient_counts(&self) -> Result<Vec<(String, bool, i64)>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT kind, opt_out, COUNT(*) FROM recipients WHERE seed = FALSE GROUP BY kind, opt_out ORDER BY kind, opt_out",
        )
        .fetch_all(p)
        .await?))
    }

    /// Up to `limit` recipients of `kind` with ids after `after`, in id order.
    pub async fn recipients_page(
        &self,
        kind: Option<Audience>,
        after: RecipientId,
        limit: i64,
    ) -> Result<Vec<Recipient>, StoreError> {
        let sql = format!(
            "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE ($1 IS NULL OR kind = $1) AND id > $2 AND seed = FALSE ORDER BY id LIMIT $3"
        );
        let rows: Vec<RecipientRow> = on_pool!(self, p => sqlx::query_as(AssertSqlSafe(sql))
            .bind(kind.map(Audience::as_str))
            .bind(after.0)
            .bind(limit)
            .fetch_all(p)
            .await?);
        rows.into_iter().map(Recipient::try_from).collect()
    }

    /// The recipient with this natural key (E.164 phone, else lower-case email).
    pub async fn recipient_by_key(&self, natural_key: &str) -> Result<Option<Recipient>, StoreError> {
        let sql = format!("SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE natural_key = $1");
        let row: Option<RecipientRow> =
            on_pool!(self, p => sqlx::query_as(AssertSqlSafe(sql)).bind(natural_key).fetch_optional(p).await?);
        row.map(Recipient::try_from).transpose()
    }

    /// Sets or clears the opt-out of the recipient with this phone number or email address.
    /// Returns whether such a recipient exists.
    pub async fn set_opt_out(&self, natural_key: &str, opt_out: bool, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let n = on_pool!(self, p => sqlx::query("UPDATE recipients SET opt_out = $1, updated_at = $2 WHERE natural_key = $3")
            .bind(opt_out)
            .bind(to_millis(now))
            .bind(natural_key)
            .execute(p)
            .await?
            .rows_affected());
        Ok(n > 0)
    }

    /// Which recipients with ids in `first..=last` were sent something about `window`.
    pub async fn told_among(
        &self,
        window: WindowId,
        first: RecipientId,
        last: RecipientId,
    ) -> Result<HashSet<RecipientId>, StoreError> {
        let ids: Vec<i64> = on_pool!(self, p => sqlx::query_scalar(
            "SELECT DISTINCT recipient_id FROM deliveries WHERE window_id = $1 AND state = 'sent' \
             AND recipient_id >= $2 AND recipient_id <= $3",
        )
        .bind(window.0)
        .bind(first.0)
        .bind(last.0)
        .fetch_all(p)
        .await?);
        Ok(ids.into_iter().map(RecipientId).collect())
    }

    // ----- the delivery queue --------------------------------------------------------------

    /// Enqueues planned deliveries in one transaction. Rows already queued (same idempotency
    /// key) are left alone. Returns how many rows were new.
    pub async fn enqueue(&self, rows: &[PlannedDelivery]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let mut inserted = 0;
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO deliveries (window_id, revision, notice, recipient_id, channel, due_at, deadline) ",
                );
                qb.push_values(chunk, |mut b, d| {
                    b.push_bind(d.window.0)
                        .push_bind(i64::from(d.revision))
                        .push_bind(d.notice.to_string())
                        .push_bind(d.recipient.0)
                        .push_bind(d.channel.as_str())
                        .push_bind(to_millis(d.due_at))
                        .push_bind(to_millis(d.deadline));
                });
                qb.push(" ON CONFLICT DO NOTHING");
                inserted += qb.build().execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            Ok(inserted)
        })
    }

    /// Marks every unsent delivery whose deadline has passed as expired.
    pub async fn expire_due(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(on_pool!(self, p => sqlx::query(
            "UPDATE deliveries SET state = 'expired', last_error = COALESCE(last_error, 'deadline passed before it could be sent') \
             WHERE state = 'pending' AND deadline <= $1",
        )
        .bind(to_millis(now))
        .execute(p)
        .await?
        .rows_affected()))
    }

    /// Returns deliveries whose claim lapsed (their worker died) to the queue.
    pub async fn release_lapsed_claims(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(on_pool!(self, p => sqlx::query(
            "UPDATE deliveries SET state = 'pending', lease_owner = NULL, lease_until = NULL \
             WHERE state = 'claimed' AND lease_until <= $1",
        )
        .bind(to_millis(now))
        .execute(p)
        .await?
        .rows_affected()))
    }

    /// Claims up to `limit` due deliveries for `owner` until `lease_until`, oldest due first.
    pub async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: i64,
        owner: &str,
        lease_until: DateTime<Utc>,
        only_broadcast: Option<i64>,
    ) -> Result<Vec<ClaimedRow>, StoreError> {
        let pick = match self.dialect() {
            Dialect::Sqlite => {
                "SELECT id FROM deliveries WHERE state = 'pending' AND due_at <= $3 AND deadline > $3 AND ($5 IS NULL OR broadcast_id = $5) ORDER BY due_at, id LIMIT $4"
            }
            Dialect::Postgres => {
                "SELECT id FROM deliveries WHERE state = 'pending' AND due_at <= $3 AND deadline > $3 AND ($5 IS NULL OR broadcast_id = $5) ORDER BY due_at, id LIMIT $4 \
                 FOR UPDATE SKIP LOCKED"
            }
        };
        let claim = format!(
            "UPDATE deliveries SET state = 'claimed', lease_owner = $1, lease_until = $2, attempts = attempts + 1 \
             WHERE id IN ({pick}) RETURNING id"
        );
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let ids: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(claim))
                .bind(owner)
                .bind(to_millis(lease_until))
                .bind(to_millis(now))
                .bind(limit)
                .bind(only_broadcast)
                .fetch_all(&mut *tx)
                .await?;
            if ids.is_empty() {
                tx.commit().await?;
                return Ok(Vec::new());
            }
            let mut qb = QueryBuilder::new(
                "SELECT d.id, d.window_id, d.broadcast_id, d.revision, d.notice, d.channel, d.attempts, d.deadline, d.recipient_id, \
                 r.phone, r.email, r.locale, r.zone FROM deliveries d JOIN recipients r ON r.id = d.recipient_id WHERE d.id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in &ids {
                sep.push_bind(*id);
            }
            qb.push(") ORDER BY d.id");
            let rows: Vec<ClaimedRow> = qb.build_query_as().fetch_all(&mut *tx).await?;
            tx.commit().await?;
            Ok(rows)
        })
    }

    /// Stores a rendered body once per cache key and returns its id.
    pub async fn body_id(&self, cache_key: &str, content: &str) -> Result<i64, StoreError> {
        on_pool!(self, p => {
            sqlx::query("INSERT INTO bodies (cache_key, content) VALUES ($1, $2) ON CONFLICT (cache_key) DO NOTHING")
                .bind(cache_key)
                .bind(content)
                .execute(p)
                .await?;
            Ok(sqlx::query_scalar("SELECT id FROM bodies WHERE cache_key = $1").bind(cache_key).fetch_one(p).await?)
        })
    }

    /// Records how each claimed delivery ended this attempt, in one transaction. Only rows still
    /// claimed are touched: a delivery superseded while in flight stays superseded.
    pub async fn finish(&self, outcomes: &[Finish], now: DateTime<Utc>) -> Result<(), StoreError> {
        let now = to_millis(now);
        // The common case, a batch sent through one backend with one body per group, is one
        // statement per group rather than one per row.
        let mut plain_sent: std::collections::BTreeMap<(&str, Option<i64>), Vec<i64>> = Default::default();
        let mut others = Vec::new();
        for f in outcomes {
            match f {
                Finish::Sent {
                    id,
                    backend,
                    provider_id: None,
                    body_id,
                } => plain_sent.entry((backend.as_str(), *body_id)).or_default().push(*id),
                other => others.push(other),
            }
        }
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for ((backend, body_id), ids) in &plain_sent {
                for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                    let mut qb = QueryBuilder::new("UPDATE deliveries SET state = 'sent', sent_at = ");
                    qb.push_bind(now)
                        .push(", backend = ")
                        .push_bind(*backend)
                        .push(", body_id = ")
                        .push_bind(*body_id)
                        .push(", last_error = NULL, lease_owner = NULL, lease_until = NULL WHERE state = 'claimed' AND id IN (");
                    let mut sep = qb.separated(", ");
                    for id in chunk {
                        sep.push_bind(*id);
                    }
                    qb.push(")");
                    qb.build().execute(&mut *tx).await?;
                }
            }
            for f in others {
                let q = match f {
                    Finish::Sent { id, backend, provider_id, body_id } => sqlx::query(
                        "UPDATE deliveries SET state = 'sent', sent_at = $2, backend = $3, provider_id = $4, body_id = $5, \
                         last_error = NULL, lease_owner = NULL, lease_until = NULL WHERE id = $1 AND state = 'claimed'",
                    )
                    .bind(*id)
                    .bind(now)
                    .bind(backend.clone())
                    .bind(provider_id.clone())
                    .bind(*body_id),
                    Finish::Retry { id, at, error } => sqlx::query(
                        "UPDATE deliveries SET state = 'pending', due_at = $2, last_error = $3, lease_owner = NULL, lease_until = NULL \
                         WHERE id = $1 AND state = 'claimed'",
                    )
                    .bind(*id)
                    .bind(to_millis(*at))
                    .bind(error.clone()),
                    Finish::Failed { id, error } => sqlx::query(
                        "UPDATE deliveries SET state = 'failed', last_error = $2, lease_owner = NULL, lease_until = NULL \
                         WHERE id = $1 AND state = 'claimed'",
                    )
                    .bind(*id)
                    .bind(error.clone()),
                    Finish::Expired { id, error } => sqlx::query(
                        "UPDATE deliveries SET state = 'expired', last_error = $2, lease_owner = NULL, lease_until = NULL \
                         WHERE id = $1 AND state = 'claimed'",
                    )
                    .bind(*id)
                    .bind(error.clone()),
                };
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Counts by window (or broadcast), notice, channel and state.
    pub async fn summary(&self, window: Option<WindowId>) -> Result<Vec<SummaryRow>, StoreError> {
        self.summary_of(window, None).await
    }

    /// Counts for one broadcast by notice, channel and state.
    pub async fn broadcast_summary(&self, broadcast: i64) -> Result<Vec<SummaryRow>, StoreError> {
        self.summary_of(None, Some(broadcast)).await
    }

    async fn summary_of(
        &self,
        window: Option<WindowId>,
        broadcast: Option<i64>,
    ) -> Result<Vec<SummaryRow>, StoreError> {
        let rows = on_pool!(self, p => sqlx::query(
            "SELECT window_id, broadcast_id, notice, channel, state, COUNT(*) AS n FROM deliveries \
             WHERE ($1 IS NULL OR window_id = $1) AND ($2 IS NULL OR broadcast_id = $2) \
             GROUP BY window_id, broadcast_id, notice, channel, state \
             ORDER BY MIN(id), window_id, broadcast_id, notice, channel, state",
        )
        .bind(window.map(|w| w.0))
        .bind(broadcast)
        .fetch_all(p)
        .await?
        .into_iter()
        .map(|r| -> Result<SummaryRow, sqlx::Error> {
            Ok(SummaryRow {
                window_id: r.try_get("window_id")?,
                broadcast_id: r.try_get("broadcast_id")?,
                notice: r.try_get("notice")?,
                channel: r.try_get("channel")?,
                state: r.try_get("state")?,
                count: r.try_get("n")?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    // ----- broadcasts ----------------------------------------------------------------------

    /// Records a broadcast under its name, or returns the one already recorded under it if it
    /// is the same broadcast (a rerun). The same name for a different broadcast is refused.
    pub async fn create_broadcast(
        &self,
        b: &NewBroadcast,
        now: DateTime<Utc>,
        actor: &str,
    ) -> Result<Broadcast, StoreError> {
        let message = b.message.as_ref().map(|m| serde_json::to_string(m).unwrap_or_default());
        let filter = serde_json::to_string(&b.filter).unwrap_or_default();
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
        rows: &[(RecipientId, Channel)],
        due_at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let notice = b.notice.map(|n| n.to_string()).unwrap_or_else(|| "message".to_owned());
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let mut inserted = 0;
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO deliveries (window_id, broadcast_id, revision, notice, recipient_id, channel, due_at, deadline) ",
                );
                qb.push_values(chunk, |mut q, (recipient, channel)| {
                    q.push_bind(b.window.map(|w| w.0))
                        .push_bind(b.id)
                        .push_bind(i64::from(b.revision.unwrap_or(0)))
                        .push_bind(notice.clone())
                        .push_bind(recipient.0)
                        .push_bind(channel.as_str())
                        .push_bind(to_millis(due_at))
                        .push_bind(to_millis(b.deadline));
                });
                qb.push(" ON CONFLICT DO NOTHING");
                inserted += qb.build().execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            Ok(inserted)
        })
    }

    /// Stores canary addresses as seed recipients (never in any audience) unless the address
    /// already belongs to a recipient, and returns every one of them.
    pub async fn seed_recipients(&self, seeds: &[Profile], now: DateTime<Utc>) -> Result<Vec<Recipient>, StoreError> {
        if seeds.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = seeds.iter().map(Profile::natural_key).collect();
        let rows: Vec<&Profile> = seeds.iter().collect();
        self.insert_profiles(&rows, true, " ON CONFLICT (natural_key) DO NOTHING", now)
            .await?;
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(r) = self.recipient_by_key(&key).await? {
                found.push(r);
            }
        }
        Ok(found)
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
}

fn window_details(w: &Window) -> serde_json::Value {
    serde_json::json!({
        "title": w.title.en,
        "status": w.status.as_str(),
        "starts_at": w.schedule.starts_at().to_rfc3339(),
        "ends_at": w.schedule.ends_at().to_rfc3339(),
        "zone": w.zone.name(),
        "components": w.components.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
    })
}
