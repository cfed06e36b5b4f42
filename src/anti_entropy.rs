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
//! A range's digest is the XOR of SHA-256(key, canonical sibling set) over its keys, so equal
//! contents give equal digests whatever the write order. Each replica pulls in its own rounds, so
//! a difference between A and P is repaired on A by A's round and on P by P's. The merge is the
//! same join as replication: pulling a key that is already up to date changes nothing.
//!
//! Cost per round: one scan of the local keys, one of the peer's, 64 digests on the wire, then
//! only the keys of differing ranges (bounded by a key count and a byte budget per round).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cluster::Member;
use crate::protocol::{DigestRequest, DigestResponse, EntriesRequest, EntriesResponse, AE_RANGES};
use crate::replica::Replica;

/// Settings of the anti-entropy task.
#[derive(Debug, Clone)]
pub struct AntiEntropyConfig {
    /// Mean time between rounds (each round talks to one peer, round-robin). Jittered ±50%.
    pub period: Duration,
    /// Most keys pulled in one round: the bandwidth bound. Larger repairs take several rounds.
    pub max_keys_per_round: usize,
}

/// What one round did.
#[derive(Debug, Clone, Default)]
pub struct RoundReport {
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
pub async fn pull_round(
    replica: &Replica,
    peer: &Member,
    max_keys: usize,
    cursor: &mut Option<String>,
) -> Result<RoundReport, String> {
    let mine = replica.range_digests(AE_RANGES).await.map_err(|e| e.to_string())?;
    let theirs: DigestResponse =
        replica.call_peer(peer, "/peer/digest", &DigestRequest { from: replica.id(), ranges: AE_RANGES }, None).await?;
    if theirs.digests.len() != AE_RANGES {
        return Err(format!("peer sent {} digests for {AE_RANGES} ranges", theirs.digests.len()));
    }
    let differing: Vec<usize> = (0..AE_RANGES).filter(|&i| hex::encode(mine[i]) != theirs.digests[i]).collect();
    let mut report = RoundReport { differing_ranges: differing.len(), ..RoundReport::default() };
    if differing.is_empty() {
        *cursor = None;
        return Ok(report);
    }
    let request =
        EntriesRequest { from: replica.id(), of: AE_RANGES, ranges: differing, limit: max_keys, after: cursor.clone() };
    let answer: EntriesResponse = replica.call_peer(peer, "/peer/entries", &request, None).await?;
    report.pulled = answer.entries.len();
    report.truncated = answer.truncated;
    *cursor = match (answer.truncated, answer.entries.last()) {
        (true, Some(last)) => Some(last.key.clone()),
        _ => None,
    };
    report.repaired = replica.merge_pulled(peer.id, answer.entries).await.map_err(|e| e.to_string())?;
    Ok(report)
}

/// The background task: a round every `period` (jittered), peers in turn, until `stop`.
pub async fn run(replica: Arc<Replica>, config: AntiEntropyConfig, mut stop: watch::Receiver<bool>) {
    let peers: Vec<Member> = replica.layout().peers().cloned().collect();
    if peers.is_empty() {
        return;
    }
    let me = replica.id();
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
            Ok(r) if r.repaired == 0 => debug!(
                "replica {me} ⇐ replica {} · anti-entropy: {} ranges differ, nothing to take",
                peer.id, r.differing_ranges
            ),
            Ok(r) => info!(
                "replica {me} ⇐ replica {} · anti-entropy: {} of {AE_RANGES} ranges differed; pulled {} key(s), \
                 repaired {} here{}",
                peer.id,
                r.differing_ranges,
                r.pulled,
                r.repaired,
                if r.truncated { " (more next round)" } else { "" }
            ),
            // A down peer is the senders' news to report; here it would repeat every period.
            Err(e) => debug!("replica {me} ⇐ replica {} · anti-entropy round failed: {e}", peer.id),
        }
    }
}

/// Keys one recovery request asks for (pages until a peer has sent everything).
const RECOVERY_PAGE: usize = 10_000;
/// Pause between attempts to reach peers that recovery still needs.
const RECOVERY_RETRY: Duration = Duration::from_millis(500);

/// Pulls every key `peer` holds (all ranges, page by page) and merges it. Returns the key count.
async fn full_pull(replica: &Replica, peer: &Member) -> Result<usize, String> {
    let mut after = None;
    let mut pulled = 0;
    loop {
        let request = EntriesRequest {
            from: replica.id(),
            of: AE_RANGES,
            ranges: (0..AE_RANGES).collect(),
            limit: RECOVERY_PAGE,
            after: after.clone(),
        };
        let answer: EntriesResponse = replica.call_peer(peer, "/peer/entries", &request, None).await?;
        pulled += answer.entries.len();
        let last = answer.entries.last().map(|e| e.key.clone());
        replica.merge_pulled(peer.id, answer.entries).await.map_err(|e| e.to_string())?;
        match (answer.truncated, last) {
            (true, Some(last)) => after = Some(last),
            _ => return Ok(pulled),
        }
    }
}

/// Recovery of a replica that started on an empty data dir (first start, or a lost disk).
///
/// Such a replica may have issued clock counters before, on the disk it lost; peers hold the
/// versions carrying them. A write minted now would restart its counter and be silently
/// dominated by those older versions (Riak's "kv679" data loss). So the replica first pulls
/// every key from **every** peer — a version stamped by this replica exists only at peers it
/// was sent to or that pulled it from them, so after that, every counter it ever issued is
/// known locally — and only then accepts writes (until then: 503). Peers that are down are retried
/// until they answer; the completion is recorded durably, so a crash mid-recovery resumes it.
pub async fn recover(replica: Arc<Replica>, mut stop: watch::Receiver<bool>) {
    let me = replica.id();
    let started = std::time::Instant::now();
    let mut pending: Vec<Member> = replica.layout().peers().cloned().collect();
    info!(
        "replica {me} started on an empty data dir: pulling every key from every peer before accepting \
         writes, so that no clock counter it issued before is reused"
    );
    let (mut keys, mut waiting_logged) = (0usize, false);
    while !pending.is_empty() {
        let mut unreachable = Vec::new();
        for peer in pending {
            let pulled = tokio::select! {
                r = full_pull(&replica, &peer) => r,
                _ = stop.changed() => return,
            };
            match pulled {
                Ok(n) => {
                    keys += n;
                    info!("replica {me} · recovery: pulled {n} key(s) from replica {}", peer.id);
                }
                Err(e) => {
                    if waiting_logged {
                        debug!("replica {me} · recovery: replica {} not ready: {e}", peer.id);
                    } else {
                        warn!("replica {me} · recovery: cannot pull from replica {}: {e}", peer.id);
                    }
                    unreachable.push(peer);
                }
            }
        }
        pending = unreachable;
        if !pending.is_empty() {
            if !waiting_logged {
                let ids: Vec<_> = pending.iter().map(|p| p.id).collect();
                info!("replica {me} · recovery waits for replicas {ids:?}; writes are refused (503) until then");
                waiting_logged = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(RECOVERY_RETRY) => {}
                _ = stop.changed() => return,
            }
        }
    }
    match replica.finish_recovery().await {
        Ok(()) => info!(
            "replica {me} recovered {keys} key(s) from all peers in {:.1}s; accepting writes",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => tracing::error!("replica {me} · recovery complete but cannot record it: {e}"),
    }
}

/// Ranges requested by a peer, validated.
pub fn requested_ranges(of: usize, ranges: &[usize]) -> Result<HashSet<usize>, String> {
    if of == 0 || of > crate::protocol::MAX_AE_RANGES {
        return Err(format!("ranges must be between 1 and {}", crate::protocol::MAX_AE_RANGES));
    }
    if let Some(bad) = ranges.iter().find(|&&r| r >= of) {
        return Err(format!("range {bad} is outside 0..{of}"));
    }
    Ok(ranges.iter().copied().collect())
}
