//! What the tests that run the two binaries as a user does share (`tests/cli.rs`,
//! `tests/cli_habits.rs`): a healthy cluster to talk to, and output as text.

use std::time::Duration;

use vkv_testkit::{free_ports, LocalCluster};

/// The server binary Cargo built for these tests.
pub const SERVER: &str = env!("CARGO_BIN_EXE_vkv-server");

/// A healthy local cluster of `n` replicas, with its temp dir (keep it alive) and a runtime.
pub fn start_cluster(n: usize) -> (tempfile::TempDir, LocalCluster, tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::new(SERVER, free_ports(n).unwrap(), dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    cluster.start_all().unwrap();
    rt.block_on(cluster.wait_all_healthy(Duration::from_secs(10))).unwrap();
    (dir, cluster, rt)
}

/// A process's output as text (lossy).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
