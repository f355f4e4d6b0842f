//! The key layout: every key's prefix, how keys are built and read back,
//! and which partition's state a key is ([`key_partition`]). The table of
//! what each key holds is in the module's documentation (`store/mod.rs`).

use ledger_core::domain::AccountId;
use ledger_core::machine::{InputPartition, Source};

pub(super) const BALANCE_PREFIX: &[u8] = b"b:";
pub(super) const IDS_PREFIX: &[u8] = b"i:";
pub(super) const OFFSET_PREFIX: &[u8] = b"o:";
pub(super) const ORDER_PREFIX: &[u8] = b"q:";
pub(super) const HELD_PREFIX: &[u8] = b"w:";
pub(super) const DECIDED_PREFIX: &[u8] = b"d:";
pub(super) const LEGACY_HELD_PREFIX: &[u8] = b"h:";
pub(super) const CREDIT_PREFIX: &[u8] = b"c:";
pub(super) const LEGACY_RECENT_PREFIX: &[u8] = b"r:";
pub(super) const STAMP_PREFIX: &[u8] = b"v:";
/// The shard's own keys, which no partition's state includes.
pub(super) const META_PREFIX: &[u8] = b"m:";
pub(super) const SEQ_KEY: &[u8] = b"m:seq";
pub(super) const PENDING_KEY: &[u8] = b"m:pending";
/// Present while a restore is under way: a store cut short in the middle
/// of one may hold the newest offsets without all the balances.
pub(super) const RESTORING_KEY: &[u8] = b"m:restoring";

/// A `w:`, `d:` or `c:` record: the batch that wrote it, and which part
/// of what that batch wrote there (see `codec::RECORD_BYTES_MAX`).
pub(super) type RecordId = (u64, u32);

pub(super) fn balance_key(account: &AccountId) -> Vec<u8> {
    [BALANCE_PREFIX, account.as_str().as_bytes()].concat()
}

pub(super) fn ids_key(seq: u64, partition: i32) -> Vec<u8> {
    [IDS_PREFIX, &seq.to_be_bytes(), &partition.to_be_bytes()].concat()
}

/// Every key of batch `seq`'s ids, one per partition.
pub(super) fn ids_prefix(seq: u64) -> Vec<u8> {
    [IDS_PREFIX, &seq.to_be_bytes()].concat()
}

pub(super) fn ids_key_seq(key: &[u8]) -> Option<u64> {
    key.get(2..10)?.try_into().ok().map(u64::from_be_bytes)
}

pub(super) fn offset_key(at: InputPartition) -> Vec<u8> {
    let mut key = OFFSET_PREFIX.to_vec();
    key.push(at.source.code());
    key.extend_from_slice(&at.partition.to_be_bytes());
    key
}

pub(super) fn decode_offset_key(key: &[u8]) -> Option<InputPartition> {
    let rest = key.strip_prefix(OFFSET_PREFIX)?;
    let (&code, partition) = rest.split_first()?;
    Some(InputPartition {
        source: Source::from_code(code)?,
        partition: i32::from_be_bytes(partition.try_into().ok()?),
    })
}

pub(super) fn stamp_key(partition: i32) -> Vec<u8> {
    [STAMP_PREFIX, &partition.to_be_bytes()].concat()
}

pub(super) fn order_key(partition: i32) -> Vec<u8> {
    [ORDER_PREFIX, &partition.to_be_bytes()].concat()
}

/// `w:`, `d:` and `c:` keys: the partition, the batch seq, the part.
pub(super) fn record_key(prefix: &[u8], partition: i32, (seq, part): RecordId) -> Vec<u8> {
    [
        prefix,
        &partition.to_be_bytes(),
        &seq.to_be_bytes(),
        &part.to_be_bytes(),
    ]
    .concat()
}

pub(super) fn record_key_id(key: &[u8]) -> Option<RecordId> {
    let seq = key.get(6..14)?.try_into().ok().map(u64::from_be_bytes)?;
    let part = key.get(14..18)?.try_into().ok().map(u32::from_be_bytes)?;
    Some((seq, part))
}

/// Every key of `prefix` that starts with `partition`.
pub(super) fn partition_prefix(prefix: &[u8], partition: i32) -> Vec<u8> {
    [prefix, &partition.to_be_bytes()].concat()
}

/// The partition number at the start of a `q:`, `w:`, `d:`, `h:`, `c:`, `r:` or `v:` key.
pub(super) fn order_key_partition(key: &[u8]) -> Option<i32> {
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
