//! What the judge takes: the records of the topics folded, as they are
//! read, into compact facts. Every input record is decided by the shards'
//! own state machine over a reference model as it is pushed, so the judge
//! compares outcomes with what the rules give, not with a second copy of
//! the rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use time::OffsetDateTime;

use crate::domain::{
    AccountId, Amount, Credit, Currency, Decision, Money, OutcomeKind, Transfer, TransferId,
};
use crate::machine::{self, InputPartition, InputRecord, LedgerView, Output, Rules, Source};
use crate::order::PartitionOrder;
use crate::wire::{self, CreditsRecord};

/// The balance the reference model gives every account, so that it decides
/// all but funds record by record; funds are then replayed exactly, in the
/// ledger's order (see `funds`). Far above any reachable sum (see
/// `AMOUNT_MAX_MINOR`), far below `i128` overflow.
const UNLIMITED_FUNDS: Money = Money(1_000_000_000_000_000_000_000_000_000_000);

/// The pipeline's topic names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub transactions: String,
    pub results: String,
    pub credits: String,
    pub dead_letters: String,
}

impl Topics {
    /// The input topic a shard reads `source` from.
    pub fn of(&self, source: Source) -> &str {
        match source {
            Source::Transfers => &self.transactions,
            Source::Credits => &self.credits,
        }
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            transactions: wire::TOPIC_TRANSFERS.to_owned(),
            results: wire::TOPIC_RESULTS.to_owned(),
            credits: wire::TOPIC_CREDITS.to_owned(),
            dead_letters: wire::TOPIC_DEAD_LETTERS.to_owned(),
        }
    }
}

/// A record's place in its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.partition, self.offset)
    }
}

/// One shard's committed balances, and where they came from (for findings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardBalances {
    pub source: String,
    pub balances: Vec<(AccountId, Money)>,
}

/// Index of an account in [`Accounts`]: facts hold 4 bytes instead of a
/// heap string per account mention.
pub(super) type AccountIx = u32;

/// Every account the topics mention, each stored once.
#[derive(Debug, Default)]
pub(super) struct Accounts {
    index: HashMap<String, AccountIx>,
    ids: Vec<AccountId>,
}

impl Accounts {
    fn intern(&mut self, account: &AccountId) -> AccountIx {
        if let Some(ix) = self.index.get(account.as_str()) {
            return *ix;
        }
        let ix = AccountIx::try_from(self.ids.len()).expect("fewer than 2^32 accounts");
        self.index.insert(account.as_str().to_owned(), ix);
        self.ids.push(account.clone());
        ix
    }

    pub(super) fn get(&self, ix: AccountIx) -> &AccountId {
        &self.ids[ix as usize]
    }
}

/// A transfer (or the credit that carries it) without heap allocations:
/// millions of them stay compact and compare exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TransferFact {
    pub(super) id: TransferId,
    pub(super) from: AccountIx,
    pub(super) to: AccountIx,
    pub(super) amount: Amount,
    pub(super) currency: Currency,
    pub(super) created_at: OffsetDateTime,
}

impl TransferFact {
    fn of_transfer(transfer: &Transfer, accounts: &mut Accounts) -> Self {
        let parts = (transfer.amount, transfer.currency, transfer.created_at);
        Self::of_parts(transfer.id, [&transfer.from, &transfer.to], parts, accounts)
    }

    fn of_credit(credit: &Credit, accounts: &mut Accounts) -> Self {
        let parts = (credit.amount, credit.currency, credit.created_at);
        Self::of_parts(
            credit.transfer_id,
            [&credit.from, &credit.to],
            parts,
            accounts,
        )
    }

    /// One constructor for both, from borrowed parts: it runs for every
    /// input record and outcome the audit reads, so it copies no account id.
    fn of_parts(
        id: TransferId,
        [from, to]: [&AccountId; 2],
        (amount, currency, created_at): (Amount, Currency, OffsetDateTime),
        accounts: &mut Accounts,
    ) -> Self {
        TransferFact {
            id,
            from: accounts.intern(from),
            to: accounts.intern(to),
            amount,
            currency,
            created_at,
        }
    }

    /// The first field that differs, in words; `None` when equal.
    pub(super) fn difference(&self, other: &TransferFact, accounts: &Accounts) -> Option<String> {
        let account = |ix| accounts.get(ix).as_str();
        if self.id != other.id {
            Some(format!("id {} instead of {}", other.id, self.id))
        } else if self.from != other.from {
            Some(format!(
                "from {} instead of {}",
                account(other.from),
                account(self.from)
            ))
        } else if self.to != other.to {
            Some(format!(
                "to {} instead of {}",
                account(other.to),
                account(self.to)
            ))
        } else if self.amount != other.amount {
            Some(format!(
                "amount {} instead of {}",
                other.amount, self.amount
            ))
        } else if self.currency != other.currency {
            Some(format!(
                "currency {} instead of {}",
                other.currency, self.currency
            ))
        } else if self.created_at != other.created_at {
            Some(format!(
                "created_at {} instead of {}",
                other.created_at, self.created_at
            ))
        } else {
            None
        }
    }
}

/// A committed `transactions` record, as the reference model saw it.
#[derive(Debug, Clone, Copy)]
pub(super) struct InputFact {
    pub(super) offset: i64,
    /// The transfer id, when one could be read (even from invalid input).
    pub(super) id: Option<TransferId>,
    /// What the reference model answered (funds unlimited).
    pub(super) model: OutcomeKind,
    /// The decoded transfer; `None` when the record does not decode.
    pub(super) transfer: Option<TransferFact>,
}

/// A `ledger-results` record.
#[derive(Debug, Clone, Copy)]
pub(super) struct OutcomeFact {
    pub(super) at: Position,
    /// The `transactions` record it claims to decide.
    pub(super) input: Position,
    pub(super) id: Option<TransferId>,
    pub(super) kind: OutcomeKind,
    pub(super) transfer: Option<TransferFact>,
    /// Where the transfer stood in the order, when re-timed.
    pub(super) effective_at: Option<OffsetDateTime>,
}

/// A `ledger-credits` record.
#[derive(Debug, Clone, Copy)]
pub(super) struct CreditFact {
    pub(super) at: Position,
    pub(super) credit: TransferFact,
}

/// The reference model of one `transactions` partition: the shards' own
/// state machine over a view that remembers decided ids and has unlimited
/// funds (see [`UNLIMITED_FUNDS`]). One per partition because a partition is
/// the unit whose order Kafka keeps; ids repeated across partitions are
/// judged from the outcomes (see `audit`).
#[derive(Debug, Default)]
struct Model {
    decided: HashMap<TransferId, Decision>,
}

impl LedgerView for Model {
    fn balance(&self, _account: &AccountId) -> Money {
        UNLIMITED_FUNDS
    }
    fn decision(&self, id: TransferId) -> Option<Decision> {
        self.decided.get(&id).copied()
    }
    fn credited(&self, _id: TransferId) -> bool {
        // The model is fed transfers only.
        false
    }
    fn order(&self, _partition: i32) -> PartitionOrder {
        // With unlimited funds nothing waits, and where a transfer stands
        // in the order is read from its outcome (see `funds`).
        PartitionOrder::default()
    }
}

/// A record of an output topic that does not decode.
#[derive(Debug, Clone)]
pub(super) struct Unreadable {
    pub(super) topic: OutputTopic,
    pub(super) at: Position,
    pub(super) detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutputTopic {
    Results,
    Credits,
}

/// The facts the audit judges, folded from the records as they are read.
/// Pure: each `push_*` depends only on its arguments and what came before.
#[derive(Debug)]
pub struct AuditInput {
    pub(super) topics: Topics,
    pub(super) rules: Rules,
    pub(super) accounts: Accounts,
    /// Committed `transactions` records per partition, in offset order.
    pub(super) inputs: BTreeMap<i32, Vec<InputFact>>,
    models: HashMap<i32, Model>,
    /// Offsets of every `transactions` record read uncommitted, ascending
    /// per partition; those missing from `inputs` were aborted.
    pub(super) uncommitted: BTreeMap<i32, Vec<i64>>,
    /// Per partition in offset order, so findings come in a stable order.
    pub(super) outcomes: BTreeMap<i32, Vec<OutcomeFact>>,
    pub(super) credits: BTreeMap<i32, Vec<CreditFact>>,
    pub(super) unreadable: Vec<Unreadable>,
    /// Where the dead letters the shards must have written come from: every
    /// undecodable input (as the model found) and undecodable credit.
    pub(super) dead_letters_expected: BTreeSet<String>,
    /// Dead letters read, counted by their `txledger-source` header.
    pub(super) dead_letters: BTreeMap<String, u64>,
    /// Dead letters read without a readable `txledger-source` header.
    pub(super) dead_letters_unattributed: u64,
    pub(super) balances: Vec<ShardBalances>,
}

impl AuditInput {
    /// `rules` must be the shards' (the ledger currency decides
    /// `currency_mismatch`).
    pub fn new(topics: Topics, rules: Rules) -> Self {
        AuditInput {
            topics,
            rules,
            accounts: Accounts::default(),
            inputs: BTreeMap::new(),
            models: HashMap::new(),
            uncommitted: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            credits: BTreeMap::new(),
            unreadable: Vec::new(),
            dead_letters_expected: BTreeSet::new(),
            dead_letters: BTreeMap::new(),
            dead_letters_unattributed: 0,
            balances: Vec::new(),
        }
    }

    /// The topics the facts come from.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The shards' rules the facts are judged by.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// A committed `transactions` record. Each partition's records must come
    /// in offset order: the model replays them in that order.
    pub fn push_transfer(&mut self, at: Position, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let facts = self.inputs.entry(at.partition).or_default();
        assert!(
            facts.last().is_none_or(|last| last.offset < at.offset),
            "transactions/{at} pushed after offset {:?}",
            facts.last().map(|last| last.offset)
        );
        let model = self.models.entry(at.partition).or_default();
        let record = InputRecord {
            at: InputPartition {
                source: Source::Transfers,
                partition: at.partition,
            },
            offset: at.offset,
            key,
            payload,
        };
        let effects = machine::process_batch(model, &self.rules, std::slice::from_ref(&record))
            .expect("only credits can refuse a batch, and this is a transfer");
        model.decided.extend(
            effects
                .decided
                .iter()
                .map(|(_, id, decision)| (*id, *decision)),
        );
        for output in &effects.outputs {
            if let Output::DeadLetter(letter) = output {
                self.dead_letters_expected.insert(wire::record_location(
                    &self.topics.transactions,
                    letter.at.partition,
                    letter.offset,
                ));
            }
        }
        let outcome = effects
            .outputs
            .into_iter()
            .find_map(|output| match output {
                Output::Outcome(outcome) => Some(outcome),
                _ => None,
            })
            .expect("the state machine answers every transfer record with an outcome");
        let transfer = outcome
            .transfer
            .as_ref()
            .map(|transfer| TransferFact::of_transfer(transfer, &mut self.accounts));
        facts.push(InputFact {
            offset: at.offset,
            id: outcome.transfer_id,
            model: outcome.kind,
            transfer,
        });
    }

    /// A `transactions` record read with `read_uncommitted`; in offset order
    /// per partition.
    pub fn push_uncommitted_transfer(&mut self, at: Position) {
        self.uncommitted
            .entry(at.partition)
            .or_default()
            .push(at.offset);
    }

    /// A `ledger-results` record.
    pub fn push_outcome(&mut self, at: Position, payload: Option<&[u8]>) {
        let decoded = payload
            .ok_or_else(|| "record has no value".to_owned())
            .and_then(|bytes| wire::decode_outcome(bytes).map_err(|error| error.to_string()));
        match decoded {
            Ok(outcome) => {
                let transfer = outcome
                    .transfer
                    .as_ref()
                    .map(|transfer| TransferFact::of_transfer(transfer, &mut self.accounts));
                self.outcomes
                    .entry(at.partition)
                    .or_default()
                    .push(OutcomeFact {
                        at,
                        input: Position {
                            partition: outcome.partition,
                            offset: outcome.offset,
                        },
                        id: outcome.transfer_id,
                        kind: outcome.kind,
                        transfer,
                        effective_at: outcome.effective_at,
                    });
            }
            Err(detail) => self.unreadable.push(Unreadable {
                topic: OutputTopic::Results,
                at,
                detail,
            }),
        }
    }

    /// A `ledger-credits` record.
    pub fn push_credit(&mut self, at: Position, payload: Option<&[u8]>) {
        let decoded = payload
            .ok_or_else(|| "record has no value".to_owned())
            .and_then(|bytes| {
                wire::decode_credits_record(bytes).map_err(|error| error.to_string())
            });
        match decoded {
            // Marks carry no money; the shards' decisions they allowed are
            // judged by replaying the order itself.
            Ok(CreditsRecord::Mark(_)) => {}
            Ok(CreditsRecord::Credit(credit)) => {
                let credit = TransferFact::of_credit(&credit, &mut self.accounts);
                self.credits
                    .entry(at.partition)
                    .or_default()
                    .push(CreditFact { at, credit });
            }
            Err(detail) => {
                // The destination shard dead-letters a credit it cannot read.
                self.dead_letters_expected.insert(wire::record_location(
                    &self.topics.credits,
                    at.partition,
                    at.offset,
                ));
                self.unreadable.push(Unreadable {
                    topic: OutputTopic::Credits,
                    at,
                    detail,
                });
            }
        }
    }

    /// A `ledger-dlq` record, with its `txledger-source` header.
    pub fn push_dead_letter(&mut self, source: Option<&[u8]>) {
        match source.and_then(|bytes| std::str::from_utf8(bytes).ok()) {
            Some(source) => *self.dead_letters.entry(source.to_owned()).or_default() += 1,
            None => self.dead_letters_unattributed += 1,
        }
    }

    /// One shard's balances.
    pub fn push_balances(&mut self, balances: ShardBalances) {
        self.balances.push(balances);
    }

    pub(super) fn input(&self, at: Position) -> Option<(usize, &InputFact)> {
        let facts = self.inputs.get(&at.partition)?;
        let index = facts
            .binary_search_by_key(&at.offset, |fact| fact.offset)
            .ok()?;
        Some((index, &facts[index]))
    }

    pub(super) fn was_uncommitted(&self, at: Position) -> bool {
        self.uncommitted
            .get(&at.partition)
            .is_some_and(|offsets| offsets.binary_search(&at.offset).is_ok())
    }

    pub(super) fn locate(&self, topic: &str, at: Position) -> String {
        wire::record_location(topic, at.partition, at.offset)
    }
}
