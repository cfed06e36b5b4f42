//! The whole study, quick, as a user runs it (`vkv-report --quick --out DIR`), on real
//! `vkv-server` processes behind the simulated WAN. Checks what the report rests on: the
//! emulator delays every region pair by its configured RTT (±10%), every operation and region has
//! its samples, and the measured latencies respect what the network allows — nothing faster than
//! light. Takes about two minutes.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

#[test]
fn the_quick_study_measures_what_the_wan_allows_and_writes_the_report() {
    let out = tempfile::tempdir().unwrap();
    let server = Path::new(env!("CARGO_BIN_EXE_vkv-report")).with_file_name("vkv-server");
    assert!(server.exists(), "build vkv-server first (cargo build --workspace): {}", server.display());
    let run = Command::new(env!("CARGO_BIN_EXE_vkv-report"))
        .args(["--quick", "--out"])
        .arg(out.path())
        .arg("--server-bin")
        .arg(&server)
        .current_dir(out.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}\n{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    for file in [
        "REPORT.md",
        "data/summary.json",
        "data/raw.json",
        "figures/latency.png",
        "figures/replication_lag.png",
        "figures/conflicts.png",
        "figures/region_down.png",
        "figures/wan_check.png",
    ] {
        assert!(out.path().join(file).exists(), "{file} missing");
    }
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("data/summary.json")).unwrap()).unwrap();
    assert_eq!(s["simulated"], true);
    let regions: Vec<String> =
        s["regions"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
    assert_eq!(regions.len(), 5);

    // The WAN is what it claims: every inter-region ping within 10% of the configured RTT.
    for a in &regions {
        for b in regions.iter().filter(|b| *b != a) {
            let key = format!("{a}->{b}");
            let (want, got) = (f(&s["rtt_ms"][&key]), f(&s["rtt_measured_ms"][&key]));
            assert!((got - want).abs() <= 0.1 * want, "{key}: measured {got} ms, configured {want} ms");
        }
    }

    // Every region has PUT and GET at levels 1, 3, 5 with ≥ 100 samples; w=3/r=3 cannot beat
    // the round trip to the second-nearest other region, w=1 pays no WAN link.
    let ops = s["ops"].as_array().unwrap();
    for a in &regions {
        let mut rtts: Vec<f64> =
            regions.iter().filter(|b| *b != a).map(|b| f(&s["rtt_ms"][format!("{a}->{b}")])).collect();
        rtts.sort_by(f64::total_cmp);
        for op in ["put", "get"] {
            for level in [1, 3, 5] {
                let e = ops
                    .iter()
                    .find(|e| e["region"] == a.as_str() && e["op"] == op && e["level"] == level)
                    .unwrap_or_else(|| panic!("no {op} level {level} for {a}"));
                assert!(e["samples"].as_u64().unwrap() >= 100, "{e}");
                let p50 = f(&e["p50_ms"]);
                match level {
                    1 => assert!(p50 < rtts[0], "{a} {op} level 1 p50 {p50} ms crosses the WAN"),
                    3 => assert!(p50 >= rtts[1], "{a} {op} level 3 p50 {p50} ms < RTT {} to the 2nd-nearest", rtts[1]),
                    _ => assert!(p50 >= rtts[3], "{a} {op} level 5 p50 {p50} ms < RTT {} to the farthest", rtts[3]),
                }
            }
        }
    }

    // Replication lag: a p50 for all 20 directed pairs, never below the one-way latency.
    let lag = s["replication_lag_ms"].as_object().unwrap();
    assert_eq!(lag.len(), 20, "{lag:?}");
    for (pair, e) in lag {
        assert!(f(&e["p50"]) >= f(&e["one_way_ms"]), "{pair}: lag {e} below the one-way latency");
    }
    // Conflicts for the 10 pairs, nothing lost; a region outage and its catch-up.
    let conflicts = s["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 10);
    assert!(conflicts.iter().all(|c| c["lost"] == 0), "{conflicts:?}");
    assert_eq!(s["region_down"]["ops"].as_array().unwrap().len(), 4);
    assert_eq!(s["region_down"]["catch_up"][0]["missing"], 0, "{}", s["region_down"]);
    assert!(s["baseline"]["ops"].as_array().unwrap().len() >= 30);
    let report = std::fs::read_to_string(out.path().join("REPORT.md")).unwrap();
    assert!(report.contains("simulated WAN") && report.contains("## Insights"), "{report}");
}
