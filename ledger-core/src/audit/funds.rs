//! The part of the `decisions` check that depends on funds. The reference
//! model has unlimited funds (see `facts`), so it cannot tell whether a
//! shard was right to accept a transfer or to reject it for funds; this
//! replays those decisions exactly, in the ledger's order (see
//! [`crate::order`]).

use std::collections::HashMap;

use crate::domain::{Money, OutcomeKind, RejectReason};
use crate::order::OrderKey;

use super::facts::{AccountIx, InputFact, Position, TransferFact};
use super::judge::{finding, is_funds_rejection, show_kind, Judge};
use super::report::Check;

/// A decision whose rightness depends on funds: a transfer the rules
/// accept, which its shard accepted or rejected for want of funds.
#[derive(Debug, Clone, Copy)]
struct FundsDecision {
    /// Where the transfer stands in the ledger's order.
    key: OrderKey,
    at: Position,
    transfer: TransferFact,
    /// What the shard answered.
    real: OutcomeKind,
}

impl Judge<'_> {
    /// Replays every decision that depends on funds, in the ledger's order:
    /// by `(effective_at, id)`, each transfer against the balance its
    /// source has from the transfers ordered before it (see
    /// [`crate::order`]). `insufficient_funds` must be exactly where the
    /// source lacks the amount; `hold_expired` (a timeout the topics do not
    /// record) is allowed anywhere a shortage was possible, and the replay
    /// goes on from what the shards decided. Each partition's keys must also
    /// grow with its offsets, and never sit before the transfer's own.
    pub(super) fn check_funds(&mut self) {
        let mut decisions = self.funds_decisions();
        decisions.sort_unstable_by_key(|decision| decision.key);
        self.replay_funds(&decisions);
    }

    /// Every decision that depends on funds, partition by partition in
    /// offset order, naming those whose key breaks the partition's order.
    fn funds_decisions(&mut self) -> Vec<FundsDecision> {
        let input = self.input;
        let mut decisions = Vec::new();
        for (partition, facts) in &input.inputs {
            // A shard decides a partition's transfers in offset order, so
            // their keys must grow with it.
            let mut previous: Option<OrderKey> = None;
            for (slot, fact) in facts.iter().enumerate() {
                let Some(decision) = self.funds_decision(*partition, slot, fact) else {
                    continue;
                };
                self.check_key(&decision, fact, previous);
                previous = Some(decision.key);
                decisions.push(decision);
            }
        }
        decisions
    }

    /// The decision on the committed input record `fact` (at `slot` of
    /// `partition`), if it depends on funds.
    fn funds_decision(
        &self,
        partition: i32,
        slot: usize,
        fact: &InputFact,
    ) -> Option<FundsDecision> {
        // Only what the rules accept with unlimited funds can turn on a
        // balance; anything else check_decisions judges in full.
        let (OutcomeKind::Accepted, Some(transfer), Some(outcome)) = (
            fact.model,
            fact.transfer,
            self.first_outcome(partition, slot),
        ) else {
            return None;
        };
        let real = outcome.kind;
        if real != OutcomeKind::Accepted && !is_funds_rejection(real) {
            return None;
        }
        Some(FundsDecision {
            // A transfer that was held stands where its outcome says it was
            // re-timed to; any other where it was created.
            key: OrderKey {
                at: outcome.effective_at.unwrap_or(transfer.created_at),
                id: transfer.id,
            },
            at: Position {
                partition,
                offset: fact.offset,
            },
            transfer,
            real,
        })
    }

    /// A key may not sit before the transfer's own creation, nor at or
    /// before the key of the partition's previous decision on funds.
    fn check_key(
        &mut self,
        decision: &FundsDecision,
        fact: &InputFact,
        previous: Option<OrderKey>,
    ) {
        let input = self.input;
        let FundsDecision { key, transfer, .. } = *decision;
        let own = OrderKey {
            at: transfer.created_at,
            id: transfer.id,
        };
        if key < own || previous.is_some_and(|previous| key <= previous) {
            self.tally.note(Check::Decisions, || {
                finding(
                    Some(input.locate(&input.topics.transactions, decision.at)),
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
    }

    /// Each decision against its source's balance from the decisions before
    /// it in the ledger's order, `decisions` being sorted by key. Balances
    /// follow what the shards accepted, so one wrong decision is named once,
    /// not again in every decision after it.
    fn replay_funds(&mut self, decisions: &[FundsDecision]) {
        let input = self.input;
        let mut balances: HashMap<AccountIx, i128> = HashMap::new();
        for &FundsDecision {
            at, transfer, real, ..
        } in decisions
        {
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
                        Some(input.locate(&input.topics.transactions, at)),
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
}
