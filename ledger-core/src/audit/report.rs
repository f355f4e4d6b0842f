//! What the judge says: the checks with their names and rules, each
//! check's result, the totals, and the report they make. Its `Display` is
//! what `ledger audit` prints; its `Serialize` is what `--json` prints.

use std::fmt;

use serde::Serialize;

use crate::domain::{Money, TransferId};

/// Findings kept per check; the count covers all of them.
pub const FINDINGS_MAX: usize = 10;

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

    pub(super) fn needs_balances(self) -> bool {
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

    /// The findings `check` lists, each as the report prints it.
    pub fn findings(&self, check: Check) -> Vec<String> {
        self.check(check)
            .findings
            .iter()
            .map(ToString::to_string)
            .collect()
    }
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
