//! `top`: the accounts with the largest committed balances, over the
//! shards given.

use std::process::ExitCode;

use anyhow::Context;

use ledger::api::AccountView;

use super::source::Shard;
use super::table::{Align, Table};
use super::{decimal, print_json, print_text};

pub(super) fn top(shards: &[Shard], limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let accounts = merge(shards, limit)?;
    if json {
        print_json(&accounts)?;
    } else {
        let mut table = Table::new(&[
            ("RANK", Align::Right),
            ("ACCOUNT", Align::Left),
            ("BALANCE", Align::Right),
            ("SHARD", Align::Left),
        ]);
        for (rank, view) in (1u32..).zip(accounts) {
            table.row(vec![
                rank.to_string(),
                view.account,
                view.balance,
                view.shard,
            ]);
        }
        print_text(&table.to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The global top `limit`, largest first (ties by account), which is among
/// the union of every shard's top `limit`.
fn merge(shards: &[Shard], limit: usize) -> anyhow::Result<Vec<AccountView>> {
    let mut ranked = Vec::new();
    for shard in shards {
        for view in shard.top(limit)?.accounts {
            let balance = decimal(&view.balance)
                .with_context(|| format!("{shard}: balance of {}", view.account))?;
            ranked.push((balance, view));
        }
    }
    ranked.sort_by(|(a, a_view), (b, b_view)| {
        b.cmp(a).then_with(|| a_view.account.cmp(&b_view.account))
    });
    ranked.truncate(limit);
    Ok(ranked.into_iter().map(|(_, view)| view).collect())
}
