//! Where a shard is asked: the [`ShardSource`] trait, which a running
//! shard (`http`) and a stopped shard's directory (`db`) implement alike;
//! and the [`Shard`]s behind the sources given, each known by the name it
//! reports, every answer checked to come from it.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use anyhow::{anyhow, bail};
use reqwest::Url;

use ledger::api::{
    self, AccountView, BalancesPageView, ShardView, StatsView, TopView, TransferView,
    BALANCES_PAGE_MAX,
};
use ledger_cli::shards;
use ledger_core::domain::{AccountId, TransferId};

use super::db::DbSource;
use super::http::HttpSource;

/// The shards' API URLs, comma-separated, used when neither `--db` nor
/// `--url` is given (so a deployment sets it once for its operators).
const URLS_ENV: &str = "TXLEDGER_SHARD_URLS";

/// Bounds what one question may cost: shards asked (the HTTP answers are
/// bounded in `http`).
const SHARDS_MAX: usize = 1024;

/// Hands out the balances of a shard page by page: given the last account
/// of the previous page (none at first), the next page of at most
/// [`BALANCES_PAGE_MAX`] accounts, as `GET /v1/balances` answers it.
pub(super) type BalancePages<'a> =
    Box<dyn FnMut(Option<&str>) -> anyhow::Result<BalancesPageView> + 'a>;

/// One shard's state as `ledger::api` views, however it is reached. Its
/// `Display` is where it is: the URL or the directory as given.
pub(super) trait ShardSource: fmt::Display {
    /// Which shard is here, and the partitions it owns.
    fn shard(&self) -> anyhow::Result<ShardView>;

    fn stats(&self) -> anyhow::Result<StatsView>;

    /// The account's committed balance, or `None` for one never seen here.
    fn balance(&self, account: &AccountId) -> anyhow::Result<Option<AccountView>>;

    /// The `limit` largest committed balances, largest first.
    fn top(&self, limit: usize) -> anyhow::Result<TopView>;

    fn transfer(&self, id: TransferId) -> anyhow::Result<TransferView>;

    /// The pages of every committed balance, in account order.
    fn balance_pages(&self) -> anyhow::Result<BalancePages<'_>>;

    /// Whether this is a stopped shard's directory: it is named by the
    /// directory (so its name says where it is), and a batch it left in
    /// doubt stays so until the shard starts, where a running shard
    /// resolves its own.
    fn is_stopped(&self) -> bool;
}

/// Where to ask: the directories, or the URLs (`TXLEDGER_SHARD_URLS`
/// without either) with each name expanded to its addresses
/// (`ledger_cli::shards`).
pub(super) fn sources(dbs: &[PathBuf], urls: &[Url]) -> anyhow::Result<Vec<Box<dyn ShardSource>>> {
    let sources: Vec<Box<dyn ShardSource>> = if !dbs.is_empty() {
        dbs.iter()
            .map(|dir| Box::new(DbSource::new(dir.clone())) as Box<dyn ShardSource>)
            .collect()
    } else {
        let urls = if urls.is_empty() {
            urls_from_env()?
        } else {
            urls.to_vec()
        };
        if urls.is_empty() {
            bail!(
                "no shard to ask: give --db DIR (a stopped shard) or --url URL (a running \
                 shard, or a name resolving to every shard), or set {URLS_ENV}"
            );
        }
        HttpSource::each(&shards::expand(&urls)?)?
            .into_iter()
            .map(|source| Box::new(source) as Box<dyn ShardSource>)
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
pub(super) fn identify(sources: Vec<Box<dyn ShardSource>>) -> anyhow::Result<Vec<Shard>> {
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

/// One shard, known by the name it reports; every answer it gives is
/// checked to still come from that shard.
pub(super) struct Shard {
    pub name: String,
    pub source: Box<dyn ShardSource>,
    /// The partitions it owned when the question began, which `balance`
    /// routes by.
    pub partitions: Vec<i32>,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.source.is_stopped() {
            // The name is the directory.
            write!(f, "shard {}", self.name)
        } else {
            write!(f, "shard {} ({})", self.name, self.source)
        }
    }
}

impl Shard {
    pub fn stats(&self) -> anyhow::Result<StatsView> {
        let view = self.source.stats()?;
        self.check_name(&view.shard)?;
        Ok(view)
    }

    pub fn balance(&self, account: &AccountId) -> anyhow::Result<Option<AccountView>> {
        let view = self.source.balance(account)?;
        if let Some(view) = &view {
            self.check_name(&view.shard)?;
        }
        Ok(view)
    }

    pub fn top(&self, limit: usize) -> anyhow::Result<TopView> {
        let view = self.source.top(limit)?;
        self.check_name(&view.shard)?;
        for account in &view.accounts {
            self.check_name(&account.shard)?;
        }
        Ok(view)
    }

    pub fn transfer(&self, id: TransferId) -> anyhow::Result<TransferView> {
        let view = self.source.transfer(id)?;
        self.check_name(&view.shard)?;
        Ok(view)
    }

    /// Every committed balance of this shard, one page at a time, each
    /// handed to `each` in account order ([`api::page_through`]), each page
    /// and account checked for this shard's name.
    pub fn each_balance_page(
        &self,
        mut each: impl FnMut(Vec<AccountView>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut pages = self.source.balance_pages()?;
        api::page_through(
            BALANCES_PAGE_MAX,
            |after| {
                let page = pages(after)?;
                self.check_name(&page.shard)?;
                Ok(page.accounts)
            },
            |page| {
                for view in &page {
                    self.check_name(&view.shard)?;
                }
                each(page)
            },
        )
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
