//! The writer's balance cache: the balances the loop wrote recently, in
//! memory, bounded however many accounts a shard owns.

use ledger_core::domain::{AccountId, Money};
use ledger_core::hash::HashMap;

/// Most balances the writer keeps in memory: at about 100 bytes each (an
/// account id of up to 64 bytes, the amount, the map's overhead), some
/// 25 MiB however many accounts a shard owns.
pub(super) const BALANCE_CACHE_CAPACITY: usize = 1 << 18;

/// The balances the loop wrote recently, so that a hot account is not read
/// back from sled for every transfer.
///
/// Two generations: writes go to `recent`; when `recent` is full (half the
/// capacity) it becomes `older` and the previous `older` is dropped. An
/// account written in either of the last two generations stays in memory,
/// so the accounts written often stay, and the cache never holds more than
/// its capacity.
///
/// Dropping an entry is always safe: the cache only copies what the loop's
/// own writes put in sled (including the batch in flight, which the next
/// batch computes from, as sled holds it too), and a miss reads sled. The
/// one path that changes sled behind it, `undo_pending`, clears it through
/// `load`.
#[derive(Debug)]
pub(super) struct BalanceCache {
    /// Entries per generation: half the capacity.
    generation: usize,
    recent: HashMap<AccountId, Money>,
    older: HashMap<AccountId, Money>,
}

impl BalanceCache {
    pub(super) fn new(capacity: usize) -> Self {
        BalanceCache {
            generation: (capacity / 2).max(1),
            recent: HashMap::default(),
            older: HashMap::default(),
        }
    }

    /// `recent` first: `older` may hold an earlier balance of the account.
    pub(super) fn get(&self, account: &AccountId) -> Option<Money> {
        self.recent
            .get(account)
            .or_else(|| self.older.get(account))
            .copied()
    }

    pub(super) fn insert(&mut self, account: &AccountId, balance: Money) {
        if self.recent.len() >= self.generation && !self.recent.contains_key(account) {
            self.older = std::mem::take(&mut self.recent);
        }
        self.recent.insert(account.clone(), balance);
    }

    pub(super) fn clear(&mut self) {
        self.recent.clear();
        self.older.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreOptions};
    use ledger_core::machine::{BatchEffects, LedgerView};

    #[test]
    fn the_balance_cache_stays_within_its_bound_and_misses_read_sled() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let capacity = 4;
        store.balances = BalanceCache::new(capacity);
        let account = |n: i128| AccountId::parse(&format!("acc-{n}")).unwrap();
        let hot = account(0);
        let apply = |store: &mut Store, balances: &[(AccountId, Money)]| {
            let effects = BatchEffects {
                balances: balances.iter().cloned().collect(),
                ..BatchEffects::default()
            };
            store.write_batch(&effects).unwrap();
        };
        for n in 1..=20 {
            apply(
                &mut store,
                &[(hot.clone(), Money(n)), (account(n), Money(100 * n))],
            );
            store.mark_committed();
            let cached = store.balances.recent.len() + store.balances.older.len();
            assert!(
                cached <= capacity,
                "{cached} balances cached after batch {n}"
            );
            // Written in every batch, the hot account is never evicted.
            assert_eq!(store.balances.get(&hot), Some(Money(n)));
        }
        assert_eq!(store.balances.get(&account(1)), None, "evicted");
        for n in 1..=20 {
            assert_eq!(store.balance(&account(n)), Money(100 * n));
        }
        assert_eq!(store.balance(&hot), Money(20));

        // A batch taken back is forgotten by the cache as by sled.
        apply(
            &mut store,
            &[(hot.clone(), Money(-1)), (account(1), Money(-1))],
        );
        assert_eq!(store.balance(&hot), Money(-1));
        store.undo_pending().unwrap();
        assert_eq!(store.balance(&hot), Money(20));
        assert_eq!(store.balance(&account(1)), Money(100));
    }
}
