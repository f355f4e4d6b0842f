//! The ledger's order: which transfers a decision may count on.
//!
//! A transfer is decided against its source's balance with every credit of
//! a transfer ordered before it, and no other. The order is by key
//! `(effective_at, id)`. `effective_at` is the transfer's `created_at`,
//! unless the transfer arrived in its partition after one with a later key:
//! then it is re-timed to just after that one (one nanosecond later), so
//! that keys grow along every partition and each partition can be decided
//! in arrival order. One producer writing in `created_at` order is never
//! re-timed.
//!
//! A shard decides a transfer as soon as the answer cannot change:
//!
//! - **accept** when the balance without the credits ordered after it
//!   covers the amount. Credits still on their way can only add funds, so a
//!   transfer accepted early is one the order accepts.
//! - **reject** (`insufficient_funds`) only when every partition has said,
//!   with a [`Mark`], that it will send no more credits ordered before the
//!   transfer. Until then the transfer is **held**, and so is every later
//!   transfer of the same account, whose balance depends on it.
//!
//! A mark travels on `ledger-credits` in the same transaction as the
//! credits it follows, to every partition, so a shard that reads a mark has
//! already read every credit the mark speaks for. Progress: every
//! partition's `low` is at most its smallest held key, so the smallest held
//! key overall is never above any mark once every partition's floor has
//! passed it, and can always be decided. A partition with nothing to read
//! moves its floor up to the newest floor it has seen (an idle jump), so
//! a quiet partition does not hold the others back.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::domain::{AccountId, Money, Transfer, TransferId};
use crate::wire::{self, format_timestamp, parse_timestamp};

/// A transfer's place in the ledger's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderKey {
    pub at: OffsetDateTime,
    pub id: TransferId,
}

impl OrderKey {
    /// The key a transfer asks for: its `created_at` and id.
    pub fn of(transfer: &Transfer) -> Self {
        OrderKey {
            at: transfer.created_at,
            id: transfer.id,
        }
    }

    /// The key a transfer gets when it arrives after `floor`: its own when
    /// that is later, else the floor's time plus one nanosecond.
    pub fn after(floor: Option<OrderKey>, transfer: &Transfer) -> Self {
        let own = Self::of(transfer);
        match floor {
            Some(floor) if own <= floor => OrderKey {
                at: floor.at + Duration::nanoseconds(1),
                id: transfer.id,
            },
            _ => own,
        }
    }
}

/// What a `transactions` partition promises the others: it has ordered
/// everything up to `floor`, and will never again send a credit ordered
/// before `low` (its floor, or its smallest held transfer if lower).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub partition: i32,
    pub floor: OrderKey,
    pub low: OrderKey,
}

/// A transfer waiting for funds, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub key: OrderKey,
    pub transfer: Transfer,
    /// Its `transactions` offset, which its outcome names.
    pub offset: i64,
    /// When it was first held (the shard's clock, ms since the epoch), for
    /// `--hold-max-ms`.
    pub since_ms: u64,
}

/// The order state of one partition number: of its `transactions`
/// partition (floor, held transfers) and of its `ledger-credits` partition
/// (recent credits, marks read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionOrder {
    /// The key of the last transfer ordered here (or of an idle jump); a
    /// new transfer is ordered after it.
    pub floor: Option<OrderKey>,
    /// Held transfers, in key order.
    pub held: Vec<Held>,
    /// Credits applied here that are ordered after some transfer still to
    /// be decided here, per account: a decision must leave out those
    /// ordered after it.
    pub recent: BTreeMap<AccountId, Vec<(OrderKey, Money)>>,
    /// The newest mark of each partition read on this `ledger-credits`
    /// partition.
    pub marks: BTreeMap<i32, Mark>,
}

impl PartitionOrder {
    /// Every transfer still to be decided here is ordered after this:
    /// credits up to it count for all of them.
    fn bound(&self) -> Option<OrderKey> {
        match (self.floor, self.held.first()) {
            (Some(floor), Some(held)) => Some(floor.min(held.key)),
            (floor, _) => floor,
        }
    }

    /// This partition's mark; `None` before anything was ordered here.
    pub fn mark(&self, partition: i32) -> Option<Mark> {
        let floor = self.floor?;
        Some(Mark {
            partition,
            floor,
            low: self.bound().unwrap_or(floor),
        })
    }

    /// Takes a mark read on `ledger-credits`; marks only move forward.
    pub fn read_mark(&mut self, mark: Mark) {
        let entry = self.marks.entry(mark.partition).or_insert(mark);
        entry.floor = entry.floor.max(mark.floor);
        entry.low = entry.low.max(mark.low);
    }

    /// An idle partition's new floor: the newest floor any partition has
    /// announced, when that is ahead of its own, but not past `now` (the
    /// shard's clock; `None`: no limit). A transfer stamped far in the
    /// future moves its own partition's floor there, and only that one:
    /// the others do not follow it, and shortages ordered after it wait
    /// (at most `--hold-max-ms`) instead of every partition's order being
    /// pushed into the future.
    pub fn jump(&mut self, now: Option<OffsetDateTime>) -> bool {
        let newest = self.marks.values().map(|mark| mark.floor).max();
        let newest = match (newest, now) {
            (Some(newest), Some(now)) if newest.at > now => Some(OrderKey {
                at: now,
                id: TransferId(uuid::Uuid::nil()),
            }),
            (newest, _) => newest,
        };
        match newest {
            Some(newest) if self.floor.is_none_or(|floor| floor < newest) => {
                self.floor = Some(newest);
                true
            }
            _ => false,
        }
    }

    /// A credit applied to `account`: remembered while some transfer still
    /// to be decided here is ordered before it.
    pub fn note_credit(&mut self, account: &AccountId, key: OrderKey, amount: Money) {
        if self.bound().is_some_and(|bound| key <= bound) {
            return;
        }
        self.recent
            .entry(account.clone())
            .or_default()
            .push((key, amount));
    }

    /// The credits to `account` applied here and ordered after `key`.
    pub fn credits_after(&self, account: &AccountId, key: OrderKey) -> Money {
        self.recent.get(account).map_or(Money::ZERO, |credits| {
            credits
                .iter()
                .filter(|(at, _)| *at > key)
                .map(|(_, amount)| *amount)
                .sum()
        })
    }

    /// Forgets the credits that every transfer still to come is ordered after.
    pub fn prune(&mut self) {
        let Some(bound) = self.bound() else {
            return;
        };
        self.recent.retain(|_, credits| {
            credits.retain(|(key, _)| *key > bound);
            !credits.is_empty()
        });
    }

    /// The accounts with a held transfer, and the held ids.
    pub fn held_index(&self) -> (HashSet<AccountId>, HashSet<TransferId>) {
        let accounts = self.held.iter().map(|h| h.transfer.from.clone()).collect();
        let ids = self.held.iter().map(|h| h.transfer.id).collect();
        (accounts, ids)
    }

    /// The stored form of the floor and the marks (sled keeps the held
    /// transfers and the recent credits under keys of their own, so that a
    /// batch writes what changed, not the whole state): JSON.
    pub fn encode_meta(&self) -> Vec<u8> {
        let meta = MetaWire {
            floor: self.floor.as_ref().map(KeyWire::of),
            marks: self
                .marks
                .values()
                .map(|mark| {
                    (
                        mark.partition,
                        KeyWire::of(&mark.floor),
                        KeyWire::of(&mark.low),
                    )
                })
                .collect(),
        };
        serde_json::to_vec(&meta).unwrap_or_default()
    }

    /// Reads [`PartitionOrder::encode_meta`]: a state with no held
    /// transfers and no recent credits; `None` when it does not decode.
    pub fn decode_meta(bytes: &[u8]) -> Option<Self> {
        let meta: MetaWire = serde_json::from_slice(bytes).ok()?;
        let mut order = PartitionOrder {
            floor: match &meta.floor {
                Some(floor) => Some(floor.key()?),
                None => None,
            },
            ..PartitionOrder::default()
        };
        for (partition, floor, low) in &meta.marks {
            let mark = Mark {
                partition: *partition,
                floor: floor.key()?,
                low: low.key()?,
            };
            order.marks.insert(*partition, mark);
        }
        Some(order)
    }

    /// The stored form of one account's recent credits.
    pub fn encode_recent(credits: &[(OrderKey, Money)]) -> Vec<u8> {
        let credits: Vec<(KeyWire, i128)> = credits
            .iter()
            .map(|(key, amount)| (KeyWire::of(key), amount.0))
            .collect();
        serde_json::to_vec(&credits).unwrap_or_default()
    }

    pub fn decode_recent(bytes: &[u8]) -> Option<Vec<(OrderKey, Money)>> {
        let credits: Vec<(KeyWire, i128)> = serde_json::from_slice(bytes).ok()?;
        credits
            .iter()
            .map(|(key, minor)| Some((key.key()?, Money(*minor))))
            .collect()
    }
}

impl OrderKey {
    /// A fixed-width form for keys of a store: time in nanoseconds since
    /// the epoch (i128, big-endian), then the id.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&self.at.unix_timestamp_nanos().to_be_bytes());
        bytes[16..].copy_from_slice(self.id.as_bytes());
        bytes
    }
}

impl Held {
    /// The stored form of a held transfer: JSON, with the transfer as
    /// `transactions` carries it.
    pub fn encode(&self) -> Vec<u8> {
        let held = HeldWire {
            key: KeyWire::of(&self.key),
            transfer: String::from_utf8(wire::encode_transfer(&self.transfer)).unwrap_or_default(),
            offset: self.offset,
            since_ms: self.since_ms,
        };
        serde_json::to_vec(&held).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Held> {
        let held: HeldWire = serde_json::from_slice(bytes).ok()?;
        Some(Held {
            key: held.key.key()?,
            transfer: wire::decode_transfer(held.transfer.as_bytes()).ok()?,
            offset: held.offset,
            since_ms: held.since_ms,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct KeyWire {
    at: String,
    id: TransferId,
}

impl KeyWire {
    fn of(key: &OrderKey) -> Self {
        KeyWire {
            at: format_timestamp(key.at),
            id: key.id,
        }
    }

    fn key(&self) -> Option<OrderKey> {
        Some(OrderKey {
            at: parse_timestamp(&self.at).ok()?,
            id: self.id,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct HeldWire {
    key: KeyWire,
    /// The transfer as `transactions` carries it.
    transfer: String,
    offset: i64,
    since_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct MetaWire {
    floor: Option<KeyWire>,
    marks: Vec<(i32, KeyWire, KeyWire)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Amount, Currency};

    fn transfer(id: u128, at_seconds: i64) -> Transfer {
        Transfer::new(
            TransferId(uuid::Uuid::from_u128(id)),
            AccountId::parse("alice").unwrap(),
            AccountId::parse("bob").unwrap(),
            Amount::from_minor(100).unwrap(),
            Currency::EUR,
            OffsetDateTime::from_unix_timestamp(at_seconds).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_late_transfer_is_retimed_just_after_the_floor() {
        let first = OrderKey::after(None, &transfer(2, 100));
        assert_eq!(first, OrderKey::of(&transfer(2, 100)));
        // Same time, smaller id: it would sort before the floor.
        let tie = OrderKey::after(Some(first), &transfer(1, 100));
        assert!(tie > first);
        assert_eq!(tie.at, first.at + Duration::nanoseconds(1));
        let early = OrderKey::after(Some(first), &transfer(3, 50));
        assert_eq!(early.at, first.at + Duration::nanoseconds(1));
        let later = OrderKey::after(Some(first), &transfer(0, 101));
        assert_eq!(later, OrderKey::of(&transfer(0, 101)));
    }

    #[test]
    fn marks_only_move_forward_and_an_idle_floor_jumps_to_the_newest() {
        let mut order = PartitionOrder::default();
        let key = |s| OrderKey::of(&transfer(1, s));
        let mark = |partition, floor, low| Mark {
            partition,
            floor: key(floor),
            low: key(low),
        };
        order.read_mark(mark(0, 10, 5));
        order.read_mark(mark(1, 20, 20));
        // An older mark read late changes nothing.
        order.read_mark(mark(0, 8, 3));
        assert_eq!(order.marks[&0], mark(0, 10, 5));
        // Not into the future of the shard's clock.
        let clock = key(15).at;
        assert!(order.jump(Some(clock)));
        assert_eq!(order.floor.map(|floor| floor.at), Some(clock));
        assert!(order.jump(None));
        assert_eq!(order.floor, Some(key(20)));
        assert!(!order.jump(None));
    }

    #[test]
    fn credits_ordered_after_a_transfer_are_left_out_of_its_balance() {
        let mut order = PartitionOrder {
            floor: Some(OrderKey::of(&transfer(1, 10))),
            ..PartitionOrder::default()
        };
        let alice = AccountId::parse("alice").unwrap();
        // Before the floor: counts for everything still to come, forgotten.
        order.note_credit(&alice, OrderKey::of(&transfer(2, 5)), Money(7));
        assert!(order.recent.is_empty());
        order.note_credit(&alice, OrderKey::of(&transfer(3, 30)), Money(50));
        assert_eq!(
            order.credits_after(&alice, OrderKey::of(&transfer(4, 20))),
            Money(50)
        );
        assert_eq!(
            order.credits_after(&alice, OrderKey::of(&transfer(4, 40))),
            Money::ZERO
        );
        order.floor = Some(OrderKey::of(&transfer(5, 35)));
        order.prune();
        assert!(order.recent.is_empty());
    }

    #[test]
    fn the_stored_forms_round_trip() {
        let mut order = PartitionOrder {
            floor: Some(OrderKey::of(&transfer(9, 40))),
            ..PartitionOrder::default()
        };
        order.read_mark(Mark {
            partition: 2,
            floor: OrderKey::of(&transfer(6, 45)),
            low: OrderKey::of(&transfer(5, 44)),
        });
        assert_eq!(
            PartitionOrder::decode_meta(&order.encode_meta()),
            Some(order)
        );
        assert_eq!(PartitionOrder::decode_meta(b"{}"), None);
        let held = Held {
            key: OrderKey::of(&transfer(8, 39)),
            transfer: transfer(8, 39),
            offset: 12,
            since_ms: 1_700_000_000_000,
        };
        assert_eq!(Held::decode(&held.encode()), Some(held));
        let credits = vec![(OrderKey::of(&transfer(7, 50)), Money(-3))];
        assert_eq!(
            PartitionOrder::decode_recent(&PartitionOrder::encode_recent(&credits)),
            Some(credits)
        );
        // Store keys sort like the order keys they stand for.
        let (early, late) = (OrderKey::of(&transfer(9, 1)), OrderKey::of(&transfer(1, 2)));
        assert!(early.to_bytes() < late.to_bytes());
    }
}
