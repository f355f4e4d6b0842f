//! The JSON bodies of the shard's HTTP API, public so that clients (the
//! `ledger query --url` command, tests) decode exactly what the shard
//! encodes. Amounts are decimal strings with two decimals, never floats.

use ledger::domain::Decision;
use ledger::machine::{Offsets, Source};
use ledger::store::{PendingSummary, Stats};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// `GET /v1/accounts/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountBalance {
    pub account: String,
    pub balance: Decimal,
    /// The shard that answered (an account lives on exactly one).
    pub shard: u32,
}

/// `GET /v1/accounts?top=N`: this shard's largest balances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopAccounts {
    pub shard: u32,
    /// Largest balance first; ties by account id.
    pub accounts: Vec<AccountEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEntry {
    pub account: String,
    pub balance: Decimal,
}

/// `GET /v1/transfers/{id}`: what this shard knows of a transfer. The source
/// account's shard knows the decision, the destination's shard whether the
/// credit was applied (one shard may be both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStatus {
    pub transfer_id: String,
    pub shard: u32,
    /// `{"status": "accepted"}` or `{"status": "rejected", "reason": ...}`;
    /// null when this shard did not decide it (or it left the idempotency
    /// window).
    pub decision: Option<Decision>,
    pub credited: bool,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStats {
    pub shard: u32,
    pub shards: u32,
    pub accounts: u64,
    /// Sum of this shard's committed balances.
    pub sum: Decimal,
    /// Next offset to read per input partition, as committed.
    pub offsets: Vec<PartitionOffset>,
    /// The last batch's record while it is still on disk (resolved at the
    /// next write, idle time or shutdown).
    pub pending: Option<PendingBatch>,
    pub remembered_ids: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    pub source: Source,
    pub partition: i32,
    pub next_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingBatch {
    pub seq: u64,
    pub offsets_before: Vec<PartitionOffset>,
    pub offsets_after: Vec<PartitionOffset>,
    pub keys: usize,
}

/// Body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

pub fn partition_offsets(offsets: &Offsets) -> Vec<PartitionOffset> {
    offsets
        .iter()
        .map(|(at, next)| PartitionOffset {
            source: at.source,
            partition: at.partition,
            next_offset: *next,
        })
        .collect()
}

impl ShardStats {
    pub fn new(shard: u32, shards: u32, stats: Stats) -> Self {
        ShardStats {
            shard,
            shards,
            accounts: stats.accounts,
            sum: stats.sum.to_decimal(),
            offsets: partition_offsets(&stats.offsets),
            pending: stats.pending.map(|pending: PendingSummary| PendingBatch {
                seq: pending.seq,
                offsets_before: partition_offsets(&pending.offsets_before),
                offsets_after: partition_offsets(&pending.offsets_after),
                keys: pending.keys,
            }),
            remembered_ids: stats.remembered_ids,
        }
    }
}
