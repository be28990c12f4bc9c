//! Recipient import from CSV, streamed in constant memory.
//!
//! Columns are matched by header name (`kind,name,phone,email,locale,zone,components,channels`
//! and optionally `opt_out`; others are ignored), UTF-8 with or without a BOM, LF or CRLF, one
//! record per line. Each bad row (a field that does not parse, a different number of fields
//! than the header, a quote left open) is reported with its line number and skipped; `strict`
//! imports nothing if any row is bad. A file that is not text is refused whole. Rows are
//! upserted by natural key in transactions of [`BATCH`] rows.

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
    #[error("this is not a CSV text file: {0}; save it as CSV (UTF-8)")]
    NotText(String),
    #[error("reading CSV")]
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
    /// New recipients.
    pub imported: u64,
    /// Recipients whose stored details the file changed.
    pub updated: u64,
    /// Rows that matched what was stored already.
    pub unchanged: u64,
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
/// `Err` when the file itself cannot be read (or is not text at all).
///
/// A record is one line: a recipients file has no field that spans lines, so a quote left
/// open is that line's error — never a field that swallows the rest of the file.
pub struct Rows<'a, R: Read> {
    input: BufReader<R>,
    columns: Columns,
    width: usize,
    rules: &'a RowRules<'a>,
    line: u64,
    buf: Vec<u8>,
}

/// How much of the start of a file is looked at to tell text from anything else.
const SNIFF: usize = 8 * 1024;

impl<'a, R: Read> Rows<'a, R> {
    pub fn new(input: R, rules: &'a RowRules<'a>) -> Result<Rows<'a, R>, ImportError> {
        let mut input = BufReader::with_capacity(64 * 1024, input);
        let head = input.fill_buf().map_err(csv::Error::from)?;
        check_text(head)?;
        if head.starts_with(b"\xef\xbb\xbf") {
            input.consume(3);
        }
        let mut rows = Rows {
            input,
            columns: Columns(HashMap::new()),
            width: 0,
            rules,
            line: 0,
            buf: Vec::new(),
        };
        let header = match rows.next_line()? {
            Some(Ok(record)) => record,
            Some(Err(reason)) if reason.starts_with("not valid UTF-8") => {
                return Err(ImportError::NotText(format!("its first line is {reason}")));
            }
            Some(Err(reason)) => return Err(ImportError::Header(format!("line 1: {reason}"))),
            None => return Err(ImportError::Header("the file is empty: it needs a header line".into())),
        };
        rows.columns = Columns::from_headers(&header)?;
        rows.width = header.len();
        Ok(rows)
    }

    /// The next physical line as a record (its number in `self.line`), or why it is not one.
    fn next_line(&mut self) -> Result<Option<Result<csv::StringRecord, String>>, ImportError> {
        self.buf.clear();
        if self.input.read_until(b'\n', &mut self.buf).map_err(csv::Error::from)? == 0 {
            return Ok(None);
        }
        self.line += 1;
        let mut bytes = self.buf.as_slice();
        bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                return Ok(Some(Err(format!(
                    "not valid UTF-8 (byte {} of the line)",
                    e.valid_up_to() + 1
                ))));
            }
        };
        let quotes = text.bytes().filter(|b| *b == b'"').count();
        if quotes == 0 {
            // Nearly every line: no quoting to undo, so a split is the whole parse (building a
            // CSV reader per line would cost more than everything else an import does).
            return Ok(Some(Ok(csv::StringRecord::from(text.split(',').collect::<Vec<_>>()))));
        }
        if quotes % 2 == 1 {
            return Ok(Some(Err(
                "a quote opened on this line is not closed on it (fields cannot span lines)".into(),
            )));
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(text.len().max(64))
            .from_reader(text.as_bytes());
        let mut record = csv::StringRecord::new();
        match reader.read_record(&mut record) {
            Ok(_) => Ok(Some(Ok(record))),
            Err(e) => Ok(Some(Err(csv_reason(&e)))),
        }
    }
}

/// Refuses what is plainly not a text file (a spreadsheet, a zip, an image): a NUL byte in
/// the first few kilobytes. (A header line that is not UTF-8 is refused as well, when it is
/// read; a data row that is not is that row's error.)
fn check_text(head: &[u8]) -> Result<(), ImportError> {
    if head[..head.len().min(SNIFF)].contains(&0) {
        return Err(ImportError::NotText("it contains NUL bytes".into()));
    }
    Ok(())
}

impl<R: Read> Iterator for Rows<'_, R> {
    type Item = Result<Result<(u64, Profile), RowError>, ImportError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let record = match self.next_line() {
                Err(e) => return Some(Err(e)),
                Ok(None) => return None,
                Ok(Some(Err(reason))) => {
                    return Some(Ok(Err(RowError {
                        line: self.line,
                        reason,
                    })));
                }
                Ok(Some(Ok(record))) => record,
            };
            if record.iter().all(|f| f.trim().is_empty()) {
                continue;
            }
            let line = self.line;
            if record.len() != self.width {
                return Some(Ok(Err(RowError {
                    line,
                    reason: format!("{} fields, but the header has {}", record.len(), self.width),
                })));
            }
            let columns = &self.columns;
            let parsed = parse_row(|name| columns.get(&record, name).to_owned(), self.rules);
            return Some(Ok(parsed
                .map(|p| (line, p))
                .map_err(|reason| RowError { line, reason })));
        }
    }
}

/// Reads every row without touching the store: the bad ones, with their lines, and rows for a
/// recipient an earlier line already gave. (This keeps 16 bytes per row to find those; the
/// import itself finds them in the store, in constant memory.)
pub fn validate_csv<R: Read>(input: R, rules: &RowRules<'_>) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::default();
    let mut first_line: HashMap<u64, u64> = HashMap::new();
    for row in Rows::new(input, rules)? {
        report.rows += 1;
        match row? {
            Err(e) => report.reject(e),
            Ok((line, profile)) => {
                let key = crate::domain::fingerprint(profile.natural_key().as_bytes());
                if let Some(first) = first_line.get(&key) {
                    report.reject(repeat(line, *first));
                } else {
                    first_line.insert(key, line);
                }
            }
        }
    }
    Ok(report)
}

fn repeat(line: u64, first: u64) -> RowError {
    RowError {
        line,
        reason: format!("the same recipient (phone, else email) as line {first}: one row each; the first is kept"),
    }
}

/// An id for one run of an import, different from every other.
fn import_id() -> i64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    (crate::domain::fingerprint(format!("{}.{nanos}", std::process::id()).as_bytes()) >> 1) as i64
}

/// Streams `input` into the store, skipping bad rows. `progress` is called after every
/// committed batch with the rows read so far.
pub async fn import_csv<R: Read>(
    store: &Store,
    input: R,
    rules: &RowRules<'_>,
    now: DateTime<Utc>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::default();
    let import = import_id();
    let mut batch: Vec<(u64, Profile)> = Vec::with_capacity(BATCH);
    for row in Rows::new(input, rules)? {
        report.rows += 1;
        match row? {
            Ok(row) => batch.push(row),
            Err(e) => report.reject(e),
        }
        if batch.len() >= BATCH {
            write_batch(store, import, &batch, now, &mut report).await?;
            batch.clear();
            progress(report.rows);
        }
    }
    write_batch(store, import, &batch, now, &mut report).await?;
    progress(report.rows);
    store.after_bulk_load(report.rows).await?;
    Ok(report)
}

async fn write_batch(
    store: &Store,
    import: i64,
    batch: &[(u64, Profile)],
    now: DateTime<Utc>,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    let done = store.import_batch(import, batch, now).await?;
    report.imported += done.new;
    report.updated += done.changed;
    report.unchanged += done.unchanged;
    for (line, first) in done.repeats {
        report.reject(repeat(line, first));
    }
    Ok(())
}

fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => format!("not valid UTF-8 (field {})", err.field() + 1),
        _ => format!("not CSV: {e}"),
    }
}
