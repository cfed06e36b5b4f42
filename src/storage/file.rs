//! The store's file: its atomic creation at a first start, opening with the integrity check,
//! `--repair`, and the fault handling that closes and reopens it after an I/O error or a panic.
//!
//! Size: every way the store file can fail — a first start cut short, damage, a full disk — and
//! what is done about each, in one place; splitting it would separate a failure from its recovery.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::store::{decode, outbox_name, Store, COUNTERS, DB_FILE, KEYS, MARK_SEQUENCE, META, RECOVERED};
use super::wal::{Change, Wal, WAL_FILE};
use crate::core::cluster::{Layout, ReplicaId};
use crate::error::{Error, Result};

/// How a data dir's store file stands before it is opened.
fn file_state(path: &Path) -> std::io::Result<FileState> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileState::Absent),
        Err(e) => return Err(e),
    };
    let mut magic = [0u8; 9];
    let mut read = 0;
    while read < magic.len() {
        match file.read(&mut magic[read..])? {
            0 => break,
            n => read += n,
        }
    }
    // redb writes its magic number with the first commit: a file without it (too short, or
    // zeros where it goes) never held a committed transaction — a first start cut short.
    Ok(if read < magic.len() || magic.iter().all(|&b| b == 0) { FileState::Uninitialised } else { FileState::Present })
}

enum FileState {
    Absent,
    Uninitialised,
    Present,
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::Storage(format!("cannot sync data dir {}: {e}", dir.display())))
}

/// Seconds since the Unix epoch: the suffix of a file moved aside.
fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The text of a caught panic.
fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Opens an existing store file, checking every page's checksum (redb's integrity check): a
/// damaged file fails here with an error, where a plain open may panic later. Any panic that
/// still happens is turned into an error.
fn open_checked(path: &Path) -> Result<Database> {
    let opened = std::panic::catch_unwind(|| Database::builder().set_check_integrity_on_open(true).open(path));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(Error::Unavailable(format!(
            "data dir {} is in use by another process",
            path.parent().unwrap_or(path).display()
        ))),
        Ok(Err(e)) => Err(Error::Storage(format!("cannot open {}: {e}{}", path.display(), DAMAGE_HINT))),
        Err(panic) => Err(Error::Storage(format!(
            "cannot open {}: the storage engine panicked ({}): the file is damaged{}",
            path.display(),
            panic_text(panic),
            DAMAGE_HINT
        ))),
    }
}

/// Applies again, in order, the write-ahead log's frames (the commits since the last checkpoint).
/// `durable`: commits redb with fsync and empties the log; otherwise commits without fsync and
/// keeps the log (the next checkpoint empties it). Each change puts a key's whole set (and a
/// client write's mark for every peer), so frames redb already holds change nothing.
fn replay(db: &Database, frames: &[Vec<Change>], peers: &[ReplicaId], wal: &mut Wal, durable: bool) -> Result<()> {
    if frames.is_empty() {
        return if durable && wal.len() > 0 { wal.clear() } else { Ok(()) };
    }
    let changes: usize = frames.iter().map(Vec::len).sum();
    let txn = db.begin_write()?;
    {
        let mut keys = txn.open_table(KEYS)?;
        let mut counters = txn.open_table(COUNTERS)?;
        let mut outboxes = Vec::with_capacity(peers.len());
        for &peer in peers {
            outboxes.push(txn.open_table(TableDefinition::<&str, u64>::new(&outbox_name(peer)))?);
        }
        let mut top = counters.get(MARK_SEQUENCE)?.map(|g| g.value()).unwrap_or(0);
        for change in frames.iter().flatten() {
            keys.insert(change.key.as_str(), change.set.as_slice())?;
            if let Some(mark) = change.mark {
                for outbox in &mut outboxes {
                    outbox.insert(change.key.as_str(), mark)?;
                }
                top = top.max(mark);
            }
        }
        counters.insert(MARK_SEQUENCE, top)?;
    }
    if durable {
        txn.commit()?;
        wal.clear()?;
    } else {
        let mut txn = txn;
        txn.set_durability(redb::Durability::None)
            .map_err(|e| Error::Storage(format!("cannot commit without fsync: {e}")))?;
        txn.commit()?;
    }
    tracing::info!(
        "replayed {} commit(s), {changes} change(s), from the write-ahead log (acknowledged since the last checkpoint)",
        frames.len()
    );
    Ok(())
}

/// What an operator can do about a store that does not open.
pub const DAMAGE_HINT: &str = " — if the file is damaged, restart with --repair: the file is moved aside and the \
     replica recovers every key from its peers (see the README, \"A damaged store\")";

/// Suffix of the file a first start builds before renaming it into place.
const INIT_SUFFIX: &str = "init";

/// How a [`Store::repair`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// No store file: nothing to repair (a first start follows).
    NoStore,
    /// The store opened and passed redb's integrity check (repaired by it if needed).
    Intact,
    /// The store was damaged: it was moved to this path; the replica starts empty and recovers
    /// from its peers.
    MovedAside(PathBuf),
}

/// Least and most time between two attempts to reopen a store that failed.
const REOPEN_MIN: Duration = Duration::from_secs(1);
const REOPEN_MAX: Duration = Duration::from_secs(10);

/// Why the store last failed, and when to try reopening it. A failure sets both; a reopen
/// clears `needs_reopen`; only a commit that reaches the disk clears the rest (a reopen proves
/// the file opens, not that the disk has room again).
#[derive(Default)]
pub(super) struct Fault {
    reason: Option<String>,
    needs_reopen: bool,
    next_reopen: Option<Instant>,
    backoff: Duration,
}

impl Store {
    /// Opens (or creates) the store in `dir` for this cluster layout. Refuses a dir that belongs
    /// to a different cluster layout or to another member's address, and a damaged file (with
    /// the hint to `--repair`).
    ///
    /// A first start builds the store in a temporary file, syncs it and renames it into place,
    /// so a crash at any moment leaves either no store or a complete one; a file left by an
    /// interrupted first start of an older version (no magic number yet) is set aside and rebuilt.
    pub fn open(dir: &Path, layout: &Layout) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Storage(format!("cannot create data dir {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let state = file_state(&path).map_err(|e| Error::Storage(format!("cannot read {}: {e}", path.display())))?;
        match state {
            FileState::Present => {}
            FileState::Absent => Self::initialise(dir, layout)?,
            FileState::Uninitialised => {
                let aside = dir.join(format!("{DB_FILE}.interrupted-first-start"));
                tracing::warn!(
                    "{} holds no committed data (a first start was cut short): moved to {} and rebuilt",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(&path, &aside).map_err(|e| Error::Storage(format!("cannot move it aside: {e}")))?;
                Self::initialise(dir, layout)?;
            }
        }
        let db = open_checked(&path)?;
        Self::check_identity(&db, dir, layout)?;
        let peers: Vec<ReplicaId> = layout.peers().map(|m| m.id).collect();
        let (mut wal, frames) = Wal::open(dir)?;
        replay(&db, &frames, &peers, &mut wal, true)?;
        Ok(Store {
            db: RwLock::new(Some(db)),
            path,
            peers,
            commits: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            queue: Default::default(),
            wal: Mutex::new(wal),
            checkpointed: Mutex::new(Instant::now()),
            cache: Default::default(),
            upkeep: Default::default(),
            digests: Default::default(),
            #[cfg(test)]
            fail_commits: Default::default(),
            #[cfg(test)]
            fail_after_log: Default::default(),
            fault: Mutex::new(Fault::default()),
        })
    }

    /// Builds a new store atomically: in `DB_FILE.init`, synced, then renamed into place. A log
    /// left without its store file (the file deleted by hand) belongs to a store that is gone:
    /// it is moved aside, not applied to the new one.
    fn initialise(dir: &Path, layout: &Layout) -> Result<()> {
        let path = dir.join(DB_FILE);
        let log = dir.join(WAL_FILE);
        if log.exists() {
            let aside = dir.join(format!("{WAL_FILE}.orphaned-{}", unix_seconds()));
            tracing::warn!("{} has no store file beside it: moved to {}", log.display(), aside.display());
            std::fs::rename(&log, &aside).map_err(|e| Error::Storage(format!("cannot move it aside: {e}")))?;
        }
        let temp = dir.join(format!("{DB_FILE}.{INIT_SUFFIX}"));
        match std::fs::remove_file(&temp) {
            Ok(()) => tracing::warn!("removed {} left by an interrupted first start", temp.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Storage(format!("cannot remove {}: {e}", temp.display()))),
        }
        {
            let db = Database::create(&temp)
                .map_err(|e| Error::Storage(format!("cannot create {}: {e}", temp.display())))?;
            let txn = db.begin_write()?;
            {
                let mut meta = txn.open_table(META)?;
                meta.insert("cluster", layout.fingerprint().as_str())?;
                meta.insert("self", layout.me().address().as_str())?;
                // A new (or wiped) data dir: this replica may have issued clock counters
                // before, on a disk now gone. It must learn them from its peers first.
                meta.insert(RECOVERED, "no")?;
                txn.open_table(KEYS)?;
                txn.open_table(COUNTERS)?;
                for peer in layout.peers() {
                    txn.open_table(TableDefinition::<&str, u64>::new(&outbox_name(peer.id)))?;
                }
            }
            txn.commit()?;
            db.close().map_err(|e| Error::Storage(format!("cannot close {}: {e}", temp.display())))?;
        }
        std::fs::File::open(&temp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::Storage(format!("cannot sync {}: {e}", temp.display())))?;
        std::fs::rename(&temp, &path)
            .map_err(|e| Error::Storage(format!("cannot rename {} into place: {e}", temp.display())))?;
        sync_dir(dir)
    }

    /// Refuses a store that belongs to another cluster layout or member; makes sure every table
    /// exists.
    fn check_identity(db: &Database, dir: &Path, layout: &Layout) -> Result<()> {
        let fingerprint = layout.fingerprint();
        let me = layout.me().address();
        let txn = db.begin_write()?;
        {
            let meta = txn.open_table(META)?;
            let stored = |name: &str| -> Result<Option<String>> { Ok(meta.get(name)?.map(|g| g.value().to_string())) };
            match (stored("cluster")?, stored("self")?) {
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
        Ok(())
    }

    /// `--repair`: opens the store with redb's integrity check (which repairs what it can); if it
    /// still does not open as damaged, moves the file aside (`vkv.redb.damaged-<unix time>`) so
    /// that the replica starts empty and recovers every key from its peers — the same path as a
    /// lost disk. A dir of another cluster or member, or one in use, is an error, not damage.
    pub fn repair(dir: &Path, layout: &Layout) -> Result<Repair> {
        let path = dir.join(DB_FILE);
        match file_state(&path).map_err(|e| Error::Storage(format!("cannot read {}: {e}", path.display())))? {
            FileState::Absent | FileState::Uninitialised => return Ok(Repair::NoStore),
            FileState::Present => {}
        }
        let damage = match open_checked(&path) {
            Ok(db) => {
                let scan = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::scan(&db)));
                match scan {
                    Ok(Ok(())) => match Wal::open(dir) {
                        Ok(_) => return Self::check_identity(&db, dir, layout).map(|()| Repair::Intact),
                        Err(e) => e.to_string(),
                    },
                    Ok(Err(e)) => e.to_string(),
                    Err(panic) => panic_text(panic),
                }
            }
            Err(e @ (Error::Unavailable(_) | Error::Conflict(_))) => return Err(e),
            Err(e) => e.to_string(),
        };
        let stamp = unix_seconds();
        let aside = dir.join(format!("{DB_FILE}.damaged-{stamp}"));
        tracing::error!(
            "--repair: {} is damaged ({damage}); moved to {} — this replica starts empty and recovers every key \
             from its peers",
            path.display(),
            aside.display()
        );
        std::fs::rename(&path, &aside)
            .map_err(|e| Error::Storage(format!("cannot move {} aside: {e}", path.display())))?;
        // The log goes with the file it completes: the replica starts empty.
        let log = dir.join(WAL_FILE);
        match std::fs::rename(&log, dir.join(format!("{WAL_FILE}.damaged-{stamp}"))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Storage(format!("cannot move {} aside: {e}", log.display()))),
        }
        sync_dir(dir)?;
        Ok(Repair::MovedAside(aside))
    }

    /// Reads every entry of every table, decoding the sibling sets: what `--repair` trusts.
    fn scan(db: &Database) -> Result<()> {
        let txn = db.begin_read()?;
        for item in txn.open_table(KEYS)?.iter()? {
            let (key, set) = item?;
            decode(key.value(), set.value())?;
        }
        for item in txn.open_table(META)?.iter()? {
            item?;
        }
        for item in txn.open_table(COUNTERS)?.iter()? {
            item?;
        }
        Ok(())
    }

    /// Runs `op` on the database. A storage error or a panic inside it is recorded as the
    /// store's fault (what `/health` reports); a store with a fault is closed and reopened, with
    /// the integrity check, before the next operation — at most once per [`REOPEN_MIN`], backing
    /// off to [`REOPEN_MAX`] while it keeps failing — so a replica whose disk filled up recovers
    /// by itself once there is room (redb refuses every operation after an I/O error until then).
    pub(super) fn with_db<T>(&self, op: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        self.reopen_if_due();
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        self.run_guarded(guard.as_ref(), op)
    }

    /// [`Store::with_db`] for callers that must not wait (an async worker thread): `None`,
    /// without running `op`, when the store has a fault to recover from or is being reopened.
    pub(super) fn try_with_db<T>(&self, op: impl FnOnce(&Database) -> Result<T>) -> Option<Result<T>> {
        if self.fault.lock().unwrap_or_else(|e| e.into_inner()).needs_reopen {
            return None;
        }
        let guard = match self.db.try_read() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(self.run_guarded(guard.as_ref(), op))
    }

    fn run_guarded<T>(&self, db: Option<&Database>, op: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        let Some(db) = db else {
            let reason = self.fault().unwrap_or_else(|| "closed".into());
            return Err(Error::Storage(format!("the store is unavailable ({reason}); it is reopened automatically")));
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(db))) {
            Ok(Err(Error::Storage(message))) => {
                self.record_fault(&message);
                Err(Error::Storage(message))
            }
            Ok(result) => result,
            Err(panic) => {
                let message =
                    format!("the storage engine panicked ({}): the store file may be damaged", panic_text(panic));
                self.record_fault(&message);
                Err(Error::Storage(format!("{message}{DAMAGE_HINT}")))
            }
        }
    }

    pub(super) fn record_fault(&self, reason: &str) {
        let mut fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        if fault.reason.is_none() {
            tracing::error!("store {} failed: {reason}; it will be reopened", self.path.display());
            fault.backoff = REOPEN_MIN;
            fault.next_reopen = Some(Instant::now());
        }
        fault.reason = Some(reason.to_string());
        fault.needs_reopen = true;
    }

    /// Why the store is failing, if it is (cleared once a commit reaches the disk again).
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner()).reason.clone()
    }

    fn reopen_if_due(&self) {
        {
            let mut fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
            match fault.next_reopen {
                Some(at) if fault.needs_reopen && Instant::now() >= at => {
                    fault.next_reopen = Some(Instant::now() + fault.backoff);
                    fault.backoff = (fault.backoff * 2).min(REOPEN_MAX);
                }
                _ => return,
            }
        }
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        // Close the failed handle first: redb holds a lock on the file.
        if let Some(old) = db.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(old)));
        }
        let reopened = open_checked(&self.path).and_then(|reopened| {
            // Commits since the last checkpoint that redb lost with the failed handle.
            let dir = self.path.parent().unwrap_or(Path::new("."));
            let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
            let (mut fresh, frames) = Wal::open(dir)?;
            // Without fsync and keeping the log: a store reopened on a disk that is still full
            // serves reads (with every acknowledged write) until a checkpoint goes through.
            replay(&reopened, &frames, &self.peers, &mut fresh, false)?;
            *wal = fresh;
            Ok(reopened)
        });
        match reopened {
            Ok(reopened) => {
                // The log's replay may have changed keys behind the cache's and the digests' back.
                self.cache.clear();
                self.digests.reset();
                *db = Some(reopened);
                self.fault.lock().unwrap_or_else(|e| e.into_inner()).needs_reopen = false;
                tracing::info!("store {} reopened", self.path.display());
            }
            Err(e) => {
                tracing::warn!("store {} cannot be reopened yet: {e}", self.path.display());
                self.fault.lock().unwrap_or_else(|e| e.into_inner()).reason = Some(e.to_string());
            }
        }
    }

    /// A commit reached the disk: whatever failed before works again.
    pub(super) fn clear_fault(&self) {
        let mut fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = fault.reason.take() {
            tracing::warn!("store {} works again (it failed with: {reason})", self.path.display());
            *fault = Fault::default();
        }
    }

    /// A cheap check that the store answers (a read of its metadata): what `/health` asks. While
    /// the store has a fault, the check also commits a tiny write, so that a replica whose disk
    /// had filled up reports healthy as soon as a commit goes through again.
    pub fn probe(&self) -> Result<()> {
        let failing = self.fault().is_some();
        self.with_db(|db| {
            let txn = db.begin_read()?;
            txn.open_table(META)?.get("self")?;
            txn.open_table(KEYS)?.first()?;
            Ok(())
        })?;
        if failing {
            self.with_db(|db| {
                let txn = db.begin_write()?;
                let stamp = format!("{:?}", std::time::SystemTime::now());
                txn.open_table(META)?.insert("health-probe", stamp.as_str())?;
                self.commit(txn)
            })?;
        }
        Ok(())
    }
}
