//! Value encoding: how balances, offsets, packed ids, held transfers, kept
//! credits and the pending record are laid out in bytes, and read back.
//! Every decoder returns `None` for bytes it cannot read, and leaves what
//! that means (a corrupt store, a value to skip) to its caller.

use std::collections::BTreeMap;

use ledger_core::domain::{AccountId, Decision, Money, TransferId};
use ledger_core::machine::{BatchEffects, InputPartition, Offsets, Source};
use ledger_core::order::{Held, OrderKey};
use ledger_core::wire;

use super::pending::Pending;

/// Tag byte of a credited id in a packed id list; decided ids use 0 for
/// accepted and the reject reason's byte otherwise.
pub(super) const TAG_CREDITED: u8 = 0xff;
pub(super) const TAG_ACCEPTED: u8 = 0;
pub(super) const ID_ENTRY_LEN: usize = 17;

const PENDING_FORMAT_VERSION: u8 = 1;

/// The most bytes in one `w:` or `c:` record, so that its changelog
/// record stays far below the broker's message size limit (1 MB by
/// default), which refuses larger ones and so the batch's transaction: a
/// batch that holds 20,000 transfers writes about 4 MB of them.
pub(super) const RECORD_BYTES_MAX: usize = 64 * 1024;

/// A balance: i128 big-endian minor units.
pub(super) fn encode_money(money: Money) -> Vec<u8> {
    money.0.to_be_bytes().to_vec()
}

pub(super) fn decode_money(bytes: &[u8]) -> Option<Money> {
    Some(Money(i128::from_be_bytes(bytes.try_into().ok()?)))
}

/// A next offset: i64 big-endian.
pub(super) fn encode_offset(offset: i64) -> Vec<u8> {
    offset.to_be_bytes().to_vec()
}

pub(super) fn decode_offset(bytes: &[u8]) -> Option<i64> {
    bytes.try_into().ok().map(i64::from_be_bytes)
}

/// A batch's decided and credited ids, packed into one value per
/// partition: the id's 16 bytes and a tag byte each.
pub(super) fn packed_ids(effects: &BatchEffects) -> BTreeMap<i32, Vec<u8>> {
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

/// The id of one [`ID_ENTRY_LEN`]-byte entry of [`packed_ids`] (its tag
/// is the last byte).
pub(super) fn entry_id(entry: &[u8]) -> TransferId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&entry[..16]);
    TransferId::from_bytes(id)
}

/// Entries packed into records of at most [`RECORD_BYTES_MAX`] (an entry
/// larger than that alone in one), with how many entries each holds.
pub(super) fn pack(entries: impl IntoIterator<Item = Vec<u8>>) -> Vec<(Vec<u8>, usize)> {
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
/// [`wire::encode_held`].
pub(super) fn held_entry(held: &Held) -> Vec<u8> {
    let encoded = wire::encode_held(held);
    let len = u32::try_from(encoded.len()).expect("a held transfer is small");
    [&len.to_be_bytes()[..], &encoded].concat()
}

pub(super) fn decode_held(mut bytes: &[u8]) -> Option<Vec<Held>> {
    let mut held = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        held.push(wire::decode_held(bytes.get(4..4 + len)?)?);
        bytes = &bytes[4 + len..];
    }
    Some(held)
}

/// A credit in a `c:` record: its order key, its amount (i128 BE), the
/// length of the account's name (one byte) and the name.
pub(super) fn credit_entry(account: &AccountId, (key, amount): &(OrderKey, Money)) -> Vec<u8> {
    let name = account.as_str().as_bytes();
    let mut bytes = Vec::with_capacity(49 + name.len());
    bytes.extend_from_slice(&key.to_bytes());
    bytes.extend_from_slice(&amount.0.to_be_bytes());
    bytes.push(u8::try_from(name.len()).expect("account names are short"));
    bytes.extend_from_slice(name);
    bytes
}

pub(super) fn decode_credits(mut bytes: &[u8]) -> Option<Vec<(AccountId, OrderKey, Money)>> {
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
pub(super) fn encode_pending(pending: &Pending) -> Vec<u8> {
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

pub(super) fn decode_pending(bytes: &[u8]) -> Option<Pending> {
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
