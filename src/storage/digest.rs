//! Anti-entropy's range digests of the keys table, kept current by every commit, so a round
//! compares two replicas without hashing either store.
//!
//! Size: the hashing, the tracker that keeps the digests against a first scan, and the tests of
//! their agreement with a scan under every kind of commit; the ordering argument below ties them.
//!
//! ```text
//!   range of a key      XXH3-64(key), modulo the number of ranges
//!   H(key, set)         XXH3-128(stored set) seeded with XXH3-64(key)
//!   digest of a range   XOR of H(key, set) over the keys in the range
//!   a commit that turns key k's set a into b:   digest[range(k)] ^= H(k, a) ^ H(k, b)
//! ```
//!
//! Stored sets are canonical, so replicas holding the same versions have the same digests, and
//! XOR makes a digest independent of the order of the writes. XXH3, not a cryptographic hash:
//! every commit pays for its keys' hashes (the key's XXH3-64 and the two sets' XXH3-128, ~0.1 µs
//! where SHA-256 took ~0.6 µs), and the digests only choose which ranges to pull. XXH3 is not
//! collision-resistant: a client that crafts values could in principle hide a difference from
//! anti-entropy, which is the backstop for lost outbox marks, not the path writes travel.
//!
//! The digests of [`RANGES`] ranges (the count anti-entropy asks for) are kept in memory: they
//! start unknown, at open and after a reopen replayed the log behind them, and the first request
//! scans the store once. From then on each commit applies its changes. Any other count is
//! answered by a scan. The scan and the commits are ordered by the write-ahead log's lock: a
//! commit holds it from its append through redb's commit, and applies its changes before it lets
//! go; the scan opens its read transaction holding it. So each commit is either in the scan's
//! snapshot or added to the scan's result afterwards, never both and never neither.

use std::sync::Mutex;

use redb::{ReadableDatabase, ReadableTable};
use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64};

use super::store::{Store, KEYS};
use crate::error::Result;

/// How many hash ranges the store keeps digests for (anti-entropy's count).
pub const RANGES: usize = 64;

/// One range's digest.
pub type Digest = [u8; 16];

/// The hash range (of `ranges`) a key falls in: from the key alone, so a key stays in its range
/// whatever its value.
pub fn range_of(key: &str, ranges: usize) -> usize {
    in_range(xxh3_64(key.as_bytes()), ranges)
}

fn in_range(key_hash: u64, ranges: usize) -> usize {
    (key_hash % ranges.max(1) as u64) as usize
}

/// A key's share of its range's digest (`H(key, set)` above).
#[cfg(test)]
fn entry_hash(key: &str, set: &[u8]) -> Digest {
    seeded(xxh3_64(key.as_bytes()), set)
}

/// What the digests hold for one key before a commit changes it: the key's hash (its range and
/// its sets' seed, computed once) and its stored set's share, if it has a set.
#[derive(Debug, Clone, Copy)]
pub(super) struct Prior {
    key_hash: u64,
    share: Option<Digest>,
}

impl Prior {
    /// `key` with its stored bytes (`None` for a new key).
    pub fn of(key: &str, stored: Option<&[u8]>) -> Prior {
        let key_hash = xxh3_64(key.as_bytes());
        Prior { key_hash, share: stored.map(|set| seeded(key_hash, set)) }
    }
}

fn seeded(key_hash: u64, set: &[u8]) -> Digest {
    xxh3_128_with_seed(set, key_hash).to_le_bytes()
}

fn xor(into: &mut Digest, other: &Digest) {
    for (d, x) in into.iter_mut().zip(other) {
        *d ^= x;
    }
}

/// What one commit changes in the digests.
#[derive(Debug, Default)]
pub(super) struct Delta(Vec<(usize, Digest)>);

impl Delta {
    /// The key `prior` was taken of gets the stored set `after`.
    pub fn change(&mut self, prior: &Prior, after: &[u8]) {
        let mut d = seeded(prior.key_hash, after);
        if let Some(before) = &prior.share {
            xor(&mut d, before);
        }
        self.0.push((in_range(prior.key_hash, RANGES), d));
    }
}

enum State {
    Unknown,
    /// A scan of the snapshot taken at `token` runs; `since` gathers the commits after it.
    Scanning {
        token: u64,
        since: Vec<Digest>,
    },
    Known(Vec<Digest>),
}

/// The digests of [`RANGES`] ranges, as far as they are known.
pub(super) struct Tracker {
    state: Mutex<(State, u64)>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker { state: Mutex::new((State::Unknown, 0)) }
    }
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, (State, u64)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A committed change (called holding the log's lock, right after redb's commit).
    pub fn apply(&self, delta: &Delta) {
        let mut state = self.lock();
        let sums = match &mut state.0 {
            State::Unknown => return,
            State::Scanning { since, .. } => since,
            State::Known(sums) => sums,
        };
        for (range, d) in &delta.0 {
            xor(&mut sums[*range], d);
        }
    }

    /// Forgets the digests: the store changed behind the commits (a reopen replayed the log).
    pub fn reset(&self) {
        let mut state = self.lock();
        state.1 += 1;
        state.0 = State::Unknown;
    }

    fn known(&self) -> Option<Vec<Digest>> {
        match &self.lock().0 {
            State::Known(sums) => Some(sums.clone()),
            _ => None,
        }
    }

    /// Starts tracking the commits after a snapshot (called holding the log's lock); `None` if
    /// the digests are known or another scan already does this.
    fn begin_scan(&self) -> Option<u64> {
        let mut state = self.lock();
        if !matches!(state.0, State::Unknown) {
            return None;
        }
        state.1 += 1;
        let token = state.1;
        state.0 = State::Scanning { token, since: vec![[0; 16]; RANGES] };
        Some(token)
    }

    /// Ends the scan `token` with the snapshot's digests (`None`: the scan failed).
    fn end_scan(&self, token: u64, scanned: Option<&[Digest]>) {
        let mut state = self.lock();
        let State::Scanning { token: running, since } = &mut state.0 else { return };
        if *running != token {
            return;
        }
        state.0 = match scanned {
            Some(scanned) => {
                let mut sums = std::mem::take(since);
                for (sum, s) in sums.iter_mut().zip(scanned) {
                    xor(sum, s);
                }
                State::Known(sums)
            }
            None => State::Unknown,
        };
    }
}

/// Ends a tracked scan however it ends (an error or a panic in redb included).
struct ScanGuard<'a> {
    tracker: &'a Tracker,
    token: Option<u64>,
    scanned: Option<Vec<Digest>>,
}

impl Drop for ScanGuard<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.token {
            self.tracker.end_scan(token, self.scanned.as_deref());
        }
    }
}

impl Store {
    /// The digests of the keys in `ranges` hash ranges (see the module's doc). For `RANGES` (64)
    /// they come from memory once known; otherwise one pass over the keys. Blocks (disk).
    pub fn range_digests(&self, ranges: usize) -> Result<Vec<Digest>> {
        let ranges = ranges.max(1);
        if ranges == RANGES {
            if let Some(known) = self.digests.known() {
                return Ok(known);
            }
        }
        self.with_db(|db| {
            let (txn, token) = {
                let _log = self.wal.lock().unwrap_or_else(|e| e.into_inner());
                let txn = db.begin_read()?;
                (txn, if ranges == RANGES { self.digests.begin_scan() } else { None })
            };
            let mut guard = ScanGuard { tracker: &self.digests, token, scanned: None };
            let mut sums = vec![[0u8; 16]; ranges];
            for item in txn.open_table(KEYS)?.iter()? {
                let (key, set) = item?;
                let key_hash = xxh3_64(key.value().as_bytes());
                xor(&mut sums[in_range(key_hash, ranges)], &seeded(key_hash, set.value()));
            }
            guard.scanned = Some(sums.clone());
            drop(guard);
            Ok(sums)
        })
    }

    /// The tracked digests if they are known (tests: to compare with a scan).
    #[cfg(test)]
    pub(super) fn known_digests(&self) -> Option<Vec<Digest>> {
        self.digests.known()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::*;
    use crate::core::clock::VectorClock;
    use crate::core::cluster::Layout;
    use crate::core::versions::{SiblingSet, Version};
    use crate::error::Error;

    fn open(dir: &std::path::Path) -> Store {
        let layout = Layout::from_flags("127.0.0.1", 7000, 3, &vec!["127.0.0.1".into(); 2], &[7001, 7002]).unwrap();
        Store::open(dir, &layout).unwrap()
    }

    /// A client write through group commit (`Err` if `refuse`: the rule refuses it).
    fn grouped(store: &Store, key: &str, value: &str, refuse: bool) -> crate::error::Result<()> {
        let value = value.to_string();
        store.write_grouped(key.to_string(), move |cur| {
            if refuse {
                return Err(Error::Conflict("refused".into()));
            }
            let clock = cur.client_write(3, None, 0).unwrap();
            Ok((SiblingSet::single(Version::value(value, clock)), ()))
        })
    }

    fn local(store: &Store, key: &str, value: &str) {
        store
            .write_local(key, |cur| {
                let clock = cur.client_write(3, None, 0).unwrap();
                Ok((SiblingSet::single(Version::value(value, clock)), ()))
            })
            .unwrap();
    }

    fn merge(store: &Store, key: &str, value: &str, clock: &[u64]) {
        let version = Version::value(value, VectorClock::from(clock.to_vec()));
        store.merge_remote(&[(key.to_string(), vec![version])], |_, _, _| Ok(()), false).unwrap();
    }

    /// The digests of `ranges` ranges computed from scratch, from every stored key.
    fn scanned(store: &Store, ranges: usize) -> Vec<Digest> {
        let mut sums = vec![[0u8; 16]; ranges];
        store.scan_raw(|key, set| xor(&mut sums[range_of(key, ranges)], &entry_hash(key, set))).unwrap();
        sums
    }

    #[test]
    fn the_kept_digests_follow_every_kind_of_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for i in 0..40 {
            local(&store, &format!("k{i}"), "v1");
        }
        assert_eq!(store.known_digests(), None, "unknown until first asked");
        assert_eq!(store.range_digests(RANGES).unwrap(), scanned(&store, RANGES));
        assert!(store.known_digests().is_some(), "the first request's scan is kept");
        // New keys, overwrites, the same key twice in one group commit, refusals, merges that
        // change a set (newer, concurrent) and one that changes nothing, acknowledgements.
        local(&store, "k1", "v2");
        local(&store, "new", "v1");
        std::thread::scope(|s| {
            for i in 0..8 {
                let store = &store;
                s.spawn(move || grouped(store, &format!("k{}", i % 4), &format!("g{i}"), false).unwrap());
            }
        });
        assert!(grouped(&store, "k5", "no", true).is_err());
        merge(&store, "k2", "newer", &[9, 0, 0]);
        merge(&store, "k3", "concurrent", &[0, 1, 0]);
        merge(&store, "k3", "concurrent", &[0, 1, 0]);
        merge(&store, "remote", "v", &[0, 0, 1]);
        let owed = store.pending(2, None, 100, usize::MAX, &Default::default()).unwrap();
        store.acknowledge(2, &owed.iter().map(|p| (p.key.clone(), p.mark)).collect::<Vec<_>>()).unwrap();
        let kept = store.known_digests().unwrap();
        assert_eq!(kept, scanned(&store, RANGES));
        assert_ne!(kept, vec![[0u8; 16]; RANGES]);
        // Other counts are scanned, and agree.
        assert_eq!(store.range_digests(16).unwrap(), scanned(&store, 16));
    }

    #[test]
    fn a_failed_commit_changes_no_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        local(&store, "k", "v1");
        let before = store.range_digests(RANGES).unwrap();
        store.fail_after_log.store(true, Ordering::SeqCst);
        let failed = store.write_local("k", |cur| {
            let clock = cur.client_write(3, None, 0).unwrap();
            Ok((SiblingSet::single(Version::value("v2", clock)), ()))
        });
        assert!(failed.is_err());
        assert_eq!(store.known_digests(), Some(before.clone()), "the failed write changed a digest");
        // The failure is the store's fault: its next use reopens it, which forgets the digests.
        assert!(grouped(&store, "k", "v2", false).is_err());
        let version = Version::value("x", VectorClock::from(vec![0, 5, 0]));
        assert!(store.merge_remote(&[("m".to_string(), vec![version])], |_, _, _| Ok(()), false).is_err());
        assert_eq!(store.known_digests(), None);
        store.fail_after_log.store(false, Ordering::SeqCst);
        assert_eq!(store.range_digests(RANGES).unwrap(), before);
        assert_eq!(scanned(&store, RANGES), before);
        local(&store, "k", "v3");
        assert_eq!(store.known_digests().unwrap(), scanned(&store, RANGES), "kept again after the reopen");
    }

    #[test]
    fn commits_during_the_first_scan_are_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()));
        for i in 0..2_000 {
            merge(&store, &format!("k{i}"), "v", &[0, 1, 0]);
        }
        for round in 0..5u64 {
            store.digests.reset();
            let writer = {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..300u64 {
                        let clock = [0, 2 + round, i];
                        merge(&store, &format!("k{}", (i * 7) % 2_000), "w", &clock);
                        grouped(&store, &format!("g{round}-{i}"), "v", false).unwrap();
                    }
                })
            };
            // Scans race the writer: each is tracked, or (while another runs) answered alone.
            while !writer.is_finished() {
                store.range_digests(RANGES).unwrap();
            }
            writer.join().unwrap();
            store.range_digests(RANGES).unwrap();
            assert_eq!(store.known_digests().unwrap(), scanned(&store, RANGES), "round {round}");
        }
    }
}
