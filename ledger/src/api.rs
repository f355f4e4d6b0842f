//! The JSON views of a shard's state, shared by the shard's HTTP API and
//! the `ledger query` CLI, so online and offline answers look the same.
//!
//! Every view names the shard that answered (`shard`): a running shard's
//! name is its transactional id, e.g. `ledger-consumer-0` or
//! `ledger-consumer-3fa9c2d1` (a replica scaled without an ordinal); a
//! stopped shard read with `ledger query --db DIR` is named by the
//! directory as given. Clients identify shards by this name, never by the
//! address they asked: one address may stand for all shards.
//!
//! The views are built from a [`StoreReader`] here, once, by
//! [`account_view`], [`top_view`], [`balances_page_view`],
//! [`transfer_view`], [`stats_view`] (or [`stopped_stats_view`]) and
//! [`shard_view`]: the shard's HTTP API serves them, and `ledger query
//! --db` builds the same ones from a stopped shard's directory.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::store::{Stats, StoreReader, TransferStatus};
use ledger_core::domain::{AccountId, Decision, Money, RejectReason, TransferId};
use ledger_core::machine::{Offsets, Source};

/// `GET /v1/accounts/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub account: String,
    /// Decimal string, e.g. `"142.50"`.
    pub balance: String,
    /// The name of the shard that holds the account.
    pub shard: String,
}

/// `GET /v1/accounts?top=N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopView {
    pub shard: String,
    pub accounts: Vec<AccountView>,
}

/// Most balances in one page of `GET /v1/balances`: bounds one answer's
/// size; a reader of every balance asks page after page
/// ([`page_through`]).
pub const BALANCES_PAGE_MAX: usize = 10_000;

/// `GET /v1/balances?after=ACCOUNT&limit=N`: a page of every committed
/// balance, in account order. A page shorter than the limit is the last;
/// otherwise the next one starts after its last account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancesPageView {
    pub shard: String,
    pub accounts: Vec<AccountView>,
}

/// Every balance of a shard, page by page in account order: asks `fetch`
/// for the page after the last account seen (none at first) until a page
/// comes back shorter than `page_len`, and hands each page to `each`.
/// Memory stays at one page whatever the shard holds.
pub fn page_through<E>(
    page_len: usize,
    mut fetch: impl FnMut(Option<&str>) -> Result<Vec<AccountView>, E>,
    mut each: impl FnMut(Vec<AccountView>) -> Result<(), E>,
) -> Result<(), E> {
    let mut after: Option<String> = None;
    loop {
        let page = fetch(after.as_deref())?;
        let last_page = page.len() < page_len;
        after = page.last().map(|view| view.account.clone());
        each(page)?;
        if last_page {
            return Ok(());
        }
    }
}

/// `GET /v1/transfers/{id}`: what this shard knows about a transfer id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferView {
    pub transfer_id: String,
    pub shard: String,
    pub status: DecisionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether this shard applied the transfer's credit.
    pub credited: bool,
}

/// What one shard knows of a transfer's decision; `accepted`, `rejected`
/// or `unknown` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionStatus {
    Accepted,
    Rejected,
    /// Not decided here, or older than the idempotency window.
    Unknown,
}

impl DecisionStatus {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionStatus::Accepted => "accepted",
            DecisionStatus::Rejected => "rejected",
            DecisionStatus::Unknown => "unknown",
        }
    }
}

impl fmt::Display for DecisionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TransferView {
    /// The decision this view reports, read back from its status and reason
    /// (`None` for a reason code this version does not know).
    pub fn decision(&self) -> Option<Decision> {
        match self.status {
            DecisionStatus::Accepted => Some(Decision::Accepted),
            DecisionStatus::Rejected => {
                let code = self.reason.as_deref()?;
                RejectReason::ALL
                    .into_iter()
                    .find(|reason| reason.code() == code)
                    .map(Decision::Rejected)
            }
            DecisionStatus::Unknown => None,
        }
    }

    pub fn new(transfer_id: String, shard: String, status: TransferStatus) -> Self {
        let (decision, reason) = match status.decision {
            Some(Decision::Accepted) => (DecisionStatus::Accepted, None),
            Some(Decision::Rejected(reason)) => {
                (DecisionStatus::Rejected, Some(reason.code().to_owned()))
            }
            None => (DecisionStatus::Unknown, None),
        };
        TransferView {
            transfer_id,
            shard,
            status: decision,
            reason,
            credited: status.credited,
        }
    }
}

/// One input partition's next offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetView {
    /// `transfers` or `credits` in JSON.
    pub source: Source,
    pub partition: i32,
    pub next_offset: i64,
}

/// The batch written to sled whose Kafka commit is not known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingView {
    pub seq: u64,
    pub offsets_before: Vec<OffsetView>,
    pub offsets_after: Vec<OffsetView>,
    pub keys: usize,
}

/// `GET /v1/shard`: which shard answers, and the partitions it owns now
/// (as in [`StatsView`]). Cheap, with no store read: what clients ask
/// first, to know the shards and route by ownership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardView {
    pub shard: String,
    pub partitions: Vec<i32>,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    pub shard: String,
    /// The input partitions (of `transactions` and `ledger-credits` alike)
    /// this shard owns right now: with ordinal assignment its fixed list;
    /// with group assignment the current one, which a rebalance changes;
    /// for a stopped shard's directory, the `transactions` partitions its
    /// offsets record. Ascending. Clients route by it, not by an ordinal.
    pub partitions: Vec<i32>,
    pub accounts: u64,
    /// Sum of this shard's balances; over all shards plus the credits in
    /// flight it is zero.
    pub sum: String,
    pub offsets: Vec<OffsetView>,
    pub pending: Option<PendingView>,
    pub remembered_ids: u64,
    /// Transfers held for funds right now.
    #[serde(default)]
    pub held: u64,
}

pub fn offset_views(offsets: &Offsets) -> Vec<OffsetView> {
    offsets
        .iter()
        .map(|(at, next)| OffsetView {
            source: at.source,
            partition: at.partition,
            next_offset: *next,
        })
        .collect()
}

impl StatsView {
    pub fn new(shard: String, partitions: Vec<i32>, stats: &Stats) -> Self {
        StatsView {
            shard,
            partitions,
            accounts: stats.accounts,
            sum: stats.sum.to_string(),
            offsets: offset_views(&stats.offsets),
            pending: stats.pending.as_ref().map(|p| PendingView {
                seq: p.seq,
                offsets_before: offset_views(&p.offsets_before),
                offsets_after: offset_views(&p.offsets_after),
                keys: p.keys,
            }),
            remembered_ids: stats.remembered_ids,
            held: stats.held,
        }
    }
}

impl AccountView {
    pub fn new(account: &str, balance: Money, shard: &str) -> Self {
        AccountView {
            account: account.to_owned(),
            balance: balance.to_string(),
            shard: shard.to_owned(),
        }
    }
}

/// `GET /v1/accounts/{id}`: the account's committed balance on shard
/// `shard`, or `None` for an account never seen there.
pub fn account_view(
    reader: &StoreReader,
    shard: &str,
    account: &AccountId,
) -> Result<Option<AccountView>, sled::Error> {
    Ok(reader
        .balance(account)?
        .map(|balance| AccountView::new(account.as_str(), balance, shard)))
}

/// `GET /v1/accounts?top=N`: the `limit` largest committed balances,
/// largest first.
pub fn top_view(reader: &StoreReader, shard: &str, limit: usize) -> Result<TopView, sled::Error> {
    Ok(TopView {
        shard: shard.to_owned(),
        accounts: account_views(reader.top(limit)?, shard),
    })
}

/// `GET /v1/balances?after=ACCOUNT&limit=N`: up to `limit` committed
/// balances in account order, after `after` (from the first without it).
pub fn balances_page_view(
    reader: &StoreReader,
    shard: &str,
    after: Option<&AccountId>,
    limit: usize,
) -> Result<BalancesPageView, sled::Error> {
    Ok(BalancesPageView {
        shard: shard.to_owned(),
        accounts: account_views(reader.balances_page(after, limit)?, shard),
    })
}

fn account_views(balances: Vec<(AccountId, Money)>, shard: &str) -> Vec<AccountView> {
    balances
        .into_iter()
        .map(|(account, balance)| AccountView::new(account.as_str(), balance, shard))
        .collect()
}

/// `GET /v1/transfers/{id}`: what shard `shard` knows of the transfer.
pub fn transfer_view(reader: &StoreReader, shard: &str, id: TransferId) -> TransferView {
    TransferView::new(id.to_string(), shard.to_owned(), reader.transfer(id))
}

/// `GET /v1/stats` of a running shard, which owns `partitions` now.
pub fn stats_view(
    reader: &StoreReader,
    shard: &str,
    partitions: Vec<i32>,
) -> Result<StatsView, sled::Error> {
    Ok(StatsView::new(
        shard.to_owned(),
        partitions,
        &reader.stats()?,
    ))
}

/// The stats of a stopped shard, read from its directory: it owns the
/// partitions its committed offsets record ([`recorded_partitions`]).
pub fn stopped_stats_view(reader: &StoreReader, shard: &str) -> Result<StatsView, sled::Error> {
    let stats = reader.stats()?;
    Ok(StatsView::new(
        shard.to_owned(),
        recorded_partitions(&stats.offsets),
        &stats,
    ))
}

/// `GET /v1/shard`: shard `shard`, which owns `partitions`.
pub fn shard_view(shard: &str, partitions: Vec<i32>) -> ShardView {
    ShardView {
        shard: shard.to_owned(),
        partitions,
    }
}

/// The partitions a stopped shard owns: those of `transactions` its
/// offsets record, the ones it consumed up to its stop. Ascending.
pub fn recorded_partitions(offsets: &Offsets) -> Vec<i32> {
    offsets
        .keys()
        .filter(|at| at.source == Source::Transfers)
        .map(|at| at.partition)
        .collect()
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorView {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON of a view is what clients parse: the status names must not
    /// change with the type.
    #[test]
    fn transfer_views_keep_their_json_and_read_back_their_decision() {
        for (decision, status, reason) in [
            (Some(Decision::Accepted), "accepted", None),
            (
                Some(Decision::Rejected(RejectReason::InsufficientFunds)),
                "rejected",
                Some("insufficient_funds"),
            ),
            (None, "unknown", None),
        ] {
            let view = TransferView::new(
                "t".to_owned(),
                "ledger-consumer-2".to_owned(),
                TransferStatus {
                    decision,
                    credited: true,
                },
            );
            let mut expected = serde_json::json!({
                "transfer_id": "t", "shard": "ledger-consumer-2", "status": status, "credited": true,
            });
            if let Some(reason) = reason {
                expected["reason"] = reason.into();
            }
            assert_eq!(serde_json::to_value(&view).unwrap(), expected);
            assert_eq!(view.status.to_string(), status);
            let parsed: TransferView = serde_json::from_value(expected).unwrap();
            assert_eq!(parsed.decision(), decision);
        }
        let refused = serde_json::from_value::<TransferView>(serde_json::json!({
            "transfer_id": "t", "shard": "ledger-consumer-0", "status": "maybe", "credited": false,
        }));
        assert!(refused.is_err());
    }
}
