//! The attempts log: every hand-over of a delivery to a backend, and how it went.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, QueryBuilder};

use super::{Pool, ROWS_PER_STATEMENT, Store, StoreError};
use crate::domain::to_millis;

/// One attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attempt {
    pub delivery: i64,
    pub at: DateTime<Utc>,
    pub backend: String,
    /// sent, transient, uncertain, permanent, gone or too_late.
    pub outcome: &'static str,
    /// The provider's status (`HTTP 502`, `SMTP 451`), where it gave one.
    pub status: Option<String>,
    pub latency_ms: u64,
    pub provider_id: Option<String>,
    /// Truncated, the recipient's address masked.
    pub error: Option<String>,
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    delivery_id: i64,
    at: i64,
    backend: String,
    outcome: String,
    status: Option<String>,
    latency_ms: i64,
    provider_id: Option<String>,
    error: Option<String>,
}

/// An attempt as read back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttemptInfo {
    pub delivery: i64,
    pub at: DateTime<Utc>,
    pub backend: String,
    pub outcome: String,
    pub status: Option<String>,
    pub latency_ms: i64,
    pub provider_id: Option<String>,
    pub error: Option<String>,
}

/// Appends attempts to the log through `$conn` (a connection or transaction of either
/// dialect), `ROWS_PER_STATEMENT` to a statement.
macro_rules! insert_attempts {
    ($conn:expr, $attempts:expr) => {
        for chunk in $attempts.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::new(
                "INSERT INTO attempts (delivery_id, at, backend, outcome, status, latency_ms, provider_id, error) ",
            );
            qb.push_values(chunk, |mut b, a: &Attempt| {
                b.push_bind(a.delivery)
                    .push_bind(to_millis(a.at))
                    .push_bind(a.backend.as_str())
                    .push_bind(a.outcome)
                    .push_bind(a.status.as_deref())
                    .push_bind(i64::try_from(a.latency_ms).unwrap_or(i64::MAX))
                    .push_bind(a.provider_id.as_deref())
                    .push_bind(a.error.as_deref());
            });
            qb.build().execute(&mut *$conn).await?;
        }
    };
}
pub(super) use insert_attempts;

impl Store {
    /// Appends attempts to the log, in one transaction.
    pub async fn record_attempts(&self, attempts: &[Attempt]) -> Result<(), StoreError> {
        if attempts.is_empty() {
            return Ok(());
        }
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            insert_attempts!(tx, attempts);
            tx.commit().await?;
        });
        Ok(())
    }

    /// A delivery's attempts, oldest first: the log's rows for it, then the success its row
    /// keeps.
    pub async fn attempts(&self, delivery: i64) -> Result<Vec<AttemptInfo>, StoreError> {
        let rows: Vec<AttemptRow> = on_pool!(self, p => sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM ( \
             SELECT {COLUMNS}, 0 AS part, id AS seq FROM attempts WHERE delivery_id = $1 \
             UNION ALL SELECT {KEPT}, 1 AS part, 0 AS seq FROM deliveries WHERE id = $1 AND sent_latency_ms IS NOT NULL \
             ) AS a ORDER BY part, seq"
        )))
        .bind(delivery)
        .fetch_all(p)
        .await?);
        infos(rows)
    }

    /// The latest attempts to deliver to a webhook endpoint, newest first.
    pub async fn endpoint_attempts(&self, endpoint: i64, limit: i64) -> Result<Vec<AttemptInfo>, StoreError> {
        // A row's success came after every try the log holds for it.
        let rows: Vec<AttemptRow> = on_pool!(self, p => sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM ( \
             SELECT {COLUMNS}, 0 AS part, id AS seq FROM attempts \
             WHERE delivery_id IN (SELECT id FROM deliveries WHERE endpoint_id = $1) \
             UNION ALL SELECT {KEPT}, 1 AS part, 0 AS seq FROM deliveries \
             WHERE endpoint_id = $1 AND sent_latency_ms IS NOT NULL \
             ) AS a ORDER BY at DESC, part DESC, seq DESC LIMIT $2"
        )))
        .bind(endpoint)
        .bind(limit)
        .fetch_all(p)
        .await?);
        infos(rows)
    }
}

/// The columns of an attempt, as the log has them and as read back.
const COLUMNS: &str = "delivery_id, at, backend, outcome, status, latency_ms, provider_id, error";
/// Those columns from a delivery's row, for the success it keeps (`sent_latency_ms` set).
const KEPT: &str = "id AS delivery_id, sent_at AS at, backend, 'sent' AS outcome, CAST(NULL AS TEXT) AS status, \
     sent_latency_ms AS latency_ms, provider_id, CAST(NULL AS TEXT) AS error";

fn infos(rows: Vec<AttemptRow>) -> Result<Vec<AttemptInfo>, StoreError> {
    rows.into_iter()
        .map(|r| {
            Ok(AttemptInfo {
                delivery: r.delivery_id,
                at: super::rows::instant("attempt", r.delivery_id, r.at)?,
                backend: r.backend,
                outcome: r.outcome,
                status: r.status,
                latency_ms: r.latency_ms,
                provider_id: r.provider_id,
                error: r.error,
            })
        })
        .collect()
}
