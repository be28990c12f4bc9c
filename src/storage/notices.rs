//! The notice log: each (window, revision, notice, audience) decided once.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Pool, Store, StoreError};
use crate::domain::{Audience, Decided, Decision, Notice, Outcome, RecipientId, WindowId, from_millis, to_millis};

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

    /// Records a decision once — a planned one before its rows, with its fan-out still open.
    /// For a planned reminder, also supersedes the unsent deliveries of the earlier reminders it
    /// overtakes, in the same transaction.
    pub async fn record_decision(&self, window: WindowId, d: &Decision, now: DateTime<Utc>) -> Result<u64, StoreError> {
        on_writer!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO window_notices (window_id, revision, notice, audience, outcome, due_at, deadline, decided_at, \
                 reach, fanned_out_to, fan_out_done) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10) ON CONFLICT DO NOTHING",
            )
            .bind(window.0)
            .bind(i64::from(d.revision))
            .bind(d.notice.to_string())
            .bind(d.audience.as_str())
            .bind(d.outcome.as_str())
            .bind(to_millis(d.due_at))
            .bind(to_millis(d.deadline))
            .bind(to_millis(now))
            .bind(d.reach.as_str())
            .bind(d.outcome != Outcome::Planned)
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

    /// Marks a planned decision's fan-out complete: every recipient has been read.
    pub async fn close_fan_out(&self, window: WindowId, d: &Decision) -> Result<(), StoreError> {
        on_writer!(self, p => {
            sqlx::query(
            "UPDATE window_notices SET fan_out_done = TRUE \
             WHERE window_id = $1 AND revision = $2 AND notice = $3 AND audience = $4",
        )
        .bind(window.0)
        .bind(i64::from(d.revision))
        .bind(d.notice.to_string())
        .bind(d.audience.as_str())
        .execute(p)
        .await?;
        });
        Ok(())
    }

    /// Planned decisions of the window's `revision` whose fan-out was interrupted, each with the
    /// last recipient id whose rows were committed.
    pub async fn open_fan_outs(
        &self,
        window: WindowId,
        revision: u32,
    ) -> Result<Vec<(Decision, RecipientId)>, StoreError> {
        let rows: Vec<(String, String, String, i64, i64, i64)> = on_pool!(self, p => sqlx::query_as(
            "SELECT notice, audience, reach, due_at, deadline, fanned_out_to FROM window_notices \
             WHERE window_id = $1 AND revision = $2 AND outcome = 'planned' AND fan_out_done = FALSE ORDER BY due_at, notice",
        )
        .bind(window.0)
        .bind(i64::from(revision))
        .fetch_all(p)
        .await?);
        let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("notice log of window {window}: {e}"));
        rows.into_iter()
            .map(|(notice, audience, reach, due_at, deadline, after)| {
                let decision = Decision {
                    revision,
                    notice: notice.parse().map_err(|e| corrupt(&e))?,
                    audience: audience.parse().map_err(|e| corrupt(&e))?,
                    outcome: Outcome::Planned,
                    reach: reach.parse().map_err(|e| corrupt(&e))?,
                    due_at: from_millis(due_at).map_err(|e| corrupt(&e))?,
                    deadline: from_millis(deadline).map_err(|e| corrupt(&e))?,
                    supersedes: Vec::new(),
                };
                Ok((decision, RecipientId(after)))
            })
            .collect()
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
}
