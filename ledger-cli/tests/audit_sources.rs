//! Where the audit gets the shards' balances: a stopped shard's sled
//! directory, or a running shard's HTTP API (served here by a stand-in with
//! the shard's JSON shapes).

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use ledger::api::BALANCES_PAGE_MAX;
use ledger::store::{Store, StoreOptions};
use ledger_cli::audit::{fetch_all, fetch_balances, AuditError, BalanceSource};
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

/// A stand-in shard API on a free port: `/v1/stats` answers `stats`;
/// `/v1/balances?after=A&limit=N` answers with `status` and, when that is
/// 200, the page of `accounts` (sorted by account) after `A`, as the shard
/// pages; otherwise with `error`. Every request's query is kept in
/// `requests`.
struct StandIn {
    address: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

impl StandIn {
    /// What the audit reads from this shard, which must fail: its error.
    fn audit_error(&self) -> String {
        fetch_balances(
            &BalanceSource::Url(format!("http://{}", self.address)),
            TIMEOUT,
        )
        .unwrap_err()
        .to_string()
    }
}

fn serve(stats: Value, status: StatusCode, accounts: Vec<Value>, error: Value) -> StandIn {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    // Every page names the shard its stats name.
    let name = stats["shard"].clone();
    let page = move |Query(query): Query<HashMap<String, String>>| {
        let accounts = accounts.clone();
        let error = error.clone();
        let name = name.clone();
        let seen = Arc::clone(&seen);
        async move {
            let mut keys: Vec<_> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            keys.sort();
            seen.lock().unwrap().push(keys.join("&"));
            if status != StatusCode::OK {
                return (status, Json(error));
            }
            let limit: usize = query["limit"].parse().unwrap();
            let page: Vec<Value> = accounts
                .into_iter()
                .filter(|entry| {
                    query
                        .get("after")
                        .is_none_or(|after| entry["account"].as_str().unwrap() > after.as_str())
                })
                .take(limit)
                .collect();
            (status, Json(json!({"shard": name, "accounts": page})))
        }
    };
    let app = Router::new()
        .route("/v1/stats", get(move || async move { Json(stats) }))
        .route("/v1/balances", get(page));
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
    StandIn { address, requests }
}

/// The shapes the consumer's API answers: `ledger::api` views, of the one
/// shard of a one-partition ledger.
fn stats(accounts: u64) -> Value {
    stats_of("ledger-consumer-0", &[0], accounts)
}

fn stats_of(shard: &str, partitions: &[i32], accounts: u64) -> Value {
    json!({"shard": shard, "partitions": partitions, "accounts": accounts, "sum": "0.00",
           "offsets": [], "pending": null, "remembered_ids": 2})
}

fn entry(account: &str, balance: &str) -> Value {
    json!({"account": account, "balance": balance, "shard": "ledger-consumer-0"})
}

#[test]
fn a_running_shard_lists_its_balances() {
    let shard = serve(
        stats(2),
        StatusCode::OK,
        vec![entry("alice", "12.5"), entry("world", "-12.50")],
        Value::Null,
    );
    let url = format!("http://{}/", shard.address);
    let balances = fetch_balances(&BalanceSource::Url(url.clone()), TIMEOUT).unwrap();
    assert_eq!(balances.source, url);
    assert_eq!(
        balances.balances,
        vec![
            (AccountId::parse("alice").unwrap(), Money(1250)),
            (AccountId::world(), Money(-1250)),
        ]
    );
}

#[test]
fn a_large_shard_is_read_page_by_page() {
    let count = BALANCES_PAGE_MAX + 1;
    let accounts: Vec<Value> = (0..count)
        .map(|n| entry(&format!("acc-{n:06}"), "1.00"))
        .collect();
    let shard = serve(stats(count as u64), StatusCode::OK, accounts, Value::Null);
    let balances = fetch_balances(
        &BalanceSource::Url(format!("http://{}", shard.address)),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(balances.balances.len(), count);
    assert_eq!(balances.balances[count - 1].0.as_str(), "acc-010000");
    // The second page starts after the last account of the first.
    assert_eq!(
        *shard.requests.lock().unwrap(),
        vec![
            format!("limit={BALANCES_PAGE_MAX}"),
            format!("after=acc-009999&limit={BALANCES_PAGE_MAX}"),
        ]
    );
}

#[test]
fn a_partial_listing_is_an_error_not_a_partial_audit() {
    let shard = serve(
        stats(3),
        StatusCode::OK,
        vec![entry("alice", "1.00")],
        Value::Null,
    );
    let error = shard.audit_error();
    assert!(
        error.contains("listed 1 accounts but its stats count 3"),
        "{error}"
    );
}

#[test]
fn a_refused_listing_says_why() {
    let shard = serve(
        stats(5000),
        StatusCode::BAD_REQUEST,
        Vec::new(),
        json!({"error": "limit must be between 1 and 10000, got 20000"}),
    );
    let error = shard.audit_error();
    assert!(
        error.contains("400 Bad Request") && error.contains("limit must be between 1 and 10000"),
        "{error}"
    );
}

#[test]
fn sub_cent_balances_are_refused() {
    let shard = serve(
        stats(1),
        StatusCode::OK,
        vec![entry("alice", "1.005")],
        Value::Null,
    );
    let error = shard.audit_error();
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

/// A running shard with no account that reports owning `partitions`; its
/// URL.
fn owner(name: &str, partitions: &[i32]) -> String {
    let shard = serve(
        stats_of(name, partitions, 0),
        StatusCode::OK,
        Vec::new(),
        Value::Null,
    );
    format!("http://{}", shard.address)
}

fn sources(urls: &[&String]) -> Vec<BalanceSource> {
    urls.iter()
        .map(|url| BalanceSource::Url((*url).clone()))
        .collect()
}

#[test]
fn running_shards_must_own_every_partition_once() {
    let a = owner("ledger-consumer-a", &[0, 2]);
    let b = owner("ledger-consumer-b", &[1]);
    let c = owner("ledger-consumer-c", &[2, 3]);

    // a and b own 0, 1 and 2 once; a reached twice counts once.
    let all = fetch_all(&sources(&[&a, &b, &a]), 3, TIMEOUT).unwrap();
    assert_eq!(
        all.iter().map(|shard| &shard.source).collect::<Vec<_>>(),
        [&a, &b]
    );

    // A partition no shard given owns: its shard is down, or not given.
    let error = fetch_all(&sources(&[&a]), 3, TIMEOUT).unwrap_err();
    assert!(matches!(error, AuditError::Coverage { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("partition(s) 1 of 3 owned by no shard given"),
        "{error}"
    );

    // A partition two shards own (a rebalance under way), and one beyond
    // the partition count (a wrong --partitions).
    let error = fetch_all(&sources(&[&c, &a]), 3, TIMEOUT)
        .unwrap_err()
        .to_string();
    for expected in [
        "partition(s) 1 of 3 owned by no shard given",
        &format!("partition 2 owned by both ledger-consumer-a ({a}) and ledger-consumer-c ({c})"),
        &format!("partition 3, not one of 0..3, owned by ledger-consumer-c ({c})"),
    ] {
        assert!(error.contains(expected), "{expected:?} in {error}");
    }
}

#[test]
fn the_audit_command_refuses_shards_that_do_not_cover_the_partitions() {
    let a = owner("ledger-consumer-a", &[0]);
    // The balances are read before any topic: failing needs no broker.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args([
            "audit",
            "--bootstrap-servers",
            "127.0.0.1:9",
            "--partitions",
            "2",
            "--url",
            &a,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("partition(s) 1 of 2 owned by no shard given"),
        "{stderr}"
    );
}
