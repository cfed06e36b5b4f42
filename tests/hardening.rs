//! What an adversarial run broke (issue 9), each reproduced against real `vkv-server` processes:
//! member lists that disagree, hostile peers and slow clients, full disks, damaged stores and
//! crashes during a first start.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vkv::client::Client;
use vkv::local::{free_ports, LocalCluster, LocalMember};

const SERVER: &str = env!("CARGO_BIN_EXE_vkv-server");
const CLI: &str = env!("CARGO_BIN_EXE_vkv");

/// A process this test started, killed (and reaped) when dropped, so a failing test leaves
/// nothing running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Proc {
    let file = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
    Proc(cmd.spawn().unwrap())
}

fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn value(client: &Client, key: &str) -> Option<String> {
    let read = client.get(key).await.ok()??;
    let values: Vec<String> = read.versions.iter().filter_map(|v| v.value.clone()).collect();
    Some(values.join("|"))
}

/// Issue 9.1: in a new N=4 cluster, three replicas call the fourth `localhost` while it calls
/// itself `127.0.0.1`. The orders differ, so the fourth takes the first one's clock position.
/// Before, both acknowledged writes with the same clock `[1, 0, 0, 0]` and after replication one
/// of them was gone, with every peer reported reachable. Now the two sides refuse each other's
/// data (409) and log it at both ends, neither write is lost, and `/status`/`vkv status` say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_different_member_lists_refuse_each_other_and_lose_nothing() {
    let root = tempfile::tempdir().unwrap();
    let ports = free_ports(4).unwrap();
    let (odd, rest) = (ports[0], &ports[1..]);
    // As replicas 1..3 see the cluster: themselves on 127.0.0.1, the odd one as localhost (last).
    let mut members: Vec<LocalMember> = rest.iter().map(|&p| LocalMember::loopback(p)).collect();
    members.push(LocalMember { host: "localhost".into(), port: odd, listen: None, peer_source: None });
    let args = ["--skip-recovery", "--anti-entropy-secs", "0.3"];
    let mut cluster = LocalCluster::with_members(SERVER, members, root.path(), root.path()).with_args(args);
    for id in 1..=3 {
        cluster.start(id).unwrap();
    }
    cluster.wait_healthy(1, Duration::from_secs(10)).await.unwrap();
    // The odd one, as the issue found it: it spells itself 127.0.0.1, so it sorts itself first.
    let odd_log = root.path().join("odd.log");
    let list = |v: Vec<String>| v.join(",");
    let _odd = spawn(
        Command::new(SERVER)
            .args(["--host", "127.0.0.1", "--port", &odd.to_string(), "-N", "4"])
            .args(["--hosts", "127.0.0.1,127.0.0.1,127.0.0.1"])
            .args(["--ports", &list(rest.iter().map(u16::to_string).collect())])
            .arg("--data-dir")
            .arg(root.path().join("odd-data"))
            .arg("--cluster-key-file")
            .arg(root.path().join("cluster.key"))
            .args(args),
        &odd_log,
    );
    let odd_client = Client::new(&format!("127.0.0.1:{odd}")).unwrap();
    wait_for("the odd replica", Duration::from_secs(10), async || odd_client.healthy().await).await;
    cluster.wait_all_healthy(Duration::from_secs(10)).await.unwrap();

    let first = cluster.client(1);
    let a = first.put("cart", "from-replica-1", None).await.unwrap();
    let b = odd_client.put("cart", "from-the-odd-one", None).await.unwrap();
    assert_eq!(a.clock, b.clock, "the two share a clock position, as in the issue: {} {}", a.clock, b.clock);

    // Replication and anti-entropy get every chance to spread (and, before, to drop) a write.
    wait_for("the mismatch to be logged at both ends", Duration::from_secs(10), async || {
        let (ours, theirs) = (log(cluster.log_path(1)), log(&odd_log));
        ours.contains("MEMBERSHIP MISMATCH") && theirs.contains("MEMBERSHIP MISMATCH")
    })
    .await;
    wait_for("replica 2 to get replica 1's write", Duration::from_secs(10), async || {
        value(&cluster.client(2), "cart").await.as_deref() == Some("from-replica-1")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(value(&first, "cart").await.as_deref(), Some("from-replica-1"), "replica 1 kept its write");
    assert_eq!(value(&odd_client, "cart").await.as_deref(), Some("from-the-odd-one"), "the odd one kept its write");
    for id in 2..=3 {
        assert_eq!(value(&cluster.client(id), "cart").await.as_deref(), Some("from-replica-1"));
    }

    let status = odd_client.status().await.unwrap();
    assert!(status.peers.iter().all(|p| p.reachable && p.same_cluster == Some(false)), "{status:?}");
    let status = first.status().await.unwrap();
    let odd_peer = status.peers.iter().find(|p| p.address == format!("localhost:{odd}")).unwrap();
    assert_eq!(odd_peer.same_cluster, Some(false), "{status:?}");
    let out = Command::new(CLI).args(["--server", &format!("127.0.0.1:{odd}"), "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MEMBERSHIP MISMATCH"), "{text}");
    assert!(text.contains(&status.cluster), "vkv status shows the cluster ids: {text}");
}
