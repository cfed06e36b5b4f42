//! Durable state of one replica: the sibling sets and the per-peer outboxes, in one redb file.
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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use sha2::{Digest, Sha256};

use crate::clock::VectorClock;
use crate::cluster::{Layout, ReplicaId};
use crate::error::{Error, Result};
use crate::versions::{MergeOutcome, SiblingSet, Version};

const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const MARK_SEQUENCE: &str = "mark_sequence";
const RECOVERED: &str = "recovered";
const DB_FILE: &str = "vkv.redb";

fn outbox_name(peer: ReplicaId) -> String {
    format!("outbox.{peer}")
}

/// One key a sender owes a peer: its current sibling set and the mark it was read with.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The key.
    pub key: String,
    /// The outbox mark read with the set; acknowledging clears it only if unchanged.
    pub mark: u64,
    /// The key's sibling set at read time.
    pub set: SiblingSet,
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
    db: Database,
    dir: PathBuf,
    peers: Vec<ReplicaId>,
    commits: AtomicU64,
}

fn decode(key: &str, bytes: &[u8]) -> Result<SiblingSet> {
    serde_json::from_slice(bytes).map_err(|e| Error::Storage(format!("stored entry for key {key:?} is corrupt: {e}")))
}

fn encode(set: &SiblingSet) -> Vec<u8> {
    serde_json::to_vec(set).expect("a sibling set always serialises")
}

impl Store {
    /// Opens (or creates) the store in `dir` for this cluster layout. Refuses a dir that belongs
    /// to a different cluster layout or to another member's address.
    pub fn open(dir: &Path, layout: &Layout) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Storage(format!("cannot create data dir {}: {e}", dir.display())))?;
        let db = Database::create(dir.join(DB_FILE)).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                Error::Unavailable(format!("data dir {} is in use by another process", dir.display()))
            }
            other => Error::Storage(format!("cannot open {}: {other}", dir.join(DB_FILE).display())),
        })?;
        let fingerprint = layout.fingerprint();
        let me = layout.me().address();
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let stored = |name: &str| -> Result<Option<String>> { Ok(meta.get(name)?.map(|g| g.value().to_string())) };
            match (stored("cluster")?, stored("self")?) {
                (None, None) => {
                    meta.insert("cluster", fingerprint.as_str())?;
                    meta.insert("self", me.as_str())?;
                    // A new (or wiped) data dir: this replica may have issued clock counters
                    // before, on a disk now gone. It must learn them from its peers first.
                    meta.insert(RECOVERED, "no")?;
                }
                (Some(c), Some(s)) if c == fingerprint && s == me => {}
                (c, s) => {
                    return Err(Error::Conflict(format!(
                        "data dir {} belongs to member {} of cluster [{}], but this replica is {} of [{}]; \
                         use another --data-dir",
                        dir.display(),
                        s.unwrap_or_default(),
                        c.unwrap_or_default(),
                        me,
                        fingerprint
                    )));
                }
            }
            txn.open_table(KEYS)?;
            txn.open_table(COUNTERS)?;
            for peer in layout.peers() {
                txn.open_table(TableDefinition::<&str, u64>::new(&outbox_name(peer.id)))?;
            }
        }
        txn.commit()?;
        Ok(Store {
            db,
            dir: dir.to_path_buf(),
            peers: layout.peers().map(|m| m.id).collect(),
            commits: AtomicU64::new(0),
        })
    }

    fn commit(&self, txn: redb::WriteTransaction) -> Result<()> {
        txn.commit()?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Write transactions committed (each one fsync) since the store was opened.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// True while this store was created empty and has not yet completed recovery from the
    /// peers (see `replica`: such a replica refuses writes so it cannot reissue a clock counter).
    pub fn needs_recovery(&self) -> Result<bool> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(RECOVERED)?.is_some_and(|v| v.value() == "no"))
    }

    /// Records, durably, that recovery from the peers is complete.
    pub fn mark_recovered(&self) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert(RECOVERED, "yes")?;
        self.commit(txn)?;
        Ok(())
    }

    /// The directory holding the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key's sibling set (empty if never written).
    pub fn get(&self, key: &str) -> Result<SiblingSet> {
        let txn = self.db.begin_read()?;
        let keys = txn.open_table(KEYS)?;
        match keys.get(key)? {
            Some(bytes) => decode(key, bytes.value()),
            None => Ok(SiblingSet::new()),
        }
    }

    /// Applies a client write: `decide` gets the key's current set and returns the new one (or an
    /// error, in which case nothing is written). The new set and a mark for every peer are
    /// committed in one transaction; when this returns `Ok`, the write is on disk.
    pub fn write_local<T>(&self, key: &str, decide: impl FnOnce(&SiblingSet) -> Result<(SiblingSet, T)>) -> Result<T> {
        let txn = self.db.begin_write()?;
        let answer = {
            let mut keys = txn.open_table(KEYS)?;
            let current = match keys.get(key)? {
                Some(bytes) => decode(key, bytes.value())?,
                None => SiblingSet::new(),
            };
            let (next, answer) = decide(&current)?;
            keys.insert(key, encode(&next).as_slice())?;
            let mut counters = txn.open_table(COUNTERS)?;
            let mark = counters.get(MARK_SEQUENCE)?.map(|g| g.value()).unwrap_or(0) + 1;
            counters.insert(MARK_SEQUENCE, mark)?;
            for &peer in &self.peers {
                let name = outbox_name(peer);
                let mut outbox = txn.open_table(TableDefinition::<&str, u64>::new(&name))?;
                outbox.insert(key, mark)?;
            }
            answer
        };
        self.commit(txn)?;
        Ok(answer)
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
        let txn = self.db.begin_write()?;
        let mut records = Vec::new();
        let mut skipped = Vec::new();
        let mut any_change = false;
        {
            let mut keys = txn.open_table(KEYS)?;
            'entries: for (key, versions) in entries {
                let mut set = match keys.get(key.as_str())? {
                    Some(bytes) => decode(key, bytes.value())?,
                    None => SiblingSet::new(),
                };
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
                    keys.insert(key.as_str(), encode(&set).as_slice())?;
                    any_change = true;
                }
            }
        }
        if any_change {
            self.commit(txn)?;
        } else {
            // Nothing changed: no commit, no fsync (a re-shipped batch costs a read only).
            txn.abort()?;
        }
        Ok((records, skipped))
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
        let txn = self.db.begin_read()?;
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
            let set = decode(&key, raw.value())?;
            batch.push(Pending { key, mark: mark.value(), set });
        }
        Ok(batch)
    }

    /// Clears the marks `peer` acknowledged, each only if it still holds the number that was
    /// read (a newer write keeps its key queued). Returns how many marks were cleared.
    pub fn acknowledge(&self, peer: ReplicaId, delivered: &[(String, u64)]) -> Result<usize> {
        let txn = self.db.begin_write()?;
        let mut cleared = 0;
        {
            let name = outbox_name(peer);
            let mut outbox = txn.open_table(TableDefinition::<&str, u64>::new(&name))?;
            for (key, mark) in delivered {
                let current = outbox.get(key.as_str())?.map(|g| g.value());
                if current == Some(*mark) {
                    outbox.remove(key.as_str())?;
                    cleared += 1;
                }
            }
        }
        self.commit(txn)?;
        Ok(cleared)
    }

    /// Number of keys owed to `peer`.
    pub fn outbox_depth(&self, peer: ReplicaId) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let name = outbox_name(peer);
        Ok(txn.open_table(TableDefinition::<&str, u64>::new(&name))?.len()?)
    }

    /// Number of keys stored (tombstoned keys included).
    pub fn key_count(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(KEYS)?.len()?)
    }

    /// Anti-entropy digests: the key space split into `ranges` hash ranges, each summarised by the
    /// XOR of SHA-256(key, stored set) over its keys. Stored sets are canonical (sorted versions,
    /// deterministic JSON), so two replicas holding the same versions get the same digests; XOR
    /// makes a range's digest independent of scan order. One pass over the keys.
    pub fn range_digests(&self, ranges: usize) -> Result<Vec<[u8; 32]>> {
        let txn = self.db.begin_read()?;
        let keys = txn.open_table(KEYS)?;
        let mut digests = vec![[0u8; 32]; ranges.max(1)];
        for item in keys.iter()? {
            let (key, set) = item?;
            let digest = &mut digests[range_of(key.value(), ranges)];
            let mut h = Sha256::new();
            h.update(key.value().as_bytes());
            h.update([0u8]);
            h.update(set.value());
            for (d, x) in digest.iter_mut().zip(h.finalize()) {
                *d ^= x;
            }
        }
        Ok(digests)
    }

    /// The keys (with their sets) that fall in the given hash `ranges` out of `of`, at most `limit`
    /// of them; the flag says whether more were left out.
    /// Keys come in key order, starting after `after` when given (to page through a large range).
    pub fn range_entries(
        &self,
        of: usize,
        ranges: &HashSet<usize>,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(String, SiblingSet)>, bool)> {
        let txn = self.db.begin_read()?;
        let keys = txn.open_table(KEYS)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let scan = match after {
            Some(a) => keys.range::<&str>((Bound::Excluded(a), Bound::Unbounded))?,
            None => keys.iter()?,
        };
        for item in scan {
            let (key, set) = item?;
            if !ranges.contains(&range_of(key.value(), of)) {
                continue;
            }
            if out.len() >= limit || (bytes >= max_bytes && !out.is_empty()) {
                return Ok((out, true));
            }
            bytes += set.value().len();
            out.push((key.value().to_string(), decode(key.value(), set.value())?));
        }
        Ok((out, false))
    }

    /// Removes every mark owed to `peer` — what a lost or corrupted outbox looks like. For
    /// operators and tests (the replica must be stopped); anti-entropy repairs what it leaves.
    pub fn clear_outbox(&self, peer: ReplicaId) -> Result<u64> {
        let txn = self.db.begin_write()?;
        let cleared = {
            let name = outbox_name(peer);
            let mut outbox = txn.open_table(TableDefinition::<&str, u64>::new(&name))?;
            let n = outbox.len()?;
            outbox.retain(|_, _| false)?;
            n
        };
        self.commit(txn)?;
        Ok(cleared)
    }
}

/// The hash range (of `ranges`) a key falls in: from SHA-256 of the key alone, so a key stays
/// in its range whatever its value.
pub fn range_of(key: &str, ranges: usize) -> usize {
    let h = Sha256::digest(key.as_bytes());
    (u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize) % ranges.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(port: u16) -> Layout {
        let all = [7000u16, 7001, 7002];
        let peers: Vec<u16> = all.iter().copied().filter(|p| *p != port).collect();
        Layout::from_flags("127.0.0.1", port, 3, &vec!["127.0.0.1".into(); 2], &peers).unwrap()
    }

    fn no_check(_: &str, _: &SiblingSet, _: &Version) -> std::result::Result<(), String> {
        Ok(())
    }

    fn put(store: &Store, key: &str, value: &str) -> VectorClock {
        store
            .write_local(key, |cur| {
                let clock = cur.client_write(3, None, 0).unwrap();
                Ok((SiblingSet::single(Version::value(value, clock.clone())), clock))
            })
            .unwrap()
    }

    #[test]
    fn write_marks_every_peer_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &layout(7000)).unwrap();
            assert_eq!(put(&store, "k", "v1"), VectorClock::from(vec![1, 0, 0]));
            assert_eq!(put(&store, "k", "v2"), VectorClock::from(vec![2, 0, 0]));
            assert_eq!(store.outbox_depth(2).unwrap(), 1, "ten writes, one mark");
            assert_eq!(store.outbox_depth(3).unwrap(), 1);
        }
        let store = Store::open(dir.path(), &layout(7000)).unwrap();
        assert_eq!(store.get("k").unwrap().versions()[0].value.as_deref(), Some("v2"));
        assert_eq!(store.outbox_depth(2).unwrap(), 1);
        assert_eq!(store.key_count().unwrap(), 1);
    }

    #[test]
    fn acknowledge_keeps_keys_written_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &layout(7000)).unwrap();
        put(&store, "a", "1");
        put(&store, "b", "1");
        let batch = store.pending(2, None, 10, usize::MAX, &HashSet::new()).unwrap();
        assert_eq!(batch.len(), 2);
        put(&store, "b", "2"); // lands while the batch is "in flight"
        let delivered: Vec<_> = batch.iter().map(|p| (p.key.clone(), p.mark)).collect();
        assert_eq!(store.acknowledge(2, &delivered).unwrap(), 1);
        let left = store.pending(2, None, 10, usize::MAX, &HashSet::new()).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].key, "b");
        assert_eq!(left[0].set.versions()[0].value.as_deref(), Some("2"));
        assert_eq!(store.outbox_depth(3).unwrap(), 2, "other peers are untouched");
    }

    /// A store of replica 1 holding `keys`, each written once locally.
    fn store_with(keys: &[&str]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &layout(7000)).unwrap();
        for k in keys {
            put(&store, k, "value");
        }
        (dir, store)
    }

    #[test]
    fn pending_respects_key_and_byte_limits() {
        let (_dir, store) = store_with(&["a", "b", "c", "d"]);
        assert_eq!(store.pending(2, None, 3, usize::MAX, &HashSet::new()).unwrap().len(), 3);
        assert_eq!(store.pending(2, None, 10, 1, &HashSet::new()).unwrap().len(), 1, "at least one key ships");
    }

    #[test]
    fn pending_resumes_after_the_cursor_and_wraps_around() {
        let (_dir, store) = store_with(&["a", "b", "c", "d"]);
        let none = HashSet::new();
        let keys = |b: Vec<Pending>| b.into_iter().map(|p| p.key).collect::<Vec<_>>();
        assert_eq!(keys(store.pending(2, Some("b"), 10, usize::MAX, &none).unwrap()), ["c", "d", "a", "b"]);
        assert_eq!(keys(store.pending(2, Some("b"), 2, usize::MAX, &none).unwrap()), ["c", "d"]);
        assert_eq!(keys(store.pending(2, Some("zzz"), 3, usize::MAX, &none).unwrap()), ["a", "b", "c"]);
        let skip: HashSet<String> = ["a".to_string(), "c".to_string()].into();
        assert_eq!(keys(store.pending(2, None, 10, usize::MAX, &skip).unwrap()), ["b", "d"]);
    }

    #[test]
    fn equal_contents_give_equal_digests_and_differences_show_in_one_range() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Store::open(d1.path(), &layout(7000)).unwrap();
        let b = Store::open(d2.path(), &layout(7001)).unwrap();
        let vc = |c: &[u64]| VectorClock::from(c.to_vec());
        let entries: Vec<(String, Vec<Version>)> =
            (0..50).map(|i| (format!("k{i}"), vec![Version::value("v", vc(&[1, 0, 0]))])).collect();
        a.merge_remote(&entries, no_check, false).unwrap();
        b.merge_remote(&entries.iter().rev().cloned().collect::<Vec<_>>(), no_check, false).unwrap();
        assert_eq!(a.range_digests(16).unwrap(), b.range_digests(16).unwrap(), "order does not matter");
        b.merge_remote(&[("k7".into(), vec![Version::value("w", vc(&[0, 1, 0]))])], no_check, false).unwrap();
        let (da, db) = (a.range_digests(16).unwrap(), b.range_digests(16).unwrap());
        let differing: HashSet<usize> = (0..16).filter(|&i| da[i] != db[i]).collect();
        assert_eq!(differing, HashSet::from([range_of("k7", 16)]));
        let (entries, more) = b.range_entries(16, &differing, None, 1000, usize::MAX).unwrap();
        assert!(!more);
        assert!(entries.iter().any(|(k, set)| k == "k7" && set.len() == 2));
        assert!(entries.iter().all(|(k, _)| range_of(k, 16) == range_of("k7", 16)));
        let (limited, more) = a.range_entries(16, &(0..16).collect(), None, 10, usize::MAX).unwrap();
        assert_eq!((limited.len(), more), (10, true));
        let last = limited.last().unwrap().0.clone();
        let (rest, more) = a.range_entries(16, &(0..16).collect(), Some(&last), 100, usize::MAX).unwrap();
        assert_eq!((rest.len(), more), (40, false), "paging after the last key returns the rest");
        assert!(rest.iter().all(|(k, _)| k.as_str() > last.as_str()));
    }

    #[test]
    fn a_new_store_needs_recovery_until_marked_and_a_reopened_one_remembers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &layout(7000)).unwrap();
        assert!(store.needs_recovery().unwrap());
        drop(store);
        let store = Store::open(dir.path(), &layout(7000)).unwrap();
        assert!(store.needs_recovery().unwrap(), "a crash during recovery resumes it");
        store.mark_recovered().unwrap();
        drop(store);
        assert!(!Store::open(dir.path(), &layout(7000)).unwrap().needs_recovery().unwrap());
    }

    #[test]
    fn clear_outbox_drops_only_that_peers_marks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &layout(7000)).unwrap();
        put(&store, "a", "1");
        put(&store, "b", "1");
        assert_eq!(store.clear_outbox(2).unwrap(), 2);
        assert_eq!(store.outbox_depth(2).unwrap(), 0);
        assert_eq!(store.outbox_depth(3).unwrap(), 2);
        assert_eq!(store.key_count().unwrap(), 2, "data stays");
    }

    #[test]
    fn merge_remote_reports_each_decision() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &layout(7000)).unwrap();
        put(&store, "k", "local"); // [1, 0, 0]
        let vc = |c: &[u64]| VectorClock::from(c.to_vec());
        let (records, _) = store
            .merge_remote(
                &[
                    ("k".into(), vec![Version::value("newer", vc(&[2, 0, 0]))]),
                    ("k".into(), vec![Version::value("old", vc(&[1, 0, 0]))]),
                    ("k".into(), vec![Version::value("other", vc(&[0, 1, 0]))]),
                    ("fresh".into(), vec![Version::value("x", vc(&[0, 0, 1]))]),
                ],
                no_check,
                false,
            )
            .unwrap();
        let outcomes: Vec<_> = records.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            vec![
                MergeOutcome::Updated,
                MergeOutcome::Stale,
                MergeOutcome::Conflict { siblings: 2 },
                MergeOutcome::Created
            ]
        );
        assert_eq!(records[0].local, vec![vc(&[1, 0, 0])]);
        assert_eq!(store.get("k").unwrap().len(), 2);
        assert_eq!(store.outbox_depth(2).unwrap(), 1, "merges do not queue anything");
    }

    #[test]
    fn a_merge_that_changes_nothing_commits_nothing_and_refused_entries_apply_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &layout(7000)).unwrap();
        let vc = |c: &[u64]| VectorClock::from(c.to_vec());
        let batch = vec![("k".to_string(), vec![Version::value("v", vc(&[0, 1, 0]))])];
        let before = store.commits();
        store.merge_remote(&batch, no_check, false).unwrap();
        assert_eq!(store.commits(), before + 1);
        let (records, _) = store.merge_remote(&batch, no_check, false).unwrap();
        assert_eq!(records[0].outcome, MergeOutcome::Stale);
        assert_eq!(store.commits(), before + 1, "the same batch again: no commit");
        let refuse_x =
            |k: &str, _: &SiblingSet, _: &Version| if k == "x" { Err(format!("{k} refused")) } else { Ok(()) };
        let mixed = vec![
            ("a".to_string(), vec![Version::value("a", vc(&[0, 0, 1]))]),
            ("x".to_string(), vec![Version::value("x", vc(&[0, 0, 1]))]),
        ];
        let err = store.merge_remote(&mixed, refuse_x, false).unwrap_err();
        assert!(err.to_string().contains("x refused"), "{err}");
        assert!(store.get("a").unwrap().is_empty(), "all or nothing");
        let (records, skipped) = store.merge_remote(&mixed, refuse_x, true).unwrap();
        assert_eq!(skipped, vec![("x".to_string(), "x refused".to_string())]);
        assert_eq!(records.len(), 1);
        assert_eq!(store.get("a").unwrap().len(), 1);
        assert!(store.get("x").unwrap().is_empty());
    }

    #[test]
    fn refuses_a_data_dir_of_another_layout_or_member() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), &layout(7000)).unwrap());
        let err = Store::open(dir.path(), &layout(7001)).err().expect("must refuse");
        assert!(err.to_string().contains("belongs to member 127.0.0.1:7000"), "{err}");
        let other = Layout::from_flags("127.0.0.1", 7000, 2, &["127.0.0.1".into()], &[7009]).unwrap();
        let err = Store::open(dir.path(), &other).err().expect("must refuse");
        assert!(matches!(err, Error::Conflict(_)), "{err}");
    }
}
