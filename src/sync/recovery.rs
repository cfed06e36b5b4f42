//! Recovery of a replica that started on an empty data dir (first start, a lost disk, or a
//! damaged store moved aside by `--repair`): a full pull from every peer before any write.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::anti_entropy::PullError;
use crate::core::cluster::Member;
use crate::net::peer::PeerTransport;
use crate::net::protocol::{EntriesRequest, EntriesResponse, AE_RANGES};
use crate::node::replica::MergeSource;
use crate::node::replica::Replica;

/// Keys one recovery request asks for (pages until a peer has sent everything).
const RECOVERY_PAGE: usize = 10_000;
const RECOVERY_RETRY: Duration = Duration::from_millis(500);

/// Pulls every key `peer` holds (all ranges, page by page) and merges it. Returns the key count.
async fn full_pull(replica: &Replica, peer: &Member) -> Result<usize, PullError> {
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
        let answer: EntriesResponse = replica.peers().call(peer, "/peer/entries", &request, None).await?;
        pulled += answer.entries.len();
        let last = answer.entries.last().map(|e| e.key.clone());
        replica.merge_pulled(MergeSource::Recovery(peer.id), answer.entries).await?;
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
    let started = std::time::Instant::now();
    let mut pending: Vec<Member> = replica.layout().peers().cloned().collect();
    info!(
        "started on an empty data dir: pulling every key from every peer before accepting \
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
                    info!("pulled {n} key(s) from replica {}", peer.id);
                }
                Err(e) => {
                    if waiting_logged {
                        debug!("replica {} not ready: {e}", peer.id);
                    } else {
                        warn!("cannot pull from replica {}: {e}", peer.id);
                    }
                    unreachable.push(peer);
                }
            }
        }
        pending = unreachable;
        if !pending.is_empty() {
            if !waiting_logged {
                let ids: Vec<_> = pending.iter().map(|p| p.id).collect();
                info!("waiting for replicas {ids:?}; writes are refused (503) until then");
                waiting_logged = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(RECOVERY_RETRY) => {}
                _ = stop.changed() => return,
            }
        }
    }
    match replica.finish_recovery().await {
        Ok(()) => {
            info!("recovered {keys} key(s) from all peers in {:.1}s; accepting writes", started.elapsed().as_secs_f64())
        }
        Err(e) => tracing::error!("recovery complete but cannot record it: {e}"),
    }
}
