//! The CLI as shell users expect it (issue 12): values from stdin or a file, contexts in both
//! printed forms, `VKV_SERVER` and failover to the next endpoint, `get --value-only`, `vkv list`,
//! `vkv status --cluster`, one JSON object per outcome under `--json`, and the documented exit
//! codes (0 ok · 1 not found · 2 usage or rejected · 3 unreachable · 4 conflict · 5 written but
//! the `w` quorum not met). Real binaries against real replicas.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use vkv_testkit::{free_ports, LocalCluster, Stop};

mod common;

use common::{start_cluster, text, SERVER};

const CLI: &str = env!("CARGO_BIN_EXE_vkv");

/// Runs `vkv` with `args`, the environment variables `env` (VKV_SERVER only when given here) and
/// `stdin` piped in.
fn vkv_with(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut command = Command::new(CLI);
    command.args(args).env_remove("VKV_SERVER").env_remove("VKV_CLUSTER_KEY");
    command.envs(env.iter().copied()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    // A writer thread: a large stdin must not deadlock against a child that fills its stdout.
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn vkv(args: &[&str]) -> Output {
    vkv_with(args, &[], b"")
}

/// The one JSON object a `--json` run printed (panics if stdout is anything else).
fn json_of(out: &Output) -> Value {
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one line of JSON expected: {stdout:?}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout:?}"))
}

/// Asserts a `--json` failure: exit `code`, one object with `error` and the same `exit_code`.
fn json_failure(out: &Output, code: i32) -> Value {
    assert_eq!(out.status.code(), Some(code), "stdout {} stderr {}", text(&out.stdout), text(&out.stderr));
    let json = json_of(out);
    assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{json}");
    assert_eq!(json["exit_code"], code, "{json}");
    json
}

/// A loopback port with nothing listening on it.
fn dead_address() -> String {
    format!("127.0.0.1:{}", free_ports(1).unwrap()[0])
}

/// Something that is not vkv: answers each of at most `connections` connections with a plain-text
/// 404, and gives up after 20 s.
fn plain_404_server(connections: usize) -> (String, JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut served = 0;
        while served < connections && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut socket, _)) => {
                    socket.set_nonblocking(false).unwrap();
                    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut head = [0u8; 4096];
                    let _ = socket.read(&mut head);
                    let body = "404 page not found\n";
                    let answer = format!(
                        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes());
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        served
    });
    (address, handle)
}

/// A value over 128 KiB (more than one argument may hold) goes in through stdin and through
/// `--file`, byte for byte, and comes back with `get --value-only` (plus a newline). An empty value
/// is visible: `""` in the human form, an empty line with `--value-only`. Bad input is exit 2, and
/// under `--json` one JSON object.
#[test]
fn values_come_from_stdin_or_a_file_and_value_only_prints_them() {
    let (dir, cluster, _rt) = start_cluster(1);
    let a = cluster.address(1);
    let big: String =
        (0..200 * 1024).map(|i| if i % 1000 == 999 { '\n' } else { (b'a' + (i % 26) as u8) as char }).collect();
    let out = vkv_with(&["--server", &a, "put", "big", "-"], &[], big.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = vkv(&["--server", &a, "get", "big", "--value-only"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, format!("{big}\n").into_bytes(), "stdin in, the same bytes out");

    let file = dir.path().join("value.txt");
    let from_file = format!("{big}é and a trailing newline\n");
    std::fs::write(&file, &from_file).unwrap();
    let file = file.to_str().unwrap();
    let out = vkv(&["--server", &a, "put", "from-file", "--file", file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = vkv(&["--server", &a, "--json", "get", "from-file"]);
    assert_eq!(json_of(&out)["versions"][0]["value"], from_file.as_str());
    let out = vkv(&["--server", &a, "update", "from-file", "--file", file]);
    assert!(out.status.success(), "update takes --file too: {}", text(&out.stderr));

    let out = vkv(&["--server", &a, "put", "empty", ""]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&vkv(&["--server", &a, "get", "empty"]).stdout), "\"\"  clock [1]\n");
    assert_eq!(text(&vkv(&["--server", &a, "get", "empty", "--value-only"]).stdout), "\n");
    // A value that would drive the terminal is shown escaped; --value-only gives its bytes.
    let hostile = "a\u{1b}[31mred\nline2";
    assert!(vkv(&["--server", &a, "put", "hostile", hostile]).status.success());
    assert_eq!(text(&vkv(&["--server", &a, "get", "hostile"]).stdout), "\"a\\u{1b}[31mred\\nline2\"  clock [1]\n");
    assert_eq!(text(&vkv(&["--server", &a, "get", "hostile", "--value-only"]).stdout), format!("{hostile}\n"));
    // Under --json a usage error names what is missing.
    let json = json_failure(&vkv(&["--server", &a, "--json", "get"]), 2);
    assert!(json["error"].as_str().unwrap().contains("<KEY>"), "{json}");
    let out = vkv(&["--server", &a, "get", "absent", "--value-only"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing on stdout for a missing key");

    // Bad input: both a value and a file, no value at all, a missing file, a file that is not UTF-8.
    let not_utf8 = dir.path().join("bytes.bin");
    std::fs::write(&not_utf8, [0xff, 0xfe, 0x00]).unwrap();
    let not_utf8 = not_utf8.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["put", "k", "v", "--file", file], "cannot be used with"),
        (&["put", "k"], "required"),
        (&["put", "k", "--file", "/nonexistent/vkv-value"], "cannot read the value"),
        (&["put", "k", "--file", not_utf8], "not UTF-8"),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = ["--server", a.as_str()].iter().copied().chain(args.iter().copied()).collect();
        let out = vkv(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(needle), "{args:?}: {}", text(&out.stderr));
        let args: Vec<&str> = ["--json"].iter().copied().chain(args.iter().copied()).collect();
        let json = json_failure(&vkv(&args), 2);
        assert!(json["error"].as_str().unwrap().contains(needle), "{args:?}: {json}");
    }
    let out = vkv(&["--server", &a, "get", "k"]);
    assert_eq!(out.status.code(), Some(1), "none of the bad puts wrote anything");
}

/// `--context` takes what `get` prints (`1,0`) and what `--json` prints (`[1,0]`, with spaces);
/// anything else is exit 2 before a request is sent.
#[test]
fn contexts_are_accepted_in_both_printed_forms() {
    let (_dir, cluster, _rt) = start_cluster(1);
    let a = cluster.address(1);
    assert!(vkv(&["--server", &a, "put", "k", "v1"]).status.success());
    let json = json_of(&vkv(&["--server", &a, "--json", "get", "k"]));
    let printed = json["context"].to_string();
    assert_eq!(printed, "[1]");
    for (context, next) in [(printed.as_str(), "2"), ("2", "3"), (" [ 3 ] ", "4")] {
        let out = vkv(&["--server", &a, "put", "k", "v", "--context", context]);
        assert!(out.status.success(), "--context {context:?}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(&format!("clock [{next}]")), "{}", text(&out.stdout));
    }
    for garbage in ["[4", "4]", "x", "", "4;0", "[[4]]", "-4"] {
        let flag = format!("--context={garbage}");
        let out = vkv(&["--server", &a, "put", "k", "v", &flag]);
        assert_eq!(out.status.code(), Some(2), "{flag:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("--context"), "{}", text(&out.stderr));
        json_failure(&vkv(&["--server", &a, "--json", "put", "k", "v", &flag]), 2);
    }
    let out = vkv(&["--server", &a, "get", "k"]);
    assert_eq!(text(&out.stdout), "v  clock [4]\n", "no garbage context wrote anything");
}

/// `VKV_SERVER` is the default for `--server`; a comma-separated list (flag or env) moves to the
/// next endpoint only when the connection fails — an answer, even a 404 from something that is
/// not vkv, is the answer. Connection errors name the cause and give a hint; under `--json`
/// every failure is one object.
#[test]
fn server_env_failover_and_what_is_not_vkv() {
    let (_dir, cluster, _rt) = start_cluster(1);
    let live = cluster.address(1);
    let dead = dead_address();

    let out = vkv_with(&["put", "k", "from-env"], &[("VKV_SERVER", &live)], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let both = format!("{dead},{live}");
    let out = vkv_with(&["get", "k"], &[("VKV_SERVER", &both)], b"");
    assert_eq!(text(&out.stdout), "from-env  clock [1]\n", "failover from the dead endpoint: {}", text(&out.stderr));
    let out = vkv(&["--server", &both, "put", "k", "from-flag"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("clock [2]"), "written once: {}", text(&out.stdout));

    // --server wins over VKV_SERVER; a refused connection says so, with the hint.
    let out = vkv_with(&["--server", &dead, "get", "k"], &[("VKV_SERVER", &live)], b"");
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    assert!(err.contains(&format!("is a replica running at {dead}?")) && err.contains("VKV_SERVER"), "{err}");
    let json = json_failure(&vkv(&["--server", &format!("{dead},{dead}"), "--json", "get", "k"]), 3);
    assert!(json["cause"].as_str().unwrap().to_lowercase().contains("connection refused"), "{json}");
    assert!(json["hint"].as_str().unwrap().contains("scripts/cluster.sh start"), "{json}");
    let out = vkv(&["--server", "no-such-host.invalid:7000", "get", "k"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("dns error"), "{}", text(&out.stderr));

    // A plain-text 404 is not vkv: exit 3 with that message, and no failover (it answered).
    let (fake, server) = plain_404_server(2);
    let first_fake = format!("{fake},{live}");
    let out = vkv(&["--server", &first_fake, "get", "k"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains(&format!("{fake} is not a vkv server (an error answer without vkv's JSON)")),
        "{}",
        text(&out.stderr)
    );
    let json = json_failure(&vkv(&["--server", &first_fake, "--json", "status"]), 3);
    assert!(json["error"].as_str().unwrap().contains("is not a vkv server"), "{json}");
    assert_eq!(server.join().unwrap(), 2, "both requests went to the fake, none to the live replica");

    // The other outcomes under --json: not found (1), rejected (2), conflict (4).
    let json = json_failure(&vkv(&["--server", &live, "--json", "get", "absent"]), 1);
    assert_eq!(json["context"], serde_json::json!([0]), "{json}");
    let json = json_failure(&vkv(&["--server", &live, "--json", "put", "k", "v", "--context", "1,1"]), 2);
    assert_eq!(json["status"], 400, "{json}");
    let json = json_failure(&vkv(&["--server", &live, "--json", "put", "k", "v", "--context", "1"]), 4);
    assert_eq!(json["versions"][0]["value"], "from-flag", "{json}");
    json_failure(&vkv(&["--server", &live, "--json", "put", "", "v"]), 2);
    json_failure(&vkv(&["--server", "ftp://x", "--json", "get", "k"]), 2);
    json_failure(&vkv(&["--server", &live, "--json", "frobnicate"]), 2);
    let json = json_failure(&vkv(&["--json"]), 2);
    assert!(json["error"].as_str().unwrap().contains("requires a subcommand"), "{json}");
}

/// `vkv list` pages through every key (any page size), one escaped key per line, so a key with a
/// newline stays on one line; `--prefix` filters; deleted keys are left out; `--json` is one
/// object with every key.
#[test]
fn list_streams_every_page() {
    let (_dir, cluster, rt) = start_cluster(1);
    let a = cluster.address(1);
    let client = cluster.client(1);
    let mut keys: Vec<String> = (0..23).map(|i| format!("p/{i:02}")).collect();
    keys.extend(["a\nb".to_string(), "sp ace".to_string(), "quote\"d".to_string(), "é".to_string()]);
    rt.block_on(async {
        for key in &keys {
            client.put(key, "v", None).await.unwrap();
        }
        client.put("gone", "v", None).await.unwrap();
        client.delete("gone", None).await.unwrap();
    });
    keys.sort();
    let escaped: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    for page_size in ["1", "4", "1000"] {
        let out = vkv(&["--server", &a, "list", "--page-size", page_size]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).lines().collect::<Vec<_>>(), escaped, "page size {page_size}");
    }
    let out = vkv(&["--server", &a, "list", "--prefix", "p/1", "--page-size", "3"]);
    let want: Vec<String> = (10..20).map(|i| format!("\"p/{i}\"")).collect();
    assert_eq!(text(&out.stdout).lines().collect::<Vec<_>>(), want);
    let json = json_of(&vkv(&["--server", &a, "--json", "list", "--page-size", "5"]));
    assert_eq!(json, serde_json::json!({ "keys": keys }));
    let json = json_of(&vkv(&["--server", &a, "--json", "list", "--prefix", "nothing"]));
    assert_eq!(json, serde_json::json!({ "keys": [] }));
    for bad in ["0", "10001", "x"] {
        let out = vkv(&["--server", &a, "list", "--page-size", bad]);
        assert_eq!(out.status.code(), Some(2), "--page-size {bad}");
        json_failure(&vkv(&["--server", &a, "--json", "list", "--page-size", bad]), 2);
    }
}

/// Three replicas. `status --cluster` lists every member up (exit 0), then with two stopped shows
/// them down (exit 3) while plain `status` still exits 0 and prints UNREACHABLE. A write with
/// `--w 3` then is durable at replica 1 but not replicated enough: exit 5 with its clock. Concurrent
/// writes at replicas 1 and 2 make siblings: `get --value-only` exits 4 with the conflict on stderr.
#[test]
fn cluster_status_quorum_shortfall_and_siblings() {
    let (_dir, mut cluster, rt) = start_cluster(3);
    let (a1, a2) = (cluster.address(1), cluster.address(2));
    let out = vkv(&["--server", &a1, "status", "--cluster"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let table = text(&out.stdout);
    assert_eq!(table.lines().filter(|l| l.contains(" up ")).count(), 3, "{table}");
    assert!(table.contains("all 3 members up") && table.contains("2:0 3:0"), "{table}");
    let json = json_of(&vkv(&["--server", &a2, "--json", "status", "--cluster"]));
    let states: Vec<&str> = json["members"].as_array().unwrap().iter().map(|m| m["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["up", "up", "up"], "{json}");
    assert_eq!(json["members"][2]["address"], cluster.address(3), "{json}");

    cluster.stop(2, Stop::Clean).unwrap();
    cluster.stop(3, Stop::Crash).unwrap();
    let out = vkv(&["--server", &a1, "status"]);
    assert_eq!(out.status.code(), Some(0), "plain status answers: exit 0");
    assert_eq!(text(&out.stdout).matches("UNREACHABLE").count(), 2, "{}", text(&out.stdout));
    let out = vkv(&["--server", &a1, "status", "--cluster"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout).lines().filter(|l| l.contains(" down ")).count(), 2, "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("2 of 3 members not up: replica 2 down, replica 3 down"),
        "{}",
        text(&out.stderr)
    );
    let json = json_failure(&vkv(&["--server", &a1, "--json", "status", "--cluster"]), 3);
    assert_eq!(json["members"][1]["state"], "down", "{json}");
    assert_eq!(json["members"][0]["state"], "up", "{json}");

    let out = vkv(&["--server", &a1, "put", "q", "v", "--w", "3"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("written (clock [1, 0, 0]), but not replicated enough"),
        "{}",
        text(&out.stderr)
    );
    let json = json_failure(&vkv(&["--server", &a1, "--json", "put", "q", "v2", "--w", "3"]), 5);
    assert_eq!((json["written"].clone(), json["clock"].clone()), (Value::Bool(true), serde_json::json!([2, 0, 0])));
    assert_eq!(text(&vkv(&["--server", &a1, "get", "q"]).stdout), "v2  clock [2, 0, 0]\n", "durable at replica 1");

    // Siblings: "a" at replica 1 while 2 is down, then "b" at replica 2 while 1 is down.
    assert!(vkv(&["--server", &a1, "put", "s", "a"]).status.success());
    cluster.stop(1, Stop::Clean).unwrap();
    cluster.start(2).unwrap();
    rt.block_on(cluster.wait_healthy(2, Duration::from_secs(10))).unwrap();
    assert!(vkv(&["--server", &a2, "put", "s", "b"]).status.success());
    cluster.start(1).unwrap();
    cluster.start(3).unwrap();
    rt.block_on(cluster.wait_all_healthy(Duration::from_secs(10))).unwrap();
    let mut versions = 0;
    for _ in 0..200 {
        let out = vkv(&["--server", &a1, "--json", "get", "s"]);
        versions = json_of(&out)["versions"].as_array().map_or(0, Vec::len);
        if versions == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(versions, 2, "the two writes never met at replica 1");
    let out = vkv(&["--server", &a1, "get", "s", "--value-only"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(out.stdout.is_empty(), "no value printed: {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("CONFLICT: key \"s\" has 2 concurrent versions") && err.contains("--context 1,1,0"), "{err}");
    let json = json_failure(&vkv(&["--server", &a1, "--json", "get", "s", "--value-only"]), 4);
    assert_eq!(json["versions"].as_array().unwrap().len(), 2, "{json}");
    let out = vkv(&["--server", &a1, "get", "s"]);
    assert_eq!(out.status.code(), Some(0), "a plain get shows the siblings and succeeds");
    let out = vkv(&["--server", &a1, "status", "--cluster"]);
    assert!(out.status.success(), "every member back up: {}{}", text(&out.stdout), text(&out.stderr));

    // A refused conditional delete says how to delete what it missed; `delete --w` waits.
    let out = vkv(&["--server", &a1, "delete", "s", "--context", "0,0,0"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("to delete them too, run: vkv delete 's' --context 1,1,0"),
        "{}",
        text(&out.stdout)
    );
    let out = vkv(&["--server", &a1, "delete", "s", "--context", "1,1,0", "--w", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(vkv(&["--server", &a1, "get", "s"]).status.code(), Some(1), "deleted");
}

/// A replica started on an empty data dir while its peer is down stays recovering: plain
/// `status` says RECOVERING (exit 0), `status --cluster` shows it recovering and the peer down (exit 3).
#[test]
fn status_shows_a_recovering_replica() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::new(SERVER, free_ports(2).unwrap(), dir.path());
    cluster.start(1).unwrap();
    let a1 = cluster.address(1);
    let mut out = vkv(&["--server", &a1, "status"]);
    for _ in 0..200 {
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
        out = vkv(&["--server", &a1, "status"]);
    }
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("RECOVERING"), "{}", text(&out.stdout));
    let out = vkv(&["--server", &a1, "status", "--cluster"]);
    assert_eq!(out.status.code(), Some(3));
    let table = text(&out.stdout);
    assert!(table.lines().any(|l| l.starts_with("1 ") && l.contains(" recovering ")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("2 ") && l.contains(" down ")), "{table}");
    assert!(text(&out.stderr).contains("replica 1 recovering, replica 2 down"), "{}", text(&out.stderr));
}

/// A server address needs its port: a replica has no default one, and `127.0.0.1` alone would
/// silently mean port 80.
#[test]
fn a_server_address_without_a_port_is_a_usage_error() {
    for server in ["127.0.0.1", "http://localhost", "[::1]", "127.0.0.1:7000,localhost"] {
        let out = vkv(&["--server", server, "get", "k"]);
        assert_eq!(out.status.code(), Some(2), "{server}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("expected host:port"), "{server}: {}", text(&out.stderr));
    }
}
