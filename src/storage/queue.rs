//! The delivery queue: enqueue (idempotent by key), expiry, claims with a lease, stored bodies,
//! and the outcome of each attempt. The claim's SQL differs per dialect and lives in
//! `sql/{sqlite,postgres}/claim.sql`.

use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;

use super::rows::{ClaimRow, Claimed};
use super::{Dialect, Pool, ROWS_PER_STATEMENT, Store, StoreError};
use crate::domain::{PlannedDelivery, to_millis};

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

impl Store {
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
    ) -> Result<Vec<Claimed>, StoreError> {
        let claim = match self.dialect() {
            Dialect::Sqlite => include_str!("sql/sqlite/claim.sql"),
            Dialect::Postgres => include_str!("sql/postgres/claim.sql"),
        };
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let ids: Vec<i64> = sqlx::query_scalar(claim)
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
            let rows: Vec<ClaimRow> = qb.build_query_as().fetch_all(&mut *tx).await?;
            tx.commit().await?;
            Ok(rows.into_iter().map(ClaimRow::parse).collect())
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
}
