//! Billers' webhook endpoints: registration, listing, secret rotation, enabling and disabling,
//! and what fan-out needs of them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, QueryBuilder};

use super::rows::join_list;
use super::{Pool, Store, StoreError};
use crate::domain::{ComponentId, EndpointRoute, EventType, RecipientId, Secret, to_millis};

/// A registered endpoint, as `webhooks list` shows it (no secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EndpointInfo {
    pub id: i64,
    pub recipient: i64,
    pub url: String,
    pub events: Vec<String>,
    pub components: Vec<String>,
    pub disabled: Option<String>,
    /// Until when the previous secret still signs, after a rotation.
    pub previous_until: Option<DateTime<Utc>>,
}

/// What an operator registers.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub recipient: RecipientId,
    pub url: String,
    pub secret: Secret,
    pub events: Vec<EventType>,
    pub components: Vec<ComponentId>,
}

#[derive(sqlx::FromRow)]
struct EndpointRow {
    id: i64,
    recipient_id: i64,
    url: String,
    events: String,
    components: String,
    disabled_reason: Option<String>,
    previous_until: Option<i64>,
}

/// An endpoint's row with its current secret.
#[derive(sqlx::FromRow)]
struct WithSecret {
    #[sqlx(flatten)]
    row: EndpointRow,
    secret: String,
}

const COLUMNS: &str = "id, recipient_id, url, events, components, disabled_reason, previous_until";

fn split(list: &str) -> Vec<String> {
    list.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

impl EndpointRow {
    fn info(self) -> EndpointInfo {
        EndpointInfo {
            id: self.id,
            recipient: self.recipient_id,
            url: self.url,
            events: split(&self.events),
            components: split(&self.components),
            disabled: self.disabled_reason,
            previous_until: self.previous_until.and_then(DateTime::from_timestamp_millis),
        }
    }

    fn route(self) -> Result<EndpointRoute, StoreError> {
        let corrupt = |what: &str, e: String| StoreError::Corrupt(format!("webhook endpoint {}: {what}: {e}", self.id));
        Ok(EndpointRoute {
            id: self.id,
            recipient: RecipientId(self.recipient_id),
            events: split(&self.events)
                .iter()
                .map(|e| e.parse::<EventType>().map_err(|e| corrupt("events", e)))
                .collect::<Result<_, _>>()?,
            components: split(&self.components)
                .iter()
                .map(|c| {
                    c.parse::<ComponentId>()
                        .map_err(|e| corrupt("components", e.to_string()))
                })
                .collect::<Result<_, _>>()?,
            enabled: self.disabled_reason.is_none(),
        })
    }
}

impl Store {
    /// Registers an endpoint; returns its id.
    pub async fn add_endpoint(&self, new: &NewEndpoint, now: DateTime<Utc>) -> Result<i64, StoreError> {
        let events: Vec<String> = new.events.iter().map(ToString::to_string).collect();
        Ok(on_pool!(self, p => sqlx::query_scalar(
            "INSERT INTO webhook_endpoints (recipient_id, url, secret, events, components, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(new.recipient.0)
        .bind(&new.url)
        .bind(new.secret.expose())
        .bind(events.join(","))
        .bind(join_list(&new.components))
        .bind(to_millis(now))
        .fetch_one(p)
        .await?))
    }

    /// Every endpoint, or a biller's, in id order.
    pub async fn endpoints(&self, recipient: Option<RecipientId>) -> Result<Vec<EndpointInfo>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM webhook_endpoints WHERE ($1 IS NULL OR recipient_id = $1) ORDER BY id");
        let rows: Vec<EndpointRow> = on_pool!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(recipient.map(|r| r.0))
            .fetch_all(p)
            .await?);
        Ok(rows.into_iter().map(EndpointRow::info).collect())
    }

    /// One endpoint.
    pub async fn endpoint(&self, id: i64) -> Result<Option<EndpointInfo>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM webhook_endpoints WHERE id = $1");
        let row: Option<EndpointRow> =
            on_pool!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(p).await?);
        Ok(row.map(EndpointRow::info))
    }

    /// Changes an endpoint's URL, event types or components (each only when given).
    pub async fn update_endpoint(
        &self,
        id: i64,
        url: Option<&str>,
        events: Option<&[EventType]>,
        components: Option<&[ComponentId]>,
    ) -> Result<bool, StoreError> {
        let events = events.map(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
        let components = components.map(join_list);
        Ok(on_pool!(self, p => sqlx::query(
            "UPDATE webhook_endpoints SET url = COALESCE($2, url), events = COALESCE($3, events), \
             components = COALESCE($4, components) WHERE id = $1",
        )
        .bind(id)
        .bind(url)
        .bind(events)
        .bind(components)
        .execute(p)
        .await?
        .rows_affected())
            == 1)
    }

    /// One endpoint with its current secret, for a test ping.
    pub async fn endpoint_with_secret(&self, id: i64) -> Result<Option<(EndpointInfo, Secret)>, StoreError> {
        let sql = format!("SELECT {COLUMNS}, secret FROM webhook_endpoints WHERE id = $1");
        let row: Option<WithSecret> =
            on_pool!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(p).await?);
        Ok(row.map(|r| (r.row.info(), Secret::new(r.secret))))
    }

    /// Removes an endpoint that nothing was ever queued for; one with deliveries is disabled
    /// instead, so the ledger keeps where they went. Returns false if there is no such endpoint.
    pub async fn remove_endpoint(&self, id: i64) -> Result<bool, StoreError> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let used: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE endpoint_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            // Whatever is still queued for it will not go.
            sqlx::query(
                "UPDATE deliveries SET state = 'superseded', last_error = 'the endpoint was removed' \
                 WHERE endpoint_id = $1 AND state = 'pending'",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let changed = if used == 0 {
                sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1").bind(id).execute(&mut *tx).await?
            } else {
                sqlx::query("UPDATE webhook_endpoints SET disabled_reason = 'removed' WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
            }
            .rows_affected();
            tx.commit().await?;
            Ok(changed == 1)
        })
    }

    /// A new secret; the old one keeps signing beside it until `overlap_until`.
    pub async fn rotate_endpoint_secret(
        &self,
        id: i64,
        secret: &Secret,
        overlap_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(on_pool!(self, p => sqlx::query(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_until = $2, secret = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(to_millis(overlap_until))
        .bind(secret.expose())
        .execute(p)
        .await?
        .rows_affected())
            == 1)
    }

    /// Enables (`reason` none) or disables an endpoint; enabling clears its failure streak.
    pub async fn set_endpoint_disabled(&self, id: i64, reason: Option<&str>) -> Result<bool, StoreError> {
        Ok(on_writer!(self, p => sqlx::query(
            "UPDATE webhook_endpoints SET disabled_reason = $2, failing_since = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(reason)
        .execute(p)
        .await?
        .rows_affected())
            == 1)
    }

    /// The endpoints of these recipients, as fan-out needs them.
    pub async fn endpoint_routes(
        &self,
        recipients: &[RecipientId],
    ) -> Result<HashMap<RecipientId, Vec<EndpointRoute>>, StoreError> {
        let mut out: HashMap<RecipientId, Vec<EndpointRoute>> = HashMap::new();
        if recipients.is_empty() {
            return Ok(out);
        }
        for chunk in recipients.chunks(1000) {
            let rows: Vec<EndpointRow> = on_pool!(self, p => {
                let mut qb = QueryBuilder::new(format!("SELECT {COLUMNS} FROM webhook_endpoints WHERE recipient_id IN ("));
                let mut sep = qb.separated(", ");
                for r in chunk {
                    sep.push_bind(r.0);
                }
                qb.push(") ORDER BY id");
                qb.build_query_as().fetch_all(p).await?
            });
            for row in rows {
                let route = row.route()?;
                out.entry(route.recipient).or_default().push(route);
            }
        }
        Ok(out)
    }

    /// Ends the failure streaks of endpoints that just took a message: one statement, written
    /// only where a streak ran.
    pub async fn endpoints_answered(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        const END_STREAKS: &str =
            "UPDATE webhook_endpoints SET failing_since = NULL WHERE failing_since IS NOT NULL AND ";
        match &self.pool {
            Pool::Sqlite(p) => {
                let sql = format!("{END_STREAKS}id IN (SELECT value FROM json_each($1))");
                sqlx::query(AssertSqlSafe(sql))
                    .bind(super::json_ids(ids))
                    .execute(p)
                    .await?;
            }
            Pool::Postgres(p) => {
                let sql = format!("{END_STREAKS}id = ANY($1)");
                sqlx::query(AssertSqlSafe(sql)).bind(ids).execute(p).await?;
            }
        }
        Ok(())
    }

    /// Records how an attempt to an endpoint went: a success ends a failure streak; a failure
    /// starts one (or continues it). Returns when the streak started, if one runs.
    pub async fn endpoint_outcome(
        &self,
        id: i64,
        ok: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let since: Option<i64> = on_writer!(self, p => {
            if ok {
                // Written only when a streak ends: a success is the common case.
                sqlx::query("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL")
                    .bind(id)
                    .execute(p)
                    .await?;
                None
            } else {
                sqlx::query_scalar(
                    "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $2) WHERE id = $1 RETURNING failing_since",
                )
                .bind(id)
                .bind(to_millis(now))
                .fetch_optional(p)
                .await?
                .flatten()
            }
        });
        Ok(since.and_then(DateTime::from_timestamp_millis))
    }
}
