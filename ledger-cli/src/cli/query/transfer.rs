//! `transfer`: what the shards know about a transfer id, merged into one
//! answer: which shard decided it, and which applied its credit.

use std::process::ExitCode;

use serde::Serialize;

use ledger::api::{DecisionStatus, TransferView};
use ledger_core::domain::TransferId;

use super::source::Shard;
use super::table::{Align, Table};
use super::{print_json, print_text, EXIT_NOT_FOUND};

/// `transfer` over the shards given. A transfer id alone names neither its
/// source nor its destination account, so every shard is asked: the source
/// account's shard knows the decision, the destination account's shard
/// whether the credit was applied.
#[derive(Debug, Serialize)]
struct TransferAnswer {
    transfer_id: String,
    status: AnswerStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    decided_by: Vec<String>,
    credited_by: Vec<String>,
    shards: Vec<TransferView>,
}

/// The status of a transfer over the shards asked: in JSON `accepted` or
/// `rejected` (one shard decided it), `unknown` (no shard asked did), or
/// `conflicting` (several did: the same id was submitted from source
/// accounts of different shards).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum AnswerStatus {
    Conflicting,
    /// What the one deciding shard says, or `unknown`.
    #[serde(untagged)]
    Decided(DecisionStatus),
}

impl TransferAnswer {
    fn merge(transfer_id: TransferId, shards: Vec<TransferView>) -> Self {
        let decided: Vec<&TransferView> = shards
            .iter()
            .filter(|view| view.status != DecisionStatus::Unknown)
            .collect();
        let (status, reason) = match decided.as_slice() {
            [] => (AnswerStatus::Decided(DecisionStatus::Unknown), None),
            [one] => (AnswerStatus::Decided(one.status), one.reason.clone()),
            _ => (AnswerStatus::Conflicting, None),
        };
        TransferAnswer {
            transfer_id: transfer_id.to_string(),
            status,
            reason,
            decided_by: decided.iter().map(|view| view.shard.clone()).collect(),
            credited_by: shards
                .iter()
                .filter(|view| view.credited)
                .map(|view| view.shard.clone())
                .collect(),
            shards,
        }
    }

    fn known(&self) -> bool {
        !self.decided_by.is_empty() || !self.credited_by.is_empty()
    }

    /// One sentence for humans: who decided what, and where the credit is.
    fn summary(&self) -> String {
        let decision = match self.status {
            AnswerStatus::Decided(DecisionStatus::Unknown) => {
                "not decided by any shard asked (not processed yet, never submitted, \
                 or older than the idempotency window)"
                    .to_owned()
            }
            AnswerStatus::Conflicting => {
                let each: Vec<String> = self
                    .shards
                    .iter()
                    .filter(|view| view.status != DecisionStatus::Unknown)
                    .map(|view| format!("shard {} {}", view.shard, describe(view)))
                    .collect();
                format!(
                    "decided by several shards ({}): the same id was submitted from source \
                     accounts of different shards",
                    each.join(", ")
                )
            }
            AnswerStatus::Decided(status) => match &self.reason {
                Some(reason) => format!("{status} ({reason}) by {}", shard_list(&self.decided_by)),
                None => format!("{status} by {}", shard_list(&self.decided_by)),
            },
        };
        let credit = if !self.credited_by.is_empty() {
            format!("; credit applied on {}", shard_list(&self.credited_by))
        } else if self.status == AnswerStatus::Decided(DecisionStatus::Accepted) {
            "; credit not applied on any shard asked (still in flight on ledger-credits, or \
             the destination account's shard was not asked)"
                .to_owned()
        } else {
            String::new()
        };
        format!("transfer {}: {decision}{credit}", self.transfer_id)
    }
}

fn describe(view: &TransferView) -> String {
    match &view.reason {
        Some(reason) => format!("{} ({reason})", view.status),
        None => view.status.to_string(),
    }
}

fn shard_list(shards: &[String]) -> String {
    match shards {
        [one] => format!("shard {one}"),
        _ => format!("shards {}", shards.join(", ")),
    }
}

pub(super) fn transfer(shards: &[Shard], id: TransferId, json: bool) -> anyhow::Result<ExitCode> {
    let views = shards
        .iter()
        .map(|shard| shard.transfer(id))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let answer = TransferAnswer::merge(id, views);
    if json {
        print_json(&answer)?;
    } else {
        let mut table = Table::new(&[
            ("SHARD", Align::Left),
            ("STATUS", Align::Left),
            ("REASON", Align::Left),
            ("CREDITED", Align::Left),
        ]);
        for view in &answer.shards {
            table.row(vec![
                view.shard.clone(),
                view.status.to_string(),
                view.reason.clone().unwrap_or_else(|| "-".to_owned()),
                if view.credited { "yes" } else { "no" }.to_owned(),
            ]);
        }
        print_text(&format!("{}\n\n{table}", answer.summary()))?;
    }
    Ok(if answer.known() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_FOUND)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(shard: &str, status: &str, reason: Option<&str>, credited: bool) -> TransferView {
        TransferView {
            transfer_id: "t".to_owned(),
            shard: shard.to_owned(),
            status: serde_json::from_value(status.into()).unwrap(),
            reason: reason.map(str::to_owned),
            credited,
        }
    }

    fn merged(views: Vec<TransferView>) -> TransferAnswer {
        TransferAnswer::merge(TransferId::new_random(), views)
    }

    #[test]
    fn a_transfer_combines_the_decision_and_the_credit() {
        let answer = merged(vec![
            view("s-0", "accepted", None, false),
            view("s-1", "unknown", None, true),
        ]);
        assert_eq!(serde_json::to_value(answer.status).unwrap(), "accepted");
        assert_eq!(
            (answer.decided_by.as_slice(), answer.credited_by.as_slice()),
            (&["s-0".to_owned()][..], &["s-1".to_owned()][..])
        );
        assert!(answer
            .summary()
            .ends_with("accepted by shard s-0; credit applied on shard s-1"));

        let answer = merged(vec![
            view("s-0", "accepted", None, false),
            view("s-1", "unknown", None, false),
        ]);
        assert!(answer
            .summary()
            .contains("credit not applied on any shard asked"));
        assert!(answer.known());

        let answer = merged(vec![
            view("s-0", "unknown", None, false),
            view("s-1", "rejected", Some("insufficient_funds"), false),
        ]);
        assert_eq!(
            (
                serde_json::to_value(answer.status).unwrap(),
                answer.reason.as_deref()
            ),
            ("rejected".into(), Some("insufficient_funds"))
        );
        assert!(answer
            .summary()
            .ends_with("rejected (insufficient_funds) by shard s-1"));
    }

    #[test]
    fn a_transfer_nobody_knows_is_unknown_and_two_deciders_conflict() {
        let answer = merged(vec![
            view("s-0", "unknown", None, false),
            view("s-1", "unknown", None, false),
        ]);
        assert_eq!(serde_json::to_value(answer.status).unwrap(), "unknown");
        assert!(!answer.known());

        let answer = merged(vec![
            view("s-0", "accepted", None, false),
            view("s-1", "rejected", Some("insufficient_funds"), false),
        ]);
        assert_eq!(serde_json::to_value(answer.status).unwrap(), "conflicting");
        assert_eq!(answer.decided_by, ["s-0", "s-1"]);
        assert!(answer
            .summary()
            .contains("shard s-0 accepted, shard s-1 rejected (insufficient_funds)"));
    }
}
