//! Several daemons on one database: who is alive (`daemons`, a row each, renewed on the
//! database's clock), who leads (`leader`, one row under a lease), and which windows are
//! paused (`paused_windows`, read by every claim).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AssertSqlSafe;

use super::queue::{db_now_ms, millis};
use super::{Pool, Store, StoreError};
use crate::domain::{WindowId, from_millis, to_millis};

/// The one role a daemon leads: planning and moving windows on.
const SCHEDULER: &str = "scheduler";

/// A daemon gone this long is forgotten.
const FORGET_AFTER_MS: i64 = 3_600_000;

/// A live daemon, as `tangazo daemons` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonInfo {
    pub name: String,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    /// Deliveries it recorded sent since it started.
    pub sent: i64,
    /// Sent per second between its last two beats.
    pub rate: f64,
    pub leader: bool,
}

/// A paused window.
#[derive(Debug, Clone, Serialize)]
pub struct PausedWindow {
    pub window: i64,
    pub paused_at: DateTime<Utc>,
    pub actor: String,
}

type DaemonRow = (String, i64, i64, i64, f64, bool);

impl Store {
    /// Takes or renews the scheduler's lease for `me` for `lease` of the database's time.
    /// Returns when `me`'s unbroken term began (Unix ms, the database's clock): it stays the
    /// same while `me` renews, even past a lapse no other daemon took, and is new once another
    /// daemon has led between. `None`: another daemon holds it, and `me` must not plan or
    /// move windows on.
    pub async fn lead(&self, me: &str, lease: Duration) -> Result<Option<i64>, StoreError> {
        let now = db_now_ms(self.dialect());
        let sql = format!(
            "INSERT INTO leader (role, owner, since, until) VALUES ($1, $2, {now}, {now} + $3) \
             ON CONFLICT (role) DO UPDATE SET owner = excluded.owner, until = excluded.until, \
             since = CASE WHEN leader.owner = excluded.owner THEN leader.since ELSE excluded.since END \
             WHERE leader.owner = excluded.owner OR leader.until <= excluded.since \
             RETURNING owner, since"
        );
        let held: Option<(String, i64)> = on_writer!(self, p => sqlx::query_as(AssertSqlSafe(sql.clone()))
            .bind(SCHEDULER)
            .bind(me)
            .bind(millis(lease))
            .fetch_optional(p)
            .await?);
        Ok(held.and_then(|(owner, since)| (owner == me).then_some(since)))
    }

    /// Gives up the scheduler's lease if `me` holds it.
    pub async fn step_down(&self, me: &str) -> Result<(), StoreError> {
        on_writer!(self, p => sqlx::query("DELETE FROM leader WHERE role = $1 AND owner = $2")
            .bind(SCHEDULER)
            .bind(me)
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// The daemon holding the scheduler's lease now, if any.
    pub async fn leader(&self) -> Result<Option<String>, StoreError> {
        let sql = format!(
            "SELECT owner FROM leader WHERE role = $1 AND until > {}",
            db_now_ms(self.dialect())
        );
        Ok(on_pool!(self, p => sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(SCHEDULER)
            .fetch_optional(p)
            .await?))
    }

    /// Records that `me` is alive for `lease` more, with its running totals; forgets daemons
    /// gone for an hour. Returns how many daemons are alive, `me` included.
    pub async fn beat(&self, me: &str, lease: Duration, sent: u64, rate: f64) -> Result<u64, StoreError> {
        let now = db_now_ms(self.dialect());
        let upsert = format!(
            "INSERT INTO daemons (name, started_at, seen_at, alive_until, sent, rate) VALUES ($1, {now}, {now}, {now} + $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at, alive_until = excluded.alive_until, \
             sent = excluded.sent, rate = excluded.rate"
        );
        let forget = format!("DELETE FROM daemons WHERE alive_until < {now} - $1");
        let count = format!("SELECT COUNT(*) FROM daemons WHERE alive_until > {now}");
        let sent = i64::try_from(sent).unwrap_or(i64::MAX);
        let live: i64 = on_writer!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(AssertSqlSafe(upsert))
                .bind(me)
                .bind(millis(lease))
                .bind(sent)
                .bind(rate)
                .execute(&mut *tx)
                .await?;
            sqlx::query(AssertSqlSafe(forget)).bind(FORGET_AFTER_MS).execute(&mut *tx).await?;
            let live = sqlx::query_scalar(AssertSqlSafe(count)).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            live
        });
        Ok(u64::try_from(live).unwrap_or(1).max(1))
    }

    /// How many processes other than `me` are alive and sending from this database (their
    /// beats not yet lapsed).
    pub async fn others_alive(&self, me: &str) -> Result<u64, StoreError> {
        let now = db_now_ms(self.dialect());
        let sql = format!("SELECT COUNT(*) FROM daemons WHERE alive_until > {now} AND name <> $1");
        let others: i64 = on_pool!(self, p => sqlx::query_scalar(AssertSqlSafe(sql)).bind(me).fetch_one(p).await?);
        Ok(u64::try_from(others).unwrap_or(0))
    }

    /// Whether `me` writes the rows it can send at once claimed for its own lanes (see
    /// `dispatch::handoff`), sparing each a claim's write and its read-back. On SQLite always: a
    /// daemon holds the file alone, and the write spared is a turn of its one writer. On
    /// PostgreSQL while no other process sends from the database: rows written claimed for one
    /// process are rows the others cannot claim, and their share of a fan-out is its pending
    /// rows.
    pub async fn hands_over(&self, me: &str) -> Result<bool, StoreError> {
        Ok(self.writes_take_turns() || self.others_alive(me).await? == 0)
    }

    /// `me` stops: its row goes, and its lease if it leads.
    pub async fn leave(&self, me: &str) -> Result<(), StoreError> {
        on_pool!(self, p => sqlx::query("DELETE FROM daemons WHERE name = $1").bind(me).execute(p).await.map(|_| ())?);
        self.step_down(me).await
    }

    /// Forgets every other daemon and its lead: for a SQLite daemon, whose lock on the file
    /// says no other is alive.
    pub async fn forget_other_daemons(&self, me: &str) -> Result<(), StoreError> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query("DELETE FROM daemons WHERE name <> $1").bind(me).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM leader WHERE owner <> $1").bind(me).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The daemons alive now, the leader first, then by name.
    pub async fn daemons(&self) -> Result<Vec<DaemonInfo>, StoreError> {
        let now = db_now_ms(self.dialect());
        let sql = format!(
            "SELECT d.name, d.started_at, d.seen_at, d.sent, d.rate, \
             COALESCE(l.owner = d.name AND l.until > {now}, FALSE) AS leader \
             FROM daemons d LEFT JOIN leader l ON l.role = $1 \
             WHERE d.alive_until > {now} ORDER BY leader DESC, d.name"
        );
        let rows: Vec<DaemonRow> = on_pool!(self, p => sqlx::query_as(AssertSqlSafe(sql))
            .bind(SCHEDULER)
            .fetch_all(p)
            .await?);
        rows.into_iter()
            .map(|(name, started, seen, sent, rate, leader)| {
                Ok(DaemonInfo {
                    name,
                    started_at: instant(started)?,
                    seen_at: instant(seen)?,
                    sent,
                    rate,
                    leader,
                })
            })
            .collect()
    }

    /// Stops every daemon claiming the window's deliveries, and holds its pending rows out of
    /// the claims' index. False: it was paused already.
    pub async fn pause_window(&self, id: WindowId, actor: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.window(id).await?;
        // The process's own writes take turns with this one rather than wait on SQLite's lock.
        let n = on_writer!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(
                "INSERT INTO paused_windows (window_id, paused_at, actor) VALUES ($1, $2, $3) ON CONFLICT (window_id) DO NOTHING",
            )
            .bind(id.0)
            .bind(to_millis(now))
            .bind(actor)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("UPDATE deliveries SET held = TRUE WHERE window_id = $1 AND state = 'pending' AND NOT held")
                .bind(id.0)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            n
        });
        Ok(n == 1)
    }

    /// Lets daemons claim the window's deliveries again. False: it was not paused.
    pub async fn resume_window(&self, id: WindowId) -> Result<bool, StoreError> {
        self.window(id).await?;
        let n = on_writer!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query("DELETE FROM paused_windows WHERE window_id = $1")
                .bind(id.0)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("UPDATE deliveries SET held = FALSE WHERE window_id = $1 AND held")
                .bind(id.0)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            n
        });
        Ok(n == 1)
    }

    /// The paused windows, by id.
    pub async fn paused_windows(&self) -> Result<Vec<PausedWindow>, StoreError> {
        let rows: Vec<(i64, i64, String)> = on_pool!(self, p => sqlx::query_as(
            "SELECT window_id, paused_at, actor FROM paused_windows ORDER BY window_id",
        )
        .fetch_all(p)
        .await?);
        rows.into_iter()
            .map(|(window, at, actor)| {
                Ok(PausedWindow {
                    window,
                    paused_at: instant(at)?,
                    actor,
                })
            })
            .collect()
    }
}

fn instant(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    from_millis(ms).map_err(|e| StoreError::Corrupt(e.to_string()))
}
