//! A stopped shard, read from its sled directory (`--db`): its views are
//! built by `ledger::api` from the store's reader, exactly as the running
//! shard's HTTP API builds them, and so show committed state only.

use std::fmt;
use std::path::PathBuf;

use anyhow::{anyhow, Context};

use ledger::api::{
    self, AccountView, ShardView, StatsView, TopView, TransferView, BALANCES_PAGE_MAX,
};
use ledger::store::{Store, StoreError, StoreOptions};
use ledger_core::domain::{AccountId, TransferId};

use super::source::{BalancePages, ShardSource};

/// A stopped shard's directory, named by the directory as given. The store
/// is opened for each read and closed after it (sled locks the directory):
/// once for the view that identifies the shard, once for the question.
pub(super) struct DbSource {
    dir: PathBuf,
    name: String,
}

impl DbSource {
    pub fn new(dir: PathBuf) -> Self {
        DbSource {
            name: dir.display().to_string(),
            dir,
        }
    }

    /// Opens the store without ever creating one.
    fn open(&self) -> anyhow::Result<Store> {
        let dir = &self.dir;
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

    /// The context of a failed read.
    fn reading(&self) -> String {
        format!("reading {}", self.dir.display())
    }
}

impl fmt::Display for DbSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dir.display())
    }
}

impl ShardSource for DbSource {
    /// Owns the partitions of `transactions` its offsets record: those it
    /// consumed, up to its stop.
    fn shard(&self) -> anyhow::Result<ShardView> {
        let partitions = api::recorded_partitions(self.open()?.offsets());
        Ok(api::shard_view(&self.name, partitions))
    }

    fn stats(&self) -> anyhow::Result<StatsView> {
        api::stopped_stats_view(&self.open()?.reader(), &self.name).with_context(|| self.reading())
    }

    fn balance(&self, account: &AccountId) -> anyhow::Result<Option<AccountView>> {
        api::account_view(&self.open()?.reader(), &self.name, account)
            .with_context(|| self.reading())
    }

    fn top(&self, limit: usize) -> anyhow::Result<TopView> {
        api::top_view(&self.open()?.reader(), &self.name, limit).with_context(|| self.reading())
    }

    fn transfer(&self, id: TransferId) -> anyhow::Result<TransferView> {
        Ok(api::transfer_view(&self.open()?.reader(), &self.name, id))
    }

    /// One store, open for every page: the export is one consistent state.
    fn balance_pages(&self) -> anyhow::Result<BalancePages<'_>> {
        let store = self.open()?;
        Ok(Box::new(move |after| {
            let after = after.map(AccountId::parse).transpose()?;
            api::balances_page_view(
                &store.reader(),
                &self.name,
                after.as_ref(),
                BALANCES_PAGE_MAX,
            )
            .with_context(|| self.reading())
        }))
    }

    fn is_stopped(&self) -> bool {
        true
    }
}
