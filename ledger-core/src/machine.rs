//! The pure ledger state machine: a batch of input records and a read-only
//! view of the state in, the state changes and output records out.
//!
//! No I/O and no clock: the same batch against the same state gives the same
//! effects, byte for byte once encoded. That is what lets a shard redo a batch
//! after an aborted transaction and get exactly the records it would have
//! written the first time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::{
    AccountId, Credit, Currency, Decision, Money, OutcomeKind, RejectReason, Transfer, TransferId,
};
use crate::hash::{HashMap, HashSet};
use crate::order::{Held, Mark, OrderKey, PartitionOrder};
use crate::routing;
use crate::wire::{self, CreditsRecord, DecodeError, Outcome};

/// The two input topics of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `transactions`: transfers, keyed by source account.
    Transfers,
    /// `ledger-credits`: credits, keyed by destination account.
    Credits,
}

impl Source {
    pub fn code(self) -> u8 {
        match self {
            Source::Transfers => b't',
            Source::Credits => b'c',
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            b't' => Some(Source::Transfers),
            b'c' => Some(Source::Credits),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Source::Transfers => "transfers",
            Source::Credits => "credits",
        }
    }
}

/// One partition of one input topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InputPartition {
    pub source: Source,
    pub partition: i32,
}

impl std::fmt::Display for InputPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.source.name(), self.partition)
    }
}

/// Next offset to read (last consumed + 1) per input partition.
pub type Offsets = BTreeMap<InputPartition, i64>;

/// One consumed record, borrowed from the consumer's buffers.
#[derive(Debug, Clone, Copy)]
pub struct InputRecord<'a> {
    pub at: InputPartition,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    /// `None` for a tombstone (a record without a value).
    pub payload: Option<&'a [u8]>,
}

/// Read access to the committed state the batch starts from.
pub trait LedgerView {
    /// The account's balance; zero when the account has never been seen.
    fn balance(&self, account: &AccountId) -> Money;
    /// How a transfer id was decided, if it was (within the idempotency window).
    fn decision(&self, id: TransferId) -> Option<Decision>;
    /// Whether the credit of this transfer was already applied here.
    fn credited(&self, id: TransferId) -> bool;
    /// The order state of a partition number (see [`crate::order`]).
    fn order(&self, partition: i32) -> PartitionOrder;
}

/// The ledger's fixed rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// The one currency the ledger keeps; any other is `currency_mismatch`.
    pub currency: Currency,
    /// Partitions of `transactions`, and of `ledger-credits`, which has as
    /// many: an account belongs to partition `murmur2(account) mod
    /// partitions` of both ([`routing::partition_for`]), and a record
    /// anywhere else is not applied.
    pub partitions: i32,
    /// How long a transfer that lacks funds may wait for credits ordered
    /// before it that may still arrive; then it is rejected `hold_expired`.
    /// 0: it is rejected at once (`hold_expired` unless the shortage is
    /// already proven).
    pub hold_max_ms: u64,
}

impl Rules {
    /// The ledger's currency (EUR) over `partitions` input partitions,
    /// holding nothing (`hold_max_ms` 0; see [`Rules::holding`]).
    pub fn new(partitions: i32) -> Self {
        Rules {
            currency: Currency::EUR,
            partitions,
            hold_max_ms: 0,
        }
    }

    /// The same rules, holding transfers short of funds up to `hold_max_ms`.
    pub fn holding(self, hold_max_ms: u64) -> Self {
        Rules {
            hold_max_ms,
            ..self
        }
    }

    /// The partition that owns `account` in both input topics.
    pub fn partition_of(&self, account: &AccountId) -> i32 {
        routing::partition_for(account.as_str().as_bytes(), self.partitions)
    }

    /// `partition`'s marks as its order state stands, one for each
    /// `ledger-credits` partition (see [`PartitionOrder::marks`]).
    pub fn marks(&self, partition: i32, state: &PartitionOrder) -> Option<Vec<Mark>> {
        state.marks(partition, self.partitions, |account| {
            self.partition_of(account)
        })
    }
}

/// A credit found on a partition that does not own its destination account.
/// Shards write credits with the murmur2 partitioner, so this is a bug in a
/// shard (or a foreign writer on an internal topic), never user input:
/// applying it would put the account's money on a shard that does not own
/// it, so the batch is refused before anything of it is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "credit of transfer {transfer_id} at {at}@{offset} is for account {account}, which \
     belongs to partition {owner}: a credit on the wrong partition is a bug in the shard that \
     wrote it; nothing of this batch was applied"
)]
pub struct MisroutedCredit {
    pub at: InputPartition,
    pub offset: i64,
    pub transfer_id: TransferId,
    pub account: AccountId,
    pub owner: i32,
}

/// A record that could not be decoded, for `ledger-dlq`: the original key and
/// bytes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub at: InputPartition,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub reason: RejectReason,
    pub detail: String,
}

/// A record to publish inside the batch's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// To `ledger-results`.
    Outcome(Outcome),
    /// To `ledger-credits`, keyed by the destination account.
    Credit(Credit),
    /// To `ledger-dlq`.
    DeadLetter(DeadLetter),
}

/// Counts of what a batch did, for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub accepted: u64,
    pub rejected: u64,
    pub duplicate: u64,
    pub credits_applied: u64,
    pub credits_duplicate: u64,
    pub dead_letters: u64,
    /// Transfers rejected as `misrouted` (also counted in `rejected`).
    pub misrouted: u64,
    /// Transfers newly held for funds.
    pub held: u64,
    /// Held transfers decided (also counted as accepted or rejected).
    pub released: u64,
    /// Transfers rejected `hold_expired` (also counted in `rejected`).
    pub hold_expired: u64,
    /// Transfers that arrived after a later one of their partition and were
    /// re-timed.
    pub retimed: u64,
}

/// Everything a batch changes and emits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchEffects {
    /// New balance of every account the batch touched, in account order so
    /// that the store writes them in a deterministic order.
    pub balances: BTreeMap<AccountId, Money>,
    /// Transfer ids decided by this batch, in input order, each with the
    /// partition it arrived on: that partition's state remembers it.
    pub decided: Vec<(i32, TransferId, Decision)>,
    /// Transfer ids whose credit this batch applied, in input order, each
    /// with the partition of the account credited.
    pub credited: Vec<(i32, TransferId)>,
    /// Next offset of every input partition the batch read from.
    pub offsets: Offsets,
    /// New order state of every partition number the batch touched.
    pub orders: BTreeMap<i32, PartitionOrder>,
    /// Marks to publish, each on the `ledger-credits` partition it is for
    /// (`Mark::partition` is the partition it speaks for), after the
    /// batch's credits (same transaction).
    pub marks: Vec<(i32, Mark)>,
    pub outputs: Vec<Output>,
    pub counts: BatchCounts,
}

impl BatchEffects {
    /// Net change of the sum of this shard's balances: minus the credits
    /// emitted, plus the credits applied. Conservation across shards says
    /// these deltas, summed with the credits in flight, stay zero.
    pub fn credits_emitted(&self) -> impl Iterator<Item = &Credit> {
        self.outputs.iter().filter_map(|output| match output {
            Output::Credit(credit) => Some(credit),
            _ => None,
        })
    }
}

/// What a batch needs from outside the input: the clock, for
/// `hold_max_ms` and idle floors, and what the shard knows about its
/// partitions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tick<'a> {
    /// The shard's clock, ms since the epoch. Idle floors do not jump past
    /// it; past the year 9999 it limits nothing.
    pub now_ms: u64,
    /// Partitions whose `transactions` partition has nothing left to read
    /// (no record and no open transaction): their floor may jump.
    pub idle: &'a [i32],
    /// Partitions whose mark must be published even if unchanged (after a
    /// restart, or to wake a held transfer whose time is up).
    pub publish: &'a [i32],
    /// Partitions this shard owns: a credit to one of their accounts is
    /// applied at once, in this batch, and its record marked `local`, so
    /// that a chain of payments on one shard resolves in one batch instead
    /// of one credits round trip per link.
    pub local: &'a [i32],
    /// The shard has not yet read every credit that reached its own
    /// partitions before it took them (a group assignment moved some): a
    /// credit between two of them may still wait on `ledger-credits`, sent
    /// when they had different owners, so their live state proves no
    /// shortage. The marks read prove it meanwhile, as between shards.
    pub catching_up: bool,
}

/// Runs the batch at time zero, with no partition idle: for tests and
/// tools that feed the machine themselves.
///
/// # Errors
///
/// As [`process_batch_at`].
pub fn process_batch(
    view: &impl LedgerView,
    rules: &Rules,
    records: &[InputRecord<'_>],
) -> Result<BatchEffects, MisroutedCredit> {
    process_batch_at(view, rules, records, Tick::default())
}

/// Runs the batch. Pure: reads `view`, never writes it.
///
/// Held transfers are decided only in a batch with records: its offsets
/// move, and the recovery rule can then tell whether it committed. A batch
/// without records only moves idle floors and publishes marks.
///
/// # Errors
///
/// A credit that sits on a partition not owning its destination account
/// refuses the whole batch (see [`MisroutedCredit`]).
pub fn process_batch_at(
    view: &impl LedgerView,
    rules: &Rules,
    records: &[InputRecord<'_>],
    tick: Tick<'_>,
) -> Result<BatchEffects, MisroutedCredit> {
    let mut batch = Batch {
        view,
        rules,
        tick,
        balances: HashMap::default(),
        decided_here: HashMap::default(),
        credited_here: HashMap::default(),
        orders: BTreeMap::new(),
        effects: BatchEffects::default(),
    };
    for record in records {
        match record.at.source {
            Source::Transfers => batch.transfer(record),
            Source::Credits => batch.credit(record)?,
        }
        let next = batch.effects.offsets.entry(record.at).or_insert(0);
        *next = (*next).max(record.offset + 1);
    }
    if !records.is_empty() {
        batch.release();
    }
    let wake = batch.jump_idle();
    for partition in tick.publish {
        batch.order(*partition);
    }
    let mut effects = batch.effects;
    for (partition, mut order) in batch.orders {
        order.state.prune();
        let again = tick.publish.contains(&partition) || wake.contains(&partition);
        effects
            .marks
            .extend(order.marks_to_send(partition, rules, &tick, again));
        effects.orders.insert(partition, order.state);
    }
    effects.balances = batch.balances.into_iter().collect();
    for (account, balance) in &effects.balances {
        // Invariant 2, checked on every state the machine produces: a bug
        // here must stop the shard, never reach the ledger.
        assert!(
            account.is_world() || *balance >= Money::ZERO,
            "invariant violated: account {account} would go negative ({balance})"
        );
    }
    Ok(effects)
}

/// A partition's order state while the batch changes it.
struct Ordering {
    state: PartitionOrder,
    /// The marks of the state the batch started from, by destination.
    published: Option<Vec<Mark>>,
    /// Accounts with a held transfer, and held ids.
    held_accounts: HashSet<AccountId>,
    held_ids: HashSet<TransferId>,
    /// The first held transfer that pays each account: what holds back
    /// that account's decisions (see [`PartitionOrder::marks`]).
    open: HashMap<AccountId, OrderKey>,
}

impl Ordering {
    /// The marks of `partition` to send at the end of the batch, with the
    /// `ledger-credits` partition each goes to: those that changed, to the
    /// other shards' partitions; all of them, this shard's own included,
    /// when `again`.
    fn marks_to_send(
        &self,
        partition: i32,
        rules: &Rules,
        tick: &Tick<'_>,
        again: bool,
    ) -> Vec<(i32, Mark)> {
        // This shard's own partitions have the live state instead, and read
        // a mark of theirs only when asked to publish it: reading it back
        // is what wakes a held transfer whose time is up.
        let all_local = (0..rules.partitions).all(|p| tick.local.contains(&p));
        if all_local && !again {
            return Vec::new();
        }
        let marks = rules.marks(partition, &self.state).unwrap_or_default();
        (0..)
            .zip(marks)
            .filter(|(destination, mark)| {
                let before = self
                    .published
                    .as_ref()
                    .and_then(|marks| marks.get(*destination as usize));
                again || (!tick.local.contains(destination) && before != Some(mark))
            })
            .collect()
    }
}

/// What a funds decision came to.
enum Funds {
    Decided(Decision),
    Wait,
}

struct Batch<'v, V> {
    view: &'v V,
    rules: &'v Rules,
    tick: Tick<'v>,
    balances: HashMap<AccountId, Money>,
    decided_here: HashMap<TransferId, Decision>,
    credited_here: HashMap<TransferId, ()>,
    orders: BTreeMap<i32, Ordering>,
    effects: BatchEffects,
}

impl<V: LedgerView> Batch<'_, V> {
    fn balance(&self, account: &AccountId) -> Money {
        match self.balances.get(account) {
            Some(balance) => *balance,
            None => self.view.balance(account),
        }
    }

    fn add(&mut self, account: &AccountId, delta: Money) {
        let balance = self.balance(account) + delta;
        self.balances.insert(account.clone(), balance);
    }

    fn decision(&self, id: TransferId) -> Option<Decision> {
        self.decided_here
            .get(&id)
            .copied()
            .or_else(|| self.view.decision(id))
    }

    /// Moves the floors of idle partitions (see `PartitionOrder::jump`).
    /// Returns the partitions whose marks must also go to this shard's own
    /// partitions: a jump may prove shortages held here, but only a batch
    /// with records decides, and reading those marks back is that batch.
    fn jump_idle(&mut self) -> Vec<i32> {
        let tick = self.tick;
        let now =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(tick.now_ms) * 1_000_000).ok();
        // The newest floor of this shard's own partitions counts too: they
        // send each other no marks.
        let local_floor = tick
            .local
            .iter()
            .filter_map(|partition| self.order(*partition).state.floor)
            .max();
        let mut jumped = Vec::new();
        for partition in tick.idle {
            if self.order(*partition).state.jump(now, local_floor) {
                jumped.push(*partition);
            }
        }
        let held_here = tick
            .local
            .iter()
            .any(|partition| !self.order(*partition).state.held.is_empty());
        if !held_here {
            jumped.clear();
        }
        jumped
    }

    fn order(&mut self, partition: i32) -> &mut Ordering {
        let view = self.view;
        let rules = self.rules;
        self.orders.entry(partition).or_insert_with(|| {
            let state = view.order(partition);
            let (held_accounts, held_ids) = state.held_index();
            let mut open = HashMap::default();
            for held in &state.held {
                open.entry(held.transfer.to.clone()).or_insert(held.key);
            }
            Ordering {
                published: rules.marks(partition, &state),
                state,
                held_accounts,
                held_ids,
                open,
            }
        })
    }

    fn transfer(&mut self, record: &InputRecord<'_>) {
        let Some(transfer) = self.decode_or_reject(record) else {
            return;
        };
        let partition = record.at.partition;
        let owner = self.rules.partition_of(&transfer.from);
        if owner != partition {
            self.reject_misrouted(record, transfer, owner);
            return;
        }
        let held_here = self.order(partition).held_ids.contains(&transfer.id);
        if held_here || self.decision(transfer.id).is_some() {
            self.outcome(
                record,
                Some(transfer.id),
                OutcomeKind::Duplicate,
                None,
                Some(transfer),
            );
            return;
        }
        let order = self.order(partition);
        let key = OrderKey::after(order.state.floor, &transfer);
        order.state.floor = Some(key);
        if key.at != transfer.created_at {
            self.effects.counts.retimed += 1;
        }
        let held = Held {
            key,
            transfer,
            offset: record.offset,
            since_ms: self.tick.now_ms,
        };
        let behind_held = self
            .order(partition)
            .held_accounts
            .contains(&held.transfer.from);
        let funds = if held.transfer.currency != self.rules.currency {
            Funds::Decided(Decision::Rejected(RejectReason::CurrencyMismatch))
        } else if behind_held {
            Funds::Wait
        } else {
            self.funds(partition, &held)
        };
        match funds {
            Funds::Decided(decision) => self.decide(record.at.partition, held, decision),
            Funds::Wait => {
                self.effects.counts.held += 1;
                let order = self.order(partition);
                order.held_accounts.insert(held.transfer.from.clone());
                order.held_ids.insert(held.transfer.id);
                let order = self.order(partition);
                order
                    .open
                    .entry(held.transfer.to.clone())
                    .or_insert(held.key);
                order.state.held.push(held);
            }
        }
    }

    /// Whether the source can pay, counting the credits ordered before the
    /// transfer and no other; or that this is not known yet.
    fn funds(&mut self, partition: i32, held: &Held) -> Funds {
        let transfer = &held.transfer;
        if transfer.from.is_world() {
            return Funds::Decided(Decision::Accepted);
        }
        let balance = self.balance(&transfer.from);
        let later = self
            .order(partition)
            .state
            .credits_after(&transfer.from, held.key);
        if balance - later >= transfer.amount.money() {
            return Funds::Decided(Decision::Accepted);
        }
        if self.proven(partition, &transfer.from, held.key) {
            return Funds::Decided(Decision::Rejected(RejectReason::InsufficientFunds));
        }
        if self.tick.now_ms.saturating_sub(held.since_ms) >= self.rules.hold_max_ms {
            self.effects.counts.hold_expired += 1;
            return Funds::Decided(Decision::Rejected(RejectReason::HoldExpired));
        }
        Funds::Wait
    }

    /// Whether no credit to `account` (of `partition`) ordered before
    /// `key` can still come. From a partition this shard owns too, its
    /// state says so now (unless it is catching up): its credits to local
    /// partitions are applied as they are made. From the others, the marks
    /// read on `partition`'s credits say so.
    fn proven(&mut self, partition: i32, account: &AccountId, key: OrderKey) -> bool {
        let local = self.tick.local;
        let live = !self.tick.catching_up;
        (0..self.rules.partitions).all(|source| {
            if live && local.contains(&source) && local.contains(&partition) {
                self.live_passed(source, account, key)
            } else {
                let marks = &self.order(partition).state.marks;
                marks
                    .get(&source)
                    .is_some_and(|mark| mark.passed(account, key))
            }
        })
    }

    /// What a local partition's mark would say now: its floor has passed
    /// `key`, and none of its undecided held transfers ordered before
    /// `key` pays `account`. During a release pass, which goes in key
    /// order, the transfers not yet visited come after the one being
    /// decided and do not count: `open` then holds those that had to wait.
    fn live_passed(&mut self, source: i32, account: &AccountId, key: OrderKey) -> bool {
        let order = self.order(source);
        order.state.floor.is_some_and(|floor| key <= floor)
            && order.open.get(account).is_none_or(|open| key <= *open)
    }

    /// Decides the held transfers that can be, of every partition the batch
    /// touched, in key order across them all: a transfer released here may
    /// fund, with a local credit, one ordered after it, reached later in
    /// the same pass. An account's later transfers wait behind its first
    /// undecided one.
    fn release(&mut self) {
        // Every local partition takes part: its held transfers count for
        // `live_low`, and may be decidable now.
        for partition in self.tick.local {
            self.order(*partition);
        }
        // Rebuilt as the pass goes: see `live_passed`.
        for order in self.orders.values_mut() {
            order.open.clear();
        }
        // Held transfers stay in their partition's state until the pass is
        // over: a credit applied meanwhile must still be kept for those
        // ordered before it (see `PartitionOrder::note_credit`).
        let mut waiting: Vec<(OrderKey, i32, usize)> = Vec::new();
        for (partition, order) in &self.orders {
            waiting.extend(
                order
                    .state
                    .held
                    .iter()
                    .enumerate()
                    .map(|(index, held)| (held.key, *partition, index)),
            );
        }
        waiting.sort_unstable();
        // Accounts belong to one partition each: one set serves them all.
        let mut blocked: HashSet<AccountId> = HashSet::default();
        let mut released: HashSet<(i32, usize)> = HashSet::default();
        for (_, partition, index) in waiting {
            let held = self.order(partition).state.held[index].clone();
            if blocked.contains(&held.transfer.from) {
                let order = self.order(partition);
                order
                    .open
                    .entry(held.transfer.to.clone())
                    .or_insert(held.key);
                continue;
            }
            match self.funds(partition, &held) {
                Funds::Decided(decision) => {
                    self.effects.counts.released += 1;
                    released.insert((partition, index));
                    self.order(partition).held_ids.remove(&held.transfer.id);
                    self.decide(partition, held, decision);
                }
                Funds::Wait => {
                    let order = self.order(partition);
                    order
                        .open
                        .entry(held.transfer.to.clone())
                        .or_insert(held.key);
                    blocked.insert(held.transfer.from);
                }
            }
        }
        for (partition, order) in &mut self.orders {
            let mut index = 0;
            order.state.held.retain(|_| {
                index += 1;
                !released.contains(&(*partition, index - 1))
            });
            order.held_accounts = order
                .state
                .held
                .iter()
                .map(|held| held.transfer.from.clone())
                .collect();
        }
    }

    fn decide(&mut self, partition: i32, held: Held, decision: Decision) {
        let Held {
            key,
            transfer,
            offset,
            ..
        } = held;
        if decision == Decision::Accepted {
            self.add(&transfer.from, Money::ZERO - transfer.amount.money());
            let mut credit = Credit::at(&transfer, key.at);
            let destination = self.rules.partition_of(&credit.to);
            if self.tick.local.contains(&destination) {
                credit.local = true;
                self.apply_credit(destination, &credit);
            }
            self.effects.outputs.push(Output::Credit(credit));
        }
        self.decided_here.insert(transfer.id, decision);
        self.effects
            .decided
            .push((partition, transfer.id, decision));
        let effective_at = (key.at != transfer.created_at).then_some(key.at);
        self.push_outcome(Outcome {
            transfer_id: Some(transfer.id),
            kind: decision.into(),
            detail: None,
            transfer: Some(transfer),
            effective_at,
            partition,
            offset,
        });
    }

    /// The record's transfer; or, when it does not decode, its dead letter
    /// and its rejection. An undecodable record decides nothing: its id, if
    /// any, is not trusted, so a corrected resubmission is still processed.
    fn decode_or_reject(&mut self, record: &InputRecord<'_>) -> Option<Transfer> {
        let decoded = match record.payload {
            Some(bytes) => wire::decode_transfer(bytes),
            None => Err(DecodeError {
                reason: RejectReason::Malformed,
                detail: "record has no value".to_owned(),
                id: None,
            }),
        };
        match decoded {
            Ok(transfer) => Some(transfer),
            Err(error) => {
                self.dead_letter(record, record.payload.unwrap_or_default(), &error);
                self.outcome(
                    record,
                    error.id,
                    OutcomeKind::Rejected(error.reason),
                    Some(error.detail),
                    None,
                );
                None
            }
        }
    }

    /// Checked before anything else: this shard may not own the source
    /// account, so its balance and decided ids say nothing about this
    /// transfer. No id is decided either: the id is not trusted, and the
    /// owning partition may still see it, correctly.
    fn reject_misrouted(&mut self, record: &InputRecord<'_>, transfer: Transfer, owner: i32) {
        self.effects.counts.misrouted += 1;
        let detail = format!(
            "account {} belongs to partition {owner}, not {}: write transfers keyed by \
             their source account with the murmur2 partitioner",
            transfer.from, record.at.partition
        );
        self.outcome(
            record,
            Some(transfer.id),
            OutcomeKind::Rejected(RejectReason::Misrouted),
            Some(detail),
            Some(transfer),
        );
    }

    fn credit(&mut self, record: &InputRecord<'_>) -> Result<(), MisroutedCredit> {
        let decoded = match record.payload {
            Some(bytes) => wire::decode_credits_record(bytes),
            None => Err(DecodeError {
                reason: RejectReason::Malformed,
                detail: "credit has no value".to_owned(),
                id: None,
            }),
        };
        let credit = match decoded {
            Ok(CreditsRecord::Credit(credit)) => credit,
            Ok(CreditsRecord::Mark(mark)) => {
                self.order(record.at.partition).state.read_mark(mark);
                return Ok(());
            }
            Err(error) => {
                self.dead_letter(record, record.payload.unwrap_or_default(), &error);
                return Ok(());
            }
        };
        let owner = self.rules.partition_of(&credit.to);
        if owner != record.at.partition {
            return Err(MisroutedCredit {
                at: record.at,
                offset: record.offset,
                transfer_id: credit.transfer_id,
                account: credit.to,
                owner,
            });
        }
        // Applied already, in the transaction that wrote it.
        if credit.local {
            return Ok(());
        }
        let id = credit.transfer_id;
        if self.credited_here.contains_key(&id) || self.view.credited(id) {
            self.effects.counts.credits_duplicate += 1;
            return Ok(());
        }
        self.apply_credit(record.at.partition, &credit);
        Ok(())
    }

    fn apply_credit(&mut self, partition: i32, credit: &Credit) {
        let id = credit.transfer_id;
        self.add(&credit.to, credit.amount.money());
        let key = OrderKey {
            at: credit.effective_at,
            id,
        };
        self.order(partition)
            .state
            .note_credit(&credit.to, key, credit.amount.money());
        self.credited_here.insert(id, ());
        self.effects.credited.push((partition, id));
        self.effects.counts.credits_applied += 1;
    }

    fn dead_letter(&mut self, record: &InputRecord<'_>, payload: &[u8], error: &DecodeError) {
        self.effects.counts.dead_letters += 1;
        self.effects.outputs.push(Output::DeadLetter(DeadLetter {
            at: record.at,
            offset: record.offset,
            key: record.key.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            reason: error.reason,
            detail: error.detail.clone(),
        }));
    }

    /// The outcome of a record decided without its funds.
    fn outcome(
        &mut self,
        record: &InputRecord<'_>,
        transfer_id: Option<TransferId>,
        kind: OutcomeKind,
        detail: Option<String>,
        transfer: Option<Transfer>,
    ) {
        let outcome = Outcome {
            transfer_id,
            kind,
            detail,
            transfer,
            effective_at: None,
            partition: record.at.partition,
            offset: record.offset,
        };
        self.push_outcome(outcome);
    }

    fn push_outcome(&mut self, outcome: Outcome) {
        let counts = &mut self.effects.counts;
        match outcome.kind {
            OutcomeKind::Accepted => counts.accepted += 1,
            OutcomeKind::Rejected(_) => counts.rejected += 1,
            OutcomeKind::Duplicate => counts.duplicate += 1,
        }
        self.effects.outputs.push(Output::Outcome(outcome));
    }
}

/// The whole state in memory: the reference model for property tests and
/// the baseline of the core benchmark.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryLedger {
    pub balances: BTreeMap<AccountId, Money>,
    pub decided: HashMap<TransferId, Decision>,
    pub credited: HashMap<TransferId, ()>,
    pub offsets: Offsets,
    pub orders: BTreeMap<i32, PartitionOrder>,
}

impl MemoryLedger {
    pub fn apply(&mut self, effects: &BatchEffects) {
        for (account, balance) in &effects.balances {
            self.balances.insert(account.clone(), *balance);
        }
        self.decided.extend(
            effects
                .decided
                .iter()
                .map(|(_, id, decision)| (*id, *decision)),
        );
        self.credited
            .extend(effects.credited.iter().map(|(_, id)| (*id, ())));
        self.offsets
            .extend(effects.offsets.iter().map(|(k, v)| (*k, *v)));
        self.orders
            .extend(effects.orders.iter().map(|(k, v)| (*k, v.clone())));
    }

    pub fn sum(&self) -> Money {
        self.balances.values().copied().sum()
    }
}

impl LedgerView for MemoryLedger {
    fn balance(&self, account: &AccountId) -> Money {
        self.balances.get(account).copied().unwrap_or_default()
    }
    fn decision(&self, id: TransferId) -> Option<Decision> {
        self.decided.get(&id).copied()
    }
    fn credited(&self, id: TransferId) -> bool {
        self.credited.contains_key(&id)
    }
    fn order(&self, partition: i32) -> PartitionOrder {
        self.orders.get(&partition).cloned().unwrap_or_default()
    }
}
