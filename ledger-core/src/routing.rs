//! Which partition, and so which shard, owns an account.
//!
//! Transfers are keyed by source account and credits by destination
//! account, and every producer here uses librdkafka's `murmur2_random`
//! partitioner (`ledger::kafka::PARTITIONER`). A tool that must find an
//! account's shard without asking every shard (`ledger query balance`)
//! therefore has to hash exactly as librdkafka does: a different hash would
//! send it to a shard that has never seen the account.
//! `ledger-cli/tests/query_routing.rs` checks this function against records
//! produced to a real broker.

/// Kafka's murmur2 (MurmurHash2, 32 bits, seed `0x9747b28c`), byte for byte
/// as librdkafka's `rd_murmur2` and the Java client's `Utils.murmur2`:
/// 4-byte blocks read little-endian, bytes taken as unsigned.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Both reference implementations mix in the length as a 32-bit int.
    let mut h = SEED ^ data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    // The reference `switch` falls through from 3 to 1 tail bytes.
    let tail = blocks.remainder();
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition librdkafka's `murmur2_random` partitioner (and the Java
/// client's default partitioner) picks for a non-empty key:
/// `(murmur2(key) & 0x7fffffff) % partitions`.
///
/// For a missing key librdkafka picks a random partition instead; account
/// ids are never empty, so every record here has a key.
///
/// # Panics
///
/// If `partitions` is not positive: a topic has at least one partition, so
/// such a count is a bug in the caller.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    assert!(
        partitions > 0,
        "a topic has at least one partition, got {partitions}"
    );
    // The mask makes the hash a non-negative i32, as the reference does.
    let positive = (murmur2(key) & 0x7fff_ffff) as i32;
    positive % partitions
}

/// The shard that owns a partition: shard `i` of `shards` owns the
/// partitions `p` with `p % shards == i` (docs/DESIGN.md, "Topics").
///
/// # Panics
///
/// If `partition` is negative or `shards` is zero: both are bugs in the
/// caller.
pub fn shard_for(partition: i32, shards: u32) -> u32 {
    assert!(shards > 0, "there is at least one shard");
    let partition = u32::try_from(partition)
        .unwrap_or_else(|_| panic!("a partition number is not negative, got {partition}"));
    partition % shards
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's own `UtilsTest.testMurmur2` (Java client),
    /// confirmed with `Utils.murmur2` of kafka-clients 4.1.1 in jshell. The
    /// keys cover tails of 0 to 3 bytes and several blocks.
    const JAVA_VECTORS: [(&[u8], i32); 6] = [
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
    ];

    #[test]
    fn murmur2_matches_the_java_client() {
        for (key, expected) in JAVA_VECTORS {
            assert_eq!(
                murmur2(key) as i32,
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn partitions_match_the_java_client() {
        // From `Utils.toPositive(Utils.murmur2(key)) % n` in jshell, as above;
        // the last key has bytes >= 0x80, which must not be sign-extended.
        let cases: [(&[u8], i32, i32); 5] = [
            (b"world", 6, 4),
            (b"acc-000001", 6, 2),
            (b"acc-000042", 13, 3),
            (b"abcde", 13, 12),
            (&[0xff, 0x80, 0x7f, 0x00, 0xc3, 0xa9, 0x01], 6, 5),
        ];
        for (key, partitions, expected) in cases {
            assert_eq!(partition_for(key, partitions), expected, "{key:?}");
        }
    }

    #[test]
    fn shards_own_partitions_round_robin() {
        let owners: Vec<u32> = (0..6).map(|p| shard_for(p, 4)).collect();
        assert_eq!(owners, [0, 1, 2, 3, 0, 1]);
        assert_eq!(shard_for(5, 1), 0);
    }
}
