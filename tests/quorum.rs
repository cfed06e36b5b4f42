//! Per-request consistency on five real replicas: `PUT ?w=K`, `GET ?r=K`, read repair.
//! Anti-entropy is off here (`--anti-entropy-secs 0`) so that only the mechanism under test
//! can move data.

use std::time::{Duration, Instant};

use vkv::client::ClientError;
use vkv::store::Store;
use vkv_testkit::{free_ports, LocalCluster, Stop};

const N: usize = 5;

async fn start() -> (LocalCluster, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::new(env!("CARGO_BIN_EXE_vkv-server"), free_ports(N).unwrap(), root.path())
        .with_args(["--anti-entropy-secs", "0"]);
    cluster.start_all().unwrap();
    cluster.wait_all_healthy(Duration::from_secs(10)).await.unwrap();
    (cluster, root)
}

async fn value_at(cluster: &LocalCluster, id: usize, key: &str) -> Option<String> {
    cluster.client(id).get(key).await.unwrap().and_then(|r| r.versions[0].value.clone())
}

/// w=N with a replica down: 503 saying the write is durable here and queued; it is readable at
/// the coordinator at once and reaches the down replica after it restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_quorum_fails_clearly_with_a_replica_down_and_the_write_still_arrives() {
    let (mut cluster, _root) = start().await;
    let r1 = cluster.client(1);
    let ok = r1.put_quorum("all", "five", None, Some(N)).await.unwrap();
    assert_eq!(ok.acks, Some(N), "w=N with everyone up");
    for id in 1..=N {
        assert_eq!(value_at(&cluster, id, "all").await.as_deref(), Some("five"), "replica {id} holds it already");
    }

    cluster.stop(4, Stop::Crash).unwrap();
    let err = r1.put_quorum("k", "v", None, Some(N)).await.unwrap_err();
    match err {
        ClientError::Server { status: 503, message } => {
            assert!(message.contains("of 5 replicas acknowledged"), "{message}");
            assert!(message.contains("durable at replica 1 and queued"), "{message}");
        }
        other => panic!("expected 503, got {other}"),
    }
    assert_eq!(value_at(&cluster, 1, "k").await.as_deref(), Some("v"), "durable at the coordinator");
    let ok = r1.put_quorum("k2", "v2", None, Some(N - 1)).await.unwrap();
    assert!(ok.acks.unwrap() >= N - 1);

    cluster.start(4).unwrap();
    cluster.wait_healthy(4, Duration::from_secs(10)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while value_at(&cluster, 4, "k").await.as_deref() != Some("v") {
        assert!(Instant::now() < deadline, "the queued write never reached replica 4");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replica 5 misses a write and no outbox remembers it. A quorum read merges the replicas'
/// sets and repairs the ones that were behind: replica 5 itself when it coordinates the read,
/// and in the background when another replica does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_reads_merge_and_repair_replicas_that_are_behind() {
    let (mut cluster, _root) = start().await;
    cluster.stop(5, Stop::Clean).unwrap();
    cluster.client(1).put("a", "fresh", None).await.unwrap();
    cluster.client(1).put("b", "fresh", None).await.unwrap();
    cluster.stop(1, Stop::Clean).unwrap();
    let store = Store::open(cluster.data_dir(1), &cluster.layout(1)).unwrap();
    assert_eq!(store.clear_outbox(5).unwrap(), 2);
    drop(store);
    for id in [1, 5] {
        cluster.start(id).unwrap();
        cluster.wait_healthy(id, Duration::from_secs(10)).await.unwrap();
    }
    let r5 = cluster.client(5);
    assert_eq!(value_at(&cluster, 5, "a").await, None, "replica 5 is behind");

    // Coordinated by the replica that is behind: the answer is merged and it repairs itself.
    let read = r5.get_quorum("a", Some(N)).await.unwrap().expect("found through the quorum");
    assert_eq!(read.versions[0].value.as_deref(), Some("fresh"));
    assert_eq!(value_at(&cluster, 5, "a").await.as_deref(), Some("fresh"), "repaired locally");

    // Coordinated by another replica: replica 5 is repaired in the background.
    let read = cluster.client(2).get_quorum("b", Some(N)).await.unwrap().unwrap();
    assert_eq!(read.versions[0].value.as_deref(), Some("fresh"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while value_at(&cluster, 5, "b").await.as_deref() != Some("fresh") {
        assert!(Instant::now() < deadline, "read repair never reached replica 5");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(cluster.log_path(2)).unwrap();
    assert!(log.contains("read repair (r=5): replicas [5] were behind"), "{log}");
}

/// Bad quorum sizes are 400; a read quorum that cannot be met is 503 with the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_sizes_are_checked() {
    let (mut cluster, _root) = start().await;
    let r1 = cluster.client(1);
    for bad in [0, N + 1] {
        let err = r1.put_quorum("k", "v", None, Some(bad)).await.unwrap_err();
        assert!(matches!(err, ClientError::Rejected { status: 400, .. }), "w={bad}: {err}");
        let err = r1.get_quorum("k", Some(bad)).await.unwrap_err();
        assert!(matches!(err, ClientError::Rejected { status: 400, .. }), "r={bad}: {err}");
    }
    r1.put("k", "v", None).await.unwrap();
    cluster.stop(3, Stop::Crash).unwrap();
    let err = r1.get_quorum("k", Some(N)).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Server { status: 503, message } if message.contains("of 5 replicas answered")),
        "{err}"
    );
    assert!(r1.get_quorum("k", Some(N - 1)).await.unwrap().is_some());
}

/// A hung peer (SIGSTOP: it holds its socket but answers nothing) cannot stall client requests:
/// plain writes never wait for peers, quorum writes give up after the quorum timeout, and the
/// status probe after its own short timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_peer_cannot_stall_client_requests() {
    let (mut cluster, _root) = start().await;
    cluster.pause(2).unwrap();
    let r1 = cluster.client(1);
    let t = Instant::now();
    for i in 0..20 {
        r1.put(&format!("k{i}"), "v", None).await.unwrap();
    }
    // Bounded by local fsyncs, not by the hung peer's 10 s request timeout.
    assert!(t.elapsed() < Duration::from_secs(8), "20 plain writes took {:?}", t.elapsed());
    let t = Instant::now();
    let err = r1.put_quorum("q", "v", None, Some(N)).await.unwrap_err();
    let took = t.elapsed();
    assert!(matches!(err, ClientError::Server { status: 503, .. }), "{err}");
    assert!(took < vkv::coordinator::QUORUM_TIMEOUT + Duration::from_secs(1), "w=N took {took:?}");
    assert!(r1.put_quorum("q", "v", None, Some(N - 1)).await.is_ok(), "the other four suffice");
    let t = Instant::now();
    let status = r1.status().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "status took {:?}", t.elapsed());
    assert!(!status.peers.iter().find(|p| p.id == 2).unwrap().reachable);
    cluster.resume(2).unwrap();
}
