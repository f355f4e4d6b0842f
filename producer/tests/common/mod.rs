//! Helpers of the producer's integration tests: reading a topic under either
//! isolation level, and running the `producer` binary with a bound.

// Each test crate that includes this module uses only part of it.
#![allow(dead_code)]

use std::io;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use harness::testkit::{Isolation, TopicReader};
use ledger_core::domain::Transfer;
use rustix::process::{kill_process, Pid, Signal};

/// Partitions of every test topic.
pub const PARTITIONS: i32 = 3;

/// One record as read back.
#[derive(Debug, Clone)]
pub struct Read {
    pub key: Vec<u8>,
    pub partition: i32,
    pub transfer: Transfer,
}

/// When [`read`] may stop.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// At least this many records read, whether or not more follow.
    AtLeast(usize),
    /// At least this many records read and every partition at its end (the
    /// last stable offset under `read_committed`). Commit markers follow a
    /// commit shortly, so waiting for the expected count, rather than for
    /// the first end, keeps a test from reading before they land.
    AtLeastThenEnd(usize),
}

/// Reads `topic` from the beginning with `isolation` until `until` holds;
/// panics after `harness::testkit::DEADLINE`. Every record must decode with the shards'
/// decoder.
pub fn read(bootstrap: &str, topic: &str, isolation: Isolation, until: Until) -> Vec<Read> {
    let mut reader = TopicReader::new(bootstrap, topic, PARTITIONS, isolation);
    let records = match until {
        Until::AtLeast(count) => reader.read_until(&format!("{count} records"), |reader| {
            reader.records.len() >= count
        }),
        Until::AtLeastThenEnd(count) => reader.read_at_least_then_end(count),
    };
    records
        .iter()
        .map(|record| Read {
            key: record.key.clone().expect("a key"),
            partition: record.partition,
            transfer: ledger_core::wire::decode_transfer(
                record.payload.as_deref().expect("a payload"),
            )
            .unwrap_or_else(|error| panic!("undecodable record: {error}")),
        })
        .collect()
}

/// The `producer` binary, running, its output captured.
pub struct Running {
    pid: Pid,
    exited: mpsc::Receiver<io::Result<Output>>,
}

/// Starts the `producer` binary with `args`.
pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Running {
    spawn_with_env(args, &[])
}

/// Starts the `producer` binary with `args` and the variables `env` added
/// to the test's environment.
pub fn spawn_with_env<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_producer"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the producer binary");
    let pid = Pid::from_child(&child);
    let (report, exited) = mpsc::channel();
    // A thread waits, so that the test can wait with a bound and no polling.
    std::thread::spawn(move || {
        let _ = report.send(child.wait_with_output());
    });
    Running { pid, exited }
}

impl Running {
    pub fn signal(&self, signal: Signal) {
        kill_process(self.pid, signal).expect("signal the producer");
    }

    /// Waits for the exit, at most `within`; kills the process and panics
    /// after that.
    pub fn finish(self, within: Duration) -> Output {
        match self.exited.recv_timeout(within) {
            Ok(output) => output.expect("wait for the producer"),
            Err(_) => {
                let _ = kill_process(self.pid, Signal::KILL);
                let output = self.exited.recv().ok().and_then(Result::ok);
                panic!(
                    "the producer did not exit within {within:?}; stderr:\n{}",
                    output.map(|o| stderr(&o)).unwrap_or_default()
                );
            }
        }
    }
}

/// Runs the binary to its end, at most `within`.
pub fn run_binary<S: AsRef<std::ffi::OsStr>>(args: &[S], within: Duration) -> Output {
    spawn(args).finish(within)
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
