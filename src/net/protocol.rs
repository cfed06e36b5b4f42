//! The JSON shapes of the HTTP API, shared by the server, the peer senders and the client.
//!
//! This is a contract: tools outside this repository speak it. Change it only compatibly.
//!
//! Size: every request and answer of the client and peer protocols, with their documented
//! limits, in one place — the contract reads best whole.

use serde::{Deserialize, Serialize};

use crate::core::clock::VectorClock;
use crate::core::cluster::{Member, ReplicaId};
use crate::core::versions::Version;

/// Longest key accepted, in bytes of UTF-8 (after percent-decoding).
pub const MAX_KEY_BYTES: usize = 1024;
/// Default for `--max-value-bytes`: the longest value a client may write.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most keys in one `POST /replicate` batch. Larger batches amortise a round trip over more keys;
/// smaller ones bound the memory and the transaction a receiver holds for one request.
pub const MAX_BATCH_KEYS: usize = 1024;
/// Most versions of one key in a replication entry. Far above any healthy sibling count.
pub const MAX_VERSIONS_PER_ENTRY: usize = 1024;
/// Largest `POST /replicate` body a replica accepts. Senders cut batches at a quarter of this,
/// so only a single key whose siblings add up to more than this can never ship.
pub const MAX_REPLICATE_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Largest `--max-value-bytes` a replica accepts: a value that long, with every byte escaped as
/// `\u00XX` (six bytes) in JSON, still fits in one replication request with room for its key
/// and clock. Above it a peer would refuse the value for ever (it could travel by anti-entropy
/// only), so the server refuses such a flag at startup. (Siblings of one key travel together:
/// several values this large in one key can still exceed a request; see the README's limits.)
pub const MAX_VALUE_BYTES_LIMIT: usize = (MAX_REPLICATE_BODY_BYTES - 64 * 1024) / 6;

/// `PUT /kv/{key}` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteRequest {
    /// The new value.
    pub value: String,
    /// The clock the client read (GET's `context`, or a 404's or 409's). The write succeeds only
    /// if it covers every version the replica holds (otherwise 409 and nothing is written);
    /// without it, a blind write that supersedes whatever the replica holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<VectorClock>,
}

/// `DELETE /kv/{key}` body (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    /// The clock the client read (as for a PUT): the delete succeeds only if it covers every
    /// version the replica holds; without it, a blind delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<VectorClock>,
}

/// Answer to a PUT or DELETE: the clock of the new version, sent once it is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WriteResponse {
    /// The key written.
    pub key: String,
    /// The new version's clock.
    pub clock: VectorClock,
    /// The replica that coordinated the write.
    pub replica: ReplicaId,
    /// With `?w=K`: how many replicas held the write when the answer left (≥ K).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acks: Option<usize>,
}

/// Answer to `GET /kv/{key}`: every version (one unless there is a conflict) and the context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadResponse {
    /// The key read.
    pub key: String,
    /// The sibling versions, sorted by clock; tombstones among live siblings appear as
    /// `{"deleted": true, "clock": [...]}`.
    pub versions: Vec<Version>,
    /// Pointwise max of the versions' clocks: send it back with a write to resolve a conflict.
    pub context: VectorClock,
}

impl ReadResponse {
    /// True when the key holds concurrent versions.
    pub fn is_conflict(&self) -> bool {
        self.versions.len() > 1
    }
}

/// Body of a `404` from `GET /kv/{key}` and of a `409` write conflict: GET's shape plus the
/// error. On a 404 `versions` is empty and `context` is the join of the key's tombstones (all
/// zeros for a key never written), so a writer always has a context to send; on a 409
/// `versions` holds every version the replica has for the key, tombstones included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// The key, its versions and the context to write back with.
    #[serde(flatten)]
    pub state: ReadResponse,
}

/// Body of the `503` that answers a write whose `?w=K` was not met in time: the write is durable
/// at the coordinator and queued for every peer — only the extra guarantee is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// Always true: the write happened at the coordinator.
    pub written: bool,
    /// The written version's clock.
    pub clock: VectorClock,
}

/// Body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

/// `POST /replicate`: a peer ships keys with their whole sibling sets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicateRequest {
    /// The sending replica's id.
    pub from: ReplicaId,
    /// The keys, each with every version the sender holds.
    pub entries: Vec<ReplicateEntry>,
}

/// One key of a replication batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicateEntry {
    /// The key.
    pub key: String,
    /// The sender's sibling set for it.
    pub versions: Vec<Version>,
}

/// [`ReplicateRequest`] as a sender writes it: each set is the JSON the store holds, shipped
/// as it is (the stored form of a set *is* the `versions` array), so a sender neither decodes
/// nor re-encodes the sets it ships. The receiver reads it as a [`ReplicateRequest`] and
/// validates every version as usual.
#[derive(Debug, Serialize)]
pub struct ReplicateBatch<'a> {
    /// The sending replica's id.
    pub from: ReplicaId,
    /// The keys with their stored sets.
    pub entries: Vec<RawEntry<'a>>,
}

/// One key of a [`ReplicateBatch`].
#[derive(Debug, Serialize)]
pub struct RawEntry<'a> {
    /// The key.
    pub key: &'a str,
    /// The sender's sibling set for it, as stored: a JSON array of versions.
    pub versions: &'a serde_json::value::RawValue,
}

/// Answer to `POST /replicate`, once the whole batch is durable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicateResponse {
    /// Keys in the batch.
    pub keys: usize,
    /// Incoming versions that changed the receiver's state.
    pub changed: usize,
}

/// `POST /peer/hello`: a replica that just started tells its peers, so they retry at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloRequest {
    /// The id of the replica that started.
    pub from: ReplicaId,
}

/// Hash ranges anti-entropy splits the key space into. More ranges: finer comparison (fewer keys
/// shipped per difference) but a longer digest list per round.
pub const AE_RANGES: usize = 64;
/// Most hash ranges a digest request may ask for.
pub const MAX_AE_RANGES: usize = 4096;
/// Bytes of sets one `POST /peer/entries` answer carries at most (at least one key).
pub const AE_MAX_RESPONSE_BYTES: usize = MAX_REPLICATE_BODY_BYTES / 4;

/// `POST /peer/digest`: "summarise your keys in this many hash ranges".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestRequest {
    /// The asking replica.
    pub from: ReplicaId,
    /// Number of hash ranges.
    pub ranges: usize,
}

/// Answer to `POST /peer/digest`: one hex digest per range (XOR of XXH3-128 hashes of its keys' sets).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DigestResponse {
    /// Digests, range 0 first.
    pub digests: Vec<String>,
}

/// `POST /peer/entries`: "send me every key in these ranges (of `of`), at most `limit`".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntriesRequest {
    /// The asking replica.
    pub from: ReplicaId,
    /// Number of hash ranges the key space is split into.
    pub of: usize,
    /// The ranges wanted.
    pub ranges: Vec<usize>,
    /// Most keys to send.
    pub limit: usize,
    /// Send only keys after this one (key order), to page through a large answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Answer to `POST /peer/entries`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntriesResponse {
    /// The keys with their whole sibling sets.
    pub entries: Vec<ReplicateEntry>,
    /// True when keys were left out (limit reached): ask again next round.
    pub truncated: bool,
}

/// `POST /peer/read`: a quorum read asks a peer for its whole sibling set of one key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerReadRequest {
    /// The asking replica.
    pub from: ReplicaId,
    /// The key.
    pub key: String,
}

/// Answer to `POST /peer/read`: every version held, tombstones included (empty if none).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerReadResponse {
    /// The versions.
    pub versions: Vec<Version>,
}

/// Query of `PUT`/`DELETE /kv/{key}`: `?w=K` waits for K replicas (this one included).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WriteQuery {
    /// Replicas that must hold the write before the answer (1..=N, this one included).
    #[param(minimum = 1)]
    pub w: Option<usize>,
}

/// Query of `GET /kv/{key}`: `?r=K` merges the sets of K replicas (this one included).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// Replicas to read (1..=N, this one included).
    #[param(minimum = 1)]
    pub r: Option<usize>,
}

/// Answer to `GET /health`, `/readyz` and `/livez`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthBody {
    /// `ok` (serving reads and writes), `recovering` (reads only), `unhealthy` (the store is
    /// failing), or `alive` (`/livez`: the process answers).
    pub status: String,
    /// This replica's id.
    pub replica: ReplicaId,
    /// The cluster id (as in `GET /status`): a hash of N and the ordered member list.
    pub cluster: String,
    /// Why the replica is not ready, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Keys `GET /kv` returns when the request names no `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 1000;
/// Largest `limit` of `GET /kv`: bounds the page a replica builds for one request.
pub const MAX_LIST_LIMIT: usize = 10_000;

/// Query of `GET /kv` (and `GET /kv/`): one page of keys in byte order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Only keys strictly after this one: the previous page's `next`.
    pub after: Option<String>,
    /// Most keys in the page: 1 to 10000 (`MAX_LIST_LIMIT`), default 1000 (`DEFAULT_LIST_LIMIT`).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<usize>,
    /// Also list keys whose every version is a tombstone.
    pub deleted: Option<bool>,
}

/// Answer to `GET /kv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyListResponse {
    /// The keys, in byte order.
    pub keys: Vec<String>,
    /// The last key of this page when more follow (pass it as `after`), else `null`.
    pub next: Option<String>,
}

/// Answer to `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusResponse {
    /// This replica's id.
    pub replica: ReplicaId,
    /// Cluster size.
    pub n: usize,
    /// The cluster id: a hash of N and the ordered member list. Every replica of one cluster
    /// shows the same; peers with another one refuse each other's data.
    #[serde(default)]
    pub cluster: String,
    /// The members in clock order.
    pub members: Vec<Member>,
    /// One entry per peer.
    pub peers: Vec<PeerStatus>,
    /// Keys stored, tombstoned keys included.
    pub keys: u64,
    /// True while the replica, started on an empty data dir, recovers from its peers (no writes).
    #[serde(default)]
    pub recovering: bool,
    /// What `/readyz` says now: `ok`, `recovering`, or `unhealthy` (the store is failing).
    /// Absent from replicas that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

/// One peer as seen from a replica.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PeerStatus {
    /// The peer's id.
    pub id: ReplicaId,
    /// `host:port`.
    pub address: String,
    /// Keys this replica still owes the peer.
    pub outbox_depth: u64,
    /// Whether the peer answered a health probe just now.
    pub reachable: bool,
    /// The cluster id the peer's `/health` reported (`None`: no answer, or not said).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Whether the peer is in this cluster: its cluster id equals ours and it did not refuse
    /// our membership (`None`: unknown, the peer did not answer).
    #[serde(default)]
    pub same_cluster: Option<bool>,
    /// The peer's last refusal of this replica's membership, if it is refusing now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_refusal: Option<String>,
}

/// A peer request: every one names the replica sending it (checked against the signed header).
pub trait PeerRequest {
    /// The sending replica's id.
    fn from(&self) -> ReplicaId;
}

macro_rules! peer_request {
    ($($t:ty),*) => {$(
        impl PeerRequest for $t {
            fn from(&self) -> ReplicaId {
                self.from
            }
        }
    )*};
}

peer_request!(ReplicateRequest, HelloRequest, DigestRequest, EntriesRequest, PeerReadRequest);
