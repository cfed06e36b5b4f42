//! Background propagation: one sender task per peer drains that peer's durable outbox.
//!
//! ```text
//!            client write ──commit──► keys + outbox.<peer> marks ──wake──┐
//!                                                                       ▼
//!   ┌────────── sender(peer) ─────────────────────────────────────────────────────┐
//!   │ idle ──work──► read batch (marks + current sets) ──POST /replicate──► peer │
//!   │   ▲                                  │ ok: clear marks still unchanged       │
//!   │   └──────── outbox empty ◄───────────┘ err: backoff (jittered, ≤ 1 s),        │
//!   │                                           cut short when the peer says hello  │
//!   └─────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! States a sender moves through, and what it logs: *idle* (nothing owed; waits for a write),
//! *sending* (one line per delivered batch), *backing off* (one line when the peer goes down,
//! one when it comes back — retries in between are counted, not printed).
//!
//! While backing off, new writes do not wake the sender (that would turn every write into a
//! retry against a dead peer); only the backoff timer, a `hello` from the peer, or a replication
//! request from it (proof it is up) do. Marks are durable, so a sender that is stopped — or a
//! replica that crashes — mid-batch simply ships the batch again later; the receiver's merge is
//! idempotent. After a small batch a sender lingers a moment (`LINGER`, below), so under a
//! trickle of writes a peer commits several keys per fsync. Behind a full batch (1,024 keys: a
//! backlog, a peer that comes back) it ships a second one before the first is answered
//! (`IN_FLIGHT`), so its own reads and the peer's merges overlap; the two never share a key.
//!
//! Size: one loop with every wait a sender makes (idle, linger, backoff, membership, a store that
//! fails), each cut short by a stop, and the line each logs; split, the stop handling would be
//! spread over several places.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;
use tracing::{debug, error, info, warn, Instrument};

use super::progress::{Progress, Recovered, Refusal};
use crate::core::cluster::{Member, ReplicaId};
use crate::core::show::Clocks;
use crate::error::{Error, Result};
use crate::net::peer::{PeerClient, PeerError, PeerTransport, CONNECT_TIMEOUT};
use crate::net::protocol::{RawEntry, ReplicateBatch, MAX_BATCH_KEYS, MAX_REPLICATE_BODY_BYTES};
use crate::node::link::PeerLink;
use crate::storage::on_store;
use crate::storage::store::{Pending, Store};

/// First retry delay after a failure. Doubles per failure up to [`BACKOFF_MAX`].
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest retry delay. Low, so that a returning peer catches up within about a second even if
/// its hello is lost; a dead peer costs one request per second per sender.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Sender batches stop growing past this many bytes of encoded sets.
pub(crate) const BATCH_TARGET_BYTES: usize = MAX_REPLICATE_BODY_BYTES / 4;

/// Why a batch did not ship.
enum ShipError {
    /// No usable answer: the peer is down, unreachable, failing or misconfigured. Back off.
    Unreachable(String),
    /// The peer does not count this replica as the member it claims to be (409 on a peer
    /// route): the two were started with different member lists. Nothing can ship until an
    /// operator fixes the flags; retried every [`MEMBERSHIP_RETRY`].
    Membership(String),
    /// The peer refused this batch's content (400/413): find the key it refuses.
    Refused(String),
}

/// Retry period toward a peer that refuses this replica's membership (until it says hello).
pub(crate) const MEMBERSHIP_RETRY: Duration = Duration::from_secs(10);
/// How long a key that a peer refuses is passed over before it is offered again.
pub(crate) const REFUSED_KEY_RETRY: Duration = Duration::from_secs(300);
/// An idle sender re-reads its outbox this often even without a wake-up (a safety net).
pub const IDLE_POLL: Duration = Duration::from_secs(5);

fn summarise(batch: &[Pending]) -> String {
    const SHOWN: usize = 3;
    let mut parts: Vec<String> =
        batch.iter().take(SHOWN).map(|p| format!("{:?} {}", p.key, Clocks(&p.clocks()))).collect();
    if batch.len() > SHOWN {
        parts.push(format!("… {} more", batch.len() - SHOWN));
    }
    parts.join(", ")
}

/// The sender for one peer. Runs until `stop` turns true.
pub struct Sender<P: PeerTransport = PeerClient> {
    me: ReplicaId,
    peers: P,
    store: Arc<Store>,
    link: Arc<PeerLink>,
}

impl<P: PeerTransport> Sender<P> {
    /// A sender from the replica `peers` speaks for to the link's peer.
    pub fn new(peers: P, store: Arc<Store>, link: Arc<PeerLink>) -> Self {
        Sender { me: peers.from(), peers, store, link }
    }

    async fn next_batch(&self, after: Option<String>, max_keys: usize, skip: HashSet<String>) -> Result<Vec<Pending>> {
        let peer = self.link.member.id;
        on_store(&self.store, move |store| store.pending(peer, after.as_deref(), max_keys, BATCH_TARGET_BYTES, &skip))
            .await
    }

    /// Ships `batch` from a task of its own, so that a second batch can be read and shipped
    /// while the peer merges this one (see [`IN_FLIGHT`]).
    fn start_ship(&self, batch: Vec<Pending>) -> InFlight {
        let batch = Arc::new(batch);
        let (peers, to, from, shipped) = (self.peers.clone(), self.link.member.clone(), self.me, batch.clone());
        let task = tokio::spawn(
            async move {
                let request = ReplicateBatch {
                    from,
                    entries: shipped.iter().map(|p| RawEntry { key: &p.key, versions: &p.set }).collect(),
                };
                match peers.notify(&to, "/replicate", &request, None).await {
                    Ok(()) => Ok(()),
                    // 400/413: something in this batch is refused. 409: the peer does not count us
                    // as the member we claim to be. Anything else: the peer cannot take batches now.
                    Err(e @ PeerError::Refused { .. }) => Err(ShipError::Refused(e.to_string())),
                    Err(e @ PeerError::Membership { .. }) => Err(ShipError::Membership(e.to_string())),
                    Err(PeerError::Unreachable { reason, .. }) => Err(ShipError::Unreachable(reason)),
                    Err(e) => Err(ShipError::Unreachable(e.to_string())),
                }
            }
            .in_current_span(),
        );
        InFlight { batch, task: AbortOnDrop(task) }
    }

    /// Queues the clearing of `batch`'s marks into the store's next group commit; the sender
    /// reads and ships the next batch meanwhile (see [`Acking`]).
    fn start_acknowledge(&self, batch: Arc<Vec<Pending>>) -> Acking {
        let peer = self.link.member.id;
        let delivered: Vec<(String, u64)> = batch.iter().map(|p| (p.key.clone(), p.mark)).collect();
        let (answer, cleared) = tokio::sync::oneshot::channel();
        let done = move |outcome: Result<usize>| {
            let _ = answer.send(outcome);
        };
        crate::storage::lead_if_told(&self.store, self.store.submit_acknowledge(peer, delivered, done));
        Acking { batch, cleared }
    }

    /// Waits for an acknowledgement started by [`Sender::start_acknowledge`] and logs the delivery.
    async fn finish_acknowledge(&self, acking: Acking, progress: &mut Progress, stop: &mut watch::Receiver<bool>) {
        let Acking { batch, cleared } = acking;
        let cleared =
            cleared.await.unwrap_or_else(|_| Err(Error::Storage("the group commit ended without an answer".into())));
        match cleared {
            Ok(cleared) => {
                if let Some(failures) = progress.local_ok() {
                    info!("the store works again after {failures} failure(s)");
                }
                let requeued = batch.len() - cleared;
                info!(
                    "delivered {} key(s): {}{}",
                    batch.len(),
                    summarise(&batch),
                    if requeued > 0 { format!(" ({requeued} changed meanwhile, re-queued)") } else { String::new() }
                )
            }
            Err(e) => {
                // The peer has the batch but the marks stay: it ships again, after a pause (the
                // peer's merge is a no-op then, and commits nothing).
                let (first, delay) = progress.local_failure();
                if first {
                    warn!("delivered but cannot clear marks: {e}; retrying with backoff");
                }
                pause(stop, delay).await;
            }
        }
    }

    /// Drains the outbox until `stop` turns true. The decisions (what to send next, how long to
    /// wait, what to log) are `Progress`'s (sync/progress.rs); this loop does the I/O and the waiting.
    ///
    /// Pipelined: once a batch is delivered, its marks are cleared in the background while the
    /// next batch is read and shipped (its keys are passed over until then), so a round trip to
    /// the peer never waits for this replica's own write transaction. While a backlog drains
    /// (full batches), a second batch is read and shipped while the peer merges the first.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let peer = &self.link.member;
        let (pid, addr) = (peer.id, peer.address());
        let mut progress = Progress::new();
        let mut acking: Option<Acking> = None;
        // Batches shipped and not answered yet, oldest first (at most `IN_FLIGHT`).
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        // When the last batch shipped, if it was small (tokio's clock: paused in tests).
        let mut last_small: Option<tokio::time::Instant> = None;
        debug!("sender started");
        while !*stop.borrow() {
            if in_flight.is_empty() {
                if let Some(left) = last_small.take() {
                    // A trickle of writes: let a few more gather before the next batch, so the
                    // peer commits (and fsyncs) once for several keys instead of once for each.
                    pause(&mut stop, (left + LINGER).saturating_duration_since(tokio::time::Instant::now())).await;
                    if *stop.borrow() {
                        // Stopped while lingering: no further batch.
                        continue;
                    }
                }
            }
            // Room for another batch: always when none is in flight; a second one only behind a
            // full batch (a backlog), so that under a steady load batches stay as large as before.
            let room = match in_flight.back() {
                None => true,
                Some(last) => in_flight.len() < IN_FLIGHT && last.batch.len() >= MAX_BATCH_KEYS,
            };
            if room {
                let mut skip = progress.skipped(Instant::now());
                // Keys on their way or being cleared are passed over: a key is never in two
                // batches at once, and its next version ships after the last one was answered.
                for batch in acking.iter().map(|a| &a.batch).chain(in_flight.iter().map(|f| &f.batch)) {
                    skip.extend(batch.iter().map(|p| p.key.clone()));
                }
                let after = match in_flight.back() {
                    Some(last) => last.batch.last().map(|p| p.key.clone()),
                    None => progress.cursor.clone(),
                };
                match self.next_batch(after, progress.batch_keys, skip).await {
                    Err(e) if in_flight.is_empty() => {
                        let (first, delay) = progress.local_failure();
                        if first {
                            warn!("cannot read outbox: {e}; retrying with backoff");
                        }
                        pause(&mut stop, delay).await;
                        continue;
                    }
                    // A batch is in flight: settle it first and read again after (a read that
                    // fails again is reported then).
                    Err(_) => {}
                    Ok(batch) if batch.is_empty() => {
                        if in_flight.is_empty() {
                            if let Some(a) = acking.take() {
                                // Nothing else to ship: settle the last delivery, then look again.
                                self.finish_acknowledge(a, &mut progress, &mut stop).await;
                                continue;
                            }
                            tokio::select! {
                                _ = self.link.work.notified() => {}
                                _ = tokio::time::sleep(IDLE_POLL) => {}
                                _ = stopped(&mut stop) => {}
                            }
                            continue;
                        }
                    }
                    Ok(batch) => {
                        // Back to the top: another batch if there is room behind this one (the
                        // rule above), else the wait below.
                        in_flight.push_back(self.start_ship(batch));
                        continue;
                    }
                }
            }
            // Wait for the oldest batch's answer (dropped on a stop, its task aborted).
            let Some(InFlight { batch, mut task }) = in_flight.pop_front() else { continue };
            let joined = tokio::select! {
                r = &mut task.0 => r,
                _ = stopped(&mut stop) => break,
            };
            let shipped =
                joined.unwrap_or_else(|e| Err(ShipError::Unreachable(format!("the shipping task ended: {e}"))));
            if let Some(a) = acking.take() {
                self.finish_acknowledge(a, &mut progress, &mut stop).await;
            }
            if shipped.is_err() {
                // Whatever else is in flight is given up (dropping a task aborts it): its keys
                // stay marked and ship again later (the peer's merge is idempotent).
                in_flight.clear();
            }
            match shipped {
                Ok(()) => {
                    metrics::counter!("vkv_replicated_keys_total", "peer" => pid.to_string())
                        .increment(batch.len() as u64);
                    self.link.set_membership_refusal(None);
                    match progress.delivered(&batch, Instant::now()) {
                        Recovered::Membership => {
                            info!("replica {pid} ({addr}) accepts this replica's membership again")
                        }
                        Recovered::Reachable { after, failures } => info!(
                            "replica {pid} ({addr}) is reachable again after {:.1}s and {failures} failed \
                             attempt(s); delivering queued keys",
                            after.as_secs_f64()
                        ),
                        Recovered::No => {}
                    }
                    if batch.len() < LINGER_BELOW_KEYS {
                        last_small = Some(tokio::time::Instant::now());
                    }
                    acking = Some(self.start_acknowledge(batch));
                }
                Err(ShipError::Refused(reason)) => match progress.refused(&batch, Instant::now()) {
                    Refusal::Halve { batch_keys } => warn!(
                        "replica {pid} refused a batch of {} keys ({reason}); retrying in batches of \
                         {batch_keys} to find the key it refuses",
                        batch.len()
                    ),
                    Refusal::SetAside { key } => error!(
                        "replica {pid} refuses key {key:?}: {reason}; it stays queued and is offered again \
                         in {REFUSED_KEY_RETRY:?}, other keys go on"
                    ),
                },
                Err(ShipError::Membership(reason)) => {
                    if progress.membership_refused() {
                        error!(
                            "replica {pid} ({addr}): MEMBERSHIP MISMATCH, nothing is shipped to it: {reason}; \
                             retrying every {MEMBERSHIP_RETRY:?}"
                        );
                    }
                    self.link.set_membership_refusal(Some(reason));
                    tokio::select! {
                        _ = tokio::time::sleep(MEMBERSHIP_RETRY) => {}
                        _ = self.link.peer_up.notified() => {}
                        _ = stopped(&mut stop) => {}
                    }
                }
                Err(ShipError::Unreachable(reason)) => {
                    metrics::counter!("vkv_replication_failures_total", "peer" => pid.to_string()).increment(1);
                    let jitter = rand::rng().random_range(0.0..=1.0);
                    let (first, delay) = progress.unreachable(Instant::now(), jitter);
                    if first {
                        let depth = on_store(&self.store, move |store| store.outbox_depth(pid))
                            .await
                            .unwrap_or(batch.len() as u64);
                        warn!(
                            "replica {pid} ({addr}) unreachable: {reason}; {depth} key(s) queued, retrying with \
                             backoff (≤ {BACKOFF_MAX:?})"
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.link.peer_up.notified() => {
                            debug!("peer said it is up, retrying now");
                            progress.peer_said_up();
                        }
                        _ = stopped(&mut stop) => {}
                    }
                }
            }
        }
        // Unanswered batches are given up (their tasks aborted); they stay marked and ship again
        // after a restart.
        in_flight.clear();
        if let Some(a) = acking.take() {
            // Clear what was delivered before stopping (a mark left behind would only re-ship).
            let _ = a.cleared.await;
        }
        debug!("sender stopped");
    }
}

/// A batch on its way to the peer, and the task shipping it.
struct InFlight {
    batch: Arc<Vec<Pending>>,
    task: AbortOnDrop<std::result::Result<(), ShipError>>,
}

/// A task that is aborted when its handle is dropped: a sender that is stopped or dropped (the
/// server's shutdown aborts its tasks after a grace period) leaves no shipping behind.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Most batches a sender has in flight to its peer. Two while a backlog drains (behind a batch
/// of [`MAX_BATCH_KEYS`] keys: a replica that comes back, say): this replica reads and ships
/// the next batch while the peer merges the last, and the peer decodes one while it commits the
/// other, so the two replicas' work overlaps rather than taking turns. One otherwise: a steady
/// load's batches stay whole.
pub(crate) const IN_FLIGHT: usize = 2;

/// A delivered batch whose marks are being cleared in the background.
struct Acking {
    batch: Arc<Vec<Pending>>,
    cleared: tokio::sync::oneshot::Receiver<Result<usize>>,
}

/// After shipping a batch of fewer than [`LINGER_BELOW_KEYS`] keys, a sender waits this long
/// from the peer's answer (1–2 ms with tokio's 1 ms timer ticks) before it reads the next batch:
/// under a trickle of writes each batch then carries a few keys, not one, and the peers fsync a
/// fraction as often. Under load the batches are large and nothing waits.
pub(crate) const LINGER: Duration = Duration::from_millis(1);
/// See [`LINGER`].
pub(crate) const LINGER_BELOW_KEYS: usize = 8;

/// Sleeps `delay`, cut short by `stop`.
async fn pause(stop: &mut watch::Receiver<bool>, delay: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = stopped(stop) => {}
    }
}

/// Returns once `stop` is true (or its sender is gone), at once if it already is. Every wait of
/// the sender ends on this, not on `changed()`: a change one wait has seen would not wake the
/// next one, which then ran its full length (up to 10 s past the server's shutdown grace).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Longest pause between two attempts while the local store fails (a full disk, say).
pub(crate) const LOCAL_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Tells every peer this replica has (re)started, so their senders skip their backoff.
/// Best effort: a peer that is down will announce itself when it comes back. A peer that
/// refuses this replica's membership is logged as an error.
pub(crate) async fn announce(peers: Vec<Member>, client: PeerClient) {
    let me = client.auth().from();
    let mut calls = tokio::task::JoinSet::new();
    for peer in peers {
        let client = client.clone();
        calls.spawn(
            async move {
                let body = crate::net::protocol::HelloRequest { from: me };
                match client.notify(&peer, "/peer/hello", &body, Some(CONNECT_TIMEOUT)).await {
                    Ok(()) => (peer.id, true),
                    Err(PeerError::Membership { message, .. }) => {
                        error!("replica {} ({}): MEMBERSHIP MISMATCH: {message}", peer.id, peer.address());
                        (peer.id, false)
                    }
                    Err(_) => (peer.id, false),
                }
            }
            .in_current_span(),
        );
    }
    let mut reached = Vec::new();
    while let Some(joined) = calls.join_next().await {
        if let Ok((id, true)) = joined {
            reached.push(id);
        }
    }
    reached.sort();
    info!("announced this replica; peers that answered: {reached:?}");
}

#[cfg(test)]
#[path = "sender_tests.rs"]
mod tests;
