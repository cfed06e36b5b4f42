//! The read cache: the answers to recent reads of keys, as the reader rendered them from the
//! key's sibling set, kept coherent with every commit, so a `GET` of a hot key costs no redb
//! transaction, no JSON decoding and no encoding.
//!
//! # Coherence
//!
//! Every commit that changes keys tells the cache before and after it commits (`begin_write`,
//! `end_write`, with the commit's keys): both steps drop those keys, and between them the keys
//! are *being written*. A reader that misses notes the generation of its key's stripe (a key
//! hashes to one of [`STRIPES`] stripes; every write step on a key of the stripe advances it),
//! reads the store, and keeps what it read only if the stripe's generation has not moved and no
//! write is in flight on the stripe. So an answer enters the cache only if no commit on its key
//! began or ended while it was being read; a commit entirely before the read is in what it read,
//! and one entirely after it drops the entry when it ends. A write is acknowledged only after its
//! commit's `end_write`, so a read that starts after the acknowledgement sees that write (a read
//! concurrent with a commit may see the set before it, as without the cache).
//!
//! A store that is reopened after a fault replays its log: the whole cache is dropped then.
//!
//! # Size
//!
//! Entries are counted by the bytes they hold (key, rendered answer) plus a fixed allowance for
//! the map's and the allocator's bookkeeping; past the budget, entries picked at random make room
//! (no recency bookkeeping on the hot path). Once full, only one miss in [`ADMIT_WHEN_FULL`] is
//! admitted: when reads spread over more keys than fit, each admission would only swap one cold
//! entry for another. A budget of 0 turns the cache off.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockWriteGuard};

use bytes::Bytes;
use indexmap::IndexMap;

/// Write stripes: a write in flight keeps only its own stripes' keys from being cached.
const STRIPES: usize = 1024;
/// Per-entry bookkeeping counted on top of the key and the answer: the map's slot and index, the
/// key's and the answer's allocations, the `Arc`, rounded up for the allocator's size classes.
const ENTRY_OVERHEAD: usize = 192;
/// Once the cache is full, one miss in this many is kept (see [`ReadCache::offer`]).
const ADMIT_WHEN_FULL: u32 = 16;
/// The default budget (`--read-cache-mib`).
pub const DEFAULT_BUDGET: usize = 64 << 20;

/// A read's answer as the cache keeps it: the body the reader rendered from the key's set, and
/// whether the key was absent or deleted.
#[derive(Debug)]
pub struct CachedRead {
    body: Bytes,
    deleted: bool,
    /// The bytes this entry counts against the budget.
    size: usize,
}

impl CachedRead {
    /// `body` rendered from the set of `key`; `deleted`: the key is absent or deleted.
    pub fn new(key: &str, body: Bytes, deleted: bool) -> CachedRead {
        let size = key.len() + body.len() + ENTRY_OVERHEAD;
        CachedRead { body, deleted, size }
    }

    /// The rendered answer (shared, not copied).
    pub fn body(&self) -> Bytes {
        self.body.clone()
    }

    /// True when the key was absent or deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted
    }
}

/// What a reader that missed must show when it offers what it read.
#[derive(Debug)]
pub(super) struct Ticket {
    stripe: usize,
    generation: u64,
}

#[derive(Clone, Copy, Default)]
struct Stripe {
    generation: u64,
    writing: u32,
}

struct Inner {
    entries: IndexMap<Box<str>, Arc<CachedRead>>,
    bytes: usize,
    stripes: Vec<Stripe>,
}

/// See the module's documentation.
pub(super) struct ReadCache {
    inner: RwLock<Inner>,
    budget: AtomicUsize,
    /// `Inner::bytes` as of the last change, readable without the lock.
    held: AtomicUsize,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for ReadCache {
    fn default() -> Self {
        ReadCache::new(DEFAULT_BUDGET)
    }
}

impl ReadCache {
    pub fn new(budget: usize) -> ReadCache {
        ReadCache {
            inner: RwLock::new(Inner { entries: IndexMap::new(), bytes: 0, stripes: vec![Stripe::default(); STRIPES] }),
            budget: budget.into(),
            held: AtomicUsize::new(0),
            hasher: Default::default(),
        }
    }

    fn lock(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn stripe(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % STRIPES
    }

    /// The cached set of `key`, or the ticket to offer what the store holds.
    pub fn lookup(&self, key: &str) -> Result<Arc<CachedRead>, Ticket> {
        // A read lock: lookups on the async workers do not queue behind one another.
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        match inner.entries.get(key) {
            Some(found) => Ok(found.clone()),
            None => {
                let stripe = self.stripe(key);
                Err(Ticket { stripe, generation: inner.stripes[stripe].generation })
            }
        }
    }

    /// Takes what a reader read and rendered (after a miss) and keeps it if no write on its stripe began or
    /// ended since the lookup, and the budget allows.
    pub fn offer(&self, key: &str, entry: CachedRead, ticket: Ticket) -> Arc<CachedRead> {
        let entry = Arc::new(entry);
        let budget = self.budget.load(Ordering::Relaxed);
        if entry.size > budget / 8 {
            return entry;
        }
        // Full: admit one miss in ADMIT_WHEN_FULL, decided before taking the lock. When the
        // reads spread over more keys than fit, every admission only swaps one cold entry for
        // another (the hit rate is the share that fits either way), and a miss would pay an
        // exclusive lock and an eviction for nothing; a key read often still gets in soon.
        let full = self.held.load(Ordering::Relaxed) + entry.size > budget;
        if full && !rand::random_ratio(1, ADMIT_WHEN_FULL) {
            return entry;
        }
        let mut inner = self.lock();
        let stripe = inner.stripes[ticket.stripe];
        if stripe.generation != ticket.generation || stripe.writing > 0 {
            return entry;
        }
        while inner.bytes + entry.size > budget && !inner.entries.is_empty() {
            let victim = rand::random_range(0..inner.entries.len());
            if let Some((_, gone)) = inner.entries.swap_remove_index(victim) {
                inner.bytes -= gone.size;
            }
        }
        inner.bytes += entry.size;
        if let Some(old) = inner.entries.insert(key.into(), entry.clone()) {
            inner.bytes -= old.size;
        }
        self.held.store(inner.bytes, Ordering::Relaxed);
        entry
    }

    /// Step on `keys` around a commit that changes them: drops them, and counts a write in flight
    /// on their stripes (`starting`) or ends it.
    fn step<'k>(&self, keys: impl Iterator<Item = &'k str>, starting: bool) {
        let stripes: Vec<(usize, &str)> = keys.map(|k| (self.stripe(k), k)).collect();
        let mut inner = self.lock();
        for (stripe, key) in stripes {
            let s = &mut inner.stripes[stripe];
            s.generation += 1;
            if starting {
                s.writing += 1;
            } else {
                s.writing = s.writing.saturating_sub(1);
            }
            if let Some(gone) = inner.entries.swap_remove(key) {
                inner.bytes -= gone.size;
            }
        }
        self.held.store(inner.bytes, Ordering::Relaxed);
    }

    /// Before a commit that changes `keys`.
    pub fn begin_write<'k>(&self, keys: impl Iterator<Item = &'k str>) {
        self.step(keys, true);
    }

    /// After that commit, whether it went through or failed (the same keys).
    pub fn end_write<'k>(&self, keys: impl Iterator<Item = &'k str>) {
        self.step(keys, false);
    }

    /// Drops every entry (the store was reopened and its log replayed); only while no commit runs.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.bytes = 0;
        self.held.store(0, Ordering::Relaxed);
        // No commit runs during a reopen (it holds the store's handle exclusively): a count left
        // by a commit that panicked before its `end_write` is reset here.
        for s in inner.stripes.iter_mut() {
            s.generation += 1;
            s.writing = 0;
        }
    }

    /// Sets the budget in bytes (0: off); entries past it are dropped now.
    pub fn set_budget(&self, budget: usize) {
        self.budget.store(budget, Ordering::Relaxed);
        let mut inner = self.lock();
        while inner.bytes > budget {
            match inner.entries.pop() {
                Some((_, gone)) => inner.bytes -= gone.size,
                None => break,
            }
        }
        self.held.store(inner.bytes, Ordering::Relaxed);
    }

    /// Entries and the bytes they count.
    #[cfg(test)]
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        (inner.entries.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(value: &str) -> CachedRead {
        CachedRead::new("k", Bytes::from(value.to_string()), false)
    }

    fn cached_value(cache: &ReadCache, key: &str) -> Option<String> {
        cache.lookup(key).ok().map(|c| String::from_utf8(c.body().to_vec()).unwrap())
    }

    /// What one entry of a 1-byte key and a 1-byte answer counts.
    const ONE: usize = 2 + ENTRY_OVERHEAD;

    #[test]
    fn a_miss_offered_back_is_kept_and_a_commit_on_the_key_drops_it() {
        let cache = ReadCache::new(1 << 20);
        let ticket = cache.lookup("k").unwrap_err();
        cache.offer("k", read("1"), ticket);
        assert_eq!(cached_value(&cache, "k").as_deref(), Some("1"));
        cache.begin_write(["k"].into_iter());
        assert!(cache.lookup("k").is_err(), "dropped when the commit begins");
        cache.end_write(["k"].into_iter());
        assert!(cache.lookup("k").is_err());
        assert_eq!(cache.usage(), (0, 0));
    }

    #[test]
    fn what_was_read_while_a_commit_on_its_key_began_ended_or_was_in_flight_is_not_kept() {
        let cache = ReadCache::new(1 << 20);
        // Read before the commit began, offered after it began: the reader may hold the old set.
        let ticket = cache.lookup("k").unwrap_err();
        cache.begin_write(["k"].into_iter());
        cache.offer("k", read("old"), ticket);
        assert!(cache.lookup("k").is_err());
        // Looked up while the commit is in flight: not kept either.
        let ticket = cache.lookup("k").unwrap_err();
        cache.offer("k", read("old"), ticket);
        assert!(cache.lookup("k").is_err());
        // Looked up in flight, offered after the commit ended: the stripe moved, not kept.
        let ticket = cache.lookup("k").unwrap_err();
        cache.end_write(["k"].into_iter());
        cache.offer("k", read("old"), ticket);
        assert!(cache.lookup("k").is_err());
        // Looked up after the commit ended: kept.
        let ticket = cache.lookup("k").unwrap_err();
        cache.offer("k", read("new"), ticket);
        assert_eq!(cached_value(&cache, "k").as_deref(), Some("new"));
    }

    #[test]
    fn the_budget_bounds_the_bytes_held_and_zero_turns_the_cache_off() {
        let cache = ReadCache::new(100 * ONE);
        for i in 0..1000 {
            let key = format!("{}", char::from_u32(0x41 + i).unwrap());
            let key = if key.len() == 1 { key } else { continue };
            let ticket = cache.lookup(&key).unwrap_err();
            cache.offer(&key, CachedRead::new(&key, Bytes::from_static(b"v"), false), ticket);
        }
        let (entries, bytes) = cache.usage();
        assert_eq!((entries, bytes), (63, 63 * ONE), "the 63 one-byte keys fit");
        for i in 0..1000 {
            let key = format!("k{i:03}"); // 4 bytes
            let ticket = cache.lookup(&key).unwrap_err();
            cache.offer(&key, CachedRead::new(&key, Bytes::from_static(b"v"), false), ticket);
        }
        let (entries, bytes) = cache.usage();
        assert!(bytes <= 100 * ONE && entries >= 90, "{entries} entries, {bytes} bytes");
        // Once full, about one miss in ADMIT_WHEN_FULL replaces an entry.
        let newer = (0..1000).filter(|i| cache.lookup(&format!("k{i:03}")).is_ok()).count();
        assert!((37..=100).contains(&newer), "{newer} of the 1000 four-byte keys are held");
        cache.set_budget(0);
        assert_eq!(cache.usage(), (0, 0));
        let ticket = cache.lookup("k").unwrap_err();
        let answered = cache.offer("k", read("v"), ticket);
        assert_eq!(&answered.body()[..], b"v", "still answers");
        assert!(cache.lookup("k").is_err(), "but keeps nothing");
    }

    #[test]
    fn clear_drops_everything_and_resets_writes_a_panicked_commit_left() {
        let cache = ReadCache::new(1 << 20);
        let ticket = cache.lookup("k").unwrap_err();
        cache.offer("k", read("v"), ticket);
        let ticket = cache.lookup("other").unwrap_err();
        cache.begin_write(["stuck"].into_iter()); // its end_write never comes
        cache.clear();
        cache.offer("other", read("v"), ticket);
        assert!(
            cache.lookup("k").is_err() && cache.lookup("other").is_err(),
            "a read from before the clear is not kept"
        );
        let ticket = cache.lookup("stuck").unwrap_err();
        cache.offer("stuck", read("v"), ticket);
        assert!(cache.lookup("stuck").is_ok(), "the stripe of the stuck write caches again");
    }
}
