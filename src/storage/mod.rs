//! Durable state: one redb file per replica holding the sibling sets and the per-peer outboxes,
//! committed together and made durable by a write-ahead log; fault recording, reopening and
//! repair of that file.
//!
//! Owns: the store file and everything written to it. Synchronous: callers run it on the
//! blocking pool. May use: `core`, `error`.

mod cache;
mod commit;
pub mod digest;
mod file;
mod listing;
pub mod store;
mod upkeep;
mod wal;

use std::sync::Arc;

use crate::error::{Error, Result};
use store::Store;

/// Runs synchronous store work on tokio's blocking pool (redb calls block on disk). The task
/// runs to its end even if the awaiting future is dropped.
pub(crate) async fn on_store<T: Send + 'static>(
    store: &Arc<Store>,
    work: impl FnOnce(&Store) -> Result<T> + Send + 'static,
) -> Result<T> {
    let store = store.clone();
    // The caller's span (the replica's) goes along, so the store's log lines say whose they are.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| work(&store)))
        .await
        .map_err(|e| Error::Storage(format!("storage task failed: {e}")))?
}

/// What an async caller does with a [`store::Lead`] from `Store::submit*`: if it is told to
/// lead, the group commits run on the blocking pool (in the caller's span); it does not wait.
pub(crate) fn lead_if_told(store: &Arc<Store>, lead: store::Lead) {
    if lead == store::Lead::Yours {
        let (store, span) = (store.clone(), tracing::Span::current());
        tokio::task::spawn_blocking(move || span.in_scope(|| store.lead()));
    }
}
