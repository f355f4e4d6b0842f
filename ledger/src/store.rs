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
//! | `w:` partition, batch seq (u64 BE), part (u32 BE) | the transfers a batch held on the partition, at most 64 KiB a part (each length-prefixed, `Held::encode`) |
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

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sled::IVec;

use ledger_core::domain::{AccountId, Decision, Money, RejectReason, TransferId};
use ledger_core::hash::{HashMap, HashSet};
use ledger_core::machine::{BatchEffects, InputPartition, LedgerView, Offsets, Source};
use ledger_core::order::{Held, OrderKey, PartitionOrder};

const BALANCE_PREFIX: &[u8] = b"b:";
const IDS_PREFIX: &[u8] = b"i:";
const OFFSET_PREFIX: &[u8] = b"o:";
const ORDER_PREFIX: &[u8] = b"q:";
const HELD_PREFIX: &[u8] = b"w:";
const DECIDED_PREFIX: &[u8] = b"d:";
const LEGACY_HELD_PREFIX: &[u8] = b"h:";
const CREDIT_PREFIX: &[u8] = b"c:";
const LEGACY_RECENT_PREFIX: &[u8] = b"r:";
const STAMP_PREFIX: &[u8] = b"v:";
/// The shard's own keys, which no partition's state includes.
const META_PREFIX: &[u8] = b"m:";
const SEQ_KEY: &[u8] = b"m:seq";
const PENDING_KEY: &[u8] = b"m:pending";
/// Present while a restore is under way: a store cut short in the middle
/// of one may hold the newest offsets without all the balances.
const RESTORING_KEY: &[u8] = b"m:restoring";

/// What names one version of a partition's state: a batch that changes a
/// partition writes its stamp there and commits the same stamp with the
/// partition's offsets (in their metadata), so that a shard taking the
/// partition can tell whether its copy is the committed one even when
/// the offsets did not move (a credit applied locally, order state).
pub type Stamp = [u8; 16];

/// Tag byte of a credited id in a packed id list; decided ids use 0 for
/// accepted and the reject reason's byte otherwise.
const TAG_CREDITED: u8 = 0xff;
const TAG_ACCEPTED: u8 = 0;
const ID_ENTRY_LEN: usize = 17;

const PENDING_FORMAT_VERSION: u8 = 1;

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

/// The record of the batch written to sled but not yet known to be
/// committed in Kafka: enough to decide after a crash whether it happened,
/// and to take it back if it did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: u64,
    pub offsets_before: Offsets,
    pub offsets_after: Offsets,
    /// Prior value of every key the batch wrote (`None`: the key was absent).
    pub undo: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// A write to one key: its new value, or `None` for a removal.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// What a durable write did and cost.
#[derive(Debug, Clone)]
pub struct WriteReport {
    pub keys_written: usize,
    pub flush: Duration,
    /// The batch's writes to partition state (every key but `m:`), for the
    /// changelog, in the order written.
    pub changes: Vec<Change>,
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

/// The ids remembered for idempotency, with the batch that wrote each, so a
/// reader can ignore the batch that is not yet committed.
#[derive(Debug, Default)]
struct IdWindow {
    limit: usize,
    decided: HashMap<TransferId, (Decision, u64)>,
    credited: HashMap<TransferId, u64>,
    /// (seq, number of ids) per batch, oldest first.
    batches: VecDeque<(u64, usize)>,
    total: usize,
}

impl IdWindow {
    fn insert(&mut self, seq: u64, entries: &[u8]) {
        for entry in entries.chunks_exact(ID_ENTRY_LEN) {
            let mut id = [0u8; 16];
            id.copy_from_slice(&entry[..16]);
            let id = TransferId::from_bytes(id);
            match entry[16] {
                TAG_CREDITED => {
                    self.credited.insert(id, seq);
                }
                TAG_ACCEPTED => {
                    self.decided.insert(id, (Decision::Accepted, seq));
                }
                byte => {
                    // Unknown reasons cannot be written by this version; the
                    // id is still decided, which is what idempotency needs.
                    let reason = RejectReason::from_u8(byte).unwrap_or(RejectReason::UnknownSchema);
                    self.decided.insert(id, (Decision::Rejected(reason), seq));
                }
            }
        }
    }

    fn remove(&mut self, seq: u64, entries: &[u8]) {
        for entry in entries.chunks_exact(ID_ENTRY_LEN) {
            let mut id = [0u8; 16];
            id.copy_from_slice(&entry[..16]);
            let id = TransferId::from_bytes(id);
            if entry[16] == TAG_CREDITED {
                if self.credited.get(&id) == Some(&seq) {
                    self.credited.remove(&id);
                }
            } else if self.decided.get(&id).map(|(_, s)| *s) == Some(seq) {
                self.decided.remove(&id);
            }
        }
    }

    /// Whether the oldest batch falls out of the window: the rule is "a batch
    /// is remembered while the batches newer than it hold fewer than `limit`
    /// ids", applied the same way here and when loading from disk.
    fn oldest_is_out(&self) -> bool {
        match self.batches.front() {
            Some((_, count)) => self.batches.len() > 1 && self.total - count >= self.limit,
            None => false,
        }
    }
}

/// Most balances the writer keeps in memory: at about 100 bytes each (an
/// account id of up to 64 bytes, the amount, the map's overhead), some
/// 25 MiB however many accounts a shard owns.
const BALANCE_CACHE_CAPACITY: usize = 1 << 18;

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
struct BalanceCache {
    /// Entries per generation: half the capacity.
    generation: usize,
    recent: HashMap<AccountId, Money>,
    older: HashMap<AccountId, Money>,
}

impl BalanceCache {
    fn new(capacity: usize) -> Self {
        BalanceCache {
            generation: (capacity / 2).max(1),
            recent: HashMap::default(),
            older: HashMap::default(),
        }
    }

    /// `recent` first: `older` may hold an earlier balance of the account.
    fn get(&self, account: &AccountId) -> Option<Money> {
        self.recent
            .get(account)
            .or_else(|| self.older.get(account))
            .copied()
    }

    fn insert(&mut self, account: &AccountId, balance: Money) {
        if self.recent.len() >= self.generation && !self.recent.contains_key(account) {
            self.older = std::mem::take(&mut self.recent);
        }
        self.recent.insert(account.clone(), balance);
    }

    fn clear(&mut self) {
        self.recent.clear();
        self.older.clear();
    }
}

/// The batch in flight, as readers must not see it: prior values by key.
#[derive(Debug)]
struct InDoubt {
    seq: u64,
    prior: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

#[derive(Debug, Default)]
struct Shared {
    window: RwLock<IdWindow>,
    in_doubt: RwLock<Option<InDoubt>>,
}

/// Where a partition's held transfers and recent credits are on disk.
#[derive(Debug, Clone, Default)]
struct PartitionRecords {
    held: HeldIndex,
    /// `c:` records, each with the newest key in it.
    credits: BTreeMap<RecordId, OrderKey>,
}

#[derive(Debug, Clone, Default)]
struct HeldIndex {
    /// `w:` records.
    records: BTreeMap<RecordId, HeldRecord>,
    /// Each held transfer's record and place in it; `None`: a key of its
    /// own (`h:`).
    record_of: HashMap<OrderKey, Option<(RecordId, usize)>>,
}

/// One `w:` record, and its `d:` key.
#[derive(Debug, Clone, Default)]
struct HeldRecord {
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
struct LoadedOrders {
    orders: HashMap<i32, PartitionOrder>,
    records: HashMap<i32, PartitionRecords>,
    /// Partitions with `r:` keys.
    legacy: HashSet<i32>,
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

/// A read-only handle that serves queries from the last committed state,
/// even while a batch is between its sled write and its Kafka commit.
#[derive(Debug, Clone)]
pub struct StoreReader {
    db: sled::Db,
    shared: Arc<Shared>,
}

/// How long `open` keeps trying a locked directory. sled releases its
/// directory lock when the last handle is dropped, and its background
/// threads may hold one a little longer than the `Store`: a shard restarted
/// in the same process (tests) would otherwise find its own old lock.
const LOCKED_RETRY_FOR: Duration = Duration::from_secs(3);

fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + LOCKED_RETRY_FOR;
    loop {
        let opened = sled::Config::new()
            .path(path)
            // Durability comes from the explicit flush of every batch; a
            // background flusher would only add I/O between them.
            .flush_every_ms(None)
            .open();
        let error = match opened {
            Ok(db) => return Ok(db),
            // Tried again until the deadline: a lock whose holder lets go
            // meanwhile (the probe below may already find it free), or an
            // I/O error that will repeat and is reported then.
            Err(sled::Error::Io(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(sled::Error::Io(_)) if is_locked(path) => StoreError::Locked(path.to_owned()),
            Err(source @ sled::Error::Corruption { .. }) => StoreError::Corrupt {
                path: path.to_owned(),
                detail: source.to_string(),
            },
            Err(source) => StoreError::Sled {
                path: path.to_owned(),
                source,
            },
        };
        return Err(error);
    }
}

/// Whether another handle holds sled's directory lock. sled reports that
/// only as an `io::Error` of kind `Other` with a message, so ask the system
/// the same question sled asks: a non-blocking exclusive `flock` of the
/// directory's `db` file (released again when the probe's file closes).
fn is_locked(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path.join("db")) else {
        return false;
    };
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        == Err(rustix::io::Errno::WOULDBLOCK)
}

/// A batch's decided and credited ids, packed into one value per
/// partition: the id's 16 bytes and a tag byte each.
fn packed_ids(effects: &BatchEffects) -> BTreeMap<i32, Vec<u8>> {
    let mut packed: BTreeMap<i32, Vec<u8>> = BTreeMap::new();
    for (partition, id, decision) in &effects.decided {
        let ids = packed.entry(*partition).or_default();
        ids.extend_from_slice(id.as_bytes());
        ids.push(match decision {
            Decision::Accepted => TAG_ACCEPTED,
            Decision::Rejected(reason) => *reason as u8,
        });
    }
    for (partition, id) in &effects.credited {
        let ids = packed.entry(*partition).or_default();
        ids.extend_from_slice(id.as_bytes());
        ids.push(TAG_CREDITED);
    }
    packed
}

fn balance_key(account: &AccountId) -> Vec<u8> {
    [BALANCE_PREFIX, account.as_str().as_bytes()].concat()
}

fn ids_key(seq: u64, partition: i32) -> Vec<u8> {
    [IDS_PREFIX, &seq.to_be_bytes(), &partition.to_be_bytes()].concat()
}

/// Every key of batch `seq`'s ids, one per partition.
fn ids_prefix(seq: u64) -> Vec<u8> {
    [IDS_PREFIX, &seq.to_be_bytes()].concat()
}

fn ids_key_seq(key: &[u8]) -> Option<u64> {
    key.get(2..10)?.try_into().ok().map(u64::from_be_bytes)
}

fn offset_key(at: InputPartition) -> Vec<u8> {
    let mut key = OFFSET_PREFIX.to_vec();
    key.push(at.source.code());
    key.extend_from_slice(&at.partition.to_be_bytes());
    key
}

fn stamp_key(partition: i32) -> Vec<u8> {
    [STAMP_PREFIX, &partition.to_be_bytes()].concat()
}

fn order_key(partition: i32) -> Vec<u8> {
    [ORDER_PREFIX, &partition.to_be_bytes()].concat()
}

fn legacy_held_key(partition: i32, key: &OrderKey) -> Vec<u8> {
    [
        LEGACY_HELD_PREFIX,
        &partition.to_be_bytes(),
        &key.to_bytes(),
    ]
    .concat()
}

/// A `w:`, `d:` or `c:` record: the batch that wrote it, and which part
/// of what that batch wrote there (see [`RECORD_BYTES_MAX`]).
type RecordId = (u64, u32);

/// The most bytes in one `w:` or `c:` record, so that its changelog
/// record stays far below the broker's message size limit (1 MB by
/// default), which refuses larger ones and so the batch's transaction: a
/// batch that holds 20,000 transfers writes about 4 MB of them.
const RECORD_BYTES_MAX: usize = 64 * 1024;

/// `w:`, `d:` and `c:` keys: the partition, the batch seq, the part.
fn record_key(prefix: &[u8], partition: i32, (seq, part): RecordId) -> Vec<u8> {
    [
        prefix,
        &partition.to_be_bytes(),
        &seq.to_be_bytes(),
        &part.to_be_bytes(),
    ]
    .concat()
}

fn record_key_id(key: &[u8]) -> Option<RecordId> {
    let seq = key.get(6..14)?.try_into().ok().map(u64::from_be_bytes)?;
    let part = key.get(14..18)?.try_into().ok().map(u32::from_be_bytes)?;
    Some((seq, part))
}

/// Entries packed into records of at most [`RECORD_BYTES_MAX`] (an entry
/// larger than that alone in one), with how many entries each holds.
fn pack(entries: impl IntoIterator<Item = Vec<u8>>) -> Vec<(Vec<u8>, usize)> {
    let mut records: Vec<(Vec<u8>, usize)> = Vec::new();
    for entry in entries {
        match records.last_mut() {
            Some((bytes, count)) if bytes.len() + entry.len() <= RECORD_BYTES_MAX => {
                bytes.extend_from_slice(&entry);
                *count += 1;
            }
            _ => records.push((entry, 1)),
        }
    }
    records
}

/// A held transfer in a `w:` record: its length (u32 BE), then
/// [`Held::encode`].
fn held_entry(held: &Held) -> Vec<u8> {
    let encoded = held.encode();
    let len = u32::try_from(encoded.len()).expect("a held transfer is small");
    [&len.to_be_bytes()[..], &encoded].concat()
}

fn decode_held(mut bytes: &[u8]) -> Option<Vec<Held>> {
    let mut held = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        held.push(Held::decode(bytes.get(4..4 + len)?)?);
        bytes = &bytes[4 + len..];
    }
    Some(held)
}

/// A credit in a `c:` record: its order key, its amount (i128 BE), the
/// length of the account's name (one byte) and the name.
fn credit_entry(account: &AccountId, (key, amount): &(OrderKey, Money)) -> Vec<u8> {
    let name = account.as_str().as_bytes();
    let mut bytes = Vec::with_capacity(49 + name.len());
    bytes.extend_from_slice(&key.to_bytes());
    bytes.extend_from_slice(&amount.0.to_be_bytes());
    bytes.push(u8::try_from(name.len()).expect("account names are short"));
    bytes.extend_from_slice(name);
    bytes
}

fn decode_credits(mut bytes: &[u8]) -> Option<Vec<(AccountId, OrderKey, Money)>> {
    let mut credits = Vec::new();
    while !bytes.is_empty() {
        let key = OrderKey::from_bytes(bytes.get(..32)?)?;
        let amount = decode_money(bytes.get(32..48)?)?;
        let len = usize::from(*bytes.get(48)?);
        let name = std::str::from_utf8(bytes.get(49..49 + len)?).ok()?;
        credits.push((AccountId::parse(name).ok()?, key, amount));
        bytes = &bytes[49 + len..];
    }
    Some(credits)
}

fn partition_prefix(prefix: &[u8], partition: i32) -> Vec<u8> {
    [prefix, &partition.to_be_bytes()].concat()
}

/// The partition number at the start of a `q:`, `w:`, `d:`, `h:`, `c:`, `r:` or `v:` key.
fn order_key_partition(key: &[u8]) -> Option<i32> {
    key.get(2..6)?.try_into().ok().map(i32::from_be_bytes)
}

/// The partition whose state `key` is: where the changelog carries it.
/// `None` for the shard's own `m:` keys (and anything unknown), which the
/// changelog does not carry.
pub fn key_partition(key: &[u8], partition_of: impl Fn(&AccountId) -> i32) -> Option<i32> {
    let be =
        |range: std::ops::Range<usize>| key.get(range)?.try_into().ok().map(i32::from_be_bytes);
    match key.get(..2)? {
        prefix if prefix == BALANCE_PREFIX => std::str::from_utf8(&key[2..])
            .ok()
            .and_then(|name| AccountId::parse(name).ok())
            .map(|account| partition_of(&account)),
        prefix if prefix == IDS_PREFIX => be(10..14),
        prefix if prefix == OFFSET_PREFIX => be(3..7),
        prefix
            if [
                ORDER_PREFIX,
                HELD_PREFIX,
                DECIDED_PREFIX,
                LEGACY_HELD_PREFIX,
                CREDIT_PREFIX,
                LEGACY_RECENT_PREFIX,
                STAMP_PREFIX,
            ]
            .contains(&prefix) =>
        {
            order_key_partition(key)
        }
        _ => None,
    }
}

/// What a batch changes of one partition's order state, as sled writes
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
fn order_writes(
    change: &OrderChange<'_>,
    index: &PartitionRecords,
    writes: &mut Writes,
) -> PartitionRecords {
    let OrderChange {
        partition,
        old,
        new,
        seq,
    } = *change;
    writes.push((order_key(partition), Some(new.encode_meta())));
    let held = held_writes(change, &index.held, writes);
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
        writes.push((record_key(CREDIT_PREFIX, partition, id), Some(bytes)));
        records.insert(id, newest.expect("a record holds at least one credit"));
    }
    if let Some(bound) = new.bound() {
        records.retain(|id, newest| {
            let needed = *newest > bound;
            if !needed {
                writes.push((record_key(CREDIT_PREFIX, partition, *id), None));
            }
            needed
        });
    }
    PartitionRecords {
        held,
        credits: records,
    }
}

/// A batch's sled writes: key, new value (`None`: remove).
type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// One partition's order state before and after the batch `seq`.
#[derive(Clone, Copy)]
struct OrderChange<'a> {
    partition: i32,
    old: &'a PartitionOrder,
    new: &'a PartitionOrder,
    seq: u64,
}

/// The held transfers' part of [`order_writes`]: the transfers a batch
/// holds go in one record, written once; as they are decided, the
/// record's `d:` key says which (a bit each, where rewriting the record
/// would write every transfer still held in it again); the last one
/// decided removes both.
fn held_writes(change: &OrderChange<'_>, index: &HeldIndex, writes: &mut Writes) -> HeldIndex {
    let OrderChange {
        partition,
        old,
        new,
        seq,
    } = *change;
    let mut index = index.clone();
    let old_held: HashSet<OrderKey> = old.held.iter().map(|held| held.key).collect();
    let new_held: HashSet<OrderKey> = new.held.iter().map(|held| held.key).collect();
    let mut touched = BTreeSet::new();
    for held in &old.held {
        if new_held.contains(&held.key) {
            continue;
        }
        match index.record_of.remove(&held.key) {
            Some(Some((record, at))) => {
                if let Some(decided) = index
                    .records
                    .get_mut(&record)
                    .and_then(|record| record.decided.get_mut(at))
                {
                    *decided = true;
                    touched.insert(record);
                }
            }
            _ => writes.push((legacy_held_key(partition, &held.key), None)),
        }
    }
    for id in touched {
        let Some(record) = index.records.get_mut(&id) else {
            continue;
        };
        let marks = record_key(DECIDED_PREFIX, partition, id);
        if record.decided.iter().all(|decided| *decided) {
            if record.marked {
                writes.push((marks, None));
            }
            writes.push((record_key(HELD_PREFIX, partition, id), None));
            index.records.remove(&id);
        } else {
            writes.push((marks, Some(record.encode_decided())));
            record.marked = true;
        }
    }
    let mut added = new.held.iter().filter(|held| !old_held.contains(&held.key));
    let entries = pack(added.clone().map(held_entry));
    for (part, (bytes, count)) in (0..).zip(entries) {
        let id = (seq, part);
        writes.push((record_key(HELD_PREFIX, partition, id), Some(bytes)));
        for (at, held) in added.by_ref().take(count).enumerate() {
            index.record_of.insert(held.key, Some((id, at)));
        }
        index.records.insert(id, HeldRecord::new(count));
    }
    index
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

fn decode_money(bytes: &[u8]) -> Option<Money> {
    Some(Money(i128::from_be_bytes(bytes.try_into().ok()?)))
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
        let db = open_sled(path)?;
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

    /// (Re)builds every in-memory structure from disk.
    fn load(&mut self) -> Result<(), StoreError> {
        let window_limit = self.options.idempotency_window;
        self.balances.clear();
        self.evicted.clear();
        self.next_seq = match self.db.get(SEQ_KEY).map_err(|e| self.sled_error(e))? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| self.corrupt("m:seq is not 8 bytes"))?,
            ),
            None => 0,
        };
        self.offsets = Offsets::new();
        for item in self.db.scan_prefix(OFFSET_PREFIX) {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            let at = decode_offset_key(&key).ok_or_else(|| self.corrupt("bad offset key"))?;
            let offset = value
                .as_ref()
                .try_into()
                .map(i64::from_be_bytes)
                .map_err(|_| self.corrupt("offset value is not 8 bytes"))?;
            self.offsets.insert(at, offset);
        }
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
        let in_doubt = self.pending.as_ref().map(|pending| InDoubt {
            seq: pending.seq,
            prior: pending.undo.iter().cloned().collect(),
        });
        *write(&self.shared.window) = window;
        *write(&self.shared.in_doubt) = in_doubt;
        Ok(())
    }

    /// Every partition's order state: floor and marks, held transfers in
    /// key order, recent credits.
    fn load_orders(&self) -> Result<LoadedOrders, StoreError> {
        let mut loaded = LoadedOrders::default();
        let mut orders = HashMap::<i32, PartitionOrder>::default();
        let bad = |what: &str, key: &[u8]| self.corrupt(format!("{what} {key:?} does not decode"));
        for item in self.db.scan_prefix(ORDER_PREFIX) {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            let partition = order_key_partition(&key).ok_or_else(|| bad("order key", &key))?;
            let order =
                PartitionOrder::decode_meta(&value).ok_or_else(|| bad("the order of", &key))?;
            orders.insert(partition, order);
        }
        let mut records: BTreeMap<(i32, RecordId), Vec<Held>> = BTreeMap::new();
        for item in self.db.scan_prefix(HELD_PREFIX) {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            let at = order_key_partition(&key)
                .zip(record_key_id(&key))
                .ok_or_else(|| bad("held key", &key))?;
            let held = decode_held(&value).ok_or_else(|| bad("the held transfers", &key))?;
            let index = &mut loaded.records.entry(at.0).or_default().held;
            index.records.insert(at.1, HeldRecord::new(held.len()));
            records.insert(at, held);
        }
        for item in self.db.scan_prefix(DECIDED_PREFIX) {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            let (partition, id) = order_key_partition(&key)
                .zip(record_key_id(&key))
                .ok_or_else(|| bad("decided key", &key))?;
            loaded
                .records
                .get_mut(&partition)
                .and_then(|records| records.held.records.get_mut(&id))
                .and_then(|record| record.mark_decided(&value))
                .ok_or_else(|| bad("decided key", &key))?;
        }
        for ((partition, id), held) in records {
            let index = &mut loaded.records.entry(partition).or_default().held;
            let decided = index.records[&id].decided.clone();
            for (at, held) in held.into_iter().enumerate() {
                if !decided[at] {
                    index.record_of.insert(held.key, Some((id, at)));
                    orders.entry(partition).or_default().held.push(held);
                }
            }
        }
        for item in self.db.scan_prefix(LEGACY_HELD_PREFIX) {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            let partition = order_key_partition(&key).ok_or_else(|| bad("held key", &key))?;
            let held = Held::decode(&value).ok_or_else(|| bad("the held transfer", &key))?;
            let index = &mut loaded.records.entry(partition).or_default().held;
            index.record_of.insert(held.key, None);
            orders.entry(partition).or_default().held.push(held);
        }
        for order in orders.values_mut() {
            order.held.sort_by_key(|held| held.key);
        }
        // Credits go through `note_credit` against the floor and held
        // transfers just read: it leaves out those pruned since their
        // record was written, as the state that wrote it did.
        for item in self.db.scan_prefix(CREDIT_PREFIX) {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            let (partition, id) = order_key_partition(&key)
                .zip(record_key_id(&key))
                .ok_or_else(|| bad("credits key", &key))?;
            let credits = decode_credits(&value).ok_or_else(|| bad("the credits", &key))?;
            let newest = credits.iter().map(|(_, key, _)| *key).max();
            let order = orders.entry(partition).or_default();
            for (account, key, amount) in credits {
                order.note_credit(&account, key, amount);
            }
            if let Some(newest) = newest {
                let records = &mut loaded.records.entry(partition).or_default().credits;
                records.insert(id, newest);
            }
        }
        for item in self.db.scan_prefix(LEGACY_RECENT_PREFIX) {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            let partition = order_key_partition(&key).ok_or_else(|| bad("recent key", &key))?;
            let account = std::str::from_utf8(&key[6..])
                .ok()
                .and_then(|name| AccountId::parse(name).ok())
                .ok_or_else(|| bad("recent key", &key))?;
            let credits = PartitionOrder::decode_legacy_recent(&value)
                .ok_or_else(|| bad("the recent credits", &key))?;
            let order = orders.entry(partition).or_default();
            for (key, amount) in credits {
                order.note_credit(&account, key, amount);
            }
            loaded.legacy.insert(partition);
        }
        for order in orders.values_mut() {
            // A credit in both forms (a changelog that still has the old
            // key next to the new records) counts once.
            for credits in order.recent.values_mut() {
                credits.dedup_by_key(|(key, _)| *key);
            }
        }
        loaded.orders = orders;
        Ok(loaded)
    }

    /// The idempotency window: the ids of the newest batches, up to
    /// `window_limit` ids.
    fn load_window(&self, window_limit: usize) -> Result<IdWindow, StoreError> {
        let mut window = IdWindow {
            limit: window_limit,
            ..IdWindow::default()
        };
        let mut newer = 0usize;
        for item in self.db.scan_prefix(IDS_PREFIX).rev() {
            let (key, entries) = item.map_err(|e| self.sled_error(e))?;
            let seq = ids_key_seq(&key).ok_or_else(|| self.corrupt("bad id batch key"))?;
            // A batch (all its partitions' keys) is taken whole or not at all.
            if window.batches.front().map(|(newest, _)| *newest) != Some(seq) {
                if newer >= window_limit {
                    break;
                }
                window.batches.push_front((seq, 0));
            }
            if entries.len() % ID_ENTRY_LEN != 0 {
                return Err(self.corrupt(format!("id batch {seq} has a partial entry")));
            }
            let count = entries.len() / ID_ENTRY_LEN;
            // Scanning newest first, an id seen again in an older batch
            // must not replace the newer entry.
            for entry in entries.chunks_exact(ID_ENTRY_LEN) {
                let mut id = [0u8; 16];
                id.copy_from_slice(&entry[..16]);
                let id = TransferId::from_bytes(id);
                let known = if entry[16] == TAG_CREDITED {
                    window.credited.contains_key(&id)
                } else {
                    window.decided.contains_key(&id)
                };
                if !known {
                    window.insert(seq, entry);
                }
            }
            if let Some((_, batch)) = window.batches.front_mut() {
                *batch += count;
            }
            window.total += count;
            newer += count;
        }
        Ok(window)
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
        let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            Vec::with_capacity(effects.balances.len() + effects.offsets.len() + 2);
        for (account, balance) in &effects.balances {
            writes.push((balance_key(account), Some(balance.0.to_be_bytes().to_vec())));
        }
        let ids = packed_ids(effects);
        for (partition, entries) in &ids {
            writes.push((ids_key(seq, *partition), Some(entries.clone())));
        }
        // Id batches out of the window go with this batch, and come back
        // with it if it is undone.
        for old in std::mem::take(&mut self.evicted) {
            for item in self.db.scan_prefix(ids_prefix(old)) {
                let (key, _) = item.map_err(|e| self.sled_error(e))?;
                writes.push((key.to_vec(), None));
            }
        }
        let unchanged = PartitionOrder::default();
        let none = PartitionRecords::default();
        let mut records_after = HashMap::default();
        for (partition, order) in &effects.orders {
            let mut old = Cow::Borrowed(self.orders.get(partition).unwrap_or(&unchanged));
            if self.legacy_recent.contains(partition) {
                // The first batch to change the partition moves its `r:`
                // keys to a `c:` record, with its undo and in its changelog.
                for item in self
                    .db
                    .scan_prefix(partition_prefix(LEGACY_RECENT_PREFIX, *partition))
                {
                    let (key, _) = item.map_err(|e| self.sled_error(e))?;
                    writes.push((key.to_vec(), None));
                }
                old.to_mut().recent.clear();
            }
            let records = self.records.get(partition).unwrap_or(&none);
            let change = OrderChange {
                partition: *partition,
                old: &old,
                new: order,
                seq,
            };
            let records = order_writes(&change, records, &mut writes);
            records_after.insert(*partition, records);
        }
        let offsets_before = self.offsets.clone();
        let mut offsets_after = offsets_before.clone();
        for (at, next) in &effects.offsets {
            let previous = offsets_after.insert(*at, *next);
            // Offsets only move forward: a batch that goes back means the
            // consumer re-read records it had already applied.
            assert!(
                previous.is_none_or(|p| p <= *next),
                "invariant violated: offset of {at} would go back from {previous:?} to {next}"
            );
            writes.push((offset_key(*at), Some(next.to_be_bytes().to_vec())));
        }
        if let Some(stamp) = stamp {
            let partitions: BTreeSet<i32> = effects.offsets.keys().map(|at| at.partition).collect();
            for partition in partitions {
                writes.push((stamp_key(partition), Some(stamp.to_vec())));
            }
        }
        writes.push((SEQ_KEY.to_vec(), Some((seq + 1).to_be_bytes().to_vec())));

        let mut undo = Vec::with_capacity(writes.len());
        for (key, _) in &writes {
            let prior = self.db.get(key).map_err(|e| self.sled_error(e))?;
            undo.push((key.clone(), prior.map(|v| v.to_vec())));
        }
        let pending = Pending {
            seq,
            offsets_before,
            offsets_after,
            undo,
        };

        let mut batch = sled::Batch::default();
        for (key, value) in &writes {
            match value {
                Some(value) => batch.insert(key.as_slice(), value.as_slice()),
                None => batch.remove(key.as_slice()),
            }
        }
        batch.insert(PENDING_KEY, encode_pending(&pending));

        // Readers must stop trusting these keys before they change on disk.
        *write(&self.shared.in_doubt) = Some(InDoubt {
            seq,
            prior: pending.undo.iter().cloned().collect(),
        });
        self.db.apply_batch(batch).map_err(|e| self.sled_error(e))?;
        let started = Instant::now();
        self.db.flush().map_err(|e| self.sled_error(e))?;
        let flush = started.elapsed();

        for (account, balance) in &effects.balances {
            self.balances.insert(account, *balance);
        }
        for (partition, order) in &effects.orders {
            self.orders.insert(*partition, order.clone());
            self.legacy_recent.remove(partition);
        }
        self.records.extend(records_after);
        self.offsets = pending.offsets_after.clone();
        self.next_seq = seq + 1;
        if !ids.is_empty() {
            self.remember_ids(seq, &ids)?;
        }
        self.pending = Some(pending);
        let keys_written = writes.len() + 1;
        let changes = writes
            .into_iter()
            .filter(|(key, _)| !key.starts_with(META_PREFIX))
            .collect();
        Ok(WriteReport {
            keys_written,
            flush,
            changes,
        })
    }

    /// Adds a written batch's ids to the idempotency window, and drops the
    /// oldest batches beyond it (their keys are removed with the next write).
    fn remember_ids(&mut self, seq: u64, ids: &BTreeMap<i32, Vec<u8>>) -> Result<(), StoreError> {
        let mut window = write(&self.shared.window);
        let count: usize = ids
            .values()
            .map(|entries| entries.len() / ID_ENTRY_LEN)
            .sum();
        for entries in ids.values() {
            window.insert(seq, entries);
        }
        window.batches.push_back((seq, count));
        window.total += count;
        while window.oldest_is_out() {
            let Some((old, count)) = window.batches.pop_front() else {
                break;
            };
            window.total -= count;
            for item in self.db.scan_prefix(ids_prefix(old)) {
                let (_, entries) = item.map_err(|e| self.sled_error(e))?;
                window.remove(old, &entries);
            }
            self.evicted.push(old);
        }
        Ok(())
    }

    /// Starts replacing everything in the store by the state the changelog
    /// rebuilds: the store is emptied first (its pending record too; the
    /// changelog holds committed batches only).
    pub fn restore(&mut self) -> Result<Restore<'_>, StoreError> {
        self.db.clear().map_err(|e| self.sled_error(e))?;
        self.db
            .insert(RESTORING_KEY, &[])
            .map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        self.evicted.clear();
        Ok(Restore {
            store: self,
            applied: false,
        })
    }

    /// Starts replacing the state of `partitions` alone by what the
    /// changelog rebuilds (a partition taken over from another shard): their
    /// keys are removed first, the other partitions' state stays. Their
    /// batches must be resolved: no pending record.
    pub fn restore_partitions(
        &mut self,
        partitions: &[i32],
        partition_of: impl Fn(&AccountId) -> i32,
    ) -> Result<Restore<'_>, StoreError> {
        self.drop_partitions(partitions, partition_of)?;
        self.db
            .insert(RESTORING_KEY, &[])
            .map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        Ok(Restore {
            store: self,
            applied: false,
        })
    }

    /// Removes the state of `partitions` (partitions given away), every key
    /// that [`key_partition`] maps to one of them, in one flushed batch.
    /// Their batches must be resolved: no pending record.
    pub fn drop_partitions(
        &mut self,
        partitions: &[i32],
        partition_of: impl Fn(&AccountId) -> i32,
    ) -> Result<(), StoreError> {
        assert!(
            self.pending.is_none(),
            "invariant violated: partitions are dropped only with every batch resolved"
        );
        if partitions.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for item in self.db.iter() {
            let (key, _) = item.map_err(|e| self.sled_error(e))?;
            if key_partition(&key, &partition_of).is_some_and(|p| partitions.contains(&p)) {
                batch.remove(key);
            }
        }
        self.db.apply_batch(batch).map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        self.load()
    }

    /// The batch in flight is committed in Kafka: readers may see it. Its
    /// pending record stays on disk until the next write replaces it (or
    /// `clear_pending`), which saves a flush per batch; recovery resolves it.
    pub fn mark_committed(&mut self) {
        *write(&self.shared.in_doubt) = None;
    }

    /// Removes the pending record of a batch known to be committed.
    pub fn clear_pending(&mut self) -> Result<(), StoreError> {
        if self.pending.is_none() {
            return Ok(());
        }
        self.db
            .remove(PENDING_KEY)
            .map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        self.pending = None;
        self.mark_committed();
        Ok(())
    }

    /// Takes back the pending batch (its Kafka transaction aborted): restores
    /// every key it wrote and removes the record, in one atomic flushed
    /// batch, then reloads the in-memory state from disk.
    pub fn undo_pending(&mut self) -> Result<(), StoreError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        for (key, prior) in &pending.undo {
            match prior {
                Some(value) => batch.insert(key.as_slice(), value.as_slice()),
                None => batch.remove(key.as_slice()),
            }
        }
        batch.remove(PENDING_KEY);
        self.db.apply_batch(batch).map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        self.load()?;
        debug_assert_eq!(self.offsets, pending.offsets_before);
        Ok(())
    }

    /// Flushes sled (at shutdown; batches are already flushed).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.sled_error(e))
    }
}

/// A restore in progress: changelog records applied in the order read,
/// the last write of a key winning as it did when they were written.
/// Nothing is durable until [`Restore::finish`].
#[derive(Debug)]
pub struct Restore<'a> {
    store: &'a mut Store,
    /// Whether anything was applied yet: until then the store is empty,
    /// and a removal has nothing to remove.
    applied: bool,
}

impl Restore<'_> {
    /// Applies the last write of each key among records read so far; a map,
    /// so that its keys are distinct and a removal can be skipped while
    /// nothing was written before it.
    pub fn apply(&mut self, changes: HashMap<Vec<u8>, Option<Vec<u8>>>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, value) in changes {
            match value {
                Some(value) => batch.insert(key, value),
                None if self.applied => batch.remove(key),
                None => {}
            }
        }
        self.applied = true;
        let store = &mut *self.store;
        store.db.apply_batch(batch).map_err(|e| store.sled_error(e))
    }

    /// Makes the restored state durable and loads it. Batch numbers go on
    /// after the newest restored one (and this store's own), so that new
    /// ids are the newest and no batch key is written twice.
    pub fn finish(self) -> Result<(), StoreError> {
        let store = self.store;
        let newest = match store.db.scan_prefix(IDS_PREFIX).next_back() {
            Some(item) => {
                let (key, _) = item.map_err(|e| store.sled_error(e))?;
                ids_key_seq(&key).ok_or_else(|| store.corrupt("bad id batch key"))?
            }
            None => 0,
        };
        let next = (newest + 1).max(store.next_seq);
        store
            .db
            .insert(SEQ_KEY, &next.to_be_bytes())
            .map_err(|e| store.sled_error(e))?;
        // Everything restored is on disk before the marker goes.
        store.db.flush().map_err(|e| store.sled_error(e))?;
        store
            .db
            .remove(RESTORING_KEY)
            .map_err(|e| store.sled_error(e))?;
        store.db.flush().map_err(|e| store.sled_error(e))?;
        store.load()
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
        read(&self.shared.window).decided.get(&id).map(|(d, _)| *d)
    }

    fn credited(&self, id: TransferId) -> bool {
        read(&self.shared.window).credited.contains_key(&id)
    }

    fn order(&self, partition: i32) -> PartitionOrder {
        self.orders.get(&partition).cloned().unwrap_or_default()
    }
}

impl StoreReader {
    fn committed(&self, key: &[u8]) -> Result<Option<IVec>, sled::Error> {
        if let Some(in_doubt) = read(&self.shared.in_doubt).as_ref() {
            if let Some(prior) = in_doubt.prior.get(key) {
                return Ok(prior.as_deref().map(IVec::from));
            }
        }
        self.db.get(key)
    }

    fn in_doubt_seq(&self) -> Option<u64> {
        read(&self.shared.in_doubt).as_ref().map(|d| d.seq)
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
        let in_doubt = read(&self.shared.in_doubt);
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
        let window = read(&self.shared.window);
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
        let mut offsets = Offsets::new();
        for item in self.db.scan_prefix(OFFSET_PREFIX) {
            let (key, _) = item?;
            let Some(at) = decode_offset_key(&key) else {
                continue;
            };
            if let Some(value) = self.committed(&key)? {
                if let Ok(bytes) = value.as_ref().try_into() {
                    offsets.insert(at, i64::from_be_bytes(bytes));
                }
            }
        }
        let pending = match self.db.get(PENDING_KEY)? {
            Some(bytes) => decode_pending(&bytes).map(|p| PendingSummary {
                seq: p.seq,
                offsets_before: p.offsets_before,
                offsets_after: p.offsets_after,
                keys: p.undo.len(),
            }),
            None => None,
        };
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
        let window = read(&self.shared.window);
        Ok(Stats {
            accounts: balances.len() as u64,
            sum: balances.iter().map(|(_, b)| *b).sum(),
            offsets,
            pending,
            remembered_ids: (window.decided.len() + window.credited.len()) as u64,
            held,
        })
    }
}

/// Poisoning only follows a panic in another thread, which already stops
/// the shard; the data behind these locks is replaced wholesale, never left
/// half-updated, so reading through a poisoned lock is safe.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn decode_offset_key(key: &[u8]) -> Option<InputPartition> {
    let rest = key.strip_prefix(OFFSET_PREFIX)?;
    let (&code, partition) = rest.split_first()?;
    Some(InputPartition {
        source: Source::from_code(code)?,
        partition: i32::from_be_bytes(partition.try_into().ok()?),
    })
}

fn encode_offsets(out: &mut Vec<u8>, offsets: &Offsets) {
    out.extend_from_slice(&(offsets.len() as u32).to_be_bytes());
    for (at, offset) in offsets {
        out.push(at.source.code());
        out.extend_from_slice(&at.partition.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
    }
}

/// A compact binary form: the undo of a large batch holds thousands of keys,
/// and this record is written with every batch.
fn encode_pending(pending: &Pending) -> Vec<u8> {
    let mut out = vec![PENDING_FORMAT_VERSION];
    out.extend_from_slice(&pending.seq.to_be_bytes());
    encode_offsets(&mut out, &pending.offsets_before);
    encode_offsets(&mut out, &pending.offsets_after);
    out.extend_from_slice(&(pending.undo.len() as u32).to_be_bytes());
    for (key, prior) in &pending.undo {
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        match prior {
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(value);
            }
            None => out.push(0),
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_be_bytes)
    }
    fn offsets(&mut self) -> Option<Offsets> {
        let count = self.u32()?;
        let mut offsets = Offsets::new();
        for _ in 0..count {
            let source = Source::from_code(self.u8()?)?;
            let partition = i32::from_be_bytes(self.take(4)?.try_into().ok()?);
            let offset = i64::from_be_bytes(self.take(8)?.try_into().ok()?);
            offsets.insert(InputPartition { source, partition }, offset);
        }
        Some(offsets)
    }
}

fn decode_pending(bytes: &[u8]) -> Option<Pending> {
    let mut reader = Reader(bytes);
    if reader.u8()? != PENDING_FORMAT_VERSION {
        return None;
    }
    let seq = reader.u64()?;
    let offsets_before = reader.offsets()?;
    let offsets_after = reader.offsets()?;
    let count = reader.u32()?;
    let mut undo = Vec::with_capacity(count.min(1 << 20) as usize);
    for _ in 0..count {
        let key_len = reader.u32()? as usize;
        let key = reader.take(key_len)?.to_vec();
        let prior = match reader.u8()? {
            0 => None,
            1 => {
                let len = reader.u32()? as usize;
                Some(reader.take(len)?.to_vec())
            }
            _ => return None,
        };
        undo.push((key, prior));
    }
    if !reader.0.is_empty() {
        return None;
    }
    Some(Pending {
        seq,
        offsets_before,
        offsets_after,
        undo,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        store.db.insert(&legacy, held(5).encode()).unwrap();
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

    #[test]
    fn pending_records_round_trip_and_reject_garbage() {
        let at = InputPartition {
            source: Source::Credits,
            partition: 3,
        };
        let pending = Pending {
            seq: 7,
            offsets_before: [(at, 10)].into_iter().collect(),
            offsets_after: [(at, 12)].into_iter().collect(),
            undo: vec![(b"b:x".to_vec(), None), (b"b:y".to_vec(), Some(vec![1, 2]))],
        };
        let bytes = encode_pending(&pending);
        assert_eq!(decode_pending(&bytes), Some(pending));
        assert_eq!(decode_pending(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_pending(&[9]), None);
    }
}
