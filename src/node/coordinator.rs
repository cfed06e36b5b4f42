//! Tunable consistency per request, Dynamo's N/R/W: `PUT ?w=K` and `GET ?r=K`.
//!
//! ```text
//!   PUT /kv/k?w=3   commit here (durable, queued for every peer as always)
//!                   ── push the key's set to every peer at once ──► wait for 2 more acks
//!                   3 acks within QUORUM_TIMEOUT → 200 · fewer → 503 "durable here, queued, J of 3"
//!
//!   GET /kv/k?r=3   read here + ask every peer for its set ──► the first 2 answers
//!                   merge the 3 sets (the usual join) → answer; replicas that were behind get the
//!                   merged set (read repair: in the background for peers, at once here)
//! ```
//!
//! A failed quorum never undoes anything: the write is committed locally and its outbox marks
//! still deliver it to every peer later. The 503 only says the requested guarantee was not met
//! in time.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::Instrument;

use crate::core::clock::VectorClock;
use crate::core::cluster::{Member, ReplicaId};
use crate::core::versions::{SiblingSet, Version};
use crate::error::{Error, Result};
use crate::net::peer::{PeerError, PeerTransport};
use crate::net::protocol::{
    PeerReadRequest, PeerReadResponse, ReplicateEntry, ReplicateRequest, ReplicateResponse, WriteResponse,
};
use crate::node::decisions;
use crate::node::replica::MergeSource;
use crate::node::replica::{validate_key, Replica};
use crate::storage::store::{CachedRead, Render};

/// How long a quorum read or write waits for peers before answering 503.
pub const QUORUM_TIMEOUT: Duration = Duration::from_secs(2);

/// A client write or delete coordinated here: checks `w`, writes locally (the write rule, the
/// commit), then waits for `w` replicas if asked. The answer the API sends.
pub async fn write(
    replica: &Arc<Replica>,
    key: String,
    value: Option<String>,
    context: Option<VectorClock>,
    w: Option<usize>,
) -> Result<WriteResponse> {
    if let Some(w) = w {
        check_quorum("w", w, replica.layout().n())?;
    }
    let clock = replica.write(key.clone(), value.clone(), context).await?;
    let acks = match w {
        Some(w) => {
            // What the write left here: the new version alone (it superseded the whole set).
            let written = SiblingSet::single(Version { clock: clock.clone(), value });
            Some(write_quorum(replica, &key, &written, &clock, w).await?)
        }
        None => None,
    };
    Ok(WriteResponse { key, clock, replica: replica.id(), acks })
}

/// A client read with `?r`: the merge of `r` replicas' sets (with read repair). Without `r`,
/// see [`read_local`].
pub async fn read(replica: &Arc<Replica>, key: &str, r: usize) -> Result<SiblingSet> {
    validate_key(key)?;
    check_quorum("r", r, replica.layout().n())?;
    read_quorum(replica, key, r).await
}

/// A read of this replica alone (no `?r`) through the store's read cache: the answer `render`
/// made of the key's set, and whether the key is absent or deleted.
pub async fn read_local(replica: &Arc<Replica>, key: &str, render: Render) -> Result<Arc<CachedRead>> {
    validate_key(key)?;
    replica.read_cached(key, render).await
}

/// Checks a requested quorum size against N.
pub(crate) fn check_quorum(name: &str, k: usize, n: usize) -> Result<()> {
    if k == 0 || k > n {
        return Err(Error::InvalidInput(format!("{name} must be between 1 and N = {n}, got {k}")));
    }
    Ok(())
}

async fn push<P: PeerTransport>(
    peers: &P,
    peer: &Member,
    key: &str,
    set: &SiblingSet,
) -> std::result::Result<(), PeerError> {
    let body = ReplicateRequest {
        from: peers.from(),
        entries: vec![ReplicateEntry { key: key.to_string(), versions: set.versions().to_vec() }],
    };
    peers.call::<_, ReplicateResponse>(peer, "/replicate", &body, Some(QUORUM_TIMEOUT)).await.map(drop)
}

/// After a local write of `key` (which left `written`), pushes it to every peer and waits for
/// `w - 1` acks.
pub(crate) async fn write_quorum(
    replica: &Arc<Replica>,
    key: &str,
    written: &SiblingSet,
    clock: &VectorClock,
    w: usize,
) -> Result<usize> {
    write_quorum_via(replica, replica.peers(), key, written, clock, w).await
}

/// [`write_quorum`] through the given transport.
pub(crate) async fn write_quorum_via<P: PeerTransport>(
    replica: &Arc<Replica>,
    peers: &P,
    key: &str,
    written: &SiblingSet,
    clock: &VectorClock,
    w: usize,
) -> Result<usize> {
    if w <= 1 {
        return Ok(1);
    }
    let set = written.clone();
    let mut pushes = JoinSet::new();
    for peer in replica.layout().peers() {
        let (peer, set, key, peers) = (peer.clone(), set.clone(), key.to_string(), peers.clone());
        pushes.spawn(async move { push(&peers, &peer, &key, &set).await.is_ok() }.in_current_span());
    }
    let mut acks = 1; // this replica: already durable
    let deadline = tokio::time::Instant::now() + QUORUM_TIMEOUT;
    while acks < w {
        match tokio::time::timeout_at(deadline, pushes.join_next()).await {
            Ok(Some(Ok(true))) => acks += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    // Stragglers keep going in the background; the outbox covers whoever they miss.
    pushes.detach_all();
    if acks < w {
        return Err(Error::QuorumNotMet {
            message: format!(
                "w={w} not met: only {acks} of {w} replicas acknowledged (the others failed or did not answer \
                 within {QUORUM_TIMEOUT:?}); the write ({clock}) is durable at replica {} and queued for the others, \
                 which will get it later",
                replica.id()
            ),
            clock: clock.clone(),
        });
    }
    Ok(acks)
}

async fn peer_read<P: PeerTransport>(
    peers: &P,
    peer: &Member,
    key: &str,
) -> std::result::Result<SiblingSet, PeerError> {
    let body = PeerReadRequest { from: peers.from(), key: key.to_string() };
    let answer: PeerReadResponse = peers.call(peer, "/peer/read", &body, Some(QUORUM_TIMEOUT)).await?;
    Ok(SiblingSet::from_versions(answer.versions))
}

/// Reads `key` from `r` replicas (this one first), merges their sets, repairs those behind.
pub(crate) async fn read_quorum(replica: &Arc<Replica>, key: &str, r: usize) -> Result<SiblingSet> {
    read_quorum_via(replica, replica.peers(), key, r).await
}

/// [`read_quorum`] through the given transport.
pub(crate) async fn read_quorum_via<P: PeerTransport>(
    replica: &Arc<Replica>,
    peers: &P,
    key: &str,
    r: usize,
) -> Result<SiblingSet> {
    let local = replica.read(key.to_string()).await?;
    if r <= 1 {
        return Ok(local);
    }
    let mut reads = JoinSet::new();
    for peer in replica.layout().peers().cloned() {
        let (peers, key) = (peers.clone(), key.to_string());
        reads.spawn(
            async move {
                let set = peer_read(&peers, &peer, &key).await;
                (peer, set)
            }
            .in_current_span(),
        );
    }
    let mut answers: Vec<(Member, SiblingSet)> = Vec::new();
    let deadline = tokio::time::Instant::now() + QUORUM_TIMEOUT;
    while answers.len() + 1 < r {
        match tokio::time::timeout_at(deadline, reads.join_next()).await {
            Ok(Some(Ok((peer, Ok(set))))) => answers.push((peer, set)),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    reads.abort_all();
    if answers.len() + 1 < r {
        return Err(Error::Unavailable(format!(
            "r={r} not met: only {} of {r} replicas answered within {QUORUM_TIMEOUT:?}",
            answers.len() + 1
        )));
    }
    let mut merged = local.clone();
    for (_, set) in &answers {
        merged.merge_set(set);
    }
    // Read repair: this replica at once (so the answer is what it now holds), peers in the background.
    let mut repaired: Vec<ReplicaId> = Vec::new();
    if merged != local {
        let entry = ReplicateEntry { key: key.to_string(), versions: merged.versions().to_vec() };
        replica.merge_pulled(MergeSource::ReadRepair, vec![entry]).await?;
        repaired.push(replica.id());
    }
    for (peer, set) in answers {
        if set != merged {
            repaired.push(peer.id);
            let (peers, key, merged) = (peers.clone(), key.to_string(), merged.clone());
            tokio::spawn(async move { push(&peers, &peer, &key, &merged).await }.in_current_span());
        }
    }
    if !repaired.is_empty() {
        decisions::read_repair(key, r, &repaired);
    }
    Ok(merged)
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
