//! One broker per test process, shared by all its tests.

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::broker::{Broker, BrokerOptions};
use crate::process::KEEP_MARKER;

/// Names an existing broker; when set, the harness starts nothing.
pub const BOOTSTRAP_ENV: &str = "KAFKA_BOOTSTRAP_SERVERS";

/// How many lines of each log a failing test prints.
const FAILURE_LOG_LINES: usize = 60;

/// The address of the broker this test process uses: `KAFKA_BOOTSTRAP_SERVERS`
/// when set, otherwise a local broker started on first use (with default
/// [`BrokerOptions`]) and shared by every test of the process.
///
/// The local broker is killed and its directory deleted once the process
/// exits (a watchdog does it: statics are never dropped). From then on, any
/// panic (a failing test) prints the broker log's path and last lines, and
/// keeps the directory so that the log can be read afterwards.
///
/// # Panics
///
/// If the broker cannot be started; the message says why (missing `java` or
/// `mvn` and what to install, or the broker log's tail). Every later call in
/// the process panics with the same message instead of trying again.
pub fn shared_bootstrap() -> String {
    /// The `Broker` is held only to keep it alive; `Err` is the rendered
    /// start error, replayed to every test.
    static SHARED: OnceLock<Result<(String, Option<Broker>), String>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        if let Some(bootstrap) = std::env::var(BOOTSTRAP_ENV)
            .ok()
            .filter(|value| !value.trim().is_empty())
        {
            return Ok((bootstrap, None));
        }
        match Broker::start(BrokerOptions::default()) {
            Ok(broker) => {
                broker.print_log_on_panic();
                Ok((broker.bootstrap_servers().to_owned(), Some(broker)))
            }
            Err(error) => Err(format!(
                "could not start the local Kafka broker for the tests \
                 (set {BOOTSTRAP_ENV} to use an existing one): {error:?}"
            )),
        }
    });
    match shared {
        Ok((bootstrap, _)) => bootstrap.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// Installs a panic hook, after the existing one, that prints the tail of
/// each `(label, path)` log and writes the keep marker into `dir` (so that
/// the watchdogs leave a temporary directory for the logs to be read). A
/// hook rather than a guard in each test: it covers every assertion of
/// every test with no code in the tests. Printed from the panicking thread,
/// so `cargo test` shows it with the failing test's output.
pub(crate) fn print_logs_on_panic(dir: PathBuf, logs: Vec<(String, PathBuf)>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        // Best effort: a hook must not fail, and the tails are printed anyway.
        let kept = fs::write(dir.join(KEEP_MARKER), b"").is_ok();
        for (label, log_path) in &logs {
            eprintln!(
                "---- log of {label}: {}{} (last {FAILURE_LOG_LINES} lines) ----\n{}\n---- end of the log of {label} ----",
                log_path.display(),
                if kept { ", kept after exit" } else { "" },
                crate::process::tail_file(log_path, FAILURE_LOG_LINES),
            );
        }
    }));
}
