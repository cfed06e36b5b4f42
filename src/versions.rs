//! Versions and sibling sets: what one key holds, and the merge rule that makes replicas converge.
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
//! **A client write at replica `i`** (with an optional *context*, the clock the client read)
//! mints `new = join(context, join of every local clock)` and advances position `i`:
//!
//! ```text
//!   local siblings  {[1, 0, 0], [0, 1, 0]}      context [1, 1, 0]   write at position 2
//!   new clock       join → [1, 1, 0]  then +1 at 2  →  [1, 1, 1]
//!   result          {[1, 1, 1]}                 (dominates both: the conflict is resolved)
//! ```
//!
//! The new version replaces everything the replica holds for the key. Versions elsewhere that it
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
//! antichain invariant over random histories.
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
//! [`tests::dynamo_shopping_cart`] replays exactly this history.
//!
//! # Equal clocks with different payloads
//!
//! Two versions with the same clock but different values cannot arise in a correct cluster (a
//! replica never reissues a counter). Should it happen anyway, merge keeps the larger payload so
//! that every replica still picks the same one and the laws above hold unconditionally.

use serde::{Deserialize, Serialize};

use crate::clock::{Causality, VectorClock};

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

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    clock: VectorClock,
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

    /// The clock a client write at `position` mints: the join of `context` (if any) and every local
    /// clock, advanced at `position`. `None` only if that counter would overflow.
    pub fn next_clock(&self, n: usize, context: Option<&VectorClock>, position: usize) -> Option<VectorClock> {
        let mut base = self.context(n);
        if let Some(ctx) = context {
            base = base.join(ctx);
        }
        base.incremented(position)
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vc(c: &[u64]) -> VectorClock {
        VectorClock::from(c.to_vec())
    }

    fn val(v: &str, c: &[u64]) -> Version {
        Version::value(v, vc(c))
    }

    #[test]
    fn newer_version_replaces_older_no_conflict() {
        let mut set = SiblingSet::single(val("old", &[1, 0, 3]));
        assert_eq!(set.merge(val("new", &[3, 1, 3])), MergeOutcome::Updated);
        assert_eq!(set.versions(), &[val("new", &[3, 1, 3])]);
    }

    #[test]
    fn older_version_is_ignored() {
        // Seed table, row one: local [3,1,3] vs received [1,0,3] → no conflict, keep local.
        let mut set = SiblingSet::single(val("local", &[3, 1, 3]));
        assert_eq!(set.merge(val("received", &[1, 0, 3])), MergeOutcome::Stale);
        assert_eq!(set.versions(), &[val("local", &[3, 1, 3])]);
    }

    #[test]
    fn concurrent_version_becomes_a_sibling() {
        // Seed table, row two: local [1,0,3] vs received [1,1,1] → conflict, keep both.
        let mut set = SiblingSet::single(val("local", &[1, 0, 3]));
        assert_eq!(set.merge(val("received", &[1, 1, 1])), MergeOutcome::Conflict { siblings: 2 });
        assert_eq!(set.len(), 2);
        assert!(set.is_conflict());
        assert_eq!(set.context(3), vc(&[1, 1, 3]));
    }

    #[test]
    fn duplicate_is_stale() {
        let mut set = SiblingSet::single(val("x", &[1, 0]));
        assert_eq!(set.merge(val("x", &[1, 0])), MergeOutcome::Stale);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn dominating_version_resolves_siblings() {
        let mut set = SiblingSet::from_versions([val("a", &[1, 0, 0]), val("b", &[0, 1, 0])]);
        assert_eq!(set.len(), 2);
        assert_eq!(set.merge(val("ab", &[1, 1, 1])), MergeOutcome::Updated);
        assert_eq!(set.versions(), &[val("ab", &[1, 1, 1])]);
    }

    #[test]
    fn tombstones_merge_like_values() {
        let mut set = SiblingSet::single(val("a", &[1, 0]));
        assert_eq!(set.merge(Version::tombstone(vc(&[2, 0]))), MergeOutcome::Updated);
        assert!(set.is_deleted());
        assert_eq!(set.merge(val("b", &[1, 1])), MergeOutcome::Conflict { siblings: 2 });
        assert!(!set.is_deleted());
    }

    #[test]
    fn next_clock_dominates_local_and_context() {
        let set = SiblingSet::from_versions([val("a", &[1, 0, 0]), val("b", &[0, 1, 0])]);
        assert_eq!(set.next_clock(3, None, 2), Some(vc(&[1, 1, 1])));
        assert_eq!(set.next_clock(3, Some(&vc(&[0, 0, 5])), 0), Some(vc(&[2, 1, 5])));
        assert_eq!(SiblingSet::new().next_clock(3, None, 1), Some(vc(&[0, 1, 0])));
    }

    #[test]
    fn wire_format_round_trips_and_rejects_ambiguity() {
        let json =
            serde_json::to_string(&SiblingSet::from_versions([val("milk", &[1, 0]), Version::tombstone(vc(&[0, 1]))]))
                .unwrap();
        assert_eq!(json, r#"[{"deleted":true,"clock":[0,1]},{"value":"milk","clock":[1,0]}]"#);
        let back: SiblingSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back.len(), 2);
        assert!(serde_json::from_str::<Version>(r#"{"value":"x","deleted":true,"clock":[1]}"#).is_err());
        assert!(serde_json::from_str::<Version>(r#"{"clock":[1]}"#).is_err());
    }

    /// Dynamo's Figure 3, replayed at three replicas. Sx, Sy, Sz are clock positions 0, 1, 2;
    /// each replica is a sibling set, each write uses `next_clock` exactly as the server does.
    #[test]
    fn dynamo_shopping_cart() {
        let (sx, sy, sz) = (0, 1, 2);
        let mut at = [SiblingSet::new(), SiblingSet::new(), SiblingSet::new()];
        let write = |set: &mut SiblingSet, pos: usize, ctx: Option<&VectorClock>, v: &str| {
            let clock = set.next_clock(3, ctx, pos).unwrap();
            *set = SiblingSet::single(val(v, clock.counters()));
            clock
        };
        let d1 = write(&mut at[sx], sx, None, "D1");
        assert_eq!(d1, vc(&[1, 0, 0]));
        let d2 = write(&mut at[sx], sx, Some(&d1), "D2");
        assert_eq!(d2, vc(&[2, 0, 0]));
        // D2 reaches Sy and Sz.
        let d2_set = at[sx].clone();
        at[sy].merge_set(&d2_set);
        at[sz].merge_set(&d2_set);
        let d3 = write(&mut at[sy], sy, Some(&d2), "D3");
        let d4 = write(&mut at[sz], sz, Some(&d2), "D4");
        assert_eq!(d3, vc(&[2, 1, 0]));
        assert_eq!(d4, vc(&[2, 0, 1]));
        assert_eq!(d3.compare(&d4), Causality::Concurrent);
        // Sx learns of both: two siblings, context [2, 1, 1].
        let (s3, s4) = (at[sy].clone(), at[sz].clone());
        at[sx].merge_set(&s3);
        at[sx].merge_set(&s4);
        assert_eq!(at[sx].len(), 2);
        let ctx = at[sx].context(3);
        assert_eq!(ctx, vc(&[2, 1, 1]));
        let d5 = write(&mut at[sx], sx, Some(&ctx), "D5");
        assert_eq!(d5, vc(&[3, 1, 1]));
        assert_eq!(d5.compare(&d3), Causality::After);
        assert_eq!(d5.compare(&d4), Causality::After);
        // D5 reaches everyone; all three converge to it alone.
        let d5_set = at[sx].clone();
        for set in at.iter_mut() {
            set.merge_set(&d5_set);
            assert_eq!(set, &d5_set);
        }
    }

    fn version() -> impl Strategy<Value = Version> {
        (proptest::collection::vec(0u64..3, 3), prop_oneof![Just(None), "[ab]".prop_map(Some)])
            .prop_map(|(c, value)| Version { clock: VectorClock::from(c), value })
    }

    fn history() -> impl Strategy<Value = Vec<Version>> {
        proptest::collection::vec(version(), 0..8)
    }

    fn is_antichain(set: &SiblingSet) -> bool {
        let vs = set.versions();
        vs.iter().enumerate().all(|(i, a)| {
            vs.iter().enumerate().all(|(j, b)| i == j || a.clock.compare(&b.clock) == Causality::Concurrent)
        })
    }

    proptest! {
        #[test]
        fn merge_leaves_an_antichain(h in history()) {
            prop_assert!(is_antichain(&SiblingSet::from_versions(h)));
        }

        #[test]
        fn merge_is_idempotent(h in history()) {
            let once = SiblingSet::from_versions(h.clone());
            let mut twice = once.clone();
            for v in h {
                prop_assert!(!twice.merge(v).changed());
            }
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn merge_is_commutative(a in history(), b in history()) {
            let (sa, sb) = (SiblingSet::from_versions(a), SiblingSet::from_versions(b));
            let mut ab = sa.clone();
            ab.merge_set(&sb);
            let mut ba = sb.clone();
            ba.merge_set(&sa);
            prop_assert_eq!(ab, ba);
        }

        #[test]
        fn merge_is_associative(a in history(), b in history(), c in history()) {
            let (sa, sb, sc) = (
                SiblingSet::from_versions(a),
                SiblingSet::from_versions(b),
                SiblingSet::from_versions(c),
            );
            let mut left = sa.clone();
            left.merge_set(&sb);
            left.merge_set(&sc);
            let mut bc = sb.clone();
            bc.merge_set(&sc);
            let mut right = sa.clone();
            right.merge_set(&bc);
            prop_assert_eq!(left, right);
        }

        #[test]
        fn arrival_order_does_not_matter(h in history(), seed in any::<u64>()) {
            let mut shuffled = h.clone();
            // Deterministic permutation from the seed.
            let len = shuffled.len();
            if len > 1 {
                for i in (1..len).rev() {
                    let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
                    shuffled.swap(i, j);
                }
            }
            prop_assert_eq!(SiblingSet::from_versions(h), SiblingSet::from_versions(shuffled));
        }

        #[test]
        fn a_client_write_supersedes_everything_local(h in history(), pos in 0usize..3) {
            let set = SiblingSet::from_versions(h);
            let clock = set.next_clock(3, None, pos).unwrap();
            for v in set.versions() {
                prop_assert_eq!(clock.compare(&v.clock), Causality::After);
            }
        }
    }
}
