//! Reports over the ledger: counts by window, broadcast, notice, channel and state.

use serde::Serialize;
use sqlx::Row;

use super::{Pool, Store, StoreError};
use crate::domain::{DeliveryState, WindowId};

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
            "SELECT window_id, broadcast_id, notice, channel, state, COUNT(*) AS n, \
             SUM(CASE WHEN possibly_duplicate THEN 1 ELSE 0 END) AS flagged FROM deliveries \
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
}
