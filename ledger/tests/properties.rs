//! Property tests of the ledger core: a whole multi-shard pipeline simulated
//! in memory (topics as vectors, shards as state machines), driven by random
//! streams of transfers that include invalid, duplicate and underfunded ones.
//!
//! The crash-safety model at the end uses the real sled store and the real
//! recovery rule, with Kafka's transaction simulated: a batch's outputs,
//! offsets and changelog records become visible all at once, or not at all.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
use std::collections::BTreeMap;

use ledger::store::{self, Change, Store, StoreOptions};
use ledger_core::domain::{
    AccountId, Amount, Currency, Decision, Money, OutcomeKind, RejectReason, Transfer, TransferId,
};
use ledger_core::machine::{
    process_batch, process_batch_at, BatchEffects, InputPartition, InputRecord, LedgerView,
    MemoryLedger, Offsets, Output, Rules, Source, Tick,
};
use ledger_core::recovery::{self, PendingOffsets, Recovery};
use ledger_core::wire::{self, CreditsRecord};
use proptest::prelude::*;
use time::OffsetDateTime;

const PARTITIONS: i32 = 4;
const ACCOUNTS: usize = 6;

fn account(index: usize) -> AccountId {
    if index == ACCOUNTS {
        AccountId::world()
    } else {
        AccountId::parse(&format!("acc-{index}")).unwrap()
    }
}

fn rules() -> Rules {
    Rules::new(PARTITIONS)
}

/// The partition that owns `account`: the shards check records against it.
fn partition_of(account: &AccountId) -> i32 {
    rules().partition_of(account)
}

/// One step of a random scenario.
#[derive(Debug, Clone)]
enum Step {
    /// A transfer between two accounts (index ACCOUNTS is `world`).
    Transfer {
        from: usize,
        to: usize,
        cents: i64,
        foreign_currency: bool,
        /// Written to this partition instead of its owner's, as a producer
        /// with another partitioner (or a wrong key) would.
        stray: Option<i32>,
    },
    /// Bytes that are not a valid transfer.
    Invalid(usize),
    /// Resend the n-th transfer produced so far (same id, same content),
    /// to its owner's partition or, with `Some`, to this one.
    Resend(usize, Option<i32>),
    /// Let a shard process up to this many of its pending records.
    Process { shard: usize, records: usize },
}

const INVALID_INPUTS: [&str; 5] = [
    "not json",
    r#"{"id":"6f1c2b9e-3d4a-4e5f-8a7b-1c2d3e4f5a6b"}"#,
    r#"{"id":"6f1c2b9e-3d4a-4e5f-8a7b-1c2d3e4f5a6b","from":"acc-1","to":"acc-2","amount":"-3.00","currency":"EUR","created_at":"2026-11-25T10:00:00Z"}"#,
    r#"{"id":"6f1c2b9e-3d4a-4e5f-8a7b-1c2d3e4f5a6c","from":"acc-1","to":"acc-1","amount":"3.00","currency":"EUR","created_at":"2026-11-25T10:00:00Z"}"#,
    r#"{"id":"6f1c2b9e-3d4a-4e5f-8a7b-1c2d3e4f5a6d","from":"acc-1","to":"acc-2","amount":3.5,"currency":"EUR","created_at":"2026-11-25T10:00:00Z"}"#,
];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        // Deposits from world are frequent so that transfers can succeed.
        4 => (0..ACCOUNTS, 1i64..50_000, stray()).prop_map(|(to, cents, stray)| Step::Transfer {
            from: ACCOUNTS,
            to,
            cents,
            foreign_currency: false,
            stray,
        }),
        8 => (0..=ACCOUNTS, 0..=ACCOUNTS, 1i64..40_000, prop::bool::weighted(0.05), stray()).prop_map(
            |(from, to, cents, foreign_currency, stray)| Step::Transfer { from, to, cents, foreign_currency, stray }
        ),
        1 => (0..INVALID_INPUTS.len()).prop_map(Step::Invalid),
        2 => (any::<usize>(), stray()).prop_map(|(index, stray)| Step::Resend(index, stray)),
        6 => (0usize..3, 1usize..12).prop_map(|(shard, records)| Step::Process { shard, records }),
    ]
}

/// Mostly `None`; otherwise any partition, the owner's included.
fn stray() -> impl Strategy<Value = Option<i32>> {
    prop::option::weighted(0.15, 0..PARTITIONS)
}

/// A record on a simulated topic.
#[derive(Debug, Clone)]
struct Record {
    key: Vec<u8>,
    value: Vec<u8>,
}

/// The simulated cluster: two input topics, the outcomes, and N shards,
/// shard i first owning the partitions p with p mod N == i; a partition
/// can move to another shard with its state, as a group rebalance moves it.
struct Cluster {
    shards: usize,
    /// Each partition's shard.
    owner: Vec<usize>,
    /// Per shard, after it took partitions: for each partition it owns, the
    /// end of `ledger-credits` then, which it must have read before its
    /// own partitions' live state proves a shortage (`Tick::catching_up`).
    due: Vec<BTreeMap<i32, i64>>,
    /// Per shard: its partitions changed, so it publishes all its marks
    /// again, as a shard does after a rebalance.
    republish: Vec<bool>,
    rules: Rules,
    /// Shards apply credits to their own partitions at once (as the real
    /// shards do) instead of reading them back.
    local_credits: bool,
    transfers: Vec<Vec<Record>>,
    credits: Vec<Vec<Record>>,
    ledgers: Vec<MemoryLedger>,
    outcomes: Vec<wire::Outcome>,
    sent: Vec<Vec<u8>>,
    sequence: u128,
}

impl Cluster {
    fn new(shards: usize) -> Self {
        Self::with_rules(shards, rules())
    }

    fn with_rules(shards: usize, rules: Rules) -> Self {
        Cluster {
            shards,
            owner: (0..PARTITIONS).map(|p| p as usize % shards).collect(),
            due: vec![BTreeMap::new(); shards],
            republish: vec![false; shards],
            rules,
            local_credits: false,
            transfers: vec![Vec::new(); PARTITIONS as usize],
            credits: vec![Vec::new(); PARTITIONS as usize],
            ledgers: vec![MemoryLedger::default(); shards],
            outcomes: Vec::new(),
            sent: Vec::new(),
            sequence: 0,
        }
    }

    fn publish_transfer(&mut self, key: &AccountId, value: Vec<u8>, stray: Option<i32>) {
        let partition = stray.unwrap_or_else(|| partition_of(key));
        self.transfers[partition as usize].push(Record {
            key: key.as_str().as_bytes().to_vec(),
            value,
        });
    }

    fn apply_step(&mut self, step: &Step) {
        match *step {
            Step::Transfer {
                from,
                to,
                cents,
                foreign_currency,
                stray,
            } => {
                self.sequence += 1;
                let currency = if foreign_currency {
                    Currency::parse("USD").unwrap()
                } else {
                    Currency::EUR
                };
                // Same-account transfers are not representable as a
                // `Transfer`; they are covered by the invalid inputs.
                let Ok(transfer) = Transfer::new(
                    TransferId(uuid::Uuid::from_u128(self.sequence)),
                    account(from),
                    account(to),
                    Amount::from_minor(cents).unwrap(),
                    currency,
                    OffsetDateTime::UNIX_EPOCH,
                ) else {
                    return;
                };
                let bytes = wire::encode_transfer(&transfer);
                self.sent.push(bytes.clone());
                self.publish_transfer(&transfer.from, bytes, stray);
            }
            Step::Invalid(index) => {
                self.publish_transfer(&account(1), INVALID_INPUTS[index].as_bytes().to_vec(), None);
            }
            Step::Resend(index, stray) => {
                if !self.sent.is_empty() {
                    let bytes = self.sent[index % self.sent.len()].clone();
                    let transfer = wire::decode_transfer(&bytes).unwrap();
                    self.publish_transfer(&transfer.from, bytes, stray);
                }
            }
            Step::Process { shard, records } => {
                let shard = shard % self.shards;
                let effects = self.run_shard(shard, records);
                self.commit(shard, &effects);
            }
        }
    }

    /// The records a shard has not consumed yet, transfers and credits
    /// interleaved per partition in a fixed order, at most `limit`.
    fn unread(&self, shard: usize, limit: usize) -> Vec<(InputPartition, i64, &Record)> {
        let offsets = &self.ledgers[shard].offsets;
        let mut records = Vec::new();
        for partition in self.owned(shard) {
            for (source, topic) in [
                (Source::Transfers, &self.transfers),
                (Source::Credits, &self.credits),
            ] {
                let at = InputPartition { source, partition };
                let next = offsets.get(&at).copied().unwrap_or(0);
                for (offset, record) in topic[partition as usize]
                    .iter()
                    .enumerate()
                    .skip(next as usize)
                {
                    records.push((at, offset as i64, record));
                }
            }
        }
        records.truncate(limit);
        records
    }

    fn run_shard(&self, shard: usize, limit: usize) -> BatchEffects {
        let unread = self.unread(shard, limit);
        let inputs: Vec<InputRecord<'_>> = unread
            .iter()
            .map(|(at, offset, record)| InputRecord {
                at: *at,
                offset: *offset,
                key: Some(&record.key),
                payload: Some(&record.value),
            })
            .collect();
        let owned = self.owned(shard);
        let tick = Tick {
            local: if self.local_credits { &owned } else { &[] },
            catching_up: self.catching_up(shard),
            ..Tick::default()
        };
        process_batch_at(&self.ledgers[shard], &self.rules, &inputs, tick)
            .expect("credits are written to their owner's partition")
    }

    fn owned(&self, shard: usize) -> Vec<i32> {
        (0..PARTITIONS)
            .filter(|p| self.owner[*p as usize] == shard)
            .collect()
    }

    /// Whether `shard` has credits left to read that reached its
    /// partitions before it took them.
    fn catching_up(&self, shard: usize) -> bool {
        self.due[shard].iter().any(|(partition, end)| {
            let at = InputPartition {
                source: Source::Credits,
                partition: *partition,
            };
            self.ledgers[shard].offsets.get(&at).copied().unwrap_or(0) < *end
        })
    }

    /// Moves `partition` to shard `to` with its state (balances, offsets,
    /// order state; remembered ids are copied whole, a superset), as a
    /// rebalance does through the changelog. The new owner catches up on
    /// `ledger-credits` before trusting its own partitions' live state.
    fn move_partition(&mut self, partition: i32, to: usize) {
        let from = self.owner[partition as usize];
        if from == to {
            return;
        }
        let taken = &mut self.ledgers[from];
        let balances: Vec<(AccountId, Money)> = taken
            .balances
            .iter()
            .filter(|(account, _)| partition_of(account) == partition)
            .map(|(account, balance)| (account.clone(), *balance))
            .collect();
        taken
            .balances
            .retain(|account, _| partition_of(account) != partition);
        let offsets: Vec<(InputPartition, i64)> = taken
            .offsets
            .iter()
            .filter(|(at, _)| at.partition == partition)
            .map(|(at, next)| (*at, *next))
            .collect();
        taken.offsets.retain(|at, _| at.partition != partition);
        let order = taken.orders.remove(&partition);
        let (decided, credited) = (taken.decided.clone(), taken.credited.clone());
        let into = &mut self.ledgers[to];
        into.balances.extend(balances);
        into.offsets.extend(offsets);
        if let Some(order) = order {
            into.orders.insert(partition, order);
        }
        into.decided.extend(decided);
        into.credited.extend(credited);
        self.owner[partition as usize] = to;
        self.republish[from] = true;
        self.due[from].remove(&partition);
        self.republish[to] = true;
        let ends: Vec<(i32, i64)> = self
            .owned(to)
            .into_iter()
            .map(|owned| (owned, self.credits[owned as usize].len() as i64))
            .collect();
        self.due[to].extend(ends);
    }

    /// Every shard, having read everything, lets its floors jump; true when
    /// that published a mark (which the shards must then read).
    fn heartbeat(&mut self) -> bool {
        let mut published = false;
        for shard in 0..self.shards {
            let owned = self.owned(shard);
            // Caught up after a move: the shard's marks to its own
            // partitions, read back, are the batch that decides what its
            // live state can prove now (as `Shard::heartbeat` does).
            let caught_up = !self.due[shard].is_empty() && !self.catching_up(shard);
            if caught_up {
                self.due[shard].clear();
            }
            let publish = caught_up || std::mem::take(&mut self.republish[shard]);
            let tick = Tick {
                idle: &owned,
                publish: if publish { &owned } else { &[] },
                local: if self.local_credits { &owned } else { &[] },
                // A clock past every stamp: floors may jump anywhere.
                now_ms: u64::MAX,
                ..Tick::default()
            };
            let effects = process_batch_at(&self.ledgers[shard], &self.rules, &[], tick).unwrap();
            published |= !effects.marks.is_empty();
            self.commit(shard, &effects);
        }
        published
    }

    fn commit(&mut self, shard: usize, effects: &BatchEffects) {
        self.ledgers[shard].apply(effects);
        for output in &effects.outputs {
            match output {
                Output::Credit(credit) => {
                    self.credits[partition_of(&credit.to) as usize].push(Record {
                        key: credit.to.as_str().as_bytes().to_vec(),
                        value: wire::encode_credit(credit),
                    })
                }
                Output::Outcome(outcome) => self.outcomes.push(outcome.clone()),
                Output::DeadLetter(_) => {}
            }
        }
        // After the batch's credits, each on its partition, as a shard
        // sends them.
        for (destination, mark) in &effects.marks {
            self.credits[*destination as usize].push(Record {
                key: Vec::new(),
                value: wire::encode_mark(mark),
            });
        }
    }

    /// Credits published but not yet consumed by their shard.
    fn in_flight(&self) -> Money {
        let mut total = Money::ZERO;
        for partition in 0..PARTITIONS {
            let shard = self.owner[partition as usize];
            let at = InputPartition {
                source: Source::Credits,
                partition,
            };
            let next = self.ledgers[shard].offsets.get(&at).copied().unwrap_or(0) as usize;
            for record in &self.credits[partition as usize][next..] {
                match wire::decode_credits_record(&record.value).unwrap() {
                    // A local credit was applied when it was written.
                    CreditsRecord::Credit(credit) if !credit.local => {
                        total = total + credit.amount.money();
                    }
                    _ => {}
                }
            }
        }
        total
    }

    fn sum(&self) -> Money {
        self.ledgers.iter().map(MemoryLedger::sum).sum()
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        // 1. Conservation.
        prop_assert_eq!(self.sum() + self.in_flight(), Money::ZERO);
        // Ownership: a shard holds only accounts of the partitions it owns,
        // so no account's balance is ever on two shards, whatever partition
        // the transfers were written to.
        for (shard, ledger) in self.ledgers.iter().enumerate() {
            for account in ledger.balances.keys() {
                let owner = self.owner[partition_of(account) as usize];
                prop_assert_eq!(owner, shard, "{} held by shard {}", account, shard);
            }
        }
        // 2. Only `world` may be negative.
        for ledger in &self.ledgers {
            for (account, balance) in &ledger.balances {
                prop_assert!(
                    account.is_world() || *balance >= Money::ZERO,
                    "{} is {}",
                    account,
                    balance
                );
            }
        }
        Ok(())
    }

    /// Processes everything until no shard has anything left.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        loop {
            let mut progressed = false;
            for shard in 0..self.shards {
                if !self.unread(shard, 1).is_empty() {
                    let effects = self.run_shard(shard, usize::MAX);
                    self.commit(shard, &effects);
                    self.check_invariants()?;
                    progressed = true;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }
}

fn scenario() -> impl Strategy<Value = (usize, Vec<Step>)> {
    (1usize..=3, prop::collection::vec(step(), 1..120))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Invariants 1 and 2 hold after every committed batch, and at
    /// quiescence nothing is in flight and the sum is exactly zero.
    #[test]
    fn money_is_conserved_and_never_negative((shards, steps) in scenario(), local_credits: bool) {
        let mut cluster = Cluster::new(shards);
        cluster.local_credits = local_credits;
        for step in &steps {
            cluster.apply_step(step);
            cluster.check_invariants()?;
        }
        cluster.drain()?;
        prop_assert_eq!(cluster.in_flight(), Money::ZERO);
        prop_assert_eq!(cluster.sum(), Money::ZERO);
        // Every input record got exactly one outcome.
        let inputs: usize = cluster.transfers.iter().map(Vec::len).sum();
        prop_assert_eq!(cluster.outcomes.len(), inputs);
        // A transfer id is decided at most once, and a misrouted record is
        // refused, never decided.
        let mut decisions = BTreeMap::new();
        let misrouted = OutcomeKind::Rejected(RejectReason::Misrouted);
        for outcome in &cluster.outcomes {
            let decides = !matches!(outcome.kind, OutcomeKind::Duplicate) && outcome.kind != misrouted;
            if let (Some(id), true) = (outcome.transfer_id, decides) {
                if outcome.transfer.is_some() {
                    *decisions.entry(id).or_insert(0) += 1;
                }
            }
            if let Some(transfer) = &outcome.transfer {
                let owned = partition_of(&transfer.from) == outcome.partition;
                prop_assert_eq!(outcome.kind == misrouted, !owned, "{:?}", outcome);
            }
        }
        prop_assert!(decisions.values().all(|count| *count == 1));
    }

    /// Invariant 3: feeding any already-processed record again changes
    /// nothing (transfers come back `duplicate` or rejected again, credits
    /// are skipped).
    #[test]
    fn records_fed_twice_change_nothing((shards, steps) in scenario(), picks in prop::collection::vec(any::<prop::sample::Index>(), 1..20)) {
        let mut cluster = Cluster::new(shards);
        for step in &steps {
            cluster.apply_step(step);
        }
        cluster.drain()?;
        for pick in picks {
            let partition = pick.index(PARTITIONS as usize);
            let shard = partition % cluster.shards;
            for (source, topic) in [(Source::Transfers, &cluster.transfers), (Source::Credits, &cluster.credits)] {
                let records = &topic[partition];
                if records.is_empty() {
                    continue;
                }
                let offset = pick.index(records.len());
                let record = &records[offset];
                let input = InputRecord {
                    at: InputPartition { source, partition: partition as i32 },
                    offset: offset as i64,
                    key: Some(&record.key),
                    payload: Some(&record.value),
                };
                let effects = process_batch(&cluster.ledgers[shard], &rules(), &[input]).unwrap();
                prop_assert!(effects.balances.is_empty(), "balances changed: {:?}", effects.balances);
                prop_assert!(effects.decided.is_empty());
                prop_assert!(effects.credited.is_empty());
                prop_assert!(effects.credits_emitted().next().is_none());
            }
        }
    }

    /// Invariant 4: the same batch from the same state gives identical
    /// effects, and identical bytes once encoded.
    #[test]
    fn processing_is_deterministic((shards, steps) in scenario(), limit in 1usize..40) {
        let mut cluster = Cluster::new(shards);
        for step in &steps {
            cluster.apply_step(step);
        }
        for shard in 0..cluster.shards {
            let first = cluster.run_shard(shard, limit);
            let second = cluster.run_shard(shard, limit);
            prop_assert_eq!(&first, &second);
            prop_assert_eq!(encode_all(&first), encode_all(&second));
        }
    }
}

/// One step of an ordering scenario: only valid transfers, each created
/// one second after the one before, and batches of random sizes.
#[derive(Debug, Clone)]
enum OrderStep {
    Transfer {
        from: usize,
        to: usize,
        cents: i64,
    },
    Process {
        shard: usize,
        records: usize,
    },
    /// A rebalance: the partition moves to the shard, with its state.
    Move {
        partition: i32,
        shard: usize,
    },
}

fn order_step() -> impl Strategy<Value = OrderStep> {
    prop_oneof![
        3 => (0..ACCOUNTS, 1i64..50_000).prop_map(|(to, cents)| OrderStep::Transfer { from: ACCOUNTS, to, cents }),
        8 => (0..ACCOUNTS, 0..=ACCOUNTS, 1i64..40_000).prop_map(|(from, to, cents)| OrderStep::Transfer { from, to, cents }),
        6 => (0usize..3, 1usize..12).prop_map(|(shard, records)| OrderStep::Process { shard, records }),
        1 => (0..PARTITIONS, 0usize..3).prop_map(|(partition, shard)| OrderStep::Move { partition, shard }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Issue 17's rule: with holding on, every decision is the one the
    /// transfers give in the order they were created, whatever the number
    /// of shards, however the batches fall and wherever partitions move
    /// meanwhile. Nothing ends up held, and nothing is rejected for a
    /// shortage the order does not have.
    #[test]
    fn decisions_follow_the_order_the_transfers_were_created_in(
        shards in 1usize..=3,
        local_credits: bool,
        steps in prop::collection::vec(order_step(), 1..120),
    ) {
        let mut cluster = Cluster::with_rules(shards, rules().holding(u64::MAX));
        cluster.local_credits = local_credits;
        let mut created = Vec::new();
        for step in &steps {
            match *step {
                OrderStep::Transfer { from, to, cents } => {
                    let Ok(transfer) = Transfer::new(
                        TransferId(uuid::Uuid::from_u128(created.len() as u128 + 1)),
                        account(from),
                        account(to),
                        Amount::from_minor(cents).unwrap(),
                        Currency::EUR,
                        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(created.len() as i64),
                    ) else {
                        continue;
                    };
                    cluster.publish_transfer(&transfer.from, wire::encode_transfer(&transfer), None);
                    created.push(transfer);
                }
                OrderStep::Process { shard, records } => {
                    let shard = shard % cluster.shards;
                    let effects = cluster.run_shard(shard, records);
                    cluster.commit(shard, &effects);
                }
                OrderStep::Move { partition, shard } => {
                    cluster.move_partition(partition, shard % cluster.shards);
                }
            }
            cluster.check_invariants()?;
        }
        loop {
            cluster.drain()?;
            if !cluster.heartbeat() {
                break;
            }
        }
        for ledger in &cluster.ledgers {
            prop_assert!(ledger.orders.values().all(|order| order.held.is_empty()));
        }
        let mut balances: BTreeMap<AccountId, i64> = BTreeMap::new();
        let decided: BTreeMap<TransferId, OutcomeKind> = cluster
            .outcomes
            .iter()
            .map(|outcome| (outcome.transfer_id.unwrap(), outcome.kind))
            .collect();
        prop_assert_eq!(decided.len(), created.len());
        for transfer in &created {
            let cents = transfer.amount.minor();
            let balance = balances.entry(transfer.from.clone()).or_default();
            let expected = if transfer.from.is_world() || *balance >= cents {
                *balance -= cents;
                *balances.entry(transfer.to.clone()).or_default() += cents;
                OutcomeKind::Accepted
            } else {
                OutcomeKind::Rejected(RejectReason::InsufficientFunds)
            };
            prop_assert_eq!(decided[&transfer.id], expected, "{:?}", transfer);
        }
    }
}

fn encode_all(effects: &BatchEffects) -> Vec<Vec<u8>> {
    effects
        .outputs
        .iter()
        .map(|output| match output {
            Output::Outcome(outcome) => wire::encode_outcome(outcome),
            Output::Credit(credit) => wire::encode_credit(credit),
            Output::DeadLetter(letter) => letter.payload.clone(),
        })
        .collect()
}

/// Where a simulated shard crashes while handling one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    None,
    /// Before the sled write: nothing of the batch exists anywhere.
    BeforeSledWrite,
    /// sled has the batch and its pending record, Kafka does not.
    AfterSledWrite,
    /// Kafka committed; the pending record was not cleared.
    AfterKafkaCommit,
    /// sled has the batch, Kafka does not, and the directory is lost: a new
    /// one is restored from the changelog.
    LostDirectory,
    /// Kafka does not have the batch and sled's copy of one partition is
    /// stale (it holds the batch there): that partition alone is restored
    /// from the changelog, as a shard does with a partition the group gives
    /// it.
    StalePartition,
}

fn crash() -> impl Strategy<Value = Crash> {
    prop_oneof![
        3 => Just(Crash::None),
        1 => Just(Crash::BeforeSledWrite),
        1 => Just(Crash::AfterSledWrite),
        1 => Just(Crash::AfterKafkaCommit),
        1 => Just(Crash::LostDirectory),
        1 => Just(Crash::StalePartition),
    ]
}

/// Kafka's side of one shard: committed offsets, committed outputs (with
/// the partition of those written to one: marks) and the changelog.
#[derive(Default)]
struct SimulatedKafka {
    offsets: Offsets,
    outputs: Vec<(Option<i32>, Vec<u8>)>,
    changelog: Vec<Change>,
}

/// The directory is gone: a new, empty one is rebuilt from the changelog
/// (read in order, a few records at a time, as the shard does), and the
/// recovery rule must then find Kafka's offsets in it.
fn restore_elsewhere(
    dir: &mut tempfile::TempDir,
    store: Store,
    kafka: &SimulatedKafka,
) -> Result<Store, TestCaseError> {
    drop(store);
    *dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let mut restore = store.restore().unwrap();
    for chunk in kafka.changelog.chunks(7) {
        restore.apply(chunk.iter().cloned().collect()).unwrap();
    }
    restore.finish().unwrap();
    prop_assert!(!store.restore_unfinished());
    restart(dir.path(), store, kafka)
}

/// The batch in sled did not commit: it is undone, except on `partition`,
/// whose copy is made to hold it (a stale copy, as a shard has of a
/// partition another shard has moved on since), and that partition alone
/// is then restored from the changelog, the others left as they are.
fn restore_stale_partition(
    dir: &std::path::Path,
    mut store: Store,
    kafka: &SimulatedKafka,
    aborted: &[Change],
    partition: i32,
) -> Result<Store, TestCaseError> {
    let of = |changes: &[Change]| -> Vec<Change> {
        changes
            .iter()
            .filter(|(key, _)| store::key_partition(key, partition_of) == Some(partition))
            .cloned()
            .collect()
    };
    let committed = of(&kafka.changelog);
    store.undo_pending().unwrap();
    let mut stale = store
        .restore_partitions(&[partition], partition_of)
        .unwrap();
    stale.apply(committed.iter().cloned().collect()).unwrap();
    stale.apply(of(aborted).into_iter().collect()).unwrap();
    stale.finish().unwrap();
    let mut restore = store
        .restore_partitions(&[partition], partition_of)
        .unwrap();
    for chunk in committed.chunks(5) {
        restore.apply(chunk.iter().cloned().collect()).unwrap();
    }
    restore.finish().unwrap();
    prop_assert!(!store.restore_unfinished());
    restart(dir, store, kafka)
}

/// Reopens the store the way a restarted shard does and applies the
/// recovery decision.
fn restart(
    dir: &std::path::Path,
    store: Store,
    kafka: &SimulatedKafka,
) -> Result<Store, TestCaseError> {
    drop(store);
    let mut store = Store::open(dir, StoreOptions::default()).unwrap();
    let decision = recovery::decide(
        store.pending().map(|p| PendingOffsets {
            before: &p.offsets_before,
            after: &p.offsets_after,
        }),
        store.offsets(),
        &kafka.offsets,
    );
    match decision {
        Recovery::Normal => {}
        Recovery::KeepPending => store.clear_pending().unwrap(),
        Recovery::UndoPending => store.undo_pending().unwrap(),
        Recovery::Refuse(message) => return Err(TestCaseError::fail(message)),
    }
    prop_assert_eq!(store.offsets(), &kafka.offsets);
    prop_assert!(store.pending().is_none());
    Ok(store)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Invariant 5 and crash safety: one shard over a real sled directory,
    /// crashing at random protocol steps and recovering with the recovery
    /// rule, ends with exactly the state and outputs of a run without
    /// crashes.
    #[test]
    fn crashes_at_any_step_recover_to_the_committed_state(
        steps in prop::collection::vec(step(), 1..60),
        crashes in prop::collection::vec(crash(), 60),
        batch_records in 1usize..10,
    ) {
        // One shard owns every partition, so credits come back to it.
        let mut reference = Cluster::new(1);
        for step in &steps {
            if !matches!(step, Step::Process { .. }) {
                reference.apply_step(step);
            }
        }
        let transfers = reference.transfers.clone();

        let mut dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let mut kafka = SimulatedKafka::default();
        let mut crash_plan = crashes.into_iter().cycle();
        // Holding, so that held transfers and marks go through the store,
        // its undo and its reload too.
        let rules = rules().holding(u64::MAX);
        loop {
            // The batch comes from Kafka's committed offsets, as after a
            // restart the shard seeks there.
            prop_assert_eq!(store.offsets(), &kafka.offsets);
            let mut simulated = Cluster::with_rules(1, rules);
            simulated.transfers = transfers.clone();
            simulated.credits = vec![Vec::new(); PARTITIONS as usize];
            for (destination, bytes) in &kafka.outputs {
                match (destination, wire::decode_credits_record(bytes)) {
                    (Some(destination), Ok(CreditsRecord::Mark(_))) => {
                        simulated.credits[*destination as usize].push(Record { key: Vec::new(), value: bytes.clone() });
                    }
                    (None, Ok(CreditsRecord::Credit(credit))) => {
                        simulated.credits[partition_of(&credit.to) as usize].push(Record {
                            key: credit.to.as_str().as_bytes().to_vec(),
                            value: bytes.clone(),
                        });
                    }
                    _ => {}
                }
            }
            simulated.ledgers[0].offsets = kafka.offsets.clone();
            let unread = simulated.unread(0, batch_records);
            if unread.is_empty() {
                break;
            }
            let inputs: Vec<InputRecord<'_>> = unread
                .iter()
                .map(|(at, offset, record)| InputRecord { at: *at, offset: *offset, key: Some(&record.key), payload: Some(&record.value) })
                .collect();
            let effects = process_batch(&store, &rules, &inputs).unwrap();
            let crash = crash_plan.next().unwrap_or(Crash::None);
            if crash == Crash::BeforeSledWrite {
                store = restart(dir.path(), store, &kafka)?;
                continue;
            }
            let written = store.write_batch(&effects).unwrap();
            // Every change belongs to a partition, where the changelog
            // carries it.
            for (key, _) in &written.changes {
                let partition = store::key_partition(key, partition_of);
                prop_assert!(partition.is_some_and(|p| (0..PARTITIONS).contains(&p)), "{:?}", key);
            }
            match crash {
                Crash::AfterSledWrite => {
                    store = restart(dir.path(), store, &kafka)?;
                    continue;
                }
                Crash::LostDirectory => {
                    store = restore_elsewhere(&mut dir, store, &kafka)?;
                    continue;
                }
                Crash::StalePartition => {
                    let partition = written.changes.len() as i32 % PARTITIONS;
                    store = restore_stale_partition(dir.path(), store, &kafka, &written.changes, partition)?;
                    continue;
                }
                _ => {}
            }
            // The Kafka commit: outputs and offsets together.
            kafka.outputs.extend(effects.outputs.iter().filter(|o| !matches!(o, Output::DeadLetter(_))).map(|o| match o {
                Output::Outcome(outcome) => (None, wire::encode_outcome(outcome)),
                Output::Credit(credit) => (None, wire::encode_credit(credit)),
                Output::DeadLetter(_) => unreachable!(),
            }));
            kafka.outputs.extend(effects.marks.iter().map(|(to, mark)| (Some(*to), wire::encode_mark(mark))));
            kafka.offsets.extend(effects.offsets.iter().map(|(k, v)| (*k, *v)));
            kafka.changelog.extend(written.changes);
            if crash == Crash::AfterKafkaCommit {
                store = restart(dir.path(), store, &kafka)?;
                continue;
            }
            store.mark_committed();
        }

        // The same input without crashes, batch by batch in memory.
        let mut clean = Cluster::with_rules(1, rules);
        clean.transfers = transfers;
        let mut clean_outputs = Vec::new();
        loop {
            let effects = clean.run_shard(0, batch_records);
            if effects.offsets.is_empty() {
                break;
            }
            clean_outputs.extend(encode_all(&effects).into_iter().zip(&effects.outputs).filter(|(_, o)| !matches!(o, Output::DeadLetter(_))).map(|(bytes, _)| (None, bytes)));
            clean_outputs.extend(effects.marks.iter().map(|(to, mark)| (Some(*to), wire::encode_mark(mark))));
            clean.commit(0, &effects);
        }
        prop_assert_eq!(&kafka.outputs, &clean_outputs);
        let expected = &clean.ledgers[0];
        let reader = store.reader();
        let actual: BTreeMap<AccountId, Money> = reader.balances().unwrap().into_iter().collect();
        prop_assert_eq!(&actual, &expected.balances);
        // An export pages through the same balances (pages of 3 here).
        let mut paged: Vec<(AccountId, Money)> = Vec::new();
        loop {
            let page = reader.balances_page(paged.last().map(|(account, _)| account), 3).unwrap();
            let last_page = page.len() < 3;
            paged.extend(page);
            if last_page {
                break;
            }
        }
        prop_assert_eq!(paged, reader.balances().unwrap());
        prop_assert_eq!(store.offsets(), &expected.offsets);
        for (partition, order) in &expected.orders {
            prop_assert_eq!(&store.order(*partition), order);
        }
        for id in expected.decided.keys() {
            prop_assert_eq!(store.decision(*id), expected.decided.get(id).copied());
        }
        prop_assert_eq!(reader.stats().unwrap().sum, Money::ZERO);
    }
}

#[test]
fn a_reopened_store_remembers_decisions_and_serves_committed_reads_only() {
    let dir = tempfile::tempdir().unwrap();
    let deposit = Transfer::new(
        TransferId::new_random(),
        AccountId::world(),
        account(0),
        Amount::parse("10.00").unwrap(),
        Currency::EUR,
        OffsetDateTime::UNIX_EPOCH,
    )
    .unwrap();
    let bytes = wire::encode_transfer(&deposit);
    let input = InputRecord {
        at: InputPartition {
            source: Source::Transfers,
            partition: 0,
        },
        offset: 0,
        key: None,
        payload: Some(&bytes),
    };
    let mut store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    // One partition: it owns every account.
    let effects = process_batch(&store, &Rules::new(1), &[input]).unwrap();
    store.write_batch(&effects).unwrap();
    // Written to sled, not yet committed in Kafka: readers see nothing.
    let reader = store.reader();
    assert_eq!(reader.balance(&AccountId::world()).unwrap(), None);
    assert_eq!(reader.transfer(deposit.id).decision, None);
    store.mark_committed();
    assert_eq!(
        reader.balance(&AccountId::world()).unwrap(),
        Some(Money(-1000))
    );
    drop(reader);
    drop(store);

    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(store.decision(deposit.id).is_some());
    // The pending record survives the restart until recovery resolves it;
    // until then the reopened store serves the state before it.
    assert!(store.pending().is_some());
    assert_eq!(store.reader().balance(&AccountId::world()).unwrap(), None);
}

#[test]
fn the_idempotency_window_forgets_the_oldest_batches_alike_in_memory_and_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        idempotency_window: 3,
    };
    let mut store = Store::open(dir.path(), options).unwrap();
    let mut ids = Vec::new();
    let mut changelog: Vec<Change> = Vec::new();
    for offset in 0..6 {
        let transfer = Transfer::new(
            TransferId::new_random(),
            AccountId::world(),
            account(0),
            Amount::parse("1.00").unwrap(),
            Currency::EUR,
            OffsetDateTime::UNIX_EPOCH,
        )
        .unwrap();
        ids.push(transfer.id);
        let bytes = wire::encode_transfer(&transfer);
        let input = InputRecord {
            at: InputPartition {
                source: Source::Transfers,
                partition: 0,
            },
            offset,
            key: None,
            payload: Some(&bytes),
        };
        // One partition: it owns every account.
        let effects = process_batch(&store, &Rules::new(1), &[input]).unwrap();
        changelog.extend(store.write_batch(&effects).unwrap().changes);
        store.mark_committed();
    }
    let remembered: Vec<bool> = ids.iter().map(|id| store.decision(*id).is_some()).collect();
    assert_eq!(remembered, [false, false, false, true, true, true]);
    store.clear_pending().unwrap();
    drop(store);
    let store = Store::open(dir.path(), options).unwrap();
    let reloaded: Vec<bool> = ids.iter().map(|id| store.decision(*id).is_some()).collect();
    assert_eq!(reloaded, remembered);

    // The changelog forgets them too: the batches after those that evicted
    // them wrote tombstones, and a store restored from it remembers the
    // same ids.
    let restored_dir = tempfile::tempdir().unwrap();
    let mut restored = Store::open(restored_dir.path(), options).unwrap();
    let mut restore = restored.restore().unwrap();
    restore.apply(changelog.iter().cloned().collect()).unwrap();
    restore.finish().unwrap();
    let from_changelog: Vec<bool> = ids
        .iter()
        .map(|id| restored.decision(*id).is_some())
        .collect();
    assert_eq!(from_changelog, remembered);
    let compacted: BTreeMap<&[u8], bool> = changelog
        .iter()
        .map(|(key, value)| (key.as_slice(), value.is_some()))
        .collect();
    let live_id_batches = compacted
        .iter()
        .filter(|(key, live)| key.starts_with(b"i:") && **live)
        .count();
    // The window's three, and the last one evicted: its key goes with the
    // next batch, as on disk.
    assert_eq!(live_id_batches, 4, "{compacted:?}");
}

fn deposit_of(cents: i64, to: &AccountId) -> Transfer {
    Transfer::new(
        TransferId::new_random(),
        AccountId::world(),
        to.clone(),
        Amount::from_minor(cents).unwrap(),
        Currency::EUR,
        OffsetDateTime::UNIX_EPOCH,
    )
    .unwrap()
}

#[test]
fn a_transfer_outside_its_owners_partition_is_rejected_as_misrouted_and_decides_nothing() {
    let deposit = deposit_of(500, &account(0));
    let bytes = wire::encode_transfer(&deposit);
    let owner = partition_of(&AccountId::world());
    let elsewhere = (owner + 1) % PARTITIONS;
    let record = |partition| InputRecord {
        at: InputPartition {
            source: Source::Transfers,
            partition,
        },
        offset: 0,
        // The key is not what counts: only where the record sits.
        key: Some(b"world"),
        payload: Some(&bytes),
    };
    let effects = process_batch(&MemoryLedger::default(), &rules(), &[record(elsewhere)]).unwrap();
    assert!(effects.balances.is_empty(), "{:?}", effects.balances);
    assert!(effects.decided.is_empty());
    assert!(effects.credits_emitted().next().is_none());
    assert_eq!(effects.counts.misrouted, 1);
    assert_eq!(effects.counts.rejected, 1);
    let [Output::Outcome(outcome)] = effects.outputs.as_slice() else {
        panic!("one outcome and nothing else: {:?}", effects.outputs);
    };
    assert_eq!(outcome.kind, OutcomeKind::Rejected(RejectReason::Misrouted));
    assert_eq!(outcome.transfer.as_ref(), Some(&deposit));
    let detail = outcome.detail.as_deref().unwrap();
    assert!(
        detail.contains(&format!("belongs to partition {owner}, not {elsewhere}")),
        "{detail}"
    );

    // The same record where it belongs is decided normally afterwards.
    let mut ledger = MemoryLedger::default();
    ledger.apply(&effects);
    let effects = process_batch(&ledger, &rules(), &[record(owner)]).unwrap();
    assert_eq!(effects.counts.accepted, 1);
    assert_eq!(
        effects.decided,
        vec![(owner, deposit.id, Decision::Accepted)]
    );
}

#[test]
fn a_credit_outside_its_owners_partition_refuses_the_whole_batch() {
    let deposit = deposit_of(700, &account(2));
    let credit = wire::encode_credit(&ledger_core::domain::Credit::of(&deposit));
    let owner = partition_of(&account(2));
    let elsewhere = (owner + 1) % PARTITIONS;
    let transfer = wire::encode_transfer(&deposit);
    let records = [
        InputRecord {
            at: InputPartition {
                source: Source::Transfers,
                partition: partition_of(&AccountId::world()),
            },
            offset: 0,
            key: None,
            payload: Some(&transfer),
        },
        InputRecord {
            at: InputPartition {
                source: Source::Credits,
                partition: elsewhere,
            },
            offset: 7,
            key: None,
            payload: Some(&credit),
        },
    ];
    let error = process_batch(&MemoryLedger::default(), &rules(), &records).unwrap_err();
    assert_eq!(error.owner, owner);
    assert_eq!(error.account, account(2));
    assert_eq!(error.transfer_id, deposit.id);
    let message = error.to_string();
    assert!(
        message.contains(&format!("credits/{elsewhere}@7"))
            && message.contains("belongs to partition"),
        "{message}"
    );
}
