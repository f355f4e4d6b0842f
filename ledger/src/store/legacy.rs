//! Layouts of earlier versions that are still read: held transfers one
//! key each (`h:`, `wire::encode_held`) and kept credits one JSON list per
//! account (`r:`). Neither is written any more: a held transfer of its
//! own key is removed when it is decided, and the first batch that changes
//! a partition moves its `r:` credits into a `c:` record.

use ledger_core::domain::AccountId;
use ledger_core::order::{OrderKey, PartitionOrder};
use ledger_core::wire;

use super::keys::{
    order_key_partition, partition_prefix, LEGACY_HELD_PREFIX, LEGACY_RECENT_PREFIX,
};
use super::orders::LoadedOrders;
use super::{Change, Store, StoreError};

pub(super) fn legacy_held_key(partition: i32, key: &OrderKey) -> Vec<u8> {
    [
        LEGACY_HELD_PREFIX,
        &partition.to_be_bytes(),
        &key.to_bytes(),
    ]
    .concat()
}

impl Store {
    /// The `h:` keys: held transfers of their own, each indexed without a
    /// record.
    pub(super) fn load_legacy_held(&self, loaded: &mut LoadedOrders) -> Result<(), StoreError> {
        for item in self.db.scan_prefix(LEGACY_HELD_PREFIX) {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            let partition =
                order_key_partition(&key).ok_or_else(|| self.undecodable("held key", &key))?;
            let held = wire::decode_held(&value)
                .ok_or_else(|| self.undecodable("the held transfer", &key))?;
            let index = &mut loaded.records.entry(partition).or_default().held;
            index.record_of.insert(held.key, None);
            loaded.orders.entry(partition).or_default().held.push(held);
        }
        Ok(())
    }

    /// The `r:` keys: one account's kept credits each, noted on the
    /// partition's order like those of `c:` records; their partitions are
    /// named in `loaded.legacy`.
    pub(super) fn load_legacy_recent(&self, loaded: &mut LoadedOrders) -> Result<(), StoreError> {
        for item in self.db.scan_prefix(LEGACY_RECENT_PREFIX) {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            let partition =
                order_key_partition(&key).ok_or_else(|| self.undecodable("recent key", &key))?;
            let account = std::str::from_utf8(&key[6..])
                .ok()
                .and_then(|name| AccountId::parse(name).ok())
                .ok_or_else(|| self.undecodable("recent key", &key))?;
            let credits = PartitionOrder::decode_legacy_recent(&value)
                .ok_or_else(|| self.undecodable("the recent credits", &key))?;
            let order = loaded.orders.entry(partition).or_default();
            for (key, amount) in credits {
                order.note_credit(&account, key, amount);
            }
            loaded.legacy.insert(partition);
        }
        Ok(())
    }

    /// The removal of every `r:` key of `partition`.
    pub(super) fn legacy_recent_removals(
        &self,
        partition: i32,
        changes: &mut Vec<Change>,
    ) -> Result<(), StoreError> {
        for item in self
            .db
            .scan_prefix(partition_prefix(LEGACY_RECENT_PREFIX, partition))
        {
            let (key, _) = item.map_err(|e| self.sled_error(e))?;
            changes.push((key.to_vec(), None));
        }
        Ok(())
    }
}
