//! A running shard, asked over its HTTP API (`consumer`'s `http` module):
//! each answer is one of its `ledger::api` views, read with bounded time
//! and size.

use std::fmt;
use std::io::Read;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use reqwest::blocking::Client;
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;

use ledger::api::{
    AccountView, ErrorView, ShardView, StatsView, TopView, TransferView, BALANCES_PAGE_MAX,
};
use ledger_core::domain::{AccountId, TransferId};

use super::source::{BalancePages, ShardSource};

/// Bounds what one question may cost: time and bytes per HTTP answer.
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A shard answers `stats` by scanning its balances: allow for a large one.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_BODY_MAX_BYTES: u64 = 16 << 20;

/// A running shard's API at `base`.
pub(super) struct HttpSource {
    base: Url,
    client: Client,
}

/// A successful answer, or a 404 that the shard itself sent (with an
/// `ErrorView`), which is "no such thing" rather than a wrong URL.
enum Reply<T> {
    Found(T),
    NotFound(ErrorView),
}

impl HttpSource {
    /// A source for each of `bases`, sharing one client.
    pub fn each(bases: &[Url]) -> anyhow::Result<Vec<HttpSource>> {
        let client = Client::builder()
            .connect_timeout(HTTP_CONNECT_TIMEOUT)
            .timeout(HTTP_TIMEOUT)
            .build()
            .context("creating the HTTP client")?;
        Ok(bases
            .iter()
            .map(|base| HttpSource {
                base: base.clone(),
                client: client.clone(),
            })
            .collect())
    }

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

impl fmt::Display for HttpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.base)
    }
}

impl ShardSource for HttpSource {
    /// `/v1/shard`, which reads no store.
    fn shard(&self) -> anyhow::Result<ShardView> {
        self.get_required(&["v1", "shard"], &[])
    }

    fn stats(&self) -> anyhow::Result<StatsView> {
        self.get_required(&["v1", "stats"], &[])
    }

    fn balance(&self, account: &AccountId) -> anyhow::Result<Option<AccountView>> {
        let reply = self.get(&["v1", "accounts", account.as_str()], &[])?;
        Ok(match reply {
            Reply::Found(view) => Some(view),
            Reply::NotFound(_) => None,
        })
    }

    fn top(&self, limit: usize) -> anyhow::Result<TopView> {
        self.get_required(&["v1", "accounts"], &[("top", &limit.to_string())])
    }

    fn transfer(&self, id: TransferId) -> anyhow::Result<TransferView> {
        self.get_required(&["v1", "transfers", &id.to_string()], &[])
    }

    /// `/v1/balances`, page after page: each page is committed state, but
    /// two pages may straddle a batch.
    fn balance_pages(&self) -> anyhow::Result<BalancePages<'_>> {
        Ok(Box::new(|after| {
            let limit = BALANCES_PAGE_MAX.to_string();
            let mut query = vec![("limit", limit.as_str())];
            query.extend(after.map(|account| ("after", account)));
            self.get_required(&["v1", "balances"], &query)
        }))
    }

    fn is_stopped(&self) -> bool {
        false
    }
}
