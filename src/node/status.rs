//! `GET /status`: what a replica knows about itself and its peers, probed now.

use tokio::task::JoinSet;

use crate::core::cluster::ReplicaId;
use crate::error::Result;
use crate::net::protocol::{PeerStatus, StatusResponse};
use crate::node::replica::Replica;

impl Replica {
    /// Id, cluster id, members, key count, and per peer: outbox depth, reachability and
    /// whether it is in the same cluster (its `/health` says its cluster id; probed now).
    pub async fn status(&self) -> Result<StatusResponse> {
        let mut probes = JoinSet::new();
        for link in self.links() {
            let (peers, member) = (self.peers().clone(), link.member.clone());
            probes.spawn(async move { (member.id, peers.probe(&member).await) });
        }
        let mut probed = std::collections::HashMap::new();
        while let Some(Ok((id, cluster))) = probes.join_next().await {
            probed.insert(id, cluster);
        }
        let peer_ids: Vec<ReplicaId> = self.links().iter().map(|l| l.member.id).collect();
        let (depths, keys) = self
            .blocking(move |store| {
                let depths = peer_ids.iter().map(|&id| store.outbox_depth(id)).collect::<Result<Vec<_>>>()?;
                Ok((depths, store.key_count()?))
            })
            .await?;
        let peers = self
            .links()
            .iter()
            .zip(depths)
            .map(|(link, outbox_depth)| {
                let probe = probed.get(&link.member.id).cloned().flatten();
                let cluster = probe.clone().flatten();
                let refusal = link.membership_refusal();
                let same_cluster = match (&cluster, &refusal) {
                    (_, Some(_)) => Some(false),
                    (Some(c), None) => Some(c == self.cluster_id()),
                    (None, None) => None,
                };
                PeerStatus {
                    id: link.member.id,
                    address: link.member.address(),
                    outbox_depth,
                    reachable: probe.is_some(),
                    cluster,
                    same_cluster,
                    membership_refusal: refusal,
                }
            })
            .collect();
        Ok(StatusResponse {
            replica: self.id(),
            n: self.layout().n(),
            cluster: self.cluster_id().to_string(),
            members: self.layout().members().to_vec(),
            peers,
            keys,
            recovering: self.is_recovering(),
            health: Some(self.readiness().await.0.to_string()),
        })
    }

    /// The readiness verdict `/readyz` answers and `/status` carries: `ok`; `recovering` (reads
    /// only, writes refused); `unhealthy` (the store is failing) — with the reason when not ok.
    pub async fn readiness(&self) -> (&'static str, Option<String>) {
        match self.storage_problem().await {
            Some(problem) => ("unhealthy", Some(format!("the store is failing: {problem}"))),
            None if self.is_recovering() => ("recovering", Some("recovering from peers: writes are refused".into())),
            None => ("ok", None),
        }
    }
}
