//! Opening the sled directory: retried while another handle lets go of its
//! lock, and sled's errors told apart (locked, corrupt, other).

use std::path::Path;
use std::time::{Duration, Instant};

use super::StoreError;

/// How long `open` keeps trying a locked directory. sled releases its
/// directory lock when the last handle is dropped, and its background
/// threads may hold one a little longer than the `Store`: a shard restarted
/// in the same process (tests) would otherwise find its own old lock.
const LOCKED_RETRY_FOR: Duration = Duration::from_secs(3);

pub(super) fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + LOCKED_RETRY_FOR;
    loop {
        let opened = sled::Config::new()
            .path(path)
            // Durability comes from the explicit flush of every batch; a
            // background flusher would only add I/O between them.
            .flush_every_ms(None)
            .open();
        let error = match opened {
            Ok(db) => return Ok(db),
            // Tried again until the deadline: a lock whose holder lets go
            // meanwhile (the probe below may already find it free), or an
            // I/O error that will repeat and is reported then.
            Err(sled::Error::Io(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(sled::Error::Io(_)) if is_locked(path) => StoreError::Locked(path.to_owned()),
            Err(source @ sled::Error::Corruption { .. }) => StoreError::Corrupt {
                path: path.to_owned(),
                detail: source.to_string(),
            },
            Err(source) => StoreError::Sled {
                path: path.to_owned(),
                source,
            },
        };
        return Err(error);
    }
}

/// Whether another handle holds sled's directory lock. sled reports that
/// only as an `io::Error` of kind `Other` with a message, so ask the system
/// the same question sled asks: a non-blocking exclusive `flock` of the
/// directory's `db` file (released again when the probe's file closes).
fn is_locked(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path.join("db")) else {
        return false;
    };
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        == Err(rustix::io::Errno::WOULDBLOCK)
}
