//! A bound of our own on calls into librdkafka, which may block past the
//! timeout they are given: `rd_kafka_send_offsets_to_transaction()` waits
//! with no deadline when its coordinator request is never answered
//! (librdkafka issue 5456), and when the group coordinator's broker left the
//! cluster (issue 5511); a three-node rolling restart was enough to leave a
//! shard there for good.
//!
//! A thread that is inside C cannot be interrupted, and the client it holds
//! cannot be destroyed (destroying it waits for the same internal state).
//! Rebuilding the clients in the same process would leave that thread
//! behind, free to wake up later and write. So an overrun counts as a lost
//! producer and ends the process with [`EXIT_STUCK`]: its supervisor (a
//! StatefulSet, compose's `restart:`, the demo) starts a new incarnation,
//! whose `init_transactions` fences the old one and whose recovery at start
//! makes the restart safe, exactly as after a crash.
//!
//! One [`Watchdog`] guards one thread's calls, one at a time: the thread
//! arms it with a step name and a bound, calls, and disarms it; the
//! watchdog's own thread wakes at the armed deadline and acts if the same
//! call is still armed.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// The exit status of a process that cut off its own stuck call (75,
/// `EX_TEMPFAIL`: a temporary failure, start again). Distinct from a fatal
/// error (1) so that logs and supervisors can tell a restart that heals
/// from one that will fail again.
pub const EXIT_STUCK: u8 = 75;

/// A call that did not return within its bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overrun {
    /// Who made the call (a shard's transactional id, the producer).
    pub owner: String,
    /// The call, by librdkafka's name for it.
    pub step: &'static str,
    pub bound: Duration,
}

/// The one call armed at a time. The watchdog thread reads it afresh at
/// every wake-up, so a call re-armed meanwhile has its own deadline.
#[derive(Default)]
struct Slot {
    armed: Option<Armed>,
    closed: bool,
}

#[derive(Clone, Copy)]
struct Armed {
    step: &'static str,
    bound: Duration,
    deadline: Instant,
}

#[derive(Default)]
struct State {
    slot: Mutex<Slot>,
    wake: Condvar,
}

impl State {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Cuts off calls that overrun their bound; see the module doc.
pub struct Watchdog {
    state: Arc<State>,
}

impl Watchdog {
    /// A watchdog that logs the overrun and exits the process with
    /// [`EXIT_STUCK`].
    pub fn exiting(owner: &str) -> std::io::Result<Watchdog> {
        Watchdog::with_action(owner, |overrun| {
            tracing::error!(
                message = "A Kafka call did not return within its bound: librdkafka can block in \
                           this call past its own timeout (librdkafka issues 5456 and 5511). \
                           Exiting so that the supervisor starts a new incarnation; recovery at \
                           start makes that safe.",
                owner = %overrun.owner,
                step = overrun.step,
                bound_ms = overrun.bound.as_millis(),
                exit_status = EXIT_STUCK,
            );
            std::process::exit(i32::from(EXIT_STUCK));
        })
    }

    /// A watchdog that hands an overrun to `action`, once, on its own
    /// thread (named after `owner`); after that it guards nothing more.
    pub fn with_action(
        owner: &str,
        action: impl FnOnce(Overrun) + Send + 'static,
    ) -> std::io::Result<Watchdog> {
        let state = Arc::new(State::default());
        let watched = Arc::clone(&state);
        let owner = owner.to_owned();
        thread::Builder::new()
            .name(format!("{owner}-watchdog"))
            .spawn(move || {
                if let Some(armed) = watch(&watched) {
                    action(Overrun {
                        owner,
                        step: armed.step,
                        bound: armed.bound,
                    });
                }
            })?;
        Ok(Watchdog { state })
    }

    /// Runs `call`, cut off (by the watchdog's action) if it has not
    /// returned within `bound`. Calls are guarded one at a time: `call`
    /// must not itself call `bounded` on the same watchdog.
    pub fn bounded<T>(&self, step: &'static str, bound: Duration, call: impl FnOnce() -> T) -> T {
        {
            self.state.slot().armed = Some(Armed {
                step,
                bound,
                deadline: Instant::now() + bound,
            });
        }
        self.state.wake.notify_one();
        let result = call();
        self.state.slot().armed = None;
        result
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state.slot().closed = true;
        self.state.wake.notify_one();
    }
}

/// The watchdog thread: sleeps until the armed call's deadline (or until
/// something is armed), and returns the call that overran, or `None` once
/// the watchdog is dropped.
fn watch(state: &State) -> Option<Armed> {
    let mut slot = state.slot();
    loop {
        if slot.closed {
            return None;
        }
        slot = match slot.armed {
            None => state
                .wake
                .wait(slot)
                .unwrap_or_else(PoisonError::into_inner),
            Some(armed) => {
                let now = Instant::now();
                if now >= armed.deadline {
                    return Some(armed);
                }
                state
                    .wake
                    .wait_timeout(slot, armed.deadline.saturating_duration_since(now))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn recording(owner: &str) -> (Watchdog, mpsc::Receiver<(Overrun, Instant)>) {
        let (sender, overruns) = mpsc::channel();
        let watchdog = Watchdog::with_action(owner, move |overrun| {
            let _ = sender.send((overrun, Instant::now()));
        })
        .expect("start the watchdog");
        (watchdog, overruns)
    }

    #[test]
    fn a_call_that_never_returns_is_cut_off_at_its_bound() {
        let (watchdog, overruns) = recording("shard-7");
        let bound = Duration::from_millis(300);
        // The stuck call: a receive whose sender is kept alive and silent,
        // as a librdkafka call waiting with no deadline.
        let (_silent, never) = mpsc::channel::<()>();
        let started = Instant::now();
        let stuck = thread::spawn(move || {
            watchdog.bounded("send_offsets_to_transaction", bound, || never.recv())
        });
        let (overrun, at) = overruns
            .recv_timeout(Duration::from_secs(60))
            .expect("the watchdog must act on the overrun");
        assert_eq!(
            overrun,
            Overrun {
                owner: "shard-7".to_owned(),
                step: "send_offsets_to_transaction",
                bound,
            }
        );
        let waited = at - started;
        assert!(waited >= bound, "acted after {waited:?}, before the bound");
        assert!(!stuck.is_finished(), "the call itself is still stuck");
    }

    #[test]
    fn calls_within_their_bound_are_left_alone_and_the_next_is_armed_afresh() {
        let (watchdog, overruns) = recording("producer");
        // Many short calls whose bounds, taken together, far exceed one:
        // each call re-arms, so only a single call's time counts.
        for _ in 0..20 {
            let value = watchdog.bounded("commit_transaction", Duration::from_millis(200), || {
                thread::sleep(Duration::from_millis(20));
                7
            });
            assert_eq!(value, 7);
        }
        // Then one that overruns, named in the report.
        let (_silent, never) = mpsc::channel::<()>();
        thread::spawn(move || {
            watchdog.bounded("abort_transaction", Duration::from_millis(200), || {
                never.recv()
            })
        });
        let (overrun, _) = overruns
            .recv_timeout(Duration::from_secs(60))
            .expect("the overrun is reported");
        assert_eq!(overrun.step, "abort_transaction");
        assert!(
            overruns.try_recv().is_err(),
            "only the one overrun is reported"
        );
    }

    #[test]
    fn a_dropped_watchdog_stops_without_acting() {
        let (watchdog, overruns) = recording("shard-0");
        watchdog.bounded("begin_transaction", Duration::from_millis(50), || ());
        drop(watchdog);
        // Its action's sender is dropped with its thread: the channel closes
        // without a report.
        assert_eq!(
            overruns.recv_timeout(Duration::from_secs(60)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
