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
use tracing::info;

use crate::core::clock::VectorClock;
use crate::core::cluster::{Member, ReplicaId};
use crate::core::versions::SiblingSet;
use crate::error::{Error, Result};
use crate::net::peer::PeerError;
use crate::net::protocol::{PeerReadRequest, PeerReadResponse, ReplicateEntry, ReplicateRequest, ReplicateResponse};
use crate::node::replica::MergeSource;
use crate::node::replica::Replica;

/// How long a quorum read or write waits for peers before answering 503.
pub const QUORUM_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks a requested quorum size against N.
pub fn check_quorum(name: &str, k: usize, n: usize) -> Result<()> {
    if k == 0 || k > n {
        return Err(Error::InvalidInput(format!("{name} must be between 1 and N = {n}, got {k}")));
    }
    Ok(())
}

async fn push(replica: &Replica, peer: &Member, key: &str, set: &SiblingSet) -> std::result::Result<(), PeerError> {
    let body = ReplicateRequest {
        from: replica.id(),
        entries: vec![ReplicateEntry { key: key.to_string(), versions: set.versions().to_vec() }],
    };
    replica.peers().call::<_, ReplicateResponse>(peer, "/replicate", &body, Some(QUORUM_TIMEOUT)).await.map(drop)
}

/// After a local write of `key`, pushes its set to every peer and waits for `w - 1` acks.
pub async fn write_quorum(replica: &Arc<Replica>, key: &str, clock: &VectorClock, w: usize) -> Result<usize> {
    if w <= 1 {
        return Ok(1);
    }
    let set = replica.read(key.to_string()).await?;
    let mut pushes = JoinSet::new();
    for peer in replica.layout().peers() {
        let (peer, set, key) = (peer.clone(), set.clone(), key.to_string());
        let replica = replica.clone();
        pushes.spawn(async move { push(&replica, &peer, &key, &set).await.is_ok() });
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
                "w={w} not met: only {acks} of {w} replicas acknowledged within {QUORUM_TIMEOUT:?}; the write \
                 ({clock}) is durable at replica {} and queued for the others, which will get it later",
                replica.id()
            ),
            clock: clock.clone(),
        });
    }
    Ok(acks)
}

async fn peer_read(replica: &Replica, peer: &Member, key: &str) -> std::result::Result<SiblingSet, PeerError> {
    let body = PeerReadRequest { from: replica.id(), key: key.to_string() };
    let answer: PeerReadResponse = replica.peers().call(peer, "/peer/read", &body, Some(QUORUM_TIMEOUT)).await?;
    Ok(SiblingSet::from_versions(answer.versions))
}

/// Reads `key` from `r` replicas (this one first), merges their sets, repairs those behind.
pub async fn read_quorum(replica: &Arc<Replica>, key: &str, r: usize) -> Result<SiblingSet> {
    let local = replica.read(key.to_string()).await?;
    if r <= 1 {
        return Ok(local);
    }
    let mut reads = JoinSet::new();
    for peer in replica.layout().peers().cloned() {
        let (replica, key) = (replica.clone(), key.to_string());
        reads.spawn(async move {
            let set = peer_read(&replica, &peer, &key).await;
            (peer, set)
        });
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
            let (replica, key, merged) = (replica.clone(), key.to_string(), merged.clone());
            tokio::spawn(async move { push(&replica, &peer, &key, &merged).await });
        }
    }
    if !repaired.is_empty() {
        info!("replica {} · key {key:?} · read repair (r={r}): replicas {repaired:?} were behind", replica.id());
    }
    Ok(merged)
}
