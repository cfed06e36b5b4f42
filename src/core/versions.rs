//! Versions and sibling sets: what one key holds, and the merge rule that makes replicas converge.
//!
//! Size: the design essay (the write rule, the merge rule, Dynamo's example) is a third of it, kept
//! next to the code it explains.
//!
//! # The model
//!
//! Every key maps to a [`SiblingSet`]: one or more [`Version`]s, each a value (or a tombstone, for
//! a delete) stamped with a [`VectorClock`]. The set is an **antichain**: no version in it is
//! dominated by another. One version means no conflict; two or more are *siblings* — writes that
//! were made concurrently, all of which a reader gets back until a client resolves them.
//!
//! # Two ways a set changes
//!
//! **A client write at replica `i`** carries an optional *context*: the clock the client read
//! (GET's `context`, the join of every version it was shown). The rule is the one promise the
//! store makes to every client — **a write replaces only what its client has seen**:
//!
//! ```text
//!   with context C:   C covers the local set L (every clock in L ≤ C; true when L is empty)
//!                        → new = join(C, all of L), +1 at i; it supersedes L       200
//!                     L holds a version C does not cover (the client never saw it)
//!                        → refused, nothing written; the client gets L back        409
//!   without context:  a blind write (the seed's plain Add_Update): C = join(L), so it
//!                     always covers L — the last writer at this replica wins
//! ```
//!
//! ```text
//!   local siblings  {[1, 0, 0], [0, 1, 0]}      context [1, 1, 0]   write at position 2
//!   covered?        [1, 0, 0] ≤ [1, 1, 0] and [0, 1, 0] ≤ [1, 1, 0]  → yes
//!   new clock       join → [1, 1, 0]  then +1 at 2  →  [1, 1, 1]
//!   result          {[1, 1, 1]}                 (dominates both: the conflict is resolved)
//!
//!   local siblings  {[1, 0, 0], [0, 1, 0]}      context [1, 0, 0]   (read before [0, 1, 0] arrived)
//!   covered?        [0, 1, 0] ≰ [1, 0, 0]       → no: 409 with both versions and context [1, 1, 0]
//! ```
//!
//! An all-zero context means "I saw no version": it is covered only while the key has no
//! version here (a tombstone is a version). Without this rule, two clients that read the same
//! version and both write back would each get a 200 while the second silently erased the
//! first — the lost update Jepsen found in Riak's set workload. Versions elsewhere that `new`
//! does not dominate (written concurrently at other replicas) become its siblings when they meet.
//!
//! **A version arriving from a peer** is *merged* ([`SiblingSet::merge`]):
//!
//! ```text
//!   some local s ≥ v (After or Equal)  →  nothing changes            "stale, ignored"
//!   otherwise: drop every s < v, add v →  one version left           "no conflict, updated"
//!                                         several versions left      "CONFLICT, kept k siblings"
//! ```
//!
//! Merge is a *join* in the lattice of antichains: idempotent (a retry changes nothing),
//! commutative (arrival order does not matter) and associative (batching does not matter). So
//! duplicated, reordered and retried replication is harmless, and two replicas that have seen
//! the same versions hold the same set. The property tests below check all three laws and the
//! antichain invariant over random histories, and replay random interleavings of conditional
//! writes and merges at several replicas against Jepsen's set criterion: every acknowledged
//! element is in the final value.
//!
//! # Worked example: Dynamo's shopping cart (DeCandia et al., 2007, Figure 3)
//!
//! Three replicas Sx, Sy, Sz at clock positions 0, 1, 2:
//!
//! ```text
//!   D1 = [1, 0, 0]   write handled by Sx
//!   D2 = [2, 0, 0]   Sx again, with D1's context          D2 > D1: D1 is dropped everywhere
//!   D3 = [2, 1, 0]   Sy, with D2's context                 D3 > D2
//!   D4 = [2, 0, 1]   Sz, with D2's context                 D4 > D2 but D3 ∥ D4: siblings
//!   D5 = [3, 1, 1]   Sx, with context join(D3, D4)         D5 > D3 and D5 > D4: resolved
//! ```
//!
//! The test `tests::dynamo_shopping_cart` replays exactly this history.
//!
//! # Equal clocks with different payloads
//!
//! Two versions with the same clock but different values cannot arise in a correct cluster (a
//! replica never reissues a counter). Should it happen anyway, merge keeps the larger payload so
//! that every replica still picks the same one and the laws above hold unconditionally.
//!
//! A replica does not let it happen silently, though: before merging a peer's version it asks
//! [`SiblingSet::check_incoming`], which refuses a version that reuses a local clock with another
//! payload, or that claims the replica's *own* clock position with a counter it never issued for
//! the key (its local join is the highest it issued: a replica's own versions only ever leave its
//! set for versions that dominate them). Either means two members took the same position — a
//! member-list mismatch, or a data dir reused — and merging would drop one acknowledged write.

use serde::{Deserialize, Serialize};

use crate::core::clock::{Causality, VectorClock, MAX_COUNTER};

/// One version of a key: a value or a tombstone, with the clock that stamps it.
///
/// On the wire: `{"value": "milk", "clock": [1, 0, 0]}` or `{"deleted": true, "clock": [2, 0, 0]}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "VersionWire", into = "VersionWire")]
pub struct Version {
    /// Causal position of this version. First field, so sets sort by clock.
    pub clock: VectorClock,
    /// The value, or `None` for a tombstone (a delete).
    pub value: Option<String>,
}

impl Version {
    /// A live value.
    pub fn value(value: impl Into<String>, clock: VectorClock) -> Self {
        Version { clock, value: Some(value.into()) }
    }

    /// A tombstone: the key was deleted at `clock`.
    pub fn tombstone(clock: VectorClock) -> Self {
        Version { clock, value: None }
    }

    /// True for a delete marker.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// One version on the wire: a value, or `"deleted": true` for a tombstone, and its clock.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Version)]
struct VersionWire {
    /// The value (absent for a tombstone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    value: Option<String>,
    /// True for a tombstone: the key was deleted at `clock` (absent for a value).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    clock: VectorClock,
}

// The OpenAPI schema of a version is its wire form's.
impl utoipa::PartialSchema for Version {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <VersionWire as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for Version {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        <VersionWire as utoipa::ToSchema>::schemas(schemas)
    }
}

impl TryFrom<VersionWire> for Version {
    type Error = &'static str;
    fn try_from(w: VersionWire) -> Result<Self, Self::Error> {
        match (w.value, w.deleted) {
            (Some(v), false) => Ok(Version::value(v, w.clock)),
            (None, true) => Ok(Version::tombstone(w.clock)),
            (Some(_), true) => Err("a version is either a value or deleted, not both"),
            (None, false) => Err("a version needs a \"value\" or \"deleted\": true"),
        }
    }
}

impl From<Version> for VersionWire {
    fn from(v: Version) -> Self {
        let deleted = v.value.is_none();
        VersionWire { value: v.value, deleted, clock: v.clock }
    }
}

/// Why a client write was refused. Nothing is written in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRefusal {
    /// The set holds a version the context does not cover: the client never saw it. The client
    /// merges the current versions and retries with their context. (HTTP 409)
    NotCovered,
    /// The context's counter at the coordinator's own position is ahead of every counter this
    /// replica holds for the key: only a forged context, or one read from another key, can be. (400)
    ContextAhead,
    /// The new clock would pass [`MAX_COUNTER`] (only a hostile context gets there). (400)
    CounterLimit,
}

/// Why a replica refuses to merge a peer's version: it proves a clock counter was issued twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suspect {
    /// The version's counter at the receiver's own position is above any it issued for the key.
    NotIssued {
        /// The counter the version claims.
        counter: u64,
        /// The highest counter the receiver holds (so issued) at its position for the key.
        issued: u64,
    },
    /// A local version has the same clock and another payload.
    ClockReused,
}

/// What merging one incoming version did to a set — the decision a replica logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeOutcome {
    /// The set was empty: the version is now the only one.
    Created,
    /// The version dominated every local version and replaced them: no conflict.
    Updated,
    /// A local version dominates (or equals) the incoming one: nothing changed.
    Stale,
    /// The version is concurrent with at least one local version and was kept beside it.
    /// Carries the number of siblings now held.
    Conflict { siblings: usize },
}

impl MergeOutcome {
    /// True when the set changed.
    pub fn changed(self) -> bool {
        !matches!(self, MergeOutcome::Stale)
    }
}

/// The versions of one key: an antichain under the clocks' partial order, kept sorted by clock so
/// that equal sets are equal values.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SiblingSet {
    versions: Vec<Version>,
}

impl SiblingSet {
    /// The empty set (a key never written).
    pub fn new() -> Self {
        SiblingSet::default()
    }

    /// A set holding exactly one version.
    pub fn single(version: Version) -> Self {
        SiblingSet { versions: vec![version] }
    }

    /// Builds a set by merging every given version: whatever the input, the result is an antichain.
    pub fn from_versions(versions: impl IntoIterator<Item = Version>) -> Self {
        let mut set = SiblingSet::new();
        for v in versions {
            set.merge(v);
        }
        set
    }

    /// The versions, sorted by clock.
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    /// Number of versions (siblings).
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// True for a key never written.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// True when more than one version is held: concurrent writes nobody has resolved yet.
    pub fn is_conflict(&self) -> bool {
        self.versions.len() > 1
    }

    /// True when every version is a tombstone (or there are none): the key reads as absent.
    pub fn is_deleted(&self) -> bool {
        self.versions.iter().all(Version::is_tombstone)
    }

    /// The join of every version's clock: the context a client sends back to supersede them all.
    pub fn context(&self, n: usize) -> VectorClock {
        self.versions.iter().fold(VectorClock::zero(n), |acc, v| acc.join(&v.clock))
    }

    /// True when `context` covers the set: every version's clock is ≤ `context`, so a client
    /// holding that context has seen every version here. True for the empty set.
    pub fn covered_by(&self, context: &VectorClock) -> bool {
        self.versions.iter().all(|v| context.descends(&v.clock))
    }

    /// The versions `context` does not cover: the ones a client holding it never saw.
    pub fn not_covered_by<'a>(&'a self, context: &'a VectorClock) -> impl Iterator<Item = &'a Version> + 'a {
        self.versions.iter().filter(move |v| !context.descends(&v.clock))
    }

    /// Decides a client write at `position` against this set (the rule in the module docs):
    /// the clock the new version gets, which supersedes the whole set, or why the write is
    /// refused. `None` is a blind write. Pure: the caller stores the result.
    pub fn client_write(
        &self,
        n: usize,
        context: Option<&VectorClock>,
        position: usize,
    ) -> Result<VectorClock, WriteRefusal> {
        let local = self.context(n);
        let base = match context {
            None => local,
            Some(ctx) => {
                if ctx.counters().get(position).copied().unwrap_or(0) > local.counters()[position] {
                    return Err(WriteRefusal::ContextAhead);
                }
                if !self.covered_by(ctx) {
                    return Err(WriteRefusal::NotCovered);
                }
                local.join(ctx)
            }
        };
        base.incremented(position)
            .filter(|c| c.counters().iter().all(|&x| x <= MAX_COUNTER))
            .ok_or(WriteRefusal::CounterLimit)
    }

    /// Checks a peer's version before it is merged (see "Equal clocks" in the module docs).
    /// `own` is the receiver's clock position, or `None` while it recovers its own past versions
    /// from the peers (then they legitimately carry counters it no longer holds).
    pub fn check_incoming(&self, incoming: &Version, own: Option<usize>) -> Result<(), Suspect> {
        if self.versions.iter().any(|v| v.clock == incoming.clock && v.value != incoming.value) {
            return Err(Suspect::ClockReused);
        }
        if let Some(p) = own {
            let counter = incoming.clock.counters().get(p).copied().unwrap_or(0);
            let issued = self.versions.iter().map(|v| v.clock.counters().get(p).copied().unwrap_or(0)).max();
            let issued = issued.unwrap_or(0);
            if counter > issued {
                return Err(Suspect::NotIssued { counter, issued });
            }
        }
        Ok(())
    }

    /// The versions' clocks, in the set's order.
    pub fn clocks(&self) -> Vec<VectorClock> {
        self.versions.iter().map(|v| v.clock.clone()).collect()
    }

    /// Merges one incoming version (see the module docs for the rule) and says what happened.
    pub fn merge(&mut self, incoming: Version) -> MergeOutcome {
        let mut equal_index = None;
        for (i, local) in self.versions.iter().enumerate() {
            match local.clock.compare(&incoming.clock) {
                Causality::After => return MergeOutcome::Stale,
                Causality::Equal => equal_index = Some(i),
                Causality::Before | Causality::Concurrent => {}
            }
        }
        if let Some(i) = equal_index {
            // Same clock: keep the larger payload so every replica picks the same one.
            if incoming.value <= self.versions[i].value {
                return MergeOutcome::Stale;
            }
            self.versions[i] = incoming;
            return self.outcome_after(false);
        }
        let was_empty = self.versions.is_empty();
        self.versions.retain(|local| local.clock.compare(&incoming.clock) != Causality::Before);
        self.versions.push(incoming);
        self.versions.sort();
        self.outcome_after(was_empty)
    }

    fn outcome_after(&self, was_empty: bool) -> MergeOutcome {
        match self.versions.len() {
            1 if was_empty => MergeOutcome::Created,
            1 => MergeOutcome::Updated,
            siblings => MergeOutcome::Conflict { siblings },
        }
    }

    /// Merges every version of `other` into `self`.
    pub fn merge_set(&mut self, other: &SiblingSet) {
        for v in &other.versions {
            self.merge(v.clone());
        }
    }
}

#[cfg(test)]
#[path = "versions_tests.rs"]
mod tests;
