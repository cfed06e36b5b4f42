//! An acknowledged write is durable under group commit: concurrent writers against one real
//! replica, a SIGKILL in the middle of the load, a restart on the same data dir — every write
//! that was acknowledged is there, with the value acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vkv_testkit::{free_ports, LocalCluster, Stop};

const SERVER: &str = env!("CARGO_BIN_EXE_vkv-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_under_concurrent_load_loses_no_acknowledged_write() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::new(SERVER, free_ports(1).unwrap(), root.path());
    cluster.start_all().unwrap();
    cluster.wait_all_healthy(Duration::from_secs(10)).await.unwrap();
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..16 {
        let (client, acked) = (cluster.client(1), acked.clone());
        writers.push(tokio::spawn(async move {
            // Bounded: at most 2,000 writes per writer; the kill ends it much sooner.
            for i in 0..2_000 {
                let (key, value) = (format!("w{w}-k{}", i % 50), format!("w{w}-v{i}"));
                match client.put(&key, &value, None).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(key, value);
                    }
                    Err(_) => break, // the replica is gone
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.stop(1, Stop::Crash).unwrap();
    for writer in writers {
        let _ = tokio::time::timeout(Duration::from_secs(20), writer).await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 100, "too few writes acknowledged before the kill to mean anything: {}", acked.len());
    cluster.start(1).unwrap();
    cluster.wait_healthy(1, Duration::from_secs(20)).await.unwrap();
    let client = cluster.client(1);
    let mut lost = Vec::new();
    for (key, value) in &acked {
        let read = client.get(key).await.unwrap();
        let values: Vec<String> =
            read.map(|r| r.versions.into_iter().filter_map(|v| v.value).collect()).unwrap_or_default();
        // The last acknowledged value of a key, or a later one that was being written when the
        // replica died (committed, but its answer lost): never an older one, never nothing.
        let later_or_equal = values.iter().any(|v| {
            let (wa, ia) = v.split_once("-v").unwrap();
            let (wb, ib) = value.split_once("-v").unwrap();
            wa == wb && ia.parse::<u64>().unwrap() >= ib.parse::<u64>().unwrap()
        });
        if !later_or_equal {
            lost.push(format!("{key}: acknowledged {value}, found {values:?}"));
        }
    }
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost:\n{}", lost.len(), acked.len(), lost.join("\n"));
    eprintln!("{} acknowledged keys, all present after SIGKILL and restart", acked.len());
}

/// Bytes the files under `dir` take on disk (allocated blocks).
fn disk_blocks(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.blocks() * 512).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cluster_compacts_its_files_after_a_load_and_keeps_every_key() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::new(SERVER, free_ports(3).unwrap(), root.path()).with_args(["--compact-idle-secs", "2"]);
    cluster.start_all().unwrap();
    cluster.wait_all_healthy(Duration::from_secs(20)).await.unwrap();
    // 1,500 keys of 2 KB, written three times by 16 writers: copy-on-write and the drained
    // outboxes leave every replica's file well over what its data needs.
    let writers: Vec<_> = (0..16u64)
        .map(|w| {
            let client = cluster.client(1);
            tokio::spawn(async move {
                for round in 0..3u64 {
                    for i in (w..1_500).step_by(16) {
                        let value = format!("{round}-{i}-{}", "x".repeat(2_000));
                        client.put(&format!("k{i}"), &value, None).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let loaded: Vec<u64> = (1..=3).map(|id| disk_blocks(cluster.data_dir(id))).collect();
    // Each replica compacts once it has been idle for 2 s (its peers' merges included).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for id in 1..=3 {
        loop {
            let log = std::fs::read_to_string(cluster.log_path(id)).unwrap();
            if log.contains("store compacted after 2 s idle") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "replica {id} did not compact within 60 s:\n{log}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let metrics =
            reqwest::get(format!("http://{}/metrics", cluster.address(id))).await.unwrap().text().await.unwrap();
        let compactions = metrics.lines().find_map(|l| l.strip_prefix("vkv_compactions_total ")).unwrap_or("0");
        assert!(compactions.trim().parse::<f64>().unwrap() >= 1.0, "replica {id}: {compactions}");
        let now = disk_blocks(cluster.data_dir(id));
        assert!(now < loaded[id - 1], "replica {id}: {now} bytes on disk after compaction, {} before", loaded[id - 1]);
    }
    // Every key, at every replica, holds its last value; and a restart finds them all again.
    for id in 1..=3 {
        let client = cluster.client(id);
        for i in 0..1_500u64 {
            let read = client.get(&format!("k{i}")).await.unwrap().expect("every key is there");
            let values: Vec<String> = read.versions.into_iter().filter_map(|v| v.value).collect();
            assert_eq!(values, [format!("2-{i}-{}", "x".repeat(2_000))], "replica {id}, key k{i}");
        }
    }
    cluster.stop(2, Stop::Crash).unwrap();
    cluster.start(2).unwrap();
    cluster.wait_healthy(2, Duration::from_secs(20)).await.unwrap();
    let read = cluster.client(2).get("k1499").await.unwrap().expect("k1499 survives a restart after compaction");
    assert_eq!(read.versions[0].value.as_deref(), Some(format!("2-1499-{}", "x".repeat(2_000)).as_str()));
    for id in 1..=3 {
        let log = std::fs::read_to_string(cluster.log_path(id)).unwrap();
        assert!(!log.contains("ERROR"), "replica {id} logged an error:\n{log}");
    }
}
