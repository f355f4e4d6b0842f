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
//!   with a [`Mark`], that it will send the account no more credits ordered
//!   before the transfer. Until then the transfer is **held**, and so is every later
//!   transfer of the same account, whose balance depends on it.
//!
//! A mark travels on `ledger-credits` in the same transaction as the
//! credits it follows, to each partition another shard owns (a shard knows
//! its own partitions' state live), so a shard that reads a mark has
//! already read every credit the mark speaks for. It names, besides the
//! floor, the accounts its held transfers would credit: only those
//! accounts' decisions wait for them. Progress: the smallest held key
//! overall waits for no held transfer, since every one it could wait for
//! is ordered after it; once every floor has passed it, it is decided. A partition with nothing to read
//! moves its floor up to the newest floor it has seen (an idle jump), so
//! a quiet partition does not hold the others back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::domain::{format_timestamp, parse_timestamp};
use crate::domain::{AccountId, Money, Transfer, TransferId};
use crate::hash::HashSet;

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

/// What a `transactions` partition promises a partition of
/// `ledger-credits`: it has ordered everything up to `floor`, and the only
/// credits ordered before the floor it may still send there are those of
/// its held transfers in `open`: for each account of that partition one of
/// them would credit, the first such transfer's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub partition: i32,
    pub floor: OrderKey,
    pub open: BTreeMap<AccountId, OrderKey>,
}

/// The most bytes the marks one partition keeps may take together, stored
/// (`q:` in the store, and so one changelog record): well under the 1 MB
/// a broker accepts in one record by default. A mark is itself a record
/// on `ledger-credits`.
const MARKS_BYTES_MAX: usize = 512 * 1024;
/// What one account of a mark's `open` takes at most, stored: a name of up
/// to 64 characters and its order key, as JSON.
const OPEN_ENTRY_BYTES_MAX: usize = 160;

impl Mark {
    /// No credit to `account` ordered before `key` can still come from
    /// the partition this mark speaks for.
    pub fn passed(&self, account: &AccountId, key: OrderKey) -> bool {
        key <= self.floor && self.open.get(account).is_none_or(|open| key <= *open)
    }

    /// The same promise with at most `max` accounts open, so that a mark
    /// stays small however many transfers are held. A weaker one: the
    /// floor comes down to the first key left out, and the accounts open
    /// at or after it go too (the floor now says as much for them). The
    /// accounts left out wait longer for a proof; no decision changes.
    fn limit(&mut self, max: usize) {
        if self.open.len() <= max {
            return;
        }
        let mut keys: Vec<OrderKey> = self.open.values().copied().collect();
        keys.sort_unstable();
        let floor = keys[max].min(self.floor);
        self.floor = floor;
        self.open.retain(|_, key| *key < floor);
    }
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
    /// be decided here, per account, in key order: a decision must leave
    /// out those ordered after it.
    pub recent: BTreeMap<AccountId, Vec<(OrderKey, Money)>>,
    /// The newest mark of each partition read on this `ledger-credits`
    /// partition.
    pub marks: BTreeMap<i32, Mark>,
}

impl PartitionOrder {
    /// Every transfer still to be decided here is ordered after this:
    /// credits up to it count for all of them.
    pub fn bound(&self) -> Option<OrderKey> {
        match (self.floor, self.held.first()) {
            (Some(floor), Some(held)) => Some(floor.min(held.key)),
            (floor, _) => floor,
        }
    }

    /// This partition's marks, one for each partition of `ledger-credits`
    /// (`destination_of` names an account's), each with the held transfers
    /// that would credit an account there. A held transfer holds back only
    /// the decisions of the account it pays, which keeps shards from
    /// waiting on each other's unrelated shortages. `None` before anything
    /// was ordered here.
    pub fn marks(
        &self,
        partition: i32,
        partitions: i32,
        destination_of: impl Fn(&AccountId) -> i32,
    ) -> Option<Vec<Mark>> {
        let floor = self.floor?;
        let mut marks: Vec<Mark> = (0..partitions)
            .map(|_| Mark {
                partition,
                floor,
                open: BTreeMap::new(),
            })
            .collect();
        for held in &self.held {
            let to = &held.transfer.to;
            if let Some(mark) = usize::try_from(destination_of(to))
                .ok()
                .and_then(|destination| marks.get_mut(destination))
            {
                mark.open.entry(to.clone()).or_insert(held.key);
            }
        }
        // A partition keeps one mark from each of the others.
        let others = usize::try_from(partitions - 1).unwrap_or(0).max(1);
        let open_max = MARKS_BYTES_MAX / OPEN_ENTRY_BYTES_MAX / others;
        for mark in &mut marks {
            mark.limit(open_max);
        }
        Some(marks)
    }

    /// Takes a mark read on `ledger-credits`. A partition's marks arrive in
    /// the order it wrote them, so the newest replaces the one before, as
    /// it is: a limited mark (see [`Mark::limit`]) may promise less than
    /// the one before, and its floor with the earlier mark's open accounts
    /// would promise what neither does.
    pub fn read_mark(&mut self, mark: Mark) {
        self.marks.insert(mark.partition, mark);
    }

    /// An idle partition's new floor: the newest floor any partition has
    /// announced (or `also`, the newest of the shard's own partitions),
    /// when that is ahead of its own, but not past `now` (the
    /// shard's clock; `None`: no limit). A transfer stamped far in the
    /// future moves its own partition's floor there, and only that one:
    /// the others do not follow it, and shortages ordered after it wait
    /// (at most `--hold-max-ms`) instead of every partition's order being
    /// pushed into the future.
    pub fn jump(&mut self, now: Option<OffsetDateTime>, also: Option<OrderKey>) -> bool {
        let newest = self.marks.values().map(|mark| mark.floor).chain(also).max();
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
        // In key order, the order in which the store reads them back, so
        // that a state and its stored copy compare equal.
        let credits = self.recent.entry(account.clone()).or_default();
        let at = credits.partition_point(|(before, _)| *before < key);
        credits.insert(at, (key, amount));
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
                .map(|mark| MarkStateWire {
                    partition: mark.partition,
                    floor: KeyWire::of(&mark.floor),
                    open: mark
                        .open
                        .iter()
                        .map(|(account, key)| (account.as_str().to_owned(), KeyWire::of(key)))
                        .collect(),
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
        for mark in &meta.marks {
            let mut open = BTreeMap::new();
            for (account, key) in &mark.open {
                open.insert(AccountId::parse(account).ok()?, key.key()?);
            }
            let mark = Mark {
                partition: mark.partition,
                floor: mark.floor.key()?,
                open,
            };
            order.marks.insert(mark.partition, mark);
        }
        Some(order)
    }

    /// Reads the per-account form in which earlier versions stored an
    /// account's recent credits (JSON); the store now keeps them in
    /// records per batch and reads this only to move such keys there.
    pub fn decode_legacy_recent(bytes: &[u8]) -> Option<Vec<(OrderKey, Money)>> {
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

    /// Reads [`OrderKey::to_bytes`] from the start of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let nanos = i128::from_be_bytes(bytes.get(..16)?.try_into().ok()?);
        Some(OrderKey {
            at: OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?,
            id: TransferId::from_bytes(bytes.get(16..32)?.try_into().ok()?),
        })
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct KeyWire {
    at: String,
    id: TransferId,
}

impl KeyWire {
    pub(crate) fn of(key: &OrderKey) -> Self {
        KeyWire {
            at: format_timestamp(key.at),
            id: key.id,
        }
    }

    pub(crate) fn key(&self) -> Option<OrderKey> {
        Some(OrderKey {
            at: parse_timestamp(&self.at)?,
            id: self.id,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct MetaWire {
    floor: Option<KeyWire>,
    marks: Vec<MarkStateWire>,
}

#[derive(Serialize, Deserialize)]
struct MarkStateWire {
    partition: i32,
    floor: KeyWire,
    open: Vec<(String, KeyWire)>,
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
    fn the_newest_mark_replaces_and_an_idle_floor_jumps_to_the_newest() {
        let mut order = PartitionOrder::default();
        let key = |s| OrderKey::of(&transfer(1, s));
        let mark = |partition, floor| Mark {
            partition,
            floor: key(floor),
            open: BTreeMap::new(),
        };
        order.read_mark(mark(0, 10));
        order.read_mark(mark(1, 20));
        // The newest replaces the one before, even one that promises less.
        order.read_mark(mark(0, 8));
        assert_eq!(order.marks[&0], mark(0, 8));
        order.read_mark(mark(0, 10));
        // Not into the future of the shard's clock.
        let clock = key(15).at;
        assert!(order.jump(Some(clock), None));
        assert_eq!(order.floor.map(|floor| floor.at), Some(clock));
        assert!(order.jump(None, None));
        assert_eq!(order.floor, Some(key(20)));
        assert!(!order.jump(None, None));
    }

    #[test]
    fn a_held_transfer_holds_back_only_the_account_it_pays() {
        let floor = OrderKey::of(&transfer(9, 40));
        let mut order = PartitionOrder {
            floor: Some(floor),
            ..PartitionOrder::default()
        };
        assert_eq!(PartitionOrder::default().marks(3, 2, |_| 0), None);
        order.held.push(Held {
            key: OrderKey::of(&transfer(8, 39)),
            transfer: transfer(8, 39),
            offset: 12,
            since_ms: 0,
        });
        // transfer() pays bob, who lives on partition 1 here.
        let marks = order
            .marks(3, 2, |account| i32::from(account.as_str() == "bob"))
            .unwrap();
        assert_eq!(marks.len(), 2);
        assert!(marks
            .iter()
            .all(|mark| mark.partition == 3 && mark.floor == floor));
        let bob = AccountId::parse("bob").unwrap();
        let alice = AccountId::parse("alice").unwrap();
        assert!(marks[0].open.is_empty());
        let held = OrderKey::of(&transfer(8, 39));
        assert_eq!(marks[1].open.get(&bob), Some(&held));
        // bob's decisions before the held transfer are free, later ones wait;
        // alice's only wait for the floor.
        assert!(marks[1].passed(&bob, OrderKey::of(&transfer(1, 38))));
        assert!(!marks[1].passed(&bob, floor));
        assert!(marks[1].passed(&alice, floor));
        assert!(!marks[1].passed(&alice, OrderKey::of(&transfer(1, 41))));
    }

    #[test]
    fn a_mark_stays_small_and_true_however_many_transfers_are_held() {
        let floor = OrderKey::of(&transfer(u128::MAX, 100_000));
        let mut order = PartitionOrder {
            floor: Some(floor),
            ..PartitionOrder::default()
        };
        // 3,000 held transfers, each paying an account of its own.
        for n in 0..3_000u128 {
            let mut paying = transfer(n + 1, n as i64);
            paying.to = AccountId::parse(&format!("acc-{n:04}")).unwrap();
            order.held.push(Held {
                key: OrderKey::of(&paying),
                transfer: paying,
                offset: n as i64,
                since_ms: 0,
            });
        }
        let marks = order.marks(0, 6, |_| 1).unwrap();
        let mark = &marks[1];
        let open_max = MARKS_BYTES_MAX / OPEN_ENTRY_BYTES_MAX / 5;
        assert!(!mark.open.is_empty() && mark.open.len() <= open_max);
        assert!(mark.floor < floor);
        // Still true: no transfer ordered after a held one that pays its
        // account passes, so the credit it may still send is waited for.
        for held in &order.held {
            let after = OrderKey {
                at: held.key.at + Duration::nanoseconds(1),
                id: held.key.id,
            };
            assert!(!mark.passed(&held.transfer.to, after), "{held:?}");
        }
        // Under the limit, a mark is as it was.
        order.held.truncate(10);
        let marks = order.marks(0, 6, |_| 1).unwrap();
        assert_eq!((marks[1].floor, marks[1].open.len()), (floor, 10));
        let stored = PartitionOrder {
            marks: (1..6)
                .map(|p| {
                    (
                        p,
                        Mark {
                            partition: p,
                            ..mark.clone()
                        },
                    )
                })
                .collect(),
            ..PartitionOrder::default()
        };
        assert!(stored.encode_meta().len() <= MARKS_BYTES_MAX);
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
            open: BTreeMap::from([(
                AccountId::parse("bob").unwrap(),
                OrderKey::of(&transfer(5, 44)),
            )]),
        });
        assert_eq!(
            PartitionOrder::decode_meta(&order.encode_meta()),
            Some(order)
        );
        assert_eq!(PartitionOrder::decode_meta(b"{}"), None);
        let held_key = OrderKey::of(&transfer(8, 39));
        // The JSON form of earlier versions still reads.
        let key_json = |key: &OrderKey| serde_json::json!({"at": format_timestamp(key.at), "id": key.id.to_string()});
        let credit = OrderKey::of(&transfer(7, 50));
        let legacy_recent = serde_json::json!([[key_json(&credit), -3]]);
        assert_eq!(
            PartitionOrder::decode_legacy_recent(legacy_recent.to_string().as_bytes()),
            Some(vec![(credit, Money(-3))])
        );
        assert_eq!(OrderKey::from_bytes(&held_key.to_bytes()), Some(held_key));
        // Store keys sort like the order keys they stand for.
        let (early, late) = (OrderKey::of(&transfer(9, 1)), OrderKey::of(&transfer(1, 2)));
        assert!(early.to_bytes() < late.to_bytes());
    }
}
