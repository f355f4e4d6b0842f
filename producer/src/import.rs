//! Import mode: transfers read from a JSON-lines or CSV file.
//!
//! Each line goes through `ledger_core::wire::decode_transfer`, the decoder the
//! shards use, so a line is valid here exactly when a shard would accept its
//! shape, and an invalid line gets the reason a shard would give. A CSV row
//! is turned into the same JSON object first, for the same reason.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use ledger_core::domain::Transfer;
use ledger_core::wire::{decode_transfer, MESSAGE_LEN_MAX};

use crate::config::FileFormat;

/// The CSV header must name exactly these columns, in any order.
pub const CSV_COLUMNS: [&str; 6] = ["id", "from", "to", "amount", "currency", "created_at"];

/// How many invalid lines an abort error lists (all are counted and logged).
pub const INVALID_LISTED_MAX: usize = 20;

/// A line that is not a valid transfer, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidLine {
    /// 1-based line number in the file (for CSV, the line where the row
    /// starts; the header is line 1).
    pub line: u64,
    pub reason: String,
}

impl fmt::Display for InvalidLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Why an import cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: the CSV header must name the columns id,from,to,amount,currency,created_at \
         (in any order), found {found:?}"
    )]
    CsvHeader { path: PathBuf, found: String },
    #[error(
        "{path}: {total} invalid line(s), import aborted (use --on-invalid skip to send \
         only the valid lines): {}",
        list(.listed)
    )]
    Invalid {
        path: PathBuf,
        total: u64,
        /// The first `INVALID_LISTED_MAX` of them.
        listed: Vec<InvalidLine>,
    },
}

fn list(lines: &[InvalidLine]) -> String {
    let listed: Vec<String> = lines.iter().map(InvalidLine::to_string).collect();
    listed.join("; ")
}

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Valid { line: u64, transfer: Transfer },
    Invalid(InvalidLine),
}

/// Reads a file line by line (row by row for CSV); memory stays bounded by
/// one line whatever the file's size.
pub struct Importer<R: Read> {
    path: PathBuf,
    reader: Reader<R>,
}

impl<R: Read> fmt::Debug for Importer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Importer")
            .field("path", &self.path)
            .finish()
    }
}

enum Reader<R: Read> {
    Jsonl {
        input: BufReader<R>,
        buffer: Vec<u8>,
        line: u64,
    },
    Csv {
        input: csv::Reader<R>,
        /// For each of `CSV_COLUMNS`, its index in a row.
        columns: [usize; 6],
        record: csv::StringRecord,
    },
}

impl Importer<File> {
    /// Opens `path`; `FileFormat::Auto` means CSV for a `.csv` file, JSON
    /// lines otherwise.
    pub fn open(path: &Path, format: FileFormat) -> Result<Self, ImportError> {
        let file = File::open(path).map_err(|source| ImportError::Io {
            path: path.to_owned(),
            source,
        })?;
        let csv = match format {
            FileFormat::Csv => true,
            FileFormat::Jsonl => false,
            FileFormat::Auto => path
                .extension()
                .is_some_and(|extension| extension.eq_ignore_ascii_case("csv")),
        };
        Importer::new(file, csv, path.to_owned())
    }
}

impl<R: Read> Importer<R> {
    /// Reads `input` as CSV or JSON lines; `path` names it in errors.
    pub fn new(input: R, csv: bool, path: PathBuf) -> Result<Self, ImportError> {
        let reader = if csv {
            let mut input = csv::ReaderBuilder::new()
                .has_headers(true)
                // A row with a missing or extra field is reported as invalid,
                // not padded or truncated.
                .flexible(false)
                .from_reader(input);
            let header = input.headers().map_err(|error| csv_failure(&path, error))?;
            let columns = column_indexes(header).ok_or_else(|| ImportError::CsvHeader {
                path: path.clone(),
                found: header.iter().collect::<Vec<_>>().join(","),
            })?;
            Reader::Csv {
                input,
                columns,
                record: csv::StringRecord::new(),
            }
        } else {
            Reader::Jsonl {
                input: BufReader::new(input),
                buffer: Vec::with_capacity(MESSAGE_LEN_MAX + 2),
                line: 0,
            }
        };
        Ok(Importer { path, reader })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next line with a transfer (valid or not); `None` at the end.
    /// Blank lines of a JSON-lines file hold no transfer and are passed over.
    pub fn next_line(&mut self) -> Result<Option<Line>, ImportError> {
        let io_error = |source| ImportError::Io {
            path: self.path.clone(),
            source,
        };
        match &mut self.reader {
            Reader::Jsonl {
                input,
                buffer,
                line,
            } => next_json_line(input, buffer, line).map_err(io_error),
            Reader::Csv {
                input,
                columns,
                record,
            } => match input.read_record(record) {
                Ok(false) => Ok(None),
                Ok(true) => {
                    let line = record.position().map_or(0, csv::Position::line);
                    Ok(Some(csv_row(line, columns, record)))
                }
                Err(error) if error.is_io_error() => Err(csv_failure(&self.path, error)),
                Err(error) => Ok(Some(Line::Invalid(InvalidLine {
                    line: error.position().map_or(0, csv::Position::line),
                    reason: csv_reason(&error),
                }))),
            },
        }
    }

    /// Reads the whole input and fails if any line is invalid, listing the
    /// first ones; returns the number of valid lines. Used before sending
    /// with `--on-invalid abort`, so that a bad file sends nothing.
    pub fn check_all(mut self) -> Result<u64, ImportError> {
        let mut valid = 0;
        let mut total = 0;
        let mut listed = Vec::new();
        while let Some(line) = self.next_line()? {
            match line {
                Line::Valid { .. } => valid += 1,
                Line::Invalid(invalid) => {
                    tracing::warn!(
                        line = invalid.line,
                        reason = %invalid.reason,
                        "Invalid line in the import file."
                    );
                    total += 1;
                    if listed.len() < INVALID_LISTED_MAX {
                        listed.push(invalid);
                    }
                }
            }
        }
        if total > 0 {
            return Err(ImportError::Invalid {
                path: self.path,
                total,
                listed,
            });
        }
        Ok(valid)
    }
}

fn next_json_line<R: Read>(
    input: &mut BufReader<R>,
    buffer: &mut Vec<u8>,
    line: &mut u64,
) -> io::Result<Option<Line>> {
    loop {
        buffer.clear();
        // One byte more than a valid message plus its line end, so that a
        // longer line is recognized without reading it all into memory.
        let limit = (MESSAGE_LEN_MAX + 2) as u64;
        if input.by_ref().take(limit).read_until(b'\n', buffer)? == 0 {
            return Ok(None);
        }
        *line += 1;
        if buffer.last() != Some(&b'\n') && buffer.len() as u64 == limit {
            input.skip_until(b'\n')?;
            return Ok(Some(Line::Invalid(InvalidLine {
                line: *line,
                reason: format!("malformed: line longer than {MESSAGE_LEN_MAX} bytes"),
            })));
        }
        let content = buffer.trim_ascii_end();
        if content.trim_ascii_start().is_empty() {
            continue;
        }
        return Ok(Some(match decode_transfer(content) {
            Ok(transfer) => Line::Valid {
                line: *line,
                transfer,
            },
            Err(error) => Line::Invalid(InvalidLine {
                line: *line,
                reason: error.to_string(),
            }),
        }));
    }
}

fn column_indexes(header: &csv::StringRecord) -> Option<[usize; 6]> {
    if header.len() != CSV_COLUMNS.len() {
        return None;
    }
    let mut columns = [0; 6];
    for (slot, name) in columns.iter_mut().zip(CSV_COLUMNS) {
        *slot = header.iter().position(|column| column == name)?;
    }
    Some(columns)
}

fn csv_row(line: u64, columns: &[usize; 6], record: &csv::StringRecord) -> Line {
    let object: serde_json::Map<String, serde_json::Value> = CSV_COLUMNS
        .iter()
        .zip(columns)
        .map(|(name, &index)| {
            let value = record.get(index).unwrap_or_default();
            ((*name).to_owned(), serde_json::Value::from(value))
        })
        .collect();
    let json = serde_json::Value::Object(object).to_string();
    match decode_transfer(json.as_bytes()) {
        Ok(transfer) => Line::Valid { line, transfer },
        Err(error) => Line::Invalid(InvalidLine {
            line,
            reason: error.to_string(),
        }),
    }
}

fn csv_reason(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("malformed: {len} fields where the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { .. } => "malformed: not UTF-8".to_owned(),
        _ => format!("malformed: {error}"),
    }
}

fn csv_failure(path: &Path, error: csv::Error) -> ImportError {
    let path = path.to_owned();
    match error.into_kind() {
        csv::ErrorKind::Io(source) => ImportError::Io { path, source },
        other => ImportError::CsvHeader {
            path,
            found: format!("an unreadable header ({other:?})"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"{"id":"0b6f5a36-4c8e-4b8e-9d5e-4d7f2c1f9a01","from":"acc-1","to":"acc-2","amount":"12.50","currency":"EUR","created_at":"2024-05-01T10:00:00Z"}"#;

    fn lines(input: &str, csv: bool) -> Vec<Line> {
        let mut importer = Importer::new(input.as_bytes(), csv, "test".into()).unwrap();
        std::iter::from_fn(|| importer.next_line().unwrap()).collect()
    }

    fn summary(lines: &[Line]) -> Vec<Result<u64, (u64, String)>> {
        lines
            .iter()
            .map(|line| match line {
                Line::Valid { line, .. } => Ok(*line),
                Line::Invalid(invalid) => Err((invalid.line, invalid.reason.clone())),
            })
            .collect()
    }

    #[test]
    fn an_unreadable_file_is_named_with_its_cause_once() {
        let Err(error) = Importer::open(Path::new("/nonexistent/t.jsonl"), FileFormat::Auto) else {
            panic!("opened a file that does not exist");
        };
        let line = ledger::telemetry::chain(&crate::ProducerError::from(error)).to_string();
        assert!(
            line.starts_with("cannot read /nonexistent/t.jsonl: "),
            "{line}"
        );
        assert_eq!(line.matches("No such file").count(), 1, "{line}");
    }

    #[test]
    fn json_lines_are_decoded_and_invalid_ones_named_by_line() {
        let amount_as_number = VALID.replace(r#""12.50""#, "12.5");
        let input = format!(
            "{VALID}\n\n{}\nnot json\r\n{amount_as_number}\n{VALID}",
            VALID.replace("acc-2", "acc-1")
        );
        let found = summary(&lines(&input, false));
        assert_eq!(found.len(), 5, "{found:?}");
        assert_eq!(found[0], Ok(1));
        assert!(matches!(&found[1], Err((3, why)) if why.starts_with("same_account")));
        assert!(matches!(&found[2], Err((4, why)) if why.starts_with("malformed")));
        assert!(matches!(&found[3], Err((5, why)) if why.starts_with("invalid_amount")));
        assert_eq!(found[4], Ok(6), "a last line without a newline counts");
    }

    #[test]
    fn an_overlong_line_is_reported_without_losing_the_next() {
        let input = format!("{}\n{VALID}\n", "x".repeat(3 * MESSAGE_LEN_MAX));
        let found = summary(&lines(&input, false));
        assert!(matches!(&found[0], Err((1, why)) if why.contains("longer than")));
        assert_eq!(found[1], Ok(2));
    }

    #[test]
    fn csv_rows_follow_the_header_in_any_order() {
        let input = "amount,id,from,to,currency,created_at\n\
             12.50,0b6f5a36-4c8e-4b8e-9d5e-4d7f2c1f9a01,acc-1,acc-2,EUR,2024-05-01T10:00:00Z\n\
             1.001,0b6f5a36-4c8e-4b8e-9d5e-4d7f2c1f9a02,acc-1,acc-2,EUR,2024-05-01T10:00:00Z\n\
             5.00,0b6f5a36-4c8e-4b8e-9d5e-4d7f2c1f9a03,acc-1\n\
             \"7.00\",0b6f5a36-4c8e-4b8e-9d5e-4d7f2c1f9a04,acc-1,world,EUR,2024-05-01T12:00:00+02:00\n";
        let all = lines(input, true);
        let found = summary(&all);
        assert_eq!(found[0], Ok(2));
        assert!(matches!(&found[1], Err((3, why)) if why.contains("more than 2 decimals")));
        assert!(matches!(&found[2], Err((4, why)) if why.contains("3 fields")));
        assert_eq!(found[3], Ok(5));
        let Line::Valid { transfer, .. } = &all[3] else {
            unreachable!()
        };
        assert_eq!(transfer.amount.minor(), 700);
        assert_eq!(transfer.created_at.offset(), time::UtcOffset::UTC);
    }

    #[test]
    fn a_csv_header_without_the_transfer_columns_is_refused() {
        let error = Importer::new("id,from,to,amount\n".as_bytes(), true, "f.csv".into())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("f.csv") && error.contains("id,from,to,amount"),
            "{error}"
        );
    }

    #[test]
    fn check_all_lists_the_invalid_lines() {
        let input = format!("{VALID}\nbad\n{VALID}\n{{}}\n");
        let importer = Importer::new(input.as_bytes(), false, "f.jsonl".into()).unwrap();
        let error = importer.check_all().unwrap_err();
        let ImportError::Invalid { total, listed, .. } = &error else {
            panic!("{error}")
        };
        assert_eq!(*total, 2);
        assert_eq!(
            listed.iter().map(|l| l.line).collect::<Vec<_>>(),
            vec![2, 4]
        );
        let valid = Importer::new(VALID.as_bytes(), false, "f.jsonl".into()).unwrap();
        assert_eq!(valid.check_all().unwrap(), 1);
    }
}
