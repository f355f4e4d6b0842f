//! The sled store: one shard's balances, decided ids, offsets and the pending
//! record of the batch in flight.
//!
//! Everything lives in ONE sled tree under prefixed keys, because a `Batch`
//! applied to one tree is atomic and far cheaper than a multi-tree
//! transaction; each Kafka transaction maps to exactly one such batch,
//! flushed before `write_batch` returns.
//!
//! | key                           | value                                   |
//! |-------------------------------|-----------------------------------------|
//! | `b:` account                  | balance, i128 big-endian minor units    |
//! | `i:` batch seq (u64 BE), partition (i32 BE) | ids the batch decided or credited on that partition, 17 bytes each |
//! | `o:` source byte, partition   | next offset, i64 big-endian             |
//! | `q:` partition (i32 BE)       | the partition's order floor and the marks it read (`ledger_core::order`) |
//! | `w:` partition, batch seq (u64 BE), part (u32 BE) | the transfers a batch held on the partition, at most 64 KiB a part (each length-prefixed, `wire::encode_held`) |
//! | `d:` partition, batch seq, part | which of that record's transfers are decided since: bit i of byte i/8 for the i-th (absent: none) |
//! | `h:` partition, order key      | one held transfer, as earlier versions kept them (removed when it is decided) |
//! | `c:` partition, batch seq, part | the credits a batch applied on the partition that are ordered after some transfer still to decide there, at most 64 KiB a part (order key, amount, account each) |
//! | `r:` partition, account        | such credits as earlier versions kept them, one JSON list per account (moved to `c:` by the next batch that changes the partition) |
//! | `v:` partition                 | the stamp of the last batch that changed the partition (`Stamp`) |
//! | `m:seq`                       | next batch seq                          |
//! | `m:pending`                   | the pending record (see `Pending`)      |
//! | `m:restoring`                 | present while a restore is under way    |
//!
//! Decided ids are packed one key per batch and partition, not one key per
//! transfer, and served from memory: sled pays per key written, and a batch
//! of thousands of transfers then costs a key per partition for all its
//! ids. The memory they take is bounded by the idempotency window
//! (`StoreOptions::idempotency_window`).
//!
//! Every key but the `m:` ones belongs to one partition (see
//! [`key_partition`]): the changelog carries each batch's writes to those
//! keys ([`WriteReport::changes`]), and [`Store::restore`] rebuilds the
//! store from them.
//!
//! A batch's writes are [`Change`]s, a key and its new value (`None`:
//! removed); the undo in its pending record ([`Pending::undo`]) is the
//! changes that take it back, each key with its prior value.
//!
//! # Layout
//!
//! - `mod.rs`: the [`Store`] (opening, loading from disk, what the loop
//!   reads between batches) and the public types.
//! - `keys.rs`: the key layout: prefixes, keys built and read back, and
//!   [`key_partition`].
//! - `codec.rs`: value encoding: balances, offsets, packed ids, `w:` and
//!   `c:` records, the pending record.
//! - `write.rs`: writing a batch ([`Store::write_stamped`]): its changes,
//!   their undo, one flushed sled batch, the in-memory state after it.
//! - `pending.rs`: the pending record and its undo, what readers hide
//!   while it is in doubt, and resolving it (commit, clear, undo).
//! - `window.rs`: the idempotency window of decided and credited ids.
//! - `cache.rs`: the writer's bounded balance cache.
//! - `orders.rs`: order-state records: floors and marks `q:`, held
//!   transfers `w:`, their decided bitmaps `d:`, kept credits `c:`.
//! - `legacy.rs`: the layouts of earlier versions still read (`h:`, `r:`).
//! - `reader.rs`: [`StoreReader`], queries of committed state.
//! - `restore.rs`: [`Restore`] from the changelog, dropping partitions.
//! - `open.rs`: opening the sled directory (its lock, its errors).

mod cache;
mod codec;
mod keys;
mod legacy;
mod open;
mod orders;
mod pending;
mod reader;
mod restore;
mod window;
mod write;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ledger_core::domain::{AccountId, Decision, Money, TransferId};
use ledger_core::hash::{HashMap, HashSet};
use ledger_core::machine::{LedgerView, Offsets};
use ledger_core::order::PartitionOrder;

use cache::{BalanceCache, BALANCE_CACHE_CAPACITY};
use codec::{decode_money, decode_offset, decode_pending};
use keys::{
    balance_key, decode_offset_key, stamp_key, OFFSET_PREFIX, PENDING_KEY, RESTORING_KEY, SEQ_KEY,
};
use orders::PartitionRecords;
use pending::InDoubt;
use window::IdWindow;

pub use keys::key_partition;
pub use pending::Pending;
pub use reader::{PendingSummary, Stats, StoreReader, TransferStatus};
pub use restore::Restore;
pub use write::WriteReport;

/// What names one version of a partition's state: a batch that changes a
/// partition writes its stamp there and commits the same stamp with the
/// partition's offsets (in their metadata), so that a shard taking the
/// partition can tell whether its copy is the committed one even when
/// the offsets did not move (a credit applied locally, order state).
pub type Stamp = [u8; 16];

/// A write to one key: its new value, or `None` for a removal.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no ledger at {0}: the directory does not exist or holds no shard database")]
    NotFound(PathBuf),
    #[error(
        "the ledger at {0} is locked by another process (a running shard?); \
         query the running shard with --url instead, or stop it first"
    )]
    Locked(PathBuf),
    #[error("the ledger at {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("sled error on {path}")]
    Sled {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
}

/// Tunables of the store.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// How many recent decided ids (and credited ids) are remembered for
    /// idempotency. A resubmission older than this is decided again.
    pub idempotency_window: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            idempotency_window: 1_000_000,
        }
    }
}

/// What the writer shares with its readers.
#[derive(Debug, Default)]
struct Shared {
    window: RwLock<IdWindow>,
    in_doubt: RwLock<Option<InDoubt>>,
}

/// The writer: owned by the shard's processing loop.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    options: StoreOptions,
    shared: Arc<Shared>,
    /// Balances the loop wrote recently, including the batch in flight.
    balances: BalanceCache,
    offsets: Offsets,
    /// Order state per partition, as on disk (including a pending batch).
    orders: HashMap<i32, PartitionOrder>,
    /// Per partition, where its order state is on disk.
    records: HashMap<i32, PartitionRecords>,
    /// Partitions whose recent credits are (also) under `r:` keys.
    legacy_recent: HashSet<i32>,
    pending: Option<Pending>,
    next_seq: u64,
    /// Id batches that fell out of the window; their keys are deleted with
    /// the next write, once the batch that evicted them is committed.
    evicted: Vec<u64>,
}

impl Store {
    /// Opens (creating if needed) the store of a shard.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        Self::open_with(path, options, true)
    }

    /// Opens an existing store, refusing to create one (offline queries).
    pub fn open_existing(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        Self::open_with(path, options, false)
    }

    fn open_with(path: &Path, options: StoreOptions, create: bool) -> Result<Store, StoreError> {
        if !create && !path.join("conf").exists() {
            return Err(StoreError::NotFound(path.to_owned()));
        }
        let db = open::open_sled(path)?;
        let mut store = Store {
            path: path.to_owned(),
            db,
            options,
            shared: Arc::new(Shared::default()),
            balances: BalanceCache::new(BALANCE_CACHE_CAPACITY),
            offsets: Offsets::new(),
            orders: HashMap::default(),
            records: HashMap::default(),
            legacy_recent: HashSet::default(),
            pending: None,
            next_seq: 0,
            evicted: Vec::new(),
        };
        store.load()?;
        Ok(store)
    }

    fn sled_error(&self, source: sled::Error) -> StoreError {
        match source {
            sled::Error::Corruption { .. } => StoreError::Corrupt {
                path: self.path.clone(),
                detail: source.to_string(),
            },
            source => StoreError::Sled {
                path: self.path.clone(),
                source,
            },
        }
    }

    fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    /// `what` at `key` is corrupt: its bytes do not decode.
    fn undecodable(&self, what: &str, key: &[u8]) -> StoreError {
        self.corrupt(format!("{what} {key:?} does not decode"))
    }

    /// (Re)builds every in-memory structure from disk.
    fn load(&mut self) -> Result<(), StoreError> {
        let window_limit = self.options.idempotency_window;
        self.balances.clear();
        self.evicted.clear();
        self.next_seq = self.load_seq()?;
        self.offsets = self.load_offsets()?;
        let loaded = self.load_orders()?;
        self.orders = loaded.orders;
        self.records = loaded.records;
        // Records restored from another shard's changelog carry its batch
        // seqs: a new batch must not write over one of them.
        let newest_record = self
            .records
            .values()
            .flat_map(|records| records.held.records.keys().chain(records.credits.keys()))
            .map(|(seq, _)| *seq)
            .max();
        if let Some(newest) = newest_record {
            self.next_seq = self.next_seq.max(newest + 1);
        }
        self.legacy_recent = loaded.legacy;
        self.pending = match self.db.get(PENDING_KEY).map_err(|e| self.sled_error(e))? {
            Some(bytes) => Some(
                decode_pending(&bytes)
                    .ok_or_else(|| self.corrupt("the pending record does not decode"))?,
            ),
            None => None,
        };
        let window = self.load_window(window_limit)?;
        let in_doubt = self.pending.as_ref().map(InDoubt::of);
        *write_lock(&self.shared.window) = window;
        *write_lock(&self.shared.in_doubt) = in_doubt;
        Ok(())
    }

    /// The next batch seq recorded (`m:seq`), 0 for a new store.
    fn load_seq(&self) -> Result<u64, StoreError> {
        let Some(bytes) = self.db.get(SEQ_KEY).map_err(|e| self.sled_error(e))? else {
            return Ok(0);
        };
        let bytes = bytes.as_ref().try_into();
        Ok(u64::from_be_bytes(
            bytes.map_err(|_| self.corrupt("m:seq is not 8 bytes"))?,
        ))
    }

    /// The next offsets recorded (including a pending batch's).
    fn load_offsets(&self) -> Result<Offsets, StoreError> {
        let mut offsets = Offsets::new();
        for item in self.db.scan_prefix(OFFSET_PREFIX) {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            let at = decode_offset_key(&key).ok_or_else(|| self.corrupt("bad offset key"))?;
            let offset =
                decode_offset(&value).ok_or_else(|| self.corrupt("offset value is not 8 bytes"))?;
            offsets.insert(at, offset);
        }
        Ok(offsets)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle for queries, served from the last committed state.
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            db: self.db.clone(),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Next offsets recorded in sled (including a pending batch).
    pub fn offsets(&self) -> &Offsets {
        &self.offsets
    }

    pub fn pending(&self) -> Option<&Pending> {
        self.pending.as_ref()
    }

    /// A partition's order state as on disk (including a pending batch),
    /// lent rather than copied: the loop reads it between batches.
    pub fn order_state(&self, partition: i32) -> Cow<'_, PartitionOrder> {
        self.orders
            .get(&partition)
            .map_or_else(|| Cow::Owned(PartitionOrder::default()), Cow::Borrowed)
    }

    /// Transfers held in `partitions`, as on disk.
    pub fn held_count(&self, partitions: &[i32]) -> usize {
        partitions
            .iter()
            .filter_map(|partition| self.orders.get(partition))
            .map(|order| order.held.len())
            .sum()
    }

    /// The stamp of the last batch that changed `partition` here, if any.
    pub fn stamp(&self, partition: i32) -> Result<Option<Stamp>, StoreError> {
        let value = self
            .db
            .get(stamp_key(partition))
            .map_err(|e| self.sled_error(e))?;
        value
            .map(|bytes| {
                Stamp::try_from(bytes.as_ref()).map_err(|_| self.corrupt("a stamp is not 16 bytes"))
            })
            .transpose()
    }

    /// Whether a restore began and did not finish: what the store holds is
    /// not a state to serve.
    pub fn restore_unfinished(&self) -> bool {
        self.db.contains_key(RESTORING_KEY).unwrap_or(true)
    }

    /// Flushes sled (at shutdown; batches are already flushed).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.sled_error(e))
    }
}

impl LedgerView for Store {
    fn balance(&self, account: &AccountId) -> Money {
        if let Some(balance) = self.balances.get(account) {
            return balance;
        }
        // A read error here would make the batch compute from a wrong state;
        // sled only fails reads on corruption or I/O errors, which are fatal.
        match self.db.get(balance_key(account)) {
            Ok(Some(bytes)) => decode_money(&bytes).unwrap_or_else(|| {
                panic!("corrupt balance of {account} in {}", self.path.display())
            }),
            Ok(None) => Money::ZERO,
            Err(error) => panic!("reading the balance of {account} failed: {error}"),
        }
    }

    fn decision(&self, id: TransferId) -> Option<Decision> {
        read_lock(&self.shared.window)
            .decided
            .get(&id)
            .map(|(d, _)| *d)
    }

    fn credited(&self, id: TransferId) -> bool {
        read_lock(&self.shared.window).credited.contains_key(&id)
    }

    fn order(&self, partition: i32) -> PartitionOrder {
        self.orders.get(&partition).cloned().unwrap_or_default()
    }
}

/// Poisoning only follows a panic in another thread, which already stops
/// the shard; the data behind these locks is replaced wholesale, never left
/// half-updated, so reading through a poisoned lock is safe.
fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
