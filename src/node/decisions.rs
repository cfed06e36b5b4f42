//! The replica's decision lines: one function per kind of decision, each writing one log line
//! in the seed's notation (keys and values escaped, clocks as `[1, 0, 0]`), so that wording lives
//! in one place — and recording the same decision in the replica's [`DecisionLog`], the bounded
//! history `GET /decisions` and the cluster page read.
//!
//! Size: each decision's line, its count in the metrics and its entry in the bounded history
//! `GET /decisions` serves are written side by side, so the three cannot drift apart.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
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

/// How many recent decisions a replica remembers for `GET /decisions`. Enough for a person
/// watching the page to see the last few seconds of a busy replica (and minutes of a quiet one);
/// each entry is a few hundred bytes, so the history costs well under 100 KiB of memory.
pub const DECISION_HISTORY: usize = 200;

/// One decision as `GET /decisions` shows it: what the log line says, as fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Decision {
    /// When it was taken, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The key.
    pub key: String,
    /// The log line's `decision` field: `write`, `refused` (409), or a merge's `created`,
    /// `updated`, `conflict`, `ignored`, `up_to_date`.
    #[schema(value_type = String)]
    pub outcome: &'static str,
    /// Who asked: `client`, or where merged versions came from (`replication from replica 2`).
    pub source: String,
    /// The value written or received, shortened as in the log (`(delete)` for a delete; absent
    /// when the decision does not carry one).
    pub value: Option<String>,
    /// The local clocks before a merge or a refusal (empty for a new key, and for a write: its
    /// line says how many versions it superseded, not which).
    pub local: Vec<VectorClock>,
    /// The clock received (a merge), assigned (a write) or sent as context (a refused write).
    pub clock: Option<VectorClock>,
    /// Siblings held after a conflict.
    pub siblings: Option<usize>,
}

/// The last [`DECISION_HISTORY`] decisions of one replica, newest last; older ones fall off.
/// Memory only: a restarted replica starts with an empty history (the log file keeps it all).
#[derive(Debug)]
pub struct DecisionLog {
    recent: Mutex<VecDeque<Decision>>,
    capacity: usize,
}

impl Default for DecisionLog {
    fn default() -> Self {
        DecisionLog::with_capacity(DECISION_HISTORY)
    }
}

impl DecisionLog {
    /// An empty history keeping at most `capacity` decisions (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        DecisionLog { recent: Mutex::new(VecDeque::with_capacity(capacity)), capacity }
    }

    /// Most decisions kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Remembers `decision`, forgetting the oldest one when full.
    fn record(&self, decision: Decision) {
        // A panic while holding the lock cannot leave the deque half-updated: use it anyway.
        let mut recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if recent.len() == self.capacity {
            recent.pop_front();
        }
        recent.push_back(decision);
    }

    /// The last `limit` decisions, newest first.
    pub fn latest(&self, limit: usize) -> Vec<Decision> {
        let recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        recent.iter().rev().take(limit).cloned().collect()
    }
}

/// A decision about `key` taken now, with every optional field empty, for the recorders to fill in.
fn decision(key: &str, outcome: &'static str, source: String, local: Vec<VectorClock>) -> Decision {
    // A wall clock before 1970 is a broken host, not a reason to fail a write: it shows as 0.
    let time_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    Decision { time_ms, key: key.to_string(), outcome, source, value: None, local, clock: None, siblings: None }
}

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

/// The client write being decided, as the decision lines show it.
pub(crate) struct ClientWrite {
    /// The key.
    pub key: String,
    /// The value shortened, or `(delete)`.
    pub shown: String,
    /// `client write "milk" with context [1, 0, 0]`: the start of its lines.
    pub what: String,
}

/// A client write applied: `w` got `clock`, superseding `replaced` versions.
pub(crate) fn written(log: &DecisionLog, w: &ClientWrite, clock: &VectorClock, replaced: usize) {
    let resolves = if replaced > 1 { format!(" (supersedes {replaced} siblings)") } else { String::new() };
    info!(decision = "write", key = ?w.key, "{} → clock {clock}{resolves}", w.what);
    let mut d = decision(&w.key, "write", "client".into(), Vec::new());
    (d.value, d.clock) = (Some(w.shown.clone()), Some(clock.clone()));
    log.record(d);
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
    log: &DecisionLog,
    n: usize,
    w: &ClientWrite,
    current: &SiblingSet,
    context: Option<&VectorClock>,
    refusal: WriteRefusal,
) -> Error {
    let (key, what) = (w.key.as_str(), w.what.as_str());
    let local = current.context(n);
    match refusal {
        WriteRefusal::NotCovered => {
            let ctx = context.cloned().unwrap_or_else(|| VectorClock::zero(n));
            let missed: Vec<VectorClock> = current.not_covered_by(&ctx).map(|v| v.clock.clone()).collect();
            let clocks: Vec<VectorClock> = current.versions().iter().map(|v| v.clock.clone()).collect();
            metrics::counter!("vkv_write_conflicts_total").increment(1);
            let mut d = decision(key, "refused", "client".into(), clocks.clone());
            (d.value, d.clock) = (Some(w.shown.clone()), Some(ctx.clone()));
            log.record(d);
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

/// The `decision` field of a merge's line.
fn merge_outcome(r: &MergeRecord) -> &'static str {
    match r.outcome {
        MergeOutcome::Created => "created",
        MergeOutcome::Updated => "updated",
        MergeOutcome::Stale if r.local.contains(&r.received) => "up_to_date",
        MergeOutcome::Stale => "ignored",
        MergeOutcome::Conflict { .. } => "conflict",
    }
}

/// Remembers a merge in `log`; `value` is absent when the caller's line does not show it.
fn record_merge(log: &DecisionLog, source: MergeSource, r: &MergeRecord, value: Option<String>) {
    let mut d = decision(&r.key, merge_outcome(r), source.to_string(), r.local.clone());
    (d.value, d.clock) = (value, Some(r.received.clone()));
    if let MergeOutcome::Conflict { siblings } = r.outcome {
        d.siblings = Some(siblings);
    }
    log.record(d);
}

/// The decision line for one version merged from replica `from`: what the local clocks were,
/// what arrived, and what the merge did, with the decision and the key as fields.
pub(crate) fn merge(log: &DecisionLog, from: ReplicaId, r: &MergeRecord, v: &Version) {
    let shown = preview(v.value.as_deref());
    // Written straight into the line (no string of its own: a receiver logs one line per key).
    let head = MergeHead { local: &r.local, shown: &shown, received: &r.received, from };
    count_merge(MergeSource::Replication(from), r.outcome);
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
    record_merge(log, MergeSource::Replication(from), r, Some(shown));
}

/// The start of a merge's decision line: `local [..] vs received "v" [..] from replica N →`.
struct MergeHead<'a> {
    local: &'a [VectorClock],
    shown: &'a str,
    received: &'a VectorClock,
    from: ReplicaId,
}

impl fmt::Display for MergeHead<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "local {} vs received {} {} from replica {} →",
            Clocks(self.local),
            self.shown,
            self.received,
            self.from
        )
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
pub(crate) fn pulled(log: &DecisionLog, source: MergeSource, r: &MergeRecord) {
    record_merge(log, source, r, None);
    debug!(
        decision = "pulled",
        key = ?r.key,
        "{source}: local {} vs received {} → {:?}",
        show_clocks(&r.local),
        r.received,
        r.outcome
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_newest_decisions_up_to_its_capacity() {
        let log = DecisionLog::with_capacity(3);
        for i in 0..5 {
            log.record(decision(&format!("k{i}"), "write", "client".into(), Vec::new()));
        }
        let keys: Vec<String> = log.latest(10).into_iter().map(|d| d.key).collect();
        assert_eq!(keys, ["k4", "k3", "k2"], "newest first, the two oldest forgotten");
        assert_eq!(log.latest(1)[0].key, "k4");
        assert!(log.latest(1)[0].time_ms > 1_700_000_000_000, "stamped with the wall clock");
        assert_eq!(DecisionLog::default().capacity(), DECISION_HISTORY);
    }
}
