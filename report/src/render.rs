//! From measured data to the report: `data/summary.json`, `figures/*.png` and `REPORT.md`.
//!
//! Size: every number of the report is computed here from the raw data, next to the sentence that
//! quotes it, so that no figure is written by hand.
//!
//! Every number in the report is computed here from the raw data of a [`Run`]
//! (`data/raw.json`), so `vkv-report render` can rebuild the report from a run's data alone
//! (the GCP scripts fetch each VM's data and render it the same way).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::measure::{OpSamples, Results};
use crate::plots::{self, BarGroup, Points};
use crate::regions::Region;

/// Everything one study measured: the input of the renderer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// True on the simulated WAN, false on real VMs.
    pub simulated: bool,
    /// True for `--quick` (fewer samples).
    pub quick: bool,
    /// When it ran (UTC, RFC 3339).
    pub date: String,
    /// Wall time of the whole run, in seconds.
    pub duration_s: f64,
    /// The regions, in replica order.
    pub regions: Vec<Region>,
    /// Where the configured RTTs come from.
    pub rtt_source: String,
    /// When they were published.
    pub rtt_date: String,
    /// Configured RTT, `rtt_ms[a][b]`.
    pub rtt_ms: Vec<Vec<f64>>,
    /// RTT measured by pinging through the network (the emulator, or the VMs), `[a][b]`.
    pub rtt_measured_ms: Option<Vec<Vec<f64>>>,
    /// The region taken down in phase 4.
    pub down_region: String,
    /// Updates per second per client in the conflict phase.
    pub conflict_rate: f64,
    /// Time between two writes of one origin in the replication-lag phase, in ms.
    pub lag_interval_ms: f64,
    /// The measurements on the WAN.
    pub wan: Results,
    /// The same measurements with no delay at all, for comparison.
    pub baseline: Option<Results>,
}

/// p50, p95, p99 of some samples (nearest rank), in the samples' unit.
pub fn percentiles(samples: &[f64]) -> Option<(f64, f64, f64)> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    Some((at(0.50), at(0.95), at(0.99)))
}

fn ms(samples_us: &[u64]) -> Vec<f64> {
    samples_us.iter().map(|&u| u as f64 / 1000.0).collect()
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Summary statistics of one operation stream.
#[derive(Debug, Clone)]
struct OpStat {
    region: String,
    replica: String,
    op: String,
    level: usize,
    samples: usize,
    failures: usize,
    p50: f64,
    p95: f64,
    p99: f64,
}

fn op_stats(ops: &[OpSamples]) -> Vec<OpStat> {
    ops.iter()
        .filter_map(|o| {
            let (p50, p95, p99) = percentiles(&ms(&o.samples_us))?;
            Some(OpStat {
                region: o.region.clone(),
                replica: o.replica.clone(),
                op: o.op.clone(),
                level: o.level,
                samples: o.samples_us.len(),
                failures: o.failures,
                p50,
                p95,
                p99,
            })
        })
        .collect()
}

fn op_json(s: &OpStat) -> Value {
    json!({"region": s.region, "replica": s.replica, "op": s.op, "level": s.level, "samples": s.samples,
           "failures": s.failures, "p50_ms": round(s.p50), "p95_ms": round(s.p95), "p99_ms": round(s.p99)})
}

/// Replication lag per (origin, destination): lag samples in ms.
fn lags(r: &Results) -> BTreeMap<(String, String), Vec<f64>> {
    let acked: BTreeMap<(&str, usize), u64> =
        r.lag_writes.iter().map(|w| ((w.origin.as_str(), w.index), w.acked_at_us)).collect();
    let mut out: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for s in &r.lag_seen {
        if let Some(&a) = acked.get(&(s.origin.as_str(), s.index)) {
            out.entry((s.origin.clone(), s.at.clone())).or_default().push((s.seen_at_us as f64 - a as f64) / 1000.0);
        }
    }
    out
}

/// Conflict phase per unordered pair (both sides added up).
#[derive(Debug, Clone, Default)]
struct PairConflicts {
    updates: usize,
    acked: usize,
    conflicts_409: usize,
    sibling_reads: usize,
    reads: usize,
    lost: usize,
}

fn pair_conflicts(r: &Results, names: &[String]) -> BTreeMap<(usize, usize), PairConflicts> {
    let index = |n: &str| names.iter().position(|x| x == n);
    let mut out: BTreeMap<(usize, usize), PairConflicts> = BTreeMap::new();
    for side in &r.conflicts {
        let (Some(a), Some(b)) = (index(&side.region), index(&side.peer)) else { continue };
        let e = out.entry((a.min(b), a.max(b))).or_default();
        e.updates += side.updates;
        e.acked += side.acked;
        e.conflicts_409 += side.conflicts_409;
        e.sibling_reads += side.sibling_reads;
        e.reads += side.reads;
        e.lost += side.lost;
    }
    out
}

fn pct(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

struct View<'a> {
    run: &'a Run,
    names: Vec<String>,
    ops: Vec<OpStat>,
    lag: BTreeMap<(String, String), Vec<f64>>,
    conflicts: BTreeMap<(usize, usize), PairConflicts>,
    down: Vec<OpStat>,
    base_ops: Vec<OpStat>,
    base_lag: BTreeMap<(String, String), Vec<f64>>,
    base_conflicts: BTreeMap<(usize, usize), PairConflicts>,
}

impl<'a> View<'a> {
    fn new(run: &'a Run) -> View<'a> {
        let names: Vec<String> = run.regions.iter().map(|r| r.name.clone()).collect();
        let empty = Results::default();
        let base = run.baseline.as_ref().unwrap_or(&empty);
        View {
            ops: op_stats(&run.wan.latency),
            lag: lags(&run.wan),
            conflicts: pair_conflicts(&run.wan, &names),
            down: op_stats(&run.wan.down),
            base_ops: op_stats(&base.latency),
            base_lag: lags(base),
            base_conflicts: pair_conflicts(base, &names),
            names,
            run,
        }
    }

    fn n(&self) -> usize {
        self.names.len()
    }

    /// The index of a region by name.
    fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|x| x == name)
    }

    /// The indexes of a pair of regions by name (the lag data is keyed by names).
    fn pair(&self, a: &str, b: &str) -> Option<(usize, usize)> {
        Some((self.index(a)?, self.index(b)?))
    }

    fn levels(&self) -> Vec<usize> {
        let n = self.n();
        let mut l = vec![1, n / 2 + 1, n];
        l.dedup();
        l
    }

    fn op<'b>(ops: &'b [OpStat], region: &str, replica: &str, op: &str, level: usize) -> Option<&'b OpStat> {
        ops.iter().find(|s| s.region == region && s.replica == replica && s.op == op && s.level == level)
    }

    fn near(&self, region: &str, op: &str, level: usize) -> Option<&OpStat> {
        Self::op(&self.ops, region, region, op, level)
    }

    fn rtt(&self, a: usize, b: usize) -> f64 {
        self.run.rtt_ms[a][b]
    }

    /// The other regions of `a`, nearest first.
    fn by_distance(&self, a: usize) -> Vec<usize> {
        let mut o: Vec<usize> = (0..self.n()).filter(|&b| b != a).collect();
        o.sort_by(|&x, &y| self.rtt(a, x).total_cmp(&self.rtt(a, y)));
        o
    }
}

/// Writes `summary.json`, the figures and `REPORT.md` under `out`, and `raw.json` (the run).
pub fn render(run: &Run, out: &Path) -> Result<(), String> {
    let (data, figures) = (out.join("data"), out.join("figures"));
    for dir in [&data, &figures] {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    let raw = serde_json::to_string(run).map_err(|e| e.to_string())?;
    write(&data.join("raw.json"), raw)?;
    let view = View::new(run);
    let summary = summary(&view);
    write(&data.join("summary.json"), serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?)?;
    draw(&view, &figures)?;
    write(&out.join("REPORT.md"), markdown(&view))?;
    Ok(())
}

fn lag_json(lag: &BTreeMap<(String, String), Vec<f64>>, view: &View) -> Value {
    let mut out = serde_json::Map::new();
    for ((a, b), samples) in lag {
        let Some((ia, ib)) = view.pair(a, b) else { continue };
        if let Some((p50, p95, p99)) = percentiles(samples) {
            out.insert(
                format!("{a}->{b}"),
                json!({"p50": round(p50), "p95": round(p95), "p99": round(p99), "samples": samples.len(),
                       "one_way_ms": round(view.rtt(ia, ib) / 2.0)}),
            );
        }
    }
    Value::Object(out)
}

fn conflicts_json(c: &BTreeMap<(usize, usize), PairConflicts>, view: &View) -> Value {
    c.iter()
        .map(|(&(a, b), p)| {
            json!({"a": view.names[a], "b": view.names[b], "rtt_ms": view.rtt(a, b), "updates": p.updates,
                   "acked": p.acked, "conflicts_409": p.conflicts_409, "reads": p.reads,
                   "sibling_reads": p.sibling_reads, "lost": p.lost,
                   "conflicts_409_per_100_updates": round(pct(p.conflicts_409, p.updates)),
                   "sibling_read_percent": round(pct(p.sibling_reads, p.reads))})
        })
        .collect()
}

fn summary(view: &View) -> Value {
    let run = view.run;
    let mut rtt = serde_json::Map::new();
    let mut measured = serde_json::Map::new();
    for a in 0..view.n() {
        for b in 0..view.n() {
            let key = format!("{}->{}", view.names[a], view.names[b]);
            rtt.insert(key.clone(), json!(view.rtt(a, b)));
            if let Some(m) = &run.rtt_measured_ms {
                measured.insert(key, json!(round(m[a][b])));
            }
        }
    }
    let near: Vec<Value> = view.ops.iter().filter(|s| s.region == s.replica).map(op_json).collect();
    let far: Vec<Value> = view.ops.iter().filter(|s| s.region != s.replica).map(op_json).collect();
    let baseline = run.baseline.as_ref().map(|_| {
        json!({
            "ops": view.base_ops.iter().filter(|s| s.region == s.replica).map(op_json).collect::<Vec<_>>(),
            "far_ops": view.base_ops.iter().filter(|s| s.region != s.replica).map(op_json).collect::<Vec<_>>(),
            "replication_lag_ms": lag_json(&view.base_lag, view),
            "conflicts": conflicts_json(&view.base_conflicts, view),
        })
    });
    json!({
        "simulated": run.simulated,
        "quick": run.quick,
        "date": run.date,
        "duration_s": round(run.duration_s),
        "regions": view.names,
        "rtt_source": run.rtt_source,
        "rtt_date": run.rtt_date,
        "rtt_ms": rtt,
        "rtt_measured_ms": if run.rtt_measured_ms.is_some() { Value::Object(measured) } else { Value::Null },
        "ops": near,
        "far_ops": far,
        "replication_lag_ms": lag_json(&view.lag, view),
        "conflicts": conflicts_json(&view.conflicts, view),
        "region_down": {
            "region": run.down_region,
            "ops": view.down.iter().map(op_json).collect::<Vec<_>>(),
            "catch_up": run.wan.catch_up,
        },
        "baseline": baseline,
    })
}

fn short(name: &str) -> String {
    name.replace("australia-", "au-").replace("northeast", "ne").replace("southeast", "se")
}

fn draw(view: &View, dir: &Path) -> Result<(), String> {
    // 1. Latency per region and level, PUT and GET, p50 bars with p99 markers.
    let levels = view.levels();
    let series: Vec<String> = levels.iter().map(|l| format!("w/r = {l}")).collect();
    let mut panels = Vec::new();
    for op in ["put", "get"] {
        let groups = view
            .names
            .iter()
            .map(|r| BarGroup {
                label: short(r),
                bars: levels
                    .iter()
                    .map(|&l| view.near(r, op, l).map_or((0.0, None), |s| (s.p50, Some(s.p99))))
                    .collect(),
            })
            .collect();
        panels.push((format!("{} at the region's own replica", op.to_uppercase()), groups));
    }
    let names: Vec<&str> = series.iter().map(String::as_str).collect();
    plots::grouped_bars(
        &dir.join("latency.png"),
        "Client latency by region and consistency level (p50 bars)",
        "ms",
        &names,
        Some("p99"),
        &panels,
    )?;

    // 2. Replication lag vs one-way latency: p50 and p99 per directed pair.
    let (points, p99): (Vec<_>, Vec<_>) = view
        .lag
        .iter()
        .filter_map(|((a, b), s)| {
            let (ia, ib) = view.pair(a, b)?;
            let (p50, _, p99) = percentiles(s)?;
            let x = view.rtt(ia, ib) / 2.0;
            Some(((x, p50, String::new()), (x, p99, String::new())))
        })
        .unzip();
    plots::scatter(
        &dir.join("replication_lag.png"),
        "Replication lag (origin's ack → visible at the other region) vs one-way latency",
        "configured one-way latency of the pair (ms)",
        "lag (ms)",
        &[Points { name: "p50 per directed pair".into(), points }, Points { name: "p99".into(), points: p99 }],
        Some((1.0, "lag = one-way latency")),
    )?;

    // 3. Conflicts vs RTT.
    let siblings: Vec<(f64, f64, String)> = view
        .conflicts
        .iter()
        .map(|(&(a, b), p)| (view.rtt(a, b), pct(p.sibling_reads, p.reads), String::new()))
        .collect();
    let c409: Vec<(f64, f64, String)> = view
        .conflicts
        .iter()
        .map(|(&(a, b), p)| (view.rtt(a, b), pct(p.conflicts_409, p.updates), String::new()))
        .collect();
    plots::scatter(
        &dir.join("conflicts.png"),
        "Concurrent read-modify-write from two regions: conflicts vs the pair's RTT",
        "RTT between the two regions (ms)",
        "%",
        &[
            Points { name: "reads that returned siblings (%)".into(), points: siblings },
            Points { name: "409s per 100 updates".into(), points: c409 },
        ],
        None,
    )?;

    // 4. Region down: w=3 put p50 before / during.
    let majority = view.n() / 2 + 1;
    let groups: Vec<BarGroup> = view
        .names
        .iter()
        .filter(|r| **r != view.run.down_region)
        .map(|r| {
            let normal = view.near(r, "put", majority).map_or((0.0, None), |s| (s.p50, Some(s.p99)));
            let down = View::op(&view.down, r, r, "put", majority).map_or((0.0, None), |s| (s.p50, Some(s.p99)));
            BarGroup { label: short(r), bars: vec![normal, down] }
        })
        .collect();
    plots::grouped_bars(
        &dir.join("region_down.png"),
        &format!("PUT w={majority} with every region up vs with {} down (p50 bars)", view.run.down_region),
        "ms",
        &["all regions up", &format!("{} down", view.run.down_region)],
        Some("p99"),
        &[("".into(), groups)],
    )?;

    // 5. The WAN check: measured vs configured RTT.
    if let Some(m) = &view.run.rtt_measured_ms {
        let points: Vec<(f64, f64, String)> = (0..view.n())
            .flat_map(|a| (0..view.n()).map(move |b| (a, b)))
            .filter(|(a, b)| a < b)
            .map(|(a, b)| (view.rtt(a, b), m[a][b], String::new()))
            .collect();
        plots::scatter(
            &dir.join("wan_check.png"),
            "The simulated WAN: ping RTT through the emulator vs configured RTT",
            "configured RTT (ms)",
            "measured RTT (ms)",
            &[Points { name: "region pair".into(), points }],
            Some((1.0, "measured = configured")),
        )?;
    }
    Ok(())
}

fn f(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[allow(clippy::needless_range_loop)] // matrices read best as m[a][b]
fn markdown(view: &View) -> String {
    let run = view.run;
    let n = view.n();
    let majority = n / 2 + 1;
    let mut md = String::new();
    let kind = if run.simulated { "simulated WAN on one machine" } else { "real GCP VMs" };
    let _ = writeln!(md, "# vkv across five world regions: client latency, replication lag, conflicts, outages\n");
    if run.simulated {
        let _ = writeln!(
            md,
            "> **Every figure in this report is measured on a simulated WAN**: five real `vkv-server` processes and \
             real HTTP clients on one 2-core machine, with every byte between two \"regions\" delayed by the \
             configured one-way latency of that pair of GCP regions. No cloud VM was involved. The scripts in \
             `deploy/gcp/` run the same measurement code on real VMs; they were not run from here (no cloud access).\n"
        );
    }
    let _ = writeln!(
        md,
        "Generated by `cargo run --release -p vkv-report{}` on {} ({kind}; {:.0} s). Raw data: `data/raw.json`; \
         summary: `data/summary.json`.\n",
        if run.quick { " -- --quick" } else { "" },
        run.date,
        run.duration_s
    );

    // Setup.
    let _ = writeln!(md, "## Setup\n");
    let _ = writeln!(md, "| replica | region | where | client site |\n| --- | --- | --- | --- |");
    for (i, r) in run.regions.iter().enumerate() {
        let site = if run.simulated { format!("127.0.1.{}", i + 1) } else { r.zone.clone() };
        let _ = writeln!(md, "| {} | `{}` | {} | {site} |", i + 1, r.name, r.place);
    }
    let _ = writeln!(md, "\n**Round-trip times (ms)** configured between the regions (diagonal: within a region):\n");
    region_matrix(&mut md, "from \\ to", &view.names, |a, b| f(view.rtt(a, b)));
    let _ = writeln!(md, "\nSource: {} ({}).\n", run.rtt_source, run.rtt_date);
    if run.simulated {
        let _ = writeln!(
            md,
            "**How the WAN is simulated.** Region *i* is the loopback address 127.0.1.*i*. Replica *i* listens \
             on a private port of that address (`vkv-server --listen`), while the cluster knows it by another \
             port of the same address (`--host/--port`), where a delay proxy forwards every connection to it. \
             Its own connections to peers leave from its region's address (`--peer-source`), and each client \
             binds its region's address, so the proxy knows the sending region of every connection and holds \
             each chunk of bytes for the one-way latency of that pair (half the RTT) in each direction; a new \
             connection's first bytes also wait one RTT, as data waits for TCP's handshake. Nothing sleeps \
             inside `vkv-server`: it runs the production code path. Not modelled: bandwidth limits, loss, \
             jitter. Every replica fsyncs to the same disk, and the five replicas, the proxies and the clients \
             share two cores: absolute service times are this machine's, the network part is the WAN's.\n"
        );
    }
    if let Some(m) = &run.rtt_measured_ms {
        let mut worst: f64 = 0.0;
        let _ = writeln!(
            md,
            "**The WAN is real: pings through the emulator** (TCP, one byte echoed, median of 20, after the \
             connection is up) between every pair of region addresses, beside the configured RTT:\n"
        );
        let _ = writeln!(md, "| pair | configured ms | measured ms | error |\n| --- | ---: | ---: | ---: |");
        for a in 0..n {
            for b in a..n {
                let err = (m[a][b] - view.rtt(a, b)) / view.rtt(a, b) * 100.0;
                if a != b {
                    worst = worst.max(err.abs());
                }
                let _ = writeln!(
                    md,
                    "| {} ↔ {} | {} | {} | {:+.1}% |",
                    short(&view.names[a]),
                    short(&view.names[b]),
                    f(view.rtt(a, b)),
                    f(m[a][b]),
                    err
                );
            }
        }
        let _ = writeln!(
            md,
            "\nEvery inter-region pair is within {:.1}% of its configured RTT (the bar is ±10%); within a region the \
             measured RTT carries the proxy's own cost of about a tenth of a millisecond. Figure: \
             [`figures/wan_check.png`](figures/wan_check.png).\n",
            worst
        );
    }

    // Results: latency.
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "### 1. Client latency at the nearest replica\n\nEach client talks to its own region's replica; `w`/`r` \
         is how many replicas (this one included) must answer. Milliseconds, p50 / p95 / p99 over {} samples \
         per cell (after warm-up).\n",
        view.ops.iter().map(|s| s.samples).min().unwrap_or(0)
    );
    let levels = view.levels();
    level_header(&mut md, &levels);
    let cell =
        |s: Option<&OpStat>| s.map_or("–".to_string(), |s| format!("{} / {} / {}", f(s.p50), f(s.p95), f(s.p99)));
    for r in &view.names {
        let _ = write!(md, "| `{r}` |");
        for op in ["put", "get"] {
            for &l in &levels {
                let _ = write!(md, " {} |", cell(view.near(r, op, l)));
            }
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "\n![latency](figures/latency.png)\n");
    let _ = writeln!(
        md,
        "**A client that talks to a far replica** (the region farthest from it, `w`/`r` = 1):\n\n| client in | \
         replica in | RTT ms | PUT p50 / p95 / p99 | GET p50 / p95 / p99 |\n| --- | --- | ---: | ---: | ---: |"
    );
    for (i, r) in view.names.iter().enumerate() {
        let far = *view.by_distance(i).last().unwrap_or(&i);
        let fname = &view.names[far];
        let _ = writeln!(
            md,
            "| `{r}` | `{fname}` | {} | {} | {} |",
            f(view.rtt(i, far)),
            cell(View::op(&view.ops, r, fname, "put", 1)),
            cell(View::op(&view.ops, r, fname, "get", 1))
        );
    }
    if run.baseline.is_some() {
        let _ = writeln!(
            md,
            "\n**Baseline: the same measurements with no delay** (all five replicas in one \"region\", same machine, \
             same proxies with zero delay), p50 / p99 ms:\n"
        );
        level_header(&mut md, &levels);
        for r in &view.names {
            let _ = write!(md, "| `{r}` |");
            for op in ["put", "get"] {
                for &l in &levels {
                    let s = View::op(&view.base_ops, r, r, op, l);
                    let _ = write!(md, " {} |", s.map_or("–".into(), |s| format!("{} / {}", f(s.p50), f(s.p99))));
                }
            }
            let _ = writeln!(md);
        }
    }

    // Replication lag.
    let _ = writeln!(
        md,
        "\n### 2. Replication lag\n\nFrom the origin client's acknowledgement (a `w=1` write) to the first read \
         that returns the write at the other region's replica (polled every ~1 ms by that region's client). p50 \
         (p99) in ms; in brackets the configured one-way latency of the pair.\n"
    );
    region_matrix(&mut md, "origin \\ seen at", &view.names, |a, b| {
        if a == b {
            return "–".to_string();
        }
        match view.lag.get(&(view.names[a].clone(), view.names[b].clone())).and_then(|s| percentiles(s)) {
            Some((p50, _, p99)) => format!("{} ({}) [{}]", f(p50), f(p99), f(view.rtt(a, b) / 2.0)),
            None => "no data".into(),
        }
    });
    let _ = writeln!(md, "\n![replication lag](figures/replication_lag.png)\n");

    // Conflicts.
    let _ = writeln!(
        md,
        "### 3. Conflicts vs distance\n\nFor every pair of regions, one client in each adds elements to the same \
         {} keys at its own replica — a random key each time, {} updates per second on average (Poisson \
         arrivals), by read-modify-write with the context it read (a 409 is answered by merging the returned \
         versions and writing again). A read that returns siblings means two writes crossed on the WAN; a 409 \
         means a version arrived between a client's read and its write.\n",
        crate::measure::CONFLICT_KEYS,
        f(view.run.conflict_rate)
    );
    let _ = writeln!(
        md,
        "| pair | RTT ms | updates | reads with siblings | 409s per 100 updates | acknowledged elements lost |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    );
    let mut by_rtt: Vec<(&(usize, usize), &PairConflicts)> = view.conflicts.iter().collect();
    by_rtt.sort_by(|x, y| view.rtt(x.0 .0, x.0 .1).total_cmp(&view.rtt(y.0 .0, y.0 .1)));
    for (&(a, b), p) in &by_rtt {
        let _ = writeln!(
            md,
            "| {} ↔ {} | {} | {} | {:.1}% | {:.1} | {} |",
            short(&view.names[a]),
            short(&view.names[b]),
            f(view.rtt(a, b)),
            p.updates,
            pct(p.sibling_reads, p.reads),
            pct(p.conflicts_409, p.updates),
            p.lost
        );
    }
    let _ = writeln!(md, "\n![conflicts](figures/conflicts.png)\n");

    // Region down.
    let _ = writeln!(
        md,
        "### 4. One region down\n\nThe `{}` replica is stopped (SIGTERM). Each remaining region's client writes \
         with `w={majority}`; then the replica restarts and its region's client polls it until it holds every \
         write it missed.\n",
        run.down_region
    );
    let _ = writeln!(
        md,
        "| region | PUT w={majority} p50 / p99, all up | PUT w={majority} p50 / p99, {} down |\n| --- | ---: | ---: |",
        run.down_region
    );
    for r in view.names.iter().filter(|r| **r != run.down_region) {
        let up = view.near(r, "put", majority).map_or("–".into(), |s| format!("{} / {}", f(s.p50), f(s.p99)));
        let down = View::op(&view.down, r, r, "put", majority)
            .map_or("–".into(), |s| format!("{} / {}", f(s.p50), f(s.p99)));
        let _ = writeln!(md, "| `{r}` | {up} | {down} |");
    }
    for c in &run.wan.catch_up {
        let _ = writeln!(
            md,
            "\nCatch-up: `{}` held all {} writes it missed {} ms after it answered `/health` again{}.",
            c.region,
            c.keys,
            f(c.ms),
            if c.missing > 0 {
                format!(" — **{} still missing when the measurement gave up**", c.missing)
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(md, "\n![region down](figures/region_down.png)\n");

    let _ = writeln!(md, "## Insights\n");
    for line in insights(view) {
        let _ = writeln!(md, "- {line}");
    }
    let _ = writeln!(
        md,
        "\n## Reproduce\n\n- Simulated (this report): `cargo run --release -p vkv-report` (full) or `-- --quick`; \
         `--out DIR` writes elsewhere.\n- Real VMs: `deploy/gcp/run.sh --project P` creates five VMs in these \
         regions, runs the same measuring client (`vkv-report measure …`) on each, fetches the data and renders \
         this report from it (`vkv-report render`); `--dry-run` prints every command instead."
    );
    md
}

/// A table with a row and a column per region; `cell(a, b)` fills row `a`, column `b`.
fn region_matrix(md: &mut String, corner: &str, names: &[String], cell: impl Fn(usize, usize) -> String) {
    let _ = write!(md, "| {corner} |");
    for name in names {
        let _ = write!(md, " {} |", short(name));
    }
    let _ = write!(md, "\n| --- |{}\n", " ---: |".repeat(names.len()));
    for (a, name) in names.iter().enumerate() {
        let _ = write!(md, "| `{name}` |");
        for b in 0..names.len() {
            let _ = write!(md, " {} |", cell(a, b));
        }
        let _ = writeln!(md);
    }
}

/// The header of a table with a column per operation and level.
fn level_header(md: &mut String, levels: &[usize]) {
    let _ = write!(md, "| region |");
    for (op, knob) in [("PUT", "w"), ("GET", "r")] {
        for l in levels {
            let _ = write!(md, " {op} {knob}={l} |");
        }
    }
    let _ = writeln!(md, "\n| --- |{}", " ---: |".repeat(levels.len() * 2));
}

/// The insights, each computed from this run's numbers and pointing at its figure.
fn insights(view: &View) -> Vec<String> {
    let mut out = Vec::new();
    let n = view.n();
    let majority = n / 2 + 1;
    let w1: Vec<f64> = view.names.iter().filter_map(|r| view.near(r, "put", 1).map(|s| s.p50)).collect();
    if let (Some(lo), Some(hi)) = (w1.iter().copied().reduce(f64::min), w1.iter().copied().reduce(f64::max)) {
        let base: Vec<f64> =
            view.names.iter().filter_map(|r| View::op(&view.base_ops, r, r, "put", 1).map(|s| s.p50)).collect();
        let base = match (base.iter().copied().reduce(f64::min), base.iter().copied().reduce(f64::max)) {
            (Some(a), Some(b)) => {
                format!(", the same order as with no WAN at all ({}–{} ms in the baseline)", f(a), f(b))
            }
            _ => String::new(),
        };
        out.push(format!(
            "**`w=1` stays local everywhere.** A PUT acknowledged by the nearest replica alone costs {}–{} ms at p50 \
             in every region{base}: the intra-region round trip plus the replica's fsync, with no WAN link on its \
             path. Replication happens after the answer ([`figures/latency.png`](figures/latency.png)).",
            f(lo),
            f(hi),
        ));
    }
    // w=majority is set by the (majority-1)-th nearest peer.
    let mut rows = Vec::new();
    let mut worst_gap: f64 = 0.0;
    for (i, r) in view.names.iter().enumerate() {
        let order = view.by_distance(i);
        let Some(&kth) = order.get(majority - 2) else { continue };
        if let Some(s) = view.near(r, "put", majority) {
            let gap = s.p50 - view.rtt(i, kth);
            worst_gap = worst_gap.max(gap.abs());
            rows.push(format!("{} {} ms vs {} ms to `{}`", short(r), f(s.p50), f(view.rtt(i, kth)), view.names[kth]));
        }
    }
    if !rows.is_empty() {
        out.push(format!(
            "**`w={majority}` is set by the second-nearest other region.** The coordinator counts itself and waits \
             for {} peer acknowledgements, so its latency is the round trip to its {}-nearest peer plus a remote \
             fsync: p50 {} (every region within {} ms of that RTT). Which regions you pair with decides what a \
             majority costs ([`figures/latency.png`](figures/latency.png)).",
            majority - 1,
            if majority - 1 == 2 { "second" } else { "k-th" },
            rows.join("; "),
            f(worst_gap)
        ));
    }
    // Who pays most.
    let mut w_all: Vec<(String, f64)> =
        view.names.iter().filter_map(|r| view.near(r, "put", n).map(|s| (r.clone(), s.p50))).collect();
    w_all.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut w_maj: Vec<(String, f64)> =
        view.names.iter().filter_map(|r| view.near(r, "put", majority).map(|s| (r.clone(), s.p50))).collect();
    w_maj.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let (Some(top), Some(low), Some(maj_top), Some(maj_low)) =
        (w_all.first(), w_all.last(), w_maj.first(), w_maj.last())
    {
        let neighbours = |region: &str| {
            view.index(region).map_or(String::new(), |i| {
                let near = view.by_distance(i);
                near.iter()
                    .take(majority - 1)
                    .map(|&k| format!("`{}` at {} ms", view.names[k], f(view.rtt(i, k))))
                    .collect::<Vec<_>>()
                    .join(" and ")
            })
        };
        out.push(format!(
            "**Distance, not load, sets the price.** With `w={n}` every region waits for its farthest replica: \
             `{}` pays most ({} ms p50) and `{}` least ({} ms). With `w={majority}` the spread is {} ms in `{}`, \
             whose nearest peers are {}, to {} ms in `{}`, whose nearest are {}: a majority is cheap where a \
             region has close neighbours and dear where the second one is across an ocean \
             ([`figures/latency.png`](figures/latency.png)).",
            top.0,
            f(top.1),
            low.0,
            f(low.1),
            f(maj_low.1),
            maj_low.0,
            neighbours(&maj_low.0),
            f(maj_top.1),
            maj_top.0,
            neighbours(&maj_top.0)
        ));
    }
    // Tails: requests that paid one extra round trip.
    let mut slow = 0usize;
    let mut total = 0usize;
    let mut worst: Option<(String, f64, f64)> = None;
    for o in view.run.wan.latency.iter().filter(|o| o.region == o.replica && o.level == n) {
        let Some((p50, _, p99)) = percentiles(&ms(&o.samples_us)) else { continue };
        total += o.samples_us.len();
        slow += o.samples_us.iter().filter(|&&u| u as f64 / 1000.0 > 1.5 * p50).count();
        if worst.as_ref().is_none_or(|w| p99 / p50 > w.2 / w.1) {
            worst = Some((format!("{} {}", o.region, o.op.to_uppercase()), p50, p99));
        }
    }
    if let Some((what, p50, p99)) = worst.filter(|_| total > 0 && slow * 100 >= total) {
        out.push(format!(
            "**The tail is one extra round trip.** {:.1}% of `w={n}`/`r={n}` requests took more than 1.5× their p50 (worst: {what}, p50 {} ms, p99 {} ms), and the slow ones sit at about twice the p50 — the price of a TCP handshake to the farthest peer. That is what a coordinator pays when it cannot reuse a warm connection to a peer: one is busy with another request (the background sender shares the pool), or it was closed when a quorum read stopped waiting for a slower peer. Spare warm connections per peer, or multiplexing over one (HTTP/2), would cut this tail; the mechanism is inferred from the 2× shape, not traced ([`figures/latency.png`](figures/latency.png))",
            100.0 * slow as f64 / total as f64,
            f(p50),
            f(p99)
        ));
    }
    // Far replica.
    let mut far_rows = Vec::new();
    for (i, r) in view.names.iter().enumerate() {
        let far = *view.by_distance(i).last().unwrap_or(&i);
        if let Some(s) = View::op(&view.ops, r, &view.names[far], "get", 1) {
            far_rows.push((s.p50 / view.rtt(i, far), format!("{} → {}", short(r), short(&view.names[far]))));
        }
    }
    if let (Some(lo), Some(hi)) =
        (far_rows.iter().map(|x| x.0).reduce(f64::min), far_rows.iter().map(|x| x.0).reduce(f64::max))
    {
        out.push(format!(
            "**A client should talk to its own region's replica.** A client that reads `r=1` from the farthest \
             replica pays {:.2}–{:.2}× that pair's RTT per request — as much as a `w={n}` write at home — for no \
             stronger guarantee; every replica can coordinate any request (table in section 1).",
            lo, hi
        ));
    }
    // Replication lag vs one-way latency, split by whether writes came faster than one per RTT.
    let interval = view.run.lag_interval_ms;
    let (mut fast, mut slow) = (Vec::new(), Vec::new());
    for ((a, b), s) in &view.lag {
        let Some((ia, ib)) = view.pair(a, b) else { continue };
        if let Some((p50, _, _)) = percentiles(s) {
            let row = (p50 - view.rtt(ia, ib) / 2.0, format!("{} → {}", short(a), short(b)), view.rtt(ia, ib));
            // A round trip plus the receiver's work must fit between two writes for the
            // sender to be idle when the next one lands: 90% of the gap is taken as "fits".
            if view.rtt(ia, ib) < 0.9 * interval {
                fast.push(row);
            } else {
                slow.push(row);
            }
        }
    }
    if !fast.is_empty() {
        let lo = fast.iter().map(|e| e.0).fold(f64::INFINITY, f64::min);
        let hi = fast.iter().map(|e| e.0).fold(f64::NEG_INFINITY, f64::max);
        let mut text = format!(
            "**Replication lag is the one-way latency plus a few milliseconds — while writes to a peer come less \
             often than once per round trip.** With a write every {} ms per origin, pairs whose RTT is well below \
             that (under 90% of it) see the write {}–{} ms after the one-way latency at p50 (the receiver's fsync \
             and the poll's resolution).",
            f(interval),
            f(lo.max(0.0)),
            f(hi)
        );
        if !slow.is_empty() {
            let rows: Vec<String> =
                slow.iter().map(|e| format!("{} +{} ms (RTT {} ms)", e.1, f(e.0), f(e.2))).collect();
            let _ = write!(
                text,
                " Pairs whose RTT comes close to or exceeds the gap between writes lag more: {}. The sender to each peer keeps \
                 one batch in flight and waits for its acknowledgement (stop-and-wait), so a write that lands \
                 during a round trip waits for the next one: replication to a far peer carries at most one batch \
                 per RTT. Pipelining batches would bring these pairs back to the one-way latency.",
                rows.join(", ")
            );
        }
        text.push_str(" ([`figures/replication_lag.png`](figures/replication_lag.png))");
        out.push(text);
    }
    // Conflicts.
    if view.conflicts.len() >= 2 {
        let mut pts: Vec<(f64, f64, f64)> = view
            .conflicts
            .iter()
            .map(|(&(a, b), p)| (view.rtt(a, b), pct(p.sibling_reads, p.reads), pct(p.conflicts_409, p.updates)))
            .collect();
        pts.sort_by(|x, y| x.0.total_cmp(&y.0));
        let (first, last) = (pts[0], pts[pts.len() - 1]);
        let corr = correlation(&pts.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>());
        let lost: usize = view.conflicts.values().map(|p| p.lost).sum();
        let max409 = pts.iter().map(|p| p.2).fold(0.0, f64::max);
        out.push(format!(
            "**Conflict windows grow with distance.** Two regions updating the same keys see siblings in {:.1}% of \
             reads at {} ms RTT and {:.1}% at {} ms (correlation with RTT {:.2}): a write crosses the ocean for \
             one-way latency, and any write the other side makes in that window is concurrent. They surface as \
             siblings that the next read-modify-write merges, rarely as 409s (at most {:.1} per 100 updates), \
             because a client's read and write at its own replica are a millisecond apart; {} acknowledged \
             elements were lost ([`figures/conflicts.png`](figures/conflicts.png)).",
            first.1,
            f(first.0),
            last.1,
            f(last.0),
            corr,
            max409,
            lost
        ));
    }
    // Region down.
    let mut changes = Vec::new();
    for (i, r) in view.names.iter().enumerate() {
        if *r == view.run.down_region {
            continue;
        }
        if let (Some(up), Some(down)) = (view.near(r, "put", majority), View::op(&view.down, r, r, "put", majority)) {
            let order = view.by_distance(i);
            let lost_neighbour = order.iter().take(majority - 1).any(|&k| view.names[k] == view.run.down_region);
            changes.push((r.clone(), up.p50, down.p50, lost_neighbour));
        }
    }
    if !changes.is_empty() {
        let hit: Vec<String> =
            changes.iter().filter(|c| c.3).map(|c| format!("`{}` {} → {} ms", c.0, f(c.1), f(c.2))).collect();
        let unhurt: Vec<String> = changes.iter().filter(|c| !c.3).map(|c| format!("`{}`", c.0)).collect();
        let catch = view.run.wan.catch_up.first();
        let down_index = view.index(&view.run.down_region);
        let far_rtt = down_index.map_or(0.0, |d| (0..n).map(|b| view.rtt(d, b)).fold(0.0, f64::max));
        out.push(format!(
            "**A region outage costs latency only where that region was part of the quorum.** With `{}` down, \
             writes with `w={majority}` stay available everywhere (the {} others still form a majority); regions \
             that counted on it as one of their nearest peers pay for the next one ({}), the others ({}) see no \
             change. {} ([`figures/region_down.png`](figures/region_down.png)).",
            view.run.down_region,
            n - 1,
            if hit.is_empty() { "none here".into() } else { hit.join(", ") },
            if unhurt.is_empty() { "none".into() } else { unhurt.join(", ") },
            catch
                .map(|c| format!(
                    "When it returns it holds all {} writes it missed after {} ms, {:.1} round trips to its \
                     farthest peer ({} ms): as soon as it says hello, each peer's durable outbox ships its backlog \
                     in batches of at most {} keys, one batch per round trip — no rescan",
                    c.keys,
                    f(c.ms),
                    c.ms / far_rtt.max(1.0),
                    f(far_rtt),
                    vkv::protocol::MAX_BATCH_KEYS
                ))
                .unwrap_or_default()
        ));
    }
    if let Some(base) =
        view.names.iter().filter_map(|r| View::op(&view.base_ops, r, r, "put", n).map(|s| s.p50)).reduce(f64::max)
    {
        out.push(format!(
            "**Without the WAN everything is milliseconds.** In the no-delay baseline even `w={n}` costs at most {} \
             ms at p50 here (five fsyncs on one disk): on the WAN, the speed of light, not the store, sets every \
             latency above `w=1`.",
            f(base)
        ));
    }
    out
}

/// Pearson correlation of (x, y) points.
fn correlation(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let cov: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let (vx, vy): (f64, f64) =
        (points.iter().map(|p| (p.0 - mx).powi(2)).sum(), points.iter().map(|p| (p.1 - my).powi(2)).sum());
    if vx == 0.0 || vy == 0.0 {
        0.0
    } else {
        cov / (vx * vy).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentiles(&s), Some((50.0, 95.0, 99.0)));
        assert_eq!(percentiles(&[7.0]), Some((7.0, 7.0, 7.0)));
        assert_eq!(percentiles(&[]), None);
    }

    #[test]
    fn correlation_of_a_line_is_one() {
        assert!((correlation(&[(1.0, 2.0), (2.0, 4.0), (3.0, 6.0)]) - 1.0).abs() < 1e-9);
        assert!((correlation(&[(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]) + 1.0).abs() < 1e-9);
    }
}
