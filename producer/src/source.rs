//! Where records come from: the generator or an import file, with the
//! `--count` limit and the invalid-line policy applied.

use std::fs::File;

use ledger_core::domain::Transfer;
use time::OffsetDateTime;
use tracing::warn;

use crate::config::{Config, OnInvalid};
use crate::generate::{Generator, GeneratorConfig, Kind};
use crate::import::{ImportError, Importer, InvalidLine, Line, INVALID_LISTED_MAX};

/// One record to send.
#[derive(Debug, Clone)]
pub struct Record {
    pub transfer: Transfer,
    /// A deliberate resubmission of an earlier transfer (same id, same
    /// content); counted so that readers can tell them from bugs.
    pub resubmission: bool,
}

/// Invalid lines met while sending (`--on-invalid skip`).
#[derive(Debug, Clone, Default)]
pub struct InvalidReport {
    pub total: u64,
    /// The first `INVALID_LISTED_MAX`; all are logged.
    pub listed: Vec<InvalidLine>,
}

#[derive(Debug)]
pub struct Source {
    kind: SourceKind,
    /// Records left before `--count` is reached; `None` for no limit.
    remaining: Option<u64>,
    on_invalid: OnInvalid,
    invalid: InvalidReport,
}

#[derive(Debug)]
enum SourceKind {
    Generate(Box<Generator>),
    Import(Box<Importer<File>>),
}

impl Source {
    /// The generator (with `seed`) or, with `--from-file`, the importer. With
    /// `--on-invalid abort` the whole file is checked here, before anything
    /// is sent. Also returns the expected record count when it is known.
    pub fn open(config: &Config, seed: u64) -> Result<(Source, Option<u64>), ImportError> {
        let limit = (config.count > 0).then_some(config.count);
        let (kind, total) = match &config.from_file {
            None => (
                SourceKind::Generate(Box::new(Generator::new(GeneratorConfig {
                    accounts: config.accounts,
                    fail_share: config.fail_share,
                    duplicate_share: config.duplicate_share,
                    currency: config.currency,
                    seed,
                }))),
                limit,
            ),
            Some(path) => {
                let total = match config.on_invalid {
                    OnInvalid::Abort => Some(Importer::open(path, config.format)?.check_all()?),
                    OnInvalid::Skip => None,
                };
                let total = match (total, limit) {
                    (Some(total), Some(limit)) => Some(total.min(limit)),
                    (total, limit) => total.or(limit),
                };
                (
                    SourceKind::Import(Box::new(Importer::open(path, config.format)?)),
                    total,
                )
            }
        };
        let source = Source {
            kind,
            remaining: limit,
            on_invalid: config.on_invalid,
            invalid: InvalidReport::default(),
        };
        Ok((source, total))
    }

    /// The next record; `None` when the count is reached or the file ends.
    pub fn next_record(&mut self) -> Result<Option<Record>, ImportError> {
        if self.remaining == Some(0) {
            return Ok(None);
        }
        let record = match &mut self.kind {
            SourceKind::Generate(generator) => {
                let generated = generator.next(OffsetDateTime::now_utc());
                Some(Record {
                    transfer: generated.transfer,
                    resubmission: generated.kind == Kind::Resubmission,
                })
            }
            SourceKind::Import(importer) => loop {
                match importer.next_line()? {
                    None => break None,
                    Some(Line::Valid { transfer, .. }) => {
                        break Some(Record {
                            transfer,
                            resubmission: false,
                        })
                    }
                    // The file was checked before sending, so it changed
                    // since; unlikely enough to share the checked case's error.
                    Some(Line::Invalid(invalid)) if self.on_invalid == OnInvalid::Abort => {
                        return Err(ImportError::Invalid {
                            path: importer.path().to_owned(),
                            total: 1,
                            listed: vec![invalid],
                        });
                    }
                    Some(Line::Invalid(invalid)) => {
                        warn!(
                            line = invalid.line,
                            reason = %invalid.reason,
                            "Invalid line in the import file skipped."
                        );
                        self.invalid.total += 1;
                        if self.invalid.listed.len() < INVALID_LISTED_MAX {
                            self.invalid.listed.push(invalid);
                        }
                    }
                }
            },
        };
        if let (Some(remaining), Some(_)) = (&mut self.remaining, &record) {
            *remaining -= 1;
        }
        Ok(record)
    }

    pub fn invalid(&self) -> &InvalidReport {
        &self.invalid
    }
}
