//! The broker's operating-system process: spawning it with or without a
//! watchdog, stopping its process group, reading its log.
//!
//! The broker always runs in a process group of its own, led by the process
//! we spawn. Signals go to the whole group, so nothing the group contains
//! (the JVM, the watchdog shell and its `sleep`s) can be left behind, and "the
//! group is empty" is the one definition of "stopped".

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{kill_process_group, test_kill_process_group, Pid, Signal};

use crate::error::HarnessError;

/// The file whose presence tells the watchdog not to delete the broker's
/// temporary directory (written when a test fails, to keep its log).
pub(crate) const KEEP_MARKER: &str = "keep";

/// How often stop loops look at the process group again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long to wait for the group to vanish after SIGKILL before calling it a
/// bug; the kernel needs milliseconds, a loaded machine maybe seconds.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Runs the broker command (`"$@"`) and kills it when the process that spawned
/// this shell is gone. `cargo test` never drops statics and a test process can
/// die of SIGKILL, so only something outside the test process can clean up.
/// `PR_SET_PDEATHSIG` is no answer: it fires when the spawning *thread* exits,
/// and in `cargo test` that is a test thread. `$PPID` is the test process.
///
/// The checking loop runs in a subshell while the main shell `wait`s for the
/// broker: a shell that polled its own child with `kill -0` would see it alive
/// forever as an unreaped zombie.
///
/// Arguments: `CLEANUP_DIR GRACE_SECONDS COMMAND...`. After the parent is gone
/// the broker gets SIGTERM, then SIGKILL after GRACE_SECONDS (0: SIGKILL at
/// once, for temporary data nobody will read). CLEANUP_DIR (may be empty) is
/// deleted afterwards unless it holds the keep marker.
const WATCHDOG_SCRIPT: &str = r#"
cleanup_dir=$1
grace=$2
shift 2
parent=$PPID
"$@" &
broker=$!
(
  while kill -0 "$parent" 2>/dev/null; do sleep 1; done
  if [ "$grace" -gt 0 ]; then
    kill -TERM "$broker" 2>/dev/null
    sleep "$grace"
  fi
  kill -KILL "$broker" 2>/dev/null
) &
watchdog=$!
wait "$broker"
status=$?
if ! kill -0 "$parent" 2>/dev/null && [ -n "$cleanup_dir" ] && [ ! -e "$cleanup_dir/keep" ]; then
  rm -rf -- "$cleanup_dir"
fi
kill "$watchdog" 2>/dev/null
exit "$status"
"#;

/// What should happen to the broker when the spawning process goes away.
#[derive(Clone, Copy)]
pub(crate) enum Lifetime<'a> {
    /// Die with the spawning process; delete `cleanup_dir` (if any) after.
    Watched {
        cleanup_dir: Option<&'a Path>,
        grace_seconds: u32,
    },
    /// Outlive the spawning process (the `txledger-kafka start` daemon).
    Detached,
}

/// Starts `program args...` in a new process group, stdout and stderr
/// appended to `log_path`.
pub(crate) fn spawn(
    program: &Path,
    args: &[std::ffi::OsString],
    log_path: &Path,
    lifetime: Lifetime<'_>,
) -> Result<Child, HarnessError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(HarnessError::io(format!("opening {}", log_path.display())))?;
    let log_err = log.try_clone().map_err(HarnessError::io(format!(
        "duplicating {}",
        log_path.display()
    )))?;
    let mut command = match lifetime {
        Lifetime::Detached => Command::new(program),
        Lifetime::Watched {
            cleanup_dir,
            grace_seconds,
        } => {
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg(WATCHDOG_SCRIPT)
                .arg("txledger-kafka-watchdog")
                .arg(cleanup_dir.map(Path::as_os_str).unwrap_or_default())
                .arg(grace_seconds.to_string())
                .arg(program);
            command
        }
    };
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own group: one signal reaches everything, and a terminal's
        // Ctrl-C (sent to the foreground group) does not reach a daemon.
        .process_group(0);
    command
        .spawn()
        .map_err(HarnessError::io(format!("starting {}", program.display())))
}

/// Sends `signal` to the process group led by `leader`; a group that is
/// already gone is fine.
pub(crate) fn signal_group(leader: u32, signal: Signal) -> Result<(), HarnessError> {
    let Some(pid) = to_pid(leader) else {
        return Ok(());
    };
    match kill_process_group(pid, signal) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(error) => Err(HarnessError::Io {
            context: format!("signalling process group {leader}"),
            source: error.into(),
        }),
    }
}

/// Whether any process of the group led by `leader` is still alive.
/// `leader`'s zombie counts, so a child must be reaped first.
pub(crate) fn group_alive(leader: u32) -> bool {
    to_pid(leader).is_some_and(|pid| test_kill_process_group(pid) != Err(Errno::SRCH))
}

/// Stops the groups led by the given leaders: SIGTERM to all at once, then
/// SIGKILL to those still alive `grace` after. At once, because the nodes of
/// a cluster stopped one by one would each wait for a quorum that the
/// previous ones took away. Each leader comes with its `Child` handle when it
/// is our child, so that it gets reaped (a zombie leader would keep the
/// group "alive").
pub(crate) fn stop_groups(
    groups: &mut [(u32, Option<&mut Child>)],
    grace: Duration,
) -> Result<(), HarnessError> {
    for (leader, _) in groups.iter() {
        signal_group(*leader, Signal::TERM)?;
        // A paused (SIGSTOPped) process acts on SIGTERM only once continued.
        signal_group(*leader, Signal::CONT)?;
    }
    let deadline = Instant::now() + grace;
    for (leader, child) in groups.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if !wait_group_gone(*leader, child.as_deref_mut(), left)? {
            kill_group(*leader, child.as_deref_mut())?;
        }
    }
    Ok(())
}

/// SIGKILL to the group, then wait (bounded) until it is gone.
pub(crate) fn kill_group(leader: u32, child: Option<&mut Child>) -> Result<(), HarnessError> {
    signal_group(leader, Signal::KILL)?;
    if wait_group_gone(leader, child, KILL_WAIT)? {
        Ok(())
    } else {
        Err(HarnessError::StopTimeout {
            pid: leader,
            waited: KILL_WAIT,
        })
    }
}

fn wait_group_gone(
    leader: u32,
    mut child: Option<&mut Child>,
    timeout: Duration,
) -> Result<bool, HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(child) = child.as_deref_mut() {
            child
                .try_wait()
                .map_err(HarnessError::io(format!("waiting for process {leader}")))?;
        }
        if !group_alive(leader) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(POLL_INTERVAL);
    }
}

fn to_pid(raw: u32) -> Option<Pid> {
    i32::try_from(raw).ok().and_then(Pid::from_raw)
}

/// The last `lines` lines of the file at `path`, or a note saying why there
/// are none. Reads at most the last 256 KiB: broker logs grow large and a
/// failure message needs only the end.
pub(crate) fn tail_file(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 256 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let length = file.metadata()?.len();
        file.seek(SeekFrom::Start(length.saturating_sub(MAX_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => last_lines(&text, lines),
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `pid` is a Kafka broker started for `server_properties`: a pid file
/// may outlive its process, and the number may now belong to anything.
pub(crate) fn is_broker(pid: u32, server_properties: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).collect();
    let wanted = server_properties.as_os_str().as_encoded_bytes();
    args.contains(&b"kafka.Kafka".as_slice()) && args.contains(&wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\nb", 5), "a\nb");
        assert_eq!(last_lines("", 3), "");
    }

    #[test]
    fn watched_child_dies_with_its_group() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("log");
        let mut child = spawn(
            Path::new("sleep"),
            &["600".into()],
            &log,
            Lifetime::Watched {
                cleanup_dir: None,
                grace_seconds: 0,
            },
        )
        .expect("spawn sleep");
        let leader = child.id();
        assert!(group_alive(leader));
        stop_groups(&mut [(leader, Some(&mut child))], Duration::from_secs(10)).expect("stop");
        assert!(!group_alive(leader));
    }
}
