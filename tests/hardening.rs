//! What an adversarial run broke (issue 9), each reproduced against real `vkv-server` processes:
//! member lists that disagree, hostile peers and slow clients, full disks, damaged stores and
//! crashes during a first start.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vkv::client::Client;
use vkv_testkit::{free_ports, LocalCluster, LocalMember};

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

/// Issue 9.6: SIGKILLs in the first milliseconds of a first start (0 to 30 ms, 60 tries) never
/// leave a data dir that a later start refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_killed_at_any_moment_leaves_a_usable_data_dir() {
    let root = tempfile::tempdir().unwrap();
    let port = free_ports(1).unwrap()[0];
    let server = |data: &Path| {
        let mut cmd = Command::new(SERVER);
        cmd.args(["--port", &port.to_string(), "-N", "1", "--insecure"]).arg("--data-dir").arg(data);
        cmd.env_remove("VKV_CLUSTER_KEY");
        cmd
    };
    for attempt in 0..60u64 {
        let data = root.path().join(format!("data-{attempt}"));
        let mut proc = spawn(&mut server(&data), &root.path().join("kill.log"));
        std::thread::sleep(Duration::from_micros(attempt * 500));
        let _ = proc.0.kill();
        let _ = proc.0.wait();
        let log_path = root.path().join(format!("start-{attempt}.log"));
        let _proc = spawn(&mut server(&data), &log_path);
        let client = Client::new(&format!("127.0.0.1:{port}")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client.healthy().await {
            assert!(Instant::now() < deadline, "killed after {} µs: no start: {}", attempt * 500, log(&log_path));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client.put("k", "v", None).await.unwrap();
    }
}

/// Issue 9.5: a page of a replica's store overwritten while it was down. Whatever the page, the
/// replica never dies of a panic (exit 101) and never serves 500s while `/health` says ok: it
/// refuses to start with the `--repair` hint (exit 2), or it reports itself unhealthy. Restarted
/// with `--repair`, it moves the file aside and recovers every key from its peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_reported_and_repaired_from_the_peers() {
    use std::io::{Seek, SeekFrom, Write};
    let root = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::new(SERVER, free_ports(3).unwrap(), root.path()).with_args(["--skip-recovery"]);
    cluster.start_all().unwrap();
    cluster.wait_all_healthy(Duration::from_secs(10)).await.unwrap();
    let keys: Vec<String> = (0..200).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        cluster.client(1).put(key, &format!("value of {key}"), None).await.unwrap();
    }
    wait_for("replica 3 to hold every key", Duration::from_secs(20), async || {
        cluster.client(3).status().await.is_ok_and(|s| s.keys == 200)
    })
    .await;
    let file = cluster.data_dir(3).join("vkv.redb");
    let pages = std::fs::metadata(&file).unwrap().len() / 4096;
    for (round, page) in [1, pages / 2, pages - 1].into_iter().enumerate() {
        cluster.stop(3, vkv_testkit::Stop::Clean).ok();
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.seek(SeekFrom::Start(page * 4096)).unwrap();
        f.write_all(&[0x5Au8; 4096]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        cluster.start(3).unwrap();
        let client = cluster.client(3);
        let deadline = Instant::now() + Duration::from_secs(10);
        let outcome = loop {
            if !cluster.is_running(3) {
                break "exited";
            }
            if client.healthy().await {
                break "healthy";
            }
            let answered = reqwest::get(format!("http://{}/health", cluster.address(3))).await;
            if answered.is_ok_and(|r| r.status() == 503) {
                break "unhealthy";
            }
            assert!(Instant::now() < deadline, "page {page}: neither up nor down");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let log_text = log(cluster.log_path(3));
        eprintln!("page {page} of {pages} overwritten: the replica {outcome}");
        match outcome {
            "exited" => assert!(log_text.contains("--repair"), "page {page}: exited without the hint: {log_text}"),
            "healthy" => {
                // It opened (redb may repair a page it does not need): then every read works,
                // or /health stops saying ok.
                for key in &keys {
                    if client.get(key).await.is_err() {
                        let health = reqwest::get(format!("http://{}/health", cluster.address(3))).await.unwrap();
                        assert_eq!(health.status(), 503, "page {page}: a read failed while /health said ok");
                        break;
                    }
                }
            }
            _ => {}
        }
        cluster.stop(3, vkv_testkit::Stop::Crash).ok();
        // The operator's path: restart with --repair.
        let log_path = root.path().join(format!("repair-{round}.log"));
        let _repaired = spawn(cluster.command(3).arg("--repair"), &log_path);
        wait_for("the repaired replica to recover every key", Duration::from_secs(30), async || {
            client.healthy().await && client.status().await.is_ok_and(|s| s.keys == 200 && !s.recovering)
        })
        .await;
        for key in &keys {
            assert_eq!(value(&client, key).await.as_deref(), Some(format!("value of {key}").as_str()), "{key}");
        }
        drop(_repaired);
    }
}

/// A tmpfs of `size` mounted at `dir` (root only), unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "vkv-test", dir.to_str().unwrap()])
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem holding `dir` with one file, until the disk says no more.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).and_then(|()| file.sync_data()).is_ok() {}
    path
}

/// Issue 9.2: replica 1's disk fills up. Its writes fail with a clean 500 and `/health` says
/// unhealthy; its sender, which cannot clear the marks of what it delivered, backs off instead of
/// re-shipping in a tight loop; once space is freed the store is reopened by itself — no
/// restart — and writes and replication resume. Needs root (it mounts a small tmpfs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_cleanly_and_recovers_when_space_returns() {
    let root = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&root.path().join("replica-1"), "16m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    };
    let args = ["--skip-recovery", "--anti-entropy-secs", "0"];
    let mut cluster = LocalCluster::new(SERVER, free_ports(2).unwrap(), root.path()).with_args(args);
    cluster.start(1).unwrap();
    cluster.wait_healthy(1, Duration::from_secs(10)).await.unwrap();
    let one = cluster.client(1);
    for i in 0..5 {
        one.put(&format!("before-{i}"), "v", None).await.unwrap();
    }
    let filler = fill(cluster.data_dir(1));
    let health_url = format!("http://{}/health", cluster.address(1));
    let health = || async { reqwest::get(&health_url).await.unwrap() };
    let mut refused = 0;
    for i in 0..20 {
        match one.put(&format!("full-{i}"), &"x".repeat(10_000), None).await {
            Err(vkv::client::ClientError::Server { status, message }) => {
                assert_eq!(status, 500, "{message}");
                refused += 1;
            }
            other => assert!(other.is_ok(), "{other:?}"),
        }
    }
    assert!(refused > 0, "the disk never filled up");
    let answer = health().await;
    assert_eq!(answer.status(), 503);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "unhealthy", "{body}");
    // `/status` says so too, and `vkv status --cluster` shows replica 1 unhealthy, not up.
    assert_eq!(one.status().await.unwrap().health.as_deref(), Some("unhealthy"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vkv"))
        .args(["--server", &cluster.address(1), "status", "--cluster"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{table}");
    let row = table.lines().find(|l| l.starts_with("1 ")).unwrap_or_else(|| panic!("no row for replica 1:\n{table}"));
    assert!(row.contains("unhealthy"), "{table}");

    // Replica 2 comes up: replica 1 ships what it owes, but cannot clear its marks.
    cluster.start(2).unwrap();
    cluster.wait_healthy(2, Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peer_log = log(cluster.log_path(2));
    let merges = peer_log.lines().filter(|l| l.contains("from replica 1 →")).count();
    assert!(merges <= 5 * 12, "replica 1 re-shipped in a tight loop: {merges} merge lines at replica 2");
    let own_log = log(cluster.log_path(1));
    let sender = own_log.lines().filter(|l| l.contains("sender{to=2}")).count();
    assert!(sender > 0, "the sender logged nothing at all:\n{own_log}");
    assert!(sender <= 10, "{sender} sender lines in 3 s:\n{own_log}");
    let store = own_log.lines().filter(|l| l.contains("store ") && l.contains("vkv.redb")).count();
    assert!(store <= 12, "{store} store lines in 3 s:\n{own_log}");

    std::fs::remove_file(filler).unwrap();
    wait_for("replica 1 to report healthy again", Duration::from_secs(30), async || health().await.status() == 200)
        .await;
    one.put("after", "written once there is room", None).await.unwrap();
    wait_for("replica 2 to get every key", Duration::from_secs(20), async || {
        value(&cluster.client(2), "after").await.is_some()
            && one.status().await.is_ok_and(|s| s.peers.iter().all(|p| p.outbox_depth == 0))
    })
    .await;
    for i in 0..5 {
        assert!(value(&cluster.client(2), &format!("before-{i}")).await.is_some());
    }
}

/// Issue 9.9: requests hyper cannot parse (a 64 KiB key, garbage, a bad header, oversized
/// headers) get its status with vkv's JSON error body, not an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_requests_get_json_errors() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = single(dir.path(), &[], None);
    wait_healthy(port).await;
    let long_key = format!("GET /kv/{} HTTP/1.1\r\nhost: x\r\n\r\n", "k".repeat(64 * 1024 + 10));
    let big_header = format!("GET /health HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(512 * 1024));
    for (request, expected) in [
        (long_key.as_str(), 414),
        ("GARBAGE\r\n\r\n", 400),
        ("GET /health HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n", 400),
        (big_header.as_str(), 431),
    ] {
        let mut stream = connect(port).await;
        let _ = stream.write_all(request.as_bytes()).await;
        let (status, body) = response(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(status, expected, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{status}: {e}: {body:?}"));
        assert!(json["error"].is_string(), "{json}");
    }
    wait_healthy(port).await;
}
