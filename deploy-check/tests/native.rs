//! The real binaries, run natively against the harness broker (issue 7):
//!
//! - the consumer started exactly as the `ledger-consumer` StatefulSet starts
//!   it (the env of its ConfigMaps, its ordinal from the hostname), pointed
//!   only at the test broker, topics, directory and port;
//! - the Grafana dashboard's metric names checked against a live `/metrics`
//!   of a consumer and a producer moving records.
//!
//! The binaries are the ones `cargo test --workspace` (or `cargo build`)
//! puts next to this test executable; `cargo test -p deploy-check` alone
//! does not rebuild them, so a stale binary is reported with a note.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use deploy_check::dashboard;
use deploy_check::kube::{self, EnvSource};
use deploy_check::source::Binary;
use deploy_check::{assert_no_problems, note, repo};
use harness::testkit::free_port;
use serde_json::Value;

/// The hostname of the StatefulSet's second pod.
const POD_HOSTNAME: &str = "ledger-consumer-1";
const POD_ORDINAL: u32 = 1;
/// Bounds for a loaded two-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const METRICS_TIMEOUT: Duration = Duration::from_secs(180);
const EXIT_TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------- helpers

/// A binary of the workspace next to this test executable
/// (`target/<profile>/deps/native-...` -> `target/<profile>/<name>`).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("the test executable's directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("the profile directory");
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "the `{name}` binary is missing at {}: build it first \
         (`cargo test --workspace` or `cargo build -p {name}` builds it)",
        path.display()
    );
    warn_if_stale(name, &path);
    path
}

/// A note (not a failure: touching a file does not change it) when a source
/// file the binary is built from is newer than the binary.
fn warn_if_stale(name: &str, path: &Path) {
    let built = fs::metadata(path).and_then(|meta| meta.modified()).ok();
    let Some(built) = built else { return };
    let Some(binary) = Binary::from_name(name) else {
        return;
    };
    let newer: Vec<String> = binary
        .files()
        .into_iter()
        .filter(|file| {
            fs::metadata(file)
                .and_then(|meta| meta.modified())
                .is_ok_and(|modified: SystemTime| modified > built)
        })
        .map(|file| {
            file.strip_prefix(repo::root())
                .unwrap_or(&file)
                .display()
                .to_string()
        })
        .collect();
    if !newer.is_empty() {
        note(&format!(
            "{} may be stale: older than {} (run `cargo build -p {name}`)",
            path.display(),
            newer.join(", ")
        ));
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// Status and body, or `None` while nothing answers.
fn get(client: &reqwest::blocking::Client, url: &str) -> Option<(u16, String)> {
    let response = client.get(url).send().ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().ok()?))
}

/// A child process whose output goes to a log file; killed (and its log
/// printed, when a test fails) if still running when dropped.
struct Running {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Running {
    fn spawn(name: &str, mut command: Command, log: PathBuf) -> Running {
        let out = File::create(&log).expect("creating the log file");
        let err = out.try_clone().expect("cloning the log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {name} ({command:?}): {error}"));
        Running {
            name: name.to_owned(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails (with the log) if the process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("polling the child") {
            panic!(
                "{} exited early with {status}; its log:\n{}",
                self.name,
                self.log()
            );
        }
    }

    /// SIGTERM, then waits (bounded) for the exit.
    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM {pid} ({}) failed", self.name);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {EXIT_TIMEOUT:?} of SIGTERM; its log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    fn stop_cleanly(&mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM, not 0; its log:\n{}",
            self.name,
            self.log()
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- {} log {} ----\n{}\n---- end of {} log ----",
                self.name,
                self.log.display(),
                self.log(),
                self.name
            );
        }
    }
}

/// Polls `/readyz` until 200; fails if the process exits or the deadline
/// passes.
fn wait_ready(process: &mut Running, client: &reqwest::blocking::Client, base: &str) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        process.assert_running();
        if let Some((200, _)) = get(client, &format!("{base}/readyz")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not ready (/readyz 200) within {READY_TIMEOUT:?}",
            process.name
        );
        std::thread::sleep(POLL);
    }
}

/// The JSON log line (TXLEDGER_LOG_FORMAT=json, flattened) with this
/// message, polled for: a line logged just before readiness may not be
/// written yet.
fn log_event(process: &mut Running, message: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = process.log().lines().find_map(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .filter(|event| event["message"] == message)
        });
        if let Some(event) = found {
            return event;
        }
        process.assert_running();
        assert!(
            Instant::now() < deadline,
            "{} never logged {message:?} (as a JSON line)",
            process.name
        );
        std::thread::sleep(POLL);
    }
}

/// The numbers of a Debug-printed list such as `[1, 3, 5]`.
fn numbers(text: &str) -> Vec<i32> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .map(|part| part.parse().expect("a partition number"))
        .collect()
}

/// The series of a Prometheus text exposition: name -> label sets.
fn series(scrape: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in scrape.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = match line[end..].strip_prefix('{') {
            Some(rest) => rest.split('}').next().unwrap_or("").to_owned(),
            None => String::new(),
        };
        out.entry(line[..end].to_owned()).or_default().push(labels);
    }
    out
}

// ------------------------------------------------------------------ tests

#[test]
fn consumer_runs_natively_exactly_as_the_statefulset_would() {
    // The container of the StatefulSet and the env it receives.
    let manifests = kube::load_all();
    let workloads = kube::workloads(&manifests);
    let statefulset = workloads
        .iter()
        .find(|workload| workload.kind == "StatefulSet" && workload.name == "ledger-consumer")
        .expect("deploy/ defines the StatefulSet ledger-consumer");
    let containers = statefulset.containers();
    let container = containers
        .iter()
        .find(|container| container.name == "consumer")
        .or(containers.first())
        .expect("the StatefulSet has a container");
    let mut problems = Vec::new();
    let received = kube::container_env(
        container,
        &manifests,
        &kube::documented_secret_keys(),
        &mut problems,
    );
    assert_no_problems("the consumer container's env", &problems);
    // Secrets are optional (absent for the demo broker) and never in git.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (name, value, source) in received {
        match (source, value) {
            (EnvSource::Secret(_), _) => {}
            (_, Some(value)) => {
                env.insert(name, value);
            }
            (source, None) => panic!("{name} (from {source:?}) has no value known from git"),
        }
    }
    assert!(
        !env.contains_key("TXLEDGER_SHARD"),
        "the StatefulSet sets TXLEDGER_SHARD, so every pod would be the same shard \
         instead of taking its name from the hostname"
    );
    assert_eq!(
        env.get("TXLEDGER_ASSIGNMENT").map(String::as_str),
        Some("group"),
        "the StatefulSet's shards must take their partitions from the consumer group"
    );
    let partitions: i32 = env
        .get("TXLEDGER_PARTITIONS")
        .map_or(Ok(6), |value| value.parse())
        .expect("TXLEDGER_PARTITIONS is a number");

    // Only what must point at the test environment is overridden.
    let bootstrap = harness::shared_bootstrap();
    let transfers = harness::unique_name("native-transfers");
    let credits = harness::unique_name("native-credits");
    let prefix = harness::unique_name("native-ledger-consumer");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let overrides = [
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("TXLEDGER_TRANSFERS_TOPIC", transfers.clone()),
        ("TXLEDGER_CREDITS_TOPIC", credits.clone()),
        (
            "TXLEDGER_RESULTS_TOPIC",
            harness::unique_name("native-results"),
        ),
        ("TXLEDGER_DLQ_TOPIC", harness::unique_name("native-dlq")),
        (
            "TXLEDGER_CHANGELOG_TOPIC",
            harness::unique_name("native-changelog"),
        ),
        (
            "TXLEDGER_DATA_DIR",
            dir.path().join("sled").display().to_string(),
        ),
        ("TXLEDGER_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("TXLEDGER_TRANSACTIONAL_ID_PREFIX", prefix.clone()),
        ("TXLEDGER_GROUP_ID", harness::unique_name("native-group")),
    ];
    for (name, value) in overrides {
        env.insert(name.to_owned(), value);
    }
    harness::create_topics(
        &bootstrap,
        &[(&transfers, partitions), (&credits, partitions)],
    )
    .expect("creating the test topics");

    // The name comes from the hostname, set in a new UTS namespace.
    match Command::new("unshare")
        .args(["--uts", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(output) => assert!(
            output.status.success(),
            "`unshare --uts` fails here ({}): this test sets the consumer's hostname in a \
             new UTS namespace, which needs root or CAP_SYS_ADMIN",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) if error.kind() == ErrorKind::NotFound => panic!(
            "`unshare` is not installed: this test needs it to run the consumer under the \
             hostname {POD_HOSTNAME} (Debian/Ubuntu: apt-get install util-linux)"
        ),
        Err(error) => panic!("running unshare: {error}"),
    }
    let consumer_path = binary("consumer");
    let mut command = Command::new("unshare");
    command
        .args([
            "--uts",
            "sh",
            "-c",
            &format!("hostname {POD_HOSTNAME} && exec \"$0\""),
        ])
        .arg(&consumer_path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(&env)
        .current_dir(dir.path());
    let mut consumer = Running::spawn("consumer", command, dir.path().join("consumer.log"));

    let client = http();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&mut consumer, &client, &base);

    let (status, body) = get(&client, &format!("{base}/v1/stats")).expect("/v1/stats answers");
    assert_eq!(status, 200, "/v1/stats: {body}");
    let stats: Value = serde_json::from_str(&body).expect("/v1/stats is JSON");
    let name = format!("{prefix}-{POD_ORDINAL}");
    assert_eq!(
        stats["shard"].as_str(),
        Some(name.as_str()),
        "the shard under hostname {POD_HOSTNAME} is not named {name}: {stats}"
    );

    let ready = log_event(&mut consumer, "Shard ready.");
    assert_eq!(
        ready["shard"].as_str(),
        Some(name.as_str()),
        "the shard's name (its transactional id): {ready}"
    );
    let owned = numbers(
        ready["partitions"]
            .as_str()
            .unwrap_or_else(|| panic!("no partitions in {ready}")),
    );
    // The only member of its group: the group gives it every partition.
    let expected: Vec<i32> = (0..partitions).collect();
    assert_eq!(
        stats["partitions"],
        Value::from(expected.clone()),
        "{stats}"
    );
    assert_eq!(
        owned, expected,
        "the group's only shard must own every partition: {ready}"
    );

    consumer.stop_cleanly();
}

/// Dashboard metrics no live run can be made to export, each with why; the
/// source must still record them.
const NOT_LIVE: &[(&str, &str)] = &[(
    "txledger_consumer_errors_total",
    "counts Kafka client, store and protocol errors: no healthy run has one, and causing \
     one (breaking the broker or the disk) would test the fault, not the dashboard",
)];

#[test]
fn dashboard_metrics_are_exported_by_the_live_binaries() {
    // Every txledger_ name the dashboard's queries use.
    let queries = dashboard::queries(&dashboard::load());
    let mut wanted: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for query in &queries {
        for name in dashboard::metric_names(query) {
            let binary = if name.starts_with("txledger_consumer_") {
                "consumer"
            } else if name.starts_with("txledger_producer_") {
                "producer"
            } else {
                panic!("dashboard query {query:?} uses {name}, which no binary's prefix names")
            };
            wanted.entry(binary).or_default().insert(name);
        }
    }
    assert!(
        wanted.contains_key("consumer") && wanted.contains_key("producer"),
        "the dashboard charts no consumer or no producer metric: {wanted:?}"
    );
    let source = Binary::Consumer.facts().metrics;
    for (name, why) in NOT_LIVE {
        assert!(
            source.contains_key(*name),
            "{name} is exempt from the live check ({why}) but the consumer's source does not \
             record it"
        );
    }
    let not_live: BTreeSet<&str> = NOT_LIVE.iter().map(|(name, _)| *name).collect();
    for names in wanted.values_mut() {
        names.retain(|name| !not_live.contains(name.as_str()));
    }

    let bootstrap = harness::shared_bootstrap();
    let transfers = harness::unique_name("metrics-transfers");
    let credits = harness::unique_name("metrics-credits");
    harness::create_topics(&bootstrap, &[(&transfers, 6), (&credits, 6)])
        .expect("creating the test topics");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = std::env::var_os("PATH").unwrap_or_default();

    let consumer_port = free_port();
    let mut command = Command::new(binary("consumer"));
    command
        .env_clear()
        .env("PATH", &path)
        .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
        .env("TXLEDGER_TRANSFERS_TOPIC", &transfers)
        .env("TXLEDGER_CREDITS_TOPIC", &credits)
        .env(
            "TXLEDGER_RESULTS_TOPIC",
            harness::unique_name("metrics-results"),
        )
        .env("TXLEDGER_DLQ_TOPIC", harness::unique_name("metrics-dlq"))
        .env(
            "TXLEDGER_CHANGELOG_TOPIC",
            harness::unique_name("metrics-changelog"),
        )
        .env("TXLEDGER_PARTITIONS", "6")
        .env("TXLEDGER_SHARD", "0")
        .env("TXLEDGER_SHARDS", "1")
        .env("TXLEDGER_DATA_DIR", dir.path().join("sled"))
        .env("TXLEDGER_HTTP_ADDR", format!("127.0.0.1:{consumer_port}"))
        .env(
            "TXLEDGER_TRANSACTIONAL_ID_PREFIX",
            harness::unique_name("metrics-consumer"),
        )
        .env("TXLEDGER_GROUP_ID", harness::unique_name("metrics-group"))
        // Every second transaction aborted on purpose (a real failure switch,
        // consumer/src/faults.rs): the transactions panel's `result` split
        // then has its "aborted" series.
        .env("TXLEDGER_ABORT_EVERY", "2")
        .current_dir(dir.path());
    let mut consumer = Running::spawn("consumer", command, dir.path().join("consumer.log"));
    let client = http();
    let consumer_base = format!("http://127.0.0.1:{consumer_port}");
    wait_ready(&mut consumer, &client, &consumer_base);

    // Endless at a modest rate, so it is still running when scraped.
    let producer_port = free_port();
    let mut command = Command::new(binary("producer"));
    command
        .env_clear()
        .env("PATH", &path)
        .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
        .env("TXLEDGER_TRANSFERS_TOPIC", &transfers)
        .env("TXLEDGER_PARTITIONS", "6")
        .env("TXLEDGER_PRODUCER_COUNT", "0")
        .env("TXLEDGER_PRODUCER_RATE", "200")
        .env(
            "TXLEDGER_PRODUCER_METRICS_ADDR",
            format!("127.0.0.1:{producer_port}"),
        )
        .env(
            "TXLEDGER_PRODUCER_TRANSACTIONAL_ID",
            harness::unique_name("metrics-producer"),
        )
        .current_dir(dir.path());
    let mut producer = Running::spawn("producer", command, dir.path().join("producer.log"));
    let producer_base = format!("http://127.0.0.1:{producer_port}");

    // Scrape both until every wanted series is there (bounded).
    let aborted = "txledger_consumer_transactions_total";
    let deadline = Instant::now() + METRICS_TIMEOUT;
    let (consumer_series, producer_series) = loop {
        consumer.assert_running();
        producer.assert_running();
        let scrape = |base: &str| {
            get(&client, &format!("{base}/metrics"))
                .filter(|(status, _)| *status == 200)
                .map(|(_, body)| series(&body))
                .unwrap_or_default()
        };
        let consumer_series = scrape(&consumer_base);
        let producer_series = scrape(&producer_base);
        let complete = wanted["consumer"]
            .iter()
            .all(|name| consumer_series.contains_key(name))
            && wanted["producer"]
                .iter()
                .all(|name| producer_series.contains_key(name))
            && consumer_series
                .get(aborted)
                .is_some_and(|labels| labels.iter().any(|l| l.contains("result=\"aborted\"")));
        if complete || Instant::now() >= deadline {
            break (consumer_series, producer_series);
        }
        std::thread::sleep(Duration::from_millis(500));
    };

    let mut problems = Vec::new();
    for (binary, live) in [
        ("consumer", &consumer_series),
        ("producer", &producer_series),
    ] {
        for name in &wanted[binary] {
            if !live.contains_key(name) {
                problems.push(format!(
                    "{name}: charted by the dashboard, absent from the live {binary}'s /metrics \
                     after {METRICS_TIMEOUT:?} (it exports: {:?})",
                    live.keys().collect::<Vec<_>>()
                ));
            }
        }
    }
    if !consumer_series
        .get(aborted)
        .is_some_and(|labels| labels.iter().any(|l| l.contains("result=\"aborted\"")))
    {
        problems.push(format!(
            "{aborted}{{result=\"aborted\"}} never appeared with TXLEDGER_ABORT_EVERY=2: {:?}",
            consumer_series.get(aborted)
        ));
    }
    assert_no_problems("the dashboard's metrics, live", &problems);

    producer.stop_cleanly();
    consumer.stop_cleanly();
}

#[test]
fn scrape_and_query_parsing() {
    let scrape = "# TYPE a counter\na_total{result=\"aborted\"} 1\nb_bucket{le=\"0.1\"} 2\nc 3\n";
    let parsed = series(scrape);
    assert_eq!(
        parsed.keys().collect::<Vec<_>>(),
        ["a_total", "b_bucket", "c"]
    );
    assert_eq!(parsed["a_total"], ["result=\"aborted\""]);
    assert_eq!(numbers("[1, 3, 5]"), [1, 3, 5]);
}
