//! Counters shared by the sending thread and the async side: they feed the
//! periodic progress line, the progress bar, the Prometheus metrics and the
//! final summary, each event being counted here and only here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

pub const METRIC_RECORDS: &str = "txledger_producer_records_total";
pub const METRIC_TRANSACTIONS: &str = "txledger_producer_transactions_total";
pub const METRIC_TRANSACTION_SECONDS: &str = "txledger_producer_transaction_duration_seconds";

/// Registers the metric descriptions (shown as `# HELP` lines).
pub fn describe_metrics() {
    metrics::describe_counter!(
        METRIC_RECORDS,
        "Records written: in committed transactions, or acknowledged by the broker with \
         --no-transactions."
    );
    metrics::describe_counter!(
        METRIC_TRANSACTIONS,
        "Transactions ended, by result (committed, aborted)."
    );
    metrics::describe_histogram!(
        METRIC_TRANSACTION_SECONDS,
        metrics::Unit::Seconds,
        "Time from a transaction's begin to the end of its commit."
    );
}

/// What has happened so far. Relaxed atomics: each counter is read on its
/// own, for reporting, never to synchronize anything.
#[derive(Debug)]
pub struct Progress {
    records_sent: AtomicU64,
    records_committed: AtomicU64,
    transactions_committed: AtomicU64,
    transactions_aborted: AtomicU64,
    resubmissions_committed: AtomicU64,
    /// Drawn only for a finite run on a terminal.
    bar: Option<ProgressBar>,
}

/// A consistent-enough copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub records_sent: u64,
    pub records_committed: u64,
    pub transactions_committed: u64,
    pub transactions_aborted: u64,
    pub resubmissions_committed: u64,
}

impl Progress {
    /// `total` is the expected record count of a finite run; a bar is drawn
    /// only when it is known and stderr is a terminal, since a bar in a log
    /// file is noise.
    pub fn new(total: Option<u64>) -> Self {
        use std::io::IsTerminal;
        let bar = total
            .filter(|_| std::io::stderr().is_terminal())
            .map(|total| {
                let bar = ProgressBar::new(total);
                if let Ok(style) = ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} records committed ({percent}%), eta {eta}",
                ) {
                    bar.set_style(style);
                }
                bar
            });
        Progress {
            records_sent: AtomicU64::new(0),
            records_committed: AtomicU64::new(0),
            transactions_committed: AtomicU64::new(0),
            transactions_aborted: AtomicU64::new(0),
            resubmissions_committed: AtomicU64::new(0),
            bar,
        }
    }

    /// A record was handed to Kafka for the first time (resends after an
    /// abort are not counted again).
    pub fn sent(&self) {
        self.records_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// A transaction of `records` records (of which `resubmissions` were
    /// deliberate resubmissions) committed after `duration`.
    pub fn committed(&self, records: u64, resubmissions: u64, duration: Duration) {
        let total = self.records_committed.fetch_add(records, Ordering::Relaxed) + records;
        self.transactions_committed.fetch_add(1, Ordering::Relaxed);
        self.resubmissions_committed
            .fetch_add(resubmissions, Ordering::Relaxed);
        metrics::counter!(METRIC_RECORDS).increment(records);
        metrics::counter!(METRIC_TRANSACTIONS, "result" => "committed").increment(1);
        metrics::histogram!(METRIC_TRANSACTION_SECONDS).record(duration.as_secs_f64());
        self.draw(total);
    }

    pub fn aborted(&self) {
        self.transactions_aborted.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(METRIC_TRANSACTIONS, "result" => "aborted").increment(1);
    }

    /// Without transactions: the broker has acknowledged `records` records
    /// in all, `resubmissions` of them deliberate resubmissions.
    pub fn delivered(&self, records: u64, resubmissions: u64) {
        self.records_committed.store(records, Ordering::Relaxed);
        self.resubmissions_committed
            .store(resubmissions, Ordering::Relaxed);
        metrics::counter!(METRIC_RECORDS).absolute(records);
        self.draw(records);
    }

    fn draw(&self, records_committed: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(records_committed);
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            records_sent: self.records_sent.load(Ordering::Relaxed),
            records_committed: self.records_committed.load(Ordering::Relaxed),
            transactions_committed: self.transactions_committed.load(Ordering::Relaxed),
            transactions_aborted: self.transactions_aborted.load(Ordering::Relaxed),
            resubmissions_committed: self.resubmissions_committed.load(Ordering::Relaxed),
        }
    }

    /// Logs one progress line every `every`, until dropped (the caller
    /// aborts the task).
    pub async fn report(&self, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick completes at once; the first line is due after `every`.
        ticker.tick().await;
        let mut last = (Instant::now(), self.counts().records_committed);
        loop {
            ticker.tick().await;
            let counts = self.counts();
            let now = Instant::now();
            let rate = per_second(counts.records_committed - last.1, now - last.0);
            last = (now, counts.records_committed);
            let log = || {
                info!(
                    records_sent = counts.records_sent,
                    records_committed = counts.records_committed,
                    transactions_committed = counts.transactions_committed,
                    transactions_aborted = counts.transactions_aborted,
                    rate = rate.round() as u64,
                    "Progress."
                );
            };
            match &self.bar {
                Some(bar) => bar.suspend(log),
                None => log(),
            }
        }
    }

    /// Removes the bar so that the summary line is not drawn over.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Records per second, 0 for an empty interval.
pub fn per_second(records: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        records as f64 / seconds
    } else {
        0.0
    }
}

/// The request to stop, set from the async side (signal, failure) and
/// watched by the sending thread, which can also sleep on it.
#[derive(Debug, Default)]
pub struct StopSignal {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl StopSignal {
    pub fn set(&self) {
        *self.lock() = true;
        self.wake.notify_all();
    }

    pub fn is_set(&self) -> bool {
        *self.lock()
    }

    /// Sleeps until `until` or until a stop is requested, whichever is
    /// first; true when stopping.
    pub fn wait_until(&self, until: Instant) -> bool {
        let mut stopped = self.lock();
        loop {
            if *stopped {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            stopped = match self.wake.wait_timeout(stopped, until - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        // The flag is a plain bool: a panic elsewhere cannot leave it torn.
        self.stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_stop_wakes_a_sleeper_at_once() {
        let stop = Arc::new(StopSignal::default());
        assert!(!stop.wait_until(Instant::now() + Duration::from_millis(10)));
        let sleeper = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || stop.wait_until(Instant::now() + Duration::from_secs(600)))
        };
        stop.set();
        assert!(sleeper.join().unwrap());
        assert!(stop.is_set());
    }
}
