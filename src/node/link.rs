//! The signals between a replica and the sender toward one peer: "new keys were queued" (a
//! write woke it), "the peer is up" (its hello, or a batch from it), and the peer's last refusal
//! of this replica's membership (for `/status`).

use tokio::sync::Notify;

use crate::core::cluster::Member;

/// The signals one sender listens to. Shared by the sender and the replica that wakes it.
pub struct PeerLink {
    /// The peer this link ships to.
    pub member: Member,
    pub(crate) work: Notify,
    pub(crate) peer_up: Notify,
    membership: std::sync::Mutex<Option<String>>,
}

impl PeerLink {
    /// A link to `member`.
    pub fn new(member: Member) -> Self {
        PeerLink { member, work: Notify::new(), peer_up: Notify::new(), membership: Default::default() }
    }

    /// New keys were queued for this peer.
    pub fn wake(&self) {
        self.work.notify_one();
    }

    /// Why the peer last refused this replica's membership (`None` once it accepts a batch).
    pub fn membership_refusal(&self) -> Option<String> {
        self.membership.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_membership_refusal(&self, refusal: Option<String>) {
        *self.membership.lock().unwrap_or_else(|e| e.into_inner()) = refusal;
    }

    /// The peer showed it is up (hello or replication from it): retry now, skipping backoff.
    pub(crate) fn peer_is_up(&self) {
        self.peer_up.notify_one();
        self.work.notify_one();
    }
}
