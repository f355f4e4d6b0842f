//! The HTTP API: health, readiness, metrics and read-only queries.
//!
//! Queries read the store through `StoreReader`, which serves the last
//! COMMITTED state: a batch between its sled write and its Kafka commit is
//! invisible here. sled reads block, so they run on the blocking pool.
//! The views answered are built by `ledger::api` from the reader, as
//! `ledger query --db` builds them from a stopped shard's directory.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ledger::api::{
    self, AccountView, BalancesPageView, ErrorView, ShardView, StatsView, TopView, TransferView,
};
use ledger::store::StoreReader;
use ledger_core::domain::{AccountId, TransferId};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;

use crate::measure::{self, ErrorEvent};
use crate::shard::Shared;

/// Most accounts one `?top=N` query returns: it bounds the answer's size,
/// not the work (the shard reads and sorts every balance whatever N).
/// Readers of every balance (`ledger audit --url`, `ledger query balances`)
/// page through `/v1/balances` instead.
pub const TOP_MAX: usize = 10_000_000;
const TOP_DEFAULT: usize = 10;

#[derive(Clone)]
pub(crate) struct AppState {
    pub shared: Arc<Shared>,
    /// The shard's name in every view: its transactional id, unique among
    /// the running shards (the broker fences a second holder), where an
    /// ordinal may not exist (replicas scaled without one).
    pub name: Arc<str>,
    pub metrics: PrometheusHandle,
    /// `/healthz` fails once the loop has shown no progress for this long.
    pub stall_bound: Duration,
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .route("/v1/accounts", get(top_accounts))
        .route("/v1/accounts/{id}", get(account))
        .route("/v1/balances", get(balances_page))
        .route("/v1/transfers/{id}", get(transfer))
        .route("/v1/stats", get(stats))
        .route("/v1/shard", get(shard))
        .with_state(state)
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorView { error: self.1 })).into_response()
    }
}

/// Liveness: 503 once the batch loop has shown no progress for longer
/// than the bound, whatever holds it (a call blocked in librdkafka that no
/// bound of ours covers, a deadlock), so that the platform restarts the
/// shard. Healthy while it starts: recovery has bounds of its own.
async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.shared.beat.since() {
        Some(since) if since > state.stall_bound => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stalled: the batch loop has shown no progress for {} s (bound {} s)",
                since.as_secs(),
                state.stall_bound.as_secs()
            ),
        ),
        _ => (StatusCode::OK, "ok".to_owned()),
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.shared.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "recovering")
    }
}

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

/// The store's reader, once the shard is ready. Not ready: recovering, or
/// (group assignment) taking or giving away partitions, whose state is
/// then not the one to serve.
fn ready_reader(state: &AppState) -> Result<StoreReader, ApiError> {
    match state.shared.reader.get() {
        Some(reader) if state.shared.ready.load(Ordering::Acquire) => Ok(reader.clone()),
        _ => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the shard is recovering or rebalancing; retry once /readyz answers 200".to_owned(),
        )),
    }
}

/// Runs a read on the blocking pool, once the shard is ready.
async fn read<T: Send + 'static>(
    state: &AppState,
    query: impl FnOnce(&StoreReader) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let reader = ready_reader(state)?;
    tokio::task::spawn_blocking(move || query(&reader))
        .await
        .map_err(|join| ApiError(StatusCode::INTERNAL_SERVER_ERROR, join.to_string()))?
}

fn store_error(error: sled::Error) -> ApiError {
    // A failed sled read means I/O trouble or corruption: an operator must look.
    tracing::error!(message = "Reading the ledger failed.", error = %ledger::telemetry::chain(&error));
    measure::error(ErrorEvent::Store);
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!(
            "reading the ledger failed: {}",
            ledger::telemetry::chain(&error)
        ),
    )
}

async fn account(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let account = AccountId::parse(&id)
        .map_err(|error| ApiError(StatusCode::BAD_REQUEST, error.to_string()))?;
    let shard = Arc::clone(&state.name);
    read(&state, move |reader| {
        match api::account_view(reader, &shard, &account).map_err(store_error)? {
            Some(view) => Ok(Json(view)),
            None => Err(ApiError(
                StatusCode::NOT_FOUND,
                format!(
                    "account {account} is not known to shard {shard} \
                     (it may live on another shard, or have no movement yet)"
                ),
            )),
        }
    })
    .await
}

/// A count from the query string, 1 to `max`, or `default` when absent.
fn count_param(
    name: &str,
    text: Option<&str>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let Some(text) = text else {
        return Ok(default);
    };
    text.parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("{name} must be a number from 1 to {max}, got {text:?}"),
            )
        })
}

/// `top` is read as text so that a bad value gets the API's JSON error,
/// not the extractor's plain-text one.
#[derive(Deserialize)]
struct TopParams {
    top: Option<String>,
}

async fn top_accounts(
    State(state): State<AppState>,
    Query(params): Query<TopParams>,
) -> Result<Json<TopView>, ApiError> {
    let top = count_param("top", params.top.as_deref(), TOP_DEFAULT, TOP_MAX)?;
    let shard = Arc::clone(&state.name);
    read(&state, move |reader| {
        api::top_view(reader, &shard, top)
            .map(Json)
            .map_err(store_error)
    })
    .await
}

/// Read as text, like `TopParams`.
#[derive(Deserialize)]
struct PageParams {
    after: Option<String>,
    limit: Option<String>,
}

async fn balances_page(
    State(state): State<AppState>,
    Query(params): Query<PageParams>,
) -> Result<Json<BalancesPageView>, ApiError> {
    let after = params
        .after
        .as_deref()
        .map(AccountId::parse)
        .transpose()
        .map_err(|error| ApiError(StatusCode::BAD_REQUEST, error.to_string()))?;
    let limit = count_param(
        "limit",
        params.limit.as_deref(),
        api::BALANCES_PAGE_MAX,
        api::BALANCES_PAGE_MAX,
    )?;
    let shard = Arc::clone(&state.name);
    read(&state, move |reader| {
        api::balances_page_view(reader, &shard, after.as_ref(), limit)
            .map(Json)
            .map_err(store_error)
    })
    .await
}

async fn transfer(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TransferView>, ApiError> {
    let transfer_id: TransferId = id.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("transfer id {id:?} is not a UUID"),
        )
    })?;
    let shard = Arc::clone(&state.name);
    read(&state, move |reader| {
        Ok(Json(api::transfer_view(reader, &shard, transfer_id)))
    })
    .await
}

/// Ready only: the partitions change while a rebalance keeps it unready.
async fn shard(State(state): State<AppState>) -> Result<Json<ShardView>, ApiError> {
    ready_reader(&state)?;
    Ok(Json(api::shard_view(&state.name, state.shared.owned())))
}

async fn stats(State(state): State<AppState>) -> Result<Json<StatsView>, ApiError> {
    let shard = Arc::clone(&state.name);
    // A rebalance makes the shard unready before it changes its partitions,
    // so `read` serves these with their state; a rebalance racing this
    // answer shows to clients as a partition owned twice or by no shard.
    let partitions = state.shared.owned();
    read(&state, move |reader| {
        api::stats_view(reader, &shard, partitions)
            .map(Json)
            .map_err(store_error)
    })
    .await
}
