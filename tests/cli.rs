//! The two binaries as a user runs them: flags, exit codes, human and JSON output, shutdown.

use std::process::{Command, Output};
use std::time::Duration;

use vkv_testkit::{free_ports, LocalCluster, Stop};

mod common;

use common::{start_cluster, text, SERVER};

const CLI: &str = env!("CARGO_BIN_EXE_vkv");

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).env_remove("VKV_CLUSTER_KEY").output().unwrap()
}

/// Every malformed cluster description is refused with exit code 2 and a message naming the flag.
#[test]
fn server_rejects_bad_flags_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--port", "7000", "-N", "3", "--hosts", "127.0.0.1", "--ports", "7001"], "-N is 3"),
        (&["--port", "7000", "-N", "3", "--hosts", "127.0.0.1,127.0.0.1", "--ports", "7001"], "--ports"),
        (&["--port", "7000", "-N", "3", "--hosts", "127.0.0.1,127.0.0.1", "--ports", "7001,7001"], "twice"),
        (&["--port", "7000", "-N", "2", "--hosts", "127.0.0.1", "--ports", "7000"], "own address"),
        (&["--port", "7000", "-N", "2", "--hosts", "bad host!", "--ports", "7001"], "--hosts"),
        (&["--port", "70000", "-N", "1"], "--port"),
        (&["-N", "1"], "--port"),
        (&["--port", "7000", "-N", "1", "--max-value-bytes", "0"], "--max-value-bytes"),
        (&["--port", "7000", "-N", "2", "--hosts", "127.0.0.1", "--ports", "x"], "--ports"),
        // A value that large, escaped, would not fit in a replication request (issue 9, item 10).
        (&["--port", "7000", "-N", "1", "--max-value-bytes", "12000000"], "--max-value-bytes"),
        // An anti-entropy period that would keep idle replicas busy (issue 9, item 11).
        (&["--port", "7000", "-N", "1", "--insecure", "--anti-entropy-secs", "0.000001"], "--anti-entropy-secs"),
        (&["--port", "7000", "-N", "1", "--insecure", "--anti-entropy-secs=-1"], "--anti-entropy-secs"),
    ];
    for (args, needle) in cases {
        let out = run(SERVER, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} → {err}");
        assert!(err.contains(needle), "{args:?}: {err:?} should mention {needle:?}");
    }
}

/// Without a cluster key the server refuses to start unless told --insecure; a short key is refused.
#[test]
fn server_needs_a_cluster_key_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let out = Command::new(SERVER)
        .args(["--port", "7000", "-N", "1", "--data-dir", data])
        .env_remove("VKV_CLUSTER_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("--cluster-key-file") && err.contains("--insecure"), "{err}");
    let short = dir.path().join("short.key");
    std::fs::write(&short, "tiny").unwrap();
    let out =
        run(SERVER, &["--port", "7000", "-N", "1", "--data-dir", data, "--cluster-key-file", short.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("at least 16 bytes"), "{}", text(&out.stderr));
    let out = Command::new(SERVER)
        .args(["--port", "7000", "-N", "1", "--data-dir", data])
        .env("VKV_CLUSTER_KEY", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("VKV_CLUSTER_KEY"), "{}", text(&out.stderr));
    let out = Command::new(SERVER)
        .args(["--port", "7000", "-N", "1", "--data-dir", data, "--insecure"])
        .env("VKV_CLUSTER_KEY", "a-perfectly-long-cluster-key")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--insecure must not silently override a configured key");
    assert!(text(&out.stderr).contains("contradicts"), "{}", text(&out.stderr));
}

/// A data dir remembers its cluster: starting another layout on it is refused, nothing touched.
#[test]
fn server_refuses_a_data_dir_of_another_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2).unwrap();
    // Only replica 1 of 2 runs, so it must not wait to recover from replica 2.
    let mut cluster = LocalCluster::new(SERVER, ports.clone(), dir.path()).with_args(["--skip-recovery"]);
    cluster.start(1).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(cluster.wait_healthy(1, Duration::from_secs(10))).unwrap();
    cluster.stop(1, Stop::Clean).unwrap();
    let data = cluster.data_dir(1).to_str().unwrap().to_string();
    let port = ports[0].to_string();
    let out = run(
        SERVER,
        &["--port", &port, "-N", "2", "--hosts", "127.0.0.1", "--ports", "1", "--data-dir", &data, "--insecure"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("belongs to member"), "{}", text(&out.stderr));
}

/// SIGTERM: the replica stops accepting, stops its senders, closes the store and exits 0.
#[test]
fn server_shuts_down_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1).unwrap()[0].to_string();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = Command::new(SERVER)
        .args(["--port", &port, "-N", "1", "--insecure", "--data-dir"])
        .env_remove("VKV_CLUSTER_KEY")
        .arg(dir.path().join("data"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let client = vkv::client::Client::new(&format!("127.0.0.1:{port}")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for _ in 0..400 {
            if client.healthy().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        client.put("k", "v", None).await.unwrap();
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(status.success(), "exit {status}: {log}");
    assert!(log.contains("SIGTERM received") && log.contains("stopped cleanly"), "{log}");
}

/// The client CLI: put/get/delete/status, human and --json output, and its exit codes
/// (1 not found, 2 bad input, 3 unreachable). A conflict is shown loudly with its resolution.
#[test]
fn cli_reads_writes_and_flags_conflicts() {
    let (_dir, mut cluster, rt) = start_cluster(2);
    let (a1, a2) = (cluster.address(1), cluster.address(2));
    let cli = |args: &[&str]| run(CLI, args);

    let out = cli(&["--server", &a1, "put", "cart", "milk"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), "wrote \"cart\" at replica 1 · clock [1, 0]");
    let out = cli(&["--server", &a1, "get", "cart"]);
    assert_eq!(text(&out.stdout).trim(), "milk  clock [1, 0]");
    let out = cli(&["--server", &a1, "--json", "get", "cart"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["versions"][0]["clock"], serde_json::json!([1, 0]));

    let out = cli(&["--server", &a1, "get", "missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not found"));
    let out = cli(&["--server", &a1, "put", "cart", "x", "--context", "1,2,3"]);
    assert_eq!(out.status.code(), Some(2), "server rejected the context");
    assert!(text(&out.stderr).contains("N = 2"), "{}", text(&out.stderr));
    let out = cli(&["--server", &a1, "put", "cart", "x", "--context", "a,b"]);
    assert_eq!(out.status.code(), Some(2), "clap rejected the context");
    let out = cli(&["--server", "ftp://nowhere", "get", "k"]);
    assert_eq!(out.status.code(), Some(2));
    for key in ["", ".", ".."] {
        let out = cli(&["--server", &a1, "put", key, "v"]);
        assert_eq!(out.status.code(), Some(2), "key {key:?}");
        assert!(text(&out.stderr).contains("invalid key"), "{}", text(&out.stderr));
    }

    // Make a conflict: replica 2 down while 1 writes; 1 down while 2 writes.
    for _ in 0..200 {
        if text(&cli(&["--server", &a2, "get", "cart"]).stdout).contains("[1, 0]") {
            break; // replica 2 has the first write
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    cluster.stop(2, Stop::Clean).unwrap();
    let out = cli(&["--server", &a1, "status"]);
    assert!(text(&out.stdout).contains("UNREACHABLE · outbox 0"), "{}", text(&out.stdout));
    cli(&["--server", &a1, "put", "cart", "milk,eggs"]);
    let out = cli(&["--server", &a1, "status"]);
    assert!(text(&out.stdout).contains("UNREACHABLE · outbox 1"), "{}", text(&out.stdout));
    cluster.stop(1, Stop::Clean).unwrap();
    let out = cli(&["--server", &a1, "get", "cart"]);
    assert_eq!(out.status.code(), Some(3), "replica 1 is down");
    cluster.start(2).unwrap();
    rt.block_on(cluster.wait_healthy(2, Duration::from_secs(10))).unwrap();
    cli(&["--server", &a2, "put", "cart", "milk,flour"]);
    cluster.start(1).unwrap();
    rt.block_on(cluster.wait_healthy(1, Duration::from_secs(10))).unwrap();
    let mut shown = String::new();
    for _ in 0..200 {
        shown = text(&cli(&["--server", &a2, "get", "cart"]).stdout);
        if shown.contains("CONFLICT") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(shown.contains("CONFLICT: key \"cart\" has 2 concurrent versions"), "{shown}");
    assert!(shown.contains("\"milk,eggs\"  clock [2, 0]") && shown.contains("\"milk,flour\"  clock [1, 1]"), "{shown}");
    assert!(shown.contains("--context 2,1"), "{shown}");
    let out = cli(&["--server", &a2, "put", "cart", "milk,eggs,flour", "--context", "2,1"]);
    assert_eq!(text(&out.stdout).trim(), "wrote \"cart\" at replica 2 · clock [2, 2]");
    let out = cli(&["--server", &a2, "delete", "cart"]);
    assert_eq!(text(&out.stdout).trim(), "deleted \"cart\" at replica 2 · clock [2, 3]");
    assert_eq!(cli(&["--server", &a2, "get", "cart"]).status.code(), Some(1));
}

/// Read-modify-write from the command line. `vkv put --context` with a context the replica has
/// moved past is refused: exit 4, the versions the client missed with their clocks, and the exact
/// command to resolve — nothing overwritten. `vkv update` reads and writes with the read
/// context; `vkv get` of a missing key shows the context a first write needs.
#[test]
fn cli_refuses_stale_context_writes_and_updates_with_the_read_context() {
    let (_dir, cluster, _rt) = start_cluster(2);
    let a1 = cluster.address(1);
    let cli = |args: &[&str]| run(CLI, args);

    let out = cli(&["--server", &a1, "--json", "get", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["context"], serde_json::json!([0, 0]), "{json}");
    assert_eq!(json["versions"], serde_json::json!([]), "{json}");
    let out = cli(&["--server", &a1, "get", "list"]);
    assert!(text(&out.stderr).contains("context 0,0"), "{}", text(&out.stderr));

    // First write with the zero context, then a second writer that also read nothing.
    let out = cli(&["--server", &a1, "put", "list", "a", "--context", "0,0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli(&["--server", &a1, "put", "list", "b", "--context", "0,0"]);
    assert_eq!(out.status.code(), Some(4), "a stale context is a conflict: {}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("CONFLICT: not written"), "{shown}");
    assert!(shown.contains("\"a\"  clock [1, 0]"), "{shown}");
    assert!(shown.contains("vkv put 'list' <merged value> --context 1,0"), "{shown}");
    let out = cli(&["--server", &a1, "--json", "put", "list", "b", "--context", "0,0"]);
    assert_eq!(out.status.code(), Some(4));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["versions"], serde_json::json!([{"value": "a", "clock": [1, 0]}]), "{json}");
    assert_eq!(json["context"], serde_json::json!([1, 0]), "{json}");
    assert_eq!(text(&cli(&["--server", &a1, "get", "list"]).stdout).trim(), "a  clock [1, 0]", "not overwritten");

    // update = read + write with the read context.
    let out = cli(&["--server", &a1, "update", "list", "a,b"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "updated \"list\" at replica 1 · clock [2, 0]");
    let out = cli(&["--server", &a1, "delete", "list", "--context", "1,0"]);
    assert_eq!(out.status.code(), Some(4), "a stale delete is refused too");
    let out = cli(&["--server", &a1, "update", "fresh", "first"]);
    assert!(out.status.success(), "update of a missing key: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "updated \"fresh\" at replica 1 · clock [1, 0]");
}

/// Keys cannot forge log lines (issue 9, item 7): a key holding a newline and a fake decision, or a
/// NUL byte, is logged escaped — one line per decision, no control byte in the file. And the
/// CLI's "write with:" line quotes the key for the shell (item 8): `$HOME` and backticks in a key
/// stay literal when the line is pasted.
#[test]
fn keys_are_escaped_in_logs_and_quoted_for_the_shell() {
    let (_dir, cluster, rt) = start_cluster(1);
    let a1 = cluster.address(1);
    let cli = |args: &[&str]| run(CLI, args);

    let forged = "k\nINFO replica{id=1}: client write \"forged\" → clock [9] decision=\"write\" key=\"x\"";
    let out = cli(&["--server", &a1, "put", forged, "v"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A NUL cannot be a process argument: this one goes over HTTP (percent-encoded).
    rt.block_on(cluster.client(1).put("nul\u{0}byte", "v\u{1b}[31m", None)).unwrap();
    // Log lines reach the file through a writer thread, possibly after the answer: wait (≤ 5 s)
    // for the second write's line.
    let mut log = Vec::new();
    for _ in 0..100 {
        log = std::fs::read(cluster.log_path(1)).unwrap();
        if String::from_utf8_lossy(&log).contains("key=\"nul\\0byte\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!log.contains(&0u8) && !log.contains(&0x1bu8), "a control byte reached the log");
    let log = String::from_utf8_lossy(&log);
    assert!(
        !log.lines().any(|l| l.contains("INFO replica{id=1}: client write \"forged\"")),
        "a key forged a line:\n{log}"
    );
    assert!(log.contains("key=\"k\\nINFO replica{id=1}:"), "the key is logged escaped:\n{log}");
    assert!(log.contains("key=\"nul\\0byte\""), "{log}");

    // A conflict on a key full of shell syntax: the printed command pastes back literally.
    let key = "$HOME `id` it's";
    assert!(cli(&["--server", &a1, "put", key, "a", "--context", "0"]).status.success());
    let out = cli(&["--server", &a1, "put", key, "b", "--context", "0"]);
    assert_eq!(out.status.code(), Some(4));
    let shown = text(&out.stdout);
    let line = shown.lines().find(|l| l.contains("write with:")).unwrap_or_else(|| panic!("{shown}"));
    let quoted = line.split_once("vkv put ").and_then(|(_, rest)| rest.split_once(" <merged value>")).unwrap().0;
    let echoed = Command::new("sh").arg("-c").arg(format!("printf '%s' {quoted}")).output().unwrap();
    assert_eq!(text(&echoed.stdout), key, "the shell sees the key itself: {line}");
}

/// A port in use is a startup error like the others (issue 9, item 9): exit 2 with the reason on
/// stderr, and no store is created in the data dir.
#[test]
fn a_port_in_use_exits_2_with_the_reason_and_creates_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let data = dir.path().join("data");
    let out = run(SERVER, &["--port", &port, "-N", "1", "--insecure", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot listen on 127.0.0.1:"), "{}", text(&out.stderr));
    assert!(!data.exists(), "a store was created before the bind failed");
}

/// Kills and reaps a replica started by hand when the test ends, passed or failed.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--members` (every member, this one included — the same list on every replica, as a
/// Kubernetes StatefulSet hands out): bad lists exit 2 naming the flag; a good one forms the
/// same cluster --hosts/--ports would, and a write at replica 1 reaches replica 3.
#[test]
fn server_takes_the_whole_member_list() {
    let cases: &[(&[&str], &str)] = &[
        (&["--port", "7000", "--members", "127.0.0.1:7001,127.0.0.1:7002"], "does not list this replica's own address"),
        (&["--port", "7000", "--members", "127.0.0.1:7000,127.0.0.1"], "--members: \"127.0.0.1\" is not HOST:PORT"),
        (
            &["--port", "7000", "-N", "3", "--members", "127.0.0.1:7000,127.0.0.1:7001"],
            "-N is 3, but --members lists 2",
        ),
        (&["--port", "7000", "--members", "127.0.0.1:7000,127.0.0.1:7000"], "--members lists 127.0.0.1:7000 twice"),
        (&["--port", "7000", "--members", "127.0.0.1:7000", "--hosts", "127.0.0.1", "--ports", "7001"], "--members"),
        (&["--port", "7000", "--hosts", "127.0.0.1", "--ports", "7001"], "-N is required"),
    ];
    for (args, needle) in cases {
        let out = run(SERVER, &[args, &["--insecure"][..]].concat());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} → {err}");
        assert!(err.contains(needle), "{args:?}: {err:?} should mention {needle:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3).unwrap();
    // Listed out of order on purpose: the ids come from sorting, not from the list.
    let members = [2, 0, 1].map(|i| format!("127.0.0.1:{}", ports[i])).join(",");
    let mut replicas = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("replica-{}.log", i + 1))).unwrap();
        let child = Command::new(SERVER)
            .args(["--port", &port.to_string(), "--members", &members, "--insecure", "--skip-recovery"])
            .arg("--data-dir")
            .arg(dir.path().join(format!("data-{}", i + 1)))
            .env_remove("VKV_CLUSTER_KEY")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        replicas.push(Reaped(child));
    }
    let client = |i: usize| vkv::client::Client::new(&format!("127.0.0.1:{}", ports[i])).unwrap();
    let logs = || {
        (1..=3)
            .map(|i| std::fs::read_to_string(dir.path().join(format!("replica-{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for i in 0..3 {
            assert!(
                vkv_testkit::wait_healthy(&client(i), Duration::from_secs(10)).await,
                "replica {} down: {}",
                i + 1,
                logs()
            );
        }
        let status = client(2).status().await.unwrap();
        assert_eq!((status.replica, status.n, status.members.len()), (3, 3, 3), "{status:?}");
        client(0).put("k", "via-members", None).await.unwrap();
        // Replication is asynchronous: poll replica 3, at most 10 s.
        let mut seen = None;
        for _ in 0..200 {
            seen = client(2).get("k").await.unwrap();
            if seen.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seen = seen.unwrap_or_else(|| panic!("the write never reached replica 3: {}", logs()));
        assert_eq!(seen.context.to_string(), "[1, 0, 0]", "{seen:?}");
    });
    drop(replicas);
}
