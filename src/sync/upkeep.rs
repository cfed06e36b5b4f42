//! The store's upkeep, once a second: the write-ahead log emptied into the store file once it is
//! a checkpoint period old (so an idle replica holds no log to replay at its next start), the
//! file compacted after a quiet spell (see `storage/upkeep.rs`), and the store's disk use
//! published as `vkv_store_disk_bytes`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info};

use crate::node::replica::Replica;
use crate::storage::on_store;

/// Time between two ticks.
const TICK: Duration = Duration::from_secs(1);

/// The background task: a tick every [`TICK`] until `stop`.
pub async fn run(replica: Arc<Replica>, mut stop: watch::Receiver<bool>) {
    let compact_after = replica.compact_after();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => break,
        }
        match on_store(replica.store(), move |store| store.upkeep(compact_after)).await {
            Ok(done) => {
                metrics::gauge!("vkv_store_disk_bytes").set(done.disk_bytes as f64);
                if let Some(c) = done.compacted {
                    let rebuilt = if c.rebuilt { ", its keys table rebuilt in key order first" } else { "" };
                    info!(
                        "store compacted after {} s idle (no commit, no read of the file): {:.1} MB on disk before, {:.1} MB after \
                         ({:.1} MB of live pages, leaves {:.0}% full{rebuilt}), in {} ms",
                        compact_after.unwrap_or_default().as_secs(),
                        c.before as f64 / 1e6,
                        c.after as f64 / 1e6,
                        c.live as f64 / 1e6,
                        c.fill * 100.0,
                        c.took.as_millis()
                    );
                }
            }
            // The store records and logs its own faults (and reopens); a tick just tries again.
            Err(e) => debug!("store upkeep: {e}"),
        }
    }
}
