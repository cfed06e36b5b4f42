//! `vkv-bench`: vkv against the HTTP ceiling and etcd on this box, side by side, one command.
//!
//! Size: the orchestration (start, interleaved runs, printing); the load generator, the targets
//! and the vkv-only measurements live in `load`, `targets` and `phases`.
//!
//! ```text
//! cargo run --release -p vkv-driver --bin vkv-bench [-- --quick] [--growth] [--json FILE]
//! ```
//!
//! Starts on loopback the plain-axum ceiling (`vkv-ceiling`), a 5-replica vkv cluster and, when
//! `etcd` is installed, a 5-member etcd cluster; preloads each with the same keys; then runs
//! PUT and GET rounds, interleaved (ceiling, vkv, etcd; again), all with the same closed-loop
//! load generator and settings; then stops the ceiling and etcd and measures vkv's
//! replication lag, catch-up and (`--growth`) latency and disk use as the key count grows.
//! Exit codes: 0 done, 1 a target failed or a measurement could not be taken, 2 bad flags.

mod cpu;
mod load;
mod phases;
mod targets;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use vkv_testkit::LocalCluster;

use load::{Outcome, Settings};
use targets::Kind;

#[derive(Parser, Debug)]
#[command(about = "Benchmarks vkv against the plain-axum ceiling and etcd on this machine")]
struct Args {
    /// A short run (under 2 minutes): one round of 3 s per target and operation, smaller catch-up.
    #[arg(long)]
    quick: bool,
    /// Also measure latency and disk use at 10k, 100k and 1M keys (takes several minutes).
    #[arg(long)]
    growth: bool,
    /// Writes the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    connections: u64,
    /// Seconds measured per run (default 10; 3 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: Option<u64>,
    /// Rounds of interleaved runs (default 3; 1 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=20))]
    rounds: Option<u64>,
    /// Keys preloaded and used by the PUT/GET runs.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    value_bytes: u64,
    /// Keys a stopped replica misses before the catch-up measurement (default 100,000; 20,000 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    catchup_keys: Option<u64>,
    /// Skip etcd even if it is installed.
    #[arg(long)]
    no_etcd: bool,
    /// The vkv-server binary to measure (default: the one built beside this bench), e.g. an older
    /// build to compare with.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Keep logs and data here (default: a temporary directory, removed at the end).
    #[arg(long)]
    keep: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Put,
    Get,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

/// One target's merged outcome per operation, and its processes (whose CPU is measured).
struct Row {
    kind: Kind,
    pids: Vec<u32>,
    put: Option<Outcome>,
    get: Option<Outcome>,
}

impl Row {
    /// The merged outcome of `op`, once measured.
    fn outcome(&self, op: Op) -> Option<&Outcome> {
        if op == Op::Put {
            self.put.as_ref()
        } else {
            self.get.as_ref()
        }
    }
}

/// The row of target `kind` (absent: etcd not installed).
fn row_of(rows: &[(Row, SocketAddr)], kind: Kind) -> Option<&Row> {
    rows.iter().find(|(r, _)| r.kind == kind).map(|(r, _)| r)
}

fn figures(o: &Outcome) -> Value {
    let mut figures = json!({"rps": round(o.rps()), "p50_ms": round(o.ms(0.5)), "p99_ms": round(o.ms(0.99)),
           "p999_ms": round(o.ms(0.999)), "requests": o.ok.len(), "errors": o.errors});
    if let Some(cpu) = &o.cpu {
        figures["cpu"] = json!({
            "us_per_request": round(cpu.us_per_request()),
            "us_per_request_by_process": cpu.us_per_request_by_process().into_iter().map(round).collect::<Vec<_>>(),
            "generator_us_per_request": round(cpu.generator_us_per_request()),
            "box_busy": round(cpu.box_busy()),
            "answered": cpu.answered,
        });
    }
    figures
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One measured run of `op` against `kind` at `addr`, keys spread over `keys`.
async fn run(kind: Kind, op: Op, addr: SocketAddr, settings: Settings, keys: u64, bytes: usize) -> Outcome {
    let make: load::MakeRequest = match op {
        Op::Put => Arc::new(move |i| kind.put(addr, &phases::key("k", i % keys), &phases::value(i, bytes))),
        // A multiplicative hash spreads consecutive reads over the key space.
        Op::Get => Arc::new(move |i| kind.get(addr, &phases::key("k", i.wrapping_mul(2_654_435_761) % keys))),
    };
    load::run(addr, settings, make).await
}

fn check(what: &str, o: &Outcome) -> Result<(), String> {
    let total = o.ok.len() + o.errors;
    if o.errors * 100 > total {
        return Err(format!("{what}: {} of {total} requests failed; first: {:?}", o.errors, o.first_error));
    }
    Ok(())
}

async fn bench(args: Args, root: PathBuf) -> Result<Value, String> {
    let seconds = args.seconds.unwrap_or(if args.quick { 3 } else { 10 });
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 });
    let catchup_keys = args.catchup_keys.unwrap_or(if args.quick { 20_000 } else { 100_000 });
    let (bytes, keys, connections) = (args.value_bytes as usize, args.keys, args.connections as usize);
    let settings = Settings {
        connections,
        warmup: Duration::from_secs(if args.quick { 1 } else { 2 }),
        duration: Duration::from_secs(seconds),
        max_requests: None,
        rate: None,
    };
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;

    // Targets.
    let ceiling_port = vkv_testkit::free_ports(1).map_err(|e| e.to_string())?[0];
    let (ceiling_process, ceiling) = targets::start_ceiling(ceiling_port, &logs).await?;
    let server = match &args.server_bin {
        Some(path) => path.clone(),
        None => vkv_testkit::server_binary()?,
    };
    let ports = vkv_testkit::free_ports(5).map_err(|e| e.to_string())?;
    let mut cluster = LocalCluster::with_log_dir(server.clone(), ports, &root.join("vkv"), &logs);
    cluster.start_all().map_err(|e| format!("cannot start vkv: {e}"))?;
    cluster.wait_all_healthy(Duration::from_secs(30)).await?;
    let vkv: SocketAddr = cluster.address(1).parse().map_err(|e| format!("{e}"))?;
    let etcd_binary = if args.no_etcd { None } else { targets::etcd_binary() };
    let (etcd_processes, etcd) = match &etcd_binary {
        Some(binary) => {
            let (processes, addrs) = targets::start_etcd(binary, 5, &root.join("etcd"), &logs).await?;
            (Some(processes), Some(addrs[0]))
        }
        None => {
            if !args.no_etcd {
                eprintln!("etcd is not installed (apt-get install etcd-server): its rows are skipped");
            }
            (None, None)
        }
    };
    let row = |kind, pids| Row { kind, pids, put: None, get: None };
    let ids = |processes: &targets::Processes| processes.0.iter().map(std::process::Child::id).collect();
    let mut rows: Vec<(Row, SocketAddr)> = vec![(row(Kind::Ceiling, ids(&ceiling_process)), ceiling)];
    rows.push((row(Kind::Vkv, (1..=cluster.n()).filter_map(|id| cluster.pid(id)).collect()), vkv));
    if let (Some(processes), Some(addr)) = (&etcd_processes, etcd) {
        rows.push((row(Kind::Etcd, ids(processes)), addr));
    }

    // Same keys everywhere before any measured run.
    for (row, addr) in &rows {
        let started = Instant::now();
        let filled = phases::fill(row.kind, *addr, ("k", 0, keys), bytes, connections).await;
        check(&format!("preloading {}", row.kind.name()), &filled)?;
        eprintln!("preloaded {keys} keys into {} in {:.1}s", row.kind.name(), started.elapsed().as_secs_f64());
    }
    phases::drain(&cluster, Duration::from_secs(300)).await?;

    // Interleaved rounds.
    let mut drains = Vec::new();
    for r in 1..=rounds {
        for op in [Op::Put, Op::Get] {
            for (row, addr) in rows.iter_mut() {
                let meter = cpu::Meter::start(row.pids.clone());
                let mut outcome = run(row.kind, op, *addr, settings, keys, bytes).await;
                check(&format!("{} {}", row.kind.name(), op.name()), &outcome)?;
                eprintln!(
                    "round {r}/{rounds} {:>7} {}: {:>8.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
                    row.kind.name(),
                    op.name(),
                    outcome.rps(),
                    outcome.ms(0.5),
                    outcome.ms(0.99)
                );
                if row.kind == Kind::Vkv && op == Op::Put {
                    // Replication runs behind the writes; it must not spill into the next run.
                    let drained = phases::drain(&cluster, Duration::from_secs(300)).await?;
                    eprintln!("         vkv replication drained {:.2}s after the run", drained.as_secs_f64());
                    drains.push(drained.as_secs_f64());
                }
                // For vkv's PUTs, after the drain: their replication is what they cost the cluster.
                outcome.cpu = Some(meter.stop(outcome.answered));
                let slot = if op == Op::Put { &mut row.put } else { &mut row.get };
                match slot {
                    Some(merged) => merged.merge(outcome),
                    None => *slot = Some(outcome),
                }
            }
        }
    }

    // What follows measures vkv alone: the ceiling and etcd stop here, so an idle etcd's
    // heartbeats and disk writes do not share the two cores with the lag, catch-up and growth runs.
    drop(etcd_processes);
    drop(ceiling_process);

    // Replication lag at a steady 1,000 writes/s.
    let lag_seconds = if args.quick { 3 } else { 10 };
    // The machine's own stalls during the lag run, and then with the cluster idle (see
    // phases::StallProbe).
    let probe = phases::StallProbe::start();
    let (lag, lag_failed) =
        phases::replication_lag(&cluster, 1000.0, Duration::from_secs(lag_seconds), 5, bytes).await?;
    let lag_stalls = probe.finish();
    let lag_ms = |q: f64| round(load::ms(&lag, q));
    eprintln!(
        "replication lag at 1000 writes/s ({} samples): p50 {} ms, p99 {} ms, max {} ms",
        lag.len(),
        lag_ms(0.5),
        lag_ms(0.99),
        lag_ms(1.0)
    );
    phases::drain(&cluster, Duration::from_secs(300)).await?;
    let probe = phases::StallProbe::start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_stalls = probe.finish();
    let stalls = |h: &hdrhistogram::Histogram<u64>| {
        let ms = |q: f64| round(load::ms(h, q));
        let over_4ms = h.count_between(4_000, h.max().max(4_000));
        (
            json!({"wakeups": h.len(), "p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": ms(1.0), "over_4ms": over_4ms}),
            format!(
                "p50 {} ms, p99 {} ms, max {} ms, {over_4ms} of {} late by 4 ms or more",
                ms(0.5),
                ms(0.99),
                ms(1.0),
                h.len()
            ),
        )
    };
    let (idle_stalls, idle_text) = stalls(&idle_stalls);
    let (lag_stalls, lag_text) = stalls(&lag_stalls);
    eprintln!("a thread sleeping 1 ms woke up late by: during the lag run {lag_text}; idle cluster {idle_text}");

    // Catch-up.
    let catchup = phases::catch_up(&mut cluster, catchup_keys, bytes, connections).await?;
    eprintln!(
        "catch-up: {} keys in {:.2}s ({:.0} keys/s, {:.2}s of it starting up)",
        catchup.keys, catchup.seconds, catchup.keys_per_s, catchup.startup_seconds
    );

    let growth = if args.growth {
        // A fresh cluster, so the disk use compares with exactly the payload written.
        cluster.kill_all();
        let ports = vkv_testkit::free_ports(5).map_err(|e| e.to_string())?;
        let mut fresh =
            LocalCluster::with_log_dir(server.clone(), ports, &root.join("vkv-growth"), &root.join("logs-growth"));
        std::fs::create_dir_all(root.join("logs-growth")).map_err(|e| e.to_string())?;
        fresh.start_all().map_err(|e| format!("cannot start vkv: {e}"))?;
        fresh.wait_all_healthy(Duration::from_secs(30)).await?;
        Some(growth(&fresh, settings, bytes).await?)
    } else {
        None
    };

    print_table(&rows);
    let put_cpu_budget = print_cpu(&rows);
    let find = |k: Kind| row_of(&rows, k);
    let entry = |r: Option<&Row>| {
        r.map(|r| json!({"put": r.put.as_ref().map(figures), "get": r.get.as_ref().map(figures)}))
            .unwrap_or(Value::Null)
    };
    Ok(json!({
        "ceiling": entry(find(Kind::Ceiling)),
        "vkv": entry(find(Kind::Vkv)),
        "etcd": entry(find(Kind::Etcd)),
        "wakeup_late_ms": {"idle": idle_stalls, "lag_run": lag_stalls},
        "replication_lag_ms": {"p50": lag_ms(0.5), "p99": lag_ms(0.99), "p999": lag_ms(0.999),
                               "max": lag_ms(1.0), "samples": lag.len(), "failed_writes": lag_failed,
                               "writes_per_s": 1000},
        "catchup_keys_per_s": round(catchup.keys_per_s),
        "catchup": catchup,
        "replication_drain_s": drains,
        "put_cpu_budget": put_cpu_budget,
        "growth": growth,
        "settings": {"connections": connections, "seconds": seconds, "rounds": rounds, "keys": keys,
                     "value_bytes": bytes, "quick": args.quick},
        "machine": machine(),
    }))
}

/// Latency and disk use of replica 1 at 10k, 100k and 1M keys, on a cluster that holds nothing
/// else (disk: the blocks every file of replica 1's data dir takes, as `du` counts them, right
/// after the load and at rest — once the idle replica compacted its file; payload: the keys' and
/// values' bytes).
async fn growth(cluster: &LocalCluster, settings: Settings, bytes: usize) -> Result<Value, String> {
    let addr: SocketAddr = cluster.address(1).parse().map_err(|e| format!("{e}"))?;
    let mut points = Vec::new();
    let mut have = 0u64;
    for size in [10_000u64, 100_000, 1_000_000] {
        let started = Instant::now();
        let mut before = Vec::new();
        for id in 1..=cluster.n() {
            before.push(phases::counter(&cluster.address(id), "vkv_compactions_total").await?);
        }
        let filled = phases::fill(Kind::Vkv, addr, ("g", have, size - have), bytes, settings.connections).await;
        check("growth fill", &filled)?;
        have = size;
        phases::drain(cluster, Duration::from_secs(1800)).await?;
        eprintln!("growth: {size} keys loaded in {:.1}s", started.elapsed().as_secs_f64());
        // The latencies are measured on a settled cluster: a replica idle for its
        // --compact-idle-secs after the bulk load compacts its file, and would otherwise do so
        // in the middle of the runs below (the GET runs leave replicas 2-5 idle).
        let settling = Instant::now();
        for (id, compactions) in (1..=cluster.n()).zip(before) {
            phases::compacted(&cluster.address(id), compactions, Duration::from_secs(60)).await?;
        }
        eprintln!("growth: {size} keys settled (every replica compacted) in {:.1}s", settling.elapsed().as_secs_f64());
        let spread = move |i: u64| i.wrapping_mul(2_654_435_761) % size;
        let get = load::run(addr, settings, Arc::new(move |i| Kind::Vkv.get(addr, &phases::key("g", spread(i))))).await;
        let put = load::run(
            addr,
            settings,
            Arc::new(move |i| Kind::Vkv.put(addr, &phases::key("g", spread(i)), &phases::value(spread(i), bytes))),
        )
        .await;
        check("growth get", &get)?;
        check("growth put", &put)?;
        phases::drain(cluster, Duration::from_secs(1800)).await?;
        let (_, keys) = phases::backlog(&cluster.client(1)).await?;
        let payload: u64 = (0..size).map(|i| (phases::key("g", i).len() + bytes) as u64).sum();
        // Right after the load, then at rest: once replica 1 was idle for its
        // --compact-idle-secs (10 s by default) it compacts its file if that is worth it.
        let (loaded, _) = phases::disk_bytes(cluster.data_dir(1));
        let compactions = phases::counter(&cluster.address(1), "vkv_compactions_total").await?;
        let compacted = phases::compacted(&cluster.address(1), compactions, Duration::from_secs(60)).await?;
        let (disk, files) = phases::disk_bytes(cluster.data_dir(1));
        // What replica 1 says it did (how full its leaves were, how long it held the store).
        let compaction_line = std::fs::read_to_string(cluster.log_path(1))
            .ok()
            .and_then(|log| log.lines().rev().find(|l| l.contains("store compacted")).map(str::to_string));
        if let Some(line) = &compaction_line {
            eprintln!("growth {size}: replica 1 logged: {line}");
        }
        eprintln!(
            "growth {size}: GET p50 {:.2} ms, PUT p50 {:.2} ms, disk {:.1} MB at rest ({}; files {:.1} MB long), \
             {:.1} MB right after the load, for {:.1} MB payload ({:.2}x at rest, {:.2}x after the load)",
            get.ms(0.5),
            put.ms(0.5),
            disk as f64 / 1e6,
            if compacted { "compacted" } else { "not compacted within 60 s" },
            files as f64 / 1e6,
            loaded as f64 / 1e6,
            payload as f64 / 1e6,
            disk as f64 / payload as f64,
            loaded as f64 / payload as f64
        );
        points.push(json!({"keys": size, "replica_keys": keys, "get": figures(&get), "put": figures(&put),
                           "disk_bytes": disk, "file_bytes": files, "payload_bytes": payload,
                           "disk_over_payload": round(disk as f64 / payload as f64), "compacted": compacted,
                           "compaction_log": compaction_line,
                           "loaded_disk_bytes": loaded,
                           "loaded_disk_over_payload": round(loaded as f64 / payload as f64)}));
    }
    Ok(Value::Array(points))
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
    });
    json!({"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "cpu": cpu,
           "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string())})
}

fn print_table(rows: &[(Row, SocketAddr)]) {
    let get = |k: Kind, op: Op| row_of(rows, k).and_then(|r| r.outcome(op));
    println!();
    println!("| op | target | req/s | p50 ms | p99 ms | p99.9 ms | errors | vkv/ceiling | vkv/etcd |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for op in [Op::Put, Op::Get] {
        for (row, _) in rows {
            let Some(o) = get(row.kind, op) else { continue };
            let ratio = |base: Option<&Outcome>| match (row.kind, base) {
                (Kind::Vkv, Some(b)) => format!("{:.2}× req/s, {:.2}× p99", o.rps() / b.rps(), o.ms(0.99) / b.ms(0.99)),
                _ => String::new(),
            };
            println!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
                op.name().to_uppercase(),
                row.kind.name(),
                o.rps(),
                o.ms(0.5),
                o.ms(0.99),
                o.ms(0.999),
                o.errors,
                ratio(get(Kind::Ceiling, op)),
                ratio(get(Kind::Etcd, op)),
            );
        }
    }
}

/// Where each target's CPU went (see `cpu.rs`), and what vkv's PUT would need for 5× etcd's
/// rate on these cores.
fn print_cpu(rows: &[(Row, SocketAddr)]) -> Value {
    println!();
    println!("CPU per request, from /proc over each run (its warm-up included; vkv's PUT runs also");
    println!("until replication drained). By process: vkv's replica 1 (the one written to) first.");
    println!();
    println!("| op | target | µs per request | by process | load generator µs | box busy |");
    println!("|---|---|---:|---|---:|---:|");
    for op in [Op::Put, Op::Get] {
        for (row, _) in rows {
            let Some(cpu) = row.outcome(op).and_then(|o| o.cpu.as_ref()) else { continue };
            let by: Vec<String> = cpu.us_per_request_by_process().iter().map(|us| format!("{us:.1}")).collect();
            println!(
                "| {} | {} | {:.1} | {} | {:.1} | {:.0}% |",
                op.name().to_uppercase(),
                row.kind.name(),
                cpu.us_per_request(),
                by.join(", "),
                cpu.generator_us_per_request(),
                cpu.box_busy() * 100.0
            );
        }
    }
    let put = |k: Kind| row_of(rows, k).and_then(|r| r.outcome(Op::Put));
    let (Some(vkv), Some(etcd)) = (put(Kind::Vkv), put(Kind::Etcd)) else { return Value::Null };
    let Some(cpu) = &vkv.cpu else { return Value::Null };
    let cores = cpu::cores();
    let per_write = cpu.us_per_request() + cpu.generator_us_per_request();
    let most = if per_write > 0.0 { cores * 1e6 / per_write } else { 0.0 };
    let wanted = 5.0 * etcd.rps();
    let budget = cores * 1e6 / wanted;
    println!();
    println!(
        "vkv PUT: {:.1} µs of CPU per write (the 5 replicas) + {:.1} µs (the load generator): at that cost \
         {cores:.0} cores, fully busy with nothing else, could give at most {most:.0} writes/s. 5× etcd \
         ({wanted:.0}/s) would need at most {budget:.1} µs per write in all.",
        cpu.us_per_request(),
        cpu.generator_us_per_request(),
    );
    json!({"cores": cores, "us_per_write_with_generator": round(per_write), "most_writes_per_s": round(most),
           "five_times_etcd_per_s": round(wanted), "us_per_write_for_five_times_etcd": round(budget)})
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (root, _temp) = match &args.keep {
        Some(dir) => (dir.clone(), None),
        None => match tempfile::Builder::new().prefix("vkv-bench").tempdir() {
            Ok(t) => (t.path().to_path_buf(), Some(t)),
            Err(e) => {
                eprintln!("vkv-bench: cannot create a temporary directory: {e}");
                std::process::exit(1);
            }
        },
    };
    let json_path = args.json.clone();
    let started = Instant::now();
    match bench(args, root).await {
        Ok(figures) => {
            eprintln!("done in {:.0}s", started.elapsed().as_secs_f64());
            if let Some(path) = json_path {
                let text = serde_json::to_string_pretty(&figures).unwrap_or_default();
                if let Err(e) = std::fs::write(&path, text + "\n") {
                    eprintln!("vkv-bench: cannot write {}: {e}", path.display());
                    std::process::exit(1);
                }
            }
        }
        Err(e) => {
            eprintln!("vkv-bench: {e}");
            std::process::exit(1);
        }
    }
}
