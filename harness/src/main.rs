//! `txledger-kafka`: a local Kafka broker, or a cluster of several nodes,
//! that keeps running after this command exits, for demos and manual
//! testing, with per-node fault injection.
//!
//! ```text
//! txledger-kafka start [--dir DIR] [--port N]   # prints 127.0.0.1:PORT last
//! txledger-kafka start --nodes 3 [--dir DIR]    # prints the 3 addresses last
//! txledger-kafka status [--dir DIR]
//! txledger-kafka stop [--dir DIR]
//! txledger-kafka node kill|stop|start|pause|resume --node N [--dir DIR]
//! txledger-kafka roles [--dir DIR] [--transactional-id ID]... [--group G]...
//! ```

// A test may keep its length when it reads as one story; production
// functions are held to clippy.toml's limit.
#![cfg_attr(test, allow(clippy::too_many_lines))]
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use harness::{daemon, Cluster};

#[derive(Parser)]
#[command(
    name = "txledger-kafka",
    version,
    about = "A local Kafka broker or cluster (KRaft) that runs in the background"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a broker (or with --nodes N, a cluster) in the background, wait
    /// until it is ready and print its address (last line of stdout; a
    /// cluster's addresses comma-separated). Does nothing but print the
    /// address if one already runs in DIR.
    Start {
        /// Directory: configuration, data, logs, pids (a cluster's node N in
        /// DIR/node-N).
        #[arg(long, default_value = ".kafka")]
        dir: PathBuf,
        /// Client port on 127.0.0.1 of a single broker (default: a free one).
        #[arg(long, conflicts_with = "nodes")]
        port: Option<u16>,
        /// How many nodes, each a broker and a KRaft controller. 1 is a
        /// single broker with its files in DIR itself.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=9))]
        nodes: u16,
        /// Give up if not ready after this many seconds (default: 120 for a
        /// single broker, 180 for a cluster).
        #[arg(long)]
        timeout_secs: Option<u64>,
    },
    /// Stop everything running in DIR (SIGTERM, SIGKILL after 20 s).
    Stop {
        #[arg(long, default_value = ".kafka")]
        dir: PathBuf,
    },
    /// Say whether a broker or cluster runs in DIR and answers; exit code 0
    /// if so.
    Status {
        #[arg(long, default_value = ".kafka")]
        dir: PathBuf,
    },
    /// Inject a fault into one node, or end it.
    Node {
        action: NodeAction,
        /// The node id, 1 to N (1 for a single broker).
        #[arg(long)]
        node: u32,
        #[arg(long, default_value = ".kafka")]
        dir: PathBuf,
        /// `start`: give up if the node is not serving after this many
        /// seconds.
        #[arg(long, default_value_t = 180)]
        timeout_secs: u64,
    },
    /// Print which node is the active controller and which coordinates the
    /// given transactional ids and consumer groups, one per line:
    /// `active-controller N`, `transaction-coordinator ID N`,
    /// `group-coordinator GROUP N`.
    Roles {
        #[arg(long, default_value = ".kafka")]
        dir: PathBuf,
        #[arg(long = "transactional-id")]
        transactional_ids: Vec<String>,
        #[arg(long = "group")]
        groups: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum NodeAction {
    /// SIGKILL, as a crash would.
    Kill,
    /// SIGTERM: a controlled shutdown (SIGKILL after 20 s).
    Stop,
    /// Start a stopped or killed node and wait until it serves again.
    Start,
    /// SIGSTOP: the node keeps its sockets but answers nothing.
    Pause,
    /// SIGCONT after pause.
    Resume,
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Start {
            dir,
            port,
            nodes,
            timeout_secs,
        } => start(&dir, port, nodes, timeout_secs),
        Command::Stop { dir } => {
            match daemon::stop(&dir)? {
                Some(stopped) => println!("Stopped the broker ({}).", stopped.pids()),
                None => println!("No broker runs in {}.", dir.display()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { dir } => status(&dir),
        Command::Node {
            action,
            node,
            dir,
            timeout_secs,
        } => {
            let mut cluster = Cluster::attach(&dir, Duration::from_secs(timeout_secs))?;
            match action {
                NodeAction::Kill => cluster.kill(node),
                NodeAction::Stop => cluster.stop(node),
                NodeAction::Start => cluster.start_node(node),
                NodeAction::Pause => cluster.pause(node),
                NodeAction::Resume => cluster.resume(node),
            }
            .with_context(|| format!("node {node} in {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Roles {
            dir,
            transactional_ids,
            groups,
        } => roles(&dir, &transactional_ids, &groups),
    }
}

/// `start`: a broker (one node) or a cluster in the background, unless one
/// already runs in `dir`; its bootstrap list is the last line of stdout.
fn start(
    dir: &Path,
    port: Option<u16>,
    nodes: u16,
    timeout_secs: Option<u64>,
) -> anyhow::Result<ExitCode> {
    if let Some(running) = daemon::status(dir)? {
        eprintln!(
            "A broker already runs in {} ({}).",
            dir.display(),
            running.pids()
        );
        println!("{}", running.bootstrap);
        return Ok(ExitCode::SUCCESS);
    }
    let bootstrap = if nodes == 1 {
        eprintln!("Starting a Kafka broker in {} ...", dir.display());
        let timeout = Duration::from_secs(timeout_secs.unwrap_or(120));
        daemon::start(dir, port, timeout)
            .with_context(|| format!("starting a broker in {}", dir.display()))?
    } else {
        eprintln!(
            "Starting a Kafka cluster of {nodes} nodes in {} ...",
            dir.display()
        );
        let timeout = Duration::from_secs(timeout_secs.unwrap_or(180));
        daemon::start_cluster(dir, usize::from(nodes), timeout)
            .with_context(|| format!("starting a cluster in {}", dir.display()))?
    };
    let log = if nodes == 1 {
        dir.join("broker.log")
    } else {
        dir.join("node-*").join("broker.log")
    };
    eprintln!(
        "Ready. Log: {}. Stop it with: txledger-kafka stop --dir {}",
        log.display(),
        dir.display()
    );
    println!("{bootstrap}");
    Ok(ExitCode::SUCCESS)
}

/// `status`: exit code 0 when a broker runs in `dir` and answers.
fn status(dir: &Path) -> anyhow::Result<ExitCode> {
    let Some(running) = daemon::status(dir)? else {
        println!("not running ({})", dir.display());
        return Ok(ExitCode::FAILURE);
    };
    let answers = daemon::answers(&running.bootstrap);
    println!(
        "running: {}, bootstrap {}, {}",
        running.pids(),
        running.bootstrap,
        if answers {
            "answering"
        } else {
            "NOT answering"
        }
    );
    Ok(if answers {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `roles`: which node holds the roles a fault can be aimed at.
fn roles(dir: &Path, transactional_ids: &[String], groups: &[String]) -> anyhow::Result<ExitCode> {
    let cluster = Cluster::attach(dir, Duration::ZERO)?;
    println!("active-controller {}", cluster.active_controller()?);
    for id in transactional_ids {
        let node = cluster.transaction_coordinator(id)?;
        println!("transaction-coordinator {id} {node}");
    }
    for group in groups {
        let node = cluster.group_coordinator(group)?;
        println!("group-coordinator {group} {node}");
    }
    Ok(ExitCode::SUCCESS)
}
