//! The whole pipeline on one machine, as child processes: a producer and N
//! consumer shards against one broker. `ledger demo`, the chaos test and
//! the benchmarks drive it; it starts, kills (SIGKILL, like a crash or a
//! deleted pod), restarts and stops the processes, and reads the shards'
//! state over their HTTP API.
//!
//! Every child is killed when the `Pipeline` is dropped, so nothing is left
//! running behind a failed test or an interrupted demo.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::audit::{self, AuditError, AuditInput, AuditReport, BalanceSource, Topics};
use ledger::api::StatsView;
use ledger::kafka::{self, TopicSpec};
use ledger::names;
use ledger_core::machine::Rules;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(
        "the {name} binary was not found next to {dir}: build the workspace first \
         (`cargo build --workspace`, or `--release`)"
    )]
    MissingBinary { name: &'static str, dir: PathBuf },
    #[error("could not start {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not happen within {timeout:?}{detail}")]
    Timeout {
        what: String,
        timeout: Duration,
        detail: String,
    },
    #[error("{what} exited early with {status}; its log, {log}, ends with:\n{tail}")]
    Exited {
        what: String,
        status: ExitStatus,
        log: PathBuf,
        /// The log's last lines: the log itself may live in a directory
        /// that is gone by the time anyone reads the error.
        tail: String,
    },
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The broker named by `KAFKA_BOOTSTRAP_SERVERS`, if it is set and not
/// blank.
pub fn external_bootstrap() -> Option<String> {
    std::env::var(kafka::ENV_BOOTSTRAP)
        .ok()
        .filter(|bootstrap| !bootstrap.trim().is_empty())
}

/// The broker of a run: the one named by `KAFKA_BOOTSTRAP_SERVERS`, or a
/// local one (the harness's) that stops when the returned handle drops.
pub fn broker() -> Result<(String, Option<harness::Broker>), harness::HarnessError> {
    match external_bootstrap() {
        Some(bootstrap) => Ok((bootstrap, None)),
        None => {
            eprintln!(
                "starting a local Kafka broker (the first run fetches its jars with Maven)..."
            );
            let broker = harness::Broker::start(harness::BrokerOptions::default())?;
            Ok((broker.bootstrap_servers().to_owned(), Some(broker)))
        }
    }
}

/// The producer and consumer executables.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub producer: PathBuf,
    pub consumer: PathBuf,
}

impl Binaries {
    /// Finds the binaries next to the running executable: installed side by
    /// side, or in cargo's target directory (test executables run from its
    /// `deps/` subdirectory, one level below).
    pub fn locate() -> Result<Binaries, PipelineError> {
        let exe = std::env::current_exe()?;
        let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let find = |name: &'static str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(PipelineError::MissingBinary {
                    name,
                    dir: dir.clone(),
                })
            }
        };
        Ok(Binaries {
            producer: find("producer")?,
            consumer: find("consumer")?,
        })
    }
}

/// The production topic names behind a prefix: tests and demos share a
/// broker with other runs.
pub fn prefixed_topics(prefix: &str) -> Topics {
    Topics {
        transactions: format!("{prefix}{}", names::TOPIC_TRANSFERS),
        credits: format!("{prefix}{}", names::TOPIC_CREDITS),
        results: format!("{prefix}{}", names::TOPIC_RESULTS),
        dead_letters: format!("{prefix}{}", names::TOPIC_DEAD_LETTERS),
    }
}

/// How to run the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub bootstrap_servers: String,
    pub topics: Topics,
    pub partitions: i32,
    pub shards: u32,
    /// Sled directories and process logs go here.
    pub work_dir: PathBuf,
    pub group_id: String,
    /// Prefix of the shards' transactional ids (`{prefix}-{shard}`).
    pub transactional_id_prefix: String,
    /// The producer's transactional id, the same for every incarnation so a
    /// restarted producer fences its predecessor.
    pub producer_transactional_id: String,
    /// Milliseconds per consumer transaction.
    pub batch_ms: u64,
    /// Extra environment of every shard (failure injection in tests).
    pub shard_env: Vec<(String, String)>,
    /// The consumer group assigns the shards' partitions
    /// (`--assignment group`), so that shards can be retired and added while
    /// the pipeline runs; otherwise shard i owns `p mod shards == i`.
    pub group_assignment: bool,
}

impl PipelineConfig {
    /// A run whose topics, group and transactional ids all start with
    /// `prefix`, so that runs sharing a broker stay apart: batches of
    /// 100 ms, no extra shard environment, ordinal assignment. Set other
    /// fields with struct update syntax.
    pub fn prefixed(
        bootstrap_servers: String,
        prefix: &str,
        partitions: i32,
        shards: u32,
        work_dir: PathBuf,
    ) -> Self {
        PipelineConfig {
            bootstrap_servers,
            topics: prefixed_topics(prefix),
            partitions,
            shards,
            work_dir,
            group_id: format!("{prefix}ledger"),
            transactional_id_prefix: format!("{prefix}ledger-consumer"),
            producer_transactional_id: format!("{prefix}producer"),
            batch_ms: 100,
            shard_env: Vec::new(),
            group_assignment: false,
        }
    }
}

/// With group assignment, how long a shard may go without polling before
/// the group gives its partitions away, and its session: short, so that a
/// retired shard's partitions move on within seconds.
const GROUP_MAX_POLL_INTERVAL_MS: &str = "10000";

/// One run of the producer.
#[derive(Debug, Clone)]
pub struct ProducerRun {
    pub count: u64,
    /// Records per second; 0 is as fast as possible.
    pub rate: u64,
    pub seed: u64,
    pub accounts: u32,
    pub batch_ms: u64,
}

struct ShardProcess {
    child: Option<Child>,
    http_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    starts: u32,
    /// Stopped on purpose and left stopped (a scale-in), until started again.
    retired: bool,
}

/// Counts of what the pipeline went through.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disruptions {
    pub shard_kills: u32,
    /// Shards whose sled directory was deleted after they were killed.
    pub data_losses: u32,
    pub shard_starts: u32,
    pub producer_kills: u32,
    pub producer_starts: u32,
    /// Shards stopped and left stopped while the others ran, and shards
    /// started again after that (group assignment).
    pub scale_ins: u32,
    pub scale_outs: u32,
}

/// A running pipeline. Dropping it kills every child.
pub struct Pipeline {
    config: PipelineConfig,
    binaries: Binaries,
    shards: Vec<ShardProcess>,
    producer: Option<Child>,
    producer_log: PathBuf,
    http: reqwest::blocking::Client,
    /// Reads high watermarks for the lag figure.
    watermarks: BaseConsumer,
    pub disruptions: Disruptions,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("config", &self.config)
            .field("disruptions", &self.disruptions)
            .finish_non_exhaustive()
    }
}

fn log_file(path: &Path) -> Result<(File, File), PipelineError> {
    let file = File::options().create(true).append(true).open(path)?;
    Ok((file.try_clone()?, file))
}

/// Sends SIGKILL and reaps the child.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Asks the child to stop with SIGTERM, waits up to `grace`, then kills it.
fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let pid = child.id().to_string();
    // The child may have exited already; then there is nothing to say.
    let _ = Command::new("kill")
        .args(["-TERM", &pid])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(child);
    None
}

impl Pipeline {
    /// Creates the topics and prepares (but does not start) the processes.
    pub fn new(config: PipelineConfig, binaries: Binaries) -> Result<Pipeline, PipelineError> {
        std::fs::create_dir_all(&config.work_dir)?;
        let mut shards = Vec::new();
        for shard in 0..config.shards {
            shards.push(ShardProcess {
                child: None,
                http_port: harness::ports::free_local_port()?,
                data_dir: config.work_dir.join(format!("shard-{shard}")),
                log: config.work_dir.join(format!("shard-{shard}.log")),
                starts: 0,
                retired: false,
            });
        }
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|error| PipelineError::Io(std::io::Error::other(error)))?;
        let watermarks = kafka::client_config(&config.bootstrap_servers).create()?;
        Ok(Pipeline {
            watermarks,
            producer_log: config.work_dir.join("producer.log"),
            config,
            binaries,
            shards,
            producer: None,
            http,
            disruptions: Disruptions::default(),
        })
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    pub fn shard_urls(&self) -> Vec<String> {
        self.shards
            .iter()
            .map(|shard| format!("http://127.0.0.1:{}", shard.http_port))
            .collect()
    }

    /// The shards not retired: those that serve the ledger between them.
    pub fn active_shards(&self) -> Vec<usize> {
        (0..self.shards.len())
            .filter(|index| !self.shards[*index].retired)
            .collect()
    }

    pub fn shard_data_dirs(&self) -> Vec<PathBuf> {
        self.shards.iter().map(|s| s.data_dir.clone()).collect()
    }

    pub fn shard_log(&self, shard: usize) -> &Path {
        &self.shards[shard].log
    }

    pub fn producer_log(&self) -> &Path {
        &self.producer_log
    }

    /// The shards' changelog: named like the other topics, behind the same
    /// prefix as `transactions`.
    pub fn changelog_topic(&self) -> String {
        let transactions = &self.config.topics.transactions;
        match transactions.strip_suffix(names::TOPIC_TRANSFERS) {
            Some(prefix) => format!("{prefix}{}", names::TOPIC_CHANGELOG),
            None => format!("{transactions}-changelog"),
        }
    }

    /// Creates the five topics if they do not exist.
    pub fn create_topics(&self) -> Result<(), PipelineError> {
        let topics = &self.config.topics;
        let partitions = self.config.partitions;
        let changelog = self.changelog_topic();
        let specs = [
            (&topics.transactions, true, false),
            (&topics.credits, true, false),
            (&topics.results, false, false),
            (&topics.dead_letters, false, false),
            (&changelog, true, true),
        ]
        .map(|(name, exact, compacted)| TopicSpec {
            name,
            partitions,
            exact,
            compacted,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime
            .block_on(kafka::ensure_topics(
                &kafka::client_config(&self.config.bootstrap_servers),
                &specs,
                Duration::from_secs(60),
            ))
            .map_err(|error| PipelineError::Io(std::io::Error::other(error)))
    }

    /// Starts shard `index` (again), with the same sled directory and port.
    pub fn start_shard(&mut self, index: usize) -> Result<(), PipelineError> {
        self.start_shard_with(index, &[])
    }

    /// [`Pipeline::start_shard`] with extra environment for this incarnation
    /// only, e.g. a failure to inject.
    pub fn start_shard_with(
        &mut self,
        index: usize,
        env: &[(&str, &str)],
    ) -> Result<(), PipelineError> {
        let changelog = self.changelog_topic();
        let config = &self.config;
        let shard = &mut self.shards[index];
        if let Some(child) = shard.child.as_mut() {
            kill(child);
        }
        let (assignment, max_poll_interval) = if config.group_assignment {
            ("group", GROUP_MAX_POLL_INTERVAL_MS)
        } else {
            ("ordinal", "300000")
        };
        let (stdout, stderr) = log_file(&shard.log)?;
        let child = Command::new(&self.binaries.consumer)
            .env(kafka::ENV_BOOTSTRAP, &config.bootstrap_servers)
            .env(names::TXLEDGER_TRANSFERS_TOPIC, &config.topics.transactions)
            .env(names::TXLEDGER_CREDITS_TOPIC, &config.topics.credits)
            .env(names::TXLEDGER_RESULTS_TOPIC, &config.topics.results)
            .env(names::TXLEDGER_DLQ_TOPIC, &config.topics.dead_letters)
            .env(names::TXLEDGER_CHANGELOG_TOPIC, &changelog)
            .env(names::TXLEDGER_PARTITIONS, config.partitions.to_string())
            .env(names::TXLEDGER_SHARD, index.to_string())
            .env(names::TXLEDGER_SHARDS, config.shards.to_string())
            .env(names::TXLEDGER_DATA_DIR, &shard.data_dir)
            .env(names::TXLEDGER_GROUP_ID, &config.group_id)
            .env(
                names::TXLEDGER_TRANSACTIONAL_ID_PREFIX,
                &config.transactional_id_prefix,
            )
            .env(
                names::TXLEDGER_HTTP_ADDR,
                format!("127.0.0.1:{}", shard.http_port),
            )
            .env(names::TXLEDGER_BATCH_MS, config.batch_ms.to_string())
            .env(names::TXLEDGER_ASSIGNMENT, assignment)
            .env(names::TXLEDGER_MAX_POLL_INTERVAL_MS, max_poll_interval)
            .envs(config.shard_env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|source| PipelineError::Spawn {
                what: format!("shard {index}"),
                source,
            })?;
        shard.child = Some(child);
        shard.starts += 1;
        if shard.retired {
            shard.retired = false;
            self.disruptions.scale_outs += 1;
        }
        self.disruptions.shard_starts += 1;
        Ok(())
    }

    /// Stops shard `index` with SIGTERM and leaves it stopped, as a scale-in
    /// does: with group assignment the others take its partitions.
    /// `start_shard` brings it back (a scale-out). `None`: it had to be
    /// killed.
    pub fn retire_shard(&mut self, index: usize) -> Option<ExitStatus> {
        let shard = &mut self.shards[index];
        shard.retired = true;
        self.disruptions.scale_ins += 1;
        shard
            .child
            .take()
            .and_then(|mut child| terminate(&mut child, Duration::from_secs(30)))
    }

    pub fn start_shards(&mut self) -> Result<(), PipelineError> {
        for index in 0..self.shards.len() {
            self.start_shard(index)?;
        }
        Ok(())
    }

    /// SIGKILL: the shard dies wherever it is in the protocol.
    pub fn kill_shard(&mut self, index: usize) {
        if let Some(mut child) = self.shards[index].child.take() {
            kill(&mut child);
            self.disruptions.shard_kills += 1;
        }
    }

    /// Kills shard `index` and deletes its sled directory, as when its
    /// volume is lost: its next start restores it from the changelog.
    pub fn lose_shard_data(&mut self, index: usize) -> Result<(), PipelineError> {
        self.kill_shard(index);
        match std::fs::remove_dir_all(&self.shards[index].data_dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
            _ => {}
        }
        self.disruptions.data_losses += 1;
        Ok(())
    }

    /// Whether shard `index` answers `/readyz` (recovery done).
    pub fn shard_ready(&self, index: usize) -> bool {
        let url = format!("{}/readyz", self.shard_urls()[index]);
        self.http
            .get(url)
            .send()
            .is_ok_and(|response| response.status().is_success())
    }

    /// The process status of a shard that exited on its own, if it did.
    pub fn shard_exit(&mut self, index: usize) -> Option<ExitStatus> {
        self.shards[index]
            .child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// An error for the first shard that exited on its own (one the
    /// pipeline killed does not count), with the end of its log.
    pub fn check_shards(&mut self) -> Result<(), PipelineError> {
        for index in 0..self.shards.len() {
            if let Some(status) = self.shard_exit(index) {
                let log = self.shards[index].log.clone();
                let tail = std::fs::read_to_string(&log)
                    .map(|text| harness::testkit::tail(&text, 40))
                    .unwrap_or_else(|error| format!("(unreadable: {error})"));
                return Err(PipelineError::Exited {
                    what: format!("shard {index}"),
                    status,
                    log,
                    tail,
                });
            }
        }
        Ok(())
    }

    /// Waits until every shard is ready; a shard that exits meanwhile is an
    /// error with the end of its log.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), PipelineError> {
        let deadline = Instant::now() + timeout;
        for index in self.active_shards() {
            loop {
                // Exits first: whatever answers on a dead shard's port is
                // not that shard.
                self.check_shards()?;
                if self.shard_ready(index) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(PipelineError::Timeout {
                        what: format!("shard {index} ready"),
                        timeout,
                        detail: format!("; its log: {}", self.shards[index].log.display()),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Starts a producer incarnation (killing a previous one if any).
    pub fn start_producer(&mut self, run: &ProducerRun) -> Result<(), PipelineError> {
        if let Some(mut child) = self.producer.take() {
            kill(&mut child);
        }
        let (stdout, stderr) = log_file(&self.producer_log)?;
        let config = &self.config;
        let child = Command::new(&self.binaries.producer)
            .env(kafka::ENV_BOOTSTRAP, &config.bootstrap_servers)
            .env(names::TXLEDGER_TRANSFERS_TOPIC, &config.topics.transactions)
            .env(names::TXLEDGER_PARTITIONS, config.partitions.to_string())
            .env(
                names::TXLEDGER_PRODUCER_TRANSACTIONAL_ID,
                &config.producer_transactional_id,
            )
            .env(names::TXLEDGER_PRODUCER_COUNT, run.count.to_string())
            .env(names::TXLEDGER_PRODUCER_RATE, run.rate.to_string())
            .env(names::TXLEDGER_PRODUCER_SEED, run.seed.to_string())
            .env(names::TXLEDGER_PRODUCER_ACCOUNTS, run.accounts.to_string())
            .env(names::TXLEDGER_PRODUCER_BATCH_MS, run.batch_ms.to_string())
            .env(names::TXLEDGER_PRODUCER_PROGRESS_SECS, "5")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|source| PipelineError::Spawn {
                what: "the producer".to_owned(),
                source,
            })?;
        self.producer = Some(child);
        self.disruptions.producer_starts += 1;
        Ok(())
    }

    /// SIGKILL the producer, mid-transaction if it is sending.
    pub fn kill_producer(&mut self) {
        if let Some(mut child) = self.producer.take() {
            kill(&mut child);
            self.disruptions.producer_kills += 1;
        }
    }

    /// Asks the producer to stop (SIGTERM: it finishes or aborts its open
    /// transaction) and waits for it.
    pub fn stop_producer(&mut self) -> Option<ExitStatus> {
        let mut child = self.producer.take()?;
        terminate(&mut child, Duration::from_secs(60))
    }

    /// `Some(status)` once the current producer has exited.
    pub fn producer_exit(&mut self) -> Option<ExitStatus> {
        self.producer
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Each shard's `/v1/stats`, `None` where the shard does not answer
    /// (or is retired).
    pub fn stats(&self) -> Vec<Option<StatsView>> {
        self.shard_urls()
            .iter()
            .zip(&self.shards)
            .map(|(url, shard)| {
                if shard.retired {
                    return None;
                }
                self.http
                    .get(format!("{url}/v1/stats"))
                    .send()
                    .ok()
                    .filter(|response| response.status().is_success())
                    .and_then(|response| response.json().ok())
            })
            .collect()
    }

    /// Sums a counter family over every shard's `/metrics`, by label set.
    pub fn metric_totals(&self, name: &str) -> BTreeMap<String, f64> {
        let mut totals = BTreeMap::new();
        for url in self.shard_urls() {
            let Ok(text) = self
                .http
                .get(format!("{url}/metrics"))
                .send()
                .and_then(|response| response.text())
            else {
                continue;
            };
            for (labels, value) in parse_metric(&text, name) {
                *totals.entry(labels).or_insert(0.0) += value;
            }
        }
        totals
    }

    /// Whether every shard has consumed every committed record of its
    /// partitions: a read_committed reader placed at each shard's next
    /// offsets finds nothing more before the end of every partition.
    pub fn caught_up(&self) -> Result<bool, PipelineError> {
        let active = self.active_shards();
        let stats: Vec<Option<StatsView>> = self
            .stats()
            .into_iter()
            .enumerate()
            .filter(|(index, _)| active.contains(index))
            .map(|(_, view)| view)
            .collect();
        if stats.iter().any(Option::is_none) {
            return Ok(false);
        }
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for view in stats.into_iter().flatten() {
            for offset in view.offsets {
                let topic = self.config.topics.of(offset.source).to_owned();
                next.insert((topic, offset.partition), offset.next_offset);
            }
        }
        let mut config = kafka::read_committed_consumer_config(
            &self.config.bootstrap_servers,
            &format!("{}-probe", self.config.group_id),
        );
        config.set("enable.partition.eof", "true");
        let probe: kafka::EofReader = config.create_with_context(kafka::EofReaderContext)?;
        let mut assignment = TopicPartitionList::new();
        for topic in [
            &self.config.topics.transactions,
            &self.config.topics.credits,
        ] {
            for partition in 0..self.config.partitions {
                let offset = next
                    .get(&(topic.clone(), partition))
                    .map_or(Offset::Beginning, |o| Offset::Offset(*o));
                assignment.add_partition_offset(topic, partition, offset)?;
            }
        }
        probe.assign(&assignment)?;
        let mut at_end = 0;
        let total = assignment.count();
        let deadline = Instant::now() + Duration::from_secs(30);
        while at_end < total {
            if Instant::now() > deadline {
                return Ok(false);
            }
            match probe.poll(Duration::from_millis(500)) {
                Some(Ok(message)) => {
                    // A committed record past a shard's offsets: not yet
                    // consumed (or not yet committed by the shard).
                    let _ = message.offset();
                    return Ok(false);
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => at_end += 1,
                Some(Err(error)) => return Err(error.into()),
                None => {}
            }
        }
        Ok(true)
    }

    /// Waits until the shards have consumed everything committed so far.
    pub fn wait_caught_up(&mut self, timeout: Duration) -> Result<(), PipelineError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_shards()?;
            if self.caught_up()? {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(PipelineError::Timeout {
                    what: "the shards catching up".to_owned(),
                    timeout,
                    detail: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Records not yet consumed, summed over the input partitions: high
    /// watermark minus the shards' committed next offsets. Approximate:
    /// transaction markers and aborted records count too.
    pub fn lag(&self) -> Option<i64> {
        let mut lag = 0;
        for (view, shard) in self.stats().into_iter().zip(&self.shards) {
            if shard.retired {
                continue;
            }
            for offset in view?.offsets {
                let topic = self.config.topics.of(offset.source);
                let (_, high) = self
                    .watermarks
                    .fetch_watermarks(topic, offset.partition, Duration::from_secs(2))
                    .ok()?;
                lag += (high - offset.next_offset).max(0);
            }
        }
        Some(lag)
    }

    /// Runs the audit over this pipeline's topics and its shards' balances
    /// (served by the running shards from their committed state).
    pub fn audit(&self) -> Result<AuditReport, AuditError> {
        let timeout = Duration::from_secs(600);
        let mut input = AuditInput::new(
            self.config.topics.clone(),
            Rules::new(self.config.partitions),
        );
        audit::read_topics(
            &self.config.bootstrap_servers,
            timeout,
            &mut input,
            &mut |_| {},
        )?;
        let urls = self.shard_urls();
        let sources: Vec<BalanceSource> = self
            .active_shards()
            .into_iter()
            .map(|index| BalanceSource::Url(urls[index].clone()))
            .collect();
        for balances in audit::fetch_all(&sources, self.config.partitions, Duration::from_secs(60))?
        {
            input.push_balances(balances);
        }
        Ok(audit::audit(&input))
    }

    /// Stops the producer and every shard with SIGTERM (clean shutdown),
    /// returning the shards' exit statuses (`None`: had to be killed).
    pub fn stop(&mut self) -> Vec<Option<ExitStatus>> {
        if let Some(mut child) = self.producer.take() {
            terminate(&mut child, Duration::from_secs(30));
        }
        self.shards
            .iter_mut()
            .map(|shard| {
                shard
                    .child
                    .take()
                    .and_then(|mut child| terminate(&mut child, Duration::from_secs(30)))
            })
            .collect()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(child) = self.producer.as_mut() {
            kill(child);
        }
        for shard in &mut self.shards {
            if let Some(child) = shard.child.as_mut() {
                kill(child);
            }
        }
    }
}

/// The samples of one metric family in Prometheus text: label set (as
/// written, `{}` when none) and value.
pub fn parse_metric(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(labelled) => {
                    let (labels, value) = labelled.split_once('}')?;
                    (format!("{{{labels}}}"), value)
                }
                None if rest.starts_with(' ') => ("{}".to_owned(), rest),
                None => return None,
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_families_parse_by_label_set() {
        let text = "# TYPE x counter\n\
                    txledger_consumer_outcomes_total{status=\"accepted\"} 12\n\
                    txledger_consumer_outcomes_total{status=\"rejected\",reason=\"malformed\"} 3\n\
                    txledger_consumer_outcomes_total_other 9\n\
                    txledger_consumer_ready 1\n";
        assert_eq!(
            parse_metric(text, "txledger_consumer_outcomes_total"),
            vec![
                ("{status=\"accepted\"}".to_owned(), 12.0),
                ("{status=\"rejected\",reason=\"malformed\"}".to_owned(), 3.0),
            ]
        );
        assert_eq!(
            parse_metric(text, "txledger_consumer_ready"),
            vec![("{}".to_owned(), 1.0)]
        );
    }
}
