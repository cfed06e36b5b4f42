//! A sender's decisions, apart from its I/O: which keys to pass over, how long to wait after a
//! failure, when a peer went down or came back, how to find a key the peer refuses. Pure: times
//! and jitter come in as arguments, so every transition is unit-tested (in `sender_tests.rs`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::sender::{BACKOFF_MAX, BACKOFF_MIN, LOCAL_BACKOFF_MAX, REFUSED_KEY_RETRY};
use crate::net::protocol::MAX_BATCH_KEYS;
use crate::storage::store::Pending;

/// A sender's view of its peer, for log transitions.
enum PeerState {
    Up,
    Down { since: Instant, failures: u32 },
    Mismatch,
}

/// A sender's state between two batches, and its decisions: pure (no I/O, no clock of its own:
/// times come in as arguments), so every transition is unit-tested.
pub(super) struct Progress {
    /// The sender's view of its peer, for log transitions.
    peer: PeerState,
    /// The next wait while the peer is unreachable (doubles per failure, up to [`BACKOFF_MAX`]).
    pub(super) backoff: Duration,
    /// Where the next batch starts: just after the last key shipped.
    pub(super) cursor: Option<String>,
    /// Most keys in the next batch: halved while a peer refuses batches, to find the key it refuses.
    pub(super) batch_keys: usize,
    /// Keys the peer refused, passed over until their retry time.
    pub(super) refused: HashMap<String, Instant>,
    /// Consecutive failures of this replica's own store (reading the outbox, clearing marks).
    pub(super) local_failures: u32,
}

/// What a delivered batch ended.
#[derive(Debug, PartialEq)]
pub(super) enum Recovered {
    No,
    Reachable { after: Duration, failures: u32 },
    Membership,
}

/// What a refused batch leads to.
#[derive(Debug, PartialEq)]
pub(super) enum Refusal {
    /// Retry in smaller batches.
    Halve { batch_keys: usize },
    /// A one-key batch was refused: that key is set aside.
    SetAside { key: String },
}

impl Progress {
    pub(super) fn new() -> Self {
        Progress {
            peer: PeerState::Up,
            backoff: BACKOFF_MIN,
            cursor: None,
            batch_keys: MAX_BATCH_KEYS,
            refused: HashMap::new(),
            local_failures: 0,
        }
    }

    /// The keys to pass over now (refused ones whose retry time has not come).
    pub(super) fn skipped(&mut self, now: Instant) -> HashSet<String> {
        self.refused.retain(|_, until| *until > now);
        self.refused.keys().cloned().collect()
    }

    /// The peer took `batch`: reset the backoff, grow batches back, move the cursor past it.
    pub(super) fn delivered(&mut self, batch: &[Pending], now: Instant) -> Recovered {
        let recovered = match self.peer {
            PeerState::Up => Recovered::No,
            PeerState::Down { since, failures } => Recovered::Reachable { after: now - since, failures },
            PeerState::Mismatch => Recovered::Membership,
        };
        self.peer = PeerState::Up;
        self.backoff = BACKOFF_MIN;
        self.batch_keys = (self.batch_keys * 2).min(MAX_BATCH_KEYS);
        self.cursor = batch.last().map(|p| p.key.clone()).or(self.cursor.take());
        recovered
    }

    /// The peer refused `batch`'s content.
    pub(super) fn refused(&mut self, batch: &[Pending], now: Instant) -> Refusal {
        if batch.len() > 1 {
            self.batch_keys = (batch.len() / 2).max(1);
            Refusal::Halve { batch_keys: self.batch_keys }
        } else {
            let key = batch[0].key.clone();
            self.refused.insert(key.clone(), now + REFUSED_KEY_RETRY);
            Refusal::SetAside { key }
        }
    }

    /// The peer refused this replica's membership; true the first time in a row (log it).
    pub(super) fn membership_refused(&mut self) -> bool {
        let first = !matches!(self.peer, PeerState::Mismatch);
        self.peer = PeerState::Mismatch;
        first
    }

    /// No usable answer. Returns whether the peer just went down (log it) and how long to wait:
    /// between half and all of the current backoff (`jitter` in 0..=1), which then doubles.
    pub(super) fn unreachable(&mut self, now: Instant, jitter: f64) -> (bool, Duration) {
        let first = match &mut self.peer {
            PeerState::Up | PeerState::Mismatch => {
                self.peer = PeerState::Down { since: now, failures: 1 };
                true
            }
            PeerState::Down { failures, .. } => {
                *failures += 1;
                false
            }
        };
        let half = self.backoff / 2;
        let delay = half + half.mul_f64(jitter.clamp(0.0, 1.0));
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        (first, delay)
    }

    /// The peer said it is up: the next failure starts the backoff over.
    pub(super) fn peer_said_up(&mut self) {
        self.backoff = BACKOFF_MIN;
    }

    /// This replica's store failed. Returns whether it is the first failure in a row (log it)
    /// and the pause: 50 ms doubling per failure, up to [`LOCAL_BACKOFF_MAX`].
    pub(super) fn local_failure(&mut self) -> (bool, Duration) {
        self.local_failures += 1;
        let delay = BACKOFF_MIN.saturating_mul(1 << self.local_failures.min(10)).min(LOCAL_BACKOFF_MAX);
        (self.local_failures == 1, delay)
    }

    /// The store worked: if it had been failing, how many times.
    pub(super) fn local_ok(&mut self) -> Option<u32> {
        let failures = std::mem::take(&mut self.local_failures);
        (failures > 0).then_some(failures)
    }
}
