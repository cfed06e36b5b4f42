//! Vector clocks: one counter per replica, compared by the causal partial order.
//!
//! A clock `a` happened **before** `b` when every counter of `a` is ≤ the matching counter of `b`
//! and at least one is strictly smaller. When neither happened before the other and they are not
//! equal, the two are **concurrent**: they were minted without knowledge of each other, and the
//! versions they stamp are a conflict that only a client can resolve.
//!
//! The seed's table, read as "local clock vs received clock":
//!
//! ```
//! use vkv::clock::{Causality, VectorClock};
//! let local = VectorClock::from(vec![3, 1, 3]);
//! let received = VectorClock::from(vec![1, 0, 3]);
//! assert_eq!(local.compare(&received), Causality::After); // no conflict: local is newer
//!
//! let local = VectorClock::from(vec![1, 0, 3]);
//! let received = VectorClock::from(vec![1, 1, 1]);
//! assert_eq!(local.compare(&received), Causality::Concurrent); // conflict
//! ```
//!
//! This module is pure: no I/O, no async, no storage. Clocks of different lengths never meet
//! here — every layer above validates lengths against the cluster size before building a clock
//! from outside input — but the functions stay total anyway: a missing counter reads as 0.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest clock counter accepted from a client or a peer: 2^53, the largest integer every JSON
/// implementation represents exactly. A replica would need centuries of writes to one key to reach
/// it; refusing more keeps a hostile context from pinning a key at `u64::MAX`.
pub const MAX_COUNTER: u64 = 1 << 53;

/// How clock `a` relates to clock `b` (`a.compare(&b)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// Same counters everywhere.
    Equal,
    /// `a` happened before `b`: `b` dominates `a`.
    Before,
    /// `a` happened after `b`: `a` dominates `b`.
    After,
    /// Neither dominates: concurrent writes, a conflict.
    Concurrent,
}

/// A vector of N counters, position `i` counting the writes coordinated by the replica at
/// position `i` of the cluster order. Serialised as a plain JSON array: `[3, 1, 3]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(example = json!([3, 1, 3, 0, 0]))]
pub struct VectorClock(Vec<u64>);

impl VectorClock {
    /// The all-zero clock for a cluster of `n` replicas.
    pub fn zero(n: usize) -> Self {
        VectorClock(vec![0; n])
    }

    /// Number of counters.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the clock has no counters at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The counters, in cluster order.
    pub fn counters(&self) -> &[u64] {
        &self.0
    }

    fn at(&self, i: usize) -> u64 {
        self.0.get(i).copied().unwrap_or(0)
    }

    /// Compares `self` with `other` under the causal partial order.
    pub fn compare(&self, other: &VectorClock) -> Causality {
        let n = self.0.len().max(other.0.len());
        let (mut some_less, mut some_greater) = (false, false);
        for i in 0..n {
            let (a, b) = (self.at(i), other.at(i));
            some_less |= a < b;
            some_greater |= a > b;
        }
        match (some_less, some_greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// True when `self` is equal to or after `other` (`self` already knows everything `other` does).
    pub fn descends(&self, other: &VectorClock) -> bool {
        matches!(self.compare(other), Causality::Equal | Causality::After)
    }

    /// Pointwise maximum: the smallest clock that descends from both.
    pub fn join(&self, other: &VectorClock) -> VectorClock {
        let n = self.0.len().max(other.0.len());
        VectorClock((0..n).map(|i| self.at(i).max(other.at(i))).collect())
    }

    /// The clock with counter `position` advanced by one, or `None` if that counter would
    /// overflow (only reachable with a hostile client context; callers turn it into an error).
    pub fn incremented(&self, position: usize) -> Option<VectorClock> {
        let mut next = self.clone();
        if position >= next.0.len() {
            next.0.resize(position + 1, 0);
        }
        next.0[position] = next.0[position].checked_add(1)?;
        Some(next)
    }
}

impl From<Vec<u64>> for VectorClock {
    fn from(counters: Vec<u64>) -> Self {
        VectorClock(counters)
    }
}

/// The seed's notation: `[3, 1, 3]`.
impl fmt::Display for VectorClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Debug for VectorClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vc(c: &[u64]) -> VectorClock {
        VectorClock::from(c.to_vec())
    }

    #[test]
    fn seed_table_no_conflict() {
        assert_eq!(vc(&[3, 1, 3]).compare(&vc(&[1, 0, 3])), Causality::After);
        assert_eq!(vc(&[1, 0, 3]).compare(&vc(&[3, 1, 3])), Causality::Before);
    }

    #[test]
    fn seed_table_conflict() {
        assert_eq!(vc(&[1, 0, 3]).compare(&vc(&[1, 1, 1])), Causality::Concurrent);
        assert_eq!(vc(&[1, 1, 1]).compare(&vc(&[1, 0, 3])), Causality::Concurrent);
    }

    #[test]
    fn equal_clocks() {
        assert_eq!(vc(&[2, 0, 5]).compare(&vc(&[2, 0, 5])), Causality::Equal);
        assert_eq!(VectorClock::zero(3).compare(&vc(&[0, 0, 0])), Causality::Equal);
        assert!(vc(&[2, 0, 5]).descends(&vc(&[2, 0, 5])));
    }

    #[test]
    fn join_is_pointwise_max() {
        assert_eq!(vc(&[1, 0, 3]).join(&vc(&[1, 1, 1])), vc(&[1, 1, 3]));
    }

    #[test]
    fn increment_advances_one_position_and_refuses_overflow() {
        assert_eq!(vc(&[1, 0, 3]).incremented(1), Some(vc(&[1, 1, 3])));
        assert_eq!(vc(&[u64::MAX, 0]).incremented(0), None);
    }

    #[test]
    fn display_uses_seed_notation() {
        assert_eq!(vc(&[3, 1, 3, 0, 0]).to_string(), "[3, 1, 3, 0, 0]");
    }

    fn clock3() -> impl Strategy<Value = VectorClock> {
        proptest::collection::vec(0u64..4, 3).prop_map(VectorClock::from)
    }

    proptest! {
        #[test]
        fn compare_is_antisymmetric(a in clock3(), b in clock3()) {
            let expected = match a.compare(&b) {
                Causality::Equal => Causality::Equal,
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                Causality::Concurrent => Causality::Concurrent,
            };
            prop_assert_eq!(b.compare(&a), expected);
        }

        #[test]
        fn join_is_the_least_upper_bound(a in clock3(), b in clock3(), c in clock3()) {
            let j = a.join(&b);
            prop_assert!(j.descends(&a) && j.descends(&b));
            prop_assert_eq!(&j, &b.join(&a));
            prop_assert_eq!(a.join(&b).join(&c), a.join(&b.join(&c)));
            prop_assert_eq!(a.join(&a), a.clone());
            // Any upper bound of both descends from the join.
            if c.descends(&a) && c.descends(&b) {
                prop_assert!(c.descends(&j));
            }
        }

        #[test]
        fn increment_dominates(a in clock3(), i in 0usize..3) {
            let next = a.incremented(i).unwrap();
            prop_assert_eq!(next.compare(&a), Causality::After);
        }
    }
}
