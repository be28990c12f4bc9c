//! Test databases and fixtures.
//!
//! SQLite: a fresh file in a temporary folder. PostgreSQL: a fresh database on the server named
//! by `TANGAZO_TEST_POSTGRES` (an admin URL such as postgres://postgres@127.0.0.1:5432/test).
//! The PostgreSQL cases are `#[ignore]`d, so a plain `cargo test` lists them as ignored; with
//! the variable set, `cargo test -- --include-ignored` runs them, and a missing or unreachable
//! server fails them rather than passing them unchecked.

use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use sqlx::Connection;
use tangazo::domain::{
    Audience, Channel, ComponentId, EmailAddress, Locale, Localized, NewWindow, PhoneNumber, Profile, Schedule, Zone,
};
use tangazo::storage::Store;

pub struct TestDb {
    #[allow(dead_code)]
    pub url: String,
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("tangazo.db").display());
        let store = Store::connect(&url).await.unwrap();
        TestDb {
            url,
            store,
            _dir: Some(dir),
            pg: None,
        }
    }

    /// A fresh PostgreSQL database on the server `TANGAZO_TEST_POSTGRES` names; a test that
    /// asks for one without it fails.
    pub async fn postgres() -> TestDb {
        let admin = match std::env::var("TANGAZO_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => url,
            _ => panic!(
                "this PostgreSQL case needs TANGAZO_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test (an admin URL)"
            ),
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tangazo_t_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            Utc::now().timestamp_subsec_micros()
        );
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at TANGAZO_TEST_POSTGRES is unreachable: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
        let url = format!("{base}/{name}");
        let store = Store::connect(&url).await.unwrap();
        TestDb {
            url,
            store,
            _dir: None,
            pg: Some((admin, name)),
        }
    }

    /// Drops a PostgreSQL test database (SQLite folders go with the TempDir).
    /// Runs one statement on the database behind the store's back (to damage a row, say).
    pub async fn execute(&self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        if self.pg.is_some() {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }

    pub async fn finish(self) {
        self.store.close().await;
        if let Some((admin, name)) = self.pg
            && let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await
        {
            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
        }
    }
}

/// Runs an async test case on SQLite and on PostgreSQL, as `NAME::sqlite` and `NAME::postgres`.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    let db = $crate::helpers::TestDb::sqlite().await;
                    super::$name(&db).await;
                    db.finish().await;
                }
                #[tokio::test]
                #[ignore = "needs TANGAZO_TEST_POSTGRES; run with -- --include-ignored"]
                async fn postgres() {
                    let db = $crate::helpers::TestDb::postgres().await;
                    super::$name(&db).await;
                    db.finish().await;
                }
            }
        )*
    };
}

pub fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

/// 2015-04-18 00:00 EAT.
pub fn start() -> DateTime<Utc> {
    utc(2015, 4, 17, 21, 0)
}

pub fn new_window(hours: i64) -> NewWindow {
    NewWindow {
        title: Localized {
            en: "Data centre move".into(),
            sw: Some("Uhamisho wa kituo cha data".into()),
        },
        description: Localized::default(),
        components: vec![
            "send-money".parse::<ComponentId>().unwrap(),
            "withdraw".parse().unwrap(),
        ],
        schedule: Schedule::new(start(), start() + chrono::TimeDelta::hours(hours)).unwrap(),
        zone: Zone::NAIROBI,
        auto_complete: false,
    }
}

/// An announcement SMS of revision 1 for each of `recipients`.
pub fn announced_sms(
    window: tangazo::domain::WindowId,
    recipients: &[tangazo::domain::Recipient],
    due_at: DateTime<Utc>,
    deadline: DateTime<Utc>,
) -> Vec<tangazo::domain::PlannedDelivery> {
    recipients
        .iter()
        .map(|r| tangazo::domain::PlannedDelivery {
            window,
            revision: 1,
            notice: tangazo::domain::Notice::Announced,
            recipient: r.id,
            channel: Channel::Sms,
            endpoint: None,
            due_at,
            deadline,
        })
        .collect()
}

/// A free-text message in English alone, as a broadcast carries it.
pub fn free_message(text: &str) -> tangazo::domain::Message {
    tangazo::domain::Message::new(
        tangazo::domain::MessageText {
            text: text.into(),
            subject: None,
        },
        None,
    )
    .unwrap()
}

pub fn customer(i: u32, locale: Locale) -> Profile {
    Profile::new(
        Audience::Customer,
        &format!("Customer {i}"),
        Some(PhoneNumber::parse(&format!("07{:08}", 10_000_000 + i)).unwrap()),
        i.is_multiple_of(2)
            .then(|| EmailAddress::parse(&format!("c{i}@example.co.ke")).unwrap()),
        locale,
        Zone::NAIROBI,
        vec![],
        vec![],
        false,
    )
    .unwrap()
}

/// A customer reached by SMS only, in `zone`.
pub fn sms_customer(i: u32, zone: &str) -> Profile {
    Profile::new(
        Audience::Customer,
        &format!("Customer {i}"),
        Some(PhoneNumber::parse(&format!("07{:08}", 10_000_000 + i)).unwrap()),
        None,
        Locale::En,
        zone.parse::<Zone>().unwrap(),
        vec![],
        vec![Channel::Sms],
        false,
    )
    .unwrap()
}

pub fn biller(i: u32) -> Profile {
    Profile::new(
        Audience::Biller,
        &format!("Biller {i}"),
        None,
        Some(EmailAddress::parse(&format!("ops{i}@biller.example.co.ke")).unwrap()),
        Locale::En,
        "Europe/Berlin".parse().unwrap(),
        vec![],
        vec![Channel::Email, Channel::Webhook],
        false,
    )
    .unwrap()
}

/// Waits until `ready` holds (polling; for another process's progress), failing after 30 s
/// with `what`.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A copy of the shipped templates in `dest`, to break one of them.
pub fn copy_templates(dest: &std::path::Path) {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &to.join(entry.file_name()));
            } else {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
    copy(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"),
        dest,
    );
}
