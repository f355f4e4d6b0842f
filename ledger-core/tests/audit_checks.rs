//! The pure audit against hand-made histories: a clean one passes, and each
//! anomaly fails the right check, naming the right record, id or account.
//!
//! Histories come from an honest in-memory pipeline that runs the shards'
//! own state machine (so outcomes, credits and balances are what real shards
//! would write); each test then breaks one thing.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
use ledger_core::audit::{
    audit, AuditInput, AuditReport, Check, Position, ShardBalances, Status, Topics,
};
use ledger_core::domain::{
    AccountId, Amount, Currency, Money, OutcomeKind, RejectReason, Transfer, TransferId,
};
use ledger_core::machine::{
    process_batch, process_batch_at, BatchEffects, InputPartition, InputRecord, MemoryLedger,
    Output, Rules, Source, Tick,
};
use ledger_core::wire::{self, Outcome};
use time::macros::datetime;
use uuid::Uuid;

const PARTITIONS: i32 = 2;

fn account(name: &str) -> AccountId {
    AccountId::parse(name).unwrap()
}

/// Holding without limit: the pipeline below settles after every record,
/// so every shortage gets proven.
fn rules() -> Rules {
    Rules::new(PARTITIONS).holding(u64::MAX)
}

/// The partition (of both `transactions` and `ledger-credits`) that owns an
/// account, as the shards compute it.
fn home(account: &AccountId) -> i32 {
    rules().partition_of(account)
}

fn id(n: u128) -> TransferId {
    TransferId(Uuid::from_u128(n))
}

fn transfer(n: u128, from: &str, to: &str, amount: &str) -> Transfer {
    Transfer::new(
        id(n),
        account(from),
        account(to),
        Amount::parse(amount).unwrap(),
        Currency::EUR,
        datetime!(2026-11-25 10:00 UTC),
    )
    .unwrap()
}

/// An honest pipeline: shard `i` of `shards` owns the partitions `p` with
/// `p % shards == i`, decides with the real state machine, and its credits
/// are applied at once by the destination's shard.
struct Pipeline {
    ledgers: Vec<MemoryLedger>,
    next_offset: Vec<i64>,
    /// `transactions`: (partition, offset, bytes), committed.
    transfers: Vec<(i32, i64, Vec<u8>)>,
    /// `transactions` records of aborted transactions.
    aborted: Vec<(i32, i64)>,
    /// `ledger-results`, one partition.
    outcomes: Vec<Vec<u8>>,
    /// `ledger-credits`: (partition, bytes).
    credits: Vec<(i32, Vec<u8>)>,
    /// `ledger-dlq`: each dead letter's source header.
    dead_letters: Vec<String>,
    /// Anomaly switch: the next credit is neither written nor applied.
    lose_next_credit: bool,
}

impl Pipeline {
    fn new(shards: usize) -> Self {
        Pipeline {
            ledgers: vec![MemoryLedger::default(); shards],
            next_offset: vec![0; PARTITIONS as usize],
            transfers: Vec::new(),
            aborted: Vec::new(),
            outcomes: Vec::new(),
            credits: Vec::new(),
            dead_letters: Vec::new(),
            lose_next_credit: false,
        }
    }

    fn shard(&self, partition: i32) -> usize {
        partition as usize % self.ledgers.len()
    }

    /// Every committed record is followed by a commit marker, so offsets
    /// are not dense, as on a real transactional topic.
    fn take_offset(&mut self, partition: i32) -> i64 {
        let offset = self.next_offset[partition as usize];
        self.next_offset[partition as usize] += 2;
        offset
    }

    fn submit(&mut self, transfer: &Transfer) {
        self.submit_bytes(home(&transfer.from), &wire::encode_transfer(transfer));
    }

    fn submit_bytes(&mut self, partition: i32, bytes: &[u8]) {
        let offset = self.take_offset(partition);
        self.transfers.push((partition, offset, bytes.to_vec()));
        let shard = self.shard(partition);
        let record = InputRecord {
            at: InputPartition {
                source: Source::Transfers,
                partition,
            },
            offset,
            key: None,
            payload: Some(bytes),
        };
        let effects = process_batch(&self.ledgers[shard], &rules(), &[record]).unwrap();
        self.commit(shard, effects);
        self.settle();
    }

    /// A batch's effects: applied, its outcomes and dead letters published,
    /// its credits applied at once, its marks read by every partition.
    fn commit(&mut self, shard: usize, effects: BatchEffects) {
        self.ledgers[shard].apply(&effects);
        for output in effects.outputs {
            match output {
                Output::Outcome(outcome) => self.outcomes.push(wire::encode_outcome(&outcome)),
                Output::DeadLetter(letter) => self.dead_letters.push(wire::record_location(
                    "transactions",
                    letter.at.partition,
                    letter.offset,
                )),
                Output::Credit(credit) => {
                    if std::mem::take(&mut self.lose_next_credit) {
                        continue;
                    }
                    let bytes = wire::encode_credit(&credit);
                    let partition = home(&credit.to);
                    self.apply_credit(partition, &bytes);
                    self.credits.push((partition, bytes));
                }
            }
        }
        for (destination, mark) in &effects.marks {
            self.apply_credit(*destination, &wire::encode_mark(mark));
        }
    }

    fn apply_credit(&mut self, partition: i32, bytes: &[u8]) {
        let shard = self.shard(partition);
        let record = InputRecord {
            at: InputPartition {
                source: Source::Credits,
                partition,
            },
            offset: 0,
            key: None,
            payload: Some(bytes),
        };
        let effects = process_batch(&self.ledgers[shard], &rules(), &[record]).unwrap();
        self.commit(shard, effects);
    }

    /// Every shard, having read all its input, lets its floors jump, until
    /// no mark changes: held shortages are proven, as idle shards do.
    fn settle(&mut self) {
        loop {
            let mut published = false;
            for shard in 0..self.ledgers.len() {
                let idle: Vec<i32> = (0..PARTITIONS)
                    .filter(|p| self.shard(*p) == shard)
                    .collect();
                let tick = Tick {
                    idle: &idle,
                    // A clock past every stamp: floors may jump anywhere.
                    now_ms: u64::MAX,
                    ..Tick::default()
                };
                let effects = process_batch_at(&self.ledgers[shard], &rules(), &[], tick).unwrap();
                published |= !effects.marks.is_empty();
                self.commit(shard, effects);
            }
            if !published {
                return;
            }
        }
    }

    /// A shard that rejects `transfer` for funds without looking (a mutant):
    /// its outcome, and nothing else.
    fn submit_refused(&mut self, transfer: &Transfer) {
        let partition = home(&transfer.from);
        let offset = self.take_offset(partition);
        self.transfers
            .push((partition, offset, wire::encode_transfer(transfer)));
        self.outcomes.push(wire::encode_outcome(&Outcome {
            transfer_id: Some(transfer.id),
            kind: OutcomeKind::Rejected(RejectReason::InsufficientFunds),
            detail: None,
            transfer: Some(transfer.clone()),
            effective_at: None,
            partition,
            offset,
        }));
    }

    /// A record written in a transaction that aborted: no shard saw it.
    fn abort(&mut self, transfer: &Transfer) -> Position {
        let partition = home(&transfer.from);
        let offset = self.take_offset(partition);
        self.aborted.push((partition, offset));
        Position { partition, offset }
    }

    /// Position on `transactions` of the n-th committed record.
    fn input_at(&self, n: usize) -> String {
        let (partition, offset, _) = self.transfers[n];
        format!("transactions/{partition}@{offset}")
    }

    fn balances(&self) -> Vec<ShardBalances> {
        self.ledgers
            .iter()
            .enumerate()
            .map(|(shard, ledger)| ShardBalances {
                source: format!("shard-{shard}"),
                balances: ledger.balances.clone().into_iter().collect(),
            })
            .collect()
    }

    fn input(&self) -> AuditInput {
        self.input_with(self.balances())
    }

    fn input_with(&self, balances: Vec<ShardBalances>) -> AuditInput {
        let mut input = AuditInput::new(Topics::default(), rules());
        for (partition, offset, bytes) in &self.transfers {
            input.push_transfer(
                Position {
                    partition: *partition,
                    offset: *offset,
                },
                None,
                Some(bytes),
            );
        }
        let mut uncommitted: Vec<(i32, i64)> = self
            .transfers
            .iter()
            .map(|(partition, offset, _)| (*partition, *offset))
            .chain(self.aborted.iter().copied())
            .collect();
        uncommitted.sort_unstable();
        for (partition, offset) in uncommitted {
            input.push_uncommitted_transfer(Position { partition, offset });
        }
        for (offset, bytes) in self.outcomes.iter().enumerate() {
            input.push_outcome(
                Position {
                    partition: 0,
                    offset: offset as i64,
                },
                Some(bytes),
            );
        }
        let mut next = vec![0i64; PARTITIONS as usize];
        for (partition, bytes) in &self.credits {
            let offset = next[*partition as usize];
            next[*partition as usize] += 1;
            input.push_credit(
                Position {
                    partition: *partition,
                    offset,
                },
                Some(bytes),
            );
        }
        for source in &self.dead_letters {
            input.push_dead_letter(Some(source.as_bytes()));
        }
        for shard in balances {
            input.push_balances(shard);
        }
        input
    }
}

/// A history with every kind of outcome: deposits, a transfer, a rejection
/// for funds, a resubmission, undecodable and invalid input, a currency
/// mismatch, and an aborted transaction.
fn busy() -> Pipeline {
    let mut pipeline = Pipeline::new(2);
    pipeline.submit(&transfer(1, "world", "alice", "100.00"));
    pipeline.submit(&transfer(2, "world", "bob", "50.00"));
    pipeline.submit(&transfer(3, "alice", "bob", "30.00"));
    pipeline.submit(&transfer(4, "bob", "carol", "500.00"));
    pipeline.submit(&transfer(3, "alice", "bob", "30.00"));
    pipeline.submit_bytes(0, b"not json");
    let negative = String::from_utf8(wire::encode_transfer(&transfer(
        5, "carol", "alice", "1.00",
    )))
    .unwrap()
    .replace("\"1.00\"", "\"-1.00\"");
    pipeline.submit_bytes(1, negative.as_bytes());
    let mut dollars = transfer(6, "alice", "carol", "1.00");
    dollars.currency = Currency::parse("USD").unwrap();
    pipeline.submit(&dollars);
    pipeline.abort(&transfer(7, "alice", "dave", "10.00"));
    pipeline
}

fn failing(report: &AuditReport) -> Vec<Check> {
    report
        .checks
        .iter()
        .filter(|result| result.status == Status::Fail)
        .map(|result| result.check)
        .collect()
}

fn edit_outcome(bytes: &mut Vec<u8>, edit: impl FnOnce(&mut Outcome)) {
    let mut outcome = wire::decode_outcome(bytes).unwrap();
    edit(&mut outcome);
    *bytes = wire::encode_outcome(&outcome);
}

/// The index in `outcomes` of the outcome of the n-th committed record
/// (the honest pipeline writes them in input order).
fn outcome_of(pipeline: &Pipeline, n: usize) -> usize {
    let (partition, offset, _) = pipeline.transfers[n];
    pipeline
        .outcomes
        .iter()
        .position(|bytes| {
            let outcome = wire::decode_outcome(bytes).unwrap();
            (outcome.partition, outcome.offset) == (partition, offset)
        })
        .unwrap()
}

#[test]
fn a_clean_history_passes_with_its_totals() {
    let pipeline = busy();
    let report = audit(&pipeline.input());
    assert_eq!(failing(&report), vec![], "{report:#?}");
    assert_eq!(report.verdict, Status::Pass);
    let totals = &report.totals;
    assert_eq!(totals.inputs_committed, 8);
    assert_eq!(totals.inputs_aborted, 1);
    assert_eq!(totals.inputs_undecodable, 2);
    assert_eq!(
        (totals.accepted, totals.rejected, totals.duplicate),
        (3, 4, 1)
    );
    assert_eq!(totals.credits, 3);
    assert_eq!(totals.dead_letters, 2);
    assert_eq!(totals.balance_sum, Some(Money::ZERO));
    assert_eq!(totals.balance_sources, 2);
}

#[test]
fn without_balances_the_balance_checks_are_skipped() {
    let report = audit(&busy().input_with(Vec::new()));
    assert_eq!(report.verdict, Status::Pass);
    for check in [Check::Balances, Check::Conservation, Check::Negative] {
        assert_eq!(report.check(check).status, Status::Skip);
    }
    assert_eq!(report.totals.balance_sum, None);
}

#[test]
fn a_lost_outcome_is_named() {
    let mut pipeline = busy();
    // The insufficient-funds rejection: nothing else depends on it.
    let lost = outcome_of(&pipeline, 3);
    pipeline.outcomes.remove(lost);
    let report = audit(&pipeline.input());
    assert_eq!(failing(&report), vec![Check::Lost]);
    assert_eq!(
        report.findings(Check::Lost),
        vec![format!(
            "{} id={} committed, but no outcome",
            pipeline.input_at(3),
            id(4)
        )]
    );
}

#[test]
fn a_second_outcome_for_one_record_is_named() {
    let mut pipeline = busy();
    let again = pipeline.outcomes[outcome_of(&pipeline, 3)].clone();
    pipeline.outcomes.push(again);
    let report = audit(&pipeline.input());
    assert_eq!(failing(&report), vec![Check::Duplicated]);
    assert_eq!(
        report.findings(Check::Duplicated),
        vec![format!(
            "{} id={} 2 outcomes for one record",
            pipeline.input_at(3),
            id(4)
        )]
    );
}

/// Two accounts on different partitions, the first on the lower one (the
/// audit walks partitions in order).
fn apart() -> (&'static str, &'static str) {
    let names = ["alice", "bob", "carol", "dave", "erin", "frank"];
    for a in names {
        for b in names {
            if home(&account(a)) < home(&account(b)) {
                return (a, b);
            }
        }
    }
    unreachable!("some two names land apart")
}

#[test]
fn an_id_decided_by_two_shards_is_named() {
    // Two shards each decide the same id, submitted from two accounts that
    // live on different shards: an idempotency breach.
    let (a, b) = apart();
    let mut pipeline = Pipeline::new(2);
    pipeline.submit(&transfer(1, "world", a, "10.00"));
    pipeline.submit(&transfer(2, "world", b, "10.00"));
    pipeline.submit(&transfer(3, a, "zoe", "5.00"));
    pipeline.submit(&transfer(3, b, "zoe", "5.00"));
    let report = audit(&pipeline.input());
    assert!(failing(&report).contains(&Check::Duplicated), "{report:#?}");
    assert_eq!(
        report.findings(Check::Duplicated),
        vec![format!(
            "{} id={} transfer id decided again (first at {})",
            pipeline.input_at(3),
            id(3),
            pipeline.input_at(2)
        )]
    );
}

#[test]
fn an_id_resubmitted_to_another_partition_of_the_same_shard_passes() {
    // One shard owns both partitions: the second copy is a duplicate,
    // whichever partition it came through.
    let (a, b) = apart();
    let mut pipeline = Pipeline::new(1);
    pipeline.submit(&transfer(1, "world", a, "10.00"));
    pipeline.submit(&transfer(2, "world", b, "10.00"));
    pipeline.submit(&transfer(3, a, "zoe", "5.00"));
    pipeline.submit(&transfer(3, b, "zoe", "5.00"));
    let report = audit(&pipeline.input());
    assert_eq!(failing(&report), vec![], "{report:#?}");
    assert_eq!(report.totals.duplicate, 1);
}

#[test]
fn an_outcome_of_aborted_input_is_an_aborted_read() {
    let mut pipeline = busy();
    let aborted = pipeline.abort(&transfer(8, "alice", "erin", "1.00"));
    // A shard that read uncommitted would have decided it.
    pipeline.outcomes.push(wire::encode_outcome(&Outcome {
        transfer_id: Some(id(8)),
        kind: OutcomeKind::Rejected(RejectReason::InsufficientFunds),
        detail: None,
        transfer: Some(transfer(8, "alice", "erin", "1.00")),
        effective_at: None,
        partition: aborted.partition,
        offset: aborted.offset,
    }));
    let at = pipeline.outcomes.len() - 1;
    let report = audit(&pipeline.input());
    assert_eq!(failing(&report), vec![Check::AbortedReads]);
    assert_eq!(
        report.findings(Check::AbortedReads),
        vec![format!(
            "ledger-results/0@{at} id={} outcome of transactions/{aborted}, \
             a record of an aborted transaction",
            id(8)
        )]
    );
    assert_eq!(report.totals.inputs_aborted, 2);
}

#[test]
fn an_outcome_of_no_record_is_an_aborted_read() {
    let mut pipeline = busy();
    let last = outcome_of(&pipeline, 3);
    let mut ghost = pipeline.outcomes[last].clone();
    edit_outcome(&mut ghost, |outcome| outcome.offset = 999);
    pipeline.outcomes.push(ghost);
    let report = audit(&pipeline.input());
    assert_eq!(failing(&report), vec![Check::AbortedReads]);
    let [finding] = &report.findings(Check::AbortedReads)[..] else {
        panic!("{report:#?}")
    };
    assert!(
        finding.ends_with("@999, which is no committed record"),
        "{finding}"
    );
}

#[test]
fn an_outcome_that_differs_from_its_input_is_named() {
    let mut pipeline = busy();
    let rejected = outcome_of(&pipeline, 3);
    edit_outcome(&mut pipeline.outcomes[rejected], |outcome| {
        if let Some(transfer) = outcome.transfer.as_mut() {
            transfer.amount = Amount::parse("499.99").unwrap();
        }
    });
    let report = audit(&pipeline.input());
    assert_eq!(failing(&report), vec![Check::OutcomeMismatch]);
    assert_eq!(
        report.findings(Check::OutcomeMismatch),
        vec![format!(
            "ledger-results/0@{rejected} id={} outcome of {} carries amount 499.99 instead of 500.00",
            id(4),
            pipeline.input_at(3)
        )]
    );
}

#[test]
fn a_lost_credit_is_named_and_breaks_conservation() {
    let mut pipeline = busy();
    pipeline.lose_next_credit = true;
    pipeline.submit(&transfer(9, "alice", "erin", "20.00"));
    let report = audit(&pipeline.input());
    assert_eq!(
        failing(&report),
        vec![Check::Credits, Check::Conservation],
        "{report:#?}"
    );
    assert_eq!(
        report.findings(Check::Credits),
        vec![format!(
            "{} id={} accepted, but no credit",
            pipeline.input_at(8),
            id(9)
        )]
    );
    assert_eq!(
        report.findings(Check::Conservation),
        vec!["the balances sum to -20.00, not 0 (no credit is in flight at quiescence)"]
    );
}

#[test]
fn a_second_credit_is_named() {
    let mut pipeline = busy();
    let copy = pipeline.credits[2].clone();
    pipeline.credits.push(copy.clone());
    let report = audit(&pipeline.input());
    assert_eq!(failing(&report), vec![Check::Credits]);
    let [finding] = &report.findings(Check::Credits)[..] else {
        panic!("{report:#?}")
    };
    assert!(
        finding.starts_with(&format!("ledger-credits/{}@", copy.0))
            && finding.ends_with(&format!(
                "id={} 2 credits for 1 accepted transfer(s)",
                id(3)
            )),
        "{finding}"
    );
}

#[test]
fn a_credit_without_an_accepted_transfer_is_named() {
    let mut pipeline = busy();
    // Transfer 4 was rejected for funds; a credit for it creates money.
    let bytes = wire::encode_credit(&ledger_core::domain::Credit::of(&transfer(
        4, "bob", "carol", "500.00",
    )));
    let partition = home(&account("carol"));
    pipeline.apply_credit(partition, &bytes);
    pipeline.credits.push((partition, bytes));
    let report = audit(&pipeline.input());
    assert_eq!(
        failing(&report),
        vec![Check::Credits, Check::Conservation],
        "{report:#?}"
    );
    let [finding] = &report.findings(Check::Credits)[..] else {
        panic!("{report:#?}")
    };
    assert!(
        finding.ends_with(&format!("id={} credit of no accepted transfer", id(4))),
        "{finding}"
    );
}

#[test]
fn a_credit_that_differs_from_its_transfer_is_named() {
    let mut pipeline = busy();
    let mut credit = wire::decode_credit(&pipeline.credits[2].1).unwrap();
    credit.amount = Amount::parse("31.00").unwrap();
    pipeline.credits[2].1 = wire::encode_credit(&credit);
    let report = audit(&pipeline.input());
    assert!(failing(&report).contains(&Check::Credits), "{report:#?}");
    let [finding] = &report.findings(Check::Credits)[..] else {
        panic!("{report:#?}")
    };
    assert!(
        finding.ends_with(&format!(
            "id={} credit carries amount 31.00 instead of 30.00",
            id(3)
        )),
        "{finding}"
    );
}

#[test]
fn a_wrong_balance_is_named_with_both_values() {
    let pipeline = busy();
    let mut balances = pipeline.balances();
    let bob = account("bob");
    for shard in &mut balances {
        for (account, balance) in &mut shard.balances {
            if *account == bob {
                *balance = *balance + Money(1);
            }
        }
    }
    let report = audit(&pipeline.input_with(balances));
    assert_eq!(failing(&report), vec![Check::Balances, Check::Conservation]);
    assert_eq!(
        report.findings(Check::Balances),
        vec!["account=bob balance 80.01, the fold of outcomes and credits gives 80.00"]
    );
}

#[test]
fn an_account_on_two_shards_is_named() {
    let pipeline = busy();
    let mut balances = pipeline.balances();
    balances.push(ShardBalances {
        source: "shard-9".to_owned(),
        balances: vec![(account("alice"), Money::ZERO)],
    });
    let report = audit(&pipeline.input_with(balances));
    assert_eq!(failing(&report), vec![Check::Balances]);
    let [finding] = &report.findings(Check::Balances)[..] else {
        panic!("{report:#?}")
    };
    assert!(
        finding.starts_with("account=alice held by two shards: shard-")
            && finding.ends_with(" and shard-9"),
        "{finding}"
    );
}

#[test]
fn a_negative_balance_is_named() {
    let pipeline = busy();
    let mut balances = pipeline.balances();
    balances[0].balances.push((account("mallory"), Money(-500)));
    balances[0]
        .balances
        .push((account("world"), Money::ZERO - Money(-500)));
    let report = audit(&pipeline.input_with(balances));
    // The fold knows neither change; world may be negative, mallory not.
    assert_eq!(failing(&report), vec![Check::Balances, Check::Negative]);
    assert_eq!(
        report.findings(Check::Negative),
        vec!["account=mallory balance -5.00"]
    );
}

#[test]
fn a_shard_that_refuses_a_funded_transfer_for_funds_is_named() {
    let mut pipeline = busy();
    // alice has 70.00 in the ledger's order: 100.00 in, 30.00 out.
    pipeline.submit_refused(&transfer(11, "alice", "erin", "5.00"));
    let report = audit(&pipeline.input());
    assert_eq!(failing(&report), vec![Check::Decisions]);
    assert_eq!(
        report.findings(Check::Decisions),
        vec![format!(
            "{} id={} the shard answered rejected(insufficient_funds); in the ledger's order \
             alice had 70.00 for 5.00, so the rules give accepted",
            pipeline.input_at(pipeline.transfers.len() - 1),
            id(11)
        )]
    );
}

#[test]
fn a_shortage_is_checked_in_the_order_of_creation_not_of_arrival() {
    let mut pipeline = Pipeline::new(2);
    let at = |seconds: i64, mut transfer: Transfer| {
        transfer.created_at += time::Duration::seconds(seconds);
        transfer
    };
    // The payment arrives first, the deposit that funds it later, but the
    // deposit was created first: a shard that rejects the payment is wrong.
    let payment = at(2, transfer(2, "alice", "bob", "30.00"));
    pipeline.submit_refused(&payment);
    pipeline.submit(&at(1, transfer(1, "world", "alice", "100.00")));
    let report = audit(&pipeline.input());
    assert_eq!(failing(&report), vec![Check::Decisions]);
    // Created after the deposit, the same refusal is right.
    let mut pipeline = Pipeline::new(2);
    pipeline.submit_refused(&at(0, transfer(2, "alice", "bob", "30.00")));
    pipeline.submit(&at(1, transfer(1, "world", "alice", "100.00")));
    let report = audit(&pipeline.input());
    assert!(report.passed(), "{report}");
    assert_eq!(report.totals.insufficient_funds, 1);
}

#[test]
fn hold_expired_passes_and_is_counted() {
    let mut pipeline = busy();
    // bob's 500.00 to carol, rejected for funds: a shard that gave up
    // waiting instead is allowed, timing being what it is.
    let overdraft = outcome_of(&pipeline, 3);
    edit_outcome(&mut pipeline.outcomes[overdraft], |outcome| {
        outcome.kind = OutcomeKind::Rejected(RejectReason::HoldExpired);
    });
    let report = audit(&pipeline.input());
    assert!(report.passed(), "{report}");
    assert_eq!(report.totals.hold_expired, 1);
    assert_eq!(report.totals.insufficient_funds, 0);
}

#[test]
fn keys_that_go_back_along_a_partition_are_named() {
    let mut pipeline = Pipeline::new(1);
    pipeline.submit(&transfer(1, "world", "alice", "100.00"));
    pipeline.submit(&transfer(2, "world", "alice", "1.00"));
    // The second deposit claims to be ordered before the first.
    let second = outcome_of(&pipeline, 1);
    edit_outcome(&mut pipeline.outcomes[second], |outcome| {
        outcome.effective_at = Some(datetime!(2026-11-25 09:00 UTC));
    });
    let report = audit(&pipeline.input());
    assert_eq!(failing(&report), vec![Check::Decisions]);
}

#[test]
fn decisions_against_the_rules_are_named() {
    let mut pipeline = busy();
    // The USD transfer accepted, the undecodable record rejected for another
    // reason, and a deposit from world refused for funds.
    let usd = outcome_of(&pipeline, 7);
    edit_outcome(&mut pipeline.outcomes[usd], |outcome| {
        outcome.kind = OutcomeKind::Rejected(RejectReason::InsufficientFunds);
    });
    let garbage = outcome_of(&pipeline, 5);
    edit_outcome(&mut pipeline.outcomes[garbage], |outcome| {
        outcome.kind = OutcomeKind::Rejected(RejectReason::UnknownSchema);
    });
    pipeline.submit(&transfer(10, "world", "erin", "1.00"));
    let deposit = pipeline.outcomes.len() - 1;
    edit_outcome(&mut pipeline.outcomes[deposit], |outcome| {
        outcome.kind = OutcomeKind::Rejected(RejectReason::InsufficientFunds);
    });
    let report = audit(&pipeline.input_with(Vec::new()));
    // The deposit's credit now has no accepted transfer.
    assert_eq!(failing(&report), vec![Check::Credits, Check::Decisions]);
    let mut expected = vec![
        format!(
            "{} the shard answered rejected(unknown_schema), the ledger rules give rejected(malformed)",
            pipeline.input_at(5)
        ),
        format!(
            "{} id={} the shard answered rejected(insufficient_funds), the ledger rules give rejected(currency_mismatch)",
            pipeline.input_at(7),
            id(6)
        ),
        format!(
            "{} id={} the shard answered rejected(insufficient_funds), the ledger rules give accepted",
            pipeline.input_at(8),
            id(10)
        ),
    ];
    let mut found = report.findings(Check::Decisions);
    expected.sort();
    found.sort();
    assert_eq!(found, expected);
}

#[test]
fn a_duplicate_of_an_undecided_id_is_named() {
    let mut pipeline = busy();
    let rejected = outcome_of(&pipeline, 3);
    edit_outcome(&mut pipeline.outcomes[rejected], |outcome| {
        outcome.kind = OutcomeKind::Duplicate;
    });
    let report = audit(&pipeline.input());
    assert_eq!(failing(&report), vec![Check::Decisions]);
    assert_eq!(
        report.findings(Check::Decisions),
        vec![format!(
            "{} id={} the shard answered duplicate, the ledger rules give accepted",
            pipeline.input_at(3),
            id(4)
        )]
    );
}

#[test]
fn a_resubmission_decided_again_is_named() {
    let mut pipeline = busy();
    let again = outcome_of(&pipeline, 4);
    edit_outcome(&mut pipeline.outcomes[again], |outcome| {
        outcome.kind = OutcomeKind::Rejected(RejectReason::InsufficientFunds);
    });
    let report = audit(&pipeline.input());
    assert_eq!(failing(&report), vec![Check::Duplicated, Check::Decisions]);
    assert_eq!(
        report.findings(Check::Decisions),
        vec![format!(
            "{} id={} the shard answered rejected(insufficient_funds), the ledger rules give duplicate",
            pipeline.input_at(4),
            id(3)
        )]
    );
}

#[test]
fn unreadable_outputs_and_missing_dead_letters_are_named() {
    let mut pipeline = busy();
    pipeline.outcomes.push(b"{}".to_vec());
    let lost = pipeline
        .dead_letters
        .pop()
        .expect("busy() has dead letters");
    let report = audit(&pipeline.input());
    assert_eq!(
        failing(&report),
        vec![Check::Unreadable, Check::DeadLetters]
    );
    let [finding] = &report.findings(Check::Unreadable)[..] else {
        panic!("{report:#?}")
    };
    assert!(
        finding.starts_with(&format!(
            "ledger-results/0@{} unknown_schema: not an outcome",
            pipeline.outcomes.len() - 1
        )),
        "{finding}"
    );
    assert_eq!(
        report.findings(Check::DeadLetters),
        vec![format!(
            "{lost} undecodable, and no dead letter on ledger-dlq names it"
        )]
    );
}

#[test]
fn dead_letters_twice_for_nothing_or_from_nowhere_are_named() {
    let mut pipeline = busy();
    let twice = pipeline.dead_letters[0].clone();
    pipeline.dead_letters.push(twice.clone());
    // A record that decodes (the first deposit) has no business on the DLQ.
    let decodable = pipeline.input_at(0);
    pipeline.dead_letters.push(decodable.clone());
    let mut input = pipeline.input();
    input.push_dead_letter(None);
    let report = audit(&input);
    assert_eq!(failing(&report), vec![Check::DeadLetters]);
    assert_eq!(
        report.findings(Check::DeadLetters),
        vec![
            format!("{twice} 2 dead letters on ledger-dlq name it"),
            format!(
                "{decodable} 1 dead letter(s) on ledger-dlq for a record that is not undecodable"
            ),
            "1 record(s) on ledger-dlq without a txledger-source header".to_owned(),
        ]
    );
}

#[test]
fn findings_are_capped_but_counted() {
    let mut pipeline = Pipeline::new(1);
    for n in 0..25 {
        pipeline.submit(&transfer(100 + n, "world", "alice", "1.00"));
    }
    pipeline.outcomes.clear();
    let report = audit(&pipeline.input_with(Vec::new()));
    let lost = report.check(Check::Lost);
    assert_eq!(lost.count, 25);
    assert_eq!(lost.findings.len(), ledger_core::audit::FINDINGS_MAX);
}

#[test]
fn the_report_serializes_for_machines() {
    let mut pipeline = busy();
    pipeline.outcomes.remove(outcome_of(&pipeline, 3));
    let json = serde_json::to_value(audit(&pipeline.input())).unwrap();
    assert_eq!(json["verdict"], "FAIL");
    assert_eq!(json["checks"][0]["check"], "lost");
    assert_eq!(json["checks"][0]["status"], "FAIL");
    assert_eq!(json["checks"][0]["count"], 1);
    assert_eq!(
        json["checks"][0]["findings"][0]["transfer_id"],
        id(4).to_string()
    );
    assert_eq!(json["totals"]["balance_sum"], "0.00");
}

#[test]
fn checks_are_reported_in_the_order_of_check_all() {
    let report = audit(&busy().input());
    let order: Vec<Check> = report.checks.iter().map(|result| result.check).collect();
    assert_eq!(order, Check::ALL);
    for check in Check::ALL {
        assert_eq!(report.check(check).check, check);
    }
}

/// `busy()` plus a deposit written to the partition that does not own
/// `world`, as a producer with another partitioner would; returns the index
/// of that record among the committed input.
fn with_a_misrouted_deposit() -> (Pipeline, usize) {
    let mut pipeline = busy();
    let stray = transfer(20, "world", "erin", "9.00");
    let elsewhere = (home(&stray.from) + 1) % PARTITIONS;
    pipeline.submit_bytes(elsewhere, &wire::encode_transfer(&stray));
    let index = pipeline.transfers.len() - 1;
    (pipeline, index)
}

#[test]
fn a_misrouted_transfer_refused_by_its_shard_passes_and_is_named_in_the_summary() {
    let (pipeline, stray) = with_a_misrouted_deposit();
    let report = audit(&pipeline.input());
    assert_eq!(failing(&report), vec![], "{report:#?}");
    assert_eq!(report.totals.misrouted, 1);
    assert_eq!(report.totals.rejected, 5);
    let owner = home(&AccountId::world());
    let named: Vec<String> = report.misrouted.iter().map(ToString::to_string).collect();
    assert_eq!(
        named,
        vec![format!(
            "{} id={} account=world belongs to partition {owner}",
            pipeline.input_at(stray),
            id(20)
        )]
    );
    let text = report.to_string();
    assert!(text.contains("misrouted (1):"), "{text}");
    assert!(text.contains("(2 undecodable, 1 misrouted)"), "{text}");
}

#[test]
fn a_shard_that_applies_a_misrouted_transfer_fails_the_decisions_check() {
    // The mutant: the shard took the stray deposit as its own.
    let (mut pipeline, stray) = with_a_misrouted_deposit();
    let outcome = outcome_of(&pipeline, stray);
    edit_outcome(&mut pipeline.outcomes[outcome], |outcome| {
        outcome.kind = OutcomeKind::Accepted;
        outcome.detail = None;
    });
    let report = audit(&pipeline.input_with(Vec::new()));
    assert!(failing(&report).contains(&Check::Decisions), "{report:#?}");
    assert_eq!(
        report.findings(Check::Decisions),
        vec![format!(
            "{} id={} the shard answered accepted, the ledger rules give rejected(misrouted)",
            pipeline.input_at(stray),
            id(20)
        )]
    );
}

#[test]
fn a_misrouted_transfer_does_not_decide_its_id() {
    // The same id later written where it belongs is decided there, once:
    // neither `duplicated` nor `decisions` may count the refusal.
    let (mut pipeline, _) = with_a_misrouted_deposit();
    pipeline.submit(&transfer(20, "world", "erin", "9.00"));
    let report = audit(&pipeline.input());
    assert_eq!(failing(&report), vec![], "{report:#?}");
    assert_eq!(report.totals.accepted, 4);
}

#[test]
fn a_credit_in_a_partition_that_does_not_own_its_account_is_named() {
    let mut pipeline = busy();
    // The accepted deposit to alice, its credit moved to the other partition.
    let (index, _) = pipeline
        .credits
        .iter()
        .enumerate()
        .find(|(_, (_, bytes))| wire::decode_credit(bytes).unwrap().transfer_id == id(1))
        .unwrap();
    let owner = home(&account("alice"));
    pipeline.credits[index].0 = (owner + 1) % PARTITIONS;
    let report = audit(&pipeline.input_with(Vec::new()));
    assert_eq!(failing(&report), vec![Check::Credits], "{report:#?}");
    let [finding] = &report.findings(Check::Credits)[..] else {
        panic!("{report:#?}")
    };
    assert!(
        finding.ends_with(&format!(
            "id={} credit in a partition that does not own its account (owner: partition {owner})",
            id(1)
        )),
        "{finding}"
    );
}

/// A history that breaks every rule the audit names, most of them more
/// than once: more findings than are named, a misrouted record, balances
/// that disagree.
fn wrecked() -> AuditInput {
    let (mut pipeline, _) = with_a_misrouted_deposit();
    let (a, b) = apart();
    pipeline.submit(&transfer(41, "world", a, "10.00"));
    pipeline.submit(&transfer(42, "world", b, "10.00"));
    pipeline.submit(&transfer(40, a, "zoe", "1.00"));
    pipeline.submit(&transfer(40, b, "zoe", "1.00"));
    pipeline.submit(&transfer(30, "world", "erin", "2.00"));
    let back = outcome_of(&pipeline, pipeline.transfers.len() - 1);
    edit_outcome(&mut pipeline.outcomes[back], |outcome| {
        outcome.effective_at = Some(datetime!(2026-11-25 09:00 UTC));
    });
    let again = pipeline.outcomes[outcome_of(&pipeline, 3)].clone();
    pipeline.outcomes.push(again);
    let first = outcome_of(&pipeline, 0);
    edit_outcome(&mut pipeline.outcomes[first], |outcome| {
        if let Some(transfer) = outcome.transfer.as_mut() {
            transfer.amount = Amount::parse("100.01").unwrap();
        }
    });
    let garbage = outcome_of(&pipeline, 5);
    edit_outcome(&mut pipeline.outcomes[garbage], |outcome| {
        outcome.transfer_id = Some(id(99));
    });
    let usd = outcome_of(&pipeline, 7);
    edit_outcome(&mut pipeline.outcomes[usd], |outcome| {
        outcome.kind = OutcomeKind::Rejected(RejectReason::InsufficientFunds);
    });
    let bare = outcome_of(&pipeline, 1);
    edit_outcome(&mut pipeline.outcomes[bare], |outcome| {
        outcome.transfer = None
    });
    let aborted = pipeline.abort(&transfer(8, "alice", "erin", "1.00"));
    pipeline.outcomes.push(wire::encode_outcome(&Outcome {
        transfer_id: Some(id(8)),
        kind: OutcomeKind::Rejected(RejectReason::InsufficientFunds),
        detail: None,
        transfer: Some(transfer(8, "alice", "erin", "1.00")),
        effective_at: None,
        partition: aborted.partition,
        offset: aborted.offset,
    }));
    let mut ghost = pipeline.outcomes[outcome_of(&pipeline, 4)].clone();
    edit_outcome(&mut ghost, |outcome| outcome.offset = 999);
    pipeline.outcomes.push(ghost);
    for n in 0..12 {
        pipeline.submit(&transfer(200 + n, "world", "frank", "1.00"));
    }
    let kept = pipeline.outcomes.len() - 12;
    pipeline.outcomes.truncate(kept);
    let copy = pipeline.credits[2].clone();
    pipeline.credits.push(copy);
    let mut credit = wire::decode_credit(&pipeline.credits[1].1).unwrap();
    credit.amount = Amount::parse("49.00").unwrap();
    pipeline.credits[1].1 = wire::encode_credit(&credit);
    pipeline.credits[0].0 = (pipeline.credits[0].0 + 1) % PARTITIONS;
    pipeline.submit_refused(&transfer(11, "alice", "erin", "5.00"));
    pipeline.outcomes.push(b"{}".to_vec());
    let twice = pipeline.dead_letters[0].clone();
    pipeline.dead_letters.push(twice);
    pipeline.dead_letters.remove(1);
    let decodable = pipeline.input_at(0);
    pipeline.dead_letters.push(decodable);
    let mut balances = pipeline.balances();
    balances[0].balances.push((account("mallory"), Money(-500)));
    balances.push(ShardBalances {
        source: "shard-9".to_owned(),
        balances: vec![(account("alice"), Money::ZERO)],
    });
    let mut input = pipeline.input_with(balances);
    input.push_dead_letter(None);
    input
}

/// What `ledger audit` prints, and its `--json`, byte for byte: a clean
/// history, one without balances, and a wrecked one. The files were written
/// by the audit before it was split into `audit/`; they change only when
/// the output is meant to.
#[test]
fn the_report_renders_byte_for_byte() {
    let reports = [
        (
            audit(&busy().input()),
            include_str!("audit_rendered/clean.txt"),
            include_str!("audit_rendered/clean.json"),
        ),
        (
            audit(&busy().input_with(Vec::new())),
            include_str!("audit_rendered/unbalanced.txt"),
            include_str!("audit_rendered/unbalanced.json"),
        ),
        (
            audit(&wrecked()),
            include_str!("audit_rendered/wrecked.txt"),
            include_str!("audit_rendered/wrecked.json"),
        ),
    ];
    for (report, text, json) in reports {
        assert_eq!(report.to_string(), text);
        assert_eq!(serde_json::to_string_pretty(&report).unwrap(), json);
    }
}
