//! A broker that outlives the command that started it: what
//! `txledger-kafka start|stop|status` does. Its directory holds, besides the
//! broker's own files, `broker.pid` (the JVM's pid, which also leads its
//! process group) and `bootstrap` (the address, one line).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

use crate::broker::{Broker, BrokerOptions, SERVER_PROPERTIES};
use crate::error::HarnessError;
use crate::process;

const PID_FILE: &str = "broker.pid";
const BOOTSTRAP_FILE: &str = "bootstrap";

/// Bound on a graceful stop before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// A daemon broker found running.
#[derive(Debug, Clone)]
pub struct Running {
    pub pid: u32,
    pub bootstrap: String,
}

/// Starts a detached broker in `dir`, waits until it is ready, records its
/// pid and address, and returns the address. Call [`status`] first: this
/// does not check for a broker already running there.
pub fn start(
    dir: &Path,
    port: Option<u16>,
    ready_timeout: Duration,
) -> Result<String, HarnessError> {
    let broker = Broker::start(BrokerOptions {
        dir: Some(dir.to_path_buf()),
        port,
        ready_timeout,
        detached: true,
        ..BrokerOptions::default()
    })?;
    let Some(pid) = broker.pid() else {
        unreachable!("Broker::start returns a running broker");
    };
    write_file(&dir.join(PID_FILE), &format!("{pid}\n"))?;
    write_file(
        &dir.join(BOOTSTRAP_FILE),
        &format!("{}\n", broker.bootstrap_servers()),
    )?;
    Ok(broker.bootstrap_servers().to_owned())
}

/// The broker running in `dir`, if any. Leftover files of a broker that is
/// gone are removed.
pub fn status(dir: &Path) -> Result<Option<Running>, HarnessError> {
    let pid_path = dir.join(PID_FILE);
    let pid = match fs::read_to_string(&pid_path) {
        Ok(text) => text.trim().parse::<u32>().ok(),
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(HarnessError::Io {
                context: format!("reading {}", pid_path.display()),
                source: error,
            })
        }
    };
    let server_properties = absolute(dir)?.join(SERVER_PROPERTIES);
    match pid {
        Some(pid) if process::is_broker(pid, &server_properties) => {
            let bootstrap_path = dir.join(BOOTSTRAP_FILE);
            let bootstrap = fs::read_to_string(&bootstrap_path).map_err(HarnessError::io(
                format!("reading {}", bootstrap_path.display()),
            ))?;
            Ok(Some(Running {
                pid,
                bootstrap: bootstrap.trim().to_owned(),
            }))
        }
        _ => {
            remove_files(dir)?;
            Ok(None)
        }
    }
}

/// Whether the broker at `bootstrap` answers a metadata request within 5 s.
pub fn answers(bootstrap: &str) -> bool {
    let producer: Result<BaseProducer, _> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create();
    producer.is_ok_and(|producer| {
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(5))
            .is_ok_and(|metadata| !metadata.brokers().is_empty())
    })
}

/// Stops the broker running in `dir` (SIGTERM, SIGKILL after 30 s) and
/// removes its pid and address files. Returns what was running, if anything.
pub fn stop(dir: &Path) -> Result<Option<Running>, HarnessError> {
    let running = status(dir)?;
    if let Some(running) = &running {
        process::stop_group(running.pid, None, STOP_GRACE)?;
        remove_files(dir)?;
    }
    Ok(running)
}

fn absolute(dir: &Path) -> Result<PathBuf, HarnessError> {
    fs::canonicalize(dir).map_err(HarnessError::io(format!("resolving {}", dir.display())))
}

fn write_file(path: &Path, contents: &str) -> Result<(), HarnessError> {
    fs::write(path, contents).map_err(HarnessError::io(format!("writing {}", path.display())))
}

fn remove_files(dir: &Path) -> Result<(), HarnessError> {
    for name in [PID_FILE, BOOTSTRAP_FILE] {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Err(error) if error.kind() != ErrorKind::NotFound => {
                return Err(HarnessError::Io {
                    context: format!("removing {}", path.display()),
                    source: error,
                })
            }
            _ => {}
        }
    }
    Ok(())
}
