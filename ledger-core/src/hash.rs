//! The hash maps and sets of the per-record paths: the state machine's
//! batch state and the store's idempotency window and caches.
//!
//! Keyed by transfer ids and account ids, they are hashed several times
//! per record, and the standard library's SipHash-1-3 was about 7% of the
//! durable core's instructions (row 4 of `txledger-bench`, under
//! callgrind). foldhash, the hasher `hashbrown` uses by default, is several
//! times cheaper on such short keys. Its seed is random per process, so
//! ids chosen by a producer cannot be precomputed to collide, which is the
//! protection these maps need: they never hold secrets.

/// A `HashMap` with foldhash; build with `default()`, not `new()`.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A `HashSet` with foldhash; build with `default()`, not `new()`.
pub type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
