//! vkv: a replicated, Dynamo-style key-value store with vector clocks and sibling versions.
//!
//! N replicas each hold a full copy of the data. A client writes through any replica; the
//! replica stamps the write with a vector clock, commits it to disk, answers, and ships it to
//! every peer in the background through a durable outbox. Receivers merge by clock: a newer
//! version replaces an older one, concurrent versions are kept side by side as *siblings* and
//! returned to readers, who resolve them by writing back with the context they read. A write
//! with a context replaces only the versions that context covers; if the replica holds one the
//! client never saw, the write is refused (409) with every version, so no update is silently lost.
//!
//! # Layout
//!
//! Folders are layers; a module uses only the layers below it (checked by `tests/layers.rs`,
//! which reads every `use crate::` line and compares it with this map):
//!
//! ```text
//!   bin/        vkv-server (wires a replica, its background tasks and the HTTP server), vkv (CLI)
//!   net::api    HTTP edge: axum routes, JSON errors             uses node, sync, net::{protocol,auth}
//!   net::page   the live cluster page (GET /), GET /decisions   uses node, net::api (its error)
//!   net::exporter  GET /metrics: recorder, request metrics      uses node
//!   net::openapi   GET /openapi.json, generated from the routes uses net::{api,exporter,page}, node
//!   net::server connections: timeouts, cap, bounded shutdown    uses net::protocol
//!   sync/       senders, anti-entropy (both sides), recovery    uses node, net::peer, storage
//!   node/       replica (write and merge paths, decision log),  uses net::peer, storage
//!               coordinator (?w=K, ?r=K)
//!   net::peer   the peer protocol's HTTP client, typed errors   uses net::{protocol,auth}
//!   net::client the public API's typed client (CLI, tools)      uses net::protocol
//!   net::{protocol,auth}  JSON shapes and limits; peer identity, cluster id, signatures
//!   storage/    redb: sibling sets + per-peer outboxes, group commit, fault recovery, repair,
//!               key listing
//!   error       the error type, named for the caller's next step
//!   core/       clock, versions (sibling sets, write and merge rules), cluster membership: pure
//! ```
//!
//! The harness that starts, stops and crashes real replica processes for the tests, the driver
//! and the report is a separate crate, `vkv-testkit` (`testkit/`), outside the product.
//!
//! # Example
//!
//! ```
//! use vkv::clock::VectorClock;
//! use vkv::versions::{MergeOutcome, SiblingSet, Version};
//!
//! let mut set = SiblingSet::single(Version::value("milk", VectorClock::from(vec![1, 0, 3])));
//! let outcome = set.merge(Version::value("eggs", VectorClock::from(vec![1, 1, 1])));
//! assert_eq!(outcome, MergeOutcome::Conflict { siblings: 2 });
//! assert_eq!(set.context(3), VectorClock::from(vec![1, 1, 3]));
//! ```

mod core;
pub mod error;
mod net;
mod node;
mod storage;
mod sync;

// The public surface: the modules tools and tests outside the crate use, under flat names.
pub use crate::core::{clock, cluster, show, versions};
pub use crate::net::{api, auth, client, exporter, openapi, peer, protocol, server};
pub use crate::node::{coordinator, replica};
pub use crate::storage::store;
pub use crate::sync::{anti_entropy, recovery, sender, start as start_background, Background};
pub use error::{Error, Result};
