//! Upkeep of an idle store: the log emptied into redb, and the file compacted.
//!
//! Size: when to compact, the rebuild and the compaction, and their tests (each builds a store
//! in the shape it needs); the decision and the work it guards belong together.
//!
//! ```text
//!   every tick (about once a second, from the replica's background task)
//!     log holds frames, last checkpoint a period old ──► checkpoint (log emptied)
//!     no commit and no read of the file for `idle`,
//!       commits since the last look ──────────────────► measure: the file's blocks, its live
//!                                                       pages, how full the leaves are
//!       leaves < 80% full (and sparser than the
//!         last rebuild left them) ────────────────────► rebuild the keys table in key order,
//!                                                       then compact
//!       blocks > 1.1 × live and live + 1 MiB, and
//!         > 1.1 × what the last compaction left ──────► compact (store held exclusively)
//!     a commit or a read since the quiet spell began, or the exclusive lock not free within
//!     1 s ──► given up until the next quiet spell; a failure ──► no new attempt for 10 minutes
//! ```
//!
//! Why the file holds more than its data: redb copies a page on write, and a page freed since
//! the last durable commit cannot be reused before the next one (the file on disk still points
//! to it), so under load every checkpoint takes new space for the pages it rewrites; the
//! outboxes fill and drain; a page freed inside the file keeps its blocks. The space is reused
//! by later commits, but a store that was loaded and then left alone keeps 2–3× the blocks its
//! data needs. Compaction moves the live pages to the file's start and cuts the file. It does
//! not repack them: random writes, and sets that grow in place (a clock counter gaining a digit),
//! split full leaves in half, so a table can end up with leaves half empty. Such a table is first
//! rebuilt in key order (one transaction), which packs its leaves about 90% full.
//!
//! Compaction needs the database to itself: it takes the store's exclusive lock, so commits and
//! the reads the read cache does not answer wait for it (cache hits do not): about 0.1 s per
//! 100,000 keys on the development machine, a rebuild about as much again. That is why it runs
//! only on a store idle for a while, and only when the file is worth compacting. The rebuild is
//! one redb commit with fsync, and compaction's moves are too, so a crash during either leaves a
//! consistent file; the log is emptied first, so nothing is replayed onto it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redb::{CompactionError, Database, ReadableTable, TableDefinition};

use super::store::{Store, KEYS};
use super::wal::WAL_FILE;
use crate::error::{Error, Result};

/// Compact when the file's blocks exceed its live pages by this factor ...
const WASTE_FACTOR: f64 = 1.1;
/// ... and by at least this many bytes.
const WASTE_MIN_BYTES: u64 = 1 << 20;
/// Leaves less full than this (bytes stored over their pages' size) get the keys table rebuilt
/// before the compaction. A table filled in key order, or rebuilt, runs about 0.9.
const SPARSE_FILL: f64 = 0.8;
/// After a failed attempt (a full disk, say), none before this long.
const RETRY_AFTER: Duration = Duration::from_secs(600);
/// Longest wait for the store's exclusive lock before a compaction gives up until the next quiet
/// spell.
const LOCK_WAIT: Duration = Duration::from_secs(1);
/// The keys table's copy while it is rebuilt (inside one transaction: never seen outside it).
const REBUILD: TableDefinition<&str, &[u8]> = TableDefinition::new("keys.rebuild");

/// What the upkeep remembers between ticks.
#[derive(Debug)]
pub(super) struct UpkeepState {
    /// The store's commits and reads from its file at the last tick, and since when they hold
    /// those values.
    seen_activity: (u64, u64),
    quiet_since: Instant,
    /// The commit count when the file was last measured: unchanged, nothing to measure again.
    measured_at_commits: Option<u64>,
    /// Blocks the store took right after its last compaction: the next one waits until the
    /// file grew past [`WASTE_FACTOR`] of that too, so entries redb's statistics undercount
    /// (a value larger than a page) cannot make every quiet spell compact again.
    last_after: u64,
    /// How full the leaves were right after the last rebuild: a table whose entries cannot pack
    /// fuller (one or two per page) is not rebuilt again unless it got sparser than that.
    rebuilt_fill: f64,
    /// After a failure, no new attempt before this.
    not_before: Option<Instant>,
}

impl Default for UpkeepState {
    fn default() -> Self {
        UpkeepState {
            seen_activity: (0, 0),
            quiet_since: Instant::now(),
            measured_at_commits: None,
            last_after: 0,
            rebuilt_fill: 1.0,
            not_before: None,
        }
    }
}

/// What an attempt to compact came to.
enum Attempt {
    /// Not worth it (or the store has a fault).
    NotWorthIt,
    /// A commit or a read came in, or the store stayed busy: given up, tried at the next quiet spell.
    Interrupted,
    /// Compacted.
    Done(Compaction),
}

/// One compaction: the store's disk use (blocks of its file and log) before and after.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compaction {
    /// Bytes on disk before.
    pub before: u64,
    /// Bytes on disk after.
    pub after: u64,
    /// The live pages' bytes the decision compared against.
    pub live: u64,
    /// How full the leaves were (bytes stored over their size).
    pub fill: f64,
    /// The keys table was rebuilt in key order first (its leaves were sparse).
    pub rebuilt: bool,
    /// How long it took (a rebuild of the keys table included).
    pub took: Duration,
}

/// What one tick of [`Store::upkeep`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Upkeep {
    /// The log held frames and was emptied into redb.
    pub checkpointed: bool,
    /// The file was compacted.
    pub compacted: Option<Compaction>,
    /// Bytes the store takes on disk now (blocks of its file and its log).
    pub disk_bytes: u64,
}

/// Bytes `path` takes on disk (allocated blocks: a sparse file counts only what was written).
fn blocks(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

impl Store {
    /// Bytes the store takes on disk: the blocks of its file and its log.
    pub fn disk_bytes(&self) -> u64 {
        blocks(&self.path) + self.path.parent().map(|dir| blocks(&dir.join(WAL_FILE))).unwrap_or(0)
    }

    /// One tick of upkeep, for a background task to call about once a second (it blocks on the
    /// disk): empties the log into redb once the last checkpoint is a period old (so an idle
    /// store holds no log to replay), and — with `compact_after` set — compacts the file when
    /// no commit and no read of the file (a read the cache did not answer) happened for that
    /// long, and the file takes well over what its live pages need. Reads count because a
    /// compaction makes them wait: a store busy serving reads is not idle.
    pub fn upkeep(&self, compact_after: Option<Duration>) -> Result<Upkeep> {
        let mut done = Upkeep::default();
        let logged = self.wal.lock().unwrap_or_else(|e| e.into_inner()).len();
        if logged > 0 {
            self.with_db(|db| self.checkpoint_if_due(db))?;
            done.checkpointed = self.wal.lock().unwrap_or_else(|e| e.into_inner()).len() == 0;
        }
        let activity = self.activity();
        let commits = activity.0;
        let due = {
            let mut state = self.upkeep.lock().unwrap_or_else(|e| e.into_inner());
            if state.seen_activity != activity {
                state.seen_activity = activity;
                state.quiet_since = Instant::now();
            }
            compact_after.is_some_and(|idle| {
                state.quiet_since.elapsed() >= idle
                    && state.measured_at_commits != Some(commits)
                    && state.not_before.is_none_or(|t| Instant::now() >= t)
            })
        };
        if due {
            let attempt = self.compact_if_wasteful(activity);
            let mut state = self.upkeep.lock().unwrap_or_else(|e| e.into_inner());
            match attempt {
                Ok(Attempt::Interrupted) => {}
                Ok(Attempt::NotWorthIt) => state.measured_at_commits = Some(commits),
                Ok(Attempt::Done(c)) => {
                    state.measured_at_commits = Some(commits);
                    state.last_after = c.after;
                    done.compacted = Some(c);
                }
                Err(e) => {
                    // A failure (a full disk, say) is not retried at every quiet spell.
                    state.measured_at_commits = Some(commits);
                    state.not_before = Some(Instant::now() + RETRY_AFTER);
                    return Err(e);
                }
            }
        }
        done.disk_bytes = self.disk_bytes();
        Ok(done)
    }

    /// The file's live pages (the trees' leaf and branch pages, in bytes), and how full the
    /// leaves are (the bytes stored in them over their size); one walk of the trees.
    fn measure(&self) -> Result<(u64, f64)> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            let stats = txn.stats()?;
            txn.abort()?;
            let page = stats.page_size() as u64;
            let leaves = stats.leaf_pages() * page;
            let fill = if leaves == 0 { 1.0 } else { stats.stored_bytes() as f64 / leaves as f64 };
            Ok(((stats.leaf_pages() + stats.branch_pages()) * page, fill))
        })
    }

    /// The store's commits and reads of its file so far: unchanged, the store was idle.
    fn activity(&self) -> (u64, u64) {
        (self.commits.load(Ordering::Relaxed), self.reads.load(Ordering::Relaxed))
    }

    /// True while no commit and no read of the file happened since `activity` was read.
    fn still_quiet(&self, activity: (u64, u64)) -> bool {
        self.activity() == activity
    }

    /// Compacts the file if its blocks exceed the live pages, and the blocks right after the
    /// last compaction, by [`WASTE_FACTOR`] and [`WASTE_MIN_BYTES`]; or if its leaves are under
    /// [`SPARSE_FILL`] full (and sparser than the last rebuild left them): then the keys table
    /// is rebuilt first. Gives up if the store stops being quiet (`activity` moves) before the
    /// work starts.
    fn compact_if_wasteful(&self, activity: (u64, u64)) -> Result<Attempt> {
        let (live, fill) = self.measure()?;
        let file = blocks(&self.path);
        let (last_after, rebuilt_fill) = {
            let state = self.upkeep.lock().unwrap_or_else(|e| e.into_inner());
            (state.last_after, state.rebuilt_fill)
        };
        let sparse = fill < SPARSE_FILL && fill < rebuilt_fill - 0.1 && live >= WASTE_MIN_BYTES;
        let wasteful = |base: u64| file as f64 > base as f64 * WASTE_FACTOR && file >= base + WASTE_MIN_BYTES;
        let worth_it = sparse || (wasteful(live) && wasteful(last_after));
        if !worth_it {
            return Ok(Attempt::NotWorthIt);
        }
        if !self.still_quiet(activity) {
            return Ok(Attempt::Interrupted);
        }
        let before = self.disk_bytes();
        let started = Instant::now();
        if sparse {
            self.with_db(|db| self.rebuild_keys(db))?;
        }
        let done = Compaction { before, after: 0, live, fill, rebuilt: sparse, took: Duration::ZERO };
        let attempt = self.compact(done, started, activity)?;
        if sparse {
            let (_, packed) = self.measure()?;
            self.upkeep.lock().unwrap_or_else(|e| e.into_inner()).rebuilt_fill = packed;
        }
        Ok(attempt)
    }

    /// Rewrites the keys table in key order, in one transaction committed with fsync: a copy
    /// in key order replaces it (redb's `rename_table`). Random writes, and sets that grow in
    /// place, split leaves into half-empty pages that compaction alone only moves; copied in
    /// order, the leaves are packed (about 90% full). The content is unchanged, so the read cache
    /// stays valid and readers go on meanwhile (redb's readers see the last commit); commits
    /// wait for it.
    fn rebuild_keys(&self, db: &Database) -> Result<()> {
        let txn = db.begin_write()?;
        {
            let keys = txn.open_table(KEYS)?;
            let mut copy = txn.open_table(REBUILD)?;
            for entry in keys.iter()? {
                let (key, set) = entry?;
                copy.insert(key.value(), set.value())?;
            }
        }
        txn.delete_table(KEYS)?;
        txn.rename_table(REBUILD, KEYS)?;
        // Not `Store::commit`: this is no write, and must not count as activity.
        txn.commit()?;
        Ok(())
    }

    /// Compacts the file, holding the store exclusively: the log is emptied first, then redb
    /// moves the live pages to the front and cuts the file. `done` holds what was measured
    /// before; `started` is when the work began (a rebuild included).
    fn compact(&self, mut done: Compaction, started: Instant, activity: (u64, u64)) -> Result<Attempt> {
        if self.fault().is_some() {
            return Ok(Attempt::NotWorthIt);
        }
        // Not a blocking wait: a long scan (anti-entropy's) holds the store shared, and every
        // commit and read would queue behind a waiting writer.
        let deadline = Instant::now() + LOCK_WAIT;
        let mut guard = loop {
            match self.db.try_write() {
                Ok(guard) => break guard,
                Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(std::sync::TryLockError::WouldBlock) => return Ok(Attempt::Interrupted),
            }
        };
        if !self.still_quiet(activity) {
            return Ok(Attempt::Interrupted);
        }
        let Some(db) = guard.as_mut() else { return Ok(Attempt::NotWorthIt) };
        let rebuilt = done.rebuilt;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<bool> {
            self.checkpoint(db)?;
            // Each call moves what it can; a second finds what the first freed at the end.
            let mut rounds = 0;
            loop {
                match db.compact() {
                    Ok(true) if rounds < 8 => rounds += 1,
                    Ok(moved) => return Ok(moved || rounds > 0 || rebuilt),
                    Err(CompactionError::Storage(e)) => return Err(e.into()),
                    Err(e) => {
                        tracing::debug!("compaction declined: {e}");
                        return Ok(rounds > 0 || rebuilt);
                    }
                }
            }
        }));
        drop(guard);
        let compacted = match outcome {
            Ok(Ok(compacted)) => compacted,
            Ok(Err(e)) => {
                self.record_fault(&e.to_string());
                return Err(e);
            }
            Err(_) => {
                let message = "the storage engine panicked while compacting: the store file may be damaged";
                self.record_fault(message);
                return Err(Error::Storage(message.into()));
            }
        };
        if !compacted {
            return Ok(Attempt::NotWorthIt);
        }
        done.took = started.elapsed();
        done.after = self.disk_bytes();
        metrics::histogram!("vkv_compaction_duration_seconds").record(done.took.as_secs_f64());
        metrics::counter!("vkv_compactions_total").increment(1);
        Ok(Attempt::Done(done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::cluster::Layout;
    use crate::core::versions::{SiblingSet, Version};
    use crate::storage::store::{Lead, CHECKPOINT_PERIOD};

    fn layout() -> Layout {
        Layout::from_flags("127.0.0.1", 7000, 3, &vec!["127.0.0.1".into(); 2], &[7001, 7002]).unwrap()
    }

    /// One group commit writing `value` to `keys`, then every peer's marks acknowledged.
    fn write_all(store: &Store, keys: &[String], value: &str) {
        let mut lead = Lead::Queued;
        for key in keys {
            let value = value.to_string();
            let submitted = store.submit(
                key.clone(),
                move |current| {
                    let clock = current.client_write(3, None, 0).expect("a plain write is never refused");
                    Ok((SiblingSet::single(Version::value(&value, clock)), ()))
                },
                |answer| answer.expect("the write commits"),
            );
            if submitted == Lead::Yours {
                lead = Lead::Yours;
            }
        }
        assert_eq!(lead, Lead::Yours);
        store.lead();
        for peer in [2, 3] {
            let owed = store.pending(peer, None, keys.len(), usize::MAX, &Default::default()).unwrap();
            let delivered: Vec<_> = owed.iter().map(|p| (p.key.clone(), p.mark)).collect();
            assert_eq!(store.acknowledge(peer, &delivered).unwrap(), keys.len());
        }
    }

    /// Keys `k0` … `k{n-1}` in a scattered order (writes land all over the table).
    fn scattered(n: u64) -> Vec<String> {
        (0..n).map(|i| format!("k{}", i.wrapping_mul(2_654_435_761) % n)).collect()
    }

    /// A new store in a directory of its own (kept while the directory lives).
    fn empty_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &layout()).unwrap();
        (dir, store)
    }

    /// A store of 5,000 keys in a scattered order, each written three times with a checkpoint
    /// between: copy-on-write and the drained outboxes leave freed pages behind.
    fn loaded_store() -> (tempfile::TempDir, Store, Vec<String>) {
        let (dir, store) = empty_store();
        let keys = scattered(5000);
        for round in 0..3 {
            write_all(&store, &keys, &format!("{}{round}", "x".repeat(100)));
            store.with_db(|db| store.checkpoint(db)).unwrap();
        }
        (dir, store, keys)
    }

    #[test]
    fn a_tick_empties_the_log_and_compacts_an_idle_loaded_store_without_losing_a_key() {
        let (dir, store, keys) = loaded_store();
        write_all(&store, &keys[..10], "last");
        assert!(store.wal.lock().unwrap().len() > 0);

        // Not idle for long enough: the log is emptied, nothing is compacted.
        *store.checkpointed.lock().unwrap() = Instant::now();
        let first = store.upkeep(Some(Duration::from_secs(3600))).unwrap();
        assert_eq!(first, Upkeep { checkpointed: false, compacted: None, disk_bytes: store.disk_bytes() });
        assert!(store.wal.lock().unwrap().len() > 0, "a log younger than the checkpoint period stays");
        *store.checkpointed.lock().unwrap() -= CHECKPOINT_PERIOD;
        let tick = store.upkeep(Some(Duration::from_secs(3600))).unwrap();
        assert!(tick.checkpointed, "a log older than the checkpoint period is emptied by a tick");
        assert_eq!(store.wal.lock().unwrap().len(), 0);

        let before = store.disk_bytes();
        let done = store.upkeep(Some(Duration::ZERO)).unwrap();
        let compaction = done.compacted.expect("a loaded store with freed pages compacts");
        assert!(compaction.after < before, "{compaction:?} from {before}");
        assert!(
            compaction.after as f64 <= compaction.live as f64 * WASTE_FACTOR + WASTE_MIN_BYTES as f64,
            "{compaction:?}"
        );
        assert_eq!(done.disk_bytes, store.disk_bytes());
        for (i, key) in keys.iter().enumerate() {
            let set = store.get(key).unwrap();
            let expected = if i < 10 { "last".to_string() } else { format!("{}2", "x".repeat(100)) };
            assert_eq!(set.versions()[0].value.as_deref(), Some(expected.as_str()), "{key}");
        }
        // Nothing committed since: a tick does not measure or compact again.
        assert_eq!(store.upkeep(Some(Duration::ZERO)).unwrap().compacted, None);
        drop(store);
        let reopened = Store::open(dir.path(), &layout()).unwrap();
        assert_eq!(reopened.get(&keys[0]).unwrap().versions()[0].value.as_deref(), Some("last"));
        assert_eq!(reopened.key_count().unwrap(), 5000);
    }

    #[test]
    fn sparse_leaves_get_the_keys_table_rebuilt_in_order() {
        let (dir, store) = empty_store();
        // Every key's set grows a little with each round, in a scattered order: leaves that no
        // longer fit split in half, and the table ends up with many half-empty leaves.
        let keys = scattered(6000);
        for round in 0..8 {
            write_all(&store, &keys, &"x".repeat(60 + 9 * round));
        }
        let (_, fill) = store.measure().unwrap();
        assert!(fill < SPARSE_FILL, "the load was meant to leave sparse leaves: {fill}");
        let compaction = store.upkeep(Some(Duration::ZERO)).unwrap().compacted.expect("compacted");
        assert!(compaction.rebuilt, "{compaction:?}");
        let (live, fill) = store.measure().unwrap();
        assert!(fill > 0.85, "rebuilt in key order, the leaves are packed: {fill}");
        assert!(live < compaction.live, "{live} after, {compaction:?}");
        assert!(compaction.after < compaction.before, "{compaction:?}");
        assert_eq!(store.key_count().unwrap(), 6000);
        let last = "x".repeat(60 + 9 * 7);
        for key in &keys {
            assert_eq!(store.get(key).unwrap().versions()[0].value.as_deref(), Some(last.as_str()), "{key}");
        }
        // The outboxes and the mark sequence are untouched: a new write still marks every peer.
        write_all(&store, &keys[..1], "after");
        drop(store);
        let reopened = Store::open(dir.path(), &layout()).unwrap();
        assert_eq!(reopened.get(&keys[0]).unwrap().versions()[0].value.as_deref(), Some("after"));
        assert_eq!(reopened.get(&keys[1]).unwrap().versions()[0].value.as_deref(), Some(last.as_str()));
    }

    #[test]
    fn a_read_of_the_file_defers_compaction_as_a_commit_does() {
        let (_dir, store, _) = loaded_store();
        let idle = Duration::from_millis(300);
        assert_eq!(store.upkeep(Some(idle)).unwrap().compacted, None, "just written");
        std::thread::sleep(idle + Duration::from_millis(50));
        store.get("k1").unwrap();
        assert_eq!(store.upkeep(Some(idle)).unwrap().compacted, None, "just read");
        std::thread::sleep(idle + Duration::from_millis(50));
        assert!(store.upkeep(Some(idle)).unwrap().compacted.is_some(), "idle since the read");
    }

    #[test]
    fn a_store_is_compacted_only_once_idle_and_configured_and_not_when_small() {
        let (_dir, store, keys) = loaded_store();
        // The same wasteful store: not idle long enough, then not configured, then compacted.
        assert_eq!(store.upkeep(Some(Duration::from_secs(60))).unwrap().compacted, None);
        assert_eq!(store.upkeep(None).unwrap().compacted, None);
        assert!(store.upkeep(Some(Duration::ZERO)).unwrap().compacted.is_some());

        let (_small, store) = empty_store();
        write_all(&store, &keys[..50], "v");
        assert_eq!(store.upkeep(Some(Duration::ZERO)).unwrap().compacted, None, "within the minimum waste");
    }

    #[test]
    fn entries_that_cannot_pack_fuller_are_not_rebuilt_or_compacted_again_and_again() {
        let (_dir, store) = empty_store();
        // 2.5 KB sets: one fits a 4 KiB leaf, so the leaves stay about 60% full however packed.
        let keys = scattered(1500);
        for round in 0..2 {
            write_all(&store, &keys, &format!("{round}{}", "x".repeat(2500)));
        }
        let first = store.upkeep(Some(Duration::ZERO)).unwrap().compacted.expect("the first quiet spell compacts");
        // One write, then quiet again: the file did not grow past what the compaction left.
        write_all(&store, &keys[..1], "y");
        let again = store.upkeep(Some(Duration::ZERO)).unwrap();
        assert_eq!(again.compacted, None, "after {first:?}");
        assert_eq!(store.key_count().unwrap(), 1500);
    }
}
