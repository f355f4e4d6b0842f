//! The seeded generator of realistic transfers: pure, deterministic by seed.
//!
//! It keeps the balance every account will have once the transfers generated
//! so far are decided as intended, and uses it to choose: a payment never
//! exceeds its sender's balance, an overdraft (the share meant to fail)
//! always does. The ledger may still reject a payment the generator meant to
//! succeed when the credit that funded it is in flight between shards; the
//! shares are what the stream intends, not what the ledger must decide.

use std::collections::VecDeque;

use ledger_core::domain::{AccountId, Amount, Currency, Transfer, TransferId, AMOUNT_MAX_MINOR};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use time::OffsetDateTime;

/// How many recent transfers a resubmission may pick from: bounds memory,
/// and resubmissions in real systems are retries of recent requests.
const RECENT_MAX: usize = 1024;

/// A sender without funds is replaced by another random account this many
/// times before the generator falls back to a deposit.
const SENDER_TRIES_MAX: usize = 8;

/// Shares of the regular (not failing, not resubmitted) records.
const DEPOSIT_SHARE: f64 = 0.05;
const WITHDRAWAL_SHARE: f64 = 0.05;

/// Share of payments that go to a merchant: the first 1% of accounts receive
/// far more than the others, as shops do.
const MERCHANT_SHARE: f64 = 0.3;

/// Log-normal amounts: the median in minor units and the spread (sigma of the
/// underlying normal). Payments are mostly small with a long tail of large
/// ones; opening deposits are larger and less spread.
const OPENING_MEDIAN_MINOR: f64 = 100_000.0;
const OPENING_SIGMA: f64 = 0.8;
const DEPOSIT_MEDIAN_MINOR: f64 = 50_000.0;
const DEPOSIT_SIGMA: f64 = 1.0;
const PAYMENT_MEDIAN_MINOR: f64 = 4_000.0;
const PAYMENT_SIGMA: f64 = 1.2;

/// What the generator is asked to produce.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// Customer accounts, named `acc-000000` upwards.
    pub accounts: u32,
    /// Share of records that exceed the sender's balance.
    pub fail_share: f64,
    /// Share of records that repeat an earlier transfer, id and all.
    pub duplicate_share: f64,
    pub currency: Currency,
    pub seed: u64,
}

/// Why a record was generated; tests and the summary count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `world` funds an account before it does anything else.
    OpeningDeposit,
    /// `world` adds money to an account.
    Deposit,
    /// Between two customer accounts, within the sender's balance.
    Payment,
    /// An account sends money to `world`, within its balance.
    Withdrawal,
    /// More than the sender has: meant to be rejected (insufficient_funds).
    Overdraft,
    /// An earlier transfer again, same id and content.
    Resubmission,
}

/// One generated record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub transfer: Transfer,
    pub kind: Kind,
}

/// The generator's state. Deterministic: the same config and the same
/// sequence of `now` values give the same records.
#[derive(Debug)]
pub struct Generator {
    config: GeneratorConfig,
    rng: ChaCha8Rng,
    accounts: Vec<AccountId>,
    /// Each account's balance once everything generated so far is decided as
    /// intended (minor units); indexes match `accounts`.
    balances: Vec<i64>,
    /// Accounts that got their opening deposit; all of them before anything
    /// else, so that no account starts by spending money it does not have.
    opened: usize,
    /// Candidates for resubmission.
    recent: VecDeque<Transfer>,
    /// The first `merchants` accounts receive `MERCHANT_SHARE` of payments.
    merchants: usize,
}

impl Generator {
    pub fn new(config: GeneratorConfig) -> Self {
        // acc-NNNNNN is always a valid account id (see AccountId::parse).
        let accounts: Vec<AccountId> = (0..config.accounts)
            .map(|i| {
                AccountId::parse(&format!("acc-{i:06}"))
                    .unwrap_or_else(|error| panic!("generator bug: {error}"))
            })
            .collect();
        Generator {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            balances: vec![0; accounts.len()],
            merchants: (accounts.len() / 100).max(1),
            accounts,
            opened: 0,
            recent: VecDeque::with_capacity(RECENT_MAX),
            config,
        }
    }

    /// The next record, stamped `now` (a resubmission keeps its original
    /// stamp, since it is the same transfer).
    pub fn next(&mut self, now: OffsetDateTime) -> Generated {
        if self.opened < self.accounts.len() {
            let to = self.opened;
            self.opened += 1;
            let amount = self.log_normal(OPENING_MEDIAN_MINOR, OPENING_SIGMA, AMOUNT_MAX_MINOR);
            return self.fresh(Kind::OpeningDeposit, None, Some(to), amount, now);
        }
        let roll: f64 = self.rng.gen();
        if roll < self.config.duplicate_share {
            if let Some(earlier) = self.pick_recent() {
                return Generated {
                    transfer: earlier,
                    kind: Kind::Resubmission,
                };
            }
        }
        if roll < self.config.duplicate_share + self.config.fail_share {
            if let Some(overdraft) = self.overdraft(now) {
                return overdraft;
            }
        }
        self.regular(now)
    }

    fn regular(&mut self, now: OffsetDateTime) -> Generated {
        let roll: f64 = self.rng.gen();
        if roll < DEPOSIT_SHARE {
            return self.deposit(now);
        }
        let Some(from) = self.funded_sender() else {
            return self.deposit(now);
        };
        let available = self.balances[from];
        let wanted = self.log_normal(PAYMENT_MEDIAN_MINOR, PAYMENT_SIGMA, AMOUNT_MAX_MINOR);
        let amount = wanted.min(available);
        if roll < DEPOSIT_SHARE + WITHDRAWAL_SHARE {
            self.fresh(Kind::Withdrawal, Some(from), None, amount, now)
        } else {
            let to = self.recipient(from);
            self.fresh(Kind::Payment, Some(from), Some(to), amount, now)
        }
    }

    fn deposit(&mut self, now: OffsetDateTime) -> Generated {
        let to = self.rng.gen_range(0..self.accounts.len());
        let amount = self.log_normal(DEPOSIT_MEDIAN_MINOR, DEPOSIT_SIGMA, AMOUNT_MAX_MINOR);
        self.fresh(Kind::Deposit, None, Some(to), amount, now)
    }

    /// A transfer of more than the sender has; `None` when the sender is so
    /// rich that no valid amount exceeds its balance.
    fn overdraft(&mut self, now: OffsetDateTime) -> Option<Generated> {
        let from = self.rng.gen_range(0..self.accounts.len());
        let excess = self.log_normal(PAYMENT_MEDIAN_MINOR, PAYMENT_SIGMA, AMOUNT_MAX_MINOR);
        let amount = self.balances[from].checked_add(excess)?;
        if amount > AMOUNT_MAX_MINOR {
            return None;
        }
        let to = self.recipient(from);
        Some(self.fresh(Kind::Overdraft, Some(from), Some(to), amount, now))
    }

    /// A random account with at least one cent, if one turns up quickly.
    fn funded_sender(&mut self) -> Option<usize> {
        (0..SENDER_TRIES_MAX)
            .map(|_| self.rng.gen_range(0..self.accounts.len()))
            .find(|&i| self.balances[i] > 0)
    }

    fn recipient(&mut self, from: usize) -> usize {
        loop {
            let to = if self.rng.gen_bool(MERCHANT_SHARE) {
                self.rng.gen_range(0..self.merchants)
            } else {
                self.rng.gen_range(0..self.accounts.len())
            };
            // There are at least two accounts (see Config), so this ends.
            if to != from {
                return to;
            }
        }
    }

    fn pick_recent(&mut self) -> Option<Transfer> {
        if self.recent.is_empty() {
            return None;
        }
        let index = self.rng.gen_range(0..self.recent.len());
        self.recent.get(index).cloned()
    }

    /// Builds a new transfer (`None` is `world`), books its intended effect
    /// on the balances unless it is meant to fail, and remembers it for
    /// resubmission.
    fn fresh(
        &mut self,
        kind: Kind,
        from: Option<usize>,
        to: Option<usize>,
        amount_minor: i64,
        now: OffsetDateTime,
    ) -> Generated {
        let id = TransferId(uuid::Builder::from_random_bytes(self.rng.gen()).into_uuid());
        let account = |index: Option<usize>| match index {
            Some(i) => self.accounts[i].clone(),
            None => AccountId::world(),
        };
        // Callers keep amounts within 1..=AMOUNT_MAX_MINOR and the two
        // accounts apart, so these constructors cannot refuse.
        let transfer = Amount::from_minor(amount_minor)
            .and_then(|amount| {
                Transfer::new(
                    id,
                    account(from),
                    account(to),
                    amount,
                    self.config.currency,
                    now,
                )
            })
            .unwrap_or_else(|error| panic!("generator bug: {error}"));
        if kind != Kind::Overdraft {
            if let Some(i) = from {
                self.balances[i] -= amount_minor;
                assert!(
                    self.balances[i] >= 0,
                    "generator overspent {}",
                    self.accounts[i]
                );
            }
            if let Some(i) = to {
                self.balances[i] += amount_minor;
            }
        }
        if self.recent.len() == RECENT_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back(transfer.clone());
        Generated { transfer, kind }
    }

    /// A log-normal amount in minor units, in 1..=max.
    fn log_normal(&mut self, median_minor: f64, sigma: f64, max: i64) -> i64 {
        // Box-Muller: two uniforms give one standard normal. 1 - u keeps the
        // logarithm's argument in (0, 1].
        let u1: f64 = 1.0 - self.rng.gen::<f64>();
        let u2: f64 = self.rng.gen();
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let amount = (median_minor * (sigma * normal).exp()).round();
        // The float-to-int cast saturates, and the clamp bounds it anyway.
        (amount as i64).clamp(1, max)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn config(seed: u64) -> GeneratorConfig {
        GeneratorConfig {
            accounts: 200,
            fail_share: 0.1,
            duplicate_share: 0.05,
            currency: Currency::EUR,
            seed,
        }
    }

    fn stream(seed: u64, records: usize) -> Vec<Generated> {
        let now = OffsetDateTime::UNIX_EPOCH;
        let mut generator = Generator::new(config(seed));
        (0..records).map(|_| generator.next(now)).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        assert_eq!(stream(7, 2000), stream(7, 2000));
        assert_ne!(stream(7, 2000), stream(8, 2000));
    }

    #[test]
    fn every_account_is_funded_first() {
        let records = stream(1, 300);
        for (i, record) in records[..200].iter().enumerate() {
            assert_eq!(record.kind, Kind::OpeningDeposit);
            assert!(record.transfer.from.is_world());
            assert_eq!(record.transfer.to.as_str(), format!("acc-{i:06}"));
        }
        assert!(records[200..]
            .iter()
            .all(|r| r.kind != Kind::OpeningDeposit));
    }

    /// Replays the stream as the ledger would decide it in order, and checks
    /// that each record does what its kind says, with the shares respected.
    #[test]
    fn records_do_what_their_kind_says_in_the_intended_shares() {
        let records = stream(3, 50_000);
        let mut balances: HashMap<AccountId, i64> = HashMap::new();
        let mut seen: HashMap<TransferId, Transfer> = HashMap::new();
        let mut kinds: HashMap<Kind, usize> = HashMap::new();
        for Generated { transfer, kind } in &records {
            *kinds.entry(*kind).or_default() += 1;
            if *kind == Kind::Resubmission {
                assert_eq!(
                    seen.get(&transfer.id),
                    Some(transfer),
                    "same id, same content"
                );
                continue;
            }
            assert!(
                seen.insert(transfer.id, transfer.clone()).is_none(),
                "fresh ids are unique"
            );
            let amount = transfer.amount.minor();
            let from = *balances.get(&transfer.from).unwrap_or(&0);
            if *kind == Kind::Overdraft {
                assert!(amount > from, "an overdraft exceeds the balance");
                continue;
            }
            if !transfer.from.is_world() {
                assert!(amount <= from, "{kind:?} within the balance");
            }
            *balances.entry(transfer.from.clone()).or_default() -= amount;
            *balances.entry(transfer.to.clone()).or_default() += amount;
        }
        assert_eq!(balances.values().sum::<i64>(), 0, "money is conserved");
        assert!(balances
            .iter()
            .all(|(account, balance)| account.is_world() || *balance >= 0));

        let share = |kind| kinds.get(&kind).copied().unwrap_or(0) as f64 / 49_800.0;
        let near = |actual: f64, wanted: f64| (actual - wanted).abs() < wanted * 0.15;
        assert!(near(share(Kind::Resubmission), 0.05), "{kinds:?}");
        assert!(near(share(Kind::Overdraft), 0.10), "{kinds:?}");
        assert!(share(Kind::Payment) > 0.6, "{kinds:?}");
        assert!(share(Kind::Deposit) > 0.02 && share(Kind::Withdrawal) > 0.02);
    }

    #[test]
    fn amounts_are_skewed() {
        let mut amounts: Vec<i64> = stream(5, 20_000)
            .iter()
            .filter(|r| r.kind == Kind::Payment)
            .map(|r| r.transfer.amount.minor())
            .collect();
        amounts.sort_unstable();
        let median = amounts[amounts.len() / 2];
        let mean = amounts.iter().sum::<i64>() / amounts.len() as i64;
        let p99 = amounts[amounts.len() * 99 / 100];
        // A long right tail: mean above median, p99 far above it.
        assert!(mean > median, "mean {mean}, median {median}");
        assert!(p99 > 5 * median, "p99 {p99}, median {median}");
        let distinct: HashSet<i64> = amounts.iter().copied().collect();
        assert!(distinct.len() > amounts.len() / 10, "amounts vary");
    }

    #[test]
    fn no_failures_or_duplicates_when_the_shares_are_zero() {
        let mut generator = Generator::new(GeneratorConfig {
            fail_share: 0.0,
            duplicate_share: 0.0,
            ..config(9)
        });
        let now = OffsetDateTime::UNIX_EPOCH;
        assert!((0..5000)
            .map(|_| generator.next(now).kind)
            .all(|kind| kind != Kind::Overdraft && kind != Kind::Resubmission));
    }
}
