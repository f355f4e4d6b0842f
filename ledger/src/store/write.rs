//! Writing a batch: its changes worked out from the batch's effects, their
//! undo read, both applied in one atomic sled batch and flushed, then the
//! in-memory state brought up to it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ledger_core::hash::HashMap;
use ledger_core::machine::{BatchEffects, Offsets};

use super::codec::{encode_money, encode_offset, encode_pending, packed_ids};
use super::keys::{balance_key, ids_key, offset_key, stamp_key, META_PREFIX, PENDING_KEY, SEQ_KEY};
use super::orders::PartitionRecords;
use super::pending::{InDoubt, Pending};
use super::{write_lock, Change, Stamp, Store, StoreError};

/// What a durable write did and cost.
#[derive(Debug, Clone)]
pub struct WriteReport {
    pub keys_written: usize,
    pub flush: Duration,
    /// The batch's changes to partition state (every key but `m:`), for
    /// the changelog, in the order written.
    pub changes: Vec<Change>,
}

/// A batch worked out before anything of it is written.
struct Planned {
    /// Every key the batch writes, in the order written.
    changes: Vec<Change>,
    /// Its ids, packed per partition (their keys are in `changes`).
    ids: BTreeMap<i32, Vec<u8>>,
    /// Where the order state of each partition it changes is on disk after it.
    records: HashMap<i32, PartitionRecords>,
    offsets_after: Offsets,
}

/// One sled batch that makes every change.
pub(super) fn sled_batch(changes: &[Change]) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (key, value) in changes {
        match value {
            Some(value) => batch.insert(key.as_slice(), value.as_slice()),
            None => batch.remove(key.as_slice()),
        }
    }
    batch
}

impl Store {
    /// Writes the batch and its pending record in one atomic sled batch and
    /// flushes it to disk. Until `mark_committed` (or recovery), readers
    /// keep seeing the state before it.
    pub fn write_batch(&mut self, effects: &BatchEffects) -> Result<WriteReport, StoreError> {
        self.write_stamped(effects, None)
    }

    /// [`Store::write_batch`], and `stamp` on every partition the batch
    /// has offsets of.
    pub fn write_stamped(
        &mut self,
        effects: &BatchEffects,
        stamp: Option<Stamp>,
    ) -> Result<WriteReport, StoreError> {
        let seq = self.next_seq;
        let planned = self.plan(effects, stamp, seq)?;
        let pending = Pending {
            seq,
            offsets_before: self.offsets.clone(),
            offsets_after: planned.offsets_after,
            undo: self.undo_of(&planned.changes)?,
        };
        let flush = self.apply_durably(&planned.changes, &pending)?;
        self.note_written(effects, planned.records, &planned.ids, pending)?;
        let keys_written = planned.changes.len() + 1;
        let changes = planned
            .changes
            .into_iter()
            .filter(|(key, _)| !key.starts_with(META_PREFIX))
            .collect();
        Ok(WriteReport {
            keys_written,
            flush,
            changes,
        })
    }

    /// The batch `seq`'s changes, in the order they are written (which is
    /// the changelog's): balances, ids, evicted ids, order state, offsets,
    /// stamps, the next seq.
    fn plan(
        &mut self,
        effects: &BatchEffects,
        stamp: Option<Stamp>,
        seq: u64,
    ) -> Result<Planned, StoreError> {
        let mut changes: Vec<Change> =
            Vec::with_capacity(effects.balances.len() + effects.offsets.len() + 2);
        for (account, balance) in &effects.balances {
            changes.push((balance_key(account), Some(encode_money(*balance))));
        }
        let ids = packed_ids(effects);
        for (partition, entries) in &ids {
            changes.push((ids_key(seq, *partition), Some(entries.clone())));
        }
        self.evicted_changes(&mut changes)?;
        let records = self.order_changes(effects, seq, &mut changes)?;
        let offsets_after = self.offset_changes(effects, &mut changes);
        if let Some(stamp) = stamp {
            stamp_changes(effects, stamp, &mut changes);
        }
        changes.push((SEQ_KEY.to_vec(), Some((seq + 1).to_be_bytes().to_vec())));
        Ok(Planned {
            changes,
            ids,
            records,
            offsets_after,
        })
    }

    /// The batch's next offsets; returns every offset after it.
    fn offset_changes(&self, effects: &BatchEffects, changes: &mut Vec<Change>) -> Offsets {
        let mut offsets_after = self.offsets.clone();
        for (at, next) in &effects.offsets {
            let previous = offsets_after.insert(*at, *next);
            // Offsets only move forward: a batch that goes back means the
            // consumer re-read records it had already applied.
            assert!(
                previous.is_none_or(|p| p <= *next),
                "invariant violated: offset of {at} would go back from {previous:?} to {next}"
            );
            changes.push((offset_key(*at), Some(encode_offset(*next))));
        }
        offsets_after
    }

    /// Writes `changes` and the pending record in one atomic sled batch and
    /// flushes it; returns how long the flush took.
    fn apply_durably(
        &mut self,
        changes: &[Change],
        pending: &Pending,
    ) -> Result<Duration, StoreError> {
        let mut batch = sled_batch(changes);
        batch.insert(PENDING_KEY, encode_pending(pending));
        // Readers must stop trusting these keys before they change on disk.
        *write_lock(&self.shared.in_doubt) = Some(InDoubt::of(pending));
        self.db.apply_batch(batch).map_err(|e| self.sled_error(e))?;
        let started = Instant::now();
        self.db.flush().map_err(|e| self.sled_error(e))?;
        Ok(started.elapsed())
    }

    /// Brings the in-memory state up to the batch just written: the next
    /// batch computes from it, as from sled.
    fn note_written(
        &mut self,
        effects: &BatchEffects,
        records: HashMap<i32, PartitionRecords>,
        ids: &BTreeMap<i32, Vec<u8>>,
        pending: Pending,
    ) -> Result<(), StoreError> {
        for (account, balance) in &effects.balances {
            self.balances.insert(account, *balance);
        }
        for (partition, order) in &effects.orders {
            self.orders.insert(*partition, order.clone());
            self.legacy_recent.remove(partition);
        }
        self.records.extend(records);
        self.offsets = pending.offsets_after.clone();
        self.next_seq = pending.seq + 1;
        if !ids.is_empty() {
            self.remember_ids(pending.seq, ids)?;
        }
        self.pending = Some(pending);
        Ok(())
    }
}

/// `stamp` on every partition the batch has offsets of.
fn stamp_changes(effects: &BatchEffects, stamp: Stamp, changes: &mut Vec<Change>) {
    let partitions: BTreeSet<i32> = effects.offsets.keys().map(|at| at.partition).collect();
    for partition in partitions {
        changes.push((stamp_key(partition), Some(stamp.to_vec())));
    }
}
