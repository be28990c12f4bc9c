//! Recipients: upserts by natural key, pages in id order for fan-out, opt-outs, canary seeds,
//! and who was already told about a window.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, QueryBuilder};

use super::rows::{RECIPIENT_COLUMNS, RecipientRow, join_list};
use super::{Pool, ROWS_PER_STATEMENT, Store, StoreError};
use crate::domain::{Audience, Channel, Profile, Recipient, RecipientId, WindowId, fingerprint, to_millis};

/// Recipients read per page while fanning out (and rows enqueued per transaction). A page is
/// in memory several times over while it is planned (read, parsed, planned, bound), beside the
/// batches being sent: pages of 10,000 took peak RSS from about 47 to 65 MiB for no speed that
/// could be told from the machine's noise (BENCHMARKS.md).
pub const PAGE: i64 = 5_000;

/// An import's upsert: an opt-out is never cleared, a seed becomes an ordinary recipient.
const UPSERT: &str = " ON CONFLICT (natural_key) DO UPDATE SET kind = excluded.kind, name = excluded.name, \
     phone = excluded.phone, email = excluded.email, locale = excluded.locale, zone = excluded.zone, \
     components = excluded.components, channels = excluded.channels, \
     opt_out = (recipients.opt_out OR excluded.opt_out), seed = FALSE, updated_at = excluded.updated_at, \
     import_id = excluded.import_id, import_line = excluded.import_line, content_hash = excluded.content_hash";

/// Which import wrote a row, from which line.
#[derive(Debug, Clone, Copy)]
struct ImportMark {
    import: i64,
    line: u64,
}

/// What one batch of an import was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportBatch {
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
    /// (line, the earlier line of the same recipient): not written.
    pub repeats: Vec<(u64, u64)>,
}

/// What an import needs to know of a stored recipient: enough to tell new, changed,
/// unchanged and repeated rows apart, not the whole row.
#[derive(sqlx::FromRow)]
struct StoredRecipient {
    natural_key: String,
    seed: bool,
    opt_out: bool,
    content_hash: Option<i64>,
    import_id: Option<i64>,
    import_line: Option<i64>,
}

/// A fingerprint of everything an import sets but the opt-out (which it can only add).
fn content_hash(p: &Profile) -> i64 {
    let text = format!(
        "{}|{}|{}|{}|{}|{}|{}|{}",
        p.kind.as_str(),
        p.name,
        p.phone.as_ref().map(|x| x.as_str()).unwrap_or_default(),
        p.email.as_ref().map(|x| x.as_str()).unwrap_or_default(),
        p.locale.as_str(),
        p.zone.name(),
        join_list(&p.components),
        join_list(&p.channels)
    );
    // The bits as stored in a BIGINT.
    i64::from_ne_bytes(fingerprint(text.as_bytes()).to_ne_bytes())
}

/// A page of recipients: those that read back, those that did not (with why), and the last id
/// read, to ask for the next page after.
#[derive(Debug, Default)]
pub struct RecipientPage {
    pub recipients: Vec<Recipient>,
    pub unreadable: Vec<(RecipientId, String)>,
    pub last: Option<RecipientId>,
}

impl RecipientPage {
    /// The id range the page covers, readable or not.
    pub fn range(&self) -> Option<(RecipientId, RecipientId)> {
        let first = [
            self.recipients.first().map(|r| r.id),
            self.unreadable.first().map(|u| u.0),
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some((first, self.last?))
    }
}

impl Store {
    /// Inserts or updates recipients by natural key, in one transaction. An opt-out is never
    /// cleared by an import: only `recipients opt-in` does that. An imported address that was a
    /// canary seed becomes an ordinary recipient.
    pub async fn upsert_recipients(&self, batch: &[Profile], now: DateTime<Utc>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // PostgreSQL refuses to update one row twice in a statement: keep the last of each key.
        let mut seen = HashSet::new();
        let mut unique: Vec<(&Profile, Option<ImportMark>)> = batch
            .iter()
            .rev()
            .filter(|p| seen.insert(p.natural_key()))
            .map(|p| (p, None))
            .collect();
        unique.reverse();
        self.insert_profiles(&unique, false, UPSERT, now).await
    }

    /// Writes one batch of rows of import `import` (each with its line in the file) and says
    /// what each was: new, changed, unchanged, or a second row for a recipient an earlier line
    /// of the same import already gave (the first is kept; the repeat is not written).
    pub async fn import_batch(
        &self,
        import: i64,
        rows: &[(u64, Profile)],
        now: DateTime<Utc>,
    ) -> Result<ImportBatch, StoreError> {
        let mut outcome = ImportBatch::default();
        // Repeats within the batch first: the first line of each key stands.
        let mut first_line: HashMap<String, u64> = HashMap::new();
        let mut unique: Vec<(&Profile, u64, String)> = Vec::with_capacity(rows.len());
        for (line, profile) in rows {
            let key = profile.natural_key();
            match first_line.get(&key) {
                Some(first) => outcome.repeats.push((*line, *first)),
                None => {
                    first_line.insert(key.clone(), *line);
                    unique.push((profile, *line, key));
                }
            }
        }
        // Then what is stored under those keys: from an earlier line of this import, or as it was.
        let mut stored: HashMap<String, StoredRecipient> = HashMap::new();
        for chunk in unique.chunks(ROWS_PER_STATEMENT) {
            let sql = "SELECT natural_key, seed, opt_out, content_hash, import_id, import_line FROM recipients \
                       WHERE natural_key IN (";
            let found: Vec<StoredRecipient> = on_pool!(self, p => {
                let mut qb = QueryBuilder::new(sql);
                let mut sep = qb.separated(", ");
                for (_, _, key) in chunk {
                    sep.push_bind(key.clone());
                }
                qb.push(")");
                qb.build_query_as().fetch_all(p).await?
            });
            stored.extend(found.into_iter().map(|f| (f.natural_key.clone(), f)));
        }
        let mut write: Vec<(&Profile, Option<ImportMark>)> = Vec::with_capacity(unique.len());
        for (profile, line, key) in &unique {
            match stored.remove(key) {
                None => outcome.new += 1,
                Some(f) if f.import_id == Some(import) => {
                    let first = f.import_line.and_then(|l| u64::try_from(l).ok()).unwrap_or_default();
                    outcome.repeats.push((*line, first));
                    continue;
                }
                Some(f) => {
                    // An import never clears an opt-out, so only a new one is a change; a canary
                    // seed that is imported becomes an ordinary recipient, also a change.
                    let adds_opt_out = profile.opt_out && !f.opt_out;
                    let same = !adds_opt_out && !f.seed && f.content_hash == Some(content_hash(profile));
                    if same {
                        outcome.unchanged += 1;
                    } else {
                        outcome.changed += 1;
                    }
                }
            }
            write.push((profile, Some(ImportMark { import, line: *line })));
        }
        self.insert_profiles(&write, false, UPSERT, now).await?;
        Ok(outcome)
    }

    /// Inserts profiles in one transaction, `ROWS_PER_STATEMENT` to a statement, each statement
    /// ending with `conflict`.
    async fn insert_profiles(
        &self,
        rows: &[(&Profile, Option<ImportMark>)],
        seed: bool,
        conflict: &'static str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO recipients (natural_key, kind, name, phone, email, locale, zone, components, channels, \
                     opt_out, seed, updated_at, import_id, import_line, content_hash) ",
                );
                qb.push_values(chunk, |mut b, (r, mark)| {
                    b.push_bind(r.natural_key())
                        .push_bind(r.kind.as_str())
                        .push_bind(r.name.clone())
                        .push_bind(r.phone.as_ref().map(|p| p.as_str().to_owned()))
                        .push_bind(r.email.as_ref().map(|e| e.as_str().to_owned()))
                        .push_bind(r.locale.as_str())
                        .push_bind(r.zone.name())
                        .push_bind(join_list(&r.components))
                        .push_bind(join_list(&r.channels))
                        .push_bind(r.opt_out && !seed)
                        .push_bind(seed)
                        .push_bind(to_millis(now))
                        .push_bind(mark.map(|m| m.import))
                        .push_bind(mark.map(|m| i64::try_from(m.line).unwrap_or(i64::MAX)))
                        .push_bind(content_hash(r));
                });
                qb.push(conflict);
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Stores canary addresses as seed recipients (never in any audience) unless the address
    /// already belongs to a recipient, and returns every one of them.
    pub async fn seed_recipients(&self, seeds: &[Profile], now: DateTime<Utc>) -> Result<Vec<Recipient>, StoreError> {
        if seeds.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = seeds.iter().map(Profile::natural_key).collect();
        let rows: Vec<(&Profile, Option<ImportMark>)> = seeds.iter().map(|p| (p, None)).collect();
        self.insert_profiles(&rows, true, " ON CONFLICT (natural_key) DO NOTHING", now)
            .await?;
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(r) = self.recipient_by_key(&key).await? {
                found.push(r);
            }
        }
        Ok(found)
    }

    pub async fn count_recipients(&self) -> Result<i64, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_scalar("SELECT COUNT(*) FROM recipients").fetch_one(p).await?))
    }

    /// Deliveries a notice to everyone of `audience` would make, per channel: recipients not
    /// opted out (nor canary seeds) reached on it. Components are not looked at, so a window
    /// that touches only some is overestimated: its pacing errs on the early side.
    pub async fn audience_sizes(&self, audience: Audience) -> Result<BTreeMap<Channel, u64>, StoreError> {
        let on = |c: &str, address: &str| {
            format!(
                "COALESCE(SUM(CASE WHEN (channels = '' AND {address}) OR (',' || channels || ',') LIKE '%,{c},%' THEN 1 ELSE 0 END), 0)"
            )
        };
        let sql = format!(
            "SELECT {}, {}, {} FROM recipients WHERE kind = $1 AND opt_out = FALSE AND seed = FALSE",
            on("sms", "phone IS NOT NULL"),
            on("email", "email IS NOT NULL"),
            on("webhook", "FALSE"),
        );
        let (sms, email, webhook): (i64, i64, i64) = on_pool!(self, p => sqlx::query_as(AssertSqlSafe(sql))
            .bind(audience.as_str())
            .fetch_one(p)
            .await?);
        Ok([
            (Channel::Sms, sms),
            (Channel::Email, email),
            (Channel::Webhook, webhook),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(c, n)| (c, u64::try_from(n).unwrap_or_default()))
        .collect())
    }

    /// [`Store::audience_sizes`] of every audience.
    pub async fn all_audience_sizes(&self) -> Result<BTreeMap<Audience, BTreeMap<Channel, u64>>, StoreError> {
        let mut sizes = BTreeMap::new();
        for audience in Audience::ALL {
            sizes.insert(audience, self.audience_sizes(audience).await?);
        }
        Ok(sizes)
    }

    /// Counts by kind and opt-out: `(kind, opted_out, count)`; canary seeds are not counted.
    pub async fn recipient_counts(&self) -> Result<Vec<(String, bool, i64)>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT kind, opt_out, COUNT(*) FROM recipients WHERE seed = FALSE GROUP BY kind, opt_out ORDER BY kind, opt_out",
        )
        .fetch_all(p)
        .await?))
    }

    /// Up to `limit` recipients of `kind` with ids after `after`, in id order. A stored row
    /// that does not read back (edited by hand, say) is set aside with the reason, so one bad
    /// row neither stops a fan-out nor hides the rest of the page.
    pub async fn recipients_page(
        &self,
        kind: Option<Audience>,
        after: RecipientId,
        limit: i64,
    ) -> Result<RecipientPage, StoreError> {
        const WHERE: &str = "WHERE ($1 IS NULL OR kind = $1) AND id > $2 AND seed = FALSE ORDER BY id LIMIT $3";
        let kind = kind.map(Audience::as_str);
        let rows: Vec<RecipientRow> = match &self.pool {
            // One row of JSON rather than a row per recipient: each row sqlx reads from SQLite
            // is a hand-over between its worker thread and this task. Each recipient is an array
            // of its columns in `RECIPIENT_COLUMNS` order, without their names. The aggregate
            // takes the rows in the order the subquery gives them; an `ORDER BY` of its own
            // would sort the page again in a temporary index. The order is checked below.
            Pool::Sqlite(p) => {
                let sql = format!(
                    "SELECT COALESCE(json_group_array(json_array(id, CAST(kind AS TEXT), CAST(name AS TEXT), \
                     CAST(phone AS TEXT), CAST(email AS TEXT), CAST(locale AS TEXT), CAST(zone AS TEXT), \
                     CAST(components AS TEXT), CAST(channels AS TEXT), \
                     json(CASE WHEN opt_out THEN 'true' ELSE 'false' END))), '[]') \
                     FROM (SELECT {RECIPIENT_COLUMNS} FROM recipients {WHERE})"
                );
                let json: String = sqlx::query_scalar(AssertSqlSafe(sql))
                    .bind(kind)
                    .bind(after.0)
                    .bind(limit)
                    .fetch_one(p)
                    .await?;
                let mut rows: Vec<RecipientRow> =
                    super::json_rows(&json, usize::try_from(limit).unwrap_or_default())
                        .map_err(|e| StoreError::Corrupt(format!("recipients after {after}: {e}")))?;
                if !rows.is_sorted_by_key(|r| r.id) {
                    rows.sort_unstable_by_key(|r| r.id);
                }
                rows
            }
            Pool::Postgres(p) => {
                let sql = format!("SELECT {RECIPIENT_COLUMNS} FROM recipients {WHERE}");
                sqlx::query_as(AssertSqlSafe(sql))
                    .bind(kind)
                    .bind(after.0)
                    .bind(limit)
                    .fetch_all(p)
                    .await?
            }
        };
        let mut page = RecipientPage::default();
        for row in rows {
            let id = RecipientId(row.id);
            page.last = Some(id);
            match Recipient::try_from(row) {
                Ok(r) => page.recipients.push(r),
                Err(e) => page.unreadable.push((id, e.to_string())),
            }
        }
        Ok(page)
    }

    /// The recipients of `kind` (all kinds: `None`) grouped by every column that decides who a
    /// broadcast reaches, on which channels and in which language and zone, each group as a
    /// recipient with how many it stands for; canary seeds are left out. The grouped columns are
    /// the group's own; its id, name, phone and email are its members' (on PostgreSQL the least
    /// of each, not always one member's), and it has a phone, or an email address, if and only if
    /// its members do. `None` if a group does not read back: its rows would be set aside one by
    /// one by [`Store::recipients_page`], which tells which.
    ///
    /// Counting an audience this way reads no recipient into the process: a broadcast's count
    /// of a million customers is a few groups.
    pub async fn recipients_grouped(
        &self,
        kind: Option<Audience>,
    ) -> Result<Option<Vec<(Recipient, u64)>>, StoreError> {
        let kind = kind.map(Audience::as_str);
        let groups: Vec<RecipientGroup> = match &self.pool {
            Pool::Sqlite(p) => sqlite_groups(&mut *p.acquire().await?, kind).await?,
            Pool::Postgres(p) => {
                sqlx::query_as(
                    "SELECT MIN(id) AS id, kind, MIN(name) AS name, MIN(phone) AS phone, MIN(email) AS email, \
                     locale, zone, components, channels, opt_out, COUNT(*) AS n FROM recipients \
                     WHERE ($1::text IS NULL OR kind = $1) AND seed = FALSE \
                     GROUP BY kind, locale, zone, components, channels, opt_out, phone IS NULL, email IS NULL",
                )
                .bind(kind)
                .fetch_all(p)
                .await?
            }
        };
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            match Recipient::try_from(g.row) {
                Ok(r) => out.push((r, u64::try_from(g.n).unwrap_or_default())),
                Err(_) => return Ok(None),
            }
        }
        Ok(Some(out))
    }

    /// The recipient with this natural key (E.164 phone, else lower-case email).
    pub async fn recipient_by_key(&self, natural_key: &str) -> Result<Option<Recipient>, StoreError> {
        let sql = format!("SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE natural_key = $1");
        let row: Option<RecipientRow> =
            on_pool!(self, p => sqlx::query_as(AssertSqlSafe(sql)).bind(natural_key).fetch_optional(p).await?);
        row.map(Recipient::try_from).transpose()
    }

    /// Sets or clears the opt-out of the recipient with this phone number or email address.
    /// Returns whether such a recipient exists.
    pub async fn set_opt_out(&self, natural_key: &str, opt_out: bool, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let n = on_pool!(self, p => sqlx::query("UPDATE recipients SET opt_out = $1, updated_at = $2 WHERE natural_key = $3")
            .bind(opt_out)
            .bind(to_millis(now))
            .bind(natural_key)
            .execute(p)
            .await?
            .rows_affected());
        Ok(n > 0)
    }

    /// Which recipients with ids in `first..=last` were sent something about `window`.
    pub async fn told_among(
        &self,
        window: WindowId,
        first: RecipientId,
        last: RecipientId,
    ) -> Result<HashSet<RecipientId>, StoreError> {
        let ids: Vec<i64> = on_pool!(self, p => sqlx::query_scalar(
            "SELECT DISTINCT recipient_id FROM deliveries WHERE window_id = $1 AND state = 'sent' AND leased \
             AND recipient_id >= $2 AND recipient_id <= $3",
        )
        .bind(window.0)
        .bind(first.0)
        .bind(last.0)
        .fetch_all(p)
        .await?);
        Ok(ids.into_iter().map(RecipientId).collect())
    }
}

/// A group of recipients alike (see [`Store::recipients_grouped`]): one of them, and how many.
#[derive(sqlx::FromRow)]
struct RecipientGroup {
    #[sqlx(flatten)]
    row: RecipientRow,
    n: i64,
}

/// [`Store::recipients_grouped`] on SQLite. Its `GROUP BY` sorts every row (a second for a
/// million recipients); a temporary table keyed by the group counts each row into its group's
/// row instead, a third of that. The first recipient of a group stands for it.
async fn sqlite_groups(
    conn: &mut sqlx::SqliteConnection,
    kind: Option<&str>,
) -> Result<Vec<RecipientGroup>, StoreError> {
    for sql in [
        "DROP TABLE IF EXISTS temp.audience_groups",
        "CREATE TEMP TABLE audience_groups (id INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, phone TEXT, \
         email TEXT, locale TEXT NOT NULL, zone TEXT NOT NULL, components TEXT NOT NULL, channels TEXT NOT NULL, \
         opt_out BOOLEAN NOT NULL, no_phone BOOLEAN NOT NULL, no_email BOOLEAN NOT NULL, n INTEGER NOT NULL, \
         PRIMARY KEY (kind, locale, zone, components, channels, opt_out, no_phone, no_email))",
    ] {
        sqlx::query(sql).execute(&mut *conn).await?;
    }
    sqlx::query(
        "INSERT INTO temp.audience_groups SELECT id, kind, name, phone, email, locale, zone, components, channels, \
         opt_out, phone IS NULL, email IS NULL, 1 FROM recipients WHERE ($1 IS NULL OR kind = $1) AND seed = FALSE \
         ORDER BY id ON CONFLICT DO UPDATE SET n = n + 1",
    )
    .bind(kind)
    .execute(&mut *conn)
    .await?;
    let groups = sqlx::query_as(
        "SELECT id, kind, name, phone, email, locale, zone, components, channels, opt_out, n FROM temp.audience_groups",
    )
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query("DROP TABLE temp.audience_groups")
        .execute(&mut *conn)
        .await?;
    Ok(groups)
}
