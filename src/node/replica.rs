//! The node: validates and applies client writes, merges what peers send, and serves reads.
//!
//! Every decision a replica takes is logged, one line each (see `decisions`), in the seed's notation:
//!
//! ```text
//! replica{id=1}: client write "milk" → clock [2, 0, 0, 0, 0] decision="write" key="cart"
//! replica{id=5}: local [1, 0, 0, 0, 0] vs received "milk" [2, 0, 0, 0, 0] from replica 1 → no conflict, updated decision="updated" key="cart"
//! replica{id=3}: local [2, 0, 0, 0, 0] vs received "eggs" [1, 1, 0, 0, 0] from replica 2 → CONFLICT, kept 2 siblings decision="conflict" key="cart"
//! ```
//!
//! Keys and values are written escaped (Rust's `{:?}`: quotes, `\n`, `\0`, `\u{..}`), so a key
//! can never forge a line or put a control byte into the log.
//!
//! Size: the replica type and its verbs (open, write, read, merge, peer reads); the decisions'
//! wording, validation, status and coordination live in their own files.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::core::clock::VectorClock;
use crate::core::cluster::{Layout, ReplicaId};
use crate::core::versions::{SiblingSet, Version};
use crate::error::{Error, Result};
use crate::net::auth::{ClusterKey, PeerAuth};
use crate::net::peer::PeerClient;
use crate::net::protocol::{
    KeyListResponse, ListQuery, PeerReadRequest, PeerReadResponse, ReplicateEntry, ReplicateRequest, ReplicateResponse,
    DEFAULT_LIST_LIMIT, MAX_BATCH_KEYS, MAX_KEY_BYTES, MAX_LIST_LIMIT,
};
pub use crate::node::decisions::MergeSource;
use crate::node::decisions::{self, ClientWrite, DecisionLog};
pub use crate::node::link::PeerLink;
pub use crate::node::validate::validate_key;
use crate::storage::on_store;
use crate::storage::store::{CachedRead, MergeRecord, Refused, Render, Store};

/// Settings of the anti-entropy task.
#[derive(Debug, Clone)]
pub struct AntiEntropyConfig {
    /// Mean time between rounds (each round talks to one peer, round-robin). Jittered ±50%.
    pub period: Duration,
    /// Most keys pulled in one round: the bandwidth bound. Larger repairs take several rounds.
    pub max_keys_per_round: usize,
}

/// What a replica needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cluster and this replica's place in it.
    pub layout: Layout,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Longest value accepted from a client, in bytes.
    pub max_value_bytes: usize,
    /// The cluster's shared secret: peer requests are signed and verified with it. `None` only
    /// when the operator chose `--insecure`.
    pub cluster_key: Option<ClusterKey>,
    /// Periodic digest comparison with peers; `None` turns it off.
    pub anti_entropy: Option<AntiEntropyConfig>,
    /// Accept writes at once even on an empty data dir (skip recovery from the peers). Safe only
    /// for a brand-new cluster, or when a peer is gone for good and its data with it.
    pub skip_recovery: bool,
    /// Local address peer connections are opened from (`None`: the OS picks).
    pub peer_source: Option<std::net::IpAddr>,
    /// Compact the store file once no commit happened for this long and the file takes well
    /// over what its data needs (see `storage/upkeep.rs`); `None`: never.
    pub compact_after: Option<Duration>,
}

/// One replica.
pub struct Replica {
    layout: Layout,
    store: Arc<Store>,
    links: Vec<Arc<PeerLink>>,
    peers: PeerClient,
    max_value_bytes: usize,
    anti_entropy: Option<AntiEntropyConfig>,
    compact_after: Option<Duration>,
    /// True from the start on an empty data dir until every peer's keys were pulled.
    recovering: AtomicBool,
    /// The recent decisions, for `GET /decisions` (shared with the group-commit closures).
    decisions: Arc<DecisionLog>,
}

impl Replica {
    /// Opens the store and prepares (but does not start) the senders.
    pub fn open(config: Config) -> Result<Arc<Replica>> {
        let store = Store::open(&config.data_dir, &config.layout)?;
        let mut recovering = store.needs_recovery()?;
        if recovering && (config.skip_recovery || config.layout.n() == 1) {
            if config.layout.n() > 1 {
                warn!("--skip-recovery: accepting writes on an empty data dir without pulling from peers");
            }
            store.mark_recovered()?;
            recovering = false;
        }
        let links = config.layout.peers().map(|m| Arc::new(PeerLink::new(m.clone()))).collect();
        Ok(Arc::new(Replica {
            layout: config.layout.clone(),
            store: Arc::new(store),
            links,
            peers: PeerClient::new(config.peer_source, PeerAuth::new(&config.layout, config.cluster_key)),
            max_value_bytes: config.max_value_bytes,
            anti_entropy: config.anti_entropy,
            compact_after: config.compact_after,
            recovering: AtomicBool::new(recovering),
            decisions: Arc::default(),
        }))
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.layout.self_id()
    }

    /// The cluster layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// True until a replica started on an empty data dir has pulled every peer's keys.
    pub fn is_recovering(&self) -> bool {
        self.recovering.load(Ordering::SeqCst)
    }

    /// Records that recovery is complete and starts accepting writes.
    pub async fn finish_recovery(&self) -> Result<()> {
        self.blocking(|store| store.mark_recovered()).await?;
        self.recovering.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// The last decisions this replica took (writes, refusals, merges), newest last.
    pub fn decisions(&self) -> &DecisionLog {
        &self.decisions
    }

    /// The cluster key peer requests must be signed with (`None`: `--insecure`).
    pub fn cluster_key(&self) -> Option<&ClusterKey> {
        self.peers.auth().key()
    }

    /// The client this replica calls its peers with.
    pub fn peers(&self) -> &PeerClient {
        &self.peers
    }

    /// The link to each peer's sender.
    pub(crate) fn links(&self) -> &[Arc<PeerLink>] {
        &self.links
    }

    /// The store (for the background tasks, which run their own blocking work).
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The anti-entropy settings, if it runs.
    pub(crate) fn anti_entropy_config(&self) -> Option<&AntiEntropyConfig> {
        self.anti_entropy.as_ref()
    }

    /// How long the store must go without a commit before its file may be compacted.
    pub(crate) fn compact_after(&self) -> Option<Duration> {
        self.compact_after
    }

    /// This replica's cluster id (see [`crate::net::auth::cluster_id`]): peers must send the same.
    pub fn cluster_id(&self) -> &str {
        self.peers.auth().cluster()
    }

    /// Why this replica cannot serve, if it cannot: its store failed (an I/O error such as a full
    /// disk, or damage) and has not been reopened since, or a read of it fails now.
    pub(crate) async fn storage_problem(&self) -> Option<String> {
        self.blocking(|store| store.probe()).await.err().map(|e| e.to_string())
    }

    /// Longest value accepted, in bytes.
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    /// Runs store work on the blocking pool (see [`on_store`]).
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        on_store(&self.store, work).await
    }

    /// A client write (`value = Some`) or delete (`None`) coordinated here. Returns the new clock
    /// once the new version and the peers' outbox marks are committed to disk.
    ///
    /// Group commit: concurrent writes share one transaction and one fsync. The log line and the
    /// senders' wake-up run on the committing thread right after the commit, so they happen
    /// even if the client gives up and this future is dropped: a committed write is always
    /// announced to the senders.
    pub async fn write(&self, key: String, value: Option<String>, context: Option<VectorClock>) -> Result<VectorClock> {
        if self.is_recovering() {
            return Err(Error::Unavailable(format!(
                "replica {} started on an empty data dir and is still pulling its keys from every peer; \
                 writes are refused until then so that no clock counter is reused (reads are served)",
                self.id()
            )));
        }
        validate_key(&key)?;
        if let Some(v) = &value {
            self.check_value(v)?;
        }
        self.check_context(context.as_ref())?;
        let (n, position) = (self.layout.n(), self.layout.me().position());
        let links = self.links.clone();
        let shown = decisions::preview(value.as_deref());
        let mut what = match &value {
            Some(_) => format!("client write {shown}"),
            None => "client delete".to_string(),
        };
        if let Some(ctx) = &context {
            what = format!("{what} with context {ctx}");
        }
        let job_key = key.clone();
        let write = Arc::new(ClientWrite { key, shown, what });
        let (decided, log, decided_log) = (write.clone(), self.decisions.clone(), self.decisions.clone());
        let decide = move |current: &SiblingSet| {
            let clock = current
                .client_write(n, context.as_ref(), position)
                .map_err(|refusal| decisions::refused(&decided_log, n, &decided, current, context.as_ref(), refusal))?;
            let version = Version { clock: clock.clone(), value };
            Ok((SiblingSet::single(version), (clock, current.len())))
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        let done = move |outcome: Result<(VectorClock, usize)>| {
            if let Ok((clock, replaced)) = &outcome {
                decisions::written(&log, &write, clock, *replaced);
                for link in &links {
                    link.wake();
                }
            }
            let _ = answer.send(outcome.map(|(clock, _)| clock));
        };
        crate::storage::lead_if_told(&self.store, self.store.submit(job_key, decide, done));
        answered.await.map_err(|_| Error::Storage("the group commit ended without an answer".into()))?
    }

    /// Sets the memory the store's read cache may take, in bytes (0 turns it off).
    pub fn set_read_cache_budget(&self, bytes: usize) {
        self.store.set_read_cache_budget(bytes);
    }

    /// The answer to a local read of `key` through the store's read cache, rendered by `render`
    /// (shared with other readers until the key changes). The key must be valid (the caller
    /// checked).
    pub async fn read_cached(&self, key: &str, render: Render) -> Result<Arc<CachedRead>> {
        match self.store.get_cached_now(key, render) {
            Some(result) => result,
            None => {
                let key = key.to_string();
                self.blocking(move |store| store.get_cached(&key, render)).await
            }
        }
    }

    /// The key's sibling set as stored here (empty if never written).
    pub async fn read(&self, key: String) -> Result<SiblingSet> {
        validate_key(&key)?;
        match self.store.get_now(&key) {
            Some(result) => result,
            None => self.blocking(move |store| store.get(&key)).await,
        }
    }

    /// One page of the key listing (`GET /kv`): the query checked, then a range scan of the store.
    pub async fn list(&self, query: ListQuery) -> Result<KeyListResponse> {
        let limit = query.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if !(1..=MAX_LIST_LIMIT).contains(&limit) {
            return Err(Error::InvalidInput(format!("limit must be 1 to {MAX_LIST_LIMIT}, not {limit}")));
        }
        for (name, text) in [("prefix", &query.prefix), ("after", &query.after)] {
            if text.as_ref().is_some_and(|t| t.len() > MAX_KEY_BYTES) {
                return Err(Error::InvalidInput(format!("{name} is longer than any key ({MAX_KEY_BYTES} bytes)")));
            }
        }
        let (prefix, after, deleted) = (query.prefix.unwrap_or_default(), query.after, query.deleted.unwrap_or(false));
        let page = self.blocking(move |store| store.list_keys(&prefix, after.as_deref(), limit, deleted)).await?;
        let next = if page.more { page.keys.last().cloned() } else { None };
        Ok(KeyListResponse { keys: page.keys, next })
    }

    /// Validates a whole peer batch, then merges it in one transaction and logs every decision.
    pub(crate) async fn apply_replication(&self, request: ReplicateRequest) -> Result<ReplicateResponse> {
        let from = request.from;
        self.check_peer(from, "replication")?;
        if request.entries.len() > MAX_BATCH_KEYS {
            return Err(Error::TooLarge(format!(
                "batch has {} keys; the limit is {MAX_BATCH_KEYS}",
                request.entries.len()
            )));
        }
        let entries = self.validate_entries(request.entries)?;
        let keys = entries.len();
        let (records, _, _) = self.merge_entries(from, &entries, false).await?;
        let versions: Vec<&Version> = entries.iter().flat_map(|(_, vs)| vs.iter()).collect();
        let mut changed = 0;
        for (record, version) in records.iter().zip(versions) {
            changed += usize::from(record.outcome.changed());
            decisions::merge(&self.decisions, from, record, version);
        }
        // The peer is evidently up: if our sender to it is backing off, let it retry now.
        if let Some(link) = self.links.iter().find(|l| l.member.id == from) {
            link.peer_is_up();
        }
        Ok(ReplicateResponse { keys, changed })
    }

    /// Merges validated entries in one transaction; returns the records, how many keys changed,
    /// and (with `skip_refused`) the keys refused by [`SiblingSet::check_incoming`] — without it,
    /// such a key fails the whole batch (400) and nothing is applied.
    async fn merge_entries(
        &self,
        from: ReplicaId,
        entries: &[(String, Vec<Version>)],
        skip_refused: bool,
    ) -> Result<(Vec<MergeRecord>, usize, Refused)> {
        let incoming = entries.to_vec();
        // While recovering, this replica pulls its own past versions back: they carry counters
        // at its position that its empty store no longer holds.
        let own = (!self.is_recovering()).then(|| self.layout.me().position());
        let me = self.id();
        let check = move |key: &str, set: &SiblingSet, v: &Version| {
            set.check_incoming(v, own).map_err(|suspect| decisions::suspect(me, from, key, v, suspect))
        };
        let (records, skipped) = self.blocking(move |store| store.merge_remote(&incoming, check, skip_refused)).await?;
        let changed: HashSet<&str> = records.iter().filter(|r| r.outcome.changed()).map(|r| r.key.as_str()).collect();
        let changed = changed.len();
        Ok((records, changed, skipped))
    }

    /// Merges keys this replica fetched itself — by anti-entropy, recovery or read repair (the
    /// `source`); returns how many keys changed here. Validated like a replication batch, applied
    /// in one transaction, logged per changed key at debug level (the caller logs one summary).
    ///
    /// Unlike a replication batch, a pulled page is checked entry by entry: an entry this replica
    /// refuses is skipped with a warning, so one bad key cannot stall anti-entropy or recovery.
    pub(crate) async fn merge_pulled(&self, source: MergeSource, pulled: Vec<ReplicateEntry>) -> Result<usize> {
        let mut entries = Vec::with_capacity(pulled.len());
        for entry in pulled {
            let key = entry.key.clone();
            match self.validate_entries(vec![entry]) {
                Ok(mut valid) => entries.append(&mut valid),
                Err(e) => decisions::skipped(&key, source, &e),
            }
        }
        let (records, changed, _) = self.merge_entries(source.peer().unwrap_or(self.id()), &entries, true).await?;
        for r in &records {
            decisions::count_merge(source, r.outcome);
            if r.outcome.changed() {
                decisions::pulled(&self.decisions, source, r);
            }
        }
        Ok(changed)
    }

    /// Answers a quorum read from a peer: the whole set, tombstones included.
    pub(crate) async fn serve_peer_read(&self, request: PeerReadRequest) -> Result<PeerReadResponse> {
        self.check_peer(request.from, "read request")?;
        if self.is_recovering() {
            // Its data may be missing writes it acknowledged before losing its disk: it must not
            // count toward a read quorum.
            return Err(Error::Unavailable(format!(
                "replica {} is recovering; it does not serve quorum reads",
                self.id()
            )));
        }
        let set = self.read(request.key).await?;
        Ok(PeerReadResponse { versions: set.versions().to_vec() })
    }

    /// A peer announced it (re)started: skip the backoff toward it.
    pub(crate) fn peer_hello(&self, from: ReplicaId) -> Result<()> {
        let link = self.links.iter().find(|l| l.member.id == from).ok_or_else(|| {
            Error::Conflict(format!("hello from {from}, which is not a peer of replica {}", self.id()))
        })?;
        info!("replica {from} ({}) says it is up", link.member.address());
        link.peer_is_up();
        Ok(())
    }
}

/// For unit tests: an insecure replica of a 3-member cluster on 127.0.0.1:7000–7002 (none of
/// them listening), the one at `port`, with its store under `dir`, accepting writes at once.
#[cfg(test)]
pub(crate) fn test_replica(dir: &std::path::Path, port: u16) -> Arc<Replica> {
    let peers: Vec<u16> = [7000u16, 7001, 7002].into_iter().filter(|p| *p != port).collect();
    let layout = Layout::from_flags("127.0.0.1", port, 3, &vec!["127.0.0.1".into(); 2], &peers).unwrap();
    Replica::open(Config {
        layout,
        data_dir: dir.join("data"),
        max_value_bytes: 1024,
        cluster_key: None,
        anti_entropy: None,
        skip_recovery: true,
        peer_source: None,
        compact_after: None,
    })
    .unwrap()
}
