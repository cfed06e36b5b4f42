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

/// A one-replica server (`--insecure`, N = 1) with `extra` flags, its log at `dir/server.log`.
fn single(dir: &Path, extra: &[&str], ulimit: Option<u64>) -> (Proc, u16) {
    let port = free_ports(1).unwrap()[0];
    let mut cmd = Command::new(SERVER);
    cmd.args(["--port", &port.to_string(), "-N", "1", "--insecure"]).arg("--data-dir").arg(dir.join("data"));
    cmd.args(extra).env_remove("VKV_CLUSTER_KEY");
    if let Some(limit) = ulimit {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit)
                    .map_err(std::io::Error::from)
            });
        }
    }
    let proc = spawn(&mut cmd, &dir.join("server.log"));
    (proc, port)
}

async fn wait_healthy(port: u16) {
    let client = Client::new(&format!("127.0.0.1:{port}")).unwrap();
    wait_for("the server to answer /health", Duration::from_secs(10), async || client.healthy().await).await;
}

/// True once the server closed `stream` (read returns 0 or an error), waiting at most `within`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // a response (e.g. 408) before the close
        }
    }
}

async fn connect(port: u16) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

/// Reads one whole HTTP response (up to the close or 64 KiB) and returns its status and body.
async fn response(stream: &mut tokio::net::TcpStream, within: Duration) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let text = String::from_utf8_lossy(&all).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                return (status, body.to_string());
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => all.extend_from_slice(&buf[..n]),
            _ => panic!("no complete response; got {text:?}"),
        }
    }
}

/// Issue 9.4: slowloris heads, idle connections (fresh or kept alive) and trickled bodies are
/// all cut off; a trickled body gets a JSON 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = single(dir.path(), &["--idle-timeout-secs", "1", "--body-timeout-secs", "1"], None);
    wait_healthy(port).await;

    // 50 slowloris connections: a header line every 200 ms, never the blank line.
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = connect(port).await;
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        slow.push(s);
    }
    // 100 idle connections that never send a byte, and one kept alive after a request.
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(connect(port).await);
    }
    let mut kept = connect(port).await;
    kept.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert_eq!(response(&mut kept, Duration::from_secs(5)).await.0, 200);
    let started = Instant::now();
    for round in 0..10 {
        for s in &mut slow {
            let _ = s.write_all(format!("x-trickle-{round}: y\r\n").as_bytes()).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (what, streams) in [("slowloris", &mut slow), ("idle", &mut idle)] {
        for s in streams.iter_mut() {
            assert!(closed_by_server(s, Duration::from_secs(3)).await, "a {what} connection is still open");
        }
    }
    assert!(closed_by_server(&mut kept, Duration::from_secs(3)).await, "the kept-alive connection is still open");
    assert!(started.elapsed() < Duration::from_secs(8));

    // A body trickled one byte every 300 ms: 408 with a JSON error once a second has passed.
    let mut trickle = connect(port).await;
    trickle.write_all(b"PUT /kv/k HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{").await.unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if trickle.write_all(b" ").await.is_err() {
                break;
            }
        }
        trickle
    });
    let mut trickle = tokio::time::timeout(Duration::from_secs(10), writer).await.unwrap().unwrap();
    let (status, body) = response(&mut trickle, Duration::from_secs(5)).await;
    assert_eq!(status, 408, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["error"].as_str().unwrap().contains("not received in time"), "{json}");
    wait_healthy(port).await;
}

/// Issue 9.4: with a 256-descriptor limit, 300 idle connections no longer lock everyone out:
/// the cap (256 - 64) evicts the longest-idle connection for each newcomer. When every slot is
/// busy (bodies in flight), a newcomer gets a JSON 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cap_keeps_the_replica_reachable() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = single(dir.path(), &["--idle-timeout-secs", "60"], Some(256));
    wait_healthy(port).await;
    let log_text = log(&dir.path().join("server.log"));
    assert!(log_text.contains("lowered to 192"), "{log_text}");
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(connect(port).await);
    }
    let client = Client::new(&format!("127.0.0.1:{port}")).unwrap();
    for i in 0..5 {
        client.put(&format!("k{i}"), "v", None).await.unwrap();
    }
    drop(idle);

    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = single(dir.path(), &["--max-connections", "8", "--body-timeout-secs", "30"], None);
    wait_healthy(port).await;
    let mut busy = Vec::new();
    for _ in 0..8 {
        let mut s = connect(port).await;
        s.write_all(b"PUT /kv/k HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{").await.unwrap();
        busy.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = connect(port).await;
    let (status, body) = response(&mut late, Duration::from_secs(5)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too many connections"), "{body}");
    drop(busy);
    wait_healthy(port).await;
}

/// Issue 9.4: SIGTERM completes within the grace period even while a client trickles a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_by_the_grace_period() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, port) = single(dir.path(), &["--shutdown-grace-secs", "1", "--body-timeout-secs", "600"], None);
    wait_healthy(port).await;
    let mut trickle = connect(port).await;
    trickle.write_all(b"PUT /kv/k HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n{").await.unwrap();
    let feeding = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if trickle.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = nix::unistd::Pid::from_raw(server.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(8), "SIGTERM did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    feeding.abort();
    let log_text = log(&dir.path().join("server.log"));
    assert!(log_text.contains("still busy after 1s"), "{log_text}");
}
