//! Durable state of one replica: the sibling sets and the per-peer outboxes, in one redb file.
//!
//! Size: every operation on the store, one per kind of transaction; the file's lifecycle (creation,
//! opening, repair, reopening after a fault) is in `file.rs`.
//!
//! # Tables
//!
//! ```text
//!   keys          key  → JSON sibling set        what GET serves
//!   outbox.<id>   key  → mark (u64)              "peer <id> has not yet acknowledged this key"
//!   meta          name → text                    cluster fingerprint and own address
//!   counters      name → u64                     the mark sequence
//! ```
//!
//! Beside the file, `vkv.wal`: the write-ahead log that makes a commit durable (see `wal.rs`).
//!
//! # Why marks carry a number
//!
//! A client write commits the key's new sibling set *and* a fresh mark (the next value of one
//! sequence) in every peer's outbox, in one transaction, before the client hears "ok". A sender
//! reads a batch of marks with the sets they point to, ships them, and on acknowledgement removes
//! each mark **only if it still holds the number it read**. A write that landed while the batch
//! was in flight left a newer number, so the key stays queued and its newer set ships next time.
//! The outbox coalesces: ten writes to one key while a peer is down leave one mark.
//!
//! Everything here is synchronous; the replica calls it from `spawn_blocking`.

use std::collections::HashSet;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde_json::value::RawValue;

use super::cache::ReadCache;
pub use super::cache::{CachedRead, DEFAULT_BUDGET as DEFAULT_READ_CACHE_BUDGET};
pub use super::commit::Lead;
use super::digest::{Delta, Prior};
use super::file::Fault;
pub use super::file::{Repair, DAMAGE_HINT};
pub use super::upkeep::{Compaction, Upkeep};
use super::wal::{Frame, Wal};
use crate::core::clock::VectorClock;
use crate::core::cluster::ReplicaId;
use crate::core::versions::{MergeOutcome, SiblingSet, Version};
use crate::error::{Error, Result};

pub(super) const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
pub(super) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
pub(super) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
pub(super) const MARK_SEQUENCE: &str = "mark_sequence";
pub(super) const RECOVERED: &str = "recovered";
pub(super) const DB_FILE: &str = "vkv.redb";
/// A checkpoint follows a commit once the last one is this old (and the log is not empty).
pub(super) const CHECKPOINT_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);
/// ... or once the log holds this many bytes.
pub(super) const CHECKPOINT_BYTES: u64 = 64 << 20;

pub(super) fn outbox_name(peer: ReplicaId) -> String {
    format!("outbox.{peer}")
}

/// One key a sender owes a peer: its current sibling set and the mark it was read with.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The key.
    pub key: String,
    /// The outbox mark read with the set; acknowledging clears it only if unchanged.
    pub mark: u64,
    /// The key's sibling set at read time, as the JSON it is stored as (an array of versions,
    /// which is also its form on the wire): a sender ships these bytes as they are instead of
    /// decoding and re-encoding every set (see `ReplicateBatch`).
    pub set: Box<RawValue>,
}

impl Pending {
    /// The set's clocks, decoded (for log lines); empty if the stored bytes do not decode.
    pub fn clocks(&self) -> Vec<VectorClock> {
        serde_json::from_str::<SiblingSet>(self.set.get()).map(|s| s.clocks()).unwrap_or_default()
    }
}

/// The decision taken for one incoming version — what the replica logs.
#[derive(Debug, Clone)]
pub struct MergeRecord {
    /// The key.
    pub key: String,
    /// The local clocks before the merge (empty for a new key).
    pub local: Vec<VectorClock>,
    /// The incoming version's clock.
    pub received: VectorClock,
    /// What the merge did.
    pub outcome: MergeOutcome,
}

/// Keys whose entry a merge's check refused, each with the reason.
pub type Refused = Vec<(String, String)>;

/// A replica's durable store.
pub struct Store {
    pub(super) db: RwLock<Option<Database>>,
    pub(super) path: PathBuf,
    pub(super) fault: Mutex<Fault>,
    pub(super) peers: Vec<ReplicaId>,
    pub(super) commits: AtomicU64,
    /// Reads that went to the store file (not answered by the read cache) since it was opened:
    /// with `commits`, what tells the upkeep whether the store is idle.
    pub(super) reads: AtomicU64,
    pub(super) queue: super::commit::CommitQueue,
    /// The write-ahead log of commits since the last checkpoint (see `wal.rs`).
    pub(super) wal: Mutex<Wal>,
    /// When the last checkpoint made redb's pages durable and emptied the log.
    pub(super) checkpointed: Mutex<std::time::Instant>,
    /// Recent reads' answers, coherent with every commit (see `cache.rs`).
    pub(super) cache: ReadCache,
    /// What the idle upkeep remembers between its ticks (see `upkeep.rs`).
    pub(super) upkeep: Mutex<super::upkeep::UpkeepState>,
    /// Anti-entropy's range digests, kept current by the commits (see `digest.rs`).
    pub(super) digests: super::digest::Tracker,
    /// Tests only: make every commit fail (as a full disk would).
    #[cfg(test)]
    pub(super) fail_commits: std::sync::atomic::AtomicBool,
    /// Tests only: make redb's commit fail after the log's append succeeded.
    #[cfg(test)]
    pub(super) fail_after_log: std::sync::atomic::AtomicBool,
}

/// How a reader renders a key's set into the answer the read cache keeps: given the key, its set
/// (empty if the key was never written) and N.
pub type Render = fn(&str, &SiblingSet, usize) -> bytes::Bytes;

pub(super) fn decode(key: &str, bytes: &[u8]) -> Result<SiblingSet> {
    serde_json::from_slice(bytes).map_err(|e| Error::Storage(format!("stored entry for key {key:?} is corrupt: {e}")))
}

/// A stored set as raw JSON, checked to be well-formed JSON (not decoded into versions).
fn raw_set(key: &str, bytes: &[u8]) -> Result<Box<RawValue>> {
    std::str::from_utf8(bytes)
        .map_err(|e| e.to_string())
        .and_then(|text| RawValue::from_string(text.to_string()).map_err(|e| e.to_string()))
        .map_err(|e| Error::Storage(format!("stored entry for key {key:?} is corrupt: {e}")))
}

pub(super) fn encode(set: &SiblingSet) -> Vec<u8> {
    serde_json::to_vec(set).expect("a sibling set always serialises")
}

impl Store {
    pub(super) fn commit(&self, txn: redb::WriteTransaction) -> Result<()> {
        self.finish(txn, true)
    }

    /// Commits `txn` without waiting for the disk (redb's `Durability::None`): it becomes durable
    /// with the next durable commit, and a crash before that undoes it. Only for changes a crash
    /// may undo safely (clearing delivered outbox marks: a mark that comes back re-ships a set
    /// the peer already holds, and its merge is a no-op). Does not clear a fault: only a commit
    /// that reached the disk proves the disk works.
    pub(super) fn commit_lazily(&self, mut txn: redb::WriteTransaction) -> Result<()> {
        txn.set_durability(redb::Durability::None)
            .map_err(|e| Error::Storage(format!("cannot commit without fsync: {e}")))?;
        self.finish(txn, false)
    }

    fn finish(&self, txn: redb::WriteTransaction, durable: bool) -> Result<()> {
        #[cfg(test)]
        if self.fail_commits.load(Ordering::SeqCst) {
            return Err(Error::Storage("injected commit failure".into()));
        }
        let started = std::time::Instant::now();
        txn.commit()?;
        if durable {
            metrics::histogram!("vkv_commit_duration_seconds").record(started.elapsed().as_secs_f64());
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.clear_fault();
        }
        Ok(())
    }

    /// Commits `txn` durably through the write-ahead log: `frame` (the transaction's changes) is
    /// appended and fsync'd, then the transaction is committed without fsync, so it is visible
    /// at once and its pages reach the disk with the next checkpoint. When this returns `Ok`,
    /// the changes survive a crash. If the append fails, the transaction is dropped: nothing of
    /// it is visible or durable.
    pub(super) fn commit_logged(&self, mut txn: redb::WriteTransaction, frame: Frame, delta: Delta) -> Result<()> {
        #[cfg(test)]
        if self.fail_commits.load(Ordering::SeqCst) {
            return Err(Error::Storage("injected commit failure".into()));
        }
        let started = std::time::Instant::now();
        txn.set_durability(redb::Durability::None)
            .map_err(|e| Error::Storage(format!("cannot commit without fsync: {e}")))?;
        // The read cache drops the keys before the commit is visible and again after it, and
        // keeps none of them while it is in flight (see `cache.rs`).
        self.cache.begin_write(frame.keys());
        // Ends the keys' write in the cache however this returns (a panic in redb included).
        struct EndWrite<'a>(&'a ReadCache, &'a Frame);
        impl Drop for EndWrite<'_> {
            fn drop(&mut self) {
                self.0.end_write(self.1.keys());
            }
        }
        let ending = EndWrite(&self.cache, &frame);
        let committed = self.append_and_commit(txn, &frame, &delta);
        drop(ending);
        committed?;
        metrics::histogram!("vkv_commit_duration_seconds").record(started.elapsed().as_secs_f64());
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.clear_fault();
        Ok(())
    }

    /// The log's append of `frame`, then redb's commit of `txn` (without fsync), then the
    /// commit's changes to the range digests.
    fn append_and_commit(&self, txn: redb::WriteTransaction, frame: &Frame, delta: &Delta) -> Result<()> {
        // Held until redb's commit: a checkpoint empties the log only between commits.
        let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        let before = wal.len();
        wal.append(frame)?;
        if let Err(e) = self.commit_visibly(txn) {
            // The writers hear this commit failed: its frame must not be applied at the next
            // open. If even the cut fails, an open may apply it (the outcome is then unknown,
            // as for a request that timed out), and the error says so.
            return Err(match wal.cut_back(before) {
                Ok(()) => e,
                Err(cut) => Error::Storage(format!("{e}; the write may or may not be applied ({cut})")),
            });
        }
        // Still holding the log: a digest scan's snapshot is before this commit or after it.
        self.digests.apply(delta);
        Ok(())
    }

    /// redb's commit of a logged transaction (without fsync).
    fn commit_visibly(&self, txn: redb::WriteTransaction) -> Result<()> {
        #[cfg(test)]
        if self.fail_after_log.load(Ordering::SeqCst) {
            drop(txn);
            return Err(Error::Storage("injected failure of redb's commit after the log's append".into()));
        }
        txn.commit()?;
        Ok(())
    }

    /// Checkpoints (see [`Store::checkpoint`]) if the log holds frames and the last checkpoint
    /// is [`CHECKPOINT_PERIOD`] old, or the log passed [`CHECKPOINT_BYTES`].
    pub(super) fn checkpoint_if_due(&self, db: &Database) -> Result<()> {
        let len = self.wal.lock().unwrap_or_else(|e| e.into_inner()).len();
        let last = *self.checkpointed.lock().unwrap_or_else(|e| e.into_inner());
        if len > 0 && (last.elapsed() >= CHECKPOINT_PERIOD || len >= CHECKPOINT_BYTES) {
            self.checkpoint(db)?;
        }
        Ok(())
    }

    /// Makes every commit so far durable in redb (one commit with fsync writes the pages of all
    /// the commits the log covers), then empties the log.
    pub(super) fn checkpoint(&self, db: &Database) -> Result<()> {
        let started = std::time::Instant::now();
        // redb's write lock first, then the log's: no commit is between its append and its
        // redb commit while the log is emptied (a commit waiting for the log appends after).
        let txn = db.begin_write()?;
        let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = wal.len();
        txn.commit()?;
        wal.clear()?;
        drop(wal);
        *self.checkpointed.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        metrics::histogram!("vkv_checkpoint_duration_seconds").record(started.elapsed().as_secs_f64());
        tracing::debug!("checkpoint: {bytes} byte(s) of log made durable in redb in {:?}", started.elapsed());
        Ok(())
    }

    /// Commits that reached the disk (each one fsync: of the write-ahead log, or of redb for
    /// the few transactions that commit there directly) since the store was opened.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// True while this store was created empty and has not yet completed recovery from the
    /// peers (see `replica`: such a replica refuses writes so it cannot reissue a clock counter).
    pub fn needs_recovery(&self) -> Result<bool> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            Ok(meta.get(RECOVERED)?.is_some_and(|v| v.value() == "no"))
        })
    }

    /// Records, durably, that recovery from the peers is complete.
    pub fn mark_recovered(&self) -> Result<()> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            txn.open_table(META)?.insert(RECOVERED, "yes")?;
            self.commit(txn)?;
            Ok(())
        })
    }

    /// The key's sibling set (empty if never written).
    pub fn get(&self, key: &str) -> Result<SiblingSet> {
        self.with_db(|db| self.read_file(db, key))
    }

    /// [`Store::get`] on the calling thread, for an async worker: a redb read transaction never
    /// waits for writers and a read is a few page lookups, so a read costs less than the hand-off
    /// to the blocking pool. `None` when the store is recovering from a fault or being reopened
    /// (that can take long): then use [`Store::get`] on the blocking pool.
    pub fn get_now(&self, key: &str) -> Option<Result<SiblingSet>> {
        self.try_with_db(|db| self.read_file(db, key))
    }

    /// A client read that goes to the file (not answered by the read cache), counted for the
    /// upkeep's idleness.
    fn read_file(&self, db: &Database, key: &str) -> Result<SiblingSet> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        read_set(db, key)
    }

    /// The answer to a read of `key` through the read cache: on a hit, no store read at all (nor
    /// a wait for the store: a hit is served while the store is held by a compaction or has a
    /// fault — a cached answer is committed data, never older than an acknowledged write); on a
    /// miss, the key's set is read as [`Store::get_now`] reads it, rendered by `render` (the key,
    /// its set, and N), and kept for the next reader (see `cache.rs`). `None` on a miss while the
    /// store is recovering from a fault or being reopened or compacted: then use
    /// [`Store::get_cached`].
    pub fn get_cached_now(&self, key: &str, render: Render) -> Option<Result<Arc<CachedRead>>> {
        match self.cache.lookup(key) {
            Ok(found) => Some(Ok(found)),
            Err(ticket) => self.try_with_db(|db| self.read_missed(db, key, render, ticket)),
        }
    }

    /// [`Store::get_cached_now`] that waits for a store being reopened (for the blocking pool).
    pub fn get_cached(&self, key: &str, render: Render) -> Result<Arc<CachedRead>> {
        match self.cache.lookup(key) {
            Ok(found) => Ok(found),
            Err(ticket) => self.with_db(|db| self.read_missed(db, key, render, ticket)),
        }
    }

    /// A cache miss: the store's read, rendered, offered to the cache with the miss's ticket
    /// (taken before the read, so a commit since makes the cache turn it down).
    fn read_missed(
        &self,
        db: &Database,
        key: &str,
        render: Render,
        ticket: super::cache::Ticket,
    ) -> Result<Arc<CachedRead>> {
        let set = self.read_file(db, key)?;
        let read = CachedRead::new(key, render(key, &set, self.peers.len() + 1), set.is_deleted());
        Ok(self.cache.offer(key, read, ticket))
    }

    /// Sets the read cache's budget in bytes (0 turns it off).
    pub fn set_read_cache_budget(&self, bytes: usize) {
        self.cache.set_budget(bytes);
    }

    /// The read cache's entries and the bytes they count.
    #[cfg(test)]
    pub fn read_cache_usage(&self) -> (usize, usize) {
        self.cache.usage()
    }

    /// Applies a client write: `decide` gets the key's current set and returns the new one (or an
    /// error, in which case nothing is written). The new set and a mark for every peer are
    /// committed in one transaction; when this returns `Ok`, the write is on disk.
    pub fn write_local<T>(&self, key: &str, decide: impl FnOnce(&SiblingSet) -> Result<(SiblingSet, T)>) -> Result<T> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            let mut frame = Frame::default();
            let mut delta = Delta::default();
            let answer = {
                let mut keys = txn.open_table(KEYS)?;
                let (current, before) = current_set(&keys, key)?;
                let (next, answer) = decide(&current)?;
                let encoded = encode(&next);
                keys.insert(key, encoded.as_slice())?;
                delta.change(&before, &encoded);
                let mut counters = txn.open_table(COUNTERS)?;
                let mark = counters.get(MARK_SEQUENCE)?.map(|g| g.value()).unwrap_or(0) + 1;
                counters.insert(MARK_SEQUENCE, mark)?;
                for &peer in &self.peers {
                    let name = outbox_name(peer);
                    let mut outbox = txn.open_table(TableDefinition::<&str, u64>::new(&name))?;
                    outbox.insert(key, mark)?;
                }
                frame.add(key, &encoded, Some(mark));
                answer
            };
            self.commit_logged(txn, frame, delta)?;
            Ok(answer)
        })
    }

    /// Merges a peer's batch: every version of every entry is merged in one transaction, which
    /// commits only if something changed. `check` vets each incoming version against the key's
    /// set before it is merged; an entry with a refused version is either skipped whole (with
    /// `skip_refused`, returned with the reason) or fails the whole batch (nothing is applied).
    /// Returns one record per merged version, and the skipped keys.
    pub fn merge_remote(
        &self,
        entries: &[(String, Vec<Version>)],
        check: impl Fn(&str, &SiblingSet, &Version) -> std::result::Result<(), String>,
        skip_refused: bool,
    ) -> Result<(Vec<MergeRecord>, Refused)> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            let mut records = Vec::new();
            let mut skipped = Vec::new();
            let mut frame = Frame::default();
            let mut delta = Delta::default();
            {
                let mut keys = txn.open_table(KEYS)?;
                'entries: for (key, versions) in entries {
                    let (mut set, before) = current_set(&keys, key)?;
                    let mut changed = false;
                    let mut merged = Vec::with_capacity(versions.len());
                    for v in versions {
                        if let Err(reason) = check(key, &set, v) {
                            if skip_refused {
                                skipped.push((key.clone(), reason));
                                continue 'entries;
                            }
                            return Err(Error::InvalidInput(reason));
                        }
                        let local = set.versions().iter().map(|l| l.clock.clone()).collect();
                        let received = v.clock.clone();
                        let outcome = set.merge(v.clone());
                        changed |= outcome.changed();
                        merged.push(MergeRecord { key: key.clone(), local, received, outcome });
                    }
                    records.append(&mut merged);
                    if changed {
                        let encoded = encode(&set);
                        keys.insert(key.as_str(), encoded.as_slice())?;
                        delta.change(&before, &encoded);
                        frame.add(key, &encoded, None);
                    }
                }
            }
            if !frame.is_empty() {
                self.commit_logged(txn, frame, delta)?;
                // The merge is durable whatever happens to the checkpoint: a checkpoint that
                // fails is the store's fault (recorded) and is tried again after the next commit.
                if let Err(e) = self.checkpoint_if_due(db) {
                    self.record_fault(&e.to_string());
                }
            } else {
                // Nothing changed: no commit, no fsync (a re-shipped batch costs a read only).
                txn.abort()?;
            }
            Ok((records, skipped))
        })
    }

    /// Up to `max_keys` keys owed to `peer`, stopping once their encoded sets pass `max_bytes`
    /// (always at least one key, so a single large key still ships).
    ///
    /// The scan starts just after `after` and wraps around, so a sender that passes the last key
    /// of its previous batch visits every queued key in turn: keys that are rewritten all the
    /// time cannot starve the others. Keys in `skip` are passed over.
    pub fn pending(
        &self,
        peer: ReplicaId,
        after: Option<&str>,
        max_keys: usize,
        max_bytes: usize,
        skip: &HashSet<String>,
    ) -> Result<Vec<Pending>> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let name = outbox_name(peer);
            let outbox = txn.open_table(TableDefinition::<&str, u64>::new(&name))?;
            let keys = txn.open_table(KEYS)?;
            let (tail, head) = match after {
                Some(a) => {
                    (outbox.range::<&str>((Bound::Excluded(a), Bound::Unbounded))?, Some(outbox.range::<&str>(..=a)?))
                }
                None => (outbox.iter()?, None),
            };
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            for item in tail.chain(head.into_iter().flatten()) {
                if batch.len() >= max_keys || (bytes >= max_bytes && !batch.is_empty()) {
                    break;
                }
                let (key, mark) = item?;
                let key = key.value().to_string();
                if skip.contains(&key) {
                    continue;
                }
                let Some(raw) = keys.get(key.as_str())? else {
                    continue; // cannot happen: marks are written with their key
                };
                bytes += raw.value().len();
                let set = raw_set(&key, raw.value())?;
                batch.push(Pending { key, mark: mark.value(), set });
            }
            Ok(batch)
        })
    }

    /// Number of keys owed to `peer`.
    pub fn outbox_depth(&self, peer: ReplicaId) -> Result<u64> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let name = outbox_name(peer);
            Ok(txn.open_table(TableDefinition::<&str, u64>::new(&name))?.len()?)
        })
    }

    /// Number of keys stored (tombstoned keys included).
    pub fn key_count(&self) -> Result<u64> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            Ok(txn.open_table(KEYS)?.len()?)
        })
    }

    /// Calls `visit` with every key and its stored set's bytes, in key order: one read
    /// transaction over the whole store. Stored sets are canonical
    /// (sorted versions, deterministic JSON), so equal sets have equal bytes. (Tests compare
    /// with it; the digests scan on their own, under the log's lock.)
    #[cfg(test)]
    pub(super) fn scan_raw(&self, mut visit: impl FnMut(&str, &[u8])) -> Result<()> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            for item in txn.open_table(KEYS)?.iter()? {
                let (key, set) = item?;
                visit(key.value(), set.value());
            }
            Ok(())
        })
    }

    /// The keys `wanted` selects (with their sets), in key order from just after `after`, at most
    /// `limit` of them and about `max_bytes` of sets (at least one); the flag says whether more
    /// were left out (to page through a large answer).
    pub fn entries_where(
        &self,
        wanted: impl Fn(&str) -> bool,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(String, SiblingSet)>, bool)> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let keys = txn.open_table(KEYS)?;
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let scan = match after {
                Some(a) => keys.range::<&str>((Bound::Excluded(a), Bound::Unbounded))?,
                None => keys.iter()?,
            };
            for item in scan {
                let (key, set) = item?;
                if !wanted(key.value()) {
                    continue;
                }
                if out.len() >= limit || (bytes >= max_bytes && !out.is_empty()) {
                    return Ok((out, true));
                }
                bytes += set.value().len();
                out.push((key.value().to_string(), decode(key.value(), set.value())?));
            }
            Ok((out, false))
        })
    }

    /// Removes every mark owed to `peer` — what a lost or corrupted outbox looks like. For
    /// operators and tests (the replica must be stopped); anti-entropy repairs what it leaves.
    pub fn clear_outbox(&self, peer: ReplicaId) -> Result<u64> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            let cleared = {
                let name = outbox_name(peer);
                let mut outbox = txn.open_table(TableDefinition::<&str, u64>::new(&name))?;
                let n = outbox.len()?;
                outbox.retain(|_, _| false)?;
                n
            };
            self.commit(txn)?;
            Ok(cleared)
        })
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;

/// A key's set in a write transaction, and what the range digests hold for it.
pub(super) fn current_set(keys: &redb::Table<&str, &[u8]>, key: &str) -> Result<(SiblingSet, Prior)> {
    Ok(match keys.get(key)? {
        Some(bytes) => (decode(key, bytes.value())?, Prior::of(key, Some(bytes.value()))),
        None => (SiblingSet::new(), Prior::of(key, None)),
    })
}

fn read_set(db: &Database, key: &str) -> Result<SiblingSet> {
    let txn = db.begin_read()?;
    let keys = txn.open_table(KEYS)?;
    match keys.get(key)? {
        Some(bytes) => decode(key, bytes.value()),
        None => Ok(SiblingSet::new()),
    }
}
