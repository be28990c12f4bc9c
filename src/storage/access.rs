//! What the HTTP side keeps: billers' API tokens (hashes only), the deployment's own keys,
//! answers to idempotent POSTs, opt-outs that arrive from outside with the recipient's history,
//! and handset receipts reported by SMS providers.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, QueryBuilder};

use super::rows::{RECIPIENT_COLUMNS, RecipientRow, join_list};
use super::{Pool, ROWS_PER_STATEMENT, Store, StoreError};
use crate::domain::{Profile, Recipient, RecipientId, SigningKey, from_millis, to_millis};

/// Appends an entry to a recipient's history inside the transaction `$tx` (either dialect).
macro_rules! append_recipient_history {
    ($tx:ident, $id:expr, $at:expr, $source:expr, $action:expr, $details:expr) => {
        sqlx::query(
            "INSERT INTO recipient_history (recipient_id, at, source, action, details) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind($id)
        .bind(to_millis($at))
        .bind($source)
        .bind($action)
        .bind($details)
        .execute(&mut *$tx)
        .await?
    };
}

/// A stored API token: whose it is and the hash to compare with.
#[derive(Debug, Clone)]
pub struct StoredToken {
    pub recipient: RecipientId,
    /// Lower-case hex SHA-256 of the token's secret part.
    pub hash: String,
}

/// A stored answer to an idempotent POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub request_hash: String,
    pub status: u16,
    pub body: String,
}

/// One entry of a recipient's history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecipientEvent {
    pub at: DateTime<Utc>,
    /// Where it came from: `sms:africastalking`, `email`, `cli`.
    pub source: String,
    pub action: String,
    pub details: serde_json::Value,
}

/// What an opt-out did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptedOut {
    pub recipient: RecipientId,
    /// Whether the recipient was opted in until now.
    pub changed: bool,
    /// Deliveries still queued for the recipient, now superseded.
    pub withdrawn: u64,
}

/// What a handset receipt matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandsetReceipt {
    pub delivery: i64,
}

#[derive(sqlx::FromRow)]
struct HistoryRow {
    at: i64,
    source: String,
    action: String,
    details: String,
}

impl Store {
    /// Records a new API token for `recipient` (its secret's hash) and revokes the ones it had:
    /// one live token per biller. Returns the new token's id, which the token carries.
    pub async fn issue_api_token(
        &self,
        recipient: RecipientId,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE recipient_id = $2 AND revoked_at IS NULL")
                .bind(to_millis(now))
                .bind(recipient.0)
                .execute(&mut *tx)
                .await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO api_tokens (recipient_id, hash, created_at) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(recipient.0)
            .bind(hash)
            .bind(to_millis(now))
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(id)
        })
    }

    /// The live (not revoked) token with this id.
    pub async fn api_token(&self, id: i64) -> Result<Option<StoredToken>, StoreError> {
        let row: Option<(i64, String)> = on_pool!(self, p => sqlx::query_as(
            "SELECT recipient_id, hash FROM api_tokens WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .fetch_optional(p)
        .await?);
        Ok(row.map(|(recipient, hash)| StoredToken {
            recipient: RecipientId(recipient),
            hash,
        }))
    }

    /// The key named `name`; `candidate` is kept if there is none yet. Two processes making it
    /// at once agree on the first one written.
    async fn server_key(&self, name: &str, candidate: String) -> Result<String, StoreError> {
        let existing: Option<String> = on_pool!(self, p => sqlx::query_scalar("SELECT value FROM server_keys WHERE name = $1")
            .bind(name)
            .fetch_optional(p)
            .await?);
        if let Some(value) = existing {
            return Ok(value);
        }
        let value = candidate;
        Ok(on_pool!(self, p => {
            sqlx::query("INSERT INTO server_keys (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .bind(&value)
                .execute(p)
                .await?;
            sqlx::query_scalar("SELECT value FROM server_keys WHERE name = $1")
                .bind(name)
                .fetch_one(p)
                .await?
        }))
    }

    /// This deployment's signing key, made (from the system's randomness) on first use and
    /// kept: every process sharing the database signs alike.
    pub async fn signing_key(&self) -> Result<SigningKey, StoreError> {
        // A candidate is made every time (it costs nothing) so that a failure to make one is
        // never stored.
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| StoreError::Corrupt(format!("no randomness to make the signing key: {e}")))?;
        let text = self.server_key("signing", SigningKey::encode(&bytes)).await?;
        SigningKey::from_base64(&text)
            .ok_or_else(|| StoreError::Corrupt("server_keys.signing is not a 32-byte key".into()))
    }

    /// The answer kept for `caller`'s `key`, if it is younger than `since`.
    pub async fn idempotent_answer(
        &self,
        caller: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<StoredAnswer>, StoreError> {
        let row: Option<(String, i64, String)> = on_pool!(self, p => sqlx::query_as(
            "SELECT request_hash, status, body FROM idempotency_keys WHERE caller = $1 AND key = $2 AND created_at >= $3",
        )
        .bind(caller)
        .bind(key)
        .bind(to_millis(since))
        .fetch_optional(p)
        .await?);
        Ok(row.map(|(request_hash, status, body)| StoredAnswer {
            request_hash,
            status: u16::try_from(status).unwrap_or(500),
            body,
        }))
    }

    /// Keeps the answer to `caller`'s `key` (replacing one older than `since`); forgets answers
    /// older than `since`.
    pub async fn keep_answer(
        &self,
        caller: &str,
        key: &str,
        answer: &StoredAnswer,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        on_pool!(self, p => {
            sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                .bind(to_millis(since))
                .execute(p)
                .await?;
            sqlx::query(
                "INSERT INTO idempotency_keys (caller, key, request_hash, status, body, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (caller, key) DO NOTHING",
            )
            .bind(caller)
            .bind(key)
            .bind(&answer.request_hash)
            .bind(i64::from(answer.status))
            .bind(&answer.body)
            .bind(to_millis(now))
            .execute(p)
            .await?;
        });
        Ok(())
    }

    /// The recipient with this id.
    pub async fn recipient(&self, id: RecipientId) -> Result<Option<Recipient>, StoreError> {
        let sql = format!("SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE id = $1");
        let row: Option<RecipientRow> =
            on_pool!(self, p => sqlx::query_as(AssertSqlSafe(sql)).bind(id.0).fetch_optional(p).await?);
        row.map(Recipient::try_from).transpose()
    }

    /// The biller with this email address (any case), if there is one.
    pub async fn biller_by_email(&self, email: &str) -> Result<Option<Recipient>, StoreError> {
        let sql = format!(
            "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE kind = 'biller' AND seed = FALSE AND LOWER(email) = LOWER($1) ORDER BY id LIMIT 1"
        );
        let row: Option<RecipientRow> =
            on_pool!(self, p => sqlx::query_as(AssertSqlSafe(sql)).bind(email).fetch_optional(p).await?);
        row.map(Recipient::try_from).transpose()
    }

    /// Creates a biller, or updates the one with this id, from `profile`. Returns its id. A
    /// phone or email another recipient holds is refused by the database's unique key.
    pub async fn save_biller(
        &self,
        existing: Option<RecipientId>,
        profile: &Profile,
        now: DateTime<Utc>,
    ) -> Result<RecipientId, StoreError> {
        match existing {
            None => {
                self.upsert_recipients(std::slice::from_ref(profile), now).await?;
                let saved = self
                    .recipient_by_key(&profile.natural_key())
                    .await?
                    .ok_or_else(|| StoreError::Corrupt("a biller just saved cannot be read back".into()))?;
                Ok(saved.id)
            }
            Some(id) => {
                on_pool!(self, p => sqlx::query(
                    "UPDATE recipients SET natural_key = $1, name = $2, phone = $3, email = $4, locale = $5, zone = $6, \
                     components = $7, channels = $8, updated_at = $9, content_hash = NULL WHERE id = $10",
                )
                .bind(profile.natural_key())
                .bind(&profile.name)
                .bind(profile.phone.as_ref().map(|p| p.as_str().to_owned()))
                .bind(profile.email.as_ref().map(|e| e.as_str().to_owned()))
                .bind(profile.locale.as_str())
                .bind(profile.zone.name())
                .bind(join_list(&profile.components))
                .bind(join_list(&profile.channels))
                .bind(to_millis(now))
                .bind(id.0)
                .execute(p)
                .await
                .map(|_| ())?);
                Ok(id)
            }
        }
    }

    /// Every biller, in id order, with whether it holds a live API token.
    pub async fn billers(&self) -> Result<Vec<(Recipient, bool)>, StoreError> {
        let sql = format!(
            "SELECT {RECIPIENT_COLUMNS}, EXISTS (SELECT 1 FROM api_tokens t WHERE t.recipient_id = recipients.id AND t.revoked_at IS NULL) AS has_token \
             FROM recipients WHERE kind = 'biller' AND seed = FALSE ORDER BY id"
        );
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            recipient: RecipientRow,
            has_token: bool,
        }
        let rows: Vec<Row> = on_pool!(self, p => sqlx::query_as(AssertSqlSafe(sql)).fetch_all(p).await?);
        rows.into_iter()
            .map(|r| Ok((Recipient::try_from(r.recipient)?, r.has_token)))
            .collect()
    }

    /// Opts a recipient out (by natural key: an SMS reply's number; or by id: an email's
    /// unsubscribe link), in one transaction: the flag, the deliveries still queued for it
    /// (superseded: nothing further is sent) and an entry in its history. `None` if no such
    /// recipient exists.
    pub async fn opt_out(
        &self,
        who: OptOutBy<'_>,
        source: &str,
        details: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<Option<OptedOut>, StoreError> {
        let details = serde_json::to_string(details).map_err(|source| StoreError::Encode {
            what: "history details",
            source,
        })?;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let found: Option<(i64, bool)> = match who {
                OptOutBy::Key(key) => sqlx::query_as("SELECT id, opt_out FROM recipients WHERE natural_key = $1")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?,
                OptOutBy::Id(id) => sqlx::query_as("SELECT id, opt_out FROM recipients WHERE id = $1")
                    .bind(id.0)
                    .fetch_optional(&mut *tx)
                    .await?,
            };
            let Some((id, was_out)) = found else {
                return Ok(None);
            };
            sqlx::query("UPDATE recipients SET opt_out = TRUE, updated_at = $1 WHERE id = $2")
                .bind(to_millis(now))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let withdrawn = sqlx::query(
                "UPDATE deliveries SET state = 'superseded', last_error = 'the recipient opted out' \
                 WHERE recipient_id = $1 AND state = 'pending'",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            append_recipient_history!(tx, id, now, source, "opt-out", &details);
            tx.commit().await?;
            Ok(Some(OptedOut {
                recipient: RecipientId(id),
                changed: !was_out,
                withdrawn,
            }))
        })
    }

    /// Opts a recipient (by natural key) back in and writes it to its history, in one
    /// transaction. `None` if no such recipient exists.
    pub async fn opt_in(
        &self,
        natural_key: &str,
        source: &str,
        details: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<Option<RecipientId>, StoreError> {
        let details = serde_json::to_string(details).map_err(|source| StoreError::Encode {
            what: "history details",
            source,
        })?;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let id: Option<i64> = sqlx::query_scalar(
                "UPDATE recipients SET opt_out = FALSE, updated_at = $1 WHERE natural_key = $2 RETURNING id",
            )
            .bind(to_millis(now))
            .bind(natural_key)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(id) = id else {
                return Ok(None);
            };
            append_recipient_history!(tx, id, now, source, "opt-in", &details);
            tx.commit().await?;
            Ok(Some(RecipientId(id)))
        })
    }

    /// A recipient's history, oldest first.
    pub async fn recipient_history(&self, id: RecipientId) -> Result<Vec<RecipientEvent>, StoreError> {
        let rows: Vec<HistoryRow> = on_pool!(self, p => sqlx::query_as(
            "SELECT at, source, action, details FROM recipient_history WHERE recipient_id = $1 ORDER BY id",
        )
        .bind(id.0)
        .fetch_all(p)
        .await?);
        rows.into_iter()
            .map(|r| {
                Ok(RecipientEvent {
                    at: from_millis(r.at).map_err(|e| StoreError::Corrupt(format!("recipient history: {e}")))?,
                    source: r.source,
                    action: r.action,
                    details: serde_json::from_str(&r.details)
                        .map_err(|e| StoreError::Corrupt(format!("recipient history: {e}")))?,
                })
            })
            .collect()
    }

    /// Records what the provider said became of the message it gave `provider_id` (sent by
    /// `backend`): `delivered` or `undelivered`, beside the delivery's own state. A later
    /// report replaces an earlier one. `None` if no attempt carries that id: neither a
    /// delivery recorded sent with it nor a try in the attempts log.
    pub async fn record_handset(
        &self,
        backend: &str,
        provider_id: &str,
        handset: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<HandsetReceipt>, StoreError> {
        on_pool!(self, p => {
            let mut delivery: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM deliveries WHERE provider_id = $1 AND backend = $2 ORDER BY id DESC LIMIT 1",
            )
            .bind(provider_id)
            .bind(backend)
            .fetch_optional(p)
            .await?;
            if delivery.is_none() {
                delivery = sqlx::query_scalar(
                    "SELECT delivery_id FROM attempts WHERE provider_id = $1 AND backend = $2 ORDER BY id DESC LIMIT 1",
                )
                .bind(provider_id)
                .bind(backend)
                .fetch_optional(p)
                .await?;
            }
            let Some(delivery) = delivery else {
                return Ok(None);
            };
            sqlx::query("UPDATE deliveries SET handset = $1, handset_at = $2 WHERE id = $3")
                .bind(handset)
                .bind(to_millis(at))
                .bind(delivery)
                .execute(p)
                .await?;
            Ok(Some(HandsetReceipt { delivery }))
        })
    }

    /// The handset receipt of a delivery, if a provider reported one.
    pub async fn handset(&self, delivery: i64) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
        let row: Option<(Option<String>, Option<i64>)> = on_pool!(self, p => sqlx::query_as(
            "SELECT handset, handset_at FROM deliveries WHERE id = $1",
        )
        .bind(delivery)
        .fetch_optional(p)
        .await?);
        match row {
            Some((Some(state), Some(at))) => Ok(Some((
                state,
                from_millis(at).map_err(|e| StoreError::Corrupt(format!("delivery {delivery}: {e}")))?,
            ))),
            _ => Ok(None),
        }
    }
}

/// Whom an opt-out names.
#[derive(Debug, Clone, Copy)]
pub enum OptOutBy<'a> {
    /// The natural key: E.164 phone, else lower-case email.
    Key(&'a str),
    Id(RecipientId),
}

/// What `/metrics` reports, read from the ledger at scrape time.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// (state, channel, backend or "", count)
    pub deliveries: Vec<(String, String, String, i64)>,
    /// Pending deliveries due at or before now, but for those a paused window holds.
    pub due: i64,
    /// Seconds since the oldest of them became due.
    pub oldest_due_age: f64,
    pub endpoints_disabled: i64,
    /// Attempts by upper bound of latency in ms (cumulative), with the total count and sum.
    pub latency_buckets: Vec<(u64, i64)>,
    pub latency_count: i64,
    pub latency_sum_ms: i64,
}

/// Upper bounds of the send latency histogram, in milliseconds.
pub const LATENCY_BOUNDS_MS: [u64; 10] = [5, 10, 25, 50, 100, 250, 500, 1000, 5000, 15000];

impl Store {
    /// Counts for `/metrics`.
    pub async fn metrics(&self, now: DateTime<Utc>) -> Result<MetricsSnapshot, StoreError> {
        let buckets: String = LATENCY_BOUNDS_MS
            .iter()
            .map(|b| format!(", CAST(COALESCE(SUM(CASE WHEN latency_ms <= {b} THEN 1 ELSE 0 END), 0) AS BIGINT)"))
            .collect();
        // Every try: the log's, and the successes kept on the deliveries' rows.
        let latency_sql = format!(
            "SELECT COUNT(*), CAST(COALESCE(SUM(latency_ms), 0) AS BIGINT){buckets} FROM ( \
             SELECT latency_ms FROM attempts \
             UNION ALL SELECT sent_latency_ms AS latency_ms FROM deliveries WHERE sent_latency_ms IS NOT NULL) AS tries"
        );
        on_pool!(self, p => {
            let deliveries: Vec<(String, String, String, i64)> = sqlx::query_as(
                "SELECT state, channel, COALESCE(backend, ''), COUNT(*) FROM deliveries GROUP BY state, channel, COALESCE(backend, '') \
                 ORDER BY 1, 2, 3",
            )
            .fetch_all(p)
            .await?;
            let (due, oldest): (i64, Option<i64>) = sqlx::query_as(
                "SELECT COUNT(*), MIN(due_at) FROM deliveries WHERE state = 'pending' AND waiting AND NOT held AND due_at <= $1",
            )
            .bind(to_millis(now))
            .fetch_one(p)
            .await?;
            let endpoints_disabled: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM webhook_endpoints WHERE disabled_reason IS NOT NULL AND disabled_reason <> 'removed'",
            )
            .fetch_one(p)
            .await?;
            let row = sqlx::query(AssertSqlSafe(latency_sql)).fetch_one(p).await?;
            use sqlx::Row as _;
            let latency_count: i64 = row.try_get(0)?;
            let latency_sum_ms: i64 = row.try_get(1)?;
            let mut latency_buckets = Vec::new();
            for (i, bound) in LATENCY_BOUNDS_MS.iter().enumerate() {
                latency_buckets.push((*bound, row.try_get::<i64, _>(i + 2)?));
            }
            Ok(MetricsSnapshot {
                deliveries,
                due,
                oldest_due_age: oldest.map_or(0.0, |t| (to_millis(now) - t).max(0) as f64 / 1000.0),
                endpoints_disabled,
                latency_buckets,
                latency_count,
                latency_sum_ms,
            })
        })
    }
}

/// One event a biller was sent, as rendered.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BillerEvent {
    /// Its place in the biller's sequence: the cursor of `GET /v1/events`.
    pub id: i64,
    /// The delivery's identity without the endpoint: with `.e{endpoint}` it is the `webhook-id`
    /// the event was sent under.
    pub key: String,
    pub kind: String,
    /// The envelope as sent, without its per-attempt timestamp.
    pub payload: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// An event to keep in a biller's sequence: its key (the notice's idempotency key for that
/// biller), its type and its payload as sent.
#[derive(Debug, Clone)]
pub struct NewBillerEvent {
    pub recipient: RecipientId,
    pub key: String,
    pub kind: String,
    pub payload: String,
}

impl Store {
    /// Records events for billers, each once per (biller, key), in one transaction.
    pub async fn record_biller_events(&self, events: &[NewBillerEvent], now: DateTime<Utc>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for chunk in events.chunks(ROWS_PER_STATEMENT) {
                let mut qb = QueryBuilder::new("INSERT INTO biller_events (recipient_id, event_key, type, payload, created_at) ");
                qb.push_values(chunk, |mut b, e| {
                    b.push_bind(e.recipient.0)
                        .push_bind(e.key.as_str())
                        .push_bind(e.kind.as_str())
                        .push_bind(e.payload.as_str())
                        .push_bind(to_millis(now));
                });
                qb.push(" ON CONFLICT (recipient_id, event_key) DO NOTHING");
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// A biller's events after cursor `after` (and at or after `since`, if given), oldest
    /// first, at most `limit`.
    pub async fn biller_events(
        &self,
        recipient: RecipientId,
        after: i64,
        since: Option<DateTime<Utc>>,
        limit: i64,
    ) -> Result<Vec<BillerEvent>, StoreError> {
        let rows: Vec<(i64, String, String, String, i64)> = on_pool!(self, p => sqlx::query_as(
            "SELECT id, event_key, type, payload, created_at FROM biller_events \
             WHERE recipient_id = $1 AND id > $2 AND created_at >= $3 ORDER BY id LIMIT $4",
        )
        .bind(recipient.0)
        .bind(after)
        .bind(since.map_or(i64::MIN, to_millis))
        .bind(limit)
        .fetch_all(p)
        .await?);
        rows.into_iter()
            .map(|(id, key, kind, payload, at)| {
                let corrupt = |e: String| StoreError::Corrupt(format!("biller event {id}: {e}"));
                Ok(BillerEvent {
                    id,
                    key,
                    kind,
                    payload: serde_json::from_str(&payload).map_err(|e| corrupt(e.to_string()))?,
                    at: from_millis(at).map_err(|e| corrupt(e.to_string()))?,
                })
            })
            .collect()
    }
}
