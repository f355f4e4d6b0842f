//! The audit's judge: proves, or disproves naming the exact records, that
//! the pipeline processed its committed input exactly once and conserved
//! money, from facts alone.
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
//! | `decisions` | each outcome is one the ledger rules allow for its input; funds replayed exactly in the ledger's order |
//! | `unreadable` | every record on `ledger-results` and `ledger-credits` decodes |
//! | `dead_letters` | exactly one dead letter per undecodable input or credit, naming it in its `txledger-source` header; none for anything else |
//!
//! [`AuditInput`] folds the records of the topics into compact facts as
//! they are read, using the same decoders and the same state machine the
//! shards run, and [`audit`] judges those facts. Neither does I/O, so tests
//! feed them hand-made anomalies; `ledger_cli::audit` reads Kafka and the
//! shards' balances into them.
//!
//! The audit judges a quiescent pipeline: producer stopped, shards caught up,
//! every credit applied. On a pipeline still moving, an input whose outcome
//! comes later counts as lost and a credit not yet applied breaks the
//! balances.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use serde::Serialize;
use time::OffsetDateTime;

use crate::domain::{
    AccountId, Amount, Credit, Currency, Decision, Money, OutcomeKind, RejectReason, Transfer,
    TransferId,
};
use crate::machine::{self, InputPartition, InputRecord, LedgerView, Output, Rules, Source};
use crate::order::{OrderKey, PartitionOrder};
use crate::wire::{self, CreditsRecord};

/// Findings kept per check; the count covers all of them.
pub const FINDINGS_MAX: usize = 10;

/// The balance the reference model gives every account, so that it decides
/// all but funds record by record; funds are then replayed exactly, in the
/// ledger's order (see `check_funds`). Far above any reachable sum (see
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
    /// Where the transfer stood in the order, when re-timed.
    effective_at: Option<OffsetDateTime>,
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
    fn order(&self, _partition: i32) -> PartitionOrder {
        // With unlimited funds nothing waits, and where a transfer stands
        // in the order is read from its outcome (see `check_funds`).
        PartitionOrder::default()
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
    /// Rejections for a shortage proven in the ledger's order.
    pub insufficient_funds: u64,
    /// Rejections after `--hold-max-ms`, which depend on timing.
    pub hold_expired: u64,
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
    judge.check_funds();
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
                    // Funds are judged by check_funds.
                    (OutcomeKind::Accepted, Some(transfer)) => {
                        real == OutcomeKind::Accepted
                            || (is_funds_rejection(real)
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

    /// Replays every decision that depends on funds, in the ledger's order:
    /// by `(effective_at, id)`, each transfer against the balance its
    /// source has from the transfers ordered before it (see
    /// [`crate::order`]). `insufficient_funds` must be exactly where the
    /// source lacks the amount; `hold_expired` (a timeout the topics do not
    /// record) is allowed anywhere a shortage was possible, and the replay
    /// goes on from what the shards decided. Each partition's keys must also
    /// grow with its offsets, and never sit before the transfer's own.
    fn check_funds(&mut self) {
        let input = self.input;
        let mut replay: Vec<(OrderKey, Position, TransferFact, OutcomeKind)> = Vec::new();
        for (partition, facts) in &input.inputs {
            let mut previous: Option<OrderKey> = None;
            for (slot, fact) in facts.iter().enumerate() {
                let (OutcomeKind::Accepted, Some(transfer), Some(outcome)) = (
                    fact.model,
                    fact.transfer,
                    self.first_outcome(*partition, slot),
                ) else {
                    continue;
                };
                let real = outcome.kind;
                if real != OutcomeKind::Accepted && !is_funds_rejection(real) {
                    continue;
                }
                let here = Position {
                    partition: *partition,
                    offset: fact.offset,
                };
                let own = OrderKey {
                    at: transfer.created_at,
                    id: transfer.id,
                };
                let key = OrderKey {
                    at: outcome.effective_at.unwrap_or(transfer.created_at),
                    id: transfer.id,
                };
                if key < own || previous.is_some_and(|previous| key <= previous) {
                    self.tally.note(Check::Decisions, || {
                        finding(
                            Some(input.locate(&input.topics.transactions, here)),
                            fact.id,
                            format!(
                                "ordered at {} although created at {} and after a transfer \
                                 of its partition ordered at {}",
                                key.at,
                                transfer.created_at,
                                previous.map_or("nothing".to_owned(), |p| p.at.to_string())
                            ),
                        )
                    });
                }
                previous = Some(key);
                replay.push((key, here, transfer, real));
            }
        }
        replay.sort_unstable_by_key(|(key, ..)| *key);
        let mut balances: HashMap<AccountIx, i128> = HashMap::new();
        for (_, here, transfer, real) in replay {
            let from = input.accounts.get(transfer.from);
            let balance = balances.get(&transfer.from).copied().unwrap_or(0);
            let amount = transfer.amount.money().0;
            // `world` never lacks funds; a shard refusing it for funds is
            // named by check_decisions already.
            let expected = if from.is_world() {
                real
            } else if balance >= amount {
                OutcomeKind::Accepted
            } else {
                OutcomeKind::Rejected(RejectReason::InsufficientFunds)
            };
            let forced = real == OutcomeKind::Rejected(RejectReason::HoldExpired);
            if real != expected && !forced {
                self.tally.note(Check::Decisions, || {
                    finding(
                        Some(input.locate(&input.topics.transactions, here)),
                        Some(transfer.id),
                        format!(
                            "the shard answered {}; in the ledger's order {from} had {} for \
                             {}, so the rules give {}",
                            show_kind(real),
                            Money(balance),
                            transfer.amount,
                            show_kind(expected)
                        ),
                    )
                });
            }
            if real == OutcomeKind::Accepted {
                *balances.entry(transfer.from).or_default() -= amount;
                *balances.entry(transfer.to).or_default() += amount;
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
            if have < 0 && name != crate::domain::WORLD {
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
            insufficient_funds: count(|kind| {
                kind == OutcomeKind::Rejected(RejectReason::InsufficientFunds)
            }),
            hold_expired: count(|kind| kind == OutcomeKind::Rejected(RejectReason::HoldExpired)),
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

/// A rejection for want of funds: proven, or given up waiting.
fn is_funds_rejection(kind: OutcomeKind) -> bool {
    matches!(
        kind,
        OutcomeKind::Rejected(RejectReason::InsufficientFunds | RejectReason::HoldExpired)
    )
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
    let share = |count: u64| 100.0 * count as f64 / totals.outcomes.max(1) as f64;
    writeln!(
        out,
        "funds: {} insufficient_funds ({:.2}% of outcomes), replayed exactly in the ledger's order; \
         {} hold_expired ({:.2}%), which depend on timing",
        totals.insufficient_funds,
        share(totals.insufficient_funds),
        totals.hold_expired,
        share(totals.hold_expired)
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
