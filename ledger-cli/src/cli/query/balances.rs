//! `balances`: every committed balance of the shards given, streamed
//! shard after shard in account order, as JSON lines or CSV.

use std::borrow::Cow;
use std::io::{self, Write};
use std::process::ExitCode;

use super::source::Shard;

/// The formats of `balances`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum ExportFormat {
    /// One JSON object a line: {"account", "balance", "shard"}.
    Jsonl,
    /// `account,balance,shard` with a header line (account ids hold no
    /// comma or quote; a shard name that does is quoted).
    Csv,
}

/// `balances`: streamed through one buffered writer, so that memory holds
/// one page whatever the number of accounts.
pub(super) fn balances(shards: &[Shard], format: ExportFormat) -> anyhow::Result<ExitCode> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let result = export(shards, format, &mut out).and_then(|()| Ok(out.flush()?));
    match result {
        // A closed pipe (`| head`) is the reader's choice, as in `print_text`.
        Err(error)
            if error
                .downcast_ref::<io::Error>()
                .is_some_and(|error| error.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Err(error.context("exporting the balances")),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

fn export(shards: &[Shard], format: ExportFormat, out: &mut impl Write) -> anyhow::Result<()> {
    if format == ExportFormat::Csv {
        writeln!(out, "account,balance,shard")?;
    }
    for shard in shards {
        shard.each_balance_page(|page| {
            for view in page {
                match format {
                    ExportFormat::Jsonl => {
                        serde_json::to_writer(&mut *out, &view).map_err(io::Error::from)?;
                        writeln!(out)?;
                    }
                    ExportFormat::Csv => {
                        let shard = csv_field(&view.shard);
                        writeln!(out, "{},{},{shard}", view.account, view.balance)?;
                    }
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// A CSV field as RFC 4180 has it: quoted, its quotes doubled, when it
/// holds a comma, a quote or a line break, as a directory's name may.
fn csv_field(text: &str) -> Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", text.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv_field("ledger-consumer-0"), "ledger-consumer-0");
        assert_eq!(csv_field("/data/a,b"), "\"/data/a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
