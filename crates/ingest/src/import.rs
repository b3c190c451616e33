//! Bulk imports from files: members (CSV or NDJSON) and events (NDJSON).
//!
//! An import reads the file twice, streaming both times: first to validate
//! every line (so that an error anywhere writes nothing), then to write it in
//! batches inside one transaction. Memory stays flat whatever the file size.

use chrono::{DateTime, NaiveDate, Utc};
use renkei_core::{FieldError, LineUserId, MemberId, MemberPatch, NewEvent};
use renkei_store::{EventStore, IngestOutcome, MemberStore, MembersOutcome, StoreError};
use serde_json::{Map, Value};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

/// How many errors an import prints before it only counts them.
pub const ERRORS_SHOWN: usize = 20;
const BATCH: usize = 1_000;

/// Told how far an import has got, in bytes of the file.
pub trait Progress: Send + Sync {
    fn start(&self, phase: &str, total_bytes: u64);
    fn set_position(&self, bytes: u64);
    fn finish(&self);
}

/// For callers that show nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _phase: &str, _total_bytes: u64) {}
    fn set_position(&self, _bytes: u64) {}
    fn finish(&self) {}
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: unsupported file type; expected {expected}")]
    UnsupportedFormat { path: PathBuf, expected: &'static str },
    #[error(
        "{path}: the file is not UTF-8 (it looks like {looks_like}); convert it first, e.g. \
         `iconv -f {iconv} -t UTF-8 {path} > converted{extension}`, then import the converted file"
    )]
    NotUtf8 { path: PathBuf, looks_like: &'static str, iconv: &'static str, extension: String },
    #[error("{0}")]
    Invalid(InvalidLines),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The invalid lines of a file: the first [`ERRORS_SHOWN`] and how many in all.
#[derive(Debug)]
pub struct InvalidLines {
    pub shown: Vec<String>,
    pub total: usize,
}

impl fmt::Display for InvalidLines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.shown {
            writeln!(f, "{line}")?;
        }
        if self.total > self.shown.len() {
            writeln!(f, "… and {} more invalid lines", self.total - self.shown.len())?;
        }
        write!(f, "{} invalid line(s); nothing was imported", self.total)
    }
}

/// One parsed line: its 1-based number, the byte offset after it, and the item or why not.
type Parsed<T> = (u64, u64, Result<T, String>);

fn join_field_errors(errors: Vec<FieldError>) -> String {
    errors
        .into_iter()
        .map(|e| if e.field.is_empty() { e.message } else { format!("{}: {}", e.field, e.message) })
        .collect::<Vec<_>>()
        .join("; ")
}

fn open(path: &Path) -> Result<BufReader<File>, ImportError> {
    File::open(path)
        .map(|f| BufReader::with_capacity(1 << 16, f))
        .map_err(|source| ImportError::Io { path: path.to_path_buf(), source })
}

/// How much of a file's start [`check_utf8`] reads.
const SNIFF_BYTES: usize = 64 * 1024;

/// Refuses a file that is not UTF-8 once, naming the encoding it likely
/// is, rather than each of its lines. A UTF-8 byte-order mark is fine.
fn check_utf8(path: &Path) -> Result<(), ImportError> {
    let mut start = Vec::with_capacity(SNIFF_BYTES);
    let read = open(path)?.take(SNIFF_BYTES as u64).read_to_end(&mut start);
    read.map_err(|source| ImportError::Io { path: path.to_path_buf(), source })?;
    let (looks_like, iconv) = if start.starts_with(&[0xFF, 0xFE]) || start.starts_with(&[0xFE, 0xFF]) {
        ("UTF-16", "UTF-16")
    } else if start.contains(&0) {
        ("UTF-16 without a byte-order mark", "UTF-16LE")
    } else {
        match std::str::from_utf8(&start) {
            // A character cut off by the sniff's end is not an error.
            Err(e) if e.error_len().is_some() => ("Shift_JIS (or another non-UTF-8 encoding)", "SHIFT_JIS"),
            _ => return Ok(()),
        }
    };
    let extension = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    Err(ImportError::NotUtf8 { path: path.to_path_buf(), looks_like, iconv, extension })
}

/// Reads NDJSON lines, skipping blank ones, parsing each with `parse`.
fn ndjson_lines<T: Send + 'static>(
    path: &Path,
    parse: fn(&Value) -> Result<T, Vec<FieldError>>,
) -> Result<impl Iterator<Item = Parsed<T>> + Send + use<T>, ImportError> {
    let mut reader = open(path)?;
    let mut line_no = 0u64;
    let mut offset = 0u64;
    let mut buf = String::new();
    let path = path.to_path_buf();
    Ok(std::iter::from_fn(move || {
        loop {
            buf.clear();
            let read = match reader.read_line(&mut buf) {
                Ok(0) => return None,
                Ok(n) => n,
                Err(e) => {
                    line_no += 1;
                    return Some((line_no, offset, Err(format!("cannot read {}: {e}", path.display()))));
                }
            };
            line_no += 1;
            offset += read as u64;
            // A UTF-8 byte-order mark (U+FEFF) may open the file.
            let text = if line_no == 1 { buf.trim_start_matches('\u{feff}') } else { &buf }.trim();
            if text.is_empty() {
                continue;
            }
            let item = match serde_json::from_str::<Value>(text) {
                Ok(value) => match renkei_core::json::wide_integer(text.as_bytes()) {
                    Some(path) => Err(format!("{path}: {}", renkei_core::json::WIDE_INTEGER)),
                    None => parse(&value).map_err(join_field_errors),
                },
                Err(e) => Err(format!("invalid JSON: {e}")),
            };
            return Some((line_no, offset, item));
        }
    }))
}

/// A column of a members CSV: its attribute name and how to type its cells.
#[derive(Debug, Clone, PartialEq)]
enum Column {
    MemberId,
    LineUserId,
    Attribute { name: String, kind: CellKind },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CellKind {
    String,
    Number,
    Bool,
    Date,
    Json,
}

fn parse_header(header: &csv::StringRecord) -> Result<Vec<Column>, String> {
    let mut columns = Vec::with_capacity(header.len());
    let mut seen = std::collections::HashSet::new();
    for raw in header {
        let raw = raw.trim();
        let (name, kind) = match raw.rsplit_once(':') {
            Some((name, "number")) => (name, CellKind::Number),
            Some((name, "bool")) => (name, CellKind::Bool),
            Some((name, "date")) => (name, CellKind::Date),
            Some((name, "json")) => (name, CellKind::Json),
            Some((name, "string")) => (name, CellKind::String),
            Some((_, other)) => {
                return Err(format!(
                    "column {raw:?}: unknown type {other:?}; expected one of number, bool, date, json, string"
                ));
            }
            None => (raw, CellKind::String),
        };
        if name.is_empty() {
            return Err(format!("column {raw:?}: empty name"));
        }
        if !seen.insert(name.to_string()) {
            return Err(format!("column {name:?} appears twice"));
        }
        columns.push(match name {
            "member_id" => Column::MemberId,
            "line_user_id" => Column::LineUserId,
            _ => Column::Attribute { name: name.to_string(), kind },
        });
    }
    if !columns.contains(&Column::MemberId) {
        return Err("the header has no member_id column".to_string());
    }
    Ok(columns)
}

fn typed_cell(cell: &str, kind: CellKind) -> Result<Value, String> {
    match kind {
        CellKind::String => Ok(Value::String(cell.to_string())),
        CellKind::Number => {
            if let Ok(i) = cell.parse::<i64>() {
                return Ok(Value::from(i));
            }
            cell.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Value::from)
                .ok_or_else(|| format!("{cell:?} is not a number"))
        }
        CellKind::Bool => match cell {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("{cell:?} is not a bool; expected true or false")),
        },
        CellKind::Date => NaiveDate::parse_from_str(cell, "%Y-%m-%d")
            .map(|_| Value::String(cell.to_string()))
            .map_err(|_| format!("{cell:?} is not a date; expected YYYY-MM-DD")),
        CellKind::Json => serde_json::from_str(cell).map_err(|e| format!("invalid JSON: {e}")),
    }
}

fn csv_member(columns: &[Column], record: &csv::StringRecord) -> Result<MemberPatch, String> {
    let mut member_id = None;
    let mut line_user_id = None;
    let mut attributes = Map::new();
    let mut errors = Vec::new();
    for (column, cell) in columns.iter().zip(record.iter()) {
        if cell.is_empty() {
            continue;
        }
        match column {
            Column::MemberId => match MemberId::parse(cell) {
                Ok(id) => member_id = Some(id),
                Err(e) => errors.push(format!("member_id: {e}")),
            },
            Column::LineUserId => match LineUserId::parse(cell) {
                Ok(id) => line_user_id = Some(id),
                Err(e) => errors.push(format!("line_user_id: {e}")),
            },
            Column::Attribute { name, kind } => match typed_cell(cell, *kind) {
                Ok(value) => {
                    attributes.insert(name.clone(), value);
                }
                Err(e) => errors.push(format!("{name}: {e}")),
            },
        }
    }
    if member_id.is_none() && !errors.iter().any(|e| e.starts_with("member_id")) {
        errors.push("member_id: required".to_string());
    }
    match member_id {
        Some(member_id) if errors.is_empty() => Ok(MemberPatch { member_id, attributes, line_user_id }),
        _ => Err(errors.join("; ")),
    }
}

fn csv_members(path: &Path) -> Result<Box<dyn Iterator<Item = Parsed<MemberPatch>> + Send>, ImportError> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(open(path)?);
    let header = match reader.headers() {
        Ok(header) => header.clone(),
        Err(e) => return Ok(Box::new(std::iter::once((1, 0, Err(format!("cannot read the header: {e}")))))),
    };
    let columns = match parse_header(&header) {
        Ok(columns) => columns,
        Err(e) => return Ok(Box::new(std::iter::once((1, 0, Err(e))))),
    };
    let mut records = reader.into_records();
    Ok(Box::new(std::iter::from_fn(move || {
        let record = records.next()?;
        Some(match record {
            Ok(record) => {
                let position = record.position().map(|p| (p.line(), p.byte())).unwrap_or((0, 0));
                (position.0, position.1, csv_member(&columns, &record))
            }
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                let byte = e.position().map(|p| p.byte()).unwrap_or(0);
                (line, byte, Err(format!("malformed CSV: {e}")))
            }
        })
    })))
}

fn member_reader(path: &Path) -> Result<Box<dyn Iterator<Item = Parsed<MemberPatch>> + Send>, ImportError> {
    check_utf8(path)?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => csv_members(path),
        Some("ndjson" | "jsonl") => Ok(Box::new(ndjson_lines(path, |value| MemberPatch::parse(value, true))?)),
        _ => Err(ImportError::UnsupportedFormat { path: path.to_path_buf(), expected: ".csv or .ndjson" }),
    }
}

fn event_reader(path: &Path) -> Result<Box<dyn Iterator<Item = Parsed<NewEvent>> + Send>, ImportError> {
    check_utf8(path)?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("ndjson" | "jsonl") => Ok(Box::new(ndjson_lines(path, NewEvent::parse)?)),
        _ => Err(ImportError::UnsupportedFormat { path: path.to_path_buf(), expected: ".ndjson" }),
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// First pass: every line must parse; returns how many items there are.
fn validate<T>(
    path: &Path,
    lines: impl Iterator<Item = Parsed<T>>,
    progress: &dyn Progress,
) -> Result<u64, ImportError> {
    progress.start("validating", file_size(path));
    let mut shown = Vec::new();
    let mut total = 0usize;
    let mut items = 0u64;
    for (line, offset, item) in lines {
        match item {
            Ok(_) => items += 1,
            Err(message) => {
                total += 1;
                if shown.len() < ERRORS_SHOWN {
                    shown.push(format!("{}:{line}: {message}", path.display()));
                }
            }
        }
        if line % 4096 == 0 {
            progress.set_position(offset);
        }
    }
    progress.finish();
    if total > 0 { Err(ImportError::Invalid(InvalidLines { shown, total })) } else { Ok(items) }
}

/// Second pass: streams batches to the store's import transaction.
fn produce<T: Send + 'static>(
    path: &Path,
    lines: impl Iterator<Item = Parsed<T>>,
    sender: mpsc::Sender<Result<Vec<T>, String>>,
    progress: &dyn Progress,
) {
    progress.start("importing", file_size(path));
    let mut batch = Vec::with_capacity(BATCH);
    for (line, offset, item) in lines {
        match item {
            Ok(item) => batch.push(item),
            Err(message) => {
                // The file changed since it was validated: abort, write nothing.
                let _ = sender.blocking_send(Err(format!("{}:{line}: {message}", path.display())));
                return;
            }
        }
        if batch.len() == BATCH {
            progress.set_position(offset);
            if sender.blocking_send(Ok(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))).is_err() {
                return;
            }
        }
    }
    if !batch.is_empty() {
        let _ = sender.blocking_send(Ok(batch));
    }
    progress.finish();
}

fn join_error(e: tokio::task::JoinError) -> ImportError {
    ImportError::Io { path: PathBuf::new(), source: std::io::Error::other(e.to_string()) }
}

/// Imports members from a `.csv` or `.ndjson` file: all lines or none.
pub async fn import_members(
    store: Arc<dyn MemberStore>,
    path: &Path,
    progress: Arc<dyn Progress>,
    now: DateTime<Utc>,
) -> Result<MembersOutcome, ImportError> {
    let owned = path.to_path_buf();
    let shown = progress.clone();
    tokio::task::spawn_blocking(move || validate(&owned, member_reader(&owned)?, shown.as_ref()))
        .await
        .map_err(join_error)??;
    let (sender, receiver) = mpsc::channel(4);
    let owned = path.to_path_buf();
    let producer = tokio::task::spawn_blocking(move || -> Result<(), ImportError> {
        produce(&owned, member_reader(&owned)?, sender, progress.as_ref());
        Ok(())
    });
    let outcome = store.import_members(receiver, now).await;
    producer.await.map_err(join_error)??;
    Ok(outcome?)
}

/// Imports events from an `.ndjson` file: all lines or none.
pub async fn import_events(
    store: Arc<dyn EventStore>,
    path: &Path,
    progress: Arc<dyn Progress>,
    now: DateTime<Utc>,
) -> Result<IngestOutcome, ImportError> {
    let owned = path.to_path_buf();
    let shown = progress.clone();
    tokio::task::spawn_blocking(move || validate(&owned, event_reader(&owned)?, shown.as_ref()))
        .await
        .map_err(join_error)??;
    let (sender, receiver) = mpsc::channel(4);
    let owned = path.to_path_buf();
    let producer = tokio::task::spawn_blocking(move || -> Result<(), ImportError> {
        produce(&owned, event_reader(&owned)?, sender, progress.as_ref());
        Ok(())
    });
    let outcome = store.import_events(receiver, now).await;
    producer.await.map_err(join_error)??;
    Ok(outcome?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_types_and_errors() {
        let header = csv::StringRecord::from(vec!["member_id", "rank", "points:number", "birthday:date", "vip:bool"]);
        let columns = parse_header(&header).expect("valid header");
        assert_eq!(columns.len(), 5);
        let bad = csv::StringRecord::from(vec!["member_id", "points:integer"]);
        assert!(parse_header(&bad).expect_err("bad type").contains("unknown type \"integer\""));
        let missing = csv::StringRecord::from(vec!["rank"]);
        assert!(parse_header(&missing).expect_err("no key").contains("member_id"));
        let twice = csv::StringRecord::from(vec!["member_id", "rank", "rank:number"]);
        assert!(parse_header(&twice).expect_err("dup").contains("twice"));
    }

    #[test]
    fn cells_are_typed_and_empty_cells_absent() {
        let header = csv::StringRecord::from(vec!["member_id", "rank", "points:number", "birthday:date", "tags:json"]);
        let columns = parse_header(&header).expect("valid header");
        let record = csv::StringRecord::from(vec!["m1", "", "12.5", "1990-02-29", "[1]"]);
        assert!(csv_member(&columns, &record).expect_err("bad date").contains("birthday"));
        let record = csv::StringRecord::from(vec!["m1", "", "12", "1992-02-29", "[\"a\"]"]);
        let patch = csv_member(&columns, &record).expect("valid row");
        assert_eq!(
            Value::Object(patch.attributes),
            serde_json::json!({"points": 12, "birthday": "1992-02-29", "tags": ["a"]})
        );
        let record = csv::StringRecord::from(vec!["m1", "", "NaN", "", ""]);
        assert!(csv_member(&columns, &record).expect_err("NaN").contains("points"));
    }
}
