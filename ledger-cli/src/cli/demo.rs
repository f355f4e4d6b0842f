//! `ledger demo`: the whole pipeline on this machine, no container engine
//! needed: a local broker (or `KAFKA_BOOTSTRAP_SERVERS`), the topics, a
//! producer and N shards as child processes, a live status line, optional
//! chaos, and the audit's verdict at the end.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ledger_cli::pipeline::{self, Binaries, Pipeline, PipelineConfig, ProducerRun};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Transfers to generate; 0 runs until Ctrl-C or --duration.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Stop producing after this many seconds.
    #[arg(long)]
    duration: Option<u64>,
    /// Transfers per second (0: as fast as possible).
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Consumer shards.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=6))]
    shards: u32,
    /// Partitions of `transactions` and `ledger-credits`.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=64))]
    partitions: i32,
    /// Accounts in the generated population.
    #[arg(long, default_value_t = 1_000)]
    accounts: u32,
    /// Seed of the generated stream.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Who assigns the shards' partitions: `ordinal` (shard i owns
    /// `p mod shards == i`) or `group` (the consumer group; shards can be
    /// retired and added while the demo runs).
    #[arg(long, value_enum, default_value_t = Assignment::Ordinal)]
    assignment: Assignment,
    /// Every --chaos-interval seconds, kill a shard (SIGKILL) and restart
    /// it, one time in four with its sled directory deleted (it restores
    /// it from the changelog); every fifth event kills the producer
    /// mid-transaction instead, at most three times. With
    /// `--assignment group`, one event in five scales the shard set instead:
    /// in (a shard stopped and left stopped) and out (started again), in
    /// turn.
    #[arg(long)]
    chaos: bool,
    /// Seconds between chaos events.
    #[arg(long, default_value_t = 4)]
    chaos_interval: u64,
    /// Where shard data and process logs go (default: a temporary
    /// directory, removed at the end).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Give up waiting for the shards to catch up after this many seconds.
    #[arg(long, default_value_t = 300)]
    settle_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Assignment {
    Ordinal,
    Group,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    ledger::telemetry::init_logging(ledger::telemetry::LogFormat::Human);
    let binaries = Binaries::locate()?;
    let stop = Arc::new(AtomicBool::new(false));
    watch_ctrl_c(Arc::clone(&stop));
    let (bootstrap, _broker) = pipeline::broker().context("starting the local broker")?;
    eprintln!("broker: {bootstrap}");
    let temporary = match &args.work_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().context("creating a work directory")?),
    };
    let work_dir = args
        .work_dir
        .clone()
        .or_else(|| temporary.as_ref().map(|t| t.path().to_owned()))
        .context("no work directory")?;
    let mut pipeline = Pipeline::new(pipeline_config(&args, bootstrap, &work_dir), binaries)?;
    pipeline.create_topics()?;
    pipeline.start_shards()?;
    pipeline.wait_ready(Duration::from_secs(120))?;
    eprintln!(
        "{} shards ready: {}; logs in {}",
        args.shards,
        pipeline.shard_urls().join(" "),
        work_dir.display()
    );
    let started = Instant::now();
    let mut status = StatusLine::new();
    drive(&args, &mut pipeline, &stop, &mut status, started)?;
    pipeline.stop_producer();
    restart_exited(&mut pipeline, args.shards)?;
    // A shard retired by the chaos comes back for the end, as a scale-out.
    for index in 0..args.shards as usize {
        if !pipeline.active_shards().contains(&index) {
            eprintln!("starting shard {index} again (scale-out) for the audit");
            pipeline.start_shard(index)?;
        }
    }
    pipeline.wait_ready(Duration::from_secs(120))?;
    pipeline.wait_caught_up(Duration::from_secs(args.settle_timeout))?;
    status.render(&pipeline, started);
    eprintln!();
    audit_and_stop(pipeline, temporary)
}

/// A run-specific prefix keeps this run's topics, group and transactional
/// ids apart from anything else on the broker.
fn pipeline_config(args: &Args, bootstrap: String, work_dir: &Path) -> PipelineConfig {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let prefix = format!("demo-{run_id}-");
    PipelineConfig {
        bootstrap_servers: bootstrap,
        topics: pipeline::prefixed_topics(&prefix),
        partitions: args.partitions,
        shards: args.shards,
        work_dir: work_dir.to_owned(),
        group_id: format!("{prefix}ledger"),
        transactional_id_prefix: format!("{prefix}ledger-consumer"),
        producer_transactional_id: format!("{prefix}producer"),
        batch_ms: 100,
        shard_env: Vec::new(),
        group_assignment: args.assignment == Assignment::Group,
    }
}

/// Runs the producer, with chaos if asked, until it finishes, fails, the
/// duration is reached or Ctrl-C; restarts any shard that exits.
fn drive(
    args: &Args,
    pipeline: &mut Pipeline,
    stop: &AtomicBool,
    status: &mut StatusLine,
    started: Instant,
) -> anyhow::Result<()> {
    let run = ProducerRun {
        count: args.count,
        rate: args.rate,
        seed: args.seed,
        accounts: args.accounts,
        batch_ms: 100,
    };
    pipeline.start_producer(&run)?;
    let mut next_chaos = Instant::now() + Duration::from_secs(args.chaos_interval);
    let mut chaos_round = 0u64;
    loop {
        std::thread::sleep(Duration::from_millis(1000));
        status.render(pipeline, started);
        if stop.load(Ordering::SeqCst) {
            eprintln!("\nstopping (Ctrl-C)...");
            return Ok(());
        }
        if args
            .duration
            .is_some_and(|limit| started.elapsed() >= Duration::from_secs(limit))
        {
            eprintln!("\n--duration reached, stopping the producer...");
            return Ok(());
        }
        if let Some(exit) = pipeline.producer_exit() {
            if exit.success() {
                eprintln!("\nthe producer finished; waiting for the shards to catch up...");
                return Ok(());
            }
            anyhow::bail!(
                "the producer failed ({exit}); its log: {}",
                pipeline.producer_log().display()
            );
        }
        if args.chaos && Instant::now() >= next_chaos {
            chaos_round += 1;
            next_chaos = Instant::now() + Duration::from_secs(args.chaos_interval);
            chaos_event(pipeline, &run, chaos_round, args)?;
        }
        restart_exited(pipeline, args.shards)?;
    }
}

/// Producer kills in one demo: each restarts the stream from its start, so
/// a stream longer than the time between them would never end.
const PRODUCER_KILLS_MAX: u32 = 3;

/// Restarts every shard that exited on its own, saying so. Also after
/// Ctrl-C: a terminal sends SIGINT to the shards too, and they stop
/// cleanly; the demo still needs them to catch up and to audit.
fn restart_exited(pipeline: &mut Pipeline, shards: u32) -> anyhow::Result<()> {
    // A retired shard has no process: it is not restarted here.
    for index in 0..shards as usize {
        if let Some(exit) = pipeline.shard_exit(index) {
            eprintln!(
                "\nshard {index} exited ({exit}); restarting it. Its log: {}",
                pipeline.shard_log(index).display()
            );
            pipeline.start_shard(index)?;
        }
    }
    Ok(())
}

/// Every fifth event hits the producer, up to `PRODUCER_KILLS_MAX` times:
/// it is restarted with the same seed and transactional id, so it fences
/// its predecessor and resends the stream from the start; the shards
/// answer the already-decided ids with `duplicate`. The others kill and
/// restart a shard, one in four deleting its sled directory first, as a
/// lost volume, which the shard restores from the changelog. With group
/// assignment and more than one shard, every fifth event from the second
/// on scales the shard set: in (a shard stopped, its partitions taken by
/// the others once its session expires) or, with one retired, out again.
fn chaos_event(
    pipeline: &mut Pipeline,
    run: &ProducerRun,
    round: u64,
    args: &Args,
) -> anyhow::Result<()> {
    let active = pipeline.active_shards();
    let shard = active[(round as usize * 7) % active.len()];
    let scaling = args.assignment == Assignment::Group && args.shards > 1;
    match round % 5 {
        0 if pipeline.disruptions.producer_kills < PRODUCER_KILLS_MAX => {
            pipeline.kill_producer();
            pipeline.start_producer(run)?;
            return Ok(());
        }
        2 if scaling => {
            match (0..args.shards as usize).find(|index| !active.contains(index)) {
                Some(retired) => {
                    eprintln!("\nscale-out: starting shard {retired} again");
                    pipeline.start_shard(retired)?;
                }
                None => {
                    eprintln!("\nscale-in: stopping shard {shard}; the others take its partitions");
                    pipeline.retire_shard(shard);
                }
            }
            return Ok(());
        }
        // The shard's disk is lost: it restores from the changelog.
        3 => pipeline.lose_shard_data(shard)?,
        _ => pipeline.kill_shard(shard),
    }
    pipeline.start_shard(shard)?;
    Ok(())
}

/// The audit's verdict is the demo's: exit 1 if it fails, keeping the
/// evidence.
fn audit_and_stop(
    mut pipeline: Pipeline,
    temporary: Option<tempfile::TempDir>,
) -> anyhow::Result<ExitCode> {
    eprintln!("auditing...");
    let report = pipeline.audit()?;
    print!("{report}");
    let disruptions = pipeline.disruptions;
    println!(
        "survived: {} shard kills ({} with their sled directory deleted), {} producer kills \
         ({} producer runs), {} scale-ins, {} scale-outs",
        disruptions.shard_kills,
        disruptions.data_losses,
        disruptions.producer_kills,
        disruptions.producer_starts,
        disruptions.scale_ins,
        disruptions.scale_outs
    );
    let statuses = pipeline.stop();
    if statuses.iter().any(|s| !s.is_some_and(|s| s.success())) {
        eprintln!("warning: a shard did not stop cleanly: {statuses:?}");
    }
    if let (Some(temporary), true) = (temporary, !report.passed()) {
        let kept = temporary.keep();
        eprintln!("shard data and logs kept in {}", kept.display());
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Sets `stop` on Ctrl-C (SIGINT) or SIGTERM.
fn watch_ctrl_c(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let signalled = runtime.block_on(async {
            let shutdown = ledger::signal::shutdown_signal()?;
            shutdown.await;
            std::io::Result::Ok(())
        });
        // Handlers that could not be installed leave the signals their
        // default action, which ends the demo without its clean-up.
        if signalled.is_ok() {
            stop.store(true, Ordering::SeqCst);
        }
    });
}

/// One line, rewritten in place on a terminal (a line every 5 s otherwise).
struct StatusLine {
    terminal: bool,
    last_outcomes: f64,
    last_at: Instant,
    last_printed: Option<Instant>,
}

impl StatusLine {
    fn new() -> Self {
        StatusLine {
            terminal: std::io::stderr().is_terminal(),
            last_outcomes: 0.0,
            last_at: Instant::now(),
            last_printed: None,
        }
    }

    fn render(&mut self, pipeline: &Pipeline, started: Instant) {
        if !self.terminal
            && self
                .last_printed
                .is_some_and(|at| at.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        let outcomes = pipeline.metric_totals("txledger_consumer_outcomes_total");
        let by_status = |status: &str| -> f64 {
            outcomes
                .iter()
                .filter(|(labels, _)| labels.contains(&format!("status=\"{status}\"")))
                .map(|(_, value)| value)
                // fold from +0.0: an empty f64 sum is -0.0, printed "-0".
                .fold(0.0, |total, value| total + value)
        };
        let (accepted, rejected, duplicate) = (
            by_status("accepted"),
            by_status("rejected"),
            by_status("duplicate"),
        );
        let total = accepted + rejected + duplicate;
        let elapsed = self.last_at.elapsed().as_secs_f64().max(0.001);
        // Counters restart with a killed shard; never show a negative rate.
        let rate = ((total - self.last_outcomes) / elapsed).max(0.0);
        self.last_outcomes = total;
        self.last_at = Instant::now();
        let stats = pipeline.stats();
        let up = stats.iter().filter(|s| s.is_some()).count();
        let sum: rust_decimal::Decimal = stats
            .iter()
            .flatten()
            .filter_map(|s| s.sum.parse::<rust_decimal::Decimal>().ok())
            .sum();
        let in_flight = credits_in_flight(sum);
        let lag = pipeline.lag().map_or("?".to_owned(), |lag| lag.to_string());
        let d = pipeline.disruptions;
        let line = format!(
            "{:>4}s | {:>7.0} outcomes/s | accepted {:.0} rejected {:.0} duplicate {:.0} | lag {lag} | shards up {up}/{} | sum of balances {sum} (credits in flight: {in_flight}) | kills: shards {} producer {}",
            started.elapsed().as_secs(),
            rate,
            accepted,
            rejected,
            duplicate,
            stats.len(),
            d.shard_kills,
            d.producer_kills,
        );
        let mut stderr = std::io::stderr();
        if self.terminal {
            let _ = write!(stderr, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(stderr, "{line}");
        }
        let _ = stderr.flush();
        self.last_printed = Some(Instant::now());
    }
}

/// The credits emitted but not yet applied, from the sum of the shards'
/// balances: its opposite (it returns to exactly zero once they land).
/// Negating a zero Decimal keeps a sign that prints as "-0.00".
fn credits_in_flight(balance_sum: rust_decimal::Decimal) -> rust_decimal::Decimal {
    let in_flight = -balance_sum;
    if in_flight.is_zero() {
        in_flight.abs()
    } else {
        in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::credits_in_flight;
    use rust_decimal::Decimal;

    #[test]
    fn credits_in_flight_are_the_opposite_of_the_sum_and_zero_is_unsigned() {
        let parse = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(credits_in_flight(parse("0.00")).to_string(), "0.00");
        assert_eq!(credits_in_flight(parse("-127.50")).to_string(), "127.50");
        assert_eq!(credits_in_flight(parse("3.25")).to_string(), "-3.25");
    }
}
