//! Tests of the sender's decisions against a fake peer (no HTTP): it backs off while the peer is
//! unreachable and delivers once it is up, sets aside a key the peer refuses while the others
//! ship, and records a membership refusal until the peer accepts it again; behind a full batch
//! it ships a second one, and either failing loses no key.
//!
//! Size: one fake peer serves every test of the sender's loop (its waits, its batches in flight,
//! its failures); split, each part would need its own copy of it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Mutex;

use super::*;
use crate::core::clock::VectorClock;
use crate::core::cluster::Layout;
use crate::core::versions::{SiblingSet, Version};
use crate::net::protocol::{ReplicateEntry, ReplicateRequest};

/// A peer that is down for its first `down` requests, refuses any batch holding `refuse`
/// (400), refuses this replica's membership while `mismatch` is set (409), and records the
/// keys it accepts.
#[derive(Clone, Default)]
struct FakePeer {
    down: Arc<AtomicUsize>,
    refuse: Option<&'static str>,
    mismatch: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    received: Arc<Mutex<BTreeSet<String>>>,
    /// Every entry accepted, as the receiver decoded it.
    entries: Arc<Mutex<Vec<ReplicateEntry>>>,
    /// When each batch accepted arrived (tokio's clock) and how many keys it held.
    batches: Arc<Mutex<Vec<(tokio::time::Instant, usize)>>>,
    /// Requests being answered now, the most at once, and whether a key was in two at once.
    active: Arc<AtomicUsize>,
    most_active: Arc<AtomicUsize>,
    keys_in_flight: Arc<Mutex<Vec<String>>>,
    key_in_two_at_once: Arc<AtomicBool>,
    /// The first request is answered only once a second one has arrived, or after this long
    /// (real time).
    hold_first: Option<Duration>,
    /// The request with this index (from 0) fails as unreachable.
    fail_request: Option<usize>,
}

impl PeerTransport for FakePeer {
    fn from(&self) -> ReplicaId {
        1
    }

    async fn call<Req: serde::Serialize + Sync, Resp: serde::de::DeserializeOwned>(
        &self,
        _: &Member,
        path: &str,
        _: &Req,
        _: Option<Duration>,
    ) -> std::result::Result<Resp, PeerError> {
        Err(PeerError::Unreachable { path: path.into(), reason: "the fake answers notify only".into() })
    }

    async fn notify<Req: serde::Serialize + Sync>(
        &self,
        _: &Member,
        path: &str,
        body: &Req,
        _: Option<Duration>,
    ) -> std::result::Result<(), PeerError> {
        let index = self.requests.fetch_add(1, Ordering::SeqCst);
        let active = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_active.fetch_max(active, Ordering::SeqCst);
        let request: ReplicateRequest = serde_json::from_value(serde_json::to_value(body).unwrap()).unwrap();
        let keys: Vec<String> = request.entries.iter().map(|e| e.key.clone()).collect();
        {
            let mut in_flight = self.keys_in_flight.lock().unwrap();
            if keys.iter().any(|k| in_flight.contains(k)) {
                self.key_in_two_at_once.store(true, Ordering::SeqCst);
            }
            in_flight.extend(keys.iter().cloned());
        }
        if let (Some(hold), 0) = (self.hold_first, index) {
            let deadline = std::time::Instant::now() + hold;
            while self.requests.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let answer = if self.fail_request == Some(index) {
            Err(PeerError::Unreachable { path: path.into(), reason: "connection reset".into() })
        } else {
            self.answer(path, request)
        };
        self.keys_in_flight.lock().unwrap().retain(|k| !keys.contains(k));
        self.active.fetch_sub(1, Ordering::SeqCst);
        answer
    }
}

impl FakePeer {
    fn answer(&self, path: &str, request: ReplicateRequest) -> std::result::Result<(), PeerError> {
        let path = path.to_string();
        if self.down.load(Ordering::SeqCst) > 0 {
            self.down.fetch_sub(1, Ordering::SeqCst);
            return Err(PeerError::Unreachable { path, reason: "connection refused".into() });
        }
        if self.mismatch.load(Ordering::SeqCst) {
            return Err(PeerError::Membership { path, message: "MEMBERSHIP MISMATCH".into() });
        }
        if let Some(bad) = self.refuse.filter(|bad| request.entries.iter().any(|e| e.key == *bad)) {
            return Err(PeerError::Refused { path, status: 400, message: format!("{bad} refused") });
        }
        self.batches.lock().unwrap().push((tokio::time::Instant::now(), request.entries.len()));
        self.received.lock().unwrap().extend(request.entries.iter().map(|e| e.key.clone()));
        self.entries.lock().unwrap().extend(request.entries);
        Ok(())
    }
}

use std::sync::atomic::Ordering;

struct Fixture {
    store: Arc<Store>,
    link: Arc<PeerLink>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn start(peer: FakePeer, keys: &[&str]) -> Fixture {
    start_with(peer, keys, "v")
}

/// Writes each of `keys` with `value`.
fn write_keys<K: AsRef<str>>(store: &Store, keys: &[K], value: &str) {
    for key in keys {
        store
            .write_local(key.as_ref(), |cur| {
                let clock = cur.client_write(2, None, 0).unwrap();
                Ok((SiblingSet::single(Version::value(value, clock)), ()))
            })
            .unwrap();
    }
}

/// A sender to replica 2 of a store holding `keys`, each with `value`.
fn start_with(peer: FakePeer, keys: &[&str], value: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::from_flags("127.0.0.1", 1, 2, &["127.0.0.1".into()], &[2]).unwrap();
    let store = Arc::new(Store::open(dir.path(), &layout).unwrap());
    write_keys(&store, keys, value);
    let link = Arc::new(PeerLink::new(layout.member(2).unwrap().clone()));
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(Sender::new(peer, store.clone(), link.clone()).run(stop_rx));
    Fixture { store, link, stop, task, _dir: dir }
}

/// Waits (in paused time, so backoffs pass at once) until `done`, at most 20 virtual minutes.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..120_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

fn depth(store: &Store) -> u64 {
    store.outbox_depth(2).unwrap()
}

#[tokio::test(start_paused = true)]
async fn backs_off_while_the_peer_is_down_then_delivers_everything() {
    let peer = FakePeer { down: Arc::new(AtomicUsize::new(5)), ..FakePeer::default() };
    let started = tokio::time::Instant::now();
    let f = start(peer.clone(), &["a", "b", "c"]);
    until("every key delivered", || peer.received.lock().unwrap().len() == 3).await;
    // At least half of each delay, 50 ms doubling: 25 + 50 + 100 + 200 + 400 ms.
    assert!(started.elapsed() >= Duration::from_millis(775), "retried after {:?}", started.elapsed());
    until("marks cleared", || depth(&f.store) == 0).await;
    // 5 failures, then one batch: no tight loop while the peer was down.
    assert_eq!(peer.requests.load(Ordering::SeqCst), 6);
    f.stop.send(true).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_refused_key_is_set_aside_while_the_others_ship() {
    let peer = FakePeer { refuse: Some("bad"), ..FakePeer::default() };
    let f = start(peer.clone(), &["a", "bad", "c", "d"]);
    until("the good keys delivered", || peer.received.lock().unwrap().len() == 3).await;
    until("only the refused key left queued", || depth(&f.store) == 1).await;
    let queued = f.store.pending(2, None, 10, usize::MAX, &Default::default()).unwrap();
    assert_eq!(queued[0].key, "bad");
    f.stop.send(true).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_membership_refusal_is_recorded_until_the_peer_accepts() {
    let peer = FakePeer { mismatch: Arc::new(AtomicBool::new(true)), ..FakePeer::default() };
    let f = start(peer.clone(), &["a"]);
    until("the refusal recorded", || f.link.membership_refusal().is_some()).await;
    let before = peer.requests.load(Ordering::SeqCst);
    tokio::time::sleep(MEMBERSHIP_RETRY * 3).await;
    let retries = peer.requests.load(Ordering::SeqCst) - before;
    assert!(retries <= 4, "{retries} retries in three membership periods");
    assert_eq!(depth(&f.store), 1, "nothing shipped");
    peer.mismatch.store(false, Ordering::SeqCst);
    f.link.peer_is_up();
    until("delivered once the peer accepts", || depth(&f.store) == 0).await;
    assert_eq!(f.link.membership_refusal(), None);
    f.stop.send(true).unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_stored_sets_reach_the_peer_as_the_versions_they_hold() {
    let peer = FakePeer::default();
    let f = start(peer.clone(), &["a", "b"]);
    // A concurrent version from replica 2 makes "b" a two-sibling set; a value with quotes,
    // a backslash and a non-ASCII character must survive the raw pass-through too.
    let concurrent = Version::value("from \"2\" \\ é", VectorClock::from(vec![0, 1]));
    f.store
        .write_local("b", move |current| {
            let mut set = current.clone();
            set.merge(concurrent);
            Ok((set, ()))
        })
        .unwrap();
    f.link.wake();
    until("both keys delivered with b's two siblings", || {
        let entries = peer.entries.lock().unwrap();
        entries.iter().any(|e| e.key == "b" && e.versions.len() == 2) && entries.iter().any(|e| e.key == "a")
    })
    .await;
    let entries = peer.entries.lock().unwrap();
    for key in ["a", "b"] {
        let last = entries.iter().rev().find(|e| e.key == key).unwrap();
        assert_eq!(last.versions, f.store.get(key).unwrap().versions(), "key {key}");
    }
    f.stop.send(true).unwrap();
}

/// `n` keys named so that their order is their number.
fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i:05}")).collect()
}

/// Waits in real time (at most a minute) until `done`.
async fn within_a_minute(what: &str, done: impl FnMut() -> bool) {
    if tokio::time::timeout(Duration::from_secs(60), until(what, done)).await.is_err() {
        panic!("not within a minute: {what}");
    }
}

/// In real time: the fake peer holds the first batch until a second one arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_ships_two_batches_at_once_and_no_key_in_both() {
    let peer = FakePeer { hold_first: Some(Duration::from_secs(10)), ..FakePeer::default() };
    let keys = numbered(2 * MAX_BATCH_KEYS + 300);
    let f = start(peer.clone(), &keys.iter().map(String::as_str).collect::<Vec<_>>());
    within_a_minute("every key delivered", || peer.received.lock().unwrap().len() == keys.len()).await;
    within_a_minute("marks cleared", || depth(&f.store) == 0).await;
    assert_eq!(peer.most_active.load(Ordering::SeqCst), 2, "batches in flight at once");
    assert!(!peer.key_in_two_at_once.load(Ordering::SeqCst), "a key was in two batches in flight at once");
    assert_eq!(peer.requests.load(Ordering::SeqCst), 3, "each key shipped once");
    f.stop.send(true).unwrap();
}

/// A batch short of 1,024 keys goes alone, even with more owed (here batches of large values,
/// cut at the byte target): a steady load's batches stay whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_batch_short_of_full_nothing_else_is_in_flight() {
    let peer = FakePeer { hold_first: Some(Duration::from_millis(500)), ..FakePeer::default() };
    let keys = numbered(36);
    let value = "v".repeat(1 << 20);
    let f = start_with(peer.clone(), &keys.iter().map(String::as_str).collect::<Vec<_>>(), &value);
    within_a_minute("every key delivered", || peer.received.lock().unwrap().len() == keys.len()).await;
    let batches = peer.batches.lock().unwrap().clone();
    assert!(batches.len() >= 3, "batches cut at the byte target: {batches:?}");
    assert_eq!(peer.most_active.load(Ordering::SeqCst), 1, "a second batch went out behind a short one");
    f.stop.send(true).unwrap();
}

/// Either of two batches in flight fails: what it held ships again, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_with_two_batches_in_flight_loses_no_key() {
    for failing in [0, 1] {
        let peer =
            FakePeer { hold_first: Some(Duration::from_secs(10)), fail_request: Some(failing), ..FakePeer::default() };
        let keys = numbered(2 * MAX_BATCH_KEYS + 300);
        let f = start(peer.clone(), &keys.iter().map(String::as_str).collect::<Vec<_>>());
        within_a_minute("every key delivered", || peer.received.lock().unwrap().len() == keys.len()).await;
        within_a_minute("marks cleared", || depth(&f.store) == 0).await;
        assert_eq!(peer.most_active.load(Ordering::SeqCst), 2, "request {failing} failing");
        assert!(peer.requests.load(Ordering::SeqCst) > 3, "the failed batch shipped again");
        f.stop.send(true).unwrap();
        f.task.await.unwrap();
    }
}

// The decisions alone (`Progress`), step by step.

/// In real time, with the writes from a thread of their own: tokio's timer has 1 ms ticks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_trickle_of_writes_a_sender_lingers_after_a_small_batch() {
    let peer = FakePeer::default();
    let f = start(peer.clone(), &["k0"]);
    until("the first key delivered", || peer.received.lock().unwrap().len() == 1).await;
    // A write every 200 µs or so (each its own commit), from a thread of its own (tokio's timer
    // has 1 ms ticks): without the linger each would ship as soon as written.
    let (store, link) = (f.store.clone(), f.link.clone());
    tokio::task::spawn_blocking(move || {
        for i in 1..=20 {
            store
                .write_local(&format!("k{i}"), |cur| {
                    let clock = cur.client_write(2, None, 0).unwrap();
                    Ok((SiblingSet::single(Version::value("v", clock)), ()))
                })
                .unwrap();
            link.wake();
            std::thread::sleep(Duration::from_micros(200));
        }
    })
    .await
    .unwrap();
    until("every key delivered", || peer.received.lock().unwrap().len() == 21).await;
    let batches = peer.batches.lock().unwrap().clone();
    for pair in batches.windows(2) {
        let ((first, keys), (next, _)) = (pair[0], pair[1]);
        if keys < LINGER_BELOW_KEYS {
            assert!(
                next - first >= LINGER,
                "a batch of {keys} key(s) was followed after {:?}: {batches:?}",
                next - first
            );
        }
    }
    f.stop.send(true).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_the_linger_ends_the_sender_at_once() {
    let peer = FakePeer::default();
    let f = start(peer.clone(), &["k0"]);
    // Without advancing the clock: the sender ships k0 and goes straight into its linger.
    while peer.received.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // A key queued, and a peer that would make a sender that went on wait 10 s.
    f.store
        .write_local("k1", |cur| {
            let clock = cur.client_write(2, None, 0).unwrap();
            Ok((SiblingSet::single(Version::value("v", clock)), ()))
        })
        .unwrap();
    peer.mismatch.store(true, Ordering::SeqCst);
    let stopped = tokio::time::Instant::now();
    f.stop.send(true).unwrap();
    f.task.await.unwrap();
    assert!(stopped.elapsed() < MEMBERSHIP_RETRY, "the sender went on for {:?} after the stop", stopped.elapsed());
    assert!(!peer.received.lock().unwrap().contains("k1"), "nothing ships after the stop");
}

#[tokio::test(start_paused = true)]
async fn a_stop_one_wait_has_seen_still_ends_every_later_wait_at_once() {
    let (stop, mut stop_rx) = watch::channel(false);
    stop.send(true).unwrap();
    // The first wait sees the stop (say, the pause after a failed acknowledgement)...
    pause(&mut stop_rx, LOCAL_BACKOFF_MAX).await;
    // ...and the sender's next waits (a backoff, a membership retry) must not run their length.
    let started = tokio::time::Instant::now();
    let later = async {
        pause(&mut stop_rx, MEMBERSHIP_RETRY).await;
        stopped(&mut stop_rx).await;
    };
    assert!(tokio::time::timeout(Duration::from_secs(3600), later).await.is_ok(), "a later wait never ended");
    assert_eq!(started.elapsed(), Duration::ZERO, "a later wait ran on after the stop");
}

fn pending(keys: &[&str]) -> Vec<Pending> {
    keys.iter()
        .map(|k| Pending {
            key: k.to_string(),
            mark: 1,
            set: serde_json::value::RawValue::from_string("[]".into()).unwrap(),
        })
        .collect()
}

#[test]
fn backoff_doubles_to_its_cap_with_jitter_and_resets_on_delivery() {
    let mut p = Progress::new();
    let t0 = Instant::now();
    let (first, d) = p.unreachable(t0, 0.0);
    assert!(first, "the first failure is logged");
    assert_eq!(d, BACKOFF_MIN / 2, "no jitter: half the backoff");
    let (first, d) = p.unreachable(t0, 1.0);
    assert!(!first, "later failures are counted, not logged");
    assert_eq!(d, BACKOFF_MIN * 2, "full jitter: the whole (doubled) backoff");
    for _ in 0..20 {
        let (_, d) = p.unreachable(t0, 1.0);
        assert!(d <= BACKOFF_MAX);
    }
    assert_eq!(p.backoff, BACKOFF_MAX);
    match p.delivered(&pending(&["k"]), t0 + Duration::from_secs(3)) {
        Recovered::Reachable { after, failures } => {
            assert_eq!((after, failures), (Duration::from_secs(3), 22));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.backoff, BACKOFF_MIN);
    assert_eq!(p.cursor.as_deref(), Some("k"), "the next batch starts after the last key shipped");
    assert_eq!(p.delivered(&pending(&["m"]), t0), Recovered::No);
}

#[test]
fn a_refused_batch_is_halved_until_the_refused_key_is_set_aside_for_a_while() {
    let mut p = Progress::new();
    let t0 = Instant::now();
    assert_eq!(p.refused(&pending(&["a", "b", "c", "d"]), t0), Refusal::Halve { batch_keys: 2 });
    assert_eq!(p.batch_keys, 2);
    assert_eq!(p.refused(&pending(&["a", "b"]), t0), Refusal::Halve { batch_keys: 1 });
    assert_eq!(p.refused(&pending(&["b"]), t0), Refusal::SetAside { key: "b".into() });
    assert_eq!(p.skipped(t0 + Duration::from_secs(1)), ["b".to_string()].into());
    assert!(p.skipped(t0 + REFUSED_KEY_RETRY + Duration::from_secs(1)).is_empty(), "offered again later");
    p.delivered(&pending(&["a"]), t0);
    assert_eq!(p.batch_keys, 2, "batches grow back after a delivery");
}

#[test]
fn membership_refusals_and_local_failures_are_logged_once_per_episode() {
    let mut p = Progress::new();
    assert!(p.membership_refused());
    assert!(!p.membership_refused());
    assert_eq!(p.delivered(&pending(&["k"]), Instant::now()), Recovered::Membership);
    assert!(p.membership_refused(), "a new episode is logged again");
    let delays: Vec<Duration> = (0..8).map(|_| p.local_failure().1).collect();
    assert_eq!(delays[0], BACKOFF_MIN * 2);
    assert!(delays.windows(2).all(|w| w[1] >= w[0]) && *delays.last().unwrap() <= LOCAL_BACKOFF_MAX);
    assert_eq!(p.local_ok(), Some(8));
    assert_eq!(p.local_ok(), None);
    assert!(p.local_failure().0, "the first failure after a success is logged");
}
