//! `ledger query`: an account's balance, the top accounts, a transfer's
//! status and shard stats, from running shards (`--url`, their HTTP API) or
//! from stopped shards' sled directories (`--db`).
//!
//! Both sources yield the same `ledger::api` views, so merging several
//! shards and printing them (a table, or `--json`) is one code path for
//! both. Shards are known by the name their views report, never by the
//! order or the address they were given in: one URL may stand for every
//! shard (`ledger_cli::shards`), and ownership of partitions (which
//! `balance` routes by) is what each shard's stats say. Answers show committed state only: a stopped shard's last batch
//! whose Kafka commit is unknown (its pending record) is left out and
//! reported, since only the shard itself, talking to Kafka at start, can
//! tell whether it happened.

use std::borrow::Cow;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::builder::RangedU64ValueParser;
use clap::Subcommand;
use reqwest::blocking::Client;
use reqwest::{StatusCode, Url};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::Serialize;

use ledger::api::{
    self, AccountView, BalancesPageView, DecisionStatus, ErrorView, ShardView, StatsView, TopView,
    TransferView, BALANCES_PAGE_MAX,
};
use ledger::store::{Store, StoreError, StoreOptions};
use ledger_cli::shards;
use ledger_core::domain::{AccountId, TransferId};
use ledger_core::machine::{Offsets, Source as InputSource};
use ledger_core::routing::partition_for;

/// The shards' API URLs, comma-separated, used when neither `--db` nor
/// `--url` is given (so a deployment sets it once for its operators).
const URLS_ENV: &str = "TXLEDGER_SHARD_URLS";

/// Bounds what one question may cost: shards asked, accounts listed, time
/// and bytes per HTTP answer.
const SHARDS_MAX: usize = 1024;
/// `top` is a table for a person: at most this many rows. Every balance,
/// for reconciling, is `balances`, streamed page by page.
const TOP_LIMIT_MAX: u64 = 1000;
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A shard answers `stats` by scanning its balances: allow for a large one.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_BODY_MAX_BYTES: u64 = 16 << 20;

/// The exit status of an answer that is "no such thing" (an unknown
/// account, a transfer no shard knows); errors exit with 2 (`main.rs`).
const EXIT_NOT_FOUND: u8 = 1;

const AFTER_HELP: &str = "\
Shards are given all with --db or all with --url, in any order. Without either,
the comma-separated URLs in TXLEDGER_SHARD_URLS are used. A --url whose host name
resolves to several addresses stands for one shard per address, so that one URL
reaches every shard: --url http://ledger-consumer:8080 (a Kubernetes headless
Service) or --url http://consumer:8080 (a compose service scaled with --scale).
Each shard is known by the name it reports (a running shard's transactional id,
e.g. ledger-consumer-0; a --db directory as given); two URLs that reach the same
shard count once, and shards are listed by name. `balance` asks the shard whose
stats report the account's partition.

Examples:
  ledger query stats --db /var/lib/txledger/shard-0
  ledger query balance acc-000042 --url http://127.0.0.1:8080 --url http://127.0.0.1:8081
  ledger query balances --format csv --url http://ledger-consumer:8080 > balances.csv
  ledger query top --limit 5 --json
  ledger query transfer 6f1c1f3e-4a2b-4c55-9d1e-2b8f0c7d9a10
  ledger query balances --format csv --db shard-0 --db shard-1 > balances.csv

--json prints, whatever the number of shards: for balance an AccountView; for
top an array of AccountView, largest first; for transfer {status, reason,
decided_by, credited_by, shards: [TransferView]}; for stats {shards:
[StatsView], total}; for an unknown account an ErrorView. balances prints JSON
lines (or CSV) whatever --json says.

Exit status: 0 answered; 1 not found (an unknown account, or a transfer no
shard asked knows); 2 error.";

// The one-line description is the `Query` variant's, in `main.rs`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(subcommand)]
    question: Question,

    /// A stopped shard's sled directory, read offline; repeat it once per
    /// shard. A running shard locks its directory: ask it with --url.
    #[arg(
        long = "db",
        value_name = "DIR",
        global = true,
        conflicts_with = "urls"
    )]
    dbs: Vec<PathBuf>,

    /// A running shard's HTTP API, e.g. http://127.0.0.1:8080; repeat it
    /// (or separate with commas) once per shard, or give one name that
    /// resolves to every shard: http://ledger-consumer:8080 (a headless
    /// Service) or http://consumer:8080 (a compose service scaled with
    /// --scale) reaches every shard, as a name with several addresses
    /// stands for one shard per address (not localhost: loopback addresses
    /// are one machine) [fallback: TXLEDGER_SHARD_URLS].
    #[arg(
        long = "url",
        value_name = "URL",
        global = true,
        value_delimiter = ',',
        value_parser = shards::parse_url
    )]
    urls: Vec<Url>,

    /// Print JSON (the `ledger::api` views) instead of a table.
    #[arg(long, global = true)]
    json: bool,

    /// Partition count of `transactions` and `ledger-credits`: `balance`
    /// needs it to find the account's partition, and so the shard that
    /// owns it.
    #[arg(
        long,
        value_name = "N",
        global = true,
        default_value_t = 6,
        value_parser = clap::value_parser!(i32).range(1..)
    )]
    partitions: i32,
}

#[derive(Debug, Subcommand)]
enum Question {
    /// One account's committed balance, asked of the shard that owns its
    /// partition now.
    Balance {
        #[arg(value_parser = AccountId::parse)]
        account: AccountId,
    },
    /// The accounts with the largest committed balances, over the shards given.
    Top {
        /// How many accounts to list.
        #[arg(
            long,
            value_name = "N",
            default_value_t = 10,
            value_parser = RangedU64ValueParser::<usize>::new().range(1..=TOP_LIMIT_MAX)
        )]
        limit: usize,
    },
    /// What the shards know about a transfer: the source account's shard
    /// decided it, the destination account's shard applied its credit.
    Transfer {
        /// The transfer id (a UUID).
        #[arg(value_parser = parse_transfer_id)]
        id: TransferId,
    },
    /// Per shard: accounts, sum of balances, input offsets, pending batch;
    /// and the totals.
    Stats,
    /// Every committed balance of the shards given, streamed shard after
    /// shard in account order: one JSON object (an AccountView) a line, or
    /// CSV with a header. From a stopped shard (--db) the export is one
    /// consistent state; from a running one (--url) each page of 10,000
    /// accounts is committed state, but two pages may straddle a batch.
    Balances {
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
}

/// The formats of `balances`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    /// One JSON object a line: {"account", "balance", "shard"}.
    Jsonl,
    /// `account,balance,shard` with a header line (account ids hold no
    /// comma or quote; a shard name that does is quoted).
    Csv,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let shards = identify(sources(&args)?)?;
    match &args.question {
        Question::Balance { account } => balance(&shards, account, args.partitions, args.json),
        Question::Top { limit } => top(&shards, *limit, args.json),
        Question::Transfer { id } => transfer(&shards, *id, args.json),
        Question::Stats => stats(&shards, args.json),
        Question::Balances { format } => balances(&shards, *format),
    }
}

fn parse_transfer_id(text: &str) -> Result<TransferId, String> {
    text.trim()
        .parse()
        .map_err(|error| format!("not a UUID ({error})"))
}

/// Where to ask: the directories, or the URLs with each name expanded to
/// its addresses (`ledger_cli::shards`).
fn sources(args: &Args) -> anyhow::Result<Vec<Source>> {
    let sources: Vec<Source> = if !args.dbs.is_empty() {
        args.dbs.iter().cloned().map(Source::Db).collect()
    } else {
        let urls = if args.urls.is_empty() {
            urls_from_env()?
        } else {
            args.urls.clone()
        };
        if urls.is_empty() {
            bail!(
                "no shard to ask: give --db DIR (a stopped shard) or --url URL (a running \
                 shard, or a name resolving to every shard), or set {URLS_ENV}"
            );
        }
        let client = Client::builder()
            .connect_timeout(HTTP_CONNECT_TIMEOUT)
            .timeout(HTTP_TIMEOUT)
            .build()
            .context("creating the HTTP client")?;
        shards::expand(&urls)?
            .into_iter()
            .map(|base| {
                Source::Http(Api {
                    base,
                    client: client.clone(),
                })
            })
            .collect()
    };
    if sources.len() > SHARDS_MAX {
        bail!(
            "{} shards given, at most {SHARDS_MAX} are supported",
            sources.len()
        );
    }
    Ok(sources)
}

fn urls_from_env() -> anyhow::Result<Vec<Url>> {
    let Ok(value) = std::env::var(URLS_ENV) else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            shards::parse_url(part).map_err(|error| anyhow!("{URLS_ENV}: {part:?}: {error}"))
        })
        .collect()
}

/// The shards behind `sources`, by name: each source says which shard it
/// is and which partitions it owns. A shard reached through several
/// sources counts once (its first source is asked); the shards come in
/// name order, whatever order the sources came in (a name's addresses come
/// in any order).
fn identify(sources: Vec<Source>) -> anyhow::Result<Vec<Shard>> {
    let mut shards: BTreeMap<String, Shard> = BTreeMap::new();
    for source in sources {
        let ShardView { shard, partitions } = source.shard()?;
        if let Entry::Vacant(entry) = shards.entry(shard.clone()) {
            entry.insert(Shard {
                name: shard,
                source,
                partitions,
            });
        }
    }
    Ok(shards.into_values().collect())
}

/// One shard, known by the name it reports.
struct Shard {
    name: String,
    source: Source,
    /// The partitions it owned when the question began, which `balance`
    /// routes by.
    partitions: Vec<i32>,
}

enum Source {
    /// Opened for each read and closed after it (sled locks the
    /// directory): once for the stats that identify the shard, once for
    /// the question.
    Db(PathBuf),
    Http(Api),
}

struct Api {
    base: Url,
    client: Client,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            // The name is the directory.
            Source::Db(_) => write!(f, "shard {}", self.name),
            Source::Http(api) => write!(f, "shard {} ({})", self.name, api.base),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Db(dir) => write!(f, "{}", dir.display()),
            Source::Http(api) => write!(f, "{}", api.base),
        }
    }
}

impl Source {
    /// Which shard is here, and the partitions it owns: a running shard's
    /// `/v1/shard` (no store read). A stopped shard is named by its
    /// directory as given, and owns the partitions of `transactions` its
    /// offsets record: those it consumed, up to its stop.
    fn shard(&self) -> anyhow::Result<ShardView> {
        match self {
            Source::Db(dir) => Ok(ShardView {
                shard: dir.display().to_string(),
                partitions: consumed_partitions(open_offline(dir)?.offsets()),
            }),
            Source::Http(api) => api.get_required(&["v1", "shard"], &[]),
        }
    }
}

/// The `transactions` partitions a stopped shard's offsets record.
fn consumed_partitions(offsets: &Offsets) -> Vec<i32> {
    offsets
        .keys()
        .filter(|at| at.source == InputSource::Transfers)
        .map(|at| at.partition)
        .collect()
}

impl Shard {
    fn stats(&self) -> anyhow::Result<StatsView> {
        let view = match &self.source {
            Source::Db(dir) => {
                let store = open_offline(dir)?;
                let stats = store
                    .reader()
                    .stats()
                    .with_context(|| format!("reading {}", dir.display()))?;
                StatsView::new(
                    self.name.clone(),
                    consumed_partitions(&stats.offsets),
                    &stats,
                )
            }
            Source::Http(api) => api.get_required(&["v1", "stats"], &[])?,
        };
        self.check_name(&view.shard)?;
        Ok(view)
    }

    fn balance(&self, account: &AccountId) -> anyhow::Result<Option<AccountView>> {
        let view = match &self.source {
            Source::Db(dir) => {
                let store = open_offline(dir)?;
                let balance = store
                    .reader()
                    .balance(account)
                    .with_context(|| format!("reading {}", dir.display()))?;
                balance.map(|balance| AccountView::new(account.as_str(), balance, &self.name))
            }
            Source::Http(api) => match api.get(&["v1", "accounts", account.as_str()], &[])? {
                Reply::Found(view) => Some(view),
                Reply::NotFound(_) => None,
            },
        };
        if let Some(view) = &view {
            self.check_name(&view.shard)?;
        }
        Ok(view)
    }

    fn top(&self, limit: usize) -> anyhow::Result<TopView> {
        let view = match &self.source {
            Source::Db(dir) => {
                let store = open_offline(dir)?;
                let top = store
                    .reader()
                    .top(limit)
                    .with_context(|| format!("reading {}", dir.display()))?;
                TopView {
                    shard: self.name.clone(),
                    accounts: top
                        .iter()
                        .map(|(account, balance)| {
                            AccountView::new(account.as_str(), *balance, &self.name)
                        })
                        .collect(),
                }
            }
            Source::Http(api) => {
                api.get_required(&["v1", "accounts"], &[("top", &limit.to_string())])?
            }
        };
        self.check_name(&view.shard)?;
        for account in &view.accounts {
            self.check_name(&account.shard)?;
        }
        Ok(view)
    }

    fn transfer(&self, id: TransferId) -> anyhow::Result<TransferView> {
        let view = match &self.source {
            Source::Db(dir) => {
                let store = open_offline(dir)?;
                TransferView::new(
                    id.to_string(),
                    self.name.clone(),
                    store.reader().transfer(id),
                )
            }
            Source::Http(api) => api.get_required(&["v1", "transfers", &id.to_string()], &[])?,
        };
        self.check_name(&view.shard)?;
        Ok(view)
    }

    /// Every committed balance of this shard, one page at a time, each
    /// handed to `each` in account order.
    fn each_balance_page(
        &self,
        each: impl FnMut(Vec<AccountView>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        match &self.source {
            Source::Db(dir) => {
                let store = open_offline(dir)?;
                let reader = store.reader();
                self.page_through(
                    |after| {
                        let after = after.map(AccountId::parse).transpose()?;
                        let page = reader
                            .balances_page(after.as_ref(), BALANCES_PAGE_MAX)
                            .with_context(|| format!("reading {}", dir.display()))?;
                        Ok(page
                            .into_iter()
                            .map(|(account, balance)| {
                                AccountView::new(account.as_str(), balance, &self.name)
                            })
                            .collect())
                    },
                    each,
                )
            }
            Source::Http(api) => self.page_through(
                |after| {
                    let limit = BALANCES_PAGE_MAX.to_string();
                    let mut query = vec![("limit", limit.as_str())];
                    query.extend(after.map(|account| ("after", account)));
                    let page: BalancesPageView = api.get_required(&["v1", "balances"], &query)?;
                    self.check_name(&page.shard)?;
                    Ok(page.accounts)
                },
                each,
            ),
        }
    }

    /// [`api::page_through`], each account checked for this shard's name.
    fn page_through(
        &self,
        fetch: impl FnMut(Option<&str>) -> anyhow::Result<Vec<AccountView>>,
        mut each: impl FnMut(Vec<AccountView>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        api::page_through(BALANCES_PAGE_MAX, fetch, |page| {
            for view in &page {
                self.check_name(&view.shard)?;
            }
            each(page)
        })
    }

    /// Every answer must come from the shard the question began with: an
    /// address that now serves another shard (restarted, rescheduled,
    /// reassigned by DNS) would mix two shards' answers under one name.
    fn check_name(&self, reported: &str) -> anyhow::Result<()> {
        if reported != self.name {
            bail!(
                "{self} now answers as shard {reported}: the address serves another shard \
                 since the question began; retry"
            );
        }
        Ok(())
    }
}

/// Opens a stopped shard's store without ever creating one.
fn open_offline(dir: &Path) -> anyhow::Result<Store> {
    Store::open_existing(dir, StoreOptions::default()).map_err(|error| match error {
        // The store says "does not exist" whenever sled's `conf` file is
        // missing; an existing directory deserves the precise reason.
        StoreError::NotFound(_) if dir.exists() => anyhow!(
            "no ledger at {}: the directory holds no sled database; give a shard's data \
             directory",
            dir.display()
        ),
        error => error.into(),
    })
}

/// A successful answer, or a 404 that the shard itself sent (with an
/// `ErrorView`), which is "no such thing" rather than a wrong URL.
enum Reply<T> {
    Found(T),
    NotFound(ErrorView),
}

impl Api {
    fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> anyhow::Result<Reply<T>> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow!("{} cannot take a path", self.base))?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let response = self
            .client
            .get(url.clone())
            .send()
            .with_context(|| format!("GET {url}: is the shard running?"))?;
        let status = response.status();
        let mut body = Vec::new();
        response
            .take(HTTP_BODY_MAX_BYTES + 1)
            .read_to_end(&mut body)
            .with_context(|| format!("GET {url}: reading the answer"))?;
        if body.len() as u64 > HTTP_BODY_MAX_BYTES {
            bail!("GET {url}: the answer exceeds {HTTP_BODY_MAX_BYTES} bytes");
        }
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map(Reply::Found)
                .with_context(|| format!("GET {url}: the answer is not the expected JSON view"));
        }
        match serde_json::from_slice::<ErrorView>(&body) {
            Ok(error) if status == StatusCode::NOT_FOUND => Ok(Reply::NotFound(error)),
            Ok(error) => bail!("GET {url}: {status}: {}", error.error),
            Err(_) => bail!(
                "GET {url}: {status}, and not a txledger error: is {} a shard's API?",
                self.base
            ),
        }
    }

    fn get_required<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> anyhow::Result<T> {
        match self.get(segments, query)? {
            Reply::Found(view) => Ok(view),
            Reply::NotFound(error) => bail!(
                "{}: 404: {} (is it a txledger shard's API?)",
                self.base,
                error.error
            ),
        }
    }
}

fn balance(
    shards: &[Shard],
    account: &AccountId,
    partitions: i32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let partition = partition_for(account.as_str().as_bytes(), partitions);
    let owners: Vec<&Shard> = shards
        .iter()
        .filter(|shard| shard.partitions.contains(&partition))
        .collect();
    if let [_, _, ..] = owners.as_slice() {
        // Each may hold a copy of the account as of its ownership: which is
        // current cannot be told from here.
        let owners: Vec<String> = owners.iter().map(ToString::to_string).collect();
        bail!(
            "{} all report partition {partition} of {partitions} (account {account}'s): they \
             disagree on who owns it, a rebalance is under way; retry",
            owners.join(", ")
        );
    }
    let owner = owners.first().copied();
    // The owner first. Then the others: another shard holds the account if
    // --partitions is not the shards' count, or its owner is not given.
    let mut found = None;
    let others = shards
        .iter()
        .filter(|shard| owner.is_none_or(|owner| !std::ptr::eq(*shard, owner)));
    for shard in owner.into_iter().chain(others) {
        found = shard.balance(account)?;
        if found.is_some() {
            break;
        }
    }
    match found {
        Some(view) => {
            if json {
                print_json(&view)?;
            } else {
                let mut table = Table::new(&[
                    ("ACCOUNT", Align::Left),
                    ("BALANCE", Align::Right),
                    ("SHARD", Align::Left),
                ]);
                table.row(vec![view.account, view.balance, view.shard]);
                print_text(&table.to_string())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let whose = match owner {
                Some(owner) => format!("owned by {owner}, which has never seen it"),
                None => "owned by no shard given (one is down or not given, or the shards are \
                         rebalancing: retry)"
                    .to_owned(),
            };
            let mut message = format!(
                "unknown account {account}: on partition {partition} of {partitions}, {whose}"
            );
            if shards.len() > 1 || owner.is_none() {
                message.push_str(
                    "; no shard given knows it (check --partitions if the account exists)",
                );
            }
            not_found(json, message)
        }
    }
}

fn top(shards: &[Shard], limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    // The global top N is among the union of every shard's top N.
    let mut ranked = Vec::new();
    for shard in shards {
        for view in shard.top(limit)?.accounts {
            let balance = decimal(&view.balance)
                .with_context(|| format!("{shard}: balance of {}", view.account))?;
            ranked.push((balance, view));
        }
    }
    ranked.sort_by(|(a, a_view), (b, b_view)| {
        b.cmp(a).then_with(|| a_view.account.cmp(&b_view.account))
    });
    ranked.truncate(limit);
    let accounts: Vec<AccountView> = ranked.into_iter().map(|(_, view)| view).collect();
    if json {
        print_json(&accounts)?;
    } else {
        let mut table = Table::new(&[
            ("RANK", Align::Right),
            ("ACCOUNT", Align::Left),
            ("BALANCE", Align::Right),
            ("SHARD", Align::Left),
        ]);
        for (rank, view) in (1u32..).zip(accounts) {
            table.row(vec![
                rank.to_string(),
                view.account,
                view.balance,
                view.shard,
            ]);
        }
        print_text(&table.to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

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

fn transfer(shards: &[Shard], id: TransferId, json: bool) -> anyhow::Result<ExitCode> {
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

/// `stats` over the shards given: each shard's view, and the sums.
#[derive(Debug, Serialize)]
struct StatsAnswer {
    shards: Vec<StatsView>,
    total: StatsTotal,
}

#[derive(Debug, Serialize)]
struct StatsTotal {
    accounts: u64,
    /// Over every shard, plus the credits in flight, this is zero; so it is
    /// zero here at quiescence when every shard is given.
    sum: String,
    remembered_ids: u64,
    held: u64,
    pending_batches: u64,
}

impl StatsAnswer {
    fn total(shards: Vec<StatsView>) -> anyhow::Result<Self> {
        let mut sum = Decimal::ZERO;
        for view in &shards {
            sum += decimal(&view.sum).with_context(|| format!("shard {}: sum", view.shard))?;
        }
        let total = StatsTotal {
            accounts: shards.iter().map(|view| view.accounts).sum(),
            sum: sum.to_string(),
            remembered_ids: shards.iter().map(|view| view.remembered_ids).sum(),
            held: shards.iter().map(|view| view.held).sum(),
            pending_batches: shards.iter().filter(|view| view.pending.is_some()).count() as u64,
        };
        Ok(StatsAnswer { shards, total })
    }
}

fn stats(shards: &[Shard], json: bool) -> anyhow::Result<ExitCode> {
    let views = shards
        .iter()
        .map(Shard::stats)
        .collect::<anyhow::Result<_>>()?;
    let answer = StatsAnswer::total(views)?;
    if json {
        print_json(&answer)?;
    } else {
        print_text(&stats_text(shards, &answer))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A row per shard and the total, the offsets of every shard's inputs, and
/// a note for each batch left in doubt.
fn stats_text(shards: &[Shard], answer: &StatsAnswer) -> String {
    let mut summary = Table::new(&[
        ("SHARD", Align::Left),
        ("PARTITIONS", Align::Left),
        ("ACCOUNTS", Align::Right),
        ("SUM", Align::Right),
        ("REMEMBERED IDS", Align::Right),
        ("HELD", Align::Right),
        ("PENDING", Align::Left),
        ("SOURCE", Align::Left),
    ]);
    let mut offsets = Table::new(&[
        ("SHARD", Align::Left),
        ("INPUT", Align::Left),
        ("PARTITION", Align::Right),
        ("NEXT OFFSET", Align::Right),
    ]);
    let mut notes = Vec::new();
    for (shard, view) in shards.iter().zip(&answer.shards) {
        notes.extend(pending_note(shard, view));
        summary.row(vec![
            view.shard.clone(),
            partition_list(&view.partitions),
            view.accounts.to_string(),
            view.sum.clone(),
            view.remembered_ids.to_string(),
            view.held.to_string(),
            view.pending.as_ref().map_or_else(
                || "none".to_owned(),
                |pending| format!("seq {}", pending.seq),
            ),
            shard.source.to_string(),
        ]);
        for offset in &view.offsets {
            offsets.row(vec![
                view.shard.clone(),
                offset.source.name().to_owned(),
                offset.partition.to_string(),
                offset.next_offset.to_string(),
            ]);
        }
    }
    let total = &answer.total;
    summary.row(vec![
        "total".to_owned(),
        String::new(),
        total.accounts.to_string(),
        total.sum.clone(),
        total.remembered_ids.to_string(),
        total.held.to_string(),
        match total.pending_batches {
            0 => "none".to_owned(),
            1 => "1 batch".to_owned(),
            n => format!("{n} batches"),
        },
        String::new(),
    ]);
    let mut text = summary.to_string();
    if !offsets.is_empty() {
        text.push('\n');
        text.push_str(&offsets.to_string());
    }
    if !notes.is_empty() {
        text.push('\n');
        for note in notes {
            text.push_str(&note);
            text.push('\n');
        }
    }
    text
}

/// `0,2,4`, or `-` for none (a shard given no partition yet).
fn partition_list(partitions: &[i32]) -> String {
    if partitions.is_empty() {
        return "-".to_owned();
    }
    let numbers: Vec<String> = partitions.iter().map(i32::to_string).collect();
    numbers.join(",")
}

/// A running shard resolves its pending record itself and already answers
/// from committed state; only a stopped one leaves a batch in doubt for the
/// operator to know about.
fn pending_note(shard: &Shard, view: &StatsView) -> Option<String> {
    let pending = view.pending.as_ref()?;
    matches!(shard.source, Source::Db(_)).then(|| {
        format!(
            "shard {}: 1 batch pending (seq {}): its effects are not shown; start the shard to \
             resolve it",
            view.shard, pending.seq
        )
    })
}

/// Amounts arrive as decimal strings (from a shard's API they are not yet
/// trusted); merging compares and adds them exactly, never as floats.
fn decimal(text: &str) -> anyhow::Result<Decimal> {
    Decimal::from_str_exact(text)
        .map_err(|error| anyhow!("{text:?} is not a decimal amount: {error}"))
}

fn not_found(json: bool, message: String) -> anyhow::Result<ExitCode> {
    if json {
        print_json(&ErrorView { error: message })?;
    } else {
        eprintln!("{message}");
    }
    Ok(ExitCode::from(EXIT_NOT_FOUND))
}

/// `balances`: streamed through one buffered writer, so that memory holds
/// one page whatever the number of accounts.
fn balances(shards: &[Shard], format: ExportFormat) -> anyhow::Result<ExitCode> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let result = export(shards, format, &mut out).and_then(|()| Ok(out.flush()?));
    match result {
        // A closed pipe (`| head`) is the reader's choice, as in `print_text`.
        Err(error)
            if error
                .downcast_ref::<io::Error>()
                .is_some_and(|error| error.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Err(error.context("exporting the balances")),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

fn export(shards: &[Shard], format: ExportFormat, out: &mut impl Write) -> anyhow::Result<()> {
    if format == ExportFormat::Csv {
        writeln!(out, "account,balance,shard")?;
    }
    for shard in shards {
        shard.each_balance_page(|page| {
            for view in page {
                match format {
                    ExportFormat::Jsonl => {
                        serde_json::to_writer(&mut *out, &view).map_err(io::Error::from)?;
                        writeln!(out)?;
                    }
                    ExportFormat::Csv => {
                        let shard = csv_field(&view.shard);
                        writeln!(out, "{},{},{shard}", view.account, view.balance)?;
                    }
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// A CSV field as RFC 4180 has it: quoted, its quotes doubled, when it
/// holds a comma, a quote or a line break, as a directory's name may.
fn csv_field(text: &str) -> Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", text.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(text)
    }
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("encoding the answer as JSON")?;
    text.push('\n');
    print_text(&text)
}

/// Writes to stdout; a closed pipe (`| head`) is the reader's choice, not
/// an error, while any other write failure is reported.
fn print_text(text: &str) -> anyhow::Result<()> {
    match io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => {
            Err(error).context("writing to stdout")
        }
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// A text table: a header, columns as wide as their widest cell, amounts
/// and counts right-aligned so that their digits line up.
struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        assert_eq!(
            cells.len(),
            self.columns.len(),
            "a row has one cell per column"
        );
        self.rows.push(cells);
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header: Vec<String> = self
            .columns
            .iter()
            .map(|(name, _)| (*name).to_owned())
            .collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|column| {
                std::iter::once(&header)
                    .chain(&self.rows)
                    .map(|row| row[column].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column > 0 {
                    line.push_str("  ");
                }
                let width = widths[column];
                match self.columns[column].1 {
                    Align::Left => line.push_str(&format!("{cell:<width$}")),
                    Align::Right => line.push_str(&format!("{cell:>width$}")),
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
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

    #[test]
    fn stats_totals_add_exactly() {
        let stats = |shard: &str, accounts, sum: &str| StatsView {
            shard: shard.to_owned(),
            partitions: Vec::new(),
            accounts,
            sum: sum.to_owned(),
            offsets: Vec::new(),
            pending: None,
            remembered_ids: 2,
            held: 1,
        };
        let answer =
            StatsAnswer::total(vec![stats("s-0", 3, "-150.10"), stats("s-1", 2, "150.10")])
                .unwrap();
        assert_eq!(answer.total.accounts, 5);
        assert_eq!(answer.total.sum, "0.00");
        assert_eq!(answer.total.remembered_ids, 4);
        assert_eq!(answer.total.held, 2);
        assert!(StatsAnswer::total(vec![stats("s-0", 1, "1e3")]).is_err());
    }

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv_field("ledger-consumer-0"), "ledger-consumer-0");
        assert_eq!(csv_field("/data/a,b"), "\"/data/a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(partition_list(&[0, 2, 4]), "0,2,4");
        assert_eq!(partition_list(&[]), "-");
    }

    #[test]
    fn tables_align_amounts_right_and_text_left() {
        let mut table = Table::new(&[("ACCOUNT", Align::Left), ("BALANCE", Align::Right)]);
        table.row(vec!["alice".to_owned(), "1000.00".to_owned()]);
        table.row(vec!["bob-the-builder".to_owned(), "-5.50".to_owned()]);
        assert_eq!(
            table.to_string(),
            "ACCOUNT          BALANCE\n\
             alice            1000.00\n\
             bob-the-builder    -5.50\n"
        );
    }
}
