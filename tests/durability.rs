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
