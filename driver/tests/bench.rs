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
            // Where the CPU went: every process of the target, the generator and the box.
            let cpu = &figures[target][what]["cpu"];
            let by: Vec<f64> = cpu["us_per_request_by_process"]
                .as_array()
                .unwrap_or_else(|| panic!("{target} {what}: no CPU figures in {cpu}"))
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(by.len(), if target == "ceiling" { 1 } else { 5 }, "{target} {what}: {cpu}");
            assert!(cpu["us_per_request"].as_f64().unwrap() > 0.0, "{target} {what}: {cpu}");
            assert!(cpu["box_busy"].as_f64().unwrap() > 0.0, "{target} {what}: {cpu}");
            assert!(cpu["generator_us_per_request"].as_f64().unwrap() > 0.0, "{target} {what}: {cpu}");
            // Every 2xx answer counts, the warm-up's too: at least the measured ones.
            let measured = figures[target][what]["requests"].as_u64().unwrap();
            assert!(cpu["answered"].as_u64().unwrap() >= measured, "{target} {what}: {cpu}");
        }
    }
    // Replica 1 takes the client's writes, the four others merge them: every replica works for
    // a PUT, and replica 1 the most.
    let put_cpu = &figures["vkv"]["put"]["cpu"];
    let by: Vec<f64> =
        put_cpu["us_per_request_by_process"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(by.iter().all(|&us| us > 0.0 && us <= by[0]), "vkv put CPU by replica: {by:?}");
    let budget = &figures["put_cpu_budget"];
    if etcd_installed {
        let cores = std::thread::available_parallelism().unwrap().get() as f64;
        let per_write = budget["us_per_write_with_generator"].as_f64().unwrap();
        let vkv_and_generator =
            put_cpu["us_per_request"].as_f64().unwrap() + put_cpu["generator_us_per_request"].as_f64().unwrap();
        // The figures are rounded to 3 decimals: equal to a thousandth.
        let close = |a: f64, b: f64| (a / b - 1.0).abs() < 1e-3;
        assert!(close(per_write, vkv_and_generator), "{budget} against {put_cpu}");
        let most = budget["most_writes_per_s"].as_f64().unwrap();
        assert!(close(most, cores * 1e6 / per_write), "{budget}");
        let etcd_put = op(&figures["etcd"], "put").0;
        let allowed = budget["us_per_write_for_five_times_etcd"].as_f64().unwrap();
        assert!(close(allowed, cores * 1e6 / (5.0 * etcd_put)), "{budget}, etcd put {etcd_put} req/s");
    } else {
        assert!(budget.is_null(), "no etcd, no budget against it: {budget}");
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
    assert!(stdout.contains("CPU per request") && stdout.contains("| box busy |"), "{stdout}");
}

#[test]
fn bad_flags_exit_2() {
    let output = Command::new(BENCH).args(["--connections", "0"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}
