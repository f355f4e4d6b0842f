//! The chaos run: the whole pipeline as child processes on a real broker,
//! with shards killed (SIGKILL) every few seconds, the producer killed
//! mid-transaction and restarted, and the broker stopped and restarted,
//! while transfers flow. At the end the audit must pass.
//!
//! The test is the supervisor (as Kubernetes would be): it restarts what
//! died, including shards that exit on their own after the broker outage
//! (a fenced or broken producer is fatal to a shard by design).

use std::io::Write as _;
use std::time::{Duration, Instant};

use ledger_cli::pipeline::{self, Binaries, Pipeline, PipelineConfig, ProducerRun};

/// Transfers per producer run; every incarnation resends the same seeded
/// stream from the start, so the last one alone delivers all of them.
const TRANSFERS: u64 = 24_000;
const SHARDS: u32 = 3;
const SHARD_KILLS_MIN: u32 = 10;
const PRODUCER_KILLS: u32 = 2;
const KILL_INTERVAL: Duration = Duration::from_secs(3);

fn print_logs(pipeline: &Pipeline, broker: &harness::Broker) {
    for shard in 0..SHARDS as usize {
        let log = std::fs::read_to_string(pipeline.shard_log(shard)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("--- shard {shard} log tail ---");
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
    eprintln!("--- broker log tail ---\n{}", broker.log_tail(60));
}

#[test]
fn the_pipeline_survives_chaos_and_the_audit_passes() {
    let binaries = Binaries::locate().expect("the producer and consumer binaries");
    // Its own broker, not the shared one: this test stops and restarts it.
    let mut broker = harness::Broker::start(harness::BrokerOptions::default())
        .unwrap_or_else(|error| panic!("starting the broker: {error}"));
    let prefix = harness::unique_name("chaos") + "-";
    let work = tempfile::tempdir().expect("work dir");
    let config = PipelineConfig {
        bootstrap_servers: broker.bootstrap_servers().to_owned(),
        topics: pipeline::prefixed_topics(&prefix),
        partitions: 6,
        shards: SHARDS,
        work_dir: work.path().to_owned(),
        group_id: format!("{prefix}ledger"),
        transactional_id_prefix: format!("{prefix}ledger-consumer"),
        producer_transactional_id: format!("{prefix}producer"),
        batch_ms: 100,
        shard_env: Vec::new(),
    };
    let mut pipeline = Pipeline::new(config, binaries).expect("pipeline");
    pipeline.create_topics().expect("topics");
    pipeline.start_shards().expect("shards");
    if let Err(error) = pipeline.wait_ready(Duration::from_secs(180)) {
        print_logs(&pipeline, &broker);
        panic!("{error}");
    }
    let run = ProducerRun {
        count: TRANSFERS,
        rate: 1_500,
        seed: 11,
        accounts: 500,
        batch_ms: 100,
    };
    pipeline.start_producer(&run).expect("producer");

    let started = Instant::now();
    let deadline = started + Duration::from_secs(420);
    let mut next_kill = started + KILL_INTERVAL;
    let mut round = 0u32;
    let mut broker_restarted = false;
    let mut unplanned_restarts = 0u32;
    // Pseudo-random but reproducible choice of victims.
    let mut victim = 0x9e37_79b9_u32;
    loop {
        assert!(
            Instant::now() < deadline,
            "the chaos run did not finish in time: {:?}",
            pipeline.disruptions
        );
        std::thread::sleep(Duration::from_millis(200));
        let producer_done = pipeline.disruptions.producer_kills >= PRODUCER_KILLS;
        match pipeline.producer_exit() {
            Some(status) if status.success() && producer_done => break,
            Some(_) => {
                // Died on its own (e.g. during the broker outage): restart.
                unplanned_restarts += 1;
                pipeline.start_producer(&run).expect("producer restart");
            }
            None => {}
        }
        for shard in 0..SHARDS as usize {
            if pipeline.shard_exit(shard).is_some() {
                unplanned_restarts += 1;
                pipeline.start_shard(shard).expect("shard restart");
            }
        }
        if Instant::now() < next_kill {
            continue;
        }
        next_kill = Instant::now() + KILL_INTERVAL;
        round += 1;
        victim ^= victim << 13;
        victim ^= victim >> 17;
        victim ^= victim << 5;
        let shard = (victim % SHARDS) as usize;
        pipeline.kill_shard(shard);
        pipeline.start_shard(shard).expect("shard restart");
        if round % 3 == 0 && pipeline.disruptions.producer_kills < PRODUCER_KILLS {
            pipeline.kill_producer();
            pipeline.start_producer(&run).expect("producer restart");
        }
        if round == 5 && !broker_restarted {
            // A deliberate outage of a few seconds while everyone is busy.
            broker.stop().expect("stopping the broker");
            std::thread::sleep(Duration::from_secs(3));
            broker.restart().expect("restarting the broker");
            broker_restarted = true;
        }
    }
    // Keep killing shards until the minimum is reached, then settle.
    while pipeline.disruptions.shard_kills < SHARD_KILLS_MIN {
        std::thread::sleep(KILL_INTERVAL);
        let shard = (pipeline.disruptions.shard_kills % SHARDS) as usize;
        pipeline.kill_shard(shard);
        pipeline.start_shard(shard).expect("shard restart");
    }
    let settled = pipeline
        .wait_ready(Duration::from_secs(180))
        .and_then(|()| pipeline.wait_caught_up(Duration::from_secs(300)));
    if let Err(error) = settled {
        print_logs(&pipeline, &broker);
        panic!("the shards did not settle: {error}");
    }
    let report = match pipeline.audit() {
        Ok(report) => report,
        Err(error) => {
            print_logs(&pipeline, &broker);
            panic!("the audit could not run: {error}");
        }
    };
    let disruptions = pipeline.disruptions;
    // Written to stderr directly, not with eprintln!, which the test harness
    // captures: what the run survived belongs in every test log, passing or
    // not.
    let _ = writeln!(
        std::io::stderr(),
        "chaos run: {TRANSFERS} transfers per producer run over {:?}; shard kills {}, \
         producer kills {} (mid-transaction), producer runs {}, broker restarts {}, \
         unplanned restarts {}\n{report}",
        started.elapsed(),
        disruptions.shard_kills,
        disruptions.producer_kills,
        disruptions.producer_starts,
        u32::from(broker_restarted),
        unplanned_restarts,
    );
    if !report.passed() {
        print_logs(&pipeline, &broker);
    }
    assert!(report.passed(), "the audit failed after the chaos run");
    assert!(disruptions.shard_kills >= SHARD_KILLS_MIN);
    assert!(disruptions.producer_kills >= PRODUCER_KILLS);
    assert!(broker_restarted);
    let statuses = pipeline.stop();
    assert!(
        statuses.iter().all(|s| s.is_some_and(|s| s.success())),
        "every shard stops cleanly on SIGTERM: {statuses:?}"
    );
}
