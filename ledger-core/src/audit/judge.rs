//! The checks: [`audit`] runs them over the facts in phases, each phase
//! building on what the earlier ones found, and gives one verdict per
//! check (see the table in [`super`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::domain::{Money, OutcomeKind, RejectReason, TransferId};
use crate::wire;

use super::facts::{AccountIx, AuditInput, OutcomeFact, OutputTopic, Position, TransferFact};
use super::report::{AuditReport, Check, CheckResult, Finding, Status, Totals, FINDINGS_MAX};

/// Judges the facts. Pure: same input, same report.
pub fn audit(input: &AuditInput) -> AuditReport {
    let mut judge = Judge::new(input);
    judge.match_outcomes();
    judge.walk_inputs();
    judge.check_decisions();
    // The part of `decisions` that depends on funds (see `funds`).
    judge.check_funds();
    let expected = judge.check_credits();
    judge.check_balances(&expected);
    judge.check_outputs();
    judge.report()
}

/// The state of one audit, built up phase by phase (see [`audit`]).
pub(super) struct Judge<'a> {
    pub(super) input: &'a AuditInput,
    pub(super) tally: Tally,
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

    pub(super) fn first_outcome(&self, partition: i32, slot: usize) -> Option<&'a OutcomeFact> {
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
    /// far as the rules do not depend on timing (see `facts::Model`).
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
pub(super) fn is_funds_rejection(kind: OutcomeKind) -> bool {
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

/// Counts and first findings of every check.
#[derive(Debug)]
pub(super) struct Tally {
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
    pub(super) fn note(&mut self, check: Check, finding: impl FnOnce() -> Finding) {
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

pub(super) fn finding(
    at: Option<String>,
    transfer_id: Option<TransferId>,
    detail: String,
) -> Finding {
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

pub(super) fn show_kind(kind: OutcomeKind) -> String {
    match kind {
        OutcomeKind::Rejected(reason) => format!("rejected({reason})"),
        kind => kind.status().to_owned(),
    }
}
