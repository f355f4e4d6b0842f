//! Local ports for the servers a test or a demo starts in other processes
//! (the shards' HTTP servers). The port is chosen here and bound later by
//! the child, so two races are closed:
//!
//! - Two pipelines of one process (tests run in parallel threads) never
//!   get the same port: each call walks on from where the last one ended.
//! - No outgoing connection takes the port meanwhile: ports come from below
//!   the kernel's ephemeral range, where connect() never picks its source
//!   ports. A plain `bind(0)` port comes from inside that range, and a
//!   Kafka client's connection could take it before the shard binds it.
//!
//! A port some other process holds is skipped by trying to bind it first.

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out: clear of well-known services.
const LOWEST: u16 = 10_000;
/// Ports from here up are left alone even when the ephemeral range starts
/// higher: Kubernetes' NodePort range begins at 30000.
const CEILING: u16 = 30_000;
/// Where the ephemeral range starts when the kernel does not say.
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

/// A local port that was free a moment ago and that this process has not
/// handed out before.
pub fn free_local_port() -> io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let highest = ephemeral_start().min(CEILING);
    if highest <= LOWEST {
        // The ephemeral range covers everything: the kernel's pick is as
        // good as any.
        return Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port());
    }
    let span = u32::from(highest - LOWEST);
    // Processes start at different places, so that a test binary and a
    // demo running side by side rarely try the same ports.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOWEST + u16::try_from((start + step) % span).expect("below the span");
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!("no free local port between {LOWEST} and {highest}"),
    ))
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_not_handed_out_twice_and_stay_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_local_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        let highest = ephemeral_start().min(CEILING);
        if highest > LOWEST {
            assert!(
                ports.iter().all(|port| (LOWEST..highest).contains(port)),
                "{ports:?}"
            );
        }
    }
}
