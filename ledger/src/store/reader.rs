//! The reader: queries served from the last committed state, even while a
//! batch is between its sled write and its Kafka commit (its keys are read
//! from the pending record's prior values then).

use std::sync::Arc;

use sled::IVec;

use ledger_core::domain::{AccountId, Decision, Money, TransferId};
use ledger_core::machine::Offsets;

use super::codec::{decode_held, decode_money, decode_offset, decode_pending};
use super::keys::{
    balance_key, decode_offset_key, BALANCE_PREFIX, DECIDED_PREFIX, HELD_PREFIX,
    LEGACY_HELD_PREFIX, OFFSET_PREFIX, PENDING_KEY,
};
use super::{read_lock, Shared};

/// A read-only handle that serves queries from the last committed state,
/// even while a batch is between its sled write and its Kafka commit.
#[derive(Debug, Clone)]
pub struct StoreReader {
    pub(super) db: sled::Db,
    pub(super) shared: Arc<Shared>,
}

/// Shard-level facts for `stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub accounts: u64,
    pub sum: Money,
    pub offsets: Offsets,
    pub pending: Option<PendingSummary>,
    pub remembered_ids: u64,
    /// Transfers waiting for funds (see `ledger_core::order`).
    pub held: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSummary {
    pub seq: u64,
    pub offsets_before: Offsets,
    pub offsets_after: Offsets,
    pub keys: usize,
}

/// What a query can learn about a transfer id on one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferStatus {
    pub decision: Option<Decision>,
    pub credited: bool,
}

impl StoreReader {
    fn committed(&self, key: &[u8]) -> Result<Option<IVec>, sled::Error> {
        if let Some(in_doubt) = read_lock(&self.shared.in_doubt).as_ref() {
            if let Some(prior) = in_doubt.prior.get(key) {
                return Ok(prior.as_deref().map(IVec::from));
            }
        }
        self.db.get(key)
    }

    fn in_doubt_seq(&self) -> Option<u64> {
        read_lock(&self.shared.in_doubt).as_ref().map(|d| d.seq)
    }

    /// The committed balance, or `None` for an account never seen here.
    pub fn balance(&self, account: &AccountId) -> Result<Option<Money>, sled::Error> {
        Ok(self
            .committed(&balance_key(account))?
            .and_then(|bytes| decode_money(&bytes)))
    }

    /// Every committed balance, in account order.
    pub fn balances(&self) -> Result<Vec<(AccountId, Money)>, sled::Error> {
        self.balances_page(None, usize::MAX)
    }

    /// Up to `limit` committed balances in account order, of the accounts
    /// after `after` (from the first one without it): a page of an export,
    /// which thus never holds more than a page in memory. Each page is
    /// committed state; two pages may come from different batches.
    pub fn balances_page(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<(AccountId, Money)>, sled::Error> {
        let in_doubt = read_lock(&self.shared.in_doubt);
        let prior = in_doubt.as_ref().map(|d| &d.prior);
        let start = match after {
            // The smallest key after the account's own.
            Some(account) => [balance_key(account).as_slice(), &[0]].concat(),
            None => BALANCE_PREFIX.to_vec(),
        };
        let mut page = Vec::new();
        for item in self.db.range(start..) {
            let (key, value) = item?;
            if !key.starts_with(BALANCE_PREFIX) || page.len() >= limit {
                break;
            }
            let value = match prior.and_then(|p| p.get(key.as_ref())) {
                Some(None) => continue,
                Some(Some(old)) => decode_money(old),
                None => decode_money(&value),
            };
            let account = std::str::from_utf8(&key[BALANCE_PREFIX.len()..])
                .ok()
                .and_then(|text| AccountId::parse(text).ok());
            if let (Some(account), Some(balance)) = (account, value) {
                page.push((account, balance));
            }
        }
        Ok(page)
    }

    /// The `limit` largest committed balances, largest first.
    pub fn top(&self, limit: usize) -> Result<Vec<(AccountId, Money)>, sled::Error> {
        let mut all = self.balances()?;
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(limit);
        Ok(all)
    }

    pub fn transfer(&self, id: TransferId) -> TransferStatus {
        let doubt = self.in_doubt_seq();
        let window = read_lock(&self.shared.window);
        TransferStatus {
            decision: window
                .decided
                .get(&id)
                .filter(|(_, seq)| Some(*seq) != doubt)
                .map(|(d, _)| *d),
            credited: window
                .credited
                .get(&id)
                .is_some_and(|seq| Some(*seq) != doubt),
        }
    }

    pub fn stats(&self) -> Result<Stats, sled::Error> {
        let balances = self.balances()?;
        let offsets = self.committed_offsets()?;
        let pending = match self.db.get(PENDING_KEY)? {
            Some(bytes) => decode_pending(&bytes).map(|p| PendingSummary {
                seq: p.seq,
                offsets_before: p.offsets_before,
                offsets_after: p.offsets_after,
                keys: p.undo.len(),
            }),
            None => None,
        };
        let held = self.committed_held()?;
        let window = read_lock(&self.shared.window);
        Ok(Stats {
            accounts: balances.len() as u64,
            sum: balances.iter().map(|(_, b)| *b).sum(),
            offsets,
            pending,
            remembered_ids: (window.decided.len() + window.credited.len()) as u64,
            held,
        })
    }

    /// Every committed next offset.
    fn committed_offsets(&self) -> Result<Offsets, sled::Error> {
        let mut offsets = Offsets::new();
        for item in self.db.scan_prefix(OFFSET_PREFIX) {
            let (key, _) = item?;
            let Some(at) = decode_offset_key(&key) else {
                continue;
            };
            if let Some(value) = self.committed(&key)? {
                if let Some(offset) = decode_offset(&value) {
                    offsets.insert(at, offset);
                }
            }
        }
        Ok(offsets)
    }

    /// How many transfers are held in committed state: those of the `w:`
    /// records less those their `d:` bitmaps name decided, and the `h:`
    /// keys of earlier versions.
    fn committed_held(&self) -> Result<u64, sled::Error> {
        let mut held = 0u64;
        for item in self.db.scan_prefix(HELD_PREFIX) {
            let (key, _) = item?;
            if let Some(value) = self.committed(&key)? {
                held += decode_held(&value).map_or(0, |held| held.len() as u64);
            }
        }
        for item in self.db.scan_prefix(DECIDED_PREFIX) {
            let (key, _) = item?;
            if let Some(value) = self.committed(&key)? {
                let decided: u32 = value.iter().map(|bits| bits.count_ones()).sum();
                held = held.saturating_sub(u64::from(decided));
            }
        }
        for item in self.db.scan_prefix(LEGACY_HELD_PREFIX) {
            let (key, _) = item?;
            if self.committed(&key)?.is_some() {
                held += 1;
            }
        }
        Ok(held)
    }
}
