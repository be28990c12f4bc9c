//! What the harness reads and writes in Tangazo's database itself: throwaway PostgreSQL
//! databases, the bulk registration of webhook endpoints, and the delivery ledger after a run.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection, QueryBuilder};

/// A pool on either store.
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

macro_rules! on_db {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            Db::Sqlite($p) => $body,
            Db::Postgres($p) => $body,
        }
    };
}

/// One row of the ledger, with the address it went to.
#[derive(Debug, sqlx::FromRow)]
pub struct Delivery {
    pub channel: String,
    pub state: String,
    /// The phone number (SMS), email address (email) or endpoint URL (webhook).
    pub address: Option<String>,
    pub due_at: i64,
    pub sent_at: Option<i64>,
}

/// What `tangazo webhooks add` stored for the one endpoint registered through it.
#[derive(Debug, sqlx::FromRow)]
pub struct EndpointShape {
    pub events: String,
    pub components: String,
    pub created_at: i64,
}

impl Db {
    pub async fn open(url: &str) -> anyhow::Result<Db> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(false)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .context("opening the SQLite database")?;
            Ok(Db::Sqlite(pool))
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .connect(url)
                .await
                .context("opening the PostgreSQL database")?;
            Ok(Db::Postgres(pool))
        }
    }

    pub async fn close(self) {
        on_db!(self, p => p.close().await);
    }

    /// Billers' ids and addresses, in id order.
    pub async fn billers(&self) -> anyhow::Result<Vec<(i64, String)>> {
        let sql = "SELECT id, COALESCE(email, phone) AS address FROM recipients WHERE kind = 'biller' ORDER BY id";
        Ok(on_db!(self, p => sqlx::query_as(sql).fetch_all(p).await?))
    }

    /// The endpoints registered so far, as `tangazo webhooks add` stored them.
    pub async fn endpoints(&self) -> anyhow::Result<Vec<EndpointShape>> {
        let sql = "SELECT events, components, created_at FROM webhook_endpoints ORDER BY id";
        Ok(on_db!(self, p => sqlx::query_as(sql).fetch_all(p).await?))
    }

    /// Registers endpoints `(biller id, url, secret)` with the events and components of `like`,
    /// writing the same columns `tangazo webhooks add` writes (src/storage/endpoints.rs,
    /// `Store::add_endpoint`), in one transaction. Tangazo has no bulk registration, and one
    /// process per endpoint would take minutes for ten thousand.
    pub async fn add_endpoints(&self, endpoints: &[(i64, String, String)], like: &EndpointShape) -> anyhow::Result<()> {
        const ROWS: usize = 1000;
        on_db!(self, p => {
            let mut tx = p.begin().await?;
            for chunk in endpoints.chunks(ROWS) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO webhook_endpoints (recipient_id, url, secret, events, components, created_at) ",
                );
                qb.push_values(chunk, |mut b, (biller, url, secret)| {
                    b.push_bind(*biller)
                        .push_bind(url.as_str())
                        .push_bind(secret.as_str())
                        .push_bind(like.events.as_str())
                        .push_bind(like.components.as_str())
                        .push_bind(like.created_at);
                });
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// How many deliveries are sent.
    pub async fn sent(&self) -> anyhow::Result<u64> {
        let sql = "SELECT COUNT(*) FROM deliveries WHERE state = 'sent'";
        let n: i64 = on_db!(self, p => sqlx::query_scalar(sql).fetch_one(p).await?);
        Ok(u64::try_from(n).unwrap_or_default())
    }

    /// Seconds from the first slot to the last delivery sent.
    pub async fn sending_span(&self) -> anyhow::Result<f64> {
        let sql = "SELECT COALESCE(MAX(sent_at) - MIN(due_at), 0) FROM deliveries WHERE state = 'sent'";
        let ms: i64 = on_db!(self, p => sqlx::query_scalar(sql).fetch_one(p).await?);
        Ok(ms as f64 / 1000.0)
    }

    /// Every row of the ledger with its address: the recipient's phone or email, or for a
    /// webhook the endpoint's URL.
    pub async fn deliveries(&self) -> anyhow::Result<Vec<Delivery>> {
        let sql = "SELECT d.channel, d.state, \
                   CASE d.channel WHEN 'sms' THEN r.phone WHEN 'email' THEN r.email ELSE e.url END AS address, \
                   d.due_at, d.sent_at \
                   FROM deliveries d JOIN recipients r ON r.id = d.recipient_id \
                   LEFT JOIN webhook_endpoints e ON e.id = d.endpoint_id";
        Ok(on_db!(self, p => sqlx::query_as(sql).fetch_all(p).await?))
    }
}

/// Checks that the PostgreSQL server at `admin` answers.
pub async fn check_postgres(admin: &str) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(admin).with_context(|| format!("--postgres-admin '{admin}'"))?;
    let conn = tokio::time::timeout(Duration::from_secs(5), options.connect())
        .await
        .map_err(|_| anyhow::anyhow!("no answer in 5 s"))??;
    conn.close().await?;
    Ok(())
}

/// Creates the database `name` through `admin`; returns its URL.
pub async fn create_database(admin: &str, name: &str) -> anyhow::Result<String> {
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        bail!("'{name}' is not a plain database name");
    }
    let mut conn = PgConnection::connect(admin).await?;
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .with_context(|| format!("creating database {name}"))?;
    conn.close().await?;
    let mut url = url::Url::parse(admin)?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// Drops the database `name`, disconnecting whoever is still on it.
pub async fn drop_database(admin: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(admin).await?;
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut conn)
        .await
        .with_context(|| format!("dropping database {name}"))?;
    conn.close().await?;
    Ok(())
}
