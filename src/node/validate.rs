//! Input checks of the replica, applied before anything is written: keys, values, clocks, the
//! sender of a peer request, and every entry of a peer's batch.

use crate::core::clock::{VectorClock, MAX_COUNTER};
use crate::core::cluster::ReplicaId;
use crate::core::versions::Version;
use crate::error::{Error, Result};
use crate::net::protocol::{ReplicateEntry, MAX_KEY_BYTES, MAX_VERSIONS_PER_ENTRY};
use crate::node::replica::Replica;

/// Checks a key against the documented limits.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidInput("the key must not be empty".into()));
    }
    if key == "." || key == ".." {
        // URLs treat these segments as path navigation: no client could address such a key.
        return Err(Error::InvalidInput(format!("{key:?} cannot be a key: URLs treat it as a path step")));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::TooLarge(format!("the key is {} bytes; the limit is {MAX_KEY_BYTES}", key.len())));
    }
    Ok(())
}

impl Replica {
    /// Checks a client's or peer's clock: N counters, none past the limit.
    pub(crate) fn check_context(&self, context: Option<&VectorClock>) -> Result<()> {
        let Some(c) = context else { return Ok(()) };
        if c.len() != self.layout().n() {
            return Err(Error::InvalidInput(format!(
                "clock {c} has {} counters; this cluster has N = {}",
                c.len(),
                self.layout().n()
            )));
        }
        if c.counters().iter().any(|&x| x > MAX_COUNTER) {
            return Err(Error::InvalidInput(format!("clock {c} has a counter above the limit {MAX_COUNTER}")));
        }
        Ok(())
    }

    /// Checks a client's value against `--max-value-bytes`.
    pub(crate) fn check_value(&self, value: &str) -> Result<()> {
        if value.len() > self.max_value_bytes() {
            return Err(Error::TooLarge(format!(
                "the value is {} bytes; the limit is {} (--max-value-bytes)",
                value.len(),
                self.max_value_bytes()
            )));
        }
        Ok(())
    }

    /// Refuses a peer request from an id that is not a peer of this replica (409).
    pub(crate) fn check_peer(&self, from: ReplicaId, what: &str) -> Result<()> {
        if from == self.id() || self.layout().member(from).is_none() {
            return Err(Error::Conflict(format!(
                "{what} from {from}, which is not a peer of replica {} (members 1..={})",
                self.id(),
                self.layout().n()
            )));
        }
        Ok(())
    }

    /// Checks every entry of a peer's batch before anything is applied.
    pub(crate) fn validate_entries(&self, batch: Vec<ReplicateEntry>) -> Result<Vec<(String, Vec<Version>)>> {
        let mut entries = Vec::with_capacity(batch.len());
        for entry in batch {
            validate_key(&entry.key)?;
            if entry.versions.is_empty() || entry.versions.len() > MAX_VERSIONS_PER_ENTRY {
                return Err(Error::InvalidInput(format!(
                    "key {:?} has {} versions; between 1 and {MAX_VERSIONS_PER_ENTRY} expected",
                    entry.key,
                    entry.versions.len()
                )));
            }
            // Values are not checked against this replica's --max-value-bytes: the coordinator
            // accepted them, and refusing them here would wedge replication. The body limit bounds them.
            for v in &entry.versions {
                self.check_context(Some(&v.clock))?;
            }
            entries.push((entry.key, entry.versions));
        }
        Ok(entries)
    }
}
