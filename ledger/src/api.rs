//! The JSON views of a shard's state, shared by the shard's HTTP API and
//! the `ledger query` CLI, so online and offline answers look the same.

use serde::{Deserialize, Serialize};

use crate::store::{Stats, TransferStatus};
use ledger_core::domain::{Decision, Money, RejectReason};
use ledger_core::machine::{Offsets, Source};

/// `GET /v1/accounts/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub account: String,
    /// Decimal string, e.g. `"142.50"`.
    pub balance: String,
    pub shard: u32,
}

/// `GET /v1/accounts?top=N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopView {
    pub shard: u32,
    pub accounts: Vec<AccountView>,
}

/// `GET /v1/balances?after=ACCOUNT&limit=N`: a page of every committed
/// balance, in account order. A page shorter than the limit is the last;
/// otherwise the next one starts after its last account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancesPageView {
    pub shard: u32,
    pub accounts: Vec<AccountView>,
}

/// `GET /v1/transfers/{id}`: what this shard knows about a transfer id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferView {
    pub transfer_id: String,
    pub shard: u32,
    /// `accepted`, `rejected` or `unknown` (not decided here, or older than
    /// the idempotency window).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether this shard applied the transfer's credit.
    pub credited: bool,
}

impl TransferView {
    /// The decision this view reports, read back from its status and reason.
    pub fn decision(&self) -> Option<Decision> {
        match (self.status.as_str(), self.reason.as_deref()) {
            ("accepted", _) => Some(Decision::Accepted),
            ("rejected", Some(code)) => RejectReason::ALL
                .into_iter()
                .find(|reason| reason.code() == code)
                .map(Decision::Rejected),
            _ => None,
        }
    }

    pub fn new(transfer_id: String, shard: u32, status: TransferStatus) -> Self {
        let (status_text, reason) = match status.decision {
            Some(Decision::Accepted) => ("accepted", None),
            Some(Decision::Rejected(reason)) => ("rejected", Some(reason.code().to_owned())),
            None => ("unknown", None),
        };
        TransferView {
            transfer_id,
            shard,
            status: status_text.to_owned(),
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

/// `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    pub shard: u32,
    pub accounts: u64,
    /// Sum of this shard's balances; over all shards plus the credits in
    /// flight it is zero.
    pub sum: String,
    pub offsets: Vec<OffsetView>,
    pub pending: Option<PendingView>,
    pub remembered_ids: u64,
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
    pub fn new(shard: u32, stats: &Stats) -> Self {
        StatsView {
            shard,
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
        }
    }
}

impl AccountView {
    pub fn new(account: &str, balance: Money, shard: u32) -> Self {
        AccountView {
            account: account.to_owned(),
            balance: balance.to_string(),
            shard,
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorView {
    pub error: String,
}
