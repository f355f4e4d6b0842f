//! Shared pieces of the consumer's integration tests: topics on the real
//! broker, feeding input, reading topics back, running shards (in-process or
//! as child processes), an independent model of the expected result, and
//! the checks of the exactly-once properties.
//!
//! The model is independent of the shard: it folds the input in feed order
//! with the ledger's rules written out again here. The scenarios make that
//! order irrelevant: deposits are fed and applied first, and no account
//! then spends more than its deposit, so no decision depends on how the
//! shards interleave partitions or credits.

#![allow(dead_code)] // Each test binary uses part of this module.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use consumer::{Config, Faults};
use harness::testkit::Isolation;
use ledger::api::{StatsView, TopView, TransferView};
use ledger_core::domain::{
    AccountId, Amount, Currency, Decision, OutcomeKind, RejectReason, Transfer, TransferId,
};
use ledger_core::wire::{self, CreditsRecord, Outcome};
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use time::OffsetDateTime;

pub use harness::testkit::{free_port, tail, wait_until, Record, TopicReader, DEADLINE};

pub fn bootstrap() -> String {
    harness::shared_bootstrap()
}

/// One test's own topics, group and transactional ids.
#[derive(Debug, Clone)]
pub struct Topics {
    pub bootstrap: String,
    pub transfers: String,
    pub credits: String,
    pub results: String,
    pub dlq: String,
    /// Created by the shards (compacted), like in production.
    pub changelog: String,
    pub group: String,
    pub transactional_prefix: String,
    pub partitions: i32,
}

impl Topics {
    pub fn create(partitions: i32) -> Topics {
        let bootstrap = bootstrap();
        let topics = Topics {
            transfers: harness::unique_name("transactions"),
            credits: harness::unique_name("credits"),
            results: harness::unique_name("results"),
            dlq: harness::unique_name("dlq"),
            changelog: harness::unique_name("changelog"),
            group: harness::unique_name("group"),
            transactional_prefix: harness::unique_name("ledger-consumer"),
            partitions,
            bootstrap,
        };
        harness::create_topics(
            &topics.bootstrap,
            &[
                (&topics.transfers, partitions),
                (&topics.credits, partitions),
                (&topics.results, partitions),
                (&topics.dlq, partitions),
            ],
        )
        .expect("create topics");
        topics
    }

    /// The shard's command-line arguments (without the HTTP address).
    pub fn args(&self, shard: u32, shards: u32, data_dir: &Path) -> Vec<String> {
        [
            "--bootstrap-servers",
            &self.bootstrap,
            "--transfers-topic",
            &self.transfers,
            "--credits-topic",
            &self.credits,
            "--results-topic",
            &self.results,
            "--dlq-topic",
            &self.dlq,
            "--changelog-topic",
            &self.changelog,
            "--partitions",
            &self.partitions.to_string(),
            "--group-id",
            &self.group,
            "--transactional-id-prefix",
            &self.transactional_prefix,
            "--shard",
            &shard.to_string(),
            "--shards",
            &shards.to_string(),
            "--data-dir",
            &data_dir.display().to_string(),
            "--batch-ms",
            "50",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// A `read_committed` reader of one of these topics, from the beginning.
    pub fn reader(&self, topic: &str) -> TopicReader {
        TopicReader::new(
            &self.bootstrap,
            topic,
            self.partitions,
            Isolation::ReadCommitted,
        )
    }

    pub fn config(&self, shard: u32, shards: u32, data_dir: &Path, extra: &[&str]) -> Config {
        let mut args = vec!["consumer".to_owned()];
        args.extend(self.args(shard, shards, data_dir));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Config::try_parse_from(args).expect("valid test config")
    }
}

// ---------------------------------------------------------------- input

/// One record for the `transactions` topic.
#[derive(Debug, Clone)]
pub enum Input {
    Transfer(Transfer),
    /// Raw bytes under a key, for bad input.
    Raw {
        key: Option<String>,
        payload: Option<Vec<u8>>,
    },
}

pub fn account(name: &str) -> AccountId {
    AccountId::parse(name).expect("valid account")
}

pub fn transfer(from: &str, to: &str, minor: i64, currency: &str) -> Transfer {
    Transfer::new(
        TransferId::new_random(),
        account(from),
        account(to),
        Amount::from_minor(minor).expect("valid amount"),
        Currency::parse(currency).expect("valid currency"),
        OffsetDateTime::now_utc(),
    )
    .expect("valid transfer")
}

/// Counts failed deliveries of the test feeder.
struct Deliveries {
    failed: Arc<AtomicUsize>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Writes `inputs` to the transfers topic, keyed by source account, with
/// the same partitioner as the shards (so credits and transfers of an
/// account meet on one partition number). Idempotent, not transactional:
/// every record is committed input.
pub fn feed(topics: &Topics, inputs: &[Input]) {
    let failed = Arc::new(AtomicUsize::new(0));
    let producer: BaseProducer<Deliveries> = ledger::kafka::client_config(&topics.bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", ledger::kafka::PARTITIONER)
        .set("linger.ms", "5")
        .create_with_context(Deliveries {
            failed: Arc::clone(&failed),
        })
        .expect("feeder");
    for input in inputs {
        let (key, payload) = match input {
            Input::Transfer(transfer) => (
                Some(transfer.from.as_str().to_owned()),
                Some(wire::encode_transfer(transfer)),
            ),
            Input::Raw { key, payload } => (key.clone(), payload.clone()),
        };
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topics.transfers);
        if let Some(key) = &key {
            record = record.key(key.as_bytes());
        }
        if let Some(payload) = &payload {
            record = record.payload(payload.as_slice());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(_), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(50));
                }
                Err((error, _)) => panic!("feeding failed: {error}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("flush feeder");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "undelivered input");
}

// ---------------------------------------------------------------- reading

pub fn outcomes_of(records: &[Record]) -> Vec<Outcome> {
    records
        .iter()
        .map(|r| wire::decode_outcome(r.payload.as_deref().unwrap_or_default()).expect("outcome"))
        .collect()
}

// ---------------------------------------------------------------- model

/// The expected ledger: decisions per transfer id and balances, folded in
/// feed order with the ledger's rules.
#[derive(Debug, Default, Clone)]
pub struct Model {
    pub decisions: HashMap<TransferId, Decision>,
    pub balances: BTreeMap<String, i128>,
}

impl Model {
    pub fn apply(&mut self, inputs: &[Input]) {
        for input in inputs {
            let Input::Transfer(transfer) = input else {
                continue;
            };
            if self.decisions.contains_key(&transfer.id) {
                continue;
            }
            let amount = i128::from(transfer.amount.minor());
            let from = transfer.from.as_str().to_owned();
            let decision = if transfer.currency != Currency::EUR {
                Decision::Rejected(RejectReason::CurrencyMismatch)
            } else if !transfer.from.is_world()
                && self.balances.get(&from).copied().unwrap_or(0) < amount
            {
                Decision::Rejected(RejectReason::InsufficientFunds)
            } else {
                *self.balances.entry(from).or_default() -= amount;
                *self
                    .balances
                    .entry(transfer.to.as_str().to_owned())
                    .or_default() += amount;
                Decision::Accepted
            };
            self.decisions.insert(transfer.id, decision);
        }
    }
}

/// A small deterministic generator, so that a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            | 1)
    }
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

pub const DEPOSIT_MINOR: i64 = 100_000;
/// Transfers per source account in a scenario: times 50.00, at most the deposit.
const SENT_MAX: u32 = 20;

/// The standard two-phase scenario.
pub struct Scenario {
    pub accounts: Vec<String>,
    pub deposits: Vec<Input>,
    pub transfers: Vec<Input>,
}

impl Scenario {
    /// `accounts` accounts each get a deposit of 1000.00 from `world`; then
    /// `count` funded transfers between them and to `world` (at most 20 of at
    /// most 50.00 per source, so never more than the deposit), 1 in 10
    /// resubmitted, one too large for anyone, one in USD, a few malformed.
    pub fn new(seed: u64, accounts: usize, count: usize) -> Scenario {
        assert!(
            count <= accounts * SENT_MAX as usize,
            "too many transfers for the accounts"
        );
        let mut rng = Rng::new(seed);
        let names: Vec<String> = (0..accounts)
            .map(|i| format!("acc-{seed}-{i:03}"))
            .collect();
        let deposits = names
            .iter()
            .map(|name| Input::Transfer(transfer("world", name, DEPOSIT_MINOR, "EUR")))
            .collect();
        let mut sent = vec![0u32; accounts];
        let mut transfers = Vec::new();
        let mut originals = Vec::new();
        while originals.len() < count {
            let from = rng.below(accounts as u64) as usize;
            if sent[from] >= SENT_MAX {
                continue;
            }
            sent[from] += 1;
            let to = match rng.below(8) {
                0 => "world".to_owned(),
                _ => {
                    let to = (from + 1 + rng.below(accounts as u64 - 1) as usize) % accounts;
                    names[to].clone()
                }
            };
            let minor = 1 + rng.below(5_000) as i64;
            let transfer = transfer(&names[from], &to, minor, "EUR");
            transfers.push(Input::Transfer(transfer.clone()));
            originals.push(transfer.clone());
            if rng.below(10) == 0 {
                transfers.push(Input::Transfer(transfer));
            }
        }
        transfers.push(Input::Transfer(transfer(
            &names[0],
            &names[1],
            ledger_core::domain::AMOUNT_MAX_MINOR,
            "EUR",
        )));
        transfers.push(Input::Transfer(transfer(&names[1], &names[2], 100, "USD")));
        transfers.push(Input::Raw {
            key: Some(names[2].clone()),
            payload: Some(b"{not json".to_vec()),
        });
        transfers.push(Input::Raw {
            key: Some(names[3].clone()),
            payload: None,
        });
        // A resubmission at the very end, after everything else.
        transfers.push(Input::Transfer(originals[0].clone()));
        Scenario {
            accounts: names,
            deposits,
            transfers,
        }
    }

    pub fn model_after_deposits(&self) -> Model {
        let mut model = Model::default();
        model.apply(&self.deposits);
        model
    }

    pub fn model(&self) -> Model {
        let mut model = self.model_after_deposits();
        model.apply(&self.transfers);
        // The scenario's promise: nothing but the designated transfers is
        // rejected, so the interleaving of partitions cannot matter.
        let rejected = model
            .decisions
            .values()
            .filter(|d| matches!(d, Decision::Rejected(_)))
            .count();
        assert_eq!(rejected, 2, "the scenario must be unambiguous");
        model
    }
}

// ---------------------------------------------------------------- shards

/// A blocking HTTP client for the shards' API, built once per process.
pub fn http() -> &'static reqwest::blocking::Client {
    static CLIENT: std::sync::OnceLock<reqwest::blocking::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client")
    })
}

pub fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> T {
    let response = http().get(url).send().expect("GET");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.json().expect("JSON body")
}

/// All balances served by the shards at `urls`, merged; panics if an
/// account is served by two shards.
pub fn served_balances(urls: &[String]) -> BTreeMap<String, i128> {
    try_served_balances(urls).unwrap_or_else(|why| panic!("{why}"))
}

/// All balances served by the shards at `urls`, merged, or why not: a shard
/// that does not answer 200, an account served by two shards.
pub fn try_served_balances(urls: &[String]) -> Result<BTreeMap<String, i128>, String> {
    let mut all = BTreeMap::new();
    for url in urls {
        let url = format!("{url}/v1/accounts?top=1000");
        let response = http().get(&url).send().map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: {}", response.status()));
        }
        let top: TopView = response.json().expect("JSON body");
        assert!(
            top.accounts.len() < 1000,
            "more accounts than one query shows"
        );
        for entry in top.accounts {
            let balance: Decimal = entry.balance.parse().expect("a decimal balance");
            let minor = (balance * Decimal::from(100))
                .to_i128()
                .expect("balance in minor units");
            if all.insert(entry.account.clone(), minor).is_some() {
                return Err(format!("account {} is served by two shards", entry.account));
            }
        }
    }
    Ok(all)
}

/// Waits until the shards serve exactly `expected` balances (zero balances
/// of known accounts included).
pub fn wait_for_balances(urls: &[String], expected: &BTreeMap<String, i128>) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let served = served_balances(urls);
        if &served == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "balances did not converge in time:\nserved   {served:?}\nexpected {expected:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

pub fn is_ready(url: &str) -> bool {
    http()
        .get(format!("{url}/readyz"))
        .send()
        .is_ok_and(|r| r.status().is_success())
}

/// A shard task and the sender that stops it.
type RunningShard = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), consumer::Error>>,
);

/// Shards run inside the test process, on its own runtime.
pub struct InProcess {
    pub runtime: tokio::runtime::Runtime,
    shards: Vec<RunningShard>,
    pub urls: Vec<String>,
}

impl InProcess {
    pub fn new() -> InProcess {
        ledger::telemetry::init_logging(ledger::telemetry::LogFormat::Human);
        InProcess {
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime"),
            shards: Vec::new(),
            urls: Vec::new(),
        }
    }

    /// Starts a shard and waits until it is ready; returns its URL.
    pub fn start(&mut self, config: Config) -> String {
        self.start_with_faults(config, Faults::default())
    }

    /// [`InProcess::start`] with test-only faults injected.
    pub fn start_with_faults(&mut self, config: Config, faults: Faults) -> String {
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = self
            .runtime
            .spawn(consumer::serve(config, faults, listener, async {
                let _ = stopped.await;
            }));
        self.shards.push((stop, task));
        wait_until("the shard to be ready", || is_ready(&url));
        self.urls.push(url.clone());
        url
    }

    /// Stops every shard cleanly and returns their results.
    pub fn stop_all(&mut self) {
        for (stop, task) in self.shards.drain(..) {
            let _ = stop.send(());
            let result = self.runtime.block_on(task).expect("shard task");
            result.expect("the shard stopped cleanly");
        }
        self.urls.clear();
    }
}

/// A shard as a child process of the real binary, for tests that kill it.
pub struct ChildShard {
    pub child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl ChildShard {
    pub fn spawn(args: &[String], env: &[(&str, &str)], log: &Path) -> ChildShard {
        let port = free_port();
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_consumer"));
        command
            .args(args)
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "info")
            // Plain text in the log file, searchable by the tests.
            .env("NO_COLOR", "1")
            .env_remove(consumer::faults::ENV_FAIL_AT)
            .env_remove(consumer::faults::ENV_ABORT_EVERY)
            .env_remove(consumer::faults::ENV_MUTANT)
            .env_remove(consumer::faults::ENV_HANG_IN)
            .env_remove(consumer::faults::ENV_STALL_AT)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        for (name, value) in env {
            command.env(name, value);
        }
        ChildShard {
            child: command.spawn().expect("spawn the consumer binary"),
            url: format!("http://127.0.0.1:{port}"),
            log: log.to_owned(),
        }
    }

    pub fn wait_ready(&mut self) -> Duration {
        let started = Instant::now();
        wait_until("the child shard to be ready", || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the shard exited ({status}) before it was ready:\n{}",
                    self.log_text()
                );
            }
            is_ready(&self.url)
        });
        started.elapsed()
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), signal)
            .expect("signal the shard");
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the shard did not exit in time");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status (expected: success).
    pub fn terminate(mut self) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.wait_exit()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildShard {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- shard log {} ----\n{}\n---- end of shard log ----",
                self.log.display(),
                tail(&self.log_text(), 80)
            );
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------- checks

/// Checks what the shards at `urls` serve once the run is quiescent: each
/// decided id decided by exactly one shard, each accepted one credited by
/// exactly one, balances equal to the model, sum exactly zero.
pub fn verify_served(model: &Model, urls: &[String]) {
    // Balances converge before the last shortages are proven: a transfer
    // held for funds changes no balance until it is decided.
    let decided_somewhere = |id: &TransferId| {
        urls.iter().any(|url| {
            get_json::<TransferView>(&format!("{url}/v1/transfers/{id}"))
                .decision()
                .is_some()
        })
    };
    let mut undecided: Vec<TransferId> = model.decisions.keys().copied().collect();
    wait_until("every transfer decided", || {
        undecided.retain(|id| !decided_somewhere(id));
        undecided.is_empty()
    });
    for (id, decision) in &model.decisions {
        let statuses: Vec<TransferView> = urls
            .iter()
            .map(|url| get_json(&format!("{url}/v1/transfers/{id}")))
            .collect();
        let deciders: Vec<Decision> = statuses.iter().filter_map(TransferView::decision).collect();
        assert_eq!(deciders, vec![*decision], "decision of {id}");
        let applied = statuses.iter().filter(|s| s.credited).count();
        let expected = usize::from(*decision == Decision::Accepted);
        assert_eq!(applied, expected, "credit applications of {id}");
    }
    let served = served_balances(urls);
    assert_eq!(served, model.balances, "served balances against the model");
    assert_eq!(served.values().sum::<i128>(), 0, "conservation");
    let sum: Decimal = urls
        .iter()
        .map(|url| {
            let sum = get_json::<StatsView>(&format!("{url}/v1/stats")).sum;
            sum.parse::<Decimal>().expect("a decimal sum")
        })
        .sum();
    assert_eq!(sum, Decimal::ZERO, "sum over the shards' stats");
}

/// Checks the topics once the shards have stopped (so nothing more can
/// arrive): exactly one outcome per input record, each the expected one;
/// exactly one credit per accepted transfer; the fold of the outcomes equals
/// the model's balances.
pub fn verify_topics(topics: &Topics, inputs_count: usize, model: &Model) {
    let mut input_reader = topics.reader(&topics.transfers);
    let mut inputs = input_reader.read_at_least(inputs_count).to_vec();
    assert_eq!(inputs.len(), inputs_count, "input records in the topic");
    inputs.sort_by_key(|r| (r.partition, r.offset));

    let mut results = topics.reader(&topics.results);
    let outcomes = outcomes_of(results.read_at_least(inputs_count));
    let mut by_position: BTreeMap<(i32, i64), &Outcome> = BTreeMap::new();
    for outcome in &outcomes {
        assert!(
            by_position
                .insert((outcome.partition, outcome.offset), outcome)
                .is_none(),
            "two outcomes for input {}@{}",
            outcome.partition,
            outcome.offset
        );
    }
    let positions: BTreeSet<(i32, i64)> = inputs.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(
        by_position.keys().copied().collect::<BTreeSet<_>>(),
        positions,
        "outcomes must match the input records one to one"
    );

    // The first record of an id carries its decision, later ones are
    // duplicates; undecodable records are rejected with the decoder's reason.
    let mut seen = BTreeSet::new();
    for input in &inputs {
        let outcome = by_position[&(input.partition, input.offset)];
        let expected = match input.payload.as_deref().map(wire::decode_transfer) {
            None => OutcomeKind::Rejected(RejectReason::Malformed),
            Some(Ok(transfer)) if !seen.insert(transfer.id) => OutcomeKind::Duplicate,
            Some(Ok(transfer)) => model.decisions[&transfer.id].into(),
            Some(Err(error)) => OutcomeKind::Rejected(error.reason),
        };
        assert_eq!(
            outcome.kind, expected,
            "outcome of input {}@{}",
            input.partition, input.offset
        );
    }

    let accepted: BTreeSet<TransferId> = model
        .decisions
        .iter()
        .filter(|(_, d)| **d == Decision::Accepted)
        .map(|(id, _)| *id)
        .collect();
    // The shards' marks share the topic with the credits.
    let credit_of = |record: &Record| match wire::decode_credits_record(
        record.payload.as_deref().unwrap_or_default(),
    ) {
        Ok(CreditsRecord::Credit(credit)) => Some(credit),
        Ok(CreditsRecord::Mark(_)) => None,
        Err(error) => panic!("neither a credit nor a mark: {error}"),
    };
    let mut credits = topics.reader(&topics.credits);
    credits.read_until("a credit per accepted transfer", |reader| {
        reader.records.iter().filter_map(credit_of).count() >= accepted.len()
    });
    let mut emitted: BTreeMap<TransferId, usize> = BTreeMap::new();
    for credit in credits.drain().iter().filter_map(credit_of) {
        *emitted.entry(credit.transfer_id).or_default() += 1;
    }
    assert_eq!(
        emitted.keys().copied().collect::<BTreeSet<_>>(),
        accepted,
        "credits emitted for exactly the accepted transfers"
    );
    assert!(emitted.values().all(|n| *n == 1), "a credit emitted twice");

    let mut folded: BTreeMap<String, i128> = BTreeMap::new();
    for outcome in &outcomes {
        if outcome.kind == OutcomeKind::Accepted {
            let transfer = outcome
                .transfer
                .as_ref()
                .expect("an accepted outcome has its transfer");
            let amount = i128::from(transfer.amount.minor());
            *folded.entry(transfer.from.to_string()).or_default() -= amount;
            *folded.entry(transfer.to.to_string()).or_default() += amount;
        }
    }
    assert_eq!(
        folded, model.balances,
        "the fold of the outcomes against the model"
    );
}

/// The temporary directory of a test, kept when the test fails so that
/// shard logs and sled directories can be read.
pub fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("consumer-test-")
        .tempdir()
        .expect("temp dir")
}
