//! The one shutdown signal of every long-running binary: the first SIGTERM
//! (what Kubernetes and Docker send) or SIGINT (Ctrl-C).

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

/// Installs the handlers now, so that a signal that arrives while the
/// binary is still starting (reaching the broker, recovering) is not lost,
/// and returns a future that resolves on the first of them. Call it from
/// within a Tokio runtime, as early as the runtime exists.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
