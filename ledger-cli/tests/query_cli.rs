//! `ledger query` end to end: the real binary against sled directories made
//! by the real state machine and store, and against HTTP servers that serve
//! the `ledger::api` views from a real `Store`, as a shard does.
//!
//! The fixture runs two rounds of the pipeline by hand, each transfer on its
//! source account's shard and each credit on its destination's, with
//! 6 partitions. With two shards, `world` and `bob` live on shard 0 and
//! `alice` and `frank` on shard 1 (murmur2, see `ledger_core::routing`):
//!
//! | id | transfer               | outcome                      |
//! |----|------------------------|------------------------------|
//! | 1  | world -> alice 100.00  | accepted                     |
//! | 2  | world -> bob 50.00     | accepted                     |
//! | 3  | alice -> bob 30.00     | accepted (decided on 1, credited on 0) |
//! | 4  | bob -> frank 500.00    | rejected, hold_expired       |
//!
//! Final balances: world -150.00, bob 80.00, alice 70.00; frank unseen.
//!
//! The fixture publishes no order marks, so no shortage is ever proven and
//! the machine (holding for 0 ms) rejects transfer 4 `hold_expired` at once:
//! a rejection with a reason, which is all the queries need.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use time::macros::datetime;
use uuid::Uuid;

use ledger::api::{
    AccountView, BalancesPageView, ErrorView, ShardView, StatsView, TopView, TransferView,
};
use ledger::store::{Store, StoreOptions, StoreReader};
use ledger_core::domain::{AccountId, Amount, Currency, Transfer, TransferId};
use ledger_core::machine::{
    process_batch, BatchEffects, InputPartition, InputRecord, Rules, Source,
};
use ledger_core::routing::{partition_for, shard_for};
use ledger_core::wire;

const PARTITIONS: i32 = 6;

fn transfer(n: u128, from: &str, to: &str, amount: &str) -> Transfer {
    Transfer::new(
        TransferId(Uuid::from_u128(n)),
        AccountId::parse(from).unwrap(),
        AccountId::parse(to).unwrap(),
        Amount::parse(amount).unwrap(),
        Currency::EUR,
        datetime!(2025-06-01 12:00 UTC),
    )
    .unwrap()
}

fn id(n: u128) -> String {
    TransferId(Uuid::from_u128(n)).to_string()
}

/// The stores of a few shards, fed as the consumer shards would be.
struct Cluster {
    stores: Vec<Store>,
    next_offsets: BTreeMap<InputPartition, i64>,
}

impl Cluster {
    fn open(dirs: &[PathBuf]) -> Self {
        Cluster {
            stores: dirs
                .iter()
                .map(|dir| Store::open(dir, StoreOptions::default()).unwrap())
                .collect(),
            next_offsets: BTreeMap::new(),
        }
    }

    /// The two rounds of the module's table, every batch committed.
    fn with_scenario(dirs: &[PathBuf]) -> Self {
        let mut cluster = Cluster::open(dirs);
        cluster.round(&[
            transfer(1, "world", "alice", "100.00"),
            transfer(2, "world", "bob", "50.00"),
        ]);
        cluster.round(&[
            transfer(3, "alice", "bob", "30.00"),
            transfer(4, "bob", "frank", "500.00"),
        ]);
        cluster
    }

    fn home(&self, account: &AccountId) -> (usize, i32) {
        let partition = partition_for(account.as_str().as_bytes(), PARTITIONS);
        let shard = shard_for(partition, self.stores.len() as u32) as usize;
        (shard, partition)
    }

    fn batch(
        &mut self,
        shard: usize,
        inputs: &[(InputPartition, Vec<u8>, Vec<u8>)],
        commit: bool,
    ) -> BatchEffects {
        let mut records = Vec::new();
        for (at, key, payload) in inputs {
            let next = self.next_offsets.entry(*at).or_insert(0);
            records.push(InputRecord {
                at: *at,
                offset: *next,
                key: Some(key),
                payload: Some(payload),
            });
            *next += 1;
        }
        let effects =
            process_batch(&self.stores[shard], &Rules::new(PARTITIONS), &records).unwrap();
        self.stores[shard].write_batch(&effects).unwrap();
        if commit {
            self.stores[shard].mark_committed();
        }
        effects
    }

    /// One round: a batch of transfers on each source account's shard, then
    /// a batch of the credits they emitted on each destination's shard.
    fn round(&mut self, transfers: &[Transfer]) {
        let mut credits = Vec::new();
        for shard in 0..self.stores.len() {
            let inputs: Vec<_> = transfers
                .iter()
                .filter(|t| self.home(&t.from).0 == shard)
                .map(|t| {
                    let at = InputPartition {
                        source: Source::Transfers,
                        partition: self.home(&t.from).1,
                    };
                    (
                        at,
                        t.from.as_str().as_bytes().to_vec(),
                        wire::encode_transfer(t),
                    )
                })
                .collect();
            if !inputs.is_empty() {
                let effects = self.batch(shard, &inputs, true);
                credits.extend(effects.credits_emitted().cloned());
            }
        }
        for shard in 0..self.stores.len() {
            let inputs: Vec<_> = credits
                .iter()
                .filter(|c| self.home(&c.to).0 == shard)
                .map(|c| {
                    let at = InputPartition {
                        source: Source::Credits,
                        partition: self.home(&c.to).1,
                    };
                    (
                        at,
                        c.to.as_str().as_bytes().to_vec(),
                        wire::encode_credit(c),
                    )
                })
                .collect();
            if !inputs.is_empty() {
                self.batch(shard, &inputs, true);
            }
        }
    }

    /// A clean shutdown: the last batch's pending record is cleared, as a
    /// shard does once its commit is known.
    fn stop(mut self) {
        for store in &mut self.stores {
            store.clear_pending().unwrap();
        }
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ledger(args: &[&str]) -> Run {
    ledger_with_env(args, None)
}

fn ledger_with_env(args: &[&str], urls_env: Option<&str>) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ledger"));
    command.args(args).env_remove("TXLEDGER_SHARD_URLS");
    if let Some(urls) = urls_env {
        command.env("TXLEDGER_SHARD_URLS", urls);
    }
    let output = command.output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn ok(args: &[&str]) -> String {
    let run = ledger(args);
    assert_eq!(run.code, 0, "ledger {args:?} failed: {}", run.stderr);
    run.stdout
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).unwrap()
}

fn path(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

#[test]
fn offline_stats_prints_a_table_and_json_of_a_stopped_shard() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shard-0");
    Cluster::with_scenario(std::slice::from_ref(&db)).stop();

    let table = ok(&["query", "stats", "--db", path(&db)]);
    let lines: Vec<&str> = table.lines().collect();
    let words = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        words(lines[0]),
        [
            "SHARD",
            "PARTITIONS",
            "ACCOUNTS",
            "SUM",
            "REMEMBERED",
            "IDS",
            "HELD",
            "PENDING",
            "SOURCE"
        ]
    );
    // Named by its directory; it consumed transfers of partitions 0, 3
    // and 4. Four decided ids plus three applied credits; nothing held.
    assert_eq!(
        words(lines[1]),
        [path(&db), "0,3,4", "3", "0.00", "7", "0", "none", path(&db)]
    );
    assert_eq!(words(lines[2]), ["total", "3", "0.00", "7", "0", "none"]);
    // Amounts and counts are right-aligned under their header.
    let sum_end = lines[0].find("SUM").unwrap() + "SUM".len();
    assert_eq!(lines[1].find("0.00").unwrap() + "0.00".len(), sum_end);
    // Offsets: world's transfers (partition 4) and the credits of alice
    // (partition 3) and bob (partition 0), and their transfers.
    assert_eq!(
        lines[4..]
            .iter()
            .map(|line| words(line))
            .collect::<Vec<_>>(),
        [
            vec!["SHARD", "INPUT", "PARTITION", "NEXT", "OFFSET"],
            vec![path(&db), "transfers", "0", "1"],
            vec![path(&db), "transfers", "3", "1"],
            vec![path(&db), "transfers", "4", "2"],
            vec![path(&db), "credits", "0", "2"],
            vec![path(&db), "credits", "3", "1"],
        ]
    );
    assert!(!table.contains("pending ("), "{table}");

    let answer = json(&["query", "stats", "--db", path(&db), "--json"]);
    let shards: Vec<StatsView> = serde_json::from_value(answer["shards"].clone()).unwrap();
    assert_eq!(shards.len(), 1);
    let shard = &shards[0];
    assert_eq!(
        (
            shard.shard.as_str(),
            shard.partitions.as_slice(),
            shard.accounts,
            shard.sum.as_str(),
            shard.remembered_ids
        ),
        (path(&db), &[0, 3, 4][..], 3, "0.00", 7)
    );
    assert_eq!(shard.pending, None);
    assert_eq!(shard.offsets.len(), 5);
    assert_eq!(answer["total"]["accounts"], 3);
    assert_eq!(answer["total"]["sum"], "0.00");
    assert_eq!(answer["total"]["pending_batches"], 0);
}

#[test]
fn offline_balance_top_and_transfer_of_one_shard() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shard-0");
    Cluster::with_scenario(std::slice::from_ref(&db)).stop();
    let db = path(&db);

    assert_eq!(
        ok(&["query", "balance", "alice", "--db", db]),
        format!(
            "ACCOUNT  BALANCE  SHARD\n\
             alice      70.00  {db}\n"
        )
    );
    let view: AccountView =
        serde_json::from_value(json(&["query", "--db", db, "--json", "balance", "world"])).unwrap();
    assert_eq!(
        view,
        AccountView {
            account: "world".to_owned(),
            balance: "-150.00".to_owned(),
            shard: db.to_owned()
        }
    );

    assert_eq!(
        ok(&["query", "top", "--db", db]),
        format!(
            "RANK  ACCOUNT  BALANCE  SHARD\n   \
                1  bob        80.00  {db}\n   \
                2  alice      70.00  {db}\n   \
                3  world    -150.00  {db}\n"
        )
    );
    let top: Vec<AccountView> = serde_json::from_value(json(&[
        "query", "top", "--limit", "1", "--json", "--db", db,
    ]))
    .unwrap();
    assert_eq!(top.len(), 1);
    assert_eq!(
        (top[0].account.as_str(), top[0].balance.as_str()),
        ("bob", "80.00")
    );

    let text = ok(&["query", "transfer", &id(3), "--db", db]);
    assert!(
        text.starts_with(&format!(
            "transfer {}: accepted by shard {db}; credit applied on shard {db}\n",
            id(3)
        )),
        "{text}"
    );
    let answer = json(&["query", "transfer", &id(4), "--db", db, "--json"]);
    assert_eq!(answer["status"], "rejected");
    assert_eq!(answer["reason"], "hold_expired");
    assert_eq!(answer["decided_by"], serde_json::json!([db]));
    assert_eq!(answer["credited_by"], serde_json::json!([]));
}

#[test]
fn not_found_answers_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shard-0");
    Cluster::with_scenario(std::slice::from_ref(&db)).stop();
    let db = path(&db);

    let run = ledger(&["query", "balance", "frank", "--db", db]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr.contains("unknown account frank"),
        "{}",
        run.stderr
    );

    let run = ledger(&["query", "balance", "frank", "--db", db, "--json"]);
    assert_eq!(run.code, 1);
    let error: ErrorView = serde_json::from_str(&run.stdout).unwrap();
    assert!(
        error.error.contains("unknown account frank"),
        "{}",
        error.error
    );

    let run = ledger(&["query", "transfer", &id(99), "--db", db, "--json"]);
    assert_eq!(run.code, 1);
    let answer: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(answer["status"], "unknown");
}

#[test]
fn a_pending_batch_is_reported_and_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shard-0");
    let mut cluster = Cluster::with_scenario(std::slice::from_ref(&db));
    // A shard that died between its sled write and its Kafka commit.
    let deposit = transfer(5, "world", "carol", "25.00");
    let at = InputPartition {
        source: Source::Transfers,
        partition: cluster.home(&deposit.from).1,
    };
    cluster.batch(
        0,
        &[(at, b"world".to_vec(), wire::encode_transfer(&deposit))],
        false,
    );
    drop(cluster);
    let db = path(&db);

    let table = ok(&["query", "stats", "--db", db]);
    // The batches so far were seqs 0 to 3.
    assert!(table.contains("seq 4"), "{table}");
    assert!(
        table.contains(&format!(
            "shard {db}: 1 batch pending (seq 4): its effects are not shown; start the shard to \
             resolve it"
        )),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("total") && line.contains("1 batch")),
        "{table}"
    );

    let answer = json(&["query", "stats", "--db", db, "--json"]);
    let shard: StatsView = serde_json::from_value(answer["shards"][0].clone()).unwrap();
    let pending = shard.pending.unwrap();
    assert_eq!(pending.seq, 4);
    // The committed state: world before the deposit, offsets before it.
    assert_eq!(shard.sum, "0.00");
    assert!(shard
        .offsets
        .iter()
        .any(|o| o.source == Source::Transfers && o.partition == 4 && o.next_offset == 2));
    assert!(pending
        .offsets_after
        .iter()
        .any(|o| o.source == Source::Transfers && o.partition == 4 && o.next_offset == 3));
    assert_eq!(answer["total"]["pending_batches"], 1);

    let view: AccountView =
        serde_json::from_value(json(&["query", "balance", "world", "--db", db, "--json"])).unwrap();
    assert_eq!(view.balance, "-150.00");
    assert_eq!(ledger(&["query", "balance", "carol", "--db", db]).code, 1);
    assert_eq!(ledger(&["query", "transfer", &id(5), "--db", db]).code, 1);
}

#[test]
fn a_missing_or_foreign_directory_is_an_error_and_is_never_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-shard");
    let run = ledger(&["query", "stats", "--db", path(&missing)]);
    assert_eq!(run.code, 2);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr.contains(&format!(
            "no ledger at {}: the directory does not exist",
            missing.display()
        )),
        "{}",
        run.stderr
    );
    assert!(!missing.exists());

    let run = ledger(&["query", "balance", "alice", "--db", path(dir.path())]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("holds no sled database"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn offline_shards_are_merged_and_routed() {
    let dir = tempfile::tempdir().unwrap();
    let dbs = [dir.path().join("shard-0"), dir.path().join("shard-1")];
    Cluster::with_scenario(&dbs).stop();
    let (db0, db1) = (path(&dbs[0]), path(&dbs[1]));

    let view: AccountView = serde_json::from_value(json(&[
        "query", "balance", "alice", "--db", db0, "--db", db1, "--json",
    ]))
    .unwrap();
    assert_eq!((view.balance.as_str(), view.shard.as_str()), ("70.00", db1));

    // Listed by name whatever the order given.
    let answer = json(&["query", "stats", "--db", db1, "--db", db0, "--json"]);
    let shards: Vec<StatsView> = serde_json::from_value(answer["shards"].clone()).unwrap();
    let sums: Vec<(&str, u64, &str)> = shards
        .iter()
        .map(|s| (s.shard.as_str(), s.accounts, s.sum.as_str()))
        .collect();
    assert_eq!(sums, [(db0, 2, "-70.00"), (db1, 1, "70.00")]);
    assert_eq!(answer["total"]["sum"], "0.00");
    assert_eq!(answer["total"]["accounts"], 3);

    let text = ok(&["query", "transfer", &id(3), "--db", db0, "--db", db1]);
    assert!(
        text.starts_with(&format!(
            "transfer {}: accepted by shard {db1}; credit applied on shard {db0}\n",
            id(3)
        )),
        "{text}"
    );
}

#[test]
fn balances_exports_every_committed_balance_as_json_lines_or_csv() {
    let dir = tempfile::tempdir().unwrap();
    let dbs = [dir.path().join("shard-0"), dir.path().join("shard-1")];
    Cluster::with_scenario(&dbs).stop();
    let (db0, db1) = (path(&dbs[0]), path(&dbs[1]));

    // Shard after shard, each in account order.
    let lines: Vec<AccountView> = ok(&["query", "balances", "--db", db0, "--db", db1])
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let rows: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|view| {
            (
                view.account.as_str(),
                view.balance.as_str(),
                view.shard.as_str(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("bob", "80.00", db0),
            ("world", "-150.00", db0),
            ("alice", "70.00", db1)
        ]
    );

    assert_eq!(
        ok(&["query", "balances", "--format", "csv", "--db", db0, "--db", db1]),
        format!("account,balance,shard\nbob,80.00,{db0}\nworld,-150.00,{db0}\nalice,70.00,{db1}\n")
    );
}

/// One shard's HTTP API as the consumer serves it, from a live store.
#[derive(Clone)]
struct ShardApi {
    name: String,
    /// What its stats report it owns.
    partitions: Vec<i32>,
    reader: StoreReader,
}

impl ShardApi {
    /// Shard `ordinal` of `shards` under ordinal assignment, named as the
    /// consumer names it.
    fn ordinal(reader: StoreReader, ordinal: u32, shards: u32) -> Self {
        ShardApi {
            name: format!("ledger-consumer-{ordinal}"),
            partitions: (0..PARTITIONS)
                .filter(|partition| shard_for(*partition, shards) == ordinal)
                .collect(),
            reader,
        }
    }
}

#[derive(Deserialize)]
struct TopParams {
    top: usize,
}

async fn account(State(api): State<ShardApi>, UrlPath(id): UrlPath<String>) -> Response {
    let account = AccountId::parse(&id).unwrap();
    match api.reader.balance(&account).unwrap() {
        Some(balance) => Json(AccountView::new(&id, balance, &api.name)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(ErrorView {
                error: format!("unknown account {id}"),
            }),
        )
            .into_response(),
    }
}

async fn top(State(api): State<ShardApi>, Query(params): Query<TopParams>) -> Json<TopView> {
    let accounts = api.reader.top(params.top).unwrap();
    Json(TopView {
        shard: api.name.clone(),
        accounts: accounts
            .iter()
            .map(|(account, balance)| AccountView::new(account.as_str(), *balance, &api.name))
            .collect(),
    })
}

#[derive(Deserialize)]
struct PageParams {
    after: Option<String>,
    limit: usize,
}

async fn balances_page(
    State(api): State<ShardApi>,
    Query(params): Query<PageParams>,
) -> Json<BalancesPageView> {
    let after = params.after.map(|text| AccountId::parse(&text).unwrap());
    let page = api
        .reader
        .balances_page(after.as_ref(), params.limit)
        .unwrap();
    Json(BalancesPageView {
        shard: api.name.clone(),
        accounts: page
            .iter()
            .map(|(account, balance)| AccountView::new(account.as_str(), *balance, &api.name))
            .collect(),
    })
}

async fn transfer_status(
    State(api): State<ShardApi>,
    UrlPath(id): UrlPath<String>,
) -> Json<TransferView> {
    let id: TransferId = id.parse().unwrap();
    Json(TransferView::new(
        id.to_string(),
        api.name.clone(),
        api.reader.transfer(id),
    ))
}

async fn shard(State(api): State<ShardApi>) -> Json<ShardView> {
    Json(ShardView {
        shard: api.name.clone(),
        partitions: api.partitions.clone(),
    })
}

async fn stats(State(api): State<ShardApi>) -> Json<StatsView> {
    Json(StatsView::new(
        api.name.clone(),
        api.partitions.clone(),
        &api.reader.stats().unwrap(),
    ))
}

/// Serves a shard's API on 127.0.0.1 from a thread of its own, for the
/// rest of the test process; returns its base URL.
fn serve(api: ShardApi) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/accounts", get(top))
        .route("/v1/accounts/{id}", get(account))
        .route("/v1/balances", get(balances_page))
        .route("/v1/transfers/{id}", get(transfer_status))
        .route("/v1/stats", get(stats))
        .route("/v1/shard", get(shard))
        .with_state(api);
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
    format!("http://{address}")
}

#[test]
fn running_shards_are_asked_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let dbs = [dir.path().join("shard-0"), dir.path().join("shard-1")];
    // The stores stay open, as in running shards: their directories are locked.
    let cluster = Cluster::with_scenario(&dbs);
    let urls: Vec<String> = cluster
        .stores
        .iter()
        .zip(0..)
        .map(|(store, ordinal)| serve(ShardApi::ordinal(store.reader(), ordinal, 2)))
        .collect();
    let with_urls = |args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        for url in &urls {
            all.extend(["--url".to_owned(), url.clone()]);
        }
        all
    };
    let run = |args: &[&str]| {
        let args = with_urls(args);
        ledger(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // `balance` goes to the owning shard: alice's partition 3 is shard 1's.
    let answer = run(&["query", "balance", "alice"]);
    assert_eq!(
        (answer.code, answer.stdout.as_str()),
        (
            0,
            "ACCOUNT  BALANCE  SHARD\nalice      70.00  ledger-consumer-1\n"
        )
    );
    let view: AccountView =
        serde_json::from_str(&run(&["query", "balance", "bob", "--json"]).stdout).unwrap();
    assert_eq!(
        (view.balance.as_str(), view.shard.as_str()),
        ("80.00", "ledger-consumer-0")
    );
    let unknown = run(&["query", "balance", "frank"]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains(&format!(
            "unknown account frank: on partition 1 of 6, owned by shard ledger-consumer-1 \
             ({}/), which has never seen it",
            urls[1]
        )),
        "{}",
        unknown.stderr
    );

    // `top` merges both shards' tops.
    let top: Vec<AccountView> =
        serde_json::from_str(&run(&["query", "top", "--limit", "2", "--json"]).stdout).unwrap();
    let ranked: Vec<(&str, &str, &str)> = top
        .iter()
        .map(|v| (v.account.as_str(), v.balance.as_str(), v.shard.as_str()))
        .collect();
    assert_eq!(
        ranked,
        [
            ("bob", "80.00", "ledger-consumer-0"),
            ("alice", "70.00", "ledger-consumer-1")
        ]
    );

    // `balances` pages through each shard's `/v1/balances`.
    const EXPORT: &str = "account,balance,shard\n\
                          bob,80.00,ledger-consumer-0\n\
                          world,-150.00,ledger-consumer-0\n\
                          alice,70.00,ledger-consumer-1\n";
    assert_eq!(
        run(&["query", "balances", "--format", "csv"]).stdout,
        EXPORT
    );

    // `transfer` combines the source shard's decision and the destination's credit.
    let text = run(&["query", "transfer", &id(3)]).stdout;
    assert_eq!(
        text,
        format!(
            "transfer {}: accepted by shard ledger-consumer-1; credit applied on shard \
             ledger-consumer-0\n\n\
             SHARD              STATUS    REASON  CREDITED\n\
             ledger-consumer-0  unknown   -       yes\n\
             ledger-consumer-1  accepted  -       no\n",
            id(3)
        )
    );
    let answer: Value =
        serde_json::from_str(&run(&["query", "transfer", &id(3), "--json"]).stdout).unwrap();
    assert_eq!(answer["status"], "accepted");
    assert_eq!(
        answer["decided_by"],
        serde_json::json!(["ledger-consumer-1"])
    );
    assert_eq!(
        answer["credited_by"],
        serde_json::json!(["ledger-consumer-0"])
    );
    let views: Vec<TransferView> = serde_json::from_value(answer["shards"].clone()).unwrap();
    assert_eq!(views.len(), 2);

    let answer: Value = serde_json::from_str(&run(&["query", "stats", "--json"]).stdout).unwrap();
    let shards: Vec<StatsView> = serde_json::from_value(answer["shards"].clone()).unwrap();
    assert_eq!(
        shards
            .iter()
            .map(|s| (s.shard.as_str(), s.partitions.as_slice(), s.sum.as_str()))
            .collect::<Vec<_>>(),
        [
            ("ledger-consumer-0", &[0, 2, 4][..], "-70.00"),
            ("ledger-consumer-1", &[1, 3, 5][..], "70.00")
        ]
    );
    assert_eq!(answer["total"]["sum"], "0.00");

    // The environment names the shards when no option does.
    let from_env = ledger_with_env(&["query", "balance", "alice"], Some(&urls.join(",")));
    assert_eq!(from_env.code, 0, "{}", from_env.stderr);
    assert!(from_env.stdout.contains("70.00"));

    // One URL list in the "wrong" order, one shard given twice: shards are
    // who they say they are, so balances route by the partitions each
    // reports, and the twice-given shard counts once.
    let swapped = format!("{},{},{}", urls[1], urls[0], urls[1]);
    for (account, balance, shard) in [
        ("alice", "70.00", "ledger-consumer-1"),
        ("bob", "80.00", "ledger-consumer-0"),
    ] {
        let answer = ledger(&["query", "balance", account, "--json", "--url", &swapped]);
        assert_eq!(answer.code, 0, "{}", answer.stderr);
        let view: AccountView = serde_json::from_str(&answer.stdout).unwrap();
        assert_eq!(
            (view.balance.as_str(), view.shard.as_str()),
            (balance, shard)
        );
    }
    let answer: Value =
        serde_json::from_str(&ledger(&["query", "stats", "--json", "--url", &swapped]).stdout)
            .unwrap();
    let names: Vec<StatsView> = serde_json::from_value(answer["shards"].clone()).unwrap();
    assert_eq!(
        names.iter().map(|s| s.shard.as_str()).collect::<Vec<_>>(),
        ["ledger-consumer-0", "ledger-consumer-1"]
    );
    assert_eq!(answer["total"]["accounts"], 3);
    assert_eq!(
        ledger(&["query", "balances", "--format", "csv", "--url", &swapped]).stdout,
        EXPORT
    );

    // A partition no shard given owns: its shard is down, or not given.
    let alone = ledger(&["query", "balance", "alice", "--url", &urls[0]]);
    assert_eq!(alone.code, 1);
    assert!(
        alone.stderr.contains(
            "unknown account alice: on partition 3 of 6, owned by no shard given (one is down \
             or not given, or the shards are rebalancing: retry)"
        ),
        "{}",
        alone.stderr
    );
    // Two shards that report the same partition disagree: no guess.
    let rebalancing = serve(ShardApi {
        name: "ledger-consumer-2".to_owned(),
        partitions: vec![3],
        reader: cluster.stores[0].reader(),
    });
    let disagree = ledger(&[
        "query",
        "balance",
        "alice",
        "--url",
        &format!("{swapped},{rebalancing}"),
    ]);
    assert_eq!(disagree.code, 2);
    assert!(
        disagree.stderr.contains(&format!(
            "shard ledger-consumer-1 ({}/), shard ledger-consumer-2 ({rebalancing}/) all report \
             partition 3 of 6 (account alice's): they disagree on who owns it, a rebalance is \
             under way; retry",
            urls[1]
        )),
        "{}",
        disagree.stderr
    );

    // A running shard's directory is locked: the error says to use --url.
    let locked = ledger(&["query", "stats", "--db", path(&dbs[0])]);
    assert_eq!(locked.code, 2);
    assert!(
        locked.stderr.contains("locked by another process"),
        "{}",
        locked.stderr
    );
    assert!(locked.stderr.contains("--url"), "{}", locked.stderr);

    drop(cluster);
}

#[test]
fn an_unreachable_shard_is_an_error_naming_it() {
    // Port 9 (discard) on loopback: nothing listens there in a test sandbox.
    let run = ledger(&["query", "stats", "--url", "http://127.0.0.1:9"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("GET http://127.0.0.1:9/v1/shard"),
        "{}",
        run.stderr
    );
}

#[test]
fn bad_options_get_clap_errors() {
    let cases: [(&[&str], &str); 6] = [
        (&["query", "stats"], "no shard to ask"),
        (
            &["query", "top", "--limit", "0", "--db", "x"],
            "0 is not in 1..=1000",
        ),
        (
            &["query", "balance", "no spaces", "--db", "x"],
            "invalid account id",
        ),
        (&["query", "transfer", "42", "--db", "x"], "not a UUID"),
        (
            &["query", "stats", "--db", "x", "--url", "http://h"],
            "cannot be used with",
        ),
        (&["query", "stats", "--url", "https://h"], "plain http"),
    ];
    for (args, expected) in cases {
        let run = ledger(args);
        assert_eq!(run.code, 2, "{args:?}");
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
    }
    let run = ledger(&["query", "frobnicate"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("unrecognized subcommand"),
        "{}",
        run.stderr
    );
}
