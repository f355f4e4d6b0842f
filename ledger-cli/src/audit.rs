//! The audit: proves, or disproves naming the exact records, that the
//! pipeline processed its committed input exactly once and conserved money.
//!
//! | check | what must hold |
//! |---|---|
//! | `lost` | every committed `transactions` record has an outcome |
//! | `duplicated` | no input record has two outcomes; no transfer id is decided twice |
//! | `aborted_reads` | every outcome names a committed input record (none for aborted input) |
//! | `outcome_mismatch` | an outcome carries the id and transfer of the record it names |
//! | `credits` | every accepted transfer has exactly one credit, equal to it; no credit without one |
//! | `balances` | each shard balance equals the fold of accepted debits and credits |
//! | `conservation` | the balances of all shards sum to zero (double entry) |
//! | `negative` | no account but `world` is negative |
//! | `decisions` | each outcome is one the ledger rules allow for its input |
//! | `unreadable` | every record on `ledger-results` and `ledger-credits` decodes |
//! | `dead_letters` | exactly one dead letter per undecodable input or credit, naming it in its `txledger-source` header; none for anything else |
//!
//! Two halves. The pure half: [`AuditInput`] folds the records of the topics
//! into compact facts as they are read, using the same decoders and the same
//! state machine the shards run, and [`audit`] judges those facts. Neither
//! does I/O, so tests feed them hand-made anomalies. The I/O half:
//! [`read_topics`] reads Kafka and [`fetch_balances`] asks a running shard
//! (HTTP) or reads a stopped shard's sled directory.
//!
//! The audit judges a quiescent pipeline: producer stopped, shards caught up,
//! every credit applied. It reads each topic up to the end it had when the
//! audit started; on a pipeline still moving, an input whose outcome comes
//! later counts as lost and a credit not yet applied breaks the balances.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use serde::Serialize;
use time::OffsetDateTime;

use ledger::api::{StatsView, TopView};
use ledger::kafka::{EofReader, EofReaderContext};
use ledger::store::{Store, StoreError, StoreOptions};
use ledger_core::domain::{
    AccountId, Amount, Credit, Currency, Decision, Money, OutcomeKind, RejectReason, Transfer,
    TransferId, SCALE,
};
use ledger_core::machine::{self, InputPartition, InputRecord, LedgerView, Output, Rules, Source};
use ledger_core::wire;

/// Findings kept per check; the count covers all of them.
pub const FINDINGS_MAX: usize = 10;

/// The balance the reference model gives every account. Whether a transfer
/// finds funds depends on when its credits arrived, which the topics do not
/// record; with unlimited funds the model decides everything that does not
/// depend on timing, and `audit` allows `insufficient_funds` where the model
/// accepts. Far above any reachable sum (see `AMOUNT_MAX_MINOR`), far below
/// `i128` overflow.
const UNLIMITED_FUNDS: Money = Money(1_000_000_000_000_000_000_000_000_000_000);

/// How often a long read reports progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// Bound on one poll, so the deadline and progress are checked regularly.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Bound on one metadata or watermark request.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

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
            transactions: ledger::names::TOPIC_TRANSFERS.to_owned(),
            results: ledger::names::TOPIC_RESULTS.to_owned(),
            credits: ledger::names::TOPIC_CREDITS.to_owned(),
            dead_letters: ledger::names::TOPIC_DEAD_LETTERS.to_owned(),
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
type AccountIx = u32;

/// Every account the topics mention, each stored once.
#[derive(Debug, Default)]
struct Accounts {
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

    fn get(&self, ix: AccountIx) -> &AccountId {
        &self.ids[ix as usize]
    }
}

/// A transfer (or the credit that carries it) without heap allocations:
/// millions of them stay compact and compare exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TransferFact {
    id: TransferId,
    from: AccountIx,
    to: AccountIx,
    amount: Amount,
    currency: Currency,
    created_at: OffsetDateTime,
}

impl TransferFact {
    /// A transfer's fact is the one of the credit it gives: `Credit::of`
    /// keeps every field a fact compares. Its copy of the two account ids
    /// is dropped at once; decoding the record allocated more.
    fn of_transfer(transfer: &Transfer, accounts: &mut Accounts) -> Self {
        Self::of_credit(&Credit::of(transfer), accounts)
    }

    fn of_credit(credit: &Credit, accounts: &mut Accounts) -> Self {
        TransferFact {
            id: credit.transfer_id,
            from: accounts.intern(&credit.from),
            to: accounts.intern(&credit.to),
            amount: credit.amount,
            currency: credit.currency,
            created_at: credit.created_at,
        }
    }

    /// The first field that differs, in words; `None` when equal.
    fn difference(&self, other: &TransferFact, accounts: &Accounts) -> Option<String> {
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
struct InputFact {
    offset: i64,
    /// The transfer id, when one could be read (even from invalid input).
    id: Option<TransferId>,
    /// What the reference model answered (funds unlimited).
    model: OutcomeKind,
    /// The decoded transfer; `None` when the record does not decode.
    transfer: Option<TransferFact>,
}

/// A `ledger-results` record.
#[derive(Debug, Clone, Copy)]
struct OutcomeFact {
    at: Position,
    /// The `transactions` record it claims to decide.
    input: Position,
    id: Option<TransferId>,
    kind: OutcomeKind,
    transfer: Option<TransferFact>,
}

/// A `ledger-credits` record.
#[derive(Debug, Clone, Copy)]
struct CreditFact {
    at: Position,
    credit: TransferFact,
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
}

/// A record of an output topic that does not decode.
#[derive(Debug, Clone)]
struct Unreadable {
    topic: OutputTopic,
    at: Position,
    detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputTopic {
    Results,
    Credits,
}

/// The facts the audit judges, folded from the records as they are read.
/// Pure: each `push_*` depends only on its arguments and what came before.
#[derive(Debug)]
pub struct AuditInput {
    topics: Topics,
    rules: Rules,
    accounts: Accounts,
    /// Committed `transactions` records per partition, in offset order.
    inputs: BTreeMap<i32, Vec<InputFact>>,
    models: HashMap<i32, Model>,
    /// Offsets of every `transactions` record read uncommitted, ascending
    /// per partition; those missing from `inputs` were aborted.
    uncommitted: BTreeMap<i32, Vec<i64>>,
    /// Per partition in offset order, so findings come in a stable order.
    outcomes: BTreeMap<i32, Vec<OutcomeFact>>,
    credits: BTreeMap<i32, Vec<CreditFact>>,
    unreadable: Vec<Unreadable>,
    /// Where the dead letters the shards must have written come from: every
    /// undecodable input (as the model found) and undecodable credit.
    dead_letters_expected: BTreeSet<String>,
    /// Dead letters read, counted by their `txledger-source` header.
    dead_letters: BTreeMap<String, u64>,
    /// Dead letters read without a readable `txledger-source` header.
    dead_letters_unattributed: u64,
    balances: Vec<ShardBalances>,
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
        model.decided.extend(effects.decided.iter().copied());
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
            .and_then(|bytes| wire::decode_credit(bytes).map_err(|error| error.to_string()));
        match decoded {
            Ok(credit) => {
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

    fn input(&self, at: Position) -> Option<(usize, &InputFact)> {
        let facts = self.inputs.get(&at.partition)?;
        let index = facts
            .binary_search_by_key(&at.offset, |fact| fact.offset)
            .ok()?;
        Some((index, &facts[index]))
    }

    fn was_uncommitted(&self, at: Position) -> bool {
        self.uncommitted
            .get(&at.partition)
            .is_some_and(|offsets| offsets.binary_search(&at.offset).is_ok())
    }

    fn locate(&self, topic: &str, at: Position) -> String {
        wire::record_location(topic, at.partition, at.offset)
    }
}

/// The checks, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Lost,
    Duplicated,
    AbortedReads,
    OutcomeMismatch,
    Credits,
    Balances,
    Conservation,
    Negative,
    Decisions,
    Unreadable,
    DeadLetters,
}

impl Check {
    pub const ALL: [Check; 11] = [
        Check::Lost,
        Check::Duplicated,
        Check::AbortedReads,
        Check::OutcomeMismatch,
        Check::Credits,
        Check::Balances,
        Check::Conservation,
        Check::Negative,
        Check::Decisions,
        Check::Unreadable,
        Check::DeadLetters,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::Lost => "lost",
            Check::Duplicated => "duplicated",
            Check::AbortedReads => "aborted_reads",
            Check::OutcomeMismatch => "outcome_mismatch",
            Check::Credits => "credits",
            Check::Balances => "balances",
            Check::Conservation => "conservation",
            Check::Negative => "negative",
            Check::Decisions => "decisions",
            Check::Unreadable => "unreadable",
            Check::DeadLetters => "dead_letters",
        }
    }

    /// What must hold, in one line.
    pub fn rule(self) -> &'static str {
        match self {
            Check::Lost => "every committed input record has an outcome",
            Check::Duplicated => "one outcome per input record, one decision per transfer id",
            Check::AbortedReads => "outcomes only for committed input records",
            Check::OutcomeMismatch => "an outcome carries the transfer of its input record",
            Check::Credits => "exactly one credit, equal to it, per accepted transfer",
            Check::Balances => "shard balances equal the fold of debits and credits",
            Check::Conservation => "all balances sum to zero",
            Check::Negative => "no account but world is negative",
            Check::Decisions => "outcomes follow the ledger rules",
            Check::Unreadable => "every output record decodes",
            Check::DeadLetters => "one dead letter per undecodable input or credit, naming it",
        }
    }

    fn needs_balances(self) -> bool {
        matches!(
            self,
            Check::Balances | Check::Conservation | Check::Negative
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Fail,
    /// The check needs the shards' balances and none were given.
    Skip,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        })
    }
}

/// One violation, named as precisely as the check allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `topic/partition@offset` of the offending record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<TransferId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(at) = &self.at {
            write!(f, "{at} ")?;
        }
        if let Some(id) = &self.transfer_id {
            write!(f, "id={id} ")?;
        }
        if let Some(account) = &self.account {
            write!(f, "account={account} ")?;
        }
        f.write_str(&self.detail)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub check: Check,
    pub status: Status,
    /// Every violation, including those beyond `findings`.
    pub count: u64,
    /// The first [`FINDINGS_MAX`] violations, in topic order.
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub inputs_committed: u64,
    /// Records of `transactions` seen only with `read_uncommitted`.
    pub inputs_aborted: u64,
    /// Committed input records that do not decode as transfers.
    pub inputs_undecodable: u64,
    pub outcomes: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub duplicate: u64,
    pub credits: u64,
    pub dead_letters: u64,
    pub balance_sources: u64,
    /// Committed transfers in a partition that does not own their source
    /// account, rejected as `misrouted` (see `AuditReport::misrouted`).
    pub misrouted: u64,
    /// Accounts the shards hold.
    pub accounts: u64,
    /// Sum of every shard balance; absent without balances.
    pub balance_sum: Option<Money>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    pub verdict: Status,
    pub checks: Vec<CheckResult>,
    pub totals: Totals,
    /// The first [`FINDINGS_MAX`] misrouted transfers, named so that their
    /// writer can be found. Not a violation: the shards refused them as they
    /// must (the `decisions` check proves it); a sign of a producer with the
    /// wrong partitioner.
    pub misrouted: Vec<Finding>,
}

impl AuditReport {
    pub fn passed(&self) -> bool {
        self.verdict == Status::Pass
    }

    pub fn check(&self, check: Check) -> &CheckResult {
        // `audit` reports every check, in the order of `Check::ALL`, which
        // is the order of the enum.
        &self.checks[check as usize]
    }
}

/// Counts and first findings of every check.
#[derive(Debug)]
struct Tally {
    results: Vec<CheckResult>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            results: Check::ALL
                .iter()
                .map(|check| CheckResult {
                    check: *check,
                    status: Status::Pass,
                    count: 0,
                    findings: Vec::new(),
                })
                .collect(),
        }
    }

    /// Counts a violation; builds its finding only while there is room, so
    /// a million violations cost a million increments, not strings.
    fn note(&mut self, check: Check, finding: impl FnOnce() -> Finding) {
        let result = &mut self.results[check as usize];
        result.status = Status::Fail;
        result.count += 1;
        if result.findings.len() < FINDINGS_MAX {
            result.findings.push(finding());
        }
    }

    fn skip(&mut self, check: Check) {
        self.results[check as usize].status = Status::Skip;
    }
}

fn finding(at: Option<String>, transfer_id: Option<TransferId>, detail: String) -> Finding {
    Finding {
        at,
        transfer_id,
        account: None,
        detail,
    }
}

fn account_finding(account: &str, detail: String) -> Finding {
    Finding {
        at: None,
        transfer_id: None,
        account: Some(account.to_owned()),
        detail,
    }
}

fn show_kind(kind: OutcomeKind) -> String {
    match kind {
        OutcomeKind::Rejected(reason) => format!("rejected({reason})"),
        kind => kind.status().to_owned(),
    }
}

/// How one input record was matched with outcomes.
#[derive(Debug, Clone, Copy, Default)]
struct Match {
    /// Index in `Judge::outcomes` of the first outcome naming it.
    first: usize,
    count: u32,
}

/// Where a transfer id was decided: outcomes other than `duplicate` of
/// decodable input.
#[derive(Debug, Clone, Copy)]
struct Decided {
    first: Position,
    count: u32,
    /// Decided in more than one partition.
    spread: bool,
}

/// Judges the facts. Pure: same input, same report.
pub fn audit(input: &AuditInput) -> AuditReport {
    let mut judge = Judge::new(input);
    judge.match_outcomes();
    judge.walk_inputs();
    judge.check_decisions();
    let expected = judge.check_credits();
    judge.check_balances(&expected);
    judge.check_outputs();
    judge.report()
}

/// The state of one audit, built up phase by phase (see [`audit`]).
struct Judge<'a> {
    input: &'a AuditInput,
    tally: Tally,
    /// Every outcome, in (results partition, offset) order.
    outcomes: Vec<&'a OutcomeFact>,
    /// Per committed input record, in the layout of `input.inputs`.
    matches: BTreeMap<i32, Vec<Match>>,
    decided: HashMap<TransferId, Decided>,
    /// Accepted transfers (first outcome of a committed decodable record),
    /// in input order.
    accepted: Vec<(TransferFact, Position)>,
    /// Sum of the balances the shards reported.
    balance_sum: i128,
    accounts_held: u64,
}

impl<'a> Judge<'a> {
    fn new(input: &'a AuditInput) -> Self {
        Judge {
            input,
            tally: Tally::new(),
            outcomes: input.outcomes.values().flatten().collect(),
            matches: input
                .inputs
                .iter()
                .map(|(partition, facts)| (*partition, vec![Match::default(); facts.len()]))
                .collect(),
            decided: HashMap::new(),
            accepted: Vec::new(),
            balance_sum: 0,
            accounts_held: 0,
        }
    }

    /// Matches each outcome with the committed input record it names:
    /// aborted reads and mismatched outcomes.
    fn match_outcomes(&mut self) {
        let input = self.input;
        let topics = &input.topics;
        for (index, outcome) in self.outcomes.iter().enumerate() {
            let at = || Some(input.locate(&topics.results, outcome.at));
            let of = || input.locate(&topics.transactions, outcome.input);
            let Some((slot, fact)) = input.input(outcome.input) else {
                self.tally.note(Check::AbortedReads, || {
                    let what = if input.was_uncommitted(outcome.input) {
                        "a record of an aborted transaction"
                    } else {
                        "which is no committed record"
                    };
                    finding(at(), outcome.id, format!("outcome of {}, {what}", of()))
                });
                continue;
            };
            let matched = &mut self
                .matches
                .get_mut(&outcome.input.partition)
                .expect("matched input")[slot];
            if matched.count == 0 {
                matched.first = index;
            }
            matched.count += 1;
            let difference = if outcome.id != fact.id {
                Some(format!(
                    "id {} instead of {}",
                    show_id(outcome.id),
                    show_id(fact.id)
                ))
            } else {
                match (&fact.transfer, &outcome.transfer) {
                    (Some(expected), Some(actual)) => expected.difference(actual, &input.accounts),
                    (None, None) => None,
                    (Some(_), None) => Some("no transfer, but its input decodes".to_owned()),
                    (None, Some(_)) => Some("a transfer, but its input does not decode".to_owned()),
                }
            };
            if let Some(difference) = difference {
                self.tally.note(Check::OutcomeMismatch, || {
                    finding(
                        at(),
                        outcome.id,
                        format!("outcome of {} carries {difference}", of()),
                    )
                });
            }
        }
    }

    fn first_outcome(&self, partition: i32, slot: usize) -> Option<&'a OutcomeFact> {
        let matched = self.matches.get(&partition)?.get(slot)?;
        (matched.count > 0).then(|| self.outcomes[matched.first])
    }

    /// Walks the committed input in order: lost records, records with
    /// several outcomes, ids decided more than once, accepted transfers.
    fn walk_inputs(&mut self) {
        let input = self.input;
        for (partition, facts) in &input.inputs {
            for (slot, fact) in facts.iter().enumerate() {
                let here = Position {
                    partition: *partition,
                    offset: fact.offset,
                };
                let at = || Some(input.locate(&input.topics.transactions, here));
                let count = self.matches[partition][slot].count;
                if count == 0 {
                    self.tally.note(Check::Lost, || {
                        finding(at(), fact.id, "committed, but no outcome".to_owned())
                    });
                } else if count > 1 {
                    self.tally.note(Check::Duplicated, || {
                        finding(at(), fact.id, format!("{count} outcomes for one record"))
                    });
                }
                let (Some(outcome), Some(transfer)) =
                    (self.first_outcome(*partition, slot), fact.transfer)
                else {
                    continue;
                };
                // Neither decides the id: a duplicate repeats a decision,
                // and a misrouted transfer is refused without one.
                if matches!(
                    outcome.kind,
                    OutcomeKind::Duplicate | OutcomeKind::Rejected(RejectReason::Misrouted)
                ) {
                    continue;
                }
                let entry = self.decided.entry(transfer.id).or_insert(Decided {
                    first: here,
                    count: 0,
                    spread: false,
                });
                entry.count += 1;
                entry.spread |= entry.first.partition != here.partition;
                if entry.count == 2 {
                    let first = input.locate(&input.topics.transactions, entry.first);
                    self.tally.note(Check::Duplicated, || {
                        finding(
                            at(),
                            Some(transfer.id),
                            format!("transfer id decided again (first at {first})"),
                        )
                    });
                }
                if outcome.kind == OutcomeKind::Accepted {
                    self.accepted.push((transfer, here));
                }
            }
        }
    }

    /// Each outcome must be one the ledger rules allow for its input, as
    /// far as the rules do not depend on timing (see [`Model`]).
    fn check_decisions(&mut self) {
        let input = self.input;
        for (partition, facts) in &input.inputs {
            for (slot, fact) in facts.iter().enumerate() {
                let Some(outcome) = self.first_outcome(*partition, slot) else {
                    continue;
                };
                let real = outcome.kind;
                // Decided in another partition too: a shard owning both
                // may have seen that one first, an order Kafka does not keep.
                let decided_elsewhere = || {
                    fact.id
                        .and_then(|id| self.decided.get(&id))
                        .is_some_and(|d| d.spread || d.first.partition != *partition)
                };
                let plausible = match (fact.model, fact.transfer) {
                    // Undecodable input is rejected for its reason, always.
                    (model, None) => real == model,
                    // Where a record sits decides this, and nothing else:
                    // not even an earlier decision of its id elsewhere.
                    (model @ OutcomeKind::Rejected(RejectReason::Misrouted), Some(_)) => {
                        real == model
                    }
                    (OutcomeKind::Duplicate, Some(_)) => real == OutcomeKind::Duplicate,
                    (OutcomeKind::Accepted, Some(transfer)) => {
                        real == OutcomeKind::Accepted
                            || (real == OutcomeKind::Rejected(RejectReason::InsufficientFunds)
                                && !input.accounts.get(transfer.from).is_world())
                            || (real == OutcomeKind::Duplicate && decided_elsewhere())
                    }
                    (model, Some(_)) => {
                        real == model || (real == OutcomeKind::Duplicate && decided_elsewhere())
                    }
                };
                if !plausible {
                    let here = Position {
                        partition: *partition,
                        offset: fact.offset,
                    };
                    self.tally.note(Check::Decisions, || {
                        finding(
                            Some(input.locate(&input.topics.transactions, here)),
                            fact.id,
                            format!(
                                "the shard answered {}, the ledger rules give {}",
                                show_kind(real),
                                show_kind(fact.model)
                            ),
                        )
                    });
                }
            }
        }
    }

    /// Exactly one credit per accepted transfer, equal to it, and no other
    /// credit. Returns the expected balances: accepted debits plus each
    /// credited id once (a shard applies a transfer's credit once).
    fn check_credits(&mut self) -> HashMap<AccountIx, i128> {
        let input = self.input;
        let mut accepted: HashMap<TransferId, (u32, TransferFact)> = HashMap::new();
        for (transfer, _) in &self.accepted {
            accepted.entry(transfer.id).or_insert((0, *transfer)).0 += 1;
        }
        let mut credited: HashMap<TransferId, u32> = HashMap::new();
        let mut expected: HashMap<AccountIx, i128> = HashMap::new();
        for credit in input.credits.values().flatten() {
            let id = credit.credit.id;
            let at = || Some(input.locate(&input.topics.credits, credit.at));
            let count = credited.entry(id).or_default();
            *count += 1;
            let count = *count;
            if count == 1 {
                *expected.entry(credit.credit.to).or_default() += credit.credit.amount.money().0;
            }
            let Some((accepted_count, transfer)) = accepted.get(&id) else {
                self.tally.note(Check::Credits, || {
                    finding(at(), Some(id), "credit of no accepted transfer".to_owned())
                });
                continue;
            };
            if count == accepted_count + 1 {
                self.tally.note(Check::Credits, || {
                    finding(
                        at(),
                        Some(id),
                        format!("{count} credits for {accepted_count} accepted transfer(s)"),
                    )
                });
            }
            if let Some(difference) = transfer.difference(&credit.credit, &input.accounts) {
                self.tally.note(Check::Credits, || {
                    finding(at(), Some(id), format!("credit carries {difference}"))
                });
            }
            let owner = input
                .rules
                .partition_of(input.accounts.get(credit.credit.to));
            if owner != credit.at.partition {
                self.tally.note(Check::Credits, || {
                    finding(
                        at(),
                        Some(id),
                        format!("credit in a partition that does not own its account (owner: partition {owner})"),
                    )
                });
            }
        }
        let mut judged: HashSet<TransferId> = HashSet::new();
        for (transfer, here) in &self.accepted {
            *expected.entry(transfer.from).or_default() -= transfer.amount.money().0;
            if judged.insert(transfer.id) && !credited.contains_key(&transfer.id) {
                self.tally.note(Check::Credits, || {
                    finding(
                        Some(input.locate(&input.topics.transactions, *here)),
                        Some(transfer.id),
                        "accepted, but no credit".to_owned(),
                    )
                });
            }
        }
        expected
    }

    /// The shards' balances against the fold, their sum, their signs.
    fn check_balances(&mut self, expected: &HashMap<AccountIx, i128>) {
        let input = self.input;
        if input.balances.is_empty() {
            for check in Check::ALL.into_iter().filter(|c| c.needs_balances()) {
                self.tally.skip(check);
            }
            return;
        }
        let actual = self.held_balances();
        self.accounts_held = actual.len() as u64;
        let expected: BTreeMap<&str, i128> = expected
            .iter()
            .map(|(ix, sum)| (input.accounts.get(*ix).as_str(), *sum))
            .collect();
        let mut names: Vec<&str> = expected.keys().chain(actual.keys()).copied().collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let want = expected.get(name).copied().unwrap_or(0);
            let have = actual.get(name).map_or(0, |(sum, _)| *sum);
            if want != have {
                self.tally.note(Check::Balances, || {
                    account_finding(
                        name,
                        format!(
                            "balance {}, the fold of outcomes and credits gives {}",
                            Money(have),
                            Money(want)
                        ),
                    )
                });
            }
            if have < 0 && name != ledger_core::domain::WORLD {
                self.tally.note(Check::Negative, || {
                    account_finding(name, format!("balance {}", Money(have)))
                });
            }
        }
        if self.balance_sum != 0 {
            let sum = Money(self.balance_sum);
            self.tally.note(Check::Conservation, || {
                finding(
                    None,
                    None,
                    format!(
                        "the balances sum to {sum}, not 0 (no credit is in flight at quiescence)"
                    ),
                )
            });
        }
    }

    /// Account to (sum over shards, first shard holding it); an account
    /// held by two shards is a finding.
    fn held_balances(&mut self) -> BTreeMap<&'a str, (i128, &'a str)> {
        let input = self.input;
        let mut actual: BTreeMap<&'a str, (i128, &'a str)> = BTreeMap::new();
        for shard in &input.balances {
            for (account, balance) in &shard.balances {
                self.balance_sum += balance.0;
                match actual.get_mut(account.as_str()) {
                    Some((sum, first)) => {
                        *sum += balance.0;
                        let first = *first;
                        self.tally.note(Check::Balances, || {
                            account_finding(
                                account.as_str(),
                                format!("held by two shards: {first} and {}", shard.source),
                            )
                        });
                    }
                    None => {
                        actual.insert(account.as_str(), (balance.0, shard.source.as_str()));
                    }
                }
            }
        }
        actual
    }

    /// Output records that do not decode, and the dead-letter count.
    fn check_outputs(&mut self) {
        let input = self.input;
        for unreadable in &input.unreadable {
            let topic = match unreadable.topic {
                OutputTopic::Results => &input.topics.results,
                OutputTopic::Credits => &input.topics.credits,
            };
            self.tally.note(Check::Unreadable, || {
                finding(
                    Some(input.locate(topic, unreadable.at)),
                    None,
                    unreadable.detail.clone(),
                )
            });
        }
        let dlq = &input.topics.dead_letters;
        for source in &input.dead_letters_expected {
            match input.dead_letters.get(source).copied().unwrap_or(0) {
                1 => {}
                0 => self.tally.note(Check::DeadLetters, || {
                    finding(
                        Some(source.clone()),
                        None,
                        format!("undecodable, and no dead letter on {dlq} names it"),
                    )
                }),
                n => self.tally.note(Check::DeadLetters, || {
                    finding(
                        Some(source.clone()),
                        None,
                        format!("{n} dead letters on {dlq} name it"),
                    )
                }),
            }
        }
        for (source, n) in &input.dead_letters {
            if !input.dead_letters_expected.contains(source) {
                self.tally.note(Check::DeadLetters, || {
                    finding(
                        Some(source.clone()),
                        None,
                        format!("{n} dead letter(s) on {dlq} for a record that is not undecodable"),
                    )
                });
            }
        }
        if input.dead_letters_unattributed > 0 {
            self.tally.note(Check::DeadLetters, || {
                finding(
                    None,
                    None,
                    format!(
                        "{} record(s) on {dlq} without a {} header",
                        input.dead_letters_unattributed,
                        wire::DLQ_HEADER_SOURCE
                    ),
                )
            });
        }
    }

    fn report(self) -> AuditReport {
        let input = self.input;
        let count = |wanted: fn(OutcomeKind) -> bool| {
            self.outcomes
                .iter()
                .filter(|outcome| wanted(outcome.kind))
                .count() as u64
        };
        let aborted = input
            .uncommitted
            .iter()
            .flat_map(|(partition, offsets)| {
                offsets.iter().map(move |offset| Position {
                    partition: *partition,
                    offset: *offset,
                })
            })
            .filter(|at| input.input(*at).is_none())
            .count() as u64;
        let misrouted = misrouted_inputs(input);
        let totals = Totals {
            inputs_committed: input.inputs.values().map(|facts| facts.len() as u64).sum(),
            inputs_aborted: aborted,
            inputs_undecodable: input
                .inputs
                .values()
                .flatten()
                .filter(|fact| fact.transfer.is_none())
                .count() as u64,
            outcomes: self.outcomes.len() as u64,
            accepted: count(|kind| kind == OutcomeKind::Accepted),
            rejected: count(|kind| matches!(kind, OutcomeKind::Rejected(_))),
            duplicate: count(|kind| kind == OutcomeKind::Duplicate),
            credits: input.credits.values().map(|c| c.len() as u64).sum(),
            dead_letters: input.dead_letters.values().sum::<u64>()
                + input.dead_letters_unattributed,
            balance_sources: input.balances.len() as u64,
            misrouted: misrouted.len() as u64,
            accounts: self.accounts_held,
            balance_sum: (!input.balances.is_empty()).then_some(Money(self.balance_sum)),
        };
        let verdict = if self.tally.results.iter().any(|r| r.status == Status::Fail) {
            Status::Fail
        } else {
            Status::Pass
        };
        AuditReport {
            verdict,
            checks: self.tally.results,
            totals,
            misrouted: misrouted.into_iter().take(FINDINGS_MAX).collect(),
        }
    }
}

/// Every committed transfer that sits in a partition not owning its source
/// account, in topic order.
fn misrouted_inputs(input: &AuditInput) -> Vec<Finding> {
    let mut found = Vec::new();
    for (partition, facts) in &input.inputs {
        for fact in facts {
            let (OutcomeKind::Rejected(RejectReason::Misrouted), Some(transfer)) =
                (fact.model, fact.transfer)
            else {
                continue;
            };
            let from = input.accounts.get(transfer.from);
            let at = Position {
                partition: *partition,
                offset: fact.offset,
            };
            found.push(Finding {
                at: Some(input.locate(&input.topics.transactions, at)),
                transfer_id: Some(transfer.id),
                account: Some(from.to_string()),
                detail: format!("belongs to partition {}", input.rules.partition_of(from)),
            });
        }
    }
    found
}

fn show_id(id: Option<TransferId>) -> String {
    id.map_or_else(|| "none".to_owned(), |id| id.to_string())
}

/// Why the audit could not reach a verdict. Messages carry their cause and
/// only `Store` has a `source` (the store error's own), so
/// `ledger::telemetry::chain` prints each cause once.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("could not create a Kafka consumer for {bootstrap}: {error}")]
    Client {
        bootstrap: String,
        error: KafkaError,
    },
    #[error("could not read the partitions of topic {topic}: {error}")]
    Metadata { topic: String, error: KafkaError },
    #[error("topic {topic} does not exist on {bootstrap}")]
    MissingTopic { topic: String, bootstrap: String },
    #[error(
        "topic {topic} has {found} partitions, the audit expects {expected}: `transactions` and \
         `ledger-credits` must have the same partition count, the one the shards run with"
    )]
    PartitionCount {
        topic: String,
        found: usize,
        expected: i32,
    },
    #[error(
        "{topic}/{partition} starts at offset {low}: its earlier records were deleted \
         (retention), so the audit cannot account for them; audit topics that keep \
         everything (retention.ms=-1)"
    )]
    Truncated {
        topic: String,
        partition: i32,
        low: i64,
    },
    #[error(
        "reading {topic} ({isolation}) did not reach the end within {timeout:?}; \
         behind: {behind}. An open transaction holds read_committed readers back \
         until it commits or aborts: rerun once the pipeline is quiescent{last_error}"
    )]
    Timeout {
        topic: String,
        isolation: Isolation,
        timeout: Duration,
        behind: String,
        last_error: String,
    },
    #[error("reading {topic} failed: {error}")]
    Consume { topic: String, error: KafkaError },
    #[error("shard {url}: {detail}")]
    Shard { url: String, detail: String },
    // Boxed: sled's errors are large, and every `Result` here carries the size
    // of its largest error.
    #[error(transparent)]
    Store(Box<StoreError>),
    #[error("reading the balances in {path} failed: {error}")]
    Sled {
        path: PathBuf,
        error: Box<sled::Error>,
    },
    #[error(
        "the ledger at {path} holds a pending batch (seq {seq}) whose Kafka commit \
         cannot be known offline: start its shard once (recovery resolves it), or \
         audit the running shard with --url"
    )]
    Pending { path: PathBuf, seq: u64 },
}

/// The isolation level of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    ReadCommitted,
    ReadUncommitted,
}

impl Isolation {
    fn config_value(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::ReadUncommitted => "read_uncommitted",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_value())
    }
}

/// One record as read, borrowed from the consumer (no `Debug`: rdkafka's
/// headers have none).
#[derive(Clone, Copy)]
pub struct Record<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: Option<&'a BorrowedHeaders>,
}

impl<'a> Record<'a> {
    pub fn position(&self) -> Position {
        Position {
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers?
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| header.value)
    }
}

/// How far a read got, for a progress line.
#[derive(Debug, Clone, Copy)]
pub struct ReadProgress<'a> {
    pub topic: &'a str,
    pub isolation: Isolation,
    pub records: u64,
    pub elapsed: Duration,
    /// The last report of this read.
    pub done: bool,
}

/// The partitions of a topic and the end (high watermark) each had when
/// the audit started: the snapshot every read of the topic stops at.
#[derive(Debug, Clone)]
pub struct Extent {
    pub topic: String,
    /// `(partition, high watermark)`.
    pub ends: Vec<(i32, i64)>,
}

/// The partition count of `topic`.
pub fn partition_count(bootstrap: &str, topic: &str) -> Result<i32, AuditError> {
    let [extent] = extents(bootstrap, &[topic])?
        .try_into()
        .expect("one extent per topic");
    Ok(i32::try_from(extent.ends.len()).expect("Kafka counts partitions in an i32"))
}

/// A consumer that never joins a group and never commits: the audit only
/// looks, and must not move any offset a shard depends on.
fn reader(bootstrap: &str, isolation: Isolation) -> Result<EofReader, AuditError> {
    let group = format!("ledger-audit-{}", uuid::Uuid::new_v4().simple());
    let mut config: ClientConfig = ledger::kafka::read_committed_consumer_config(bootstrap, &group);
    config
        .set("isolation.level", isolation.config_value())
        // Partition EOF tells a read_committed reader it reached the last
        // stable offset, where it checks whether that is the snapshot's end.
        .set("enable.partition.eof", "true")
        // A transactional partition ends with a commit marker, so its end is
        // known only from the empty fetch that raises EOF; the broker holds
        // that fetch this long (500 ms by default) before answering.
        .set("fetch.wait.max.ms", "50");
    // The shared config sets fetch.queue.backoff.ms: with librdkafka's
    // default the audit read 145k instead of 615k records/s.
    config
        .create_with_context(EofReaderContext)
        .map_err(|error| AuditError::Client {
            bootstrap: bootstrap.to_owned(),
            error,
        })
}

/// The snapshot of each topic's end. Taken with read_uncommitted, so the
/// end is the high watermark, not the last stable offset: a transaction
/// still open then is waited for, not cut in half.
pub fn extents(bootstrap: &str, topics: &[&str]) -> Result<Vec<Extent>, AuditError> {
    let consumer = reader(bootstrap, Isolation::ReadUncommitted)?;
    let metadata_error = |topic: &str| {
        let topic = topic.to_owned();
        move |error| AuditError::Metadata { topic, error }
    };
    let mut extents = Vec::with_capacity(topics.len());
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(metadata_error(topic))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == *topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(AuditError::MissingTopic {
                topic: (*topic).to_owned(),
                bootstrap: bootstrap.to_owned(),
            });
        }
        let mut ends = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
                .map_err(metadata_error(topic))?;
            if low > 0 {
                return Err(AuditError::Truncated {
                    topic: (*topic).to_owned(),
                    partition,
                    low,
                });
            }
            ends.push((partition, high));
        }
        ends.sort_unstable();
        extents.push(Extent {
            topic: (*topic).to_owned(),
            ends,
        });
    }
    Ok(extents)
}

/// Reads every partition of `extent.topic` from its beginning up to its end
/// in the snapshot, calling `on_record` for each record in partition order.
/// Returns the number of records read.
///
/// Offsets of transactional topics are not dense (commit and abort markers
/// take offsets, aborted records are skipped under read_committed), so a
/// partition is done when a record at or past the end arrives, or when the
/// consumer reports EOF with its position at or past the end.
pub fn read_to_end(
    bootstrap: &str,
    extent: &Extent,
    isolation: Isolation,
    deadline: Instant,
    progress: &mut dyn FnMut(&ReadProgress<'_>),
    mut on_record: impl FnMut(Record<'_>),
) -> Result<u64, AuditError> {
    let topic = extent.topic.as_str();
    let consumer = reader(bootstrap, isolation)?;
    let mut reading = Reading::start(&consumer, extent)?;
    let started = Instant::now();
    let mut reported = started;
    let mut last_error: Option<KafkaError> = None;
    while !reading.remaining.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            return Err(AuditError::Timeout {
                topic: topic.to_owned(),
                isolation,
                timeout: deadline.saturating_duration_since(started),
                behind: reading.behind(),
                last_error: last_error.map_or_else(String::new, |e| format!(" (last error: {e})")),
            });
        }
        if now.duration_since(reported) >= PROGRESS_INTERVAL {
            reported = now;
            progress(&ReadProgress {
                topic,
                isolation,
                records: reading.records,
                elapsed: now.duration_since(started),
                done: false,
            });
        }
        match consumer.poll(POLL_INTERVAL.min(deadline.saturating_duration_since(now))) {
            None => {}
            Some(Ok(message)) => reading.record(&message, &mut on_record)?,
            Some(Err(KafkaError::PartitionEOF(partition))) => reading.end_of(partition)?,
            Some(Err(error)) if is_permanent(&error) => return Err(reading.consume_error(error)),
            // librdkafka retries transport errors by itself; the deadline
            // bounds how long that may take.
            Some(Err(error)) => last_error = Some(error),
        }
    }
    progress(&ReadProgress {
        topic,
        isolation,
        records: reading.records,
        elapsed: started.elapsed(),
        done: true,
    });
    Ok(reading.records)
}

/// The partitions of one topic still being read, up to their ends in the
/// snapshot.
struct Reading<'a> {
    topic: &'a str,
    consumer: &'a EofReader,
    /// Partition to end offset (exclusive), for the partitions not done.
    remaining: HashMap<i32, i64>,
    /// Partition to the next offset to hand over: each record once, in
    /// offset order, whatever the client does (an offset reset would
    /// deliver records again).
    next_offsets: HashMap<i32, i64>,
    records: u64,
}

impl<'a> Reading<'a> {
    /// Assigns every non-empty partition from offset 0: `extents` refused
    /// truncated partitions, and an absolute offset spares the offset
    /// lookup that a logical one (`Offset::Beginning`) costs before the
    /// first fetch, about 500 ms.
    fn start(consumer: &'a EofReader, extent: &'a Extent) -> Result<Self, AuditError> {
        let reading = Reading {
            topic: extent.topic.as_str(),
            consumer,
            remaining: extent
                .ends
                .iter()
                .filter(|(_, end)| *end > 0)
                .copied()
                .collect(),
            next_offsets: HashMap::new(),
            records: 0,
        };
        let mut assignment = TopicPartitionList::new();
        for partition in reading.remaining.keys() {
            assignment
                .add_partition_offset(reading.topic, *partition, Offset::Offset(0))
                .map_err(|error| reading.consume_error(error))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|error| reading.consume_error(error))?;
        Ok(reading)
    }

    fn consume_error(&self, error: KafkaError) -> AuditError {
        AuditError::Consume {
            topic: self.topic.to_owned(),
            error,
        }
    }

    /// Pausing a finished partition stops fetching what came after the
    /// snapshot.
    fn finish(&mut self, partition: i32) -> Result<(), AuditError> {
        self.remaining.remove(&partition);
        let mut done = TopicPartitionList::new();
        done.add_partition(self.topic, partition);
        self.consumer
            .pause(&done)
            .map_err(|error| self.consume_error(error))
    }

    /// Hands `message` to `on_record` if it is the next record before its
    /// partition's end.
    fn record(
        &mut self,
        message: &impl Message<Headers = BorrowedHeaders>,
        on_record: &mut impl FnMut(Record<'_>),
    ) -> Result<(), AuditError> {
        let partition = message.partition();
        let offset = message.offset();
        let Some(end) = self.remaining.get(&partition).copied() else {
            return Ok(());
        };
        if offset >= end {
            return self.finish(partition);
        }
        let next = self.next_offsets.entry(partition).or_insert(0);
        if offset < *next {
            return Ok(());
        }
        *next = offset + 1;
        self.records += 1;
        on_record(Record {
            partition,
            offset,
            key: message.key(),
            payload: message.payload(),
            headers: message.headers(),
        });
        if offset + 1 >= end {
            self.finish(partition)?;
        }
        Ok(())
    }

    /// End of `partition`: done if the consumer's position is at or past
    /// the partition's end (offsets are not dense, so no record may say so).
    fn end_of(&mut self, partition: i32) -> Result<(), AuditError> {
        let Some(end) = self.remaining.get(&partition).copied() else {
            return Ok(());
        };
        let position = self
            .consumer
            .position()
            .map_err(|error| self.consume_error(error))?
            .find_partition(self.topic, partition)
            .map(|e| e.offset());
        if matches!(position, Some(Offset::Offset(at)) if at >= end) {
            self.finish(partition)?;
        }
        Ok(())
    }

    /// Where each unfinished partition stands, for a timeout's message.
    fn behind(&self) -> String {
        let positions = self.consumer.position().ok();
        let mut behind: Vec<String> = self
            .remaining
            .iter()
            .map(|(partition, end)| {
                let position = positions
                    .as_ref()
                    .and_then(|p| p.find_partition(self.topic, *partition))
                    .map(|e| e.offset());
                let position = match position {
                    Some(Offset::Offset(offset)) => offset.to_string(),
                    _ => "none".to_owned(),
                };
                format!("{}/{partition} at {position} of {end}", self.topic)
            })
            .collect();
        behind.sort();
        behind.join(", ")
    }
}

/// Errors that no retry will cure.
fn is_permanent(error: &KafkaError) -> bool {
    match error {
        KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::MessageConsumption(code) => matches!(
            code,
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
        ),
        _ => false,
    }
}

/// Reads the four topics into `input`: `transactions` twice (committed and
/// uncommitted, whose difference is the aborted input), the outputs
/// committed, each up to its end when this call started.
pub fn read_topics(
    bootstrap: &str,
    timeout: Duration,
    input: &mut AuditInput,
    progress: &mut dyn FnMut(&ReadProgress<'_>),
) -> Result<(), AuditError> {
    let deadline = Instant::now() + timeout;
    let topics = input.topics.clone();
    let names = [
        topics.transactions.as_str(),
        topics.results.as_str(),
        topics.credits.as_str(),
        topics.dead_letters.as_str(),
    ];
    let [transactions, results, credits, dead_letters] = extents(bootstrap, &names)?
        .try_into()
        .expect("one extent per topic");
    // Ownership (and so every `misrouted` decision) is computed over this
    // count: with another one the model would judge a different ledger.
    for extent in [&transactions, &credits] {
        if usize::try_from(input.rules.partitions).ok() != Some(extent.ends.len()) {
            return Err(AuditError::PartitionCount {
                topic: extent.topic.clone(),
                found: extent.ends.len(),
                expected: input.rules.partitions,
            });
        }
    }
    let committed = Isolation::ReadCommitted;
    read_to_end(
        bootstrap,
        &transactions,
        committed,
        deadline,
        progress,
        |r| {
            input.push_transfer(r.position(), r.key, r.payload);
        },
    )?;
    read_to_end(
        bootstrap,
        &transactions,
        Isolation::ReadUncommitted,
        deadline,
        progress,
        |r| input.push_uncommitted_transfer(r.position()),
    )?;
    read_to_end(bootstrap, &results, committed, deadline, progress, |r| {
        input.push_outcome(r.position(), r.payload);
    })?;
    read_to_end(bootstrap, &credits, committed, deadline, progress, |r| {
        input.push_credit(r.position(), r.payload);
    })?;
    read_to_end(
        bootstrap,
        &dead_letters,
        committed,
        deadline,
        progress,
        |r| {
            input.push_dead_letter(r.header(wire::DLQ_HEADER_SOURCE));
        },
    )?;
    Ok(())
}

/// Where a shard's balances come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalanceSource {
    /// A running shard's HTTP API, e.g. `http://ledger-consumer-0:8080`.
    Url(String),
    /// A stopped shard's sled directory.
    Db(PathBuf),
}

impl fmt::Display for BalanceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BalanceSource::Url(url) => f.write_str(url),
            BalanceSource::Db(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Every committed balance of one shard. A running shard answers from its
/// last committed view; a stopped shard's directory must hold no pending
/// batch, since whether that batch committed is only known to Kafka's
/// group offsets, which the shard's own recovery consults.
pub fn fetch_balances(
    source: &BalanceSource,
    timeout: Duration,
) -> Result<ShardBalances, AuditError> {
    let balances = match source {
        BalanceSource::Url(url) => fetch_url(url, timeout)?,
        BalanceSource::Db(path) => {
            let store = Store::open_existing(path, StoreOptions::default())
                .map_err(|error| AuditError::Store(Box::new(error)))?;
            if let Some(pending) = store.pending() {
                return Err(AuditError::Pending {
                    path: path.clone(),
                    seq: pending.seq,
                });
            }
            store
                .reader()
                .balances()
                .map_err(|error| AuditError::Sled {
                    path: path.clone(),
                    error: Box::new(error),
                })?
        }
    };
    Ok(ShardBalances {
        source: source.to_string(),
        balances,
    })
}

/// Lists all of a running shard's accounts: `?top=` with the count its
/// stats give, then checks the listing is that long, so a shard that caps
/// `top` below its account count is an error, never a partial audit.
fn fetch_url(url: &str, timeout: Duration) -> Result<Vec<(AccountId, Money)>, AuditError> {
    let fail = |detail: String| AuditError::Shard {
        url: url.to_owned(),
        detail,
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| fail(format!("HTTP client: {e}")))?;
    let base = url.trim_end_matches('/');
    let get = |path: &str| {
        let response = client
            .get(format!("{base}{path}"))
            .send()
            .map_err(|e| fail(format!("GET {path}: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().unwrap_or_default();
            return Err(fail(format!("GET {path}: {status}: {}", body.trim())));
        }
        Ok(response)
    };
    let stats: StatsView = get("/v1/stats")?
        .json()
        .map_err(|e| fail(format!("GET /v1/stats: {e}")))?;
    if stats.accounts == 0 {
        return Ok(Vec::new());
    }
    let path = format!("/v1/accounts?top={}", stats.accounts);
    let listing: TopView = get(&path)?
        .json()
        .map_err(|e| fail(format!("GET {path}: {e}")))?;
    if listing.accounts.len() as u64 != stats.accounts {
        return Err(fail(format!(
            "listed {} accounts but its stats count {} (is the shard still processing?)",
            listing.accounts.len(),
            stats.accounts
        )));
    }
    listing
        .accounts
        .into_iter()
        .map(|entry| {
            let account = AccountId::parse(&entry.account)
                .map_err(|e| fail(format!("account {:?}: {e}", entry.account)))?;
            let decimal: Decimal = entry
                .balance
                .parse()
                .map_err(|e| fail(format!("balance {:?} of {account}: {e}", entry.balance)))?;
            let balance = to_money(decimal).ok_or_else(|| {
                fail(format!(
                    "balance {} of {account} has more than {SCALE} decimals",
                    entry.balance
                ))
            })?;
            Ok((account, balance))
        })
        .collect()
}

/// A balance in minor units; `None` for sub-cent precision.
fn to_money(mut decimal: Decimal) -> Option<Money> {
    if decimal.scale() > SCALE {
        return None;
    }
    decimal.rescale(SCALE);
    Some(Money(decimal.mantissa()))
}

/// The verdict table, the first findings of each failing check, and the
/// totals: what `ledger audit`, `ledger demo` and the chaos test print.
impl fmt::Display for AuditReport {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let report = self;
        writeln!(out, "{:<18} {:>10}  status", "check", "count")?;
        for result in &report.checks {
            writeln!(
                out,
                "{:<18} {:>10}  {}",
                result.check.name(),
                result.count,
                result.status
            )?;
        }
        for result in report.checks.iter().filter(|r| r.status == Status::Fail) {
            writeln!(
                out,
                "\n{} ({}): {}",
                result.check.name(),
                result.count,
                result.check.rule()
            )?;
            write_findings(out, &result.findings, result.count)?;
        }
        let totals = &report.totals;
        if totals.misrouted > 0 {
            writeln!(
                out,
                "\nmisrouted ({}): transfers in a partition that does not own their source \
                 account, rejected and not applied; their producer must use the murmur2 \
                 partitioner",
                totals.misrouted
            )?;
            write_findings(out, &report.misrouted, totals.misrouted)?;
        }
        write_totals(out, totals)?;
        writeln!(out, "verdict: {}", report.verdict)
    }
}

/// The findings named, and how many more there were of `count`.
fn write_findings(out: &mut fmt::Formatter<'_>, findings: &[Finding], count: u64) -> fmt::Result {
    for finding in findings {
        writeln!(out, "  {finding}")?;
    }
    let unnamed = count - findings.len() as u64;
    if unnamed > 0 {
        writeln!(out, "  ... and {unnamed} more")?;
    }
    Ok(())
}

fn write_totals(out: &mut fmt::Formatter<'_>, totals: &Totals) -> fmt::Result {
    writeln!(
        out,
        "\ninput: {} committed ({} undecodable, {} misrouted), {} aborted",
        totals.inputs_committed, totals.inputs_undecodable, totals.misrouted, totals.inputs_aborted
    )?;
    writeln!(
        out,
        "outcomes: {} ({} accepted, {} rejected, {} duplicate); credits: {}; dead letters: {}",
        totals.outcomes,
        totals.accepted,
        totals.rejected,
        totals.duplicate,
        totals.credits,
        totals.dead_letters
    )?;
    match totals.balance_sum {
        Some(sum) => writeln!(
            out,
            "balances: {} accounts on {} shard(s), sum {sum}",
            totals.accounts, totals.balance_sources
        )?,
        None => writeln!(out, "balances: not checked (no --url or --db)")?,
    }
    Ok(())
}
