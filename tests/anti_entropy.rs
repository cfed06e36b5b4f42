//! Anti-entropy on five real replicas: writes whose outbox marks were lost still reach every
//! replica, through digest comparison alone. Replicas run with `--anti-entropy-secs 0.3`.

use std::time::{Duration, Instant};

use vkv::store::Store;
use vkv_testkit::{free_ports, LocalCluster, Stop};

const N: usize = 5;

/// Drops every outbox mark of replica `id` (which must be stopped): its queued writes are now
/// known to no sender.
fn drop_outbox(cluster: &LocalCluster, id: usize) -> u64 {
    let layout = cluster.layout(id);
    let store = Store::open(cluster.data_dir(id), &layout).unwrap();
    layout.peers().map(|p| store.clear_outbox(p.id).unwrap()).sum()
}

async fn start() -> (LocalCluster, tempfile::TempDir) {
    start_with(&[]).await
}

async fn start_with(extra: &[&str]) -> (LocalCluster, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let ports = free_ports(N).unwrap();
    let mut cluster = LocalCluster::new(env!("CARGO_BIN_EXE_vkv-server"), ports.clone(), root.path())
        .with_args([&["--anti-entropy-secs", "0.3"], extra].concat());
    cluster.start_all().unwrap();
    cluster.wait_all_healthy(Duration::from_secs(10)).await.unwrap();
    (cluster, root)
}

async fn restart(cluster: &mut LocalCluster, ids: &[usize]) {
    for &id in ids {
        cluster.start(id).unwrap();
    }
    for &id in ids {
        cluster.wait_healthy(id, Duration::from_secs(10)).await.unwrap();
    }
}

/// Waits until replica `id` holds `count` keys, each `key-{i}` with value `value-{i}`.
async fn wait_for_keys(cluster: &LocalCluster, id: usize, prefix: &str, count: usize) {
    let client = cluster.client(id);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut missing = count;
    while Instant::now() < deadline {
        missing = 0;
        for i in 0..count {
            let got = client.get(&format!("{prefix}-{i}")).await.ok().flatten();
            if got.map(|r| r.versions[0].value.clone()) != Some(Some(format!("value-{i}"))) {
                missing += 1;
            }
        }
        if missing == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
    panic!("replica {id} still misses {missing} of {count} {prefix} keys\n{log}");
}

/// Replica 1 takes 40 writes while every peer is down, then its outbox is lost. No sender knows
/// of those writes any more; the peers still get all 40 by comparing digests with replica 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_whose_outbox_was_lost_reach_every_peer() {
    let (mut cluster, _root) = start().await;
    for id in 2..=N {
        cluster.stop(id, Stop::Clean).unwrap();
    }
    let r1 = cluster.client(1);
    for i in 0..40 {
        r1.put(&format!("lost-{i}"), &format!("value-{i}"), None).await.unwrap();
    }
    cluster.stop(1, Stop::Clean).unwrap();
    assert_eq!(drop_outbox(&cluster, 1), 40 * 4, "40 marks for each of 4 peers dropped");
    restart(&mut cluster, &[1, 2, 3, 4, 5]).await;
    for id in 2..=N {
        wait_for_keys(&cluster, id, "lost", 40).await;
    }
}

/// Replica 5 is down while replicas 1 and 2 take writes; their queues toward 5 are then cleared.
/// Replica 5 comes back and converges through anti-entropy alone, and logs the repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_writes_converges_after_its_peers_queues_were_cleared() {
    let (mut cluster, _root) = start().await;
    cluster.stop(5, Stop::Crash).unwrap();
    for i in 0..30 {
        let id = 1 + i % 2;
        cluster.client(id).put(&format!("missed-{i}"), &format!("value-{i}"), None).await.unwrap();
    }
    cluster.stop(1, Stop::Clean).unwrap();
    cluster.stop(2, Stop::Clean).unwrap();
    drop_outbox(&cluster, 1);
    drop_outbox(&cluster, 2);
    restart(&mut cluster, &[1, 2, 5]).await;
    wait_for_keys(&cluster, 5, "missed", 30).await;
    let log = std::fs::read_to_string(cluster.log_path(5)).unwrap();
    assert!(
        log.contains("anti_entropy: from replica") && log.contains("repaired"),
        "replica 5 logs its repairs:\n{log}"
    );
}

/// A repair larger than one round's key budget (`--anti-entropy-max-keys 10`, 60 keys lost)
/// carries on from round to round until it is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_larger_than_one_round_completes_over_several() {
    let (mut cluster, _root) = start_with(&["--anti-entropy-max-keys", "10"]).await;
    cluster.stop(5, Stop::Crash).unwrap();
    for i in 0..60 {
        cluster.client(1).put(&format!("big-{i}"), &format!("value-{i}"), None).await.unwrap();
    }
    cluster.stop(1, Stop::Clean).unwrap();
    drop_outbox(&cluster, 1);
    restart(&mut cluster, &[1, 5]).await;
    wait_for_keys(&cluster, 5, "big", 60).await;
    let log = std::fs::read_to_string(cluster.log_path(5)).unwrap();
    assert!(log.contains("(more next round)"), "the repair took several rounds:\n{log}");
}
