//! Domain types that cannot hold invalid values.
//!
//! Every constructor validates, so code that holds a `Transfer` never has to
//! ask whether its amount is positive or its accounts differ. Money is kept in
//! integer minor units (cents): `rust_decimal` parses and prints the decimal
//! strings of the wire format, integers do the arithmetic, so no float ever
//! touches a balance and sums are exact.

use std::fmt;
use std::str::FromStr;

use compact_str::CompactString;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

/// The external account: deposits come from it, withdrawals go to it. It is
/// the only account allowed to go negative, which is what makes the sum of all
/// balances zero (double entry).
pub const WORLD: &str = "world";

/// Digits after the decimal point of every amount and balance.
pub const SCALE: u32 = 2;

/// Minor units per major unit (10^SCALE).
const MINOR_PER_MAJOR: i64 = 100;

/// The largest amount of one transfer, in minor units (one billion, major).
/// It bounds every sum the ledger computes far below `i128` overflow and
/// catches fat-fingered or hostile inputs.
pub const AMOUNT_MAX_MINOR: i64 = 1_000_000_000 * MINOR_PER_MAJOR;

/// Longest amount text the decimal parser is given.
const AMOUNT_TEXT_LEN_MAX: usize = 32;

/// Longest account id, in bytes; it bounds sled keys and message keys.
pub const ACCOUNT_ID_LEN_MAX: usize = 64;

/// Why a value was refused. The `code` is stable (it appears in outcomes,
/// metrics and DLQ headers); the message is for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error(
        "invalid account id {0:?}: use 1-{ACCOUNT_ID_LEN_MAX} characters of A-Z a-z 0-9 _ - . :"
    )]
    Account(String),
    #[error("invalid amount {0:?}: {1}")]
    Amount(String, AmountProblem),
    #[error("invalid currency {0:?}: use a three-letter ISO 4217 code such as EUR")]
    Currency(String),
    #[error("a transfer needs two different accounts, got {0:?} twice")]
    SameAccount(String),
}

/// What is wrong with an amount; its message names the limit it breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountProblem {
    /// Not `digits[.d[d]]`.
    Shape,
    /// More decimals than `SCALE`.
    Precision,
    /// Zero or negative.
    NotPositive,
    /// Above `AMOUNT_MAX_MINOR`.
    TooLarge,
}

impl fmt::Display for AmountProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmountProblem::Shape => f.write_str("must be a decimal string like \"142.50\""),
            AmountProblem::Precision => write!(f, "has more than {SCALE} decimals"),
            AmountProblem::NotPositive => f.write_str("must be positive"),
            AmountProblem::TooLarge => write!(
                f,
                "exceeds the maximum of {}",
                Money(AMOUNT_MAX_MINOR.into())
            ),
        }
    }
}

/// An account identifier, e.g. `acc-000042` or `world`.
///
/// Kept inline up to 24 bytes: every record names two accounts, and a batch
/// copies them into its balances, credits, held transfers and outcomes; as
/// `String`s, each copy was an allocation and a free.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(CompactString);

impl AccountId {
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        let valid = !text.is_empty()
            && text.len() <= ACCOUNT_ID_LEN_MAX
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if valid {
            Ok(AccountId(CompactString::from(text)))
        } else {
            Err(DomainError::Account(text.to_owned()))
        }
    }

    pub fn world() -> Self {
        AccountId(CompactString::const_new(WORLD))
    }

    pub fn is_world(&self) -> bool {
        self.0 == WORLD
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AccountId {
    type Error = DomainError;
    fn try_from(text: String) -> Result<Self, DomainError> {
        AccountId::parse(&text)
    }
}

impl From<AccountId> for String {
    fn from(id: AccountId) -> String {
        id.0.into()
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A transfer's identity, chosen by its submitter. Deciding a transfer id
/// twice is what idempotency forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TransferId(pub Uuid);

impl TransferId {
    pub fn new_random() -> Self {
        TransferId(Uuid::new_v4())
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        TransferId(Uuid::from_bytes(bytes))
    }
}

impl FromStr for TransferId {
    type Err = uuid::Error;
    fn from_str(text: &str) -> Result<Self, uuid::Error> {
        Uuid::parse_str(text).map(TransferId)
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A signed quantity of money in minor units: balances, sums, deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Money(pub i128);

impl Money {
    pub const ZERO: Money = Money(0);

    pub fn to_decimal(self) -> Decimal {
        // Every balance the ledger can reach is far below 2^96 minor units
        // (see AMOUNT_MAX_MINOR), the range of Decimal's mantissa.
        Decimal::from_i128_with_scale(self.0, SCALE)
    }
}

/// Checked in every build, not only in debug ones: a sum out of `i128`'s
/// range would be a wrong balance, and a wrong balance must stop the
/// process, never wrap.
impl std::ops::Add for Money {
    type Output = Money;
    fn add(self, other: Money) -> Money {
        Money(
            self.0
                .checked_add(other.0)
                .unwrap_or_else(|| panic!("invariant violated: {self:?} + {other:?} overflows")),
        )
    }
}

impl std::ops::Sub for Money {
    type Output = Money;
    fn sub(self, other: Money) -> Money {
        Money(
            self.0
                .checked_sub(other.0)
                .unwrap_or_else(|| panic!("invariant violated: {self:?} - {other:?} overflows")),
        )
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, |a, b| a + b)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_decimal().fmt(f)
    }
}

impl Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A positive amount of one transfer, at most `AMOUNT_MAX_MINOR`, with at most
/// `SCALE` decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Amount(i64);

impl Amount {
    pub fn from_minor(minor: i64) -> Result<Self, DomainError> {
        if minor <= 0 {
            return Err(DomainError::Amount(
                Money(minor.into()).to_string(),
                AmountProblem::NotPositive,
            ));
        }
        if minor > AMOUNT_MAX_MINOR {
            return Err(DomainError::Amount(
                Money(minor.into()).to_string(),
                AmountProblem::TooLarge,
            ));
        }
        Ok(Amount(minor))
    }

    /// Parses a plain decimal string, `digits[.d[d]]` such as `"142.50"`.
    /// Everything else a decimal parser would take (a sign, spaces,
    /// exponents, `.5`, `5.`, separators) is refused: an amount on the wire
    /// has one spelling, so two systems can never read the same record as
    /// two different amounts.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        use AmountProblem::{NotPositive, Precision, Shape, TooLarge};
        let refuse = |why| DomainError::Amount(text.to_owned(), why);
        match plain_decimal_decimals(text) {
            Some(decimals) if decimals > SCALE as usize => return Err(refuse(Precision)),
            Some(_) => {}
            // A minus in front of a plain decimal says more than "bad shape".
            None if text
                .strip_prefix('-')
                .is_some_and(|rest| plain_decimal_decimals(rest).is_some()) =>
            {
                return Err(refuse(NotPositive))
            }
            None => return Err(refuse(Shape)),
        }
        // Beyond this many digits no amount is below the maximum; it also
        // bounds the decimal parser's work.
        if text.len() > AMOUNT_TEXT_LEN_MAX {
            return Err(refuse(TooLarge));
        }
        let decimal = Decimal::from_str_exact(text).map_err(|_| refuse(TooLarge))?;
        if decimal.is_zero() {
            return Err(refuse(NotPositive));
        }
        let minor = decimal
            .checked_mul(Decimal::from(MINOR_PER_MAJOR))
            .and_then(|scaled| i64::try_from(scaled.normalize()).ok())
            .ok_or_else(|| refuse(TooLarge))?;
        Amount::from_minor(minor).map_err(|_| refuse(TooLarge))
    }

    pub fn minor(self) -> i64 {
        self.0
    }

    pub fn money(self) -> Money {
        Money(self.0.into())
    }
}

/// The number of decimals of `digits[.digits]` (ASCII digits only, at
/// least one on each side of the point); `None` for any other shape.
fn plain_decimal_decimals(text: &str) -> Option<usize> {
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    match text.split_once('.') {
        None => all_digits(text).then_some(0),
        Some((whole, fraction)) => {
            (all_digits(whole) && all_digits(fraction)).then_some(fraction.len())
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.money().fmt(f)
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A three-letter currency code (ISO 4217 shape; the ledger itself accepts
/// exactly one currency, see `Config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub const EUR: Currency = Currency(*b"EUR");

    pub fn parse(text: &str) -> Result<Self, DomainError> {
        match text.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => {
                Ok(Currency([*a, *b, *c]))
            }
            _ => Err(DomainError::Currency(text.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII uppercase letters get in (see `parse`).
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl FromStr for Currency {
    type Err = DomainError;
    fn from_str(text: &str) -> Result<Self, DomainError> {
        Currency::parse(text)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A request to move `amount` from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Amount,
    pub currency: Currency,
    pub created_at: OffsetDateTime,
}

impl Transfer {
    /// The only way to build a transfer: refuses a transfer to oneself.
    pub fn new(
        id: TransferId,
        from: AccountId,
        to: AccountId,
        amount: Amount,
        currency: Currency,
        created_at: OffsetDateTime,
    ) -> Result<Self, DomainError> {
        if from == to {
            return Err(DomainError::SameAccount(from.0.into()));
        }
        Ok(Transfer {
            id,
            from,
            to,
            amount,
            currency,
            created_at,
        })
    }
}

/// The second half of an accepted transfer: the source shard has debited
/// `from` and asks the destination's shard to credit `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credit {
    pub transfer_id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Amount,
    pub currency: Currency,
    pub created_at: OffsetDateTime,
    /// Where the transfer stands in the ledger's order: its `created_at`,
    /// unless it arrived after a later transfer of its partition and was
    /// re-timed (see `order`). The receiving shard counts the credit for
    /// transfers ordered after `(effective_at, transfer_id)` only.
    pub effective_at: OffsetDateTime,
    /// Applied by the shard that wrote it, in the same transaction, because
    /// that shard owns the destination's partition too: reading it back
    /// applies nothing.
    pub local: bool,
}

impl Credit {
    /// The credit of a transfer that kept its `created_at`.
    pub fn of(transfer: &Transfer) -> Self {
        Self::at(transfer, transfer.created_at)
    }

    /// The credit of a transfer ordered at `effective_at`.
    pub fn at(transfer: &Transfer, effective_at: OffsetDateTime) -> Self {
        Credit {
            transfer_id: transfer.id,
            from: transfer.from.clone(),
            to: transfer.to.clone(),
            amount: transfer.amount,
            currency: transfer.currency,
            created_at: transfer.created_at,
            effective_at,
            local: false,
        }
    }
}

/// Why a transfer was rejected. The snake_case names are the stable codes
/// used on the wire, in metrics and in DLQ headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum RejectReason {
    /// Not UTF-8 or not JSON at all.
    Malformed = 1,
    /// JSON, but not a transfer: a field missing, of the wrong type, or unknown.
    UnknownSchema = 2,
    InvalidId = 3,
    InvalidAccount = 4,
    InvalidAmount = 5,
    InvalidCurrency = 6,
    InvalidTimestamp = 7,
    SameAccount = 8,
    /// A well-formed currency that is not the ledger's.
    CurrencyMismatch = 9,
    InsufficientFunds = 10,
    /// The record sits in a partition that does not own its source account
    /// (another partitioner than murmur2, a missing or wrong key).
    Misrouted = 11,
    /// The source lacked funds and the shard could not yet rule out an
    /// earlier credit still on its way; it waited `--hold-max-ms` and gave
    /// up. Unlike `insufficient_funds`, this depends on timing.
    HoldExpired = 12,
}

impl RejectReason {
    pub const ALL: [RejectReason; 12] = [
        RejectReason::Malformed,
        RejectReason::UnknownSchema,
        RejectReason::InvalidId,
        RejectReason::InvalidAccount,
        RejectReason::InvalidAmount,
        RejectReason::InvalidCurrency,
        RejectReason::InvalidTimestamp,
        RejectReason::SameAccount,
        RejectReason::CurrencyMismatch,
        RejectReason::InsufficientFunds,
        RejectReason::Misrouted,
        RejectReason::HoldExpired,
    ];

    pub fn code(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::UnknownSchema => "unknown_schema",
            RejectReason::InvalidId => "invalid_id",
            RejectReason::InvalidAccount => "invalid_account",
            RejectReason::InvalidAmount => "invalid_amount",
            RejectReason::InvalidCurrency => "invalid_currency",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::SameAccount => "same_account",
            RejectReason::CurrencyMismatch => "currency_mismatch",
            RejectReason::InsufficientFunds => "insufficient_funds",
            RejectReason::Misrouted => "misrouted",
            RejectReason::HoldExpired => "hold_expired",
        }
    }

    pub fn from_u8(byte: u8) -> Option<Self> {
        RejectReason::ALL.into_iter().find(|r| *r as u8 == byte)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// How a transfer id was decided, once and for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Decision {
    Accepted,
    Rejected(RejectReason),
}

/// What happened to one input record of `transactions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeKind {
    Accepted,
    Rejected(RejectReason),
    /// The transfer id was already decided; nothing changed.
    Duplicate,
}

impl OutcomeKind {
    pub fn status(self) -> &'static str {
        match self {
            OutcomeKind::Accepted => "accepted",
            OutcomeKind::Rejected(_) => "rejected",
            OutcomeKind::Duplicate => "duplicate",
        }
    }

    pub fn reason(self) -> Option<RejectReason> {
        match self {
            OutcomeKind::Rejected(reason) => Some(reason),
            _ => None,
        }
    }
}

impl From<Decision> for OutcomeKind {
    fn from(decision: Decision) -> Self {
        match decision {
            Decision::Accepted => OutcomeKind::Accepted,
            Decision::Rejected(reason) => OutcomeKind::Rejected(reason),
        }
    }
}

/// Reads a timestamp as the wire format spells it (RFC 3339), in UTC.
pub(crate) fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(|at| at.to_offset(time::UtcOffset::UTC))
}

/// Writes a timestamp as the wire format spells it (RFC 3339).
pub(crate) fn format_timestamp(at: OffsetDateTime) -> String {
    // Formatting a UTC timestamp as RFC 3339 fails only for years outside
    // 0..=9999, which parse_timestamp never produces.
    at.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "overflows")]
    fn money_never_wraps() {
        let _ = Money(i128::MAX) + Money(1);
    }

    #[test]
    fn amounts_parse_exactly_or_say_why() {
        assert_eq!(Amount::parse("142.50").unwrap().minor(), 14250);
        assert_eq!(Amount::parse("0.01").unwrap().minor(), 1);
        assert_eq!(Amount::parse("7").unwrap().minor(), 700);
        assert_eq!(Amount::parse("7.5").unwrap().minor(), 750);
        assert_eq!(Amount::parse("007.50").unwrap().minor(), 750);
        assert_eq!(
            Amount::parse("1000000000.00").unwrap().minor(),
            AMOUNT_MAX_MINOR
        );
        for (text, why) in [
            ("0", "must be positive"),
            ("0.00", "must be positive"),
            ("-1.00", "must be positive"),
            ("1.001", "has more than 2 decimals"),
            ("1000000000.01", "exceeds the maximum of 1000000000.00"),
            (
                "99999999999999999999999999",
                "exceeds the maximum of 1000000000.00",
            ),
            ("-0.50", "must be positive"),
            ("1e3", "must be a decimal string like \"142.50\""),
            ("1E3", "must be a decimal string like \"142.50\""),
            ("+1.00", "must be a decimal string like \"142.50\""),
            (" 1.00", "must be a decimal string like \"142.50\""),
            ("1.00 ", "must be a decimal string like \"142.50\""),
            (".50", "must be a decimal string like \"142.50\""),
            ("5.", "must be a decimal string like \"142.50\""),
            ("1_000.00", "must be a decimal string like \"142.50\""),
            ("1,000.00", "must be a decimal string like \"142.50\""),
            ("--1.00", "must be a decimal string like \"142.50\""),
            ("1.2.3", "must be a decimal string like \"142.50\""),
            ("\u{0661}.00", "must be a decimal string like \"142.50\""),
            (
                "1000000000000000000000000000000000.00",
                "exceeds the maximum of 1000000000.00",
            ),
            ("abc", "must be a decimal string like \"142.50\""),
            ("", "must be a decimal string like \"142.50\""),
        ] {
            let error = Amount::parse(text).unwrap_err();
            assert!(matches!(&error, DomainError::Amount(refused, _) if refused == text));
            assert_eq!(error.to_string(), format!("invalid amount {text:?}: {why}"));
        }
    }

    #[test]
    fn amounts_print_with_two_decimals() {
        assert_eq!(Amount::parse("142.5").unwrap().to_string(), "142.50");
        assert_eq!(Money(-5).to_string(), "-0.05");
        assert_eq!(Money(0).to_string(), "0.00");
    }

    #[test]
    fn accounts_and_currencies_validate() {
        assert!(AccountId::parse("acc-0001").is_ok());
        assert!(AccountId::parse("world").unwrap().is_world());
        assert!(AccountId::parse("").is_err());
        assert!(AccountId::parse("has space").is_err());
        assert!(AccountId::parse(&"x".repeat(65)).is_err());
        assert!(Currency::parse("EUR").is_ok());
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("EURO").is_err());
    }

    #[test]
    fn reject_reasons_round_trip_through_their_byte() {
        for reason in RejectReason::ALL {
            assert_eq!(RejectReason::from_u8(reason as u8), Some(reason));
        }
        assert_eq!(RejectReason::from_u8(0), None);
    }
}
