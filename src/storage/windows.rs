//! Windows and their history: creation, revisions with optimistic concurrency, wording edits,
//! and the audit trail. A revision supersedes every unsent delivery of older revisions in the
//! same transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AssertSqlSafe;

use super::rows::{WINDOW_COLUMNS, WindowRow, join_list};
use super::{Pool, Store, StoreError};
use crate::domain::{NewWindow, Window, WindowId, from_millis, to_millis};

/// One entry of a window's audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub revision: u32,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub details: serde_json::Value,
}

impl Store {
    /// Stores a new window and its first history entry in one transaction.
    pub async fn create_window(&self, new: NewWindow, now: DateTime<Utc>, actor: &str) -> Result<Window, StoreError> {
        let draft = Window::create(WindowId(0), new, now);
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO windows (title_en, title_sw, description_en, description_sw, components, starts_at, ends_at, \
                 prev_starts_at, prev_ends_at, zone, status, revision, last_change, auto_complete, cancel_reason, cancel_reason_sw, created_at, revised_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) RETURNING id",
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
            .bind(draft.cancel_reason.as_ref().map(|r| &r.en))
            .bind(draft.cancel_reason.as_ref().and_then(|r| r.sw.as_ref()))
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
            details["reason"] = reason.en.clone().into();
            if let Some(sw) = &reason.sw {
                details["reason_sw"] = sw.clone().into();
            }
        }
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let updated = sqlx::query(
                "UPDATE windows SET starts_at = $1, ends_at = $2, prev_starts_at = $3, prev_ends_at = $4, status = $5, \
                 revision = $6, last_change = $7, cancel_reason = $8, cancel_reason_sw = $9, revised_at = $10, \
                 components = $11 WHERE id = $12 AND revision = $13",
            )
            .bind(to_millis(after.schedule.starts_at()))
            .bind(to_millis(after.schedule.ends_at()))
            .bind(to_millis(after.previous.starts_at()))
            .bind(to_millis(after.previous.ends_at()))
            .bind(after.status.as_str())
            .bind(i64::from(after.revision))
            .bind(after.last_change.as_str())
            .bind(after.cancel_reason.as_ref().map(|r| &r.en))
            .bind(after.cancel_reason.as_ref().and_then(|r| r.sw.as_ref()))
            .bind(to_millis(after.revised_at))
            .bind(join_list(&after.components))
            .bind(after.id.0)
            .bind(i64::from(before.revision))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated != 1 {
                return Err(StoreError::Conflict { id: before.id, expected: before.revision });
            }
            append_history!(tx, after.id.0, i64::from(after.revision), to_millis(now), actor, after.last_change.as_str(), details.to_string());
            // Rows in flight (claimed) are left to their worker, which records what happened:
            // sent if it went out, superseded if it had not.
            let superseded = sqlx::query(
                "UPDATE deliveries SET state = 'superseded', last_error = $3 \
                 WHERE window_id = $1 AND revision < $2 AND state = 'pending'",
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
        on_writer!(self, p => {
            sqlx::query("UPDATE windows SET closed = TRUE WHERE id = $1").bind(id.0).execute(p).await?;
        });
        Ok(())
    }

    /// Records an alarm about the window's current revision in its history, unless one of the
    /// same kind (`overrun`, `sender paused`) is recorded already. Returns whether this call
    /// recorded it (raise it then, not again).
    pub async fn raise_alarm_once(
        &self,
        w: &Window,
        kind: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // Keys serialise in order, so the details of one kind of alarm begin alike.
        let details = serde_json::json!({ "kind": kind, "message": message }).to_string();
        let same_kind = format!("{{\"kind\":{}%", serde_json::Value::from(kind));
        let raised = on_writer!(self, p => sqlx::query(
            "INSERT INTO window_history (window_id, revision, at, actor, action, details) \
             SELECT $1, $2, $3, 'scheduler', 'alarm', $4 WHERE NOT EXISTS \
             (SELECT 1 FROM window_history WHERE window_id = $1 AND revision = $2 AND action = 'alarm' AND details LIKE $5)",
        )
        .bind(w.id.0)
        .bind(i64::from(w.revision))
        .bind(to_millis(now))
        .bind(details)
        .bind(same_kind)
        .execute(p)
        .await?
        .rows_affected());
        Ok(raised == 1)
    }

    pub async fn history(&self, id: WindowId) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows: Vec<(i64, i64, String, String, String)> = on_pool!(self, p => sqlx::query_as(
            "SELECT revision, at, actor, action, details FROM window_history WHERE window_id = $1 ORDER BY id",
        )
        .bind(id.0)
        .fetch_all(p)
        .await?);
        let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("history of window {id}: {e}"));
        rows.into_iter()
            .map(|(revision, at, actor, action, details)| {
                Ok(HistoryEntry {
                    revision: u32::try_from(revision).map_err(|e| corrupt(&e))?,
                    at: from_millis(at).map_err(|e| corrupt(&e))?,
                    actor,
                    action,
                    details: serde_json::from_str(&details).map_err(|e| corrupt(&e))?,
                })
            })
            .collect()
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
