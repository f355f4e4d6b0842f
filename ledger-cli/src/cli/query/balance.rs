//! `balance`: one account's committed balance, asked of the shard whose
//! stats report the account's partition, then of the others.

use std::process::ExitCode;

use anyhow::bail;

use ledger::api::AccountView;
use ledger_core::domain::AccountId;
use ledger_core::routing::partition_for;

use super::source::Shard;
use super::table::{Align, Table};
use super::{not_found, print_json, print_text};

pub(super) fn balance(
    shards: &[Shard],
    account: &AccountId,
    partitions: i32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let partition = partition_for(account.as_str().as_bytes(), partitions);
    let owner = owner(shards, account, partition, partitions)?;
    match find(shards, owner, account)? {
        Some(view) => {
            if json {
                print_json(&view)?;
            } else {
                let mut table = Table::new(&[
                    ("ACCOUNT", Align::Left),
                    ("BALANCE", Align::Right),
                    ("SHARD", Align::Left),
                ]);
                table.row(vec![view.account, view.balance, view.shard]);
                print_text(&table.to_string())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let message = unknown(shards, owner, account, partition, partitions);
            not_found(json, message)
        }
    }
}

/// The shard whose stats report `partition` (the account's), if one does;
/// several is an error.
fn owner<'a>(
    shards: &'a [Shard],
    account: &AccountId,
    partition: i32,
    partitions: i32,
) -> anyhow::Result<Option<&'a Shard>> {
    let owners: Vec<&Shard> = shards
        .iter()
        .filter(|shard| shard.partitions.contains(&partition))
        .collect();
    if let [_, _, ..] = owners.as_slice() {
        // Each may hold a copy of the account as of its ownership: which is
        // current cannot be told from here.
        let owners: Vec<String> = owners.iter().map(ToString::to_string).collect();
        bail!(
            "{} all report partition {partition} of {partitions} (account {account}'s): they \
             disagree on who owns it, a rebalance is under way; retry",
            owners.join(", ")
        );
    }
    Ok(owners.first().copied())
}

/// The owner first. Then the others: another shard holds the account if
/// --partitions is not the shards' count, or its owner is not given.
fn find(
    shards: &[Shard],
    owner: Option<&Shard>,
    account: &AccountId,
) -> anyhow::Result<Option<AccountView>> {
    let others = shards
        .iter()
        .filter(|shard| owner.is_none_or(|owner| !std::ptr::eq(*shard, owner)));
    for shard in owner.into_iter().chain(others) {
        let found = shard.balance(account)?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Why no shard given knows the account.
fn unknown(
    shards: &[Shard],
    owner: Option<&Shard>,
    account: &AccountId,
    partition: i32,
    partitions: i32,
) -> String {
    let whose = match owner {
        Some(owner) => format!("owned by {owner}, which has never seen it"),
        None => "owned by no shard given (one is down or not given, or the shards are \
                 rebalancing: retry)"
            .to_owned(),
    };
    let mut message =
        format!("unknown account {account}: on partition {partition} of {partitions}, {whose}");
    if shards.len() > 1 || owner.is_none() {
        message.push_str("; no shard given knows it (check --partitions if the account exists)");
    }
    message
}
