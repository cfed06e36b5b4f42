//! A replica that lost its disk must not reissue clock counters (Riak's "kv679").
//!
//! Replica 3 writes key k five times: every replica holds clock [0, 0, 5, 0, 0]. Replica 3's disk
//! is then lost (SIGKILL, data dir deleted) and it restarts empty. A client writes k through it at
//! once. Were replica 3 to mint [0, 0, 1, 0, 0], every peer would find it dominated by
//! [0, 0, 5, 0, 0] and drop it as stale: an acknowledged write silently lost. With recovery,
//! replica 3 refuses writes (503) until it has pulled every peer's keys, then mints [0, 0, 6, 0, 0].

use std::time::{Duration, Instant};

use vkv::client::ClientError;
use vkv::clock::VectorClock;
use vkv_testkit::{free_ports, LocalCluster, Stop};

const N: usize = 5;

async fn cluster_with(args: &[&str]) -> (LocalCluster, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::new(env!("CARGO_BIN_EXE_vkv-server"), free_ports(N).unwrap(), root.path())
        .with_args(args.to_vec());
    cluster.start_all().unwrap();
    cluster.wait_all_healthy(Duration::from_secs(10)).await.unwrap();
    (cluster, root)
}

fn vc(c: &[u64]) -> VectorClock {
    VectorClock::from(c.to_vec())
}

/// Five writes at replica 3, replicated everywhere; then replica 3 loses its disk and restarts.
async fn write_then_lose_disk(cluster: &mut LocalCluster) {
    let r3 = cluster.client(3);
    for i in 1..=5 {
        r3.put("k", &format!("before-{i}"), None).await.unwrap();
    }
    for id in 1..=N {
        let client = cluster.client(id);
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.get("k").await.unwrap().map(|r| r.versions[0].clock.clone()) != Some(vc(&[0, 0, 5, 0, 0])) {
            assert!(Instant::now() < deadline, "replica {id} never got [0, 0, 5, 0, 0]");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    cluster.stop(3, Stop::Crash).unwrap();
    std::fs::remove_dir_all(cluster.data_dir(3)).unwrap();
    cluster.start(3).unwrap();
}

/// Writes `value` at replica 3 as soon as it accepts writes; returns the clock and how many 503s
/// it answered first.
async fn write_at_once(cluster: &LocalCluster, value: &str) -> (VectorClock, u32) {
    let r3 = cluster.client(3);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused = 0;
    loop {
        match r3.put("k", value, None).await {
            Ok(w) => return (w.clock, refused),
            Err(ClientError::Server { status: 503, message }) => {
                assert!(message.contains("empty data dir"), "{message}");
                refused += 1;
            }
            Err(ClientError::Unreachable { .. }) => {} // still starting
            Err(e) => panic!("unexpected error: {e}"),
        }
        assert!(Instant::now() < deadline, "replica 3 never accepted the write");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn final_values(cluster: &LocalCluster) -> Vec<Vec<(Option<String>, VectorClock)>> {
    let mut all = Vec::new();
    for id in 1..=N {
        let r = cluster.client(id).get("k").await.unwrap().unwrap();
        all.push(r.versions.into_iter().map(|v| (v.value, v.clock)).collect());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_disk_never_reuses_a_counter() {
    let (mut cluster, _root) = cluster_with(&[]).await;
    write_then_lose_disk(&mut cluster).await;
    let (clock, refused) = write_at_once(&cluster, "after-wipe").await;
    eprintln!("replica 3 answered {refused} × 503 before accepting the write");
    assert_eq!(clock, vc(&[0, 0, 6, 0, 0]), "the new write continues the old counter");
    let expected = vec![(Some("after-wipe".to_string()), clock)];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let finals = final_values(&cluster).await;
        if finals.iter().all(|v| v == &expected) {
            break;
        }
        assert!(Instant::now() < deadline, "the acknowledged write did not reach every replica: {finals:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(cluster.log_path(3)).unwrap();
    assert!(log.contains("recovered") && log.contains("accepting writes"), "{log}");
}

/// The control experiment: with `--skip-recovery` the same story loses the acknowledged write,
/// which is why recovery is the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_recovery_the_same_story_loses_the_write() {
    let (mut cluster, _root) = cluster_with(&["--skip-recovery"]).await;
    write_then_lose_disk(&mut cluster).await;
    let (clock, _) = write_at_once(&cluster, "after-wipe").await;
    assert_eq!(clock, vc(&[0, 0, 1, 0, 0]), "a reissued counter");
    // Wait until every peer has received it and decided: "local [0, 0, 5, 0, 0] vs received
    // [0, 0, 1, 0, 0] → ignored" (so replication did happen; the write was judged stale).
    let deadline = Instant::now() + Duration::from_secs(15);
    for id in [1, 2, 4, 5] {
        loop {
            let log = std::fs::read_to_string(cluster.log_path(id)).unwrap();
            if log.contains("local [0, 0, 5, 0, 0] vs received \"after-wipe\" [0, 0, 1, 0, 0] from replica 3 → no conflict, local is newer: ignored") {
                break;
            }
            assert!(Instant::now() < deadline, "replica {id} never judged the write:\n{log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let finals = final_values(&cluster).await;
    // Every peer ignored it as stale ([0, 0, 1, 0, 0] < [0, 0, 5, 0, 0]); only replica 3 still
    // holds it, until anti-entropy brings it [0, 0, 5, 0, 0] and it is gone there too.
    let peers_with_it =
        [0, 1, 3, 4].iter().filter(|&&i| finals[i].iter().any(|(val, _)| val.as_deref() == Some("after-wipe"))).count();
    assert_eq!(peers_with_it, 0, "the acknowledged write was dropped as stale by every peer: {finals:?}");
}
