//! The replica's decision lines: one function per kind of decision, each writing one log line
//! in the seed's notation (keys and values escaped, clocks as `[1, 0, 0]`), so that wording lives
//! in one place.

use std::fmt;

use tracing::{debug, error, info, warn};

use crate::core::clock::{VectorClock, MAX_COUNTER};
use crate::core::cluster::ReplicaId;
use crate::core::show::{show_value, Clocks};
use crate::core::versions::{MergeOutcome, SiblingSet, Suspect, Version, WriteRefusal};
use crate::error::Error;
use crate::storage::store::MergeRecord;

/// Past this many siblings for one key, every merge that adds one logs a warning (Riak warns
/// at the same number): so many concurrent versions mean clients write without reading the
/// context, and reads grow with every one.
pub(crate) const SIBLING_WARN_THRESHOLD: usize = 25;

/// A value shortened for a log line (`(delete)` for a delete).
pub(crate) fn preview(value: Option<&str>) -> String {
    match value {
        None => "(delete)".to_string(),
        Some(_) => show_value(value, Some(24)),
    }
}

/// Local clocks for a log line: `(none)`, `[1, 0, 0]` or `{[1, 0, 0] ∥ [0, 1, 0]}`.
pub(crate) fn show_clocks(clocks: &[VectorClock]) -> String {
    Clocks(clocks).to_string()
}

/// Counts one merge in the metrics (`vkv_merges_total` by source and outcome; a conflict also
/// counts a sibling created), beside its decision line.
pub(crate) fn count_merge(source: MergeSource, outcome: MergeOutcome) {
    let outcome_label = match outcome {
        MergeOutcome::Created => "created",
        MergeOutcome::Updated => "updated",
        MergeOutcome::Stale => "stale",
        MergeOutcome::Conflict { .. } => "conflict",
    };
    metrics::counter!("vkv_merges_total", "source" => source.kind(), "outcome" => outcome_label).increment(1);
    if matches!(outcome, MergeOutcome::Conflict { .. }) {
        metrics::counter!("vkv_siblings_created_total", "source" => source.kind()).increment(1);
    }
}

/// A client write applied: `what` (the value or delete, with its context) got `clock`,
/// superseding `replaced` versions.
pub(crate) fn written(key: &str, what: &str, clock: &VectorClock, replaced: usize) {
    let resolves = if replaced > 1 { format!(" (supersedes {replaced} siblings)") } else { String::new() };
    info!(decision = "write", key = ?key, "{what} → clock {clock}{resolves}");
}

/// A peer's version refused because it reuses a clock counter (see `SiblingSet::check_incoming`);
/// returns the reason, which the peer gets back.
pub(crate) fn suspect(me: ReplicaId, from: ReplicaId, key: &str, v: &Version, suspect: Suspect) -> String {
    let why = match suspect {
        Suspect::NotIssued { counter, issued } => format!(
            "it claims replica {me}'s clock position with counter {counter}, but replica {me} issued at most \
             {issued} for this key"
        ),
        Suspect::ClockReused => "replica holds another version with the same clock: a counter was issued twice".into(),
    };
    let reason = format!(
        "key {key:?}: version {} from replica {from} refused: {why} — two members share a clock position (member \
         lists that differ, or a reused data dir); nothing of it is merged",
        v.clock
    );
    error!(decision = "suspect_refused", key = ?key, "{reason}");
    reason
}

/// A fetched entry this replica refuses (invalid): skipped, the others go on.
pub(crate) fn skipped(key: &str, source: MergeSource, e: &Error) {
    warn!(decision = "skipped", key = ?key, "from {source} skipped: {e}");
}

/// A quorum read found replicas behind and repaired them.
pub(crate) fn read_repair(key: &str, r: usize, repaired: &[ReplicaId]) {
    metrics::counter!("vkv_read_repairs_total").increment(1);
    info!(decision = "read_repair", key = ?key, "read repair (r={r}): replicas {repaired:?} were behind");
}

/// The error for a refused client write, logged as the replica's decision. A context that does
/// not cover the local set is a conflict the client resolves (409, with every version it
/// missed); the other refusals mean the context cannot have come from a GET of this key (400).
pub(crate) fn refused(
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
            metrics::counter!("vkv_write_conflicts_total").increment(1);
            warn!(
                decision = "refused",
                key = ?key,
                "{what} vs local {} → CONFLICT, refused (409): the client never saw {}",
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

/// The decision line for one version merged from replica `from`: what the local clocks were,
/// what arrived, and what the merge did, with the decision and the key as fields.
pub(crate) fn merge(from: ReplicaId, r: &MergeRecord, v: &Version) {
    count_merge(MergeSource::Replication(from), r.outcome);
    let head = format!(
        "local {} vs received {} {} from replica {from} →",
        show_clocks(&r.local),
        preview(v.value.as_deref()),
        r.received
    );
    let key = &r.key;
    match r.outcome {
        MergeOutcome::Created => info!(decision = "created", key = ?key, "{head} new key, stored"),
        MergeOutcome::Updated => info!(decision = "updated", key = ?key, "{head} no conflict, updated"),
        MergeOutcome::Stale if r.local.contains(&r.received) => {
            info!(decision = "up_to_date", key = ?key, "{head} already up to date")
        }
        MergeOutcome::Stale => info!(decision = "ignored", key = ?key, "{head} no conflict, local is newer: ignored"),
        MergeOutcome::Conflict { siblings } if siblings > SIBLING_WARN_THRESHOLD => warn!(
            decision = "conflict",
            key = ?key,
            "{head} CONFLICT, kept {siblings} siblings — more than {SIBLING_WARN_THRESHOLD}: \
             clients should resolve this key by writing with the context they read"
        ),
        MergeOutcome::Conflict { siblings } => {
            warn!(decision = "conflict", key = ?key, "{head} CONFLICT, kept {siblings} siblings")
        }
    }
}

/// Where versions merged into a replica come from, for its decision lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeSource {
    /// A peer's sender shipped them (`POST /replicate`).
    Replication(ReplicaId),
    /// This replica's anti-entropy round pulled them from a peer.
    AntiEntropy(ReplicaId),
    /// This replica's recovery pulled them from a peer.
    Recovery(ReplicaId),
    /// A quorum read (`?r=K`) at this replica merged them from the replicas it read.
    ReadRepair,
}

impl MergeSource {
    /// The peer the versions came from, if one did.
    pub fn peer(self) -> Option<ReplicaId> {
        match self {
            MergeSource::Replication(p) | MergeSource::AntiEntropy(p) | MergeSource::Recovery(p) => Some(p),
            MergeSource::ReadRepair => None,
        }
    }

    /// The source's kind, as a metric label: `replication`, `anti_entropy`, `recovery`, `read_repair`.
    pub fn kind(self) -> &'static str {
        match self {
            MergeSource::Replication(_) => "replication",
            MergeSource::AntiEntropy(_) => "anti_entropy",
            MergeSource::Recovery(_) => "recovery",
            MergeSource::ReadRepair => "read_repair",
        }
    }
}

impl fmt::Display for MergeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MergeSource::Replication(p) => write!(f, "replication from replica {p}"),
            MergeSource::AntiEntropy(p) => write!(f, "anti-entropy from replica {p}"),
            MergeSource::Recovery(p) => write!(f, "recovery from replica {p}"),
            MergeSource::ReadRepair => f.write_str("read repair"),
        }
    }
}

/// The (debug) line for one key changed by versions this replica fetched itself.
pub(crate) fn pulled(source: MergeSource, r: &MergeRecord) {
    debug!(
        decision = "pulled",
        key = ?r.key,
        "{source}: local {} vs received {} → {:?}",
        show_clocks(&r.local),
        r.received,
        r.outcome
    );
}
