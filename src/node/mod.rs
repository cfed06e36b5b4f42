//! The replica: validates and applies client writes, merges what peers send, logs every decision
//! (`replica`), and coordinates requests that involve other replicas, `?w=K` and `?r=K`
//! (`coordinator`).
//!
//! May use: `core`, `error`, `storage`, `net::protocol`, `net::auth`, `net::peer`. Never `sync`:
//! the background tasks use the node, not the other way round.

pub mod coordinator;
pub mod decisions;
pub mod link;
pub mod replica;
mod status;
mod validate;
