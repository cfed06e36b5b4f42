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
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use sha2::{Digest, Sha256};

use crate::core::clock::VectorClock;
use crate::core::cluster::{Layout, ReplicaId};
use crate::error::{Error, Result};
use crate::core::versions::{MergeOutcome, SiblingSet, Version};

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
    db: RwLock<Option<Database>>,
    path: PathBuf,
    fault: Mutex<Fault>,
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

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::Storage(format!("cannot sync data dir {}: {e}", dir.display())))
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
struct Fault {
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
        Ok(Store {
            db: RwLock::new(Some(db)),
            path,
            dir: dir.to_path_buf(),
            peers: layout.peers().map(|m| m.id).collect(),
            commits: AtomicU64::new(0),
            fault: Mutex::new(Fault::default()),
        })
    }

    /// Builds a new store atomically: in `DB_FILE.init`, synced, then renamed into place.
    fn initialise(dir: &Path, layout: &Layout) -> Result<()> {
        let path = dir.join(DB_FILE);
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
                    Ok(Ok(())) => return Self::check_identity(&db, dir, layout).map(|()| Repair::Intact),
                    Ok(Err(e)) => e.to_string(),
                    Err(panic) => panic_text(panic),
                }
            }
            Err(e @ (Error::Unavailable(_) | Error::Conflict(_))) => return Err(e),
            Err(e) => e.to_string(),
        };
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let aside = dir.join(format!("{DB_FILE}.damaged-{stamp}"));
        tracing::error!(
            "--repair: {} is damaged ({damage}); moved to {} — this replica starts empty and recovers every key \
             from its peers",
            path.display(),
            aside.display()
        );
        std::fs::rename(&path, &aside)
            .map_err(|e| Error::Storage(format!("cannot move {} aside: {e}", path.display())))?;
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
    fn with_db<T>(&self, op: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        self.reopen_if_due();
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        let Some(db) = guard.as_ref() else {
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

    fn record_fault(&self, reason: &str) {
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
        match open_checked(&self.path) {
            Ok(reopened) => {
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
    fn clear_fault(&self) {
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

    fn commit(&self, txn: redb::WriteTransaction) -> Result<()> {
        txn.commit()?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.clear_fault();
        Ok(())
    }

    /// Write transactions committed (each one fsync) since the store was opened.
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

    /// The directory holding the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key's sibling set (empty if never written).
    pub fn get(&self, key: &str) -> Result<SiblingSet> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let keys = txn.open_table(KEYS)?;
            match keys.get(key)? {
                Some(bytes) => decode(key, bytes.value()),
                None => Ok(SiblingSet::new()),
            }
        })
    }

    /// Applies a client write: `decide` gets the key's current set and returns the new one (or an
    /// error, in which case nothing is written). The new set and a mark for every peer are
    /// committed in one transaction; when this returns `Ok`, the write is on disk.
    pub fn write_local<T>(&self, key: &str, decide: impl FnOnce(&SiblingSet) -> Result<(SiblingSet, T)>) -> Result<T> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
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
                let set = decode(&key, raw.value())?;
                batch.push(Pending { key, mark: mark.value(), set });
            }
            Ok(batch)
        })
    }

    /// Clears the marks `peer` acknowledged, each only if it still holds the number that was
    /// read (a newer write keeps its key queued). Returns how many marks were cleared.
    pub fn acknowledge(&self, peer: ReplicaId, delivered: &[(String, u64)]) -> Result<usize> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
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

    /// Anti-entropy digests: the key space split into `ranges` hash ranges, each summarised by the
    /// XOR of SHA-256(key, stored set) over its keys. Stored sets are canonical (sorted versions,
    /// deterministic JSON), so two replicas holding the same versions get the same digests; XOR
    /// makes a range's digest independent of scan order. One pass over the keys.
    pub fn range_digests(&self, ranges: usize) -> Result<Vec<[u8; 32]>> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
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
        })
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
    fn an_interrupted_first_start_is_redone() {
        let dir = tempfile::tempdir().unwrap();
        // A temp file of a first start killed before its rename: ignored and rebuilt.
        std::fs::write(dir.path().join("vkv.redb.init"), b"partial").unwrap();
        drop(Store::open(dir.path(), &layout(7000)).unwrap());
        assert!(!dir.path().join("vkv.redb.init").exists());
        // A store file without redb's magic number (an older version killed at its first start).
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0u8; 4096]).unwrap();
        let store = Store::open(dir.path(), &layout(7000)).unwrap();
        assert!(store.needs_recovery().unwrap());
        assert!(dir.path().join("vkv.redb.interrupted-first-start").exists(), "kept for the operator");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), b"").unwrap();
        assert!(Store::open(dir.path(), &layout(7000)).is_ok(), "an empty file is an interrupted start too");
    }

    /// Overwrites `pages` 4 KiB pages of the store file from `first` on with a pattern.
    fn damage(dir: &Path, first: u64, pages: u64) {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(dir.join(DB_FILE)).unwrap();
        file.seek(SeekFrom::Start(first * 4096)).unwrap();
        file.write_all(&vec![0xA5; (pages * 4096) as usize]).unwrap();
        file.sync_all().unwrap();
    }

    #[test]
    fn a_damaged_store_is_refused_with_the_repair_hint_and_repair_moves_it_aside() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &layout(7000)).unwrap();
            for i in 0..300 {
                put(&store, &format!("key-{i}"), &"v".repeat(100));
            }
        }
        let size = std::fs::metadata(dir.path().join(DB_FILE)).unwrap().len() / 4096;
        damage(dir.path(), 1, size - 1);
        let err = Store::open(dir.path(), &layout(7000)).err().expect("a damaged store must not open");
        assert!(err.to_string().contains("--repair"), "{err}");
        let Repair::MovedAside(aside) = Store::repair(dir.path(), &layout(7000)).unwrap() else {
            panic!("the damaged store was not moved aside");
        };
        assert!(aside.exists());
        let store = Store::open(dir.path(), &layout(7000)).unwrap();
        assert!(store.needs_recovery().unwrap(), "a repaired replica recovers from its peers");
        assert_eq!(store.key_count().unwrap(), 0);
        drop(store);
        assert_eq!(Store::repair(dir.path(), &layout(7000)).unwrap(), Repair::Intact);
        let err = Store::repair(dir.path(), &layout(7001)).expect_err("another member's intact store is no damage");
        assert!(matches!(err, Error::Conflict(_)), "{err}");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(Store::repair(empty.path(), &layout(7000)).unwrap(), Repair::NoStore);
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
