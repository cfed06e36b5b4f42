//! Runs the driver binary in local mode, as a user would, so CI fails when a scenario fails.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

const DRIVER: &str = env!("CARGO_BIN_EXE_vkv-driver");

/// The vkv-server built by the same `cargo test --workspace` invocation, next to the driver.
fn server_bin() -> PathBuf {
    let server = PathBuf::from(DRIVER).with_file_name("vkv-server");
    assert!(
        server.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds vkv-server too)",
        server.display()
    );
    server
}

/// A base port with `n` consecutive free ports after it, below the kernel's ephemeral range
/// (32768+) where other tests' `free_ports` draw from. `salt` keeps this file's tests apart.
fn free_range(n: u16, salt: u16) -> u16 {
    let start = 20000 + (std::process::id() % 500) as u16 * 20 + salt * 10;
    for base in (start..32000).step_by(n as usize + 3) {
        let all_free = (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}

/// Every scenario, with a short chaos phase, passes and is reported in the summary; the
/// transcript and the five replica logs are written.
#[test]
fn driver_runs_every_local_scenario_and_passes() {
    let logs = tempfile::tempdir().unwrap();
    let base = free_range(5, 0);
    let out = Command::new(DRIVER)
        .args(["--base-port", &base.to_string(), "--chaos-secs", "5", "--seed", "7", "--ae-keys", "500", "--logs"])
        .arg(logs.path())
        .arg("--server-bin")
        .arg(server_bin())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "driver failed:\n{stdout}\n{stderr}");
    for scenario in [
        "1 no conflict",
        "2 conflict",
        "3 conflict while offline",
        "4 dynamo D1-D5",
        "5 read-modify-write",
        "6 chaos",
        "8 anti-entropy",
    ] {
        assert!(stdout.contains(&format!("PASS  {scenario}")), "{scenario} missing from summary:\n{stdout}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    let transcript = std::fs::read_to_string(logs.path().join("driver.log")).unwrap();
    assert!(transcript.contains("acknowledged elements lost: 0"), "{transcript}");
    assert!(transcript.contains("figures: elements lost 0"), "{transcript}");
    assert!(transcript.contains("→ 409 CONFLICT"), "scenario 5 shows its refusals: {transcript}");
    for id in 1..=5 {
        let log = std::fs::read_to_string(logs.path().join(format!("replica-{id}.log"))).unwrap();
        assert!(log.contains(&format!("replica {id} of 5 starting")), "replica {id} log:\n{log}");
    }
    let log5 = std::fs::read_to_string(logs.path().join("replica-5.log")).unwrap();
    assert!(log5.contains("→ no conflict, updated"), "{log5}");
}

/// When the replicas cannot run, the driver says so and exits non-zero.
#[test]
fn driver_fails_when_the_cluster_cannot_start() {
    let logs = tempfile::tempdir().unwrap();
    let base = free_range(5, 1);
    let out = Command::new(DRIVER)
        .args(["--base-port", &base.to_string(), "--scenarios", "no-conflict", "--server-bin", "/bin/false", "--logs"])
        .arg(logs.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL") && stdout.contains("exited during startup"), "{stdout}");
}

/// Bad flags are refused with exit code 2.
#[test]
fn driver_rejects_bad_flags() {
    let out = Command::new(DRIVER).args(["--replicas", "3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(DRIVER)
        .args(["--scenarios", "partition", "--logs"])
        .arg(std::env::temp_dir().join("vkv-driver-flags"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--docker"));
}
