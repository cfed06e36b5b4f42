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
//! Dependencies point down only.
//!
//! ```text
//!   server       connections: header/idle/body timeouts, connection cap, bounded shutdown
//!   api          HTTP edge: axum routes, JSON errors (server side)
//!   auth         peer identity and cluster id; HMAC-SHA256 of each peer request's head and body
//!   client       typed reqwest client (CLI, driver, tests)
//!   local        real vkv-server processes on loopback: start, stop, crash (driver, tests)
//!   protocol     the JSON shapes both sides speak, and the documented limits
//!   replica      the node: client writes, peer merges, logging of every decision, senders
//!   replication  one background sender per peer, draining the durable outbox
//!   anti_entropy periodic digest comparison with peers, pulling the keys that differ
//!   quorum       per-request ?w=K / ?r=K: wait for K replicas, read repair
//!   store        redb: sibling sets and per-peer outboxes, committed together
//!   cluster      membership: member order, ids, clock positions, flag validation
//!   versions     sibling sets, the client write rule and the merge rule (pure)
//!   clock        vector clocks and their partial order (pure)
//!   error        the error type, named for the caller's next step
//! ```
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

pub mod anti_entropy;
pub mod api;
pub mod auth;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod error;
pub mod local;
pub mod protocol;
pub mod quorum;
pub mod replica;
pub mod replication;
pub mod server;
pub mod store;
pub mod versions;

pub use error::{Error, Result};
