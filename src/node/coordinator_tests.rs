//! Tests of the coordinator's decisions against fake peers (no HTTP): acks counted up to `w`, an unmet
//! quorum that still says the write is durable, and read repair of this replica and of the
//! peers that were behind.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::*;
use crate::core::versions::Version;

/// What the fake peers were pushed: (peer, versions).
type Pushed = Arc<Mutex<Vec<(ReplicaId, Vec<Version>)>>>;

/// Peers 2 and 3: each either holds `sets[id]` (answers reads, acks pushes) or is down.
#[derive(Clone, Default)]
struct FakePeers {
    down: Vec<ReplicaId>,
    sets: HashMap<ReplicaId, Vec<Version>>,
    pushed: Pushed,
}

impl PeerTransport for FakePeers {
    fn from(&self) -> ReplicaId {
        1
    }

    async fn call<Req: Serialize + Sync, Resp: DeserializeOwned>(
        &self,
        peer: &Member,
        path: &str,
        body: &Req,
        _: Option<Duration>,
    ) -> std::result::Result<Resp, PeerError> {
        if self.down.contains(&peer.id) {
            return Err(PeerError::Unreachable { path: path.into(), reason: "down".into() });
        }
        let answer = match path {
            "/replicate" => {
                let request: ReplicateRequest = serde_json::from_value(serde_json::to_value(body).unwrap()).unwrap();
                let versions = request.entries[0].versions.clone();
                self.pushed.lock().unwrap().push((peer.id, versions));
                serde_json::json!({"keys": 1, "changed": 1})
            }
            "/peer/read" => serde_json::json!({"versions": self.sets.get(&peer.id).cloned().unwrap_or_default()}),
            other => panic!("unexpected {other}"),
        };
        Ok(serde_json::from_value(answer).unwrap())
    }

    async fn notify<Req: Serialize + Sync>(
        &self,
        peer: &Member,
        path: &str,
        body: &Req,
        timeout: Option<Duration>,
    ) -> std::result::Result<(), PeerError> {
        self.call::<_, serde_json::Value>(peer, path, body, timeout).await.map(drop)
    }
}

/// Replica 1 of three; its peers are the fakes.
fn replica(dir: &std::path::Path) -> Arc<Replica> {
    crate::node::replica::test_replica(dir, 7000)
}

fn vc(c: &[u64]) -> VectorClock {
    VectorClock::from(c.to_vec())
}

#[tokio::test]
async fn acks_are_counted_up_to_w_and_an_unmet_quorum_says_the_write_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let replica = replica(dir.path());
    let clock = replica.write("k".into(), Some("v".into()), None).await.unwrap();
    let written = replica.read("k".into()).await.unwrap();
    let peers = FakePeers::default();
    assert_eq!(write_quorum_via(&replica, &peers, "k", &written, &clock, 3).await.unwrap(), 3);
    assert_eq!(write_quorum_via(&replica, &peers, "k", &written, &clock, 1).await.unwrap(), 1, "w=1: nothing sent");
    let pushed = peers.pushed.lock().unwrap().clone();
    assert_eq!(pushed.len(), 2, "w=3 pushed to both peers, w=1 to none");
    assert!(pushed.iter().all(|(_, versions)| versions == &vec![Version::value("v", vc(&[1, 0, 0]))]));

    let one_down = FakePeers { down: vec![3], ..FakePeers::default() };
    assert_eq!(write_quorum_via(&replica, &one_down, "k", &written, &clock, 2).await.unwrap(), 2);
    match write_quorum_via(&replica, &one_down, "k", &written, &clock, 3).await {
        Err(Error::QuorumNotMet { clock: c, message }) => {
            assert_eq!(c, clock);
            assert!(message.contains("only 2 of 3"), "{message}");
        }
        other => panic!("expected QuorumNotMet, got {other:?}"),
    }
    assert_eq!(replica.read("k".into()).await.unwrap().versions()[0].value.as_deref(), Some("v"));
}

#[tokio::test]
async fn a_quorum_read_merges_and_repairs_whoever_was_behind() {
    let dir = tempfile::tempdir().unwrap();
    let replica = replica(dir.path());
    replica.write("k".into(), Some("mine".into()), None).await.unwrap(); // [1, 0, 0]
    let theirs = Version::value("theirs", vc(&[0, 1, 0]));
    let peers = FakePeers { sets: HashMap::from([(2, vec![theirs.clone()])]), ..FakePeers::default() };
    let merged = read_quorum_via(&replica, &peers, "k", 3).await.unwrap();
    assert_eq!(merged.len(), 2, "concurrent versions: both kept");
    assert_eq!(replica.read("k".into()).await.unwrap(), merged, "this replica repaired at once");
    // Peers behind get the merged set in the background.
    for _ in 0..100 {
        if peers.pushed.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut repaired: Vec<ReplicaId> = peers.pushed.lock().unwrap().iter().map(|(id, _)| *id).collect();
    repaired.sort();
    assert_eq!(repaired, vec![2, 3]);
    let down = FakePeers { down: vec![2, 3], ..FakePeers::default() };
    assert!(matches!(read_quorum_via(&replica, &down, "k", 2).await, Err(Error::Unavailable(_))));
    assert_eq!(read_quorum_via(&replica, &down, "k", 1).await.unwrap(), merged, "r=1 reads here only");
}
