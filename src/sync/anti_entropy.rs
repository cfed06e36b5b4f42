//! Anti-entropy: replicas compare their contents by digest and pull what differs.
//!
//! The outbox only repairs what it remembers. A mark can be lost (an outbox cleared by an
//! operator, a corrupted file) and then the write it stood for never ships. Anti-entropy closes
//! that gap the way Dynamo and Riak do with Merkle trees, in a flatter form:
//!
//! ```text
//!   replica A (puller)                                   replica P (a peer, round-robin)
//!   digests of its keys in 64 hash ranges
//!                          ── POST /peer/digest ──►      digests of its keys in 64 ranges
//!   compare: ranges 7 and 41 differ
//!                          ── POST /peer/entries ──►     every key in ranges 7 and 41
//!   merge each with the usual join (at most --anti-entropy-max-keys per round)
//! ```
//!
//! A range's digest is the XOR of a hash of (key, canonical sibling set) over its keys, so equal
//! contents give equal digests whatever the write order. The store keeps the 64 digests current
//! with every commit (`storage/digest.rs`), so a round hashes nothing. Each replica pulls in its own rounds, so
//! a difference between A and P is repaired on A by A's round and on P by P's. The merge is the
//! same join as replication: pulling a key that is already up to date changes nothing.
//!
//! Cost per round: 64 digests read from memory on each side (a store scans its keys once, at the
//! first digest request after it opens or reopens), 64 digests on the wire, then only the keys of differing
//! ranges (bounded by a key count and a byte budget per round).

use std::collections::HashSet;
use std::sync::Arc;

use rand::Rng;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::core::cluster::Member;

use crate::error::{Error, Result};
use crate::net::peer::{PeerError, PeerTransport};
use crate::net::protocol::{DigestRequest, DigestResponse, EntriesRequest, EntriesResponse, AE_RANGES};
use crate::net::protocol::{ReplicateEntry, AE_MAX_RESPONSE_BYTES};
use crate::node::replica::MergeSource;
use crate::node::replica::{AntiEntropyConfig, Replica};

/// Why a pull from a peer (an anti-entropy round, or recovery) failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The peer did not answer, or refused.
    #[error("{0}")]
    Peer(#[from] PeerError),
    /// This replica's store failed.
    #[error("{0}")]
    Local(#[from] Error),
    /// The peer's answer made no sense.
    #[error("{0}")]
    Protocol(String),
}

/// What one round did.
#[derive(Debug, Clone, Default)]
pub(crate) struct RoundReport {
    /// Ranges whose digests differed.
    pub differing_ranges: usize,
    /// Keys received from the peer.
    pub pulled: usize,
    /// Keys whose state changed here.
    pub repaired: usize,
    /// True when the peer had more keys in those ranges than this round could take.
    pub truncated: bool,
}

/// One round against `peer`: compare digests, pull the keys of the ranges that differ, merge.
///
/// `cursor` carries a large repair across rounds: when the peer's answer was cut short, the next
/// round against that peer asks for the keys after the last one received, and starts over once a
/// round gets everything.
pub(crate) async fn pull_round(
    replica: &Replica,
    peer: &Member,
    max_keys: usize,
    cursor: &mut Option<String>,
) -> std::result::Result<RoundReport, PullError> {
    let mine = range_digests(replica, AE_RANGES).await?;
    let theirs: DigestResponse = replica
        .peers()
        .call(peer, "/peer/digest", &DigestRequest { from: replica.id(), ranges: AE_RANGES }, None)
        .await?;
    if theirs.digests.len() != AE_RANGES {
        return Err(PullError::Protocol(format!("peer sent {} digests for {AE_RANGES} ranges", theirs.digests.len())));
    }
    let differing: Vec<usize> = (0..AE_RANGES).filter(|&i| hex::encode(mine[i]) != theirs.digests[i]).collect();
    let mut report = RoundReport { differing_ranges: differing.len(), ..RoundReport::default() };
    if differing.is_empty() {
        *cursor = None;
        return Ok(report);
    }
    let request =
        EntriesRequest { from: replica.id(), of: AE_RANGES, ranges: differing, limit: max_keys, after: cursor.clone() };
    let answer: EntriesResponse = replica.peers().call(peer, "/peer/entries", &request, None).await?;
    report.pulled = answer.entries.len();
    report.truncated = answer.truncated;
    *cursor = match (answer.truncated, answer.entries.last()) {
        (true, Some(last)) => Some(last.key.clone()),
        _ => None,
    };
    report.repaired = replica.merge_pulled(MergeSource::AntiEntropy(peer.id), answer.entries).await?;
    metrics::counter!("vkv_anti_entropy_repairs_total").increment(report.repaired as u64);
    Ok(report)
}

/// The background task: a round every `period` (jittered), peers in turn, until `stop`.
pub async fn run(replica: Arc<Replica>, config: AntiEntropyConfig, mut stop: watch::Receiver<bool>) {
    let peers: Vec<Member> = replica.layout().peers().cloned().collect();
    if peers.is_empty() {
        return;
    }
    let mut next = rand::rng().random_range(0..peers.len());
    let mut cursors: Vec<Option<String>> = vec![None; peers.len()];
    loop {
        let jitter = rand::rng().random_range(0.5..1.5);
        tokio::select! {
            _ = tokio::time::sleep(config.period.mul_f64(jitter)) => {}
            _ = stop.changed() => break,
        }
        let index = next % peers.len();
        let peer = &peers[index];
        next += 1;
        let round = tokio::select! {
            r = pull_round(&replica, peer, config.max_keys_per_round, &mut cursors[index]) => r,
            _ = stop.changed() => break,
        };
        match round {
            // Ranges that differ only because this replica has more: the peer's own rounds fix it.
            Ok(r) if r.repaired == 0 => {
                debug!("from replica {}: {} ranges differ, nothing to take", peer.id, r.differing_ranges)
            }
            Ok(r) => info!(
                "from replica {}: {} of {AE_RANGES} ranges differed; pulled {} key(s), \
                 repaired {} here{}",
                peer.id,
                r.differing_ranges,
                r.pulled,
                r.repaired,
                if r.truncated { " (more next round)" } else { "" }
            ),
            // A down peer is the senders' news to report; here it would repeat every period.
            Err(e) => debug!("round with replica {} failed: {e}", peer.id),
        }
    }
}

pub use crate::storage::digest::range_of;

// The store keeps digests for the count the rounds ask for.
const _: () = assert!(AE_RANGES == crate::storage::digest::RANGES);

/// A replica's digests: the key space split into `ranges` hash ranges, each summarised by the
/// XOR of a hash of (key, stored set) over its keys. Stored sets are canonical, so two replicas
/// holding the same versions get the same digests; XOR makes a range's digest independent of
/// the write order. For the rounds' [`AE_RANGES`] the store keeps them current with every commit
/// (one scan after it opens, and after a reopen); any other count takes one pass over the keys,
/// on the blocking pool.
pub async fn range_digests(replica: &Replica, ranges: usize) -> Result<Vec<crate::storage::digest::Digest>> {
    replica.blocking(move |store| store.range_digests(ranges)).await
}

/// Most keys one anti-entropy answer carries, whatever the puller asks for.
pub(crate) const MAX_AE_KEYS_PER_ANSWER: usize = 100_000;

/// The serving side: answers a peer's digest request.
pub(crate) async fn serve_digest(replica: &Replica, request: DigestRequest) -> Result<DigestResponse> {
    replica.check_peer(request.from, "digest request")?;
    requested_ranges(request.ranges, &[]).map_err(Error::InvalidInput)?;
    let digests = range_digests(replica, request.ranges).await?;
    Ok(DigestResponse { digests: digests.iter().map(hex::encode).collect() })
}

/// The serving side: answers a peer's request for the keys of some hash ranges.
pub(crate) async fn serve_entries(replica: &Replica, request: EntriesRequest) -> Result<EntriesResponse> {
    replica.check_peer(request.from, "entries request")?;
    let ranges = requested_ranges(request.of, &request.ranges).map_err(Error::InvalidInput)?;
    let (of, limit, after) = (request.of, request.limit.min(MAX_AE_KEYS_PER_ANSWER), request.after);
    let (entries, truncated) = replica
        .blocking(move |store| {
            let wanted = |key: &str| ranges.contains(&range_of(key, of));
            store.entries_where(wanted, after.as_deref(), limit, AE_MAX_RESPONSE_BYTES)
        })
        .await?;
    let entries =
        entries.into_iter().map(|(key, set)| ReplicateEntry { key, versions: set.versions().to_vec() }).collect();
    Ok(EntriesResponse { entries, truncated })
}

/// Ranges requested by a peer, validated.
pub fn requested_ranges(of: usize, ranges: &[usize]) -> Result<HashSet<usize>, String> {
    if of == 0 || of > crate::net::protocol::MAX_AE_RANGES {
        return Err(format!("ranges must be between 1 and {}", crate::net::protocol::MAX_AE_RANGES));
    }
    if let Some(bad) = ranges.iter().find(|&&r| r >= of) {
        return Err(format!("range {bad} is outside 0..{of}"));
    }
    Ok(ranges.iter().copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::VectorClock;
    use crate::core::versions::Version;
    use crate::node::replica::test_replica as replica;

    fn entry(key: &str, value: &str, clock: &[u64]) -> ReplicateEntry {
        ReplicateEntry { key: key.into(), versions: vec![Version::value(value, VectorClock::from(clock.to_vec()))] }
    }

    #[tokio::test]
    async fn equal_contents_give_equal_digests_and_a_difference_shows_in_its_range_only() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (replica(d1.path(), 7000), replica(d2.path(), 7001));
        let entries: Vec<ReplicateEntry> = (0..50).map(|i| entry(&format!("k{i}"), "v", &[0, 0, 1])).collect();
        a.merge_pulled(MergeSource::AntiEntropy(3), entries.clone()).await.unwrap();
        b.merge_pulled(MergeSource::AntiEntropy(3), entries.into_iter().rev().collect()).await.unwrap();
        assert_eq!(range_digests(&a, 16).await.unwrap(), range_digests(&b, 16).await.unwrap(), "order does not matter");
        b.merge_pulled(MergeSource::AntiEntropy(3), vec![entry("k7", "w", &[0, 0, 2])]).await.unwrap();
        let (da, db) = (range_digests(&a, 16).await.unwrap(), range_digests(&b, 16).await.unwrap());
        let differing: Vec<usize> = (0..16).filter(|&i| da[i] != db[i]).collect();
        assert_eq!(differing, vec![range_of("k7", 16)]);
        let request = EntriesRequest { from: 1, of: 16, ranges: differing, limit: 1000, after: None };
        let answer = serve_entries(&b, request).await.unwrap();
        assert!(!answer.truncated);
        assert!(answer.entries.iter().any(|e| e.key == "k7"));
        assert!(answer.entries.iter().all(|e| range_of(&e.key, 16) == range_of("k7", 16)));
        let all = EntriesRequest { from: 2, of: 16, ranges: (0..16).collect(), limit: 10, after: None };
        let first = serve_entries(&a, all.clone()).await.unwrap();
        assert_eq!((first.entries.len(), first.truncated), (10, true));
        let last = first.entries.last().unwrap().key.clone();
        let rest = serve_entries(&a, EntriesRequest { after: Some(last.clone()), limit: 100, ..all }).await.unwrap();
        assert_eq!((rest.entries.len(), rest.truncated), (40, false), "paging after the last key returns the rest");
        assert!(rest.entries.iter().all(|e| e.key > last));
    }
}
