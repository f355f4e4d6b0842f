//! Order-state records: each partition's floor and marks (`q:`), the
//! transfers a batch held (`w:`), which of them are decided since (`d:`,
//! a bitmap), and the credits a batch kept (`c:`). What a batch changes
//! of them, and how they are read back at start.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use ledger_core::domain::{AccountId, Money};
use ledger_core::hash::{HashMap, HashSet};
use ledger_core::machine::BatchEffects;
use ledger_core::order::{Held, OrderKey, PartitionOrder};

use super::codec::{credit_entry, decode_credits, decode_held, held_entry, pack};
use super::keys::{
    order_key, order_key_partition, record_key, record_key_id, RecordId, CREDIT_PREFIX,
    DECIDED_PREFIX, HELD_PREFIX, ORDER_PREFIX,
};
use super::legacy::legacy_held_key;
use super::{Change, Store, StoreError};

/// Where a partition's held transfers and recent credits are on disk.
#[derive(Debug, Clone, Default)]
pub(super) struct PartitionRecords {
    pub(super) held: HeldIndex,
    /// `c:` records, each with the newest key in it.
    pub(super) credits: BTreeMap<RecordId, OrderKey>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct HeldIndex {
    /// `w:` records.
    pub(super) records: BTreeMap<RecordId, HeldRecord>,
    /// Each held transfer's record and place in it; `None`: a key of its
    /// own (`h:`).
    pub(super) record_of: HashMap<OrderKey, Option<(RecordId, usize)>>,
}

/// One `w:` record, and its `d:` key.
#[derive(Debug, Clone, Default)]
pub(super) struct HeldRecord {
    /// Which of the transfers written in it are decided, in its order.
    decided: Vec<bool>,
    /// Whether its `d:` key exists.
    marked: bool,
}

impl HeldRecord {
    fn new(len: usize) -> Self {
        HeldRecord {
            decided: vec![false; len],
            marked: false,
        }
    }

    fn encode_decided(&self) -> Vec<u8> {
        let mut bits = vec![0u8; self.decided.len().div_ceil(8)];
        for (at, _) in self.decided.iter().enumerate().filter(|(_, d)| **d) {
            bits[at / 8] |= 1 << (at % 8);
        }
        bits
    }

    /// Reads [`HeldRecord::encode_decided`]; `None` if it names members
    /// the record does not have.
    fn mark_decided(&mut self, bits: &[u8]) -> Option<()> {
        if bits.len() != self.decided.len().div_ceil(8) {
            return None;
        }
        for (at, decided) in self.decided.iter_mut().enumerate() {
            *decided = bits[at / 8] & (1 << (at % 8)) != 0;
        }
        self.marked = true;
        Some(())
    }
}

/// The order state as [`Store::load_orders`] reads it.
#[derive(Default)]
pub(super) struct LoadedOrders {
    pub(super) orders: HashMap<i32, PartitionOrder>,
    pub(super) records: HashMap<i32, PartitionRecords>,
    /// Partitions with `r:` keys.
    pub(super) legacy: HashSet<i32>,
}

/// The transfers of each `w:` record as written, by partition and record.
type HeldRecords = BTreeMap<(i32, RecordId), Vec<Held>>;

impl LoadedOrders {
    /// Holds the transfers of `records` that their `d:` keys (read into
    /// `self.records`) do not name decided.
    fn hold_undecided(&mut self, records: HeldRecords) {
        for ((partition, id), held) in records {
            let index = &mut self.records.entry(partition).or_default().held;
            let decided = index.records[&id].decided.clone();
            for (at, held) in held.into_iter().enumerate() {
                if !decided[at] {
                    index.record_of.insert(held.key, Some((id, at)));
                    self.orders.entry(partition).or_default().held.push(held);
                }
            }
        }
    }
}

/// One partition's order state before and after the batch `seq`.
#[derive(Clone, Copy)]
struct OrderDiff<'a> {
    partition: i32,
    old: &'a PartitionOrder,
    new: &'a PartitionOrder,
    seq: u64,
}

/// What a batch changes of one partition's order state, as changes
/// (`None`: remove): its floor and marks, and only the held transfers and
/// recent credits that changed, so that a batch writes in proportion to
/// what it did, not to how much is held.
///
/// Held transfers and recent credits go in one record per batch and
/// partition (`index`: the partition's records on disk): sled pays per
/// key, and while a backlog keeps transfers held thousands of accounts
/// keep credits over many batches. A record is removed once every credit
/// in it is ordered before all that is still to decide; the credits of a
/// record still kept that were pruned are left out when it is read back.
/// Returns the partition's records after the batch.
fn partition_order_changes(
    diff: &OrderDiff<'_>,
    index: &PartitionRecords,
    changes: &mut Vec<Change>,
) -> PartitionRecords {
    let OrderDiff {
        partition,
        old,
        new,
        seq,
    } = *diff;
    changes.push((order_key(partition), Some(new.encode_meta())));
    let held = held_changes(diff, &index.held, changes);
    let mut records = index.credits.clone();
    let added = credits_added(&new.recent, &old.recent);
    let mut added = added.iter();
    let entries = pack(
        added
            .clone()
            .map(|(account, credit)| credit_entry(account, credit)),
    );
    for (part, (bytes, count)) in (0..).zip(entries) {
        let id = (seq, part);
        let newest = added.by_ref().take(count).map(|(_, (key, _))| *key).max();
        changes.push((record_key(CREDIT_PREFIX, partition, id), Some(bytes)));
        records.insert(id, newest.expect("a record holds at least one credit"));
    }
    if let Some(bound) = new.bound() {
        records.retain(|id, newest| {
            let needed = *newest > bound;
            if !needed {
                changes.push((record_key(CREDIT_PREFIX, partition, *id), None));
            }
            needed
        });
    }
    PartitionRecords {
        held,
        credits: records,
    }
}

/// The held transfers' part of [`partition_order_changes`]: the transfers
/// a batch holds go in one record, written once; as they are decided, the
/// record's `d:` key says which (a bit each, where rewriting the record
/// would write every transfer still held in it again); the last one
/// decided removes both.
fn held_changes(diff: &OrderDiff<'_>, index: &HeldIndex, changes: &mut Vec<Change>) -> HeldIndex {
    let mut index = index.clone();
    let touched = index.decide(diff, changes);
    index.mark(diff.partition, touched, changes);
    index.hold(diff, changes);
    index
}

impl HeldIndex {
    /// Notes decided the transfers `diff.old` held that `diff.new` does
    /// not, in their records' bitmaps; returns the records touched. A
    /// transfer of its own `h:` key has that key removed.
    fn decide(&mut self, diff: &OrderDiff<'_>, changes: &mut Vec<Change>) -> BTreeSet<RecordId> {
        let new_held: HashSet<OrderKey> = diff.new.held.iter().map(|held| held.key).collect();
        let mut touched = BTreeSet::new();
        for held in &diff.old.held {
            if new_held.contains(&held.key) {
                continue;
            }
            match self.record_of.remove(&held.key) {
                Some(Some((record, at))) => {
                    if let Some(decided) = self
                        .records
                        .get_mut(&record)
                        .and_then(|record| record.decided.get_mut(at))
                    {
                        *decided = true;
                        touched.insert(record);
                    }
                }
                _ => changes.push((legacy_held_key(diff.partition, &held.key), None)),
            }
        }
        touched
    }

    /// Writes the `d:` key of each `touched` record, or removes it with
    /// the record once every transfer in it is decided.
    fn mark(&mut self, partition: i32, touched: BTreeSet<RecordId>, changes: &mut Vec<Change>) {
        for id in touched {
            let Some(record) = self.records.get_mut(&id) else {
                continue;
            };
            let marks = record_key(DECIDED_PREFIX, partition, id);
            if record.decided.iter().all(|decided| *decided) {
                if record.marked {
                    changes.push((marks, None));
                }
                changes.push((record_key(HELD_PREFIX, partition, id), None));
                self.records.remove(&id);
            } else {
                changes.push((marks, Some(record.encode_decided())));
                record.marked = true;
            }
        }
    }

    /// Writes the transfers `diff.new` holds that `diff.old` did not in
    /// records of the batch `diff.seq`, and indexes them.
    fn hold(&mut self, diff: &OrderDiff<'_>, changes: &mut Vec<Change>) {
        let old_held: HashSet<OrderKey> = diff.old.held.iter().map(|held| held.key).collect();
        let mut added = diff
            .new
            .held
            .iter()
            .filter(|held| !old_held.contains(&held.key));
        let entries = pack(added.clone().map(held_entry));
        for (part, (bytes, count)) in (0..).zip(entries) {
            let id = (diff.seq, part);
            changes.push((record_key(HELD_PREFIX, diff.partition, id), Some(bytes)));
            for (at, held) in added.by_ref().take(count).enumerate() {
                self.record_of.insert(held.key, Some((id, at)));
            }
            self.records.insert(id, HeldRecord::new(count));
        }
    }
}

/// The credits of `new` that `old` does not have.
fn credits_added<'a>(
    new: &'a BTreeMap<AccountId, Vec<(OrderKey, Money)>>,
    old: &BTreeMap<AccountId, Vec<(OrderKey, Money)>>,
) -> Vec<(&'a AccountId, &'a (OrderKey, Money))> {
    let mut added = Vec::new();
    for (account, credits) in new {
        let before = old.get(account).map_or(&[][..], Vec::as_slice);
        if before == credits.as_slice() {
            continue;
        }
        let before: HashSet<OrderKey> = before.iter().map(|(key, _)| *key).collect();
        added.extend(
            credits
                .iter()
                .filter(|(key, _)| !before.contains(key))
                .map(|credit| (account, credit)),
        );
    }
    added
}

impl Store {
    /// The changes of the batch `seq` to the order state of every
    /// partition it changed; returns where each one's order state is on
    /// disk after it.
    pub(super) fn order_changes(
        &self,
        effects: &BatchEffects,
        seq: u64,
        changes: &mut Vec<Change>,
    ) -> Result<HashMap<i32, PartitionRecords>, StoreError> {
        let unchanged = PartitionOrder::default();
        let none = PartitionRecords::default();
        let mut records_after = HashMap::default();
        for (partition, order) in &effects.orders {
            let mut old = Cow::Borrowed(self.orders.get(partition).unwrap_or(&unchanged));
            if self.legacy_recent.contains(partition) {
                // The first batch to change the partition moves its `r:`
                // keys to a `c:` record, with its undo and in its changelog.
                self.legacy_recent_removals(*partition, changes)?;
                old.to_mut().recent.clear();
            }
            let records = self.records.get(partition).unwrap_or(&none);
            let diff = OrderDiff {
                partition: *partition,
                old: &old,
                new: order,
                seq,
            };
            let records = partition_order_changes(&diff, records, changes);
            records_after.insert(*partition, records);
        }
        Ok(records_after)
    }

    /// Every partition's order state: floor and marks, held transfers in
    /// key order, recent credits.
    pub(super) fn load_orders(&self) -> Result<LoadedOrders, StoreError> {
        let mut loaded = LoadedOrders {
            orders: self.load_order_floors()?,
            ..LoadedOrders::default()
        };
        let held = self.load_held_records(&mut loaded)?;
        self.load_decided_marks(&mut loaded)?;
        loaded.hold_undecided(held);
        self.load_legacy_held(&mut loaded)?;
        for order in loaded.orders.values_mut() {
            order.held.sort_by_key(|held| held.key);
        }
        // Credits go through `note_credit` against the floor and held
        // transfers just read: it leaves out those pruned since their
        // record was written, as the state that wrote it did.
        self.load_credit_records(&mut loaded)?;
        self.load_legacy_recent(&mut loaded)?;
        for order in loaded.orders.values_mut() {
            // A credit in both forms (a changelog that still has the old
            // key next to the new records) counts once.
            for credits in order.recent.values_mut() {
                credits.dedup_by_key(|(key, _)| *key);
            }
        }
        Ok(loaded)
    }

    /// The `q:` keys: each partition's floor and marks.
    fn load_order_floors(&self) -> Result<HashMap<i32, PartitionOrder>, StoreError> {
        let mut orders = HashMap::default();
        for item in self.db.scan_prefix(ORDER_PREFIX) {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            let partition =
                order_key_partition(&key).ok_or_else(|| self.undecodable("order key", &key))?;
            let order = PartitionOrder::decode_meta(&value)
                .ok_or_else(|| self.undecodable("the order of", &key))?;
            orders.insert(partition, order);
        }
        Ok(orders)
    }

    /// The `w:` records, indexed in `loaded` with none decided yet.
    fn load_held_records(&self, loaded: &mut LoadedOrders) -> Result<HeldRecords, StoreError> {
        let mut records = HeldRecords::new();
        for item in self.db.scan_prefix(HELD_PREFIX) {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            let at = order_key_partition(&key)
                .zip(record_key_id(&key))
                .ok_or_else(|| self.undecodable("held key", &key))?;
            let held =
                decode_held(&value).ok_or_else(|| self.undecodable("the held transfers", &key))?;
            let index = &mut loaded.records.entry(at.0).or_default().held;
            index.records.insert(at.1, HeldRecord::new(held.len()));
            records.insert(at, held);
        }
        Ok(records)
    }

    /// The `d:` keys, onto the `w:` records they mark: a mark without its
    /// record is corrupt.
    fn load_decided_marks(&self, loaded: &mut LoadedOrders) -> Result<(), StoreError> {
        for item in self.db.scan_prefix(DECIDED_PREFIX) {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            let (partition, id) = order_key_partition(&key)
                .zip(record_key_id(&key))
                .ok_or_else(|| self.undecodable("decided key", &key))?;
            loaded
                .records
                .get_mut(&partition)
                .and_then(|records| records.held.records.get_mut(&id))
                .and_then(|record| record.mark_decided(&value))
                .ok_or_else(|| self.undecodable("decided key", &key))?;
        }
        Ok(())
    }

    /// The `c:` records: their credits noted on each partition's order, and
    /// each record indexed with the newest key in it.
    fn load_credit_records(&self, loaded: &mut LoadedOrders) -> Result<(), StoreError> {
        for item in self.db.scan_prefix(CREDIT_PREFIX) {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            let (partition, id) = order_key_partition(&key)
                .zip(record_key_id(&key))
                .ok_or_else(|| self.undecodable("credits key", &key))?;
            let credits =
                decode_credits(&value).ok_or_else(|| self.undecodable("the credits", &key))?;
            let newest = credits.iter().map(|(_, key, _)| *key).max();
            let order = loaded.orders.entry(partition).or_default();
            for (account, key, amount) in credits {
                order.note_credit(&account, key, amount);
            }
            if let Some(newest) = newest {
                let records = &mut loaded.records.entry(partition).or_default().credits;
                records.insert(id, newest);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::RECORD_BYTES_MAX;
    use crate::store::keys::LEGACY_RECENT_PREFIX;
    use crate::store::{StoreOptions, WriteReport};
    use ledger_core::domain::TransferId;

    /// Transfer `n` from `from` to bob, created `at`, held at offset `n`.
    fn held_transfer(n: u128, from: &str, at: time::OffsetDateTime) -> Held {
        let transfer = ledger_core::domain::Transfer::new(
            TransferId(uuid::Uuid::from_u128(n)),
            AccountId::parse(from).unwrap(),
            AccountId::parse("bob").unwrap(),
            ledger_core::domain::Amount::from_minor(100).unwrap(),
            ledger_core::domain::Currency::EUR,
            at,
        )
        .unwrap();
        Held {
            key: OrderKey::of(&transfer),
            transfer,
            offset: n as i64,
            since_ms: 0,
        }
    }
    #[test]
    fn kept_credits_go_in_one_record_per_batch_and_the_old_form_moves_with_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let alice = AccountId::parse("alice").unwrap();
        let bob = AccountId::parse("bob").unwrap();
        let key = |n: u128| OrderKey {
            at: time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(n as i64),
            id: TransferId(uuid::Uuid::from_u128(n)),
        };
        // Everything up to `floor` is ordered: credits after it are kept.
        let keeping = |floor: u128, credits: &[(&AccountId, u128)]| {
            let mut order = PartitionOrder {
                floor: Some(key(floor)),
                ..PartitionOrder::default()
            };
            for (account, n) in credits {
                let credits = order.recent.entry((*account).clone()).or_default();
                credits.push((key(*n), Money(*n as i128)));
            }
            BatchEffects {
                orders: [(0, order)].into_iter().collect(),
                ..BatchEffects::default()
            }
        };
        let credit_changes = |report: &WriteReport| -> Vec<(Vec<u8>, bool)> {
            let mut changes: Vec<_> = report
                .changes
                .iter()
                .filter(|(key, _)| key.starts_with(CREDIT_PREFIX) || key.starts_with(b"r:"))
                .map(|(key, value)| (key.clone(), value.is_some()))
                .collect();
            changes.sort();
            changes
        };
        let write = |store: &mut Store, effects: &BatchEffects| {
            let report = store.write_batch(effects).unwrap();
            store.mark_committed();
            credit_changes(&report)
        };

        // Batch 0 keeps three credits, in one record.
        let changes = write(
            &mut store,
            &keeping(0, &[(&alice, 1), (&alice, 2), (&bob, 3)]),
        );
        assert_eq!(changes, vec![(record_key(CREDIT_PREFIX, 0, (0, 0)), true)]);
        // Batch 1 prunes the first two and keeps a fourth: a record of its
        // own; batch 0's stays, bob's credit in it is still needed.
        let changes = write(&mut store, &keeping(2, &[(&bob, 3), (&alice, 4)]));
        assert_eq!(changes, vec![(record_key(CREDIT_PREFIX, 0, (1, 0)), true)]);
        drop(store);
        let mut store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let kept = |store: &Store| store.order_state(0).recent.clone();
        // Read back, the pruned credits of batch 0's record are left out.
        assert_eq!(
            kept(&store),
            keeping(2, &[(&bob, 3), (&alice, 4)]).orders[&0].recent
        );
        // Once bob's credit is pruned too, batch 0's record goes.
        let changes = write(&mut store, &keeping(3, &[(&alice, 4)]));
        assert_eq!(changes, vec![(record_key(CREDIT_PREFIX, 0, (0, 0)), false)]);

        // bob's credits in the per-account JSON of earlier versions.
        let legacy = [LEGACY_RECENT_PREFIX, &0i32.to_be_bytes(), b"bob"].concat();
        let json = format!(
            r#"[[{{"at":"1970-01-01T00:00:05Z","id":"{}"}},5]]"#,
            key(5).id.0
        );
        store.db.insert(&legacy, json.as_bytes()).unwrap();
        drop(store);
        let mut store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let with_bob = keeping(3, &[(&alice, 4), (&bob, 5)]);
        assert_eq!(kept(&store), with_bob.orders[&0].recent);
        // The next batch moves them: the old key goes, the partition's
        // kept credits are written again in its record.
        let report = store.write_batch(&with_bob).unwrap();
        assert_eq!(
            credit_changes(&report),
            vec![
                (record_key(CREDIT_PREFIX, 0, (3, 0)), true),
                (legacy.clone(), false)
            ]
        );
        // Taken back, the old form is back too, and moved again next time.
        store.undo_pending().unwrap();
        assert!(store.db.get(&legacy).unwrap().is_some());
        assert_eq!(kept(&store), with_bob.orders[&0].recent);
        let changes = write(&mut store, &with_bob);
        assert_eq!(
            changes,
            vec![
                (record_key(CREDIT_PREFIX, 0, (3, 0)), true),
                (legacy.clone(), false)
            ]
        );
        drop(store);
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(store.db.get(&legacy).unwrap().is_none());
        // alice's credit is in two records now (batches 1 and 3): it counts once.
        assert_eq!(kept(&store), with_bob.orders[&0].recent);
    }

    #[test]
    fn held_transfers_go_in_one_record_per_batch_and_its_decided_ones_in_a_bitmap() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let held = |n: u128| {
            let at = time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(n as i64);
            held_transfer(n, "alice", at)
        };
        let holding = |held: &[Held]| BatchEffects {
            orders: [(
                0,
                PartitionOrder {
                    floor: Some(held.last().map_or(held_at(9), |held| held.key)),
                    held: held.to_vec(),
                    ..PartitionOrder::default()
                },
            )]
            .into_iter()
            .collect(),
            ..BatchEffects::default()
        };
        fn held_at(n: i64) -> OrderKey {
            OrderKey {
                at: time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(n),
                id: TransferId(uuid::Uuid::nil()),
            }
        }
        let write = |store: &mut Store, effects: &BatchEffects| {
            let report = store.write_batch(effects).unwrap();
            store.mark_committed();
            let mut changes: Vec<(Vec<u8>, Option<usize>)> = report
                .changes
                .iter()
                .filter(|(key, _)| [HELD_PREFIX, DECIDED_PREFIX, b"h:"].contains(&&key[..2]))
                .map(|(key, value)| {
                    // Transfers in a record, decided ones in a bitmap.
                    let count = value.as_ref().map(|value| match &key[..2] {
                        b"h:" => 1,
                        prefix if prefix == HELD_PREFIX => decode_held(value).unwrap().len(),
                        _ => value.iter().map(|bits| bits.count_ones() as usize).sum(),
                    });
                    (key.clone(), count)
                })
                .collect();
            changes.sort();
            changes
        };
        let record = |seq| record_key(HELD_PREFIX, 0, (seq, 0));
        let decided = |seq| record_key(DECIDED_PREFIX, 0, (seq, 0));

        // Batch 0 holds three transfers: one record.
        let changes = write(&mut store, &holding(&[held(1), held(2), held(3)]));
        assert_eq!(changes, vec![(record(0), Some(3))]);
        // Batch 1 decides the first and holds a fourth: batch 0's record
        // is not written again, its bitmap names one decided; batch 1's
        // record has one.
        let changes = write(&mut store, &holding(&[held(2), held(3), held(4)]));
        assert_eq!(changes, vec![(decided(0), Some(1)), (record(1), Some(1))]);
        // One held transfer as earlier versions kept it.
        let legacy = legacy_held_key(0, &held(5).key);
        store
            .db
            .insert(&legacy, ledger_core::wire::encode_held(&held(5)))
            .unwrap();
        drop(store);
        let mut store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let all = [held(2), held(3), held(4), held(5)];
        assert_eq!(store.order_state(0).held, all.to_vec());
        assert_eq!(store.reader().stats().unwrap().held, 4);
        // Deciding the last two of batch 0 and the old one removes their
        // keys; batch 1's record is not written.
        let changes = write(&mut store, &holding(&[held(4)]));
        assert_eq!(
            changes,
            vec![(decided(0), None), (legacy, None), (record(0), None)]
        );
        drop(store);
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.order_state(0).held, vec![held(4)]);
    }

    #[test]
    fn a_batch_holding_thousands_writes_records_the_changelog_can_carry() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let key = |n: u128| OrderKey {
            at: time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(n as i64),
            id: TransferId(uuid::Uuid::from_u128(n)),
        };
        let held: Vec<Held> = (1..=5_000u128)
            .map(|n| held_transfer(n, &format!("acc-{n:06}"), key(n).at))
            .collect();
        let mut order = PartitionOrder {
            floor: Some(key(5_000)),
            held: held.clone(),
            ..PartitionOrder::default()
        };
        // Credits after the first held transfer are kept, 20,000 of them.
        for n in 0..20_000u128 {
            let account = AccountId::parse(&format!("acc-{:06}", n % 5_000)).unwrap();
            order.note_credit(&account, key(10_000 + n), Money(1));
        }
        let effects = BatchEffects {
            orders: [(0, order.clone())].into_iter().collect(),
            ..BatchEffects::default()
        };
        let report = store.write_batch(&effects).unwrap();
        store.mark_committed();
        let records = |prefix: &[u8]| -> Vec<usize> {
            report
                .changes
                .iter()
                .filter(|(key, _)| key.starts_with(prefix))
                .map(|(_, value)| value.as_ref().unwrap().len())
                .collect()
        };
        for prefix in [HELD_PREFIX, CREDIT_PREFIX] {
            let sizes = records(prefix);
            assert!(sizes.len() > 1, "{sizes:?}");
            assert!(
                sizes.iter().all(|size| *size <= RECORD_BYTES_MAX),
                "{sizes:?}"
            );
        }
        drop(store);
        let mut store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(*store.order_state(0), order);
        // Every held transfer decided, every credit pruned: nothing is left.
        let done = BatchEffects {
            orders: [(
                0,
                PartitionOrder {
                    floor: Some(key(40_000)),
                    ..PartitionOrder::default()
                },
            )]
            .into_iter()
            .collect(),
            ..BatchEffects::default()
        };
        store.write_batch(&done).unwrap();
        for prefix in [HELD_PREFIX, DECIDED_PREFIX, CREDIT_PREFIX] {
            assert_eq!(store.db.scan_prefix(prefix).count(), 0);
        }
    }
}
