//! Recipient import from CSV, streamed in constant memory.
//!
//! Columns are matched by header name (`kind,name,phone,email,locale,zone,components,channels`
//! and optionally `opt_out`; others are ignored), UTF-8 with or without a BOM, LF or CRLF. Each
//! bad row is reported with its line number and skipped; `strict` imports nothing if any row is
//! bad. Rows are upserted by natural key in transactions of [`BATCH`] rows.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{
    Audience, Channel, ComponentId, ComponentNames, EmailAddress, Locale, PhoneNumber, Profile, RecipientError, Zone,
    split_list,
};
use crate::storage::{Store, StoreError};

/// Rows per transaction.
pub const BATCH: usize = 10_000;

/// Bad rows kept with their reasons; more are counted in `rejected` but not kept, so a
/// thoroughly wrong file of millions of rows still imports in constant memory.
pub const ERRORS_KEPT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Header(String),
    #[error("reading CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowError {
    pub line: u64,
    pub reason: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub rows: u64,
    pub imported: u64,
    pub updated: u64,
    pub rejected: u64,
    pub errors: Vec<RowError>,
}

impl ImportReport {
    fn reject(&mut self, e: RowError) {
        self.rejected += 1;
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(e);
        }
    }
}

/// Everything a row needs to become a profile.
pub struct RowRules<'a> {
    pub default_zone: Zone,
    pub components: &'a BTreeMap<ComponentId, ComponentNames>,
}

const KNOWN: [&str; 9] = [
    "kind",
    "name",
    "phone",
    "email",
    "locale",
    "zone",
    "components",
    "channels",
    "opt_out",
];

struct Columns(HashMap<&'static str, usize>);

impl Columns {
    fn from_headers(headers: &csv::StringRecord) -> Result<Columns, ImportError> {
        let mut map = HashMap::new();
        for (i, h) in headers.iter().enumerate() {
            let name = h.trim_start_matches('\u{feff}').trim().to_ascii_lowercase();
            if let Some(k) = KNOWN.iter().find(|k| **k == name) {
                map.entry(*k).or_insert(i);
            }
        }
        let missing: Vec<&str> = ["kind", "name"].into_iter().filter(|k| !map.contains_key(k)).collect();
        if !missing.is_empty() {
            return Err(ImportError::Header(format!(
                "line 1: the header has no {} column (expected kind,name,phone,email,locale,zone,components,channels[,opt_out])",
                missing.join(" or ")
            )));
        }
        if !map.contains_key("phone") && !map.contains_key("email") {
            return Err(ImportError::Header(
                "line 1: the header has neither a phone nor an email column".into(),
            ));
        }
        Ok(Columns(map))
    }

    fn get<'r>(&self, record: &'r csv::StringRecord, name: &str) -> &'r str {
        self.0
            .get(name)
            .and_then(|&i| record.get(i))
            .map(str::trim)
            .unwrap_or("")
    }
}

/// Parses one row into a profile, or says what is wrong with it.
pub fn parse_row(get: impl Fn(&str) -> String, rules: &RowRules) -> Result<Profile, String> {
    let field = |name: &str, e: RecipientError| format!("{name}: {e}");
    let kind: Audience = get("kind").parse().map_err(|e| field("kind", e))?;
    let phone = match get("phone") {
        p if p.is_empty() => None,
        p => Some(PhoneNumber::parse(&p).map_err(|e| field("phone", e))?),
    };
    let email = match get("email") {
        e if e.is_empty() => None,
        e => Some(EmailAddress::parse(&e).map_err(|err| field("email", err))?),
    };
    let locale = match get("locale") {
        l if l.is_empty() => Locale::En,
        l => l.parse().map_err(|e| field("locale", e))?,
    };
    let zone = match get("zone") {
        z if z.is_empty() => rules.default_zone,
        z => z.parse::<Zone>().map_err(|e| format!("zone: {e}"))?,
    };
    let components = split_list(&get("components"))
        .map(|c| {
            let id: ComponentId = c.parse().map_err(|e| format!("components: {e}"))?;
            if !rules.components.contains_key(&id) {
                return Err(format!(
                    "components: '{id}' is not a configured component ({})",
                    rules
                        .components
                        .keys()
                        .map(ComponentId::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Ok(id)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let channels = split_list(&get("channels"))
        .map(|c| c.parse::<Channel>().map_err(|e| field("channels", e)))
        .collect::<Result<Vec<_>, _>>()?;
    let opt_out = match get("opt_out").to_ascii_lowercase().as_str() {
        "" | "false" | "no" | "0" | "n" => false,
        "true" | "yes" | "1" | "y" => true,
        other => return Err(field("opt_out", RecipientError::OptOut(other.to_owned()))),
    };
    Profile::new(
        kind,
        &get("name"),
        phone,
        email,
        locale,
        zone,
        components,
        channels,
        opt_out,
    )
    .map_err(|e| e.to_string())
}

/// The rows of a CSV file, parsed one at a time: `Ok(Ok(profile))`, `Ok(Err(bad row))`, or
/// `Err` when the file itself cannot be read.
pub struct Rows<'a, R: Read> {
    reader: csv::Reader<BufReader<R>>,
    columns: Columns,
    rules: &'a RowRules<'a>,
    record: csv::StringRecord,
}

impl<'a, R: Read> Rows<'a, R> {
    pub fn new(input: R, rules: &'a RowRules<'a>) -> Result<Rows<'a, R>, ImportError> {
        // The BOM is removed here, not by the csv crate, whose line numbers are off by one
        // after it strips one itself.
        let mut input = BufReader::new(input);
        if input.fill_buf().map_err(csv::Error::from)?.starts_with(b"\xef\xbb\xbf") {
            input.consume(3);
        }
        // Records end at LF; the CR of a CRLF stays in the last field and is trimmed with the
        // other white space. (With the crate's CRLF terminator its line numbers run one behind.)
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_reader(input);
        let columns = Columns::from_headers(reader.headers()?)?;
        Ok(Rows {
            reader,
            columns,
            rules,
            record: csv::StringRecord::new(),
        })
    }
}

impl<R: Read> Iterator for Rows<'_, R> {
    type Item = Result<Result<Profile, RowError>, ImportError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = self.reader.position().line();
            match self.reader.read_record(&mut self.record) {
                Ok(false) => return None,
                Ok(true) => {}
                Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => return Some(Err(e.into())),
                Err(e) => {
                    // A row that is not UTF-8 or not CSV: report it and go on with the next.
                    let line = e.position().map(|p| p.line()).unwrap_or(line);
                    return Some(Ok(Err(RowError {
                        line,
                        reason: csv_reason(&e),
                    })));
                }
            }
            if self.record.iter().all(|f| f.trim().is_empty()) {
                continue;
            }
            let line = self.record.position().map(|p| p.line()).unwrap_or(line);
            let (columns, record) = (&self.columns, &self.record);
            let parsed = parse_row(|name| columns.get(record, name).to_owned(), self.rules);
            return Some(Ok(parsed.map_err(|reason| RowError { line, reason })));
        }
    }
}

/// Reads every row without touching the store: the bad ones, with their lines.
pub fn validate_csv<R: Read>(input: R, rules: &RowRules<'_>) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::default();
    for row in Rows::new(input, rules)? {
        report.rows += 1;
        if let Err(e) = row? {
            report.reject(e);
        }
    }
    Ok(report)
}

/// Streams `input` into the store, skipping bad rows. `progress` is called after every
/// committed batch with the rows read so far.
pub async fn import_csv<R: Read>(
    store: &Store,
    input: R,
    rules: &RowRules<'_>,
    now: DateTime<Utc>,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::default();
    let before = store.count_recipients().await?;
    let mut batch: Vec<Profile> = Vec::with_capacity(BATCH);
    for row in Rows::new(input, rules)? {
        report.rows += 1;
        match row? {
            Ok(profile) => batch.push(profile),
            Err(e) => report.reject(e),
        }
        if batch.len() >= BATCH {
            store.upsert_recipients(&batch, now).await?;
            batch.clear();
            progress(report.rows);
        }
    }
    store.upsert_recipients(&batch, now).await?;
    progress(report.rows);
    let after = store.count_recipients().await?;
    report.imported = u64::try_from(after - before).unwrap_or(0);
    store.after_bulk_load(report.rows).await?;
    report.updated = report.rows - report.rejected - report.imported;
    Ok(report)
}

fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => format!("not valid UTF-8 (field {})", err.field() + 1),
        _ => e.to_string(),
    }
}
