//! `vkv-bench` end to end, in a tiny configuration: it starts every target, measures, and writes
//! the JSON the issue specifies, with figures that are consistent with each other. (No timing
//! is asserted: the numbers themselves belong to the benchmark's own runs.)

use std::process::Command;

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_vkv-bench");

fn op(figures: &Value, what: &str) -> (f64, f64, f64) {
    let f = &figures[what];
    let num = |k: &str| f[k].as_f64().unwrap_or_else(|| panic!("{what}.{k} missing in {f}"));
    (num("rps"), num("p50_ms"), num("p99_ms"))
}

#[test]
fn a_small_bench_run_writes_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let output = Command::new(BENCH)
        .args(["--quick", "--seconds", "1", "--keys", "300", "--catchup-keys", "2000", "--connections", "8"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "vkv-bench failed:\n{stderr}");
    let figures: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let etcd_installed =
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("etcd").is_file()));
    let mut targets = vec!["ceiling", "vkv"];
    if etcd_installed {
        targets.push("etcd");
    } else {
        assert!(figures["etcd"].is_null(), "no etcd here, yet figures: {}", figures["etcd"]);
        assert!(stderr.contains("etcd is not installed"), "the skip must be said:\n{stderr}");
    }
    for target in targets {
        for what in ["put", "get"] {
            let (rps, p50, p99) = op(&figures[target], what);
            assert!(rps > 0.0 && p50 > 0.0 && p99 >= p50, "{target} {what}: {}", figures[target][what]);
            assert_eq!(figures[target][what]["errors"], 0, "{target} {what} had errors");
        }
    }
    let lag = &figures["replication_lag_ms"];
    let (p50, p99) = (lag["p50"].as_f64().unwrap(), lag["p99"].as_f64().unwrap());
    assert!(p50 > 0.0 && p99 >= p50, "lag: {lag}");
    assert!(lag["samples"].as_u64().unwrap() > 0, "lag: {lag}");
    assert!(figures["catchup_keys_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(figures["catchup"]["keys"], 2000);
    // The table on stdout has a row per target and operation.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("| PUT | vkv |") && stdout.contains("| GET | ceiling |"), "{stdout}");
}

#[test]
fn bad_flags_exit_2() {
    let output = Command::new(BENCH).args(["--connections", "0"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}
