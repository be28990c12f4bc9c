//! Storage: windows, recipients, the notice log and the delivery queue, on SQLite or PostgreSQL.
//!
//! One interface, two dialects, one conformance suite (`tests/it/store.rs`). Only this module
//! mentions sqlx. One file per aggregate, each an `impl Store` block: `windows` (and their
//! history), `notices` (the notice log), `recipients`, `queue` (enqueue, claim, finish),
//! `broadcasts` and `reports`; `rows` parses what sqlx reads into domain types. Instants are stored as integer Unix milliseconds in both dialects, so one set
//! of row types and bindings serves both and SQLite compares them as integers. The SQL is shared
//! wherever the dialects agree (`$n` placeholders, `ON CONFLICT`, `RETURNING`, partial indexes);
//! where they differ (claiming with `FOR UPDATE SKIP LOCKED`) each dialect has its own text.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::domain::WindowId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database")]
    Database(#[from] sqlx::Error),
    #[error("database migration")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL '{0}': use sqlite://FILE or postgres://USER@HOST:PORT/DB")]
    UnsupportedUrl(String),
    #[error("window {0} does not exist")]
    NoSuchWindow(WindowId),
    #[error(
        "no database at {}: nothing has been recorded there yet (check --database, or start with `recipients import` or `window add`)",
        .0.display()
    )]
    NoDatabase(PathBuf),
    #[error("cannot connect to PostgreSQL at {server}")]
    Connect { server: String, source: sqlx::Error },
    #[error("PostgreSQL at {server} did not answer within {seconds} s")]
    NoAnswer { server: String, seconds: u64 },
    #[error("window {id} was changed by someone else (expected revision {expected}); look again and retry")]
    Conflict { id: WindowId, expected: u32 },
    #[error("a different broadcast is already recorded under the name '{0}'; choose another --name")]
    BroadcastNameTaken(String),
    #[error("the database was closed")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot encode {what} for storage")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
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
    /// On SQLite, the one connection this process's hot writes go through (see
    /// [`Store::writer`]); `None` once the store is closed, and on PostgreSQL.
    sqlite_writer: Arc<tokio::sync::Mutex<Option<SqliteConnection>>>,
}

/// What a write goes through (see [`Store::writer`]).
enum Writer<'a> {
    /// This process's turn on its one SQLite writing connection, held until dropped.
    Sqlite(tokio::sync::MappedMutexGuard<'a, SqliteConnection>),
    Postgres(&'a PgPool),
}

/// Ids as one JSON array, the one value SQLite's `json_each` reads a list of ids from.
fn json_ids(ids: &[i64]) -> String {
    serde_json::Value::from(ids).to_string()
}

/// A JSON array of rows (a page, a claim, as SQLite hands them over) read into a vector made
/// with room for `expected` of them: read into an empty one, a page of thousands of rows was
/// copied about a dozen times over as the vector grew. The room is no more than the text can
/// hold (a row takes two characters at the least), so an `expected` from a caller's limit,
/// however large, allocates nothing the rows do not need.
fn json_rows<T: serde::de::DeserializeOwned>(json: &str, expected: usize) -> serde_json::Result<Vec<T>> {
    use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
    struct Rows<T>(usize, std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> DeserializeSeed<'de> for Rows<T> {
        type Value = Vec<T>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de, T: serde::Deserialize<'de>> Visitor<'de> for Rows<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of rows")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut rows = Vec::with_capacity(self.0);
            while let Some(row) = seq.next_element()? {
                rows.push(row);
            }
            Ok(rows)
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let rows = Rows(expected.min(json.len() / 2), std::marker::PhantomData).deserialize(&mut de)?;
    de.end()?;
    Ok(rows)
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

/// Runs `$body` with `$p` what this process writes through (`Store::writer`): on SQLite its
/// one writing connection, whose turn is held until the body ends; on PostgreSQL the pool.
macro_rules! on_writer {
    ($store:expr, $p:ident => $body:expr) => {
        match $store.writer().await? {
            $crate::storage::Writer::Sqlite(mut turn) => {
                #[allow(unused_imports, reason = "for the bodies that begin a transaction")]
                use sqlx::Connection as _;
                let $p = &mut *turn;
                $body
            }
            $crate::storage::Writer::Postgres($p) => $body,
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

mod access;
mod attempts;
mod broadcasts;
mod cluster;
mod endpoints;
mod notices;
mod queue;
mod recipients;
mod reports;
mod rows;
mod windows;

pub use access::{
    BillerEvent, HandsetReceipt, LATENCY_BOUNDS_MS, MetricsSnapshot, NewBillerEvent, OptOutBy, OptedOut,
    RecipientEvent, StoredAnswer, StoredToken,
};
pub use attempts::{Attempt, AttemptInfo};
pub use cluster::{DaemonInfo, PausedWindow};
pub use endpoints::{EndpointInfo, NewEndpoint};
pub use notices::NoticeLogRow;
pub use queue::{Claim, ClaimedBatch, FanOutPage, Finish, HandOver, Position, Released, WrittenPage};
pub use recipients::{ImportBatch, PAGE, RecipientPage};
pub use reports::{DeliveryRow, Requeued, SummaryRow};
pub use rows::{Broadcast, Claimed, ClaimedDelivery, CorruptClaim, Endpoint, NewBroadcast};
pub use windows::HistoryEntry;

/// Rows per multi-row INSERT statement: well under SQLite's and PostgreSQL's parameter limits.
const ROWS_PER_STATEMENT: usize = 1000;

/// The end of an `INSERT … SELECT` with no condition of its own, keyed: SQLite reads an
/// upsert's `ON CONFLICT` right after a `SELECT … FROM` as a join's `ON`, so a `WHERE` comes
/// first.
const UNCONDITIONAL_UPSERT: &str = " WHERE true ON CONFLICT DO NOTHING";

/// The page size of a SQLite file this store creates, four times SQLite's default. Each
/// delivery's row is written three times (planned, claimed, sent), each time in a transaction
/// of its own that writes every page it changed to the write-ahead log: in larger pages a
/// batch's rows and index entries share fewer pages, and fewer page writes and system calls
/// carry them. The page cache stays at SQLite's default in bytes, so memory does not grow.
/// SQLite fixes the size when a file is made: a file made before keeps its own.
const SQLITE_PAGE_SIZE: u32 = 16_384;

/// A fan-out or a broadcast refreshes the store's statistics of the queue once it has recorded
/// this many deliveries, then each time it has doubled them (see
/// `Store::analyze_growing_queue`).
pub const FIRST_ANALYZE: u64 = 50_000;

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the database at `url`.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::open(url, true).await
    }

    /// Opens and migrates the database at `url`, which must exist already: for commands that
    /// only read, so a mistyped path does not leave an empty database behind.
    pub async fn connect_existing(url: &str) -> Result<Store, StoreError> {
        Store::open(url, false).await
    }

    async fn open(url: &str, create: bool) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(create)
                // For a new file only (an existing one keeps its size): see `SQLITE_PAGE_SIZE`.
                .page_size(SQLITE_PAGE_SIZE)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            let file = options.get_filename();
            let sqlite_file =
                (!file.as_os_str().is_empty() && file != std::path::Path::new(":memory:")).then(|| file.to_owned());
            if let Some(path) = sqlite_file.as_ref().filter(|p| !create && !p.exists()) {
                return Err(StoreError::NoDatabase(path.clone()));
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options.clone())
                .await?;
            sqlx::migrate!("migrations/sqlite").run(&pool).await?;
            let writer = SqliteConnection::connect_with(&options).await?;
            Ok(Store {
                pool: Pool::Sqlite(pool),
                sqlite_file,
                sqlite_writer: Arc::new(tokio::sync::Mutex::new(Some(writer))),
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)?;
            // One connection first, briefly: its error names the cause (refused, no such host,
            // authentication), where the pool would only say it timed out, ten seconds later.
            let server = format!("{}:{}", options.get_host(), options.get_port());
            match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(&options)).await {
                Ok(Ok(conn)) => conn.close().await?,
                Ok(Err(source)) => return Err(StoreError::Connect { server, source }),
                Err(_) => return Err(StoreError::NoAnswer { server, seconds: 5 }),
            }
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            sqlx::migrate!("migrations/postgres").run(&pool).await?;
            Ok(Store {
                pool: Pool::Postgres(pool),
                sqlite_file: None,
                sqlite_writer: Arc::default(),
            })
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// Whether this process's writes take turns (SQLite's one writer, see `writer`) rather
    /// than run side by side (PostgreSQL).
    pub fn writes_take_turns(&self) -> bool {
        matches!(self.pool, Pool::Sqlite(_))
    }

    /// What this process's claims, outcomes, fan-out pages and the lead are written through.
    ///
    /// SQLite takes one writer at a time, and a connection that finds the file locked sleeps
    /// and tries again (1 ms, 2 ms, 5 ms…): this process's writers queue for their turn on one
    /// connection instead, each woken the moment the one before commits. One connection rather
    /// than whichever of the pool's was idle: a SQLite connection drops its whole page cache
    /// when another connection has written since its last transaction, so writes that went
    /// round the pool read the ledger's pages afresh every time. PostgreSQL takes concurrent
    /// writers: the pool.
    async fn writer(&self) -> Result<Writer<'_>, StoreError> {
        match &self.pool {
            Pool::Postgres(p) => Ok(Writer::Postgres(p)),
            Pool::Sqlite(_) => tokio::sync::MutexGuard::try_map(self.sqlite_writer.lock().await, Option::as_mut)
                .map(Writer::Sqlite)
                .map_err(|_| StoreError::Closed),
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

    /// After `rows` were written in bulk (an import, a fan-out, a broadcast), refreshes the
    /// query planner's statistics once that is 10,000 rows or more: without them PostgreSQL
    /// plans the claim for an empty queue and sorts every pending row on each claim.
    pub async fn after_bulk_load(&self, rows: u64) -> Result<(), StoreError> {
        if rows >= 10_000 {
            self.analyze().await?;
        }
        Ok(())
    }

    /// While the queue grows in bulk (a long fan-out or broadcast, with sending beside it; from
    /// `FIRST_ANALYZE` rows on, then each time they have doubled): on PostgreSQL,
    /// refreshes the planner's statistics of the deliveries, so that the claims running
    /// meanwhile are planned for the queue as it is. Planned for the empty queue the fan-out
    /// began with, each claim sorted every pending row: at 1,000,000 sending fell from 10,000/s
    /// to 2,000/s while planning ran, at 10,000,000 to 800/s. SQLite's claim takes its partial
    /// index whatever the statistics say: nothing to do.
    pub async fn analyze_growing_queue(&self) -> Result<(), StoreError> {
        if let Pool::Postgres(p) = &self.pool {
            sqlx::query("ANALYZE deliveries").execute(p).await?;
        }
        Ok(())
    }

    /// Refreshes the query planner's statistics.
    pub async fn analyze(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query("PRAGMA optimize").execute(p).await?;
            }
            Pool::Postgres(p) => {
                sqlx::query("ANALYZE deliveries, recipients").execute(p).await?;
            }
        }
        Ok(())
    }

    /// Whether the database answers and has exactly the migrations this build carries.
    pub async fn migrations_current(&self) -> Result<bool, StoreError> {
        let (known, applied): (Vec<i64>, Vec<i64>) = match &self.pool {
            Pool::Sqlite(p) => (
                sqlx::migrate!("migrations/sqlite").iter().map(|m| m.version).collect(),
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                    .fetch_all(p)
                    .await?,
            ),
            Pool::Postgres(p) => (
                sqlx::migrate!("migrations/postgres")
                    .iter()
                    .map(|m| m.version)
                    .collect(),
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                    .fetch_all(p)
                    .await?,
            ),
        };
        Ok(known == applied)
    }

    pub async fn close(&self) {
        if let Some(conn) = self.sqlite_writer.lock().await.take()
            && let Err(e) = conn.close().await
        {
            tracing::warn!(error = %e, "closing the SQLite writer");
        }
        on_pool!(self, p => p.close().await)
    }
}

#[cfg(test)]
mod tests {
    use super::json_rows;

    #[test]
    fn json_rows_reads_an_array_whatever_room_was_expected() {
        let rows: Vec<(i64, String)> = json_rows(r#"[[1, "sms"], [2, "email"]]"#, 1).unwrap();
        assert_eq!(rows, [(1, "sms".to_owned()), (2, "email".to_owned())]);
        let none: Vec<(i64, String)> = json_rows("[]", 500).unwrap();
        assert!(none.is_empty());
        // A limit far beyond the rows (`recipients list --limit`) reserves only what they need.
        let one: Vec<i64> = json_rows("[7]", usize::MAX).unwrap();
        assert_eq!(one, [7]);
        assert!(json_rows::<i64>("[1] 2", 1).is_err(), "trailing data");
        assert!(json_rows::<i64>(r#"{"a": 1}"#, 1).is_err(), "not an array");
        assert!(json_rows::<i64>(r#"[1, "x"]"#, 1).is_err(), "a row of another shape");
    }
}
