//! One sender against a fake peer (a tiny axum server in the test): how it copes with a peer
//! that refuses some keys, and with marks nobody woke it for.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

use vkv::auth::{check_body, check_head, ClusterKey, PeerAuth, SIGNATURE_HEADER};
use vkv::clock::VectorClock;
use vkv::cluster::Layout;
use vkv::peer::PeerClient;
use vkv::protocol::ReplicateRequest;
use vkv::replica::PeerLink;
use vkv::sender::Sender;
use vkv::store::Store;
use vkv::versions::{SiblingSet, Version};

const KEY: &str = "sender-test-cluster-key";

/// A fake peer that checks the cluster signature (401 without it), refuses (400) any batch
/// holding `refuse`, and records the keys it accepts.
async fn fake_peer(refuse: &'static str) -> (u16, Arc<Mutex<BTreeSet<String>>>) {
    let received = Arc::new(Mutex::new(BTreeSet::new()));
    let seen = received.clone();
    let app = Router::new().route(
        "/replicate",
        post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                let key = ClusterKey::new(KEY).unwrap();
                let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
                let head = check_head(Some(&key), "POST", "/replicate", Some(body.len() as u64), get);
                let signed = head.is_ok_and(|h| check_body(&key, &h, &body, get(SIGNATURE_HEADER).unwrap_or("")));
                if !signed {
                    return (StatusCode::UNAUTHORIZED, Json(json!({"error": "unsigned"})));
                }
                let req: ReplicateRequest = serde_json::from_slice(&body).unwrap();
                if req.entries.iter().any(|e| e.key == refuse) {
                    return (StatusCode::BAD_REQUEST, Json(json!({"error": format!("{refuse} refused")})));
                }
                let n = req.entries.len();
                seen.lock().unwrap().extend(req.entries.into_iter().map(|e| e.key));
                (StatusCode::OK, Json(json!({"keys": n, "changed": n})))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, received)
}

struct Fixture {
    store: Arc<Store>,
    link: Arc<PeerLink>,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// Replica 1 (127.0.0.1:1, never listened on) with the fake peer as replica 2; sender running.
fn start_sender(peer_port: u16) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::from_flags("127.0.0.1", 1, 2, &["127.0.0.1".into()], &[peer_port]).unwrap();
    let store = Arc::new(Store::open(dir.path(), &layout).unwrap());
    let link = Arc::new(PeerLink::new(layout.member(2).unwrap().clone()));
    let (stop, stop_rx) = watch::channel(false);
    let auth = PeerAuth::new(&layout, Some(ClusterKey::new(KEY).unwrap()));
    tokio::spawn(Sender::new(PeerClient::new(None, auth), store.clone(), link.clone()).run(stop_rx));
    Fixture { store, link, stop, _dir: dir }
}

fn write(store: &Store, key: &str) {
    store
        .write_local(key, |cur| {
            let clock = cur.client_write(2, None, 0).unwrap();
            Ok((SiblingSet::single(Version::value("v", clock.clone())), clock))
        })
        .map(|_: VectorClock| ())
        .unwrap();
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A peer refuses one key of a 41-key backlog. The sender narrows its batches down to that key,
/// sets it aside (still queued), and delivers the other 40.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_does_not_block_the_others() {
    let (port, received) = fake_peer("poison").await;
    let f = start_sender(port);
    for i in 0..40 {
        write(&f.store, &format!("k{i:02}"));
    }
    write(&f.store, "poison");
    f.link.wake();
    wait_until("40 keys delivered", Duration::from_secs(10), || received.lock().unwrap().len() == 40).await;
    wait_until("only the refused key left queued", Duration::from_secs(5), || f.store.outbox_depth(2).unwrap() == 1)
        .await;
    assert!(!received.lock().unwrap().contains("poison"));
    let _ = f.stop.send(true);
}

/// A mark committed without a wake-up (as when a client's request is dropped mid-write) is still
/// shipped: an idle sender re-reads its outbox every IDLE_POLL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sender_finds_marks_nobody_announced() {
    let (port, received) = fake_peer("none").await;
    let f = start_sender(port);
    tokio::time::sleep(Duration::from_millis(200)).await; // the sender is idle now
    write(&f.store, "quiet"); // no wake
    let limit = vkv::sender::IDLE_POLL + Duration::from_secs(3);
    wait_until("the unannounced key to ship", limit, || received.lock().unwrap().contains("quiet")).await;
    let _ = f.stop.send(true);
}
