//! Background convergence: one sender per peer draining its outbox (`sender`), periodic digest
//! comparison (`anti_entropy`, both the puller's and the server's side), and the full pull of a
//! replica that starts on an empty data dir (`recovery`); and the store's upkeep (`upkeep`: the
//! idle checkpoint and compaction). [`start`] wires them for one replica.
//!
//! May use: `core`, `error`, `storage`, `net::protocol`, `net::auth`, `net::peer`, `node`.

pub mod anti_entropy;
mod progress;
pub mod recovery;
pub mod sender;
mod upkeep;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{warn, Instrument};

use crate::node::replica::Replica;

/// Background tasks of a replica, stopped together.
pub struct Background {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Background {
    /// Signals every task to stop and waits up to `grace` for them.
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(grace, async { while self.tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!("background tasks did not stop within {grace:?}; aborting them");
            self.tasks.abort_all();
        }
    }
}

/// Starts a replica's background tasks: one sender per peer, the recovery of an empty data dir
/// if it needs one, the anti-entropy rounds if configured, the store's upkeep, and the
/// announcement to its peers.
pub fn start(replica: &Arc<Replica>) -> Background {
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for link in replica.links() {
        let sender = sender::Sender::new(replica.peers().clone(), replica.store().clone(), link.clone());
        let span = tracing::info_span!("sender", to = link.member.id);
        tasks.spawn(sender.run(stop_rx.clone()).instrument(span));
    }
    if replica.is_recovering() {
        tasks.spawn(recovery::recover(replica.clone(), stop_rx.clone()).instrument(tracing::info_span!("recovery")));
    }
    if let Some(config) = replica.anti_entropy_config().cloned() {
        let span = tracing::info_span!("anti_entropy");
        tasks.spawn(anti_entropy::run(replica.clone(), config, stop_rx.clone()).instrument(span));
    }
    tasks.spawn(upkeep::run(replica.clone(), stop_rx.clone()).instrument(tracing::info_span!("upkeep")));
    let peers = replica.layout().peers().cloned().collect();
    let mut announce_stop = stop_rx;
    let hello = sender::announce(peers, replica.peers().clone());
    tasks.spawn(
        async move {
            tokio::select! {
                _ = hello => {}
                _ = announce_stop.changed() => {}
            }
        }
        .in_current_span(),
    );
    Background { stop, tasks }
}
