//! Where the audit gets the shards' balances: a stopped shard's sled
//! directory, or a running shard's HTTP API (served here by a stand-in with
//! the shard's JSON shapes).

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use ledger::store::{Store, StoreOptions};
use ledger_cli::audit::{fetch_balances, AuditError, BalanceSource};
use ledger_core::domain::{AccountId, Amount, Currency, Money, Transfer, TransferId};
use ledger_core::machine::{
    process_batch, InputPartition, InputRecord, MemoryLedger, Rules, Source,
};
use ledger_core::wire;
use serde_json::{json, Value};
use time::macros::datetime;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Writes one batch (a deposit) to a fresh store; `commit` clears its
/// pending record, as a shard does once Kafka committed.
fn store_with_one_batch(dir: &std::path::Path, commit: bool) {
    let transfer = Transfer::new(
        TransferId(Uuid::from_u128(1)),
        AccountId::world(),
        AccountId::parse("alice").unwrap(),
        Amount::parse("12.50").unwrap(),
        Currency::EUR,
        datetime!(2026-11-25 10:00 UTC),
    )
    .unwrap();
    let bytes = wire::encode_transfer(&transfer);
    let record = InputRecord {
        at: InputPartition {
            source: Source::Transfers,
            partition: 0,
        },
        offset: 0,
        key: None,
        payload: Some(&bytes),
    };
    // One partition: it owns every account.
    let effects = process_batch(&MemoryLedger::default(), &Rules::new(1), &[record]).unwrap();
    let mut store = Store::open(dir, StoreOptions::default()).unwrap();
    store.write_batch(&effects).unwrap();
    if commit {
        store.clear_pending().unwrap();
    }
}

#[test]
fn a_stopped_shard_gives_its_committed_balances() {
    let dir = tempfile::tempdir().unwrap();
    store_with_one_batch(dir.path(), true);
    let shard = fetch_balances(&BalanceSource::Db(dir.path().to_owned()), TIMEOUT).unwrap();
    assert_eq!(shard.source, dir.path().display().to_string());
    // The credit to alice is not applied yet: only world's debit is here.
    assert_eq!(shard.balances, vec![(AccountId::world(), Money(-1250))]);
}

#[test]
fn a_stopped_shard_with_a_pending_batch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    store_with_one_batch(dir.path(), false);
    let error = fetch_balances(&BalanceSource::Db(dir.path().to_owned()), TIMEOUT).unwrap_err();
    assert!(
        matches!(error, AuditError::Pending { seq: 0, .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("start its shard once"),
        "{error}"
    );
}

#[test]
fn a_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let error = fetch_balances(&BalanceSource::Db(missing), TIMEOUT).unwrap_err();
    assert!(error.to_string().contains("does not exist"), "{error}");
}

/// A stand-in shard API on a free port: `/v1/stats` answers `stats`,
/// `/v1/accounts` answers `accounts` with `status`.
fn serve(stats: Value, status: StatusCode, accounts: Value) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/stats", get(move || async move { Json(stats) }))
        .route(
            "/v1/accounts",
            get(move || async move { (status, Json(accounts)) }),
        );
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    address
}

/// The shapes the consumer's API answers: `ledger::api` views.
fn stats(accounts: u64) -> Value {
    json!({"shard": 0, "accounts": accounts, "sum": "0.00",
           "offsets": [], "pending": null, "remembered_ids": 2})
}

#[test]
fn a_running_shard_lists_its_balances() {
    let address = serve(
        stats(2),
        StatusCode::OK,
        json!({"shard": 0, "accounts": [
            {"account": "alice", "balance": "12.5", "shard": 0},
            {"account": "world", "balance": "-12.50", "shard": 0}]}),
    );
    let url = format!("http://{address}/");
    let shard = fetch_balances(&BalanceSource::Url(url.clone()), TIMEOUT).unwrap();
    assert_eq!(shard.source, url);
    assert_eq!(
        shard.balances,
        vec![
            (AccountId::parse("alice").unwrap(), Money(1250)),
            (AccountId::world(), Money(-1250)),
        ]
    );
}

#[test]
fn a_partial_listing_is_an_error_not_a_partial_audit() {
    let address = serve(
        stats(3),
        StatusCode::OK,
        json!({"shard": 0, "accounts": [{"account": "alice", "balance": "1.00", "shard": 0}]}),
    );
    let error = fetch_balances(&BalanceSource::Url(format!("http://{address}")), TIMEOUT)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("listed 1 accounts but its stats count 3"),
        "{error}"
    );
}

#[test]
fn a_refused_listing_says_why() {
    let address = serve(
        stats(5000),
        StatusCode::BAD_REQUEST,
        json!({"error": "top must be between 1 and 1000, got 5000"}),
    );
    let error = fetch_balances(&BalanceSource::Url(format!("http://{address}")), TIMEOUT)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("400 Bad Request") && error.contains("top must be between 1 and 1000"),
        "{error}"
    );
}

#[test]
fn sub_cent_balances_are_refused() {
    let address = serve(
        stats(1),
        StatusCode::OK,
        json!({"shard": 0, "accounts": [{"account": "alice", "balance": "1.005", "shard": 0}]}),
    );
    let error = fetch_balances(&BalanceSource::Url(format!("http://{address}")), TIMEOUT)
        .unwrap_err()
        .to_string();
    assert!(error.contains("more than 2 decimals"), "{error}");
}

#[test]
fn an_unreachable_shard_is_an_error() {
    // A port that was free a moment ago: nothing listens there.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = fetch_balances(&BalanceSource::Url(format!("http://{address}")), TIMEOUT)
        .unwrap_err()
        .to_string();
    assert!(error.contains("GET /v1/stats"), "{error}");
}
