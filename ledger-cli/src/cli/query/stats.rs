//! `stats`: per shard, its accounts, sum of balances, input offsets and
//! pending batch; and the totals.

use std::process::ExitCode;

use anyhow::Context;
use rust_decimal::Decimal;
use serde::Serialize;

use ledger::api::StatsView;

use super::source::Shard;
use super::table::{Align, Table};
use super::{decimal, print_json, print_text};

/// `stats` over the shards given: each shard's view, and the sums.
#[derive(Debug, Serialize)]
struct StatsAnswer {
    shards: Vec<StatsView>,
    total: StatsTotal,
}

#[derive(Debug, Serialize)]
struct StatsTotal {
    accounts: u64,
    /// Over every shard, plus the credits in flight, this is zero; so it is
    /// zero here at quiescence when every shard is given.
    sum: String,
    remembered_ids: u64,
    held: u64,
    pending_batches: u64,
}

impl StatsAnswer {
    fn total(shards: Vec<StatsView>) -> anyhow::Result<Self> {
        let mut sum = Decimal::ZERO;
        for view in &shards {
            sum += decimal(&view.sum).with_context(|| format!("shard {}: sum", view.shard))?;
        }
        let total = StatsTotal {
            accounts: shards.iter().map(|view| view.accounts).sum(),
            sum: sum.to_string(),
            remembered_ids: shards.iter().map(|view| view.remembered_ids).sum(),
            held: shards.iter().map(|view| view.held).sum(),
            pending_batches: shards.iter().filter(|view| view.pending.is_some()).count() as u64,
        };
        Ok(StatsAnswer { shards, total })
    }
}

pub(super) fn stats(shards: &[Shard], json: bool) -> anyhow::Result<ExitCode> {
    let views = shards
        .iter()
        .map(Shard::stats)
        .collect::<anyhow::Result<_>>()?;
    let answer = StatsAnswer::total(views)?;
    if json {
        print_json(&answer)?;
    } else {
        print_text(&stats_text(shards, &answer))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A row per shard and the total, the offsets of every shard's inputs, and
/// a note for each batch left in doubt.
fn stats_text(shards: &[Shard], answer: &StatsAnswer) -> String {
    let mut text = summary_table(shards, answer).to_string();
    let offsets = offsets_table(&answer.shards);
    if !offsets.is_empty() {
        text.push('\n');
        text.push_str(&offsets.to_string());
    }
    let notes: Vec<String> = shards
        .iter()
        .zip(&answer.shards)
        .filter_map(|(shard, view)| pending_note(shard, view))
        .collect();
    if !notes.is_empty() {
        text.push('\n');
        for note in notes {
            text.push_str(&note);
            text.push('\n');
        }
    }
    text
}

/// A row per shard, and the total.
fn summary_table(shards: &[Shard], answer: &StatsAnswer) -> Table {
    let mut summary = Table::new(&[
        ("SHARD", Align::Left),
        ("PARTITIONS", Align::Left),
        ("ACCOUNTS", Align::Right),
        ("SUM", Align::Right),
        ("REMEMBERED IDS", Align::Right),
        ("HELD", Align::Right),
        ("PENDING", Align::Left),
        ("SOURCE", Align::Left),
    ]);
    for (shard, view) in shards.iter().zip(&answer.shards) {
        summary.row(vec![
            view.shard.clone(),
            partition_list(&view.partitions),
            view.accounts.to_string(),
            view.sum.clone(),
            view.remembered_ids.to_string(),
            view.held.to_string(),
            view.pending.as_ref().map_or_else(
                || "none".to_owned(),
                |pending| format!("seq {}", pending.seq),
            ),
            shard.source.to_string(),
        ]);
    }
    let total = &answer.total;
    summary.row(vec![
        "total".to_owned(),
        String::new(),
        total.accounts.to_string(),
        total.sum.clone(),
        total.remembered_ids.to_string(),
        total.held.to_string(),
        match total.pending_batches {
            0 => "none".to_owned(),
            1 => "1 batch".to_owned(),
            n => format!("{n} batches"),
        },
        String::new(),
    ]);
    summary
}

/// The next offset of every shard's every input partition.
fn offsets_table(views: &[StatsView]) -> Table {
    let mut offsets = Table::new(&[
        ("SHARD", Align::Left),
        ("INPUT", Align::Left),
        ("PARTITION", Align::Right),
        ("NEXT OFFSET", Align::Right),
    ]);
    for view in views {
        for offset in &view.offsets {
            offsets.row(vec![
                view.shard.clone(),
                offset.source.name().to_owned(),
                offset.partition.to_string(),
                offset.next_offset.to_string(),
            ]);
        }
    }
    offsets
}

/// `0,2,4`, or `-` for none (a shard given no partition yet).
fn partition_list(partitions: &[i32]) -> String {
    if partitions.is_empty() {
        return "-".to_owned();
    }
    let numbers: Vec<String> = partitions.iter().map(i32::to_string).collect();
    numbers.join(",")
}

/// A running shard resolves its pending record itself and already answers
/// from committed state; only a stopped one leaves a batch in doubt for the
/// operator to know about.
fn pending_note(shard: &Shard, view: &StatsView) -> Option<String> {
    let pending = view.pending.as_ref()?;
    shard.source.is_stopped().then(|| {
        format!(
            "shard {}: 1 batch pending (seq {}): its effects are not shown; start the shard to \
             resolve it",
            view.shard, pending.seq
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_totals_add_exactly() {
        let stats = |shard: &str, accounts, sum: &str| StatsView {
            shard: shard.to_owned(),
            partitions: Vec::new(),
            accounts,
            sum: sum.to_owned(),
            offsets: Vec::new(),
            pending: None,
            remembered_ids: 2,
            held: 1,
        };
        let answer =
            StatsAnswer::total(vec![stats("s-0", 3, "-150.10"), stats("s-1", 2, "150.10")])
                .unwrap();
        assert_eq!(answer.total.accounts, 5);
        assert_eq!(answer.total.sum, "0.00");
        assert_eq!(answer.total.remembered_ids, 4);
        assert_eq!(answer.total.held, 2);
        assert!(StatsAnswer::total(vec![stats("s-0", 1, "1e3")]).is_err());
    }

    #[test]
    fn partitions_list_with_commas_or_a_dash() {
        assert_eq!(partition_list(&[0, 2, 4]), "0,2,4");
        assert_eq!(partition_list(&[]), "-");
    }
}
