//! The node: validates and applies client writes, merges peer batches, owns the senders.
//!
//! Every decision a replica takes is logged here, one line each, in the seed's notation:
//!
//! ```text
//! replica 1 · key "cart" · client write "milk" → clock [2, 0, 0, 0, 0]
//! replica 5 · key "cart" · local [1, 0, 0, 0, 0] vs received "milk" [2, 0, 0, 0, 0] from replica 1 → no conflict, updated
//! replica 3 · key "cart" · local [2, 0, 0, 0, 0] vs received "eggs" [1, 1, 0, 0, 0] from replica 2 → CONFLICT, kept 2 siblings
//! ```
//!
//! Keys and values are written escaped (Rust's `{:?}`: quotes, `\n`, `\0`, `\u{..}`), so a key
//! can never forge a line or put a control byte into the log.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::net::auth::{ClusterKey, PeerAuth};
use crate::core::clock::{VectorClock, MAX_COUNTER};
use crate::core::cluster::{Layout, ReplicaId};
use crate::error::{Error, Result};
use crate::net::protocol::{
    PeerReadRequest, PeerReadResponse, PeerStatus,
    ReplicateEntry, ReplicateRequest, ReplicateResponse, StatusResponse, MAX_BATCH_KEYS,
    MAX_KEY_BYTES, MAX_VERSIONS_PER_ENTRY,
};
use crate::net::peer::PeerClient;
pub use crate::node::link::PeerLink;
use crate::storage::on_store;
use crate::storage::store::{MergeRecord, Refused, Store};
use crate::core::versions::{MergeOutcome, SiblingSet, Suspect, Version, WriteRefusal};

/// Past this many siblings for one key, every merge that adds one logs a warning (Riak warns
/// at the same number): so many concurrent versions mean clients write without reading the
/// context, and reads grow with every one.
pub const SIBLING_WARN_THRESHOLD: usize = 25;

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
}

/// One replica.
pub struct Replica {
    layout: Layout,
    store: Arc<Store>,
    links: Vec<Arc<PeerLink>>,
    peers: PeerClient,
    max_value_bytes: usize,
    anti_entropy: Option<AntiEntropyConfig>,
    /// True from the start on an empty data dir until every peer's keys were pulled.
    recovering: AtomicBool,
}

/// Checks a key against the documented limits.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidInput("the key must not be empty".into()));
    }
    if key == "." || key == ".." {
        // URLs treat these segments as path navigation: no client could address such a key.
        return Err(Error::InvalidInput(format!("{key:?} cannot be a key: URLs treat it as a path step")));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::TooLarge(format!("the key is {} bytes; the limit is {MAX_KEY_BYTES}", key.len())));
    }
    Ok(())
}

/// A value shortened for a log line.
fn preview(value: Option<&str>) -> String {
    match value {
        None => "(delete)".to_string(),
        Some(s) if s.chars().count() <= 24 => format!("{s:?}"),
        Some(s) => format!("{:?}…", s.chars().take(24).collect::<String>()),
    }
}

/// Local clocks for a log line: `(none)`, `[1, 0, 0]` or `{[1, 0, 0] ∥ [0, 1, 0]}`.
fn show_clocks(clocks: &[VectorClock]) -> String {
    match clocks {
        [] => "(none)".to_string(),
        [one] => one.to_string(),
        many => format!("{{{}}}", many.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(" ∥ ")),
    }
}

/// The error for a refused client write, logged as the replica's decision. A context that does
/// not cover the local set is a conflict the client resolves (409, with every version it
/// missed); the other refusals mean the context cannot have come from a GET of this key (400).
fn refused(
    me: ReplicaId,
    n: usize,
    key: &str,
    what: &str,
    current: &SiblingSet,
    context: Option<&VectorClock>,
    refusal: WriteRefusal,
) -> Error {
    let local = current.context(n);
    match refusal {
        WriteRefusal::NotCovered => {
            let ctx = context.cloned().unwrap_or_else(|| VectorClock::zero(n));
            let missed: Vec<VectorClock> = current.not_covered_by(&ctx).map(|v| v.clock.clone()).collect();
            let clocks: Vec<VectorClock> = current.versions().iter().map(|v| v.clock.clone()).collect();
            warn!(
                "replica {me} · key {key:?} · {what} vs local {} → CONFLICT, refused (409): the client never saw {}",
                show_clocks(&clocks),
                show_clocks(&missed)
            );
            Error::StaleContext {
                message: format!(
                    "conflict: key {key:?} holds {} version(s) the context {ctx} does not cover ({}); nothing was \
                     written. Merge the versions returned and write again with the context returned",
                    missed.len(),
                    show_clocks(&missed)
                ),
                key: key.to_string(),
                versions: current.versions().to_vec(),
                context: local,
            }
        }
        WriteRefusal::ContextAhead => Error::InvalidInput(format!(
            "the context {} is ahead of this replica for key {key:?} (it holds {local}); send the context of a GET \
             of this key",
            context.map(ToString::to_string).unwrap_or_default()
        )),
        WriteRefusal::CounterLimit => Error::InvalidInput(format!(
            "the new clock would pass the counter limit {MAX_COUNTER}: the context is not from a GET of this key"
        )),
    }
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
            recovering: AtomicBool::new(recovering),
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

    /// This replica's cluster id (see [`crate::net::auth::cluster_id`]): peers must send the same.
    pub fn cluster_id(&self) -> &str {
        self.peers.auth().cluster()
    }

    /// Why this replica cannot serve, if it cannot: its store failed (an I/O error such as a full
    /// disk, or damage) and has not been reopened since, or a read of it fails now.
    pub async fn storage_problem(&self) -> Option<String> {
        self.blocking(|store| store.probe()).await.err().map(|e| e.to_string())
    }

    /// Write transactions this replica's store committed since it started.
    pub fn commits(&self) -> u64 {
        self.store.commits()
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

    fn check_context(&self, context: Option<&VectorClock>) -> Result<()> {
        let Some(c) = context else { return Ok(()) };
        if c.len() != self.layout.n() {
            return Err(Error::InvalidInput(format!(
                "clock {c} has {} counters; this cluster has N = {}",
                c.len(),
                self.layout.n()
            )));
        }
        if c.counters().iter().any(|&x| x > MAX_COUNTER) {
            return Err(Error::InvalidInput(format!("clock {c} has a counter above the limit {MAX_COUNTER}")));
        }
        Ok(())
    }

    fn check_value(&self, value: &str) -> Result<()> {
        if value.len() > self.max_value_bytes {
            return Err(Error::TooLarge(format!(
                "the value is {} bytes; the limit is {} (--max-value-bytes)",
                value.len(),
                self.max_value_bytes
            )));
        }
        Ok(())
    }

    /// A client write (`value = Some`) or delete (`None`) coordinated here. Returns the new clock
    /// once the new version and the peers' outbox marks are committed to disk.
    ///
    /// The commit, the log line and the senders' wake-up happen together on a blocking task,
    /// which runs to the end even if the client gives up and this future is dropped: a
    /// committed write is always announced to the senders.
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
        let (n, position, me) = (self.layout.n(), self.layout.me().position(), self.id());
        let links = self.links.clone();
        self.blocking(move |store| {
            let mut what = match &value {
                Some(_) => format!("client write {}", preview(value.as_deref())),
                None => "client delete".to_string(),
            };
            if let Some(ctx) = &context {
                what = format!("{what} with context {ctx}");
            }
            let (clock, replaced) = store.write_local(&key, |current| {
                let clock = current
                    .client_write(n, context.as_ref(), position)
                    .map_err(|refusal| refused(me, n, &key, &what, current, context.as_ref(), refusal))?;
                let version = Version { clock: clock.clone(), value };
                Ok((SiblingSet::single(version), (clock, current.len())))
            })?;
            let resolves = if replaced > 1 { format!(" (supersedes {replaced} siblings)") } else { String::new() };
            info!("replica {me} · key {key:?} · {what} → clock {clock}{resolves}");
            for link in &links {
                link.wake();
            }
            Ok(clock)
        })
        .await
    }

    /// The key's sibling set as stored here (empty if never written).
    pub async fn read(&self, key: String) -> Result<SiblingSet> {
        validate_key(&key)?;
        self.blocking(move |store| store.get(&key)).await
    }

    /// Validates a whole peer batch, then merges it in one transaction and logs every decision.
    pub async fn apply_replication(&self, request: ReplicateRequest) -> Result<ReplicateResponse> {
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
            self.log_merge(from, record, version);
        }
        // The peer is evidently up: if our sender to it is backing off, let it retry now.
        if let Some(link) = self.links.iter().find(|l| l.member.id == from) {
            link.peer_is_up();
        }
        Ok(ReplicateResponse { keys, changed })
    }

    /// Refuses a peer request from an id that is not a peer of this replica (409).
    pub(crate) fn check_peer(&self, from: ReplicaId, what: &str) -> Result<()> {
        if from == self.id() || self.layout.member(from).is_none() {
            return Err(Error::Conflict(format!(
                "{what} from {from}, which is not a peer of replica {} (members 1..={})",
                self.id(),
                self.layout.n()
            )));
        }
        Ok(())
    }

    /// Checks every entry of a peer's batch before anything is applied.
    fn validate_entries(&self, batch: Vec<ReplicateEntry>) -> Result<Vec<(String, Vec<Version>)>> {
        let mut entries = Vec::with_capacity(batch.len());
        for entry in batch {
            validate_key(&entry.key)?;
            if entry.versions.is_empty() || entry.versions.len() > MAX_VERSIONS_PER_ENTRY {
                return Err(Error::InvalidInput(format!(
                    "key {:?} has {} versions; between 1 and {MAX_VERSIONS_PER_ENTRY} expected",
                    entry.key,
                    entry.versions.len()
                )));
            }
            // Values are not checked against this replica's --max-value-bytes: the coordinator
            // accepted them, and refusing them here would wedge replication. The body limit bounds them.
            for v in &entry.versions {
                self.check_context(Some(&v.clock))?;
            }
            entries.push((entry.key, entry.versions));
        }
        Ok(entries)
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
            set.check_incoming(v, own).map_err(|suspect| {
                let why = match suspect {
                    Suspect::NotIssued { counter, issued } => format!(
                        "it claims replica {me}'s clock position with counter {counter}, but replica {me} issued at \
                         most {issued} for this key"
                    ),
                    Suspect::ClockReused => {
                        "replica holds another version with the same clock: a counter was issued twice".to_string()
                    }
                };
                let reason = format!(
                    "key {key:?}: version {} from replica {from} refused: {why} — two members share a clock \
                     position (member lists that differ, or a reused data dir); nothing of it is merged",
                    v.clock
                );
                error!("replica {me} · {reason}");
                reason
            })
        };
        let (records, skipped) = self.blocking(move |store| store.merge_remote(&incoming, check, skip_refused)).await?;
        let changed: HashSet<&str> = records.iter().filter(|r| r.outcome.changed()).map(|r| r.key.as_str()).collect();
        let changed = changed.len();
        Ok((records, changed, skipped))
    }

    /// Merges keys pulled by anti-entropy from `from`; returns how many keys changed here.
    /// Validated like a replication batch, applied all-or-nothing, logged per changed key at debug
    /// level (the round logs one summary line).
    ///
    /// Unlike a replication batch, a pulled page is checked entry by entry: an entry this replica
    /// refuses is skipped with a warning, so one bad key cannot stall anti-entropy or recovery.
    pub async fn merge_pulled(&self, from: ReplicaId, pulled: Vec<ReplicateEntry>) -> Result<usize> {
        let mut entries = Vec::with_capacity(pulled.len());
        for entry in pulled {
            let key = entry.key.clone();
            match self.validate_entries(vec![entry]) {
                Ok(mut valid) => entries.append(&mut valid),
                Err(e) => warn!("replica {} · key {key:?} from replica {from} skipped: {e}", self.id()),
            }
        }
        let (records, changed, _) = self.merge_entries(from, &entries, true).await?;
        for r in records.iter().filter(|r| r.outcome.changed()) {
            debug!(
                "replica {} · key {:?} · anti-entropy from replica {from}: local {} vs received {} → {:?}",
                self.id(),
                r.key,
                show_clocks(&r.local),
                r.received,
                r.outcome
            );
        }
        Ok(changed)
    }

    /// This replica's anti-entropy digests.
    pub async fn range_digests(&self, ranges: usize) -> Result<Vec<[u8; 32]>> {
        self.blocking(move |store| store.range_digests(ranges)).await
    }

    /// Answers a quorum read from a peer: the whole set, tombstones included.
    pub async fn serve_peer_read(&self, request: PeerReadRequest) -> Result<PeerReadResponse> {
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

    fn log_merge(&self, from: ReplicaId, r: &MergeRecord, v: &Version) {
        let head = format!(
            "replica {} · key {:?} · local {} vs received {} {} from replica {from} →",
            self.id(),
            r.key,
            show_clocks(&r.local),
            preview(v.value.as_deref()),
            r.received
        );
        match r.outcome {
            MergeOutcome::Created => info!("{head} new key, stored"),
            MergeOutcome::Updated => info!("{head} no conflict, updated"),
            MergeOutcome::Stale if r.local.contains(&r.received) => info!("{head} already up to date"),
            MergeOutcome::Stale => info!("{head} no conflict, local is newer: ignored"),
            MergeOutcome::Conflict { siblings } if siblings > SIBLING_WARN_THRESHOLD => warn!(
                "{head} CONFLICT, kept {siblings} siblings — more than {SIBLING_WARN_THRESHOLD}: \
                 clients should resolve this key by writing with the context they read"
            ),
            MergeOutcome::Conflict { siblings } => warn!("{head} CONFLICT, kept {siblings} siblings"),
        }
    }

    /// A peer announced it (re)started: skip the backoff toward it.
    pub fn peer_hello(&self, from: ReplicaId) -> Result<()> {
        let link = self.links.iter().find(|l| l.member.id == from).ok_or_else(|| {
            Error::Conflict(format!("hello from {from}, which is not a peer of replica {}", self.id()))
        })?;
        info!("replica {} · replica {from} ({}) says it is up", self.id(), link.member.address());
        link.peer_is_up();
        Ok(())
    }

    /// Id, cluster id, members, key count, and per peer: outbox depth, reachability and
    /// whether it is in the same cluster (its `/health` says its cluster id; probed now).
    pub async fn status(&self) -> Result<StatusResponse> {
        let mut probes = JoinSet::new();
        for link in &self.links {
            let (peers, member) = (self.peers.clone(), link.member.clone());
            probes.spawn(async move { (member.id, peers.probe(&member).await) });
        }
        let mut probed = std::collections::HashMap::new();
        while let Some(Ok((id, cluster))) = probes.join_next().await {
            probed.insert(id, cluster);
        }
        let peer_ids: Vec<ReplicaId> = self.links.iter().map(|l| l.member.id).collect();
        let (depths, keys) = self
            .blocking(move |store| {
                let depths = peer_ids.iter().map(|&id| store.outbox_depth(id)).collect::<Result<Vec<_>>>()?;
                Ok((depths, store.key_count()?))
            })
            .await?;
        let peers = self
            .links
            .iter()
            .zip(depths)
            .map(|(link, outbox_depth)| {
                let probe = probed.get(&link.member.id).cloned().flatten();
                let cluster = probe.clone().flatten();
                let refusal = link.membership_refusal();
                let same_cluster = match (&cluster, &refusal) {
                    (_, Some(_)) => Some(false),
                    (Some(c), None) => Some(c == self.cluster_id()),
                    (None, None) => None,
                };
                PeerStatus {
                    id: link.member.id,
                    address: link.member.address(),
                    outbox_depth,
                    reachable: probe.is_some(),
                    cluster,
                    same_cluster,
                    membership_refusal: refusal,
                }
            })
            .collect();
        Ok(StatusResponse {
            replica: self.id(),
            n: self.layout.n(),
            cluster: self.cluster_id().to_string(),
            members: self.layout.members().to_vec(),
            peers,
            keys,
            recovering: self.is_recovering(),
        })
    }
}
