//! The wire format: JSON messages on the topics, decoded strictly.
//!
//! Decoding never panics. A well-formed transfer takes the fast path (serde
//! into borrowed fields); anything else is re-read as a generic JSON value
//! only to name the problem precisely, since bad input is rare and its reason
//! is what an operator reads in the outcome and the dead-letter headers.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::{
    format_timestamp, AccountId, Amount, Credit, Currency, DomainError, OutcomeKind, RejectReason,
    Transfer, TransferId,
};
use crate::order::{Held, KeyWire, Mark, OrderKey};
use crate::plain_json;

/// Transfers, keyed by source account.
pub const TOPIC_TRANSFERS: &str = "transactions";
/// Credits between shards, keyed by destination account.
pub const TOPIC_CREDITS: &str = "ledger-credits";
/// One outcome per input transfer record.
pub const TOPIC_RESULTS: &str = "ledger-results";
/// Undecodable input, with the reason in headers.
pub const TOPIC_DEAD_LETTERS: &str = "ledger-dlq";

/// Header names on dead-letter records.
pub const DLQ_HEADER_REASON: &str = "txledger-reason";
pub const DLQ_HEADER_DETAIL: &str = "txledger-detail";
pub const DLQ_HEADER_SOURCE: &str = "txledger-source";

/// A record's place as `topic/partition@offset`: the value of a dead
/// letter's `txledger-source` header, and how the audit names records, so
/// that the audit can match each dead letter to the record it stands for.
pub fn record_location(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}@{offset}")
}

/// A message that is not a valid transfer (or credit): the reason code, a
/// human-readable detail, and the transfer id when one could be read, so the
/// rejection can still be attributed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct DecodeError {
    pub reason: RejectReason,
    pub detail: String,
    pub id: Option<TransferId>,
}

impl DecodeError {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        DecodeError {
            reason,
            detail: detail.into(),
            id: None,
        }
    }
}

impl From<DomainError> for DecodeError {
    fn from(error: DomainError) -> Self {
        let reason = match error {
            DomainError::Account(_) => RejectReason::InvalidAccount,
            DomainError::Amount(..) => RejectReason::InvalidAmount,
            DomainError::Currency(_) => RejectReason::InvalidCurrency,
            DomainError::SameAccount(_) => RejectReason::SameAccount,
        };
        DecodeError::new(reason, error.to_string())
    }
}

/// Messages longer than this are refused before parsing: no legitimate
/// transfer comes near it, and it bounds the work one record can cause.
pub const MESSAGE_LEN_MAX: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransfer<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    to: Cow<'a, str>,
    #[serde(borrow)]
    amount: Cow<'a, str>,
    #[serde(borrow)]
    currency: Cow<'a, str>,
    #[serde(borrow)]
    created_at: Cow<'a, str>,
}

const TRANSFER_FIELDS: [&str; 6] = ["id", "from", "to", "amount", "currency", "created_at"];

fn parse_id(text: &str) -> Result<TransferId, DecodeError> {
    text.parse().map_err(|_| {
        DecodeError::new(
            RejectReason::InvalidId,
            format!("id {text:?} is not a UUID"),
        )
    })
}

/// A timestamp field of a message, or why it is refused.
fn parse_timestamp(text: &str) -> Result<OffsetDateTime, DecodeError> {
    crate::domain::parse_timestamp(text).ok_or_else(|| {
        DecodeError::new(
            RejectReason::InvalidTimestamp,
            format!("created_at {text:?} is not an RFC 3339 timestamp"),
        )
    })
}

/// Decodes one `transactions` message.
pub fn decode_transfer(bytes: &[u8]) -> Result<Transfer, DecodeError> {
    if bytes.len() > MESSAGE_LEN_MAX {
        return Err(DecodeError::new(
            RejectReason::Malformed,
            format!("message of {} bytes exceeds {MESSAGE_LEN_MAX}", bytes.len()),
        ));
    }
    let raw = match plain_json::string_fields(bytes, &TRANSFER_FIELDS) {
        Some([id, from, to, amount, currency, created_at]) => RawTransfer {
            id: Cow::Borrowed(id),
            from: Cow::Borrowed(from),
            to: Cow::Borrowed(to),
            amount: Cow::Borrowed(amount),
            currency: Cow::Borrowed(currency),
            created_at: Cow::Borrowed(created_at),
        },
        None => match serde_json::from_slice(bytes) {
            Ok(raw) => raw,
            Err(error) => return Err(explain_bad_transfer(bytes, &error)),
        },
    };
    let id = parse_id(&raw.id)?;
    let attributed = |error: DecodeError| DecodeError {
        id: Some(id),
        ..error
    };
    let build = || -> Result<Transfer, DecodeError> {
        let from = AccountId::parse(&raw.from)?;
        let to = AccountId::parse(&raw.to)?;
        let amount = Amount::parse(&raw.amount)?;
        let currency = Currency::parse(&raw.currency)?;
        let created_at = parse_timestamp(&raw.created_at)?;
        Ok(Transfer::new(id, from, to, amount, currency, created_at)?)
    };
    build().map_err(attributed)
}

/// The slow path: say precisely what is wrong with a message that the fast
/// path refused.
fn explain_bad_transfer(bytes: &[u8], error: &serde_json::Error) -> DecodeError {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return DecodeError::new(RejectReason::Malformed, "message is not UTF-8");
    };
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(parse) => {
            return DecodeError::new(RejectReason::Malformed, format!("not JSON: {parse}"))
        }
    };
    let Some(object) = value.as_object() else {
        return DecodeError::new(RejectReason::UnknownSchema, "message is not a JSON object");
    };
    let id = object
        .get("id")
        .and_then(|id| id.as_str())
        .and_then(|id| id.parse().ok());
    let attributed = |reason, detail: String| DecodeError { reason, detail, id };
    if let Some(amount) = object.get("amount").filter(|a| a.is_number()) {
        return attributed(
            RejectReason::InvalidAmount,
            format!("amount {amount} must be a decimal string like \"142.50\", not a JSON number"),
        );
    }
    if let Some(missing) = TRANSFER_FIELDS.iter().find(|f| !object.contains_key(**f)) {
        return attributed(
            RejectReason::UnknownSchema,
            format!("field {missing:?} is missing"),
        );
    }
    if let Some(unknown) = object
        .keys()
        .find(|key| !TRANSFER_FIELDS.contains(&key.as_str()))
    {
        return attributed(
            RejectReason::UnknownSchema,
            format!("field {unknown:?} is not part of a transfer"),
        );
    }
    if let Some(field) = TRANSFER_FIELDS.iter().find(|f| !object[**f].is_string()) {
        return attributed(
            RejectReason::UnknownSchema,
            format!("field {field:?} must be a string"),
        );
    }
    // Every field is present and a string, yet serde refused: report its words.
    attributed(RejectReason::UnknownSchema, error.to_string())
}

#[derive(Serialize)]
struct TransferOut<'a> {
    id: TransferId,
    from: &'a AccountId,
    to: &'a AccountId,
    amount: Amount,
    currency: Currency,
    created_at: String,
}

pub fn encode_transfer(transfer: &Transfer) -> Vec<u8> {
    to_json(&TransferOut {
        id: transfer.id,
        from: &transfer.from,
        to: &transfer.to,
        amount: transfer.amount,
        currency: transfer.currency,
        created_at: format_timestamp(transfer.created_at),
    })
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs of strings and numbers to a Vec cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditWire<'a> {
    transfer_id: TransferId,
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    to: Cow<'a, str>,
    #[serde(borrow)]
    amount: Cow<'a, str>,
    #[serde(borrow)]
    currency: Cow<'a, str>,
    #[serde(borrow)]
    created_at: Cow<'a, str>,
    /// Absent when equal to `created_at`.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    effective_at: Option<Cow<'a, str>>,
    /// Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    local: bool,
}

/// `Some(effective)` when a transfer was re-timed, for the optional
/// `effective_at` fields.
fn retimed(created_at: OffsetDateTime, effective_at: OffsetDateTime) -> Option<Cow<'static, str>> {
    (effective_at != created_at).then(|| Cow::Owned(format_timestamp(effective_at)))
}

pub fn encode_credit(credit: &Credit) -> Vec<u8> {
    to_json(&CreditWire {
        transfer_id: credit.transfer_id,
        from: Cow::Borrowed(credit.from.as_str()),
        to: Cow::Borrowed(credit.to.as_str()),
        amount: Cow::Owned(credit.amount.to_string()),
        currency: Cow::Borrowed(credit.currency.as_str()),
        created_at: Cow::Owned(format_timestamp(credit.created_at)),
        effective_at: retimed(credit.created_at, credit.effective_at),
        local: credit.local,
    })
}

const CREDIT_FIELDS: [&str; 8] = [
    "transfer_id",
    "from",
    "to",
    "amount",
    "currency",
    "created_at",
    "effective_at",
    "local",
];

/// A credit in the form `encode_credit` writes, read without serde_json's
/// generic path (see [`plain_json`]); `None` for anything else.
fn plain_credit(bytes: &[u8]) -> Option<CreditWire<'_>> {
    use plain_json::Value::{Bool, Str};
    let [transfer_id, from, to, amount, currency, created_at, effective_at, local] =
        plain_json::fields(bytes, &CREDIT_FIELDS)?;
    let text = |value| match value {
        Some(Str(text)) => Some(Cow::Borrowed(text)),
        _ => None,
    };
    Some(CreditWire {
        // As serde reads a `TransferId`: `FromStr` on the string.
        transfer_id: match transfer_id {
            Some(Str(id)) => id.parse().ok()?,
            _ => return None,
        },
        from: text(from)?,
        to: text(to)?,
        amount: text(amount)?,
        currency: text(currency)?,
        created_at: text(created_at)?,
        effective_at: match effective_at {
            None => None,
            Some(Str(at)) => Some(Cow::Borrowed(at)),
            Some(Bool(_)) => return None,
        },
        local: match local {
            None => false,
            Some(Bool(local)) => local,
            Some(Str(_)) => return None,
        },
    })
}

/// Decodes one `ledger-credits` message. Credits are written only by shards,
/// so a failure here means a bug or a foreign writer, never user input.
pub fn decode_credit(bytes: &[u8]) -> Result<Credit, DecodeError> {
    let wire = match plain_credit(bytes) {
        Some(wire) => wire,
        None => serde_json::from_slice(bytes).map_err(|error| {
            DecodeError::new(
                RejectReason::UnknownSchema,
                format!("not a credit: {error}"),
            )
        })?,
    };
    let build = || -> Result<Credit, DecodeError> {
        let created_at = parse_timestamp(&wire.created_at)?;
        Ok(Credit {
            transfer_id: wire.transfer_id,
            from: AccountId::parse(&wire.from)?,
            to: AccountId::parse(&wire.to)?,
            amount: Amount::parse(&wire.amount)?,
            currency: Currency::parse(&wire.currency)?,
            created_at,
            effective_at: match &wire.effective_at {
                Some(text) => parse_timestamp(text)?,
                None => created_at,
            },
            local: wire.local,
        })
    };
    build().map_err(|error| DecodeError {
        id: Some(wire.transfer_id),
        ..error
    })
}

/// The decision about one input record of `transactions`, as published on
/// `ledger-results`. It names its input by partition and offset, so every
/// committed input record can be matched with exactly one outcome even when
/// the input was too broken to carry a transfer id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub transfer_id: Option<TransferId>,
    pub kind: OutcomeKind,
    pub detail: Option<String>,
    /// The transfer as decoded; absent when decoding failed.
    pub transfer: Option<Transfer>,
    /// Where the transfer stood in the ledger's order when it differs from
    /// its `created_at` (it arrived late and was re-timed).
    pub effective_at: Option<OffsetDateTime>,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutcomeWire<'a> {
    transfer_id: Option<TransferId>,
    status: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<RejectReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    amount: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    currency: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    effective_at: Option<Cow<'a, str>>,
    partition: i32,
    offset: i64,
}

pub fn encode_outcome(outcome: &Outcome) -> Vec<u8> {
    let transfer = outcome.transfer.as_ref();
    to_json(&OutcomeWire {
        transfer_id: outcome.transfer_id,
        status: Cow::Borrowed(outcome.kind.status()),
        reason: outcome.kind.reason(),
        detail: outcome.detail.as_deref().map(Cow::Borrowed),
        from: transfer.map(|t| Cow::Borrowed(t.from.as_str())),
        to: transfer.map(|t| Cow::Borrowed(t.to.as_str())),
        amount: transfer.map(|t| Cow::Owned(t.amount.to_string())),
        currency: transfer.map(|t| Cow::Borrowed(t.currency.as_str())),
        created_at: transfer.map(|t| Cow::Owned(format_timestamp(t.created_at))),
        effective_at: outcome
            .effective_at
            .map(|at| Cow::Owned(format_timestamp(at))),
        partition: outcome.partition,
        offset: outcome.offset,
    })
}

/// Decodes a `ledger-results` message (the audit and the tests read them).
pub fn decode_outcome(bytes: &[u8]) -> Result<Outcome, DecodeError> {
    let wire: OutcomeWire = serde_json::from_slice(bytes).map_err(|error| {
        DecodeError::new(
            RejectReason::UnknownSchema,
            format!("not an outcome: {error}"),
        )
    })?;
    let kind = match (wire.status.as_ref(), wire.reason) {
        ("accepted", None) => OutcomeKind::Accepted,
        ("duplicate", None) => OutcomeKind::Duplicate,
        ("rejected", Some(reason)) => OutcomeKind::Rejected(reason),
        (status, reason) => {
            return Err(DecodeError::new(
                RejectReason::UnknownSchema,
                format!("status {status:?} with reason {reason:?} is not an outcome"),
            ))
        }
    };
    let transfer = match (
        wire.transfer_id,
        &wire.from,
        &wire.to,
        &wire.amount,
        &wire.currency,
        &wire.created_at,
    ) {
        (Some(id), Some(from), Some(to), Some(amount), Some(currency), Some(created_at)) => {
            Some(Transfer::new(
                id,
                AccountId::parse(from)?,
                AccountId::parse(to)?,
                Amount::parse(amount)?,
                Currency::parse(currency)?,
                parse_timestamp(created_at)?,
            )?)
        }
        _ => None,
    };
    Ok(Outcome {
        transfer_id: wire.transfer_id,
        kind,
        detail: wire.detail.map(Cow::into_owned),
        transfer,
        effective_at: wire
            .effective_at
            .as_deref()
            .map(parse_timestamp)
            .transpose()?,
        partition: wire.partition,
        offset: wire.offset,
    })
}

/// A record of `ledger-credits`: a credit, or a shard's order mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreditsRecord {
    Credit(Credit),
    Mark(Mark),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkWire<'a> {
    /// The `transactions` partition the mark speaks for.
    mark_of: i32,
    #[serde(borrow)]
    floor_at: Cow<'a, str>,
    floor_id: TransferId,
    /// Accounts a held transfer would credit: `[account, at, id]` of the
    /// first such transfer.
    #[serde(borrow, default, skip_serializing_if = "Vec::is_empty")]
    open: Vec<(Cow<'a, str>, Cow<'a, str>, TransferId)>,
}

/// Encodes a mark, for the `ledger-credits` partition it was made for.
pub fn encode_mark(mark: &Mark) -> Vec<u8> {
    to_json(&MarkWire {
        mark_of: mark.partition,
        floor_at: Cow::Owned(format_timestamp(mark.floor.at)),
        floor_id: mark.floor.id,
        open: mark
            .open
            .iter()
            .map(|(account, key)| {
                (
                    Cow::Borrowed(account.as_str()),
                    Cow::Owned(format_timestamp(key.at)),
                    key.id,
                )
            })
            .collect(),
    })
}

/// Decodes one `ledger-credits` message: a credit, or failing that a mark.
/// A message that is neither is reported with the credit's error, since
/// credits are what the topic is for.
pub fn decode_credits_record(bytes: &[u8]) -> Result<CreditsRecord, DecodeError> {
    let credit_error = match decode_credit(bytes) {
        Ok(credit) => return Ok(CreditsRecord::Credit(credit)),
        Err(error) => error,
    };
    let Ok(wire) = serde_json::from_slice::<MarkWire>(bytes) else {
        return Err(credit_error);
    };
    let key = |at: &str, id| -> Result<OrderKey, DecodeError> {
        Ok(OrderKey {
            at: parse_timestamp(at)?,
            id,
        })
    };
    let floor = key(&wire.floor_at, wire.floor_id)?;
    let mut open = std::collections::BTreeMap::new();
    for (account, at, id) in &wire.open {
        let held = key(at, *id)?;
        // A held transfer was ordered, so it is not after the floor.
        if held > floor {
            return Err(DecodeError::new(
                RejectReason::UnknownSchema,
                format!(
                    "mark of partition {} holds a transfer ordered after its floor",
                    wire.mark_of
                ),
            ));
        }
        open.insert(AccountId::parse(account)?, held);
    }
    Ok(CreditsRecord::Mark(Mark {
        partition: wire.mark_of,
        floor,
        open,
    }))
}

/// The first byte of a held transfer's stored form; the JSON form of
/// earlier versions starts with `{`.
const HELD_BINARY: u8 = 1;
/// Tag, order key, offset, since: the fixed part before the transfer.
const HELD_HEADER_LEN: usize = 1 + 32 + 8 + 8;

/// The stored form of a held transfer: a tag byte, the order key, the
/// offset and since when (big-endian), then the transfer as
/// `transactions` carries it. Held transfers are written and removed
/// by the thousand when a backlog is read, so the fixed part is binary.
pub fn encode_held(held: &Held) -> Vec<u8> {
    let transfer = encode_transfer(&held.transfer);
    let mut bytes = Vec::with_capacity(HELD_HEADER_LEN + transfer.len());
    bytes.push(HELD_BINARY);
    bytes.extend_from_slice(&held.key.to_bytes());
    bytes.extend_from_slice(&held.offset.to_be_bytes());
    bytes.extend_from_slice(&held.since_ms.to_be_bytes());
    bytes.extend_from_slice(&transfer);
    bytes
}

/// Reads [`encode_held`], or the JSON form of earlier versions.
pub fn decode_held(bytes: &[u8]) -> Option<Held> {
    if bytes.first() != Some(&HELD_BINARY) {
        return decode_legacy_held(bytes);
    }
    let header = bytes.get(..HELD_HEADER_LEN)?;
    Some(Held {
        key: OrderKey::from_bytes(&header[1..33])?,
        offset: i64::from_be_bytes(header[33..41].try_into().ok()?),
        since_ms: u64::from_be_bytes(header[41..49].try_into().ok()?),
        transfer: decode_transfer(&bytes[HELD_HEADER_LEN..]).ok()?,
    })
}

fn decode_legacy_held(bytes: &[u8]) -> Option<Held> {
    let held: HeldWire = serde_json::from_slice(bytes).ok()?;
    Some(Held {
        key: held.key.key()?,
        transfer: decode_transfer(held.transfer.as_bytes()).ok()?,
        offset: held.offset,
        since_ms: held.since_ms,
    })
}

/// A held transfer as earlier versions stored it.
#[derive(Deserialize)]
struct HeldWire {
    key: KeyWire,
    /// The transfer as `transactions` carries it.
    transfer: String,
    offset: i64,
    since_ms: u64,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_held_transfer_round_trips_and_its_earlier_json_form_reads() {
        let transfer = Transfer::new(
            TransferId(uuid::Uuid::from_u128(8)),
            AccountId::parse("alice").unwrap(),
            AccountId::parse("bob").unwrap(),
            Amount::from_minor(100).unwrap(),
            Currency::EUR,
            OffsetDateTime::from_unix_timestamp(39).unwrap(),
        )
        .unwrap();
        let held = Held {
            key: OrderKey::of(&transfer),
            transfer,
            offset: 12,
            since_ms: 1_700_000_000_000,
        };
        assert_eq!(decode_held(&encode_held(&held)), Some(held.clone()));
        assert_eq!(decode_held(&encode_held(&held)[..HELD_HEADER_LEN]), None);
        let legacy_held = serde_json::json!({
            "key": {"at": format_timestamp(held.key.at), "id": held.key.id.to_string()},
            "transfer": String::from_utf8(encode_transfer(&held.transfer)).unwrap(),
            "offset": held.offset,
            "since_ms": held.since_ms,
        });
        assert_eq!(decode_held(legacy_held.to_string().as_bytes()), Some(held));
    }

    const ID: &str = "6f1c2b9e-3d4a-4e5f-8a7b-1c2d3e4f5a6b";

    fn transfer_json(amount: &str) -> String {
        format!(
            r#"{{"id":"{ID}","from":"acc-1","to":"acc-2","amount":{amount},"currency":"EUR","created_at":"2026-11-25T10:00:00Z"}}"#
        )
    }

    fn reason_of(bytes: &[u8]) -> (RejectReason, String) {
        let error = decode_transfer(bytes).unwrap_err();
        (error.reason, error.detail)
    }

    #[test]
    fn a_valid_transfer_round_trips() {
        let transfer = decode_transfer(transfer_json("\"142.50\"").as_bytes()).unwrap();
        assert_eq!(transfer.amount.minor(), 14250);
        assert_eq!(transfer.from.as_str(), "acc-1");
        let again = decode_transfer(&encode_transfer(&transfer)).unwrap();
        assert_eq!(again, transfer);
    }

    #[test]
    fn every_decoder_error_class_has_its_reason() {
        let cases: Vec<(Vec<u8>, RejectReason, &str)> = vec![
            (
                vec![0xff, 0xfe],
                RejectReason::Malformed,
                "message is not UTF-8",
            ),
            (
                b"not json".to_vec(),
                RejectReason::Malformed,
                "not JSON: expected ident at line 1 column 2",
            ),
            (
                vec![b' '; MESSAGE_LEN_MAX + 1],
                RejectReason::Malformed,
                "message of 4097 bytes exceeds 4096",
            ),
            (
                b"[1,2]".to_vec(),
                RejectReason::UnknownSchema,
                "message is not a JSON object",
            ),
            (
                br#"{"id":"x"}"#.to_vec(),
                RejectReason::UnknownSchema,
                "field \"from\" is missing",
            ),
            (
                transfer_json("\"1.00\"")
                    .replace("\"currency\"", "\"extra\":1,\"currency\"")
                    .into_bytes(),
                RejectReason::UnknownSchema,
                "field \"extra\" is not part of a transfer",
            ),
            (
                transfer_json("\"1.00\"")
                    .replace("\"acc-1\"", "17")
                    .into_bytes(),
                RejectReason::UnknownSchema,
                "field \"from\" must be a string",
            ),
            (
                transfer_json("142.5").into_bytes(),
                RejectReason::InvalidAmount,
                "amount 142.5 must be a decimal string like \"142.50\", not a JSON number",
            ),
            (
                transfer_json("\"-5.00\"").into_bytes(),
                RejectReason::InvalidAmount,
                "invalid amount \"-5.00\": must be positive",
            ),
            (
                transfer_json("\"0\"").into_bytes(),
                RejectReason::InvalidAmount,
                "invalid amount \"0\": must be positive",
            ),
            (
                transfer_json("\"1.005\"").into_bytes(),
                RejectReason::InvalidAmount,
                "invalid amount \"1.005\": has more than 2 decimals",
            ),
            (
                transfer_json("\"1e400\"").into_bytes(),
                RejectReason::InvalidAmount,
                "invalid amount \"1e400\": must be a decimal string like \"142.50\"",
            ),
            (
                transfer_json("\"5000000000\"").into_bytes(),
                RejectReason::InvalidAmount,
                "invalid amount \"5000000000\": exceeds the maximum of 1000000000.00",
            ),
            (
                transfer_json("\"1.00\"")
                    .replace(ID, "not-a-uuid")
                    .into_bytes(),
                RejectReason::InvalidId,
                "id \"not-a-uuid\" is not a UUID",
            ),
            (
                transfer_json("\"1.00\"")
                    .replace("acc-1", "bad account")
                    .into_bytes(),
                RejectReason::InvalidAccount,
                "invalid account id \"bad account\": use 1-64 characters of A-Z a-z 0-9 _ - . :",
            ),
            (
                transfer_json("\"1.00\"")
                    .replace("EUR", "euro")
                    .into_bytes(),
                RejectReason::InvalidCurrency,
                "invalid currency \"euro\": use a three-letter ISO 4217 code such as EUR",
            ),
            (
                transfer_json("\"1.00\"")
                    .replace("2026-11-25T10:00:00Z", "yesterday")
                    .into_bytes(),
                RejectReason::InvalidTimestamp,
                "created_at \"yesterday\" is not an RFC 3339 timestamp",
            ),
            (
                transfer_json("\"1.00\"")
                    .replace("acc-2", "acc-1")
                    .into_bytes(),
                RejectReason::SameAccount,
                "a transfer needs two different accounts, got \"acc-1\" twice",
            ),
        ];
        for (bytes, reason, detail) in cases {
            assert_eq!(
                reason_of(&bytes),
                (reason, detail.to_owned()),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn rejections_keep_the_transfer_id_when_it_is_readable() {
        let negative = decode_transfer(transfer_json("\"-1\"").as_bytes()).unwrap_err();
        assert_eq!(negative.id, Some(ID.parse().unwrap()));
        let number = decode_transfer(transfer_json("3").as_bytes()).unwrap_err();
        assert_eq!(number.id, Some(ID.parse().unwrap()));
        let garbage = decode_transfer(b"{").unwrap_err();
        assert_eq!(garbage.id, None);
    }

    #[test]
    fn timestamps_are_normalised_to_utc() {
        let json =
            transfer_json("\"1.00\"").replace("2026-11-25T10:00:00Z", "2026-11-25T11:00:00+01:00");
        let transfer = decode_transfer(json.as_bytes()).unwrap();
        assert_eq!(transfer.created_at.offset(), time::UtcOffset::UTC);
        assert_eq!(transfer.created_at.hour(), 10);
    }

    #[test]
    fn credits_and_outcomes_round_trip() {
        let transfer = decode_transfer(transfer_json("\"9.99\"").as_bytes()).unwrap();
        let credit = Credit::of(&transfer);
        let encoded = encode_credit(&credit);
        assert!(!String::from_utf8_lossy(&encoded).contains("effective_at"));
        assert_eq!(decode_credit(&encoded).unwrap(), credit);
        let later = transfer.created_at + time::Duration::nanoseconds(1);
        let retimed = Credit::at(&transfer, later);
        assert_eq!(decode_credit(&encode_credit(&retimed)).unwrap(), retimed);
        let local = Credit {
            local: true,
            ..Credit::of(&transfer)
        };
        assert_eq!(decode_credit(&encode_credit(&local)).unwrap(), local);
        for (kind, effective_at) in [
            (OutcomeKind::Accepted, None),
            (OutcomeKind::Accepted, Some(later)),
            (OutcomeKind::Duplicate, None),
            (OutcomeKind::Rejected(RejectReason::InsufficientFunds), None),
            (
                OutcomeKind::Rejected(RejectReason::HoldExpired),
                Some(later),
            ),
        ] {
            let outcome = Outcome {
                transfer_id: Some(transfer.id),
                kind,
                detail: None,
                transfer: Some(transfer.clone()),
                effective_at,
                partition: 3,
                offset: 42,
            };
            assert_eq!(decode_outcome(&encode_outcome(&outcome)).unwrap(), outcome);
        }
        let undecodable = Outcome {
            transfer_id: None,
            kind: OutcomeKind::Rejected(RejectReason::Malformed),
            detail: Some("not JSON".into()),
            transfer: None,
            effective_at: None,
            partition: 0,
            offset: 7,
        };
        assert_eq!(
            decode_outcome(&encode_outcome(&undecodable)).unwrap(),
            undecodable
        );
        assert!(decode_credit(b"{}").is_err());
        assert!(decode_credits_record(b"{}").is_err());
        // A mark holding a transfer after its floor promises the impossible.
        assert!(
            decode_credits_record(
                br#"{"mark_of":0,"floor_at":"2026-01-01T00:00:00Z","floor_id":"6f1c2b9e-3d4a-4e5f-8a7b-1c2d3e4f5a6b","open":[["bob","2026-01-02T00:00:00Z","6f1c2b9e-3d4a-4e5f-8a7b-1c2d3e4f5a6b"]]}"#
            )
            .is_err()
        );
        let key = OrderKey {
            at: transfer.created_at,
            id: transfer.id,
        };
        let mark = Mark {
            partition: 2,
            floor: OrderKey { at: later, ..key },
            open: std::collections::BTreeMap::from([(transfer.to.clone(), key)]),
        };
        assert_eq!(
            decode_credits_record(&encode_mark(&mark)).unwrap(),
            CreditsRecord::Mark(mark)
        );
        assert_eq!(
            decode_credits_record(&encode_credit(&credit)).unwrap(),
            CreditsRecord::Credit(credit)
        );
        assert!(
            decode_outcome(br#"{"transfer_id":null,"status":"odd","partition":0,"offset":0}"#)
                .is_err()
        );
    }

    /// What serde_json makes of a transfer message: the fast path's check.
    fn by_serde(bytes: &[u8]) -> Option<[String; 6]> {
        let raw: RawTransfer = serde_json::from_slice(bytes).ok()?;
        Some(
            [
                raw.id,
                raw.from,
                raw.to,
                raw.amount,
                raw.currency,
                raw.created_at,
            ]
            .map(String::from),
        )
    }

    /// A token of a message: mostly well-formed pieces, sometimes not.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z0-9. -]{0,6}".prop_map(|s| format!("{s:?}")),
            1 => Just(r#""a\"b""#.to_owned()),
            1 => Just(r#""\u0069d""#.to_owned()),
            1 => Just("12".to_owned()),
            1 => Just("null".to_owned()),
            1 => Just("true".to_owned()),
            1 => Just("false".to_owned()),
            1 => Just("\"é\"".to_owned()),
            1 => Just("\"\t\"".to_owned()),
        ]
    }

    /// Changes that may make a message something else than the plain form.
    #[derive(Debug, Clone)]
    enum Change {
        Value(usize, String),
        Key(usize, String),
        Repeat(usize),
        Drop(usize),
        Add(String, String),
    }

    fn change(fields: usize) -> impl Strategy<Value = Change> {
        prop_oneof![
            (0..fields, piece()).prop_map(|(i, v)| Change::Value(i, v)),
            (0..fields, piece()).prop_map(|(i, k)| Change::Key(i, k)),
            (0..fields).prop_map(Change::Repeat),
            (0..fields).prop_map(Change::Drop),
            (piece(), piece()).prop_map(|(k, v)| Change::Add(k, v)),
        ]
    }

    /// An object of `names` in any order, each with its value from
    /// `values` (JSON text), with up to two changes, any whitespace, and
    /// sometimes something after it.
    fn message(
        names: &'static [&'static str],
        values: impl Strategy<Value = Vec<String>>,
    ) -> impl Strategy<Value = Vec<u8>> {
        let space = prop::sample::select(vec!["", " ", "\n", "\t ", "\r\n"]);
        (
            Just((0..names.len()).collect::<Vec<_>>()).prop_shuffle(),
            values,
            prop::collection::vec(change(names.len()), 0..3),
            prop::collection::vec(space.clone(), 4),
            prop::sample::select(vec!["", "", "", ",", "}", " x", "{"]),
        )
            .prop_map(move |(order, values, changes, spaces, tail)| {
                let mut fields: Vec<(String, String)> = order
                    .iter()
                    .map(|&i| (format!("{:?}", names[i]), values[i].clone()))
                    .collect();
                for change in changes {
                    let n = fields.len();
                    match change {
                        Change::Value(i, v) if i < n => fields[i].1 = v,
                        Change::Key(i, k) if i < n => fields[i].0 = k,
                        Change::Repeat(i) if i < n => fields.push(fields[i].clone()),
                        Change::Drop(i) if i < n => {
                            fields.remove(i);
                        }
                        Change::Add(k, v) => fields.push((k, v)),
                        _ => {}
                    }
                }
                let [a, b, c, d] = [spaces[0], spaces[1], spaces[2], spaces[3]];
                let body: Vec<String> = fields
                    .iter()
                    .map(|(key, value)| format!("{a}{key}{b}:{c}{value}{d}"))
                    .collect();
                format!("{d}{{{}}}{a}{tail}", body.join(",")).into_bytes()
            })
    }

    fn plain_values(count: usize) -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec("[a-z0-9. -]{0,6}".prop_map(|s| format!("{s:?}")), count)
    }

    /// A credit's fields as `encode_credit` writes them, or near it: the
    /// id sometimes not a UUID, `effective_at` and `local` sometimes of
    /// the other's type.
    fn credit_values() -> impl Strategy<Value = Vec<String>> {
        (
            prop::sample::select(vec![format!("{ID:?}"), r#""not-a-uuid""#.to_owned()]),
            plain_values(7),
            prop::sample::select(vec![None, Some("true")]),
            prop::sample::select(vec!["true", "false", "true", "false", r#""true""#]),
        )
            .prop_map(|(id, mut rest, effective_at, local)| {
                rest[0] = id;
                if let Some(effective_at) = effective_at {
                    rest[6] = effective_at.to_owned();
                }
                rest.push(local.to_owned());
                rest
            })
    }

    proptest! {
        // Cheap cases (a few microseconds): many of them, so that the rare
        // shapes where the reader answers and could differ come up.
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn the_plain_json_reader_answers_only_where_serde_reads_the_same(
            bytes in message(&TRANSFER_FIELDS, plain_values(6)),
        ) {
            if let Some(read) = plain_json::string_fields(&bytes, &TRANSFER_FIELDS) {
                let expected = by_serde(&bytes);
                prop_assert_eq!(Some(read.map(str::to_owned)), expected);
            }
        }

        #[test]
        fn the_plain_json_reader_takes_every_plain_transfer_object(
            values in prop::collection::vec("[a-zA-Z0-9:._-]{0,12}", 6),
            order in Just(TRANSFER_FIELDS.to_vec()).prop_shuffle(),
        ) {
            let object: BTreeMap<&str, &str> = TRANSFER_FIELDS
                .iter()
                .copied()
                .zip(values.iter().map(String::as_str))
                .collect();
            let body: Vec<String> = order
                .iter()
                .map(|name| format!("{name:?}:{:?}", object[name]))
                .collect();
            let bytes = format!("{{{}}}", body.join(",")).into_bytes();
            let read = plain_json::string_fields(&bytes, &TRANSFER_FIELDS);
            prop_assert_eq!(read.map(|r| r.map(str::to_owned)), by_serde(&bytes));
        }

        /// The guard of the test below, which checks only where the reader
        /// answers: every credit `encode_credit` writes, local or not,
        /// re-timed or not, with any account names and amounts, is read by
        /// the reader and not handed to serde, and read as serde reads it.
        #[test]
        fn the_plain_json_reader_takes_every_credit_encode_credit_writes(
            id in any::<u128>(),
            names in prop::collection::vec("[a-zA-Z0-9._-]{1,20}", 2),
            minor in 1i64..1_000_000_000,
            seconds in 0i64..4_000_000_000,
            retimed_by in prop::option::of(1i64..1_000_000),
            local: bool,
        ) {
            prop_assume!(names[0] != names[1]);
            let created_at = OffsetDateTime::from_unix_timestamp(seconds).unwrap();
            let credit = Credit {
                transfer_id: TransferId(uuid::Uuid::from_u128(id)),
                from: AccountId::parse(&names[0]).unwrap(),
                to: AccountId::parse(&names[1]).unwrap(),
                amount: Amount::from_minor(minor).unwrap(),
                currency: Currency::EUR,
                created_at,
                effective_at: created_at
                    + time::Duration::nanoseconds(retimed_by.unwrap_or(0)),
                local,
            };
            let bytes = encode_credit(&credit);
            let read = plain_credit(&bytes);
            prop_assert!(read.is_some(), "not read: {}", String::from_utf8_lossy(&bytes));
            let expected: CreditWire = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!(read, Some(expected));
        }

        #[test]
        fn a_credit_read_without_serde_is_the_credit_serde_reads(
            bytes in message(&CREDIT_FIELDS, credit_values()),
        ) {
            if let Some(read) = plain_credit(&bytes) {
                let expected: Result<CreditWire, String> =
                    serde_json::from_slice(&bytes).map_err(|e| e.to_string());
                prop_assert_eq!(Ok(read), expected);
            }
        }
    }
}
