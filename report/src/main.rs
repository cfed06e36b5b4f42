//! `vkv-report`: the latency study — five regions, one replica and one client site each.
//!
//! Size: three subcommands (simulate, measure, render) and the setup and teardown of the simulated
//! deployment, which must clean up on every exit path.
//!
//! ```text
//! cargo run --release -p vkv-report                 # full study on the simulated WAN → report/
//! cargo run --release -p vkv-report -- --quick      # fewer samples, under 3 minutes
//! vkv-report measure --phase latency --region us-east1 --replicas us-east1=10.0.0.2:7000,…  # on a VM
//! vkv-report render --results DIR --out DIR         # the report from fetched data
//! ```
//!
//! Layout: `regions` (the data file: regions and RTTs) · `wan` (the delay proxies and pings) ·
//! `measure` (the measuring client, shared by the simulation and the GCP scripts) · `render`
//! (summary.json, REPORT.md) · `plots` (the figures).

mod measure;
mod plots;
mod regions;
mod render;
mod wan;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use vkv_testkit::{LocalCluster, LocalMember, Stop};

use measure::{Plan, Results, Site};
use regions::Regions;
use render::Run;

/// The vkv latency study: client latency, replication lag, conflicts and a region outage
/// across five world regions, on a simulated WAN (default) or real VMs (`measure`, `render`).
#[derive(Parser, Debug)]
#[command(name = "vkv-report", version)]
struct Args {
    /// Fewer samples (≥ 100 per operation and region): under 3 minutes.
    #[arg(long, global = true)]
    quick: bool,
    /// The regions and RTT matrix.
    #[arg(long, global = true, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/regions.json"))]
    regions: PathBuf,
    /// The region whose replica is stopped in the outage phase.
    #[arg(long, global = true, default_value = "us-east1")]
    down_region: String,
    /// Where REPORT.md, figures/ and data/ go.
    #[arg(long, global = true, default_value = env!("CARGO_MANIFEST_DIR"))]
    out: PathBuf,
    /// The vkv-server binary [default: next to this one, built first when run through cargo].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Skip the no-delay baseline.
    #[arg(long)]
    no_baseline: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    Ping,
    Latency,
    Lag,
    Conflicts,
    Down,
    CatchUp,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one phase of the measurement from one region against a running cluster (a GCP VM).
    Measure {
        /// The phase.
        #[arg(long, value_enum)]
        phase: Phase,
        /// This client's region.
        #[arg(long)]
        region: String,
        /// Every replica: region=host:port, comma-separated.
        #[arg(long, value_delimiter = ',')]
        replicas: Vec<String>,
        /// Wall-clock start of a scheduled phase (lag, conflicts), µs since the epoch [default: in 1 s].
        #[arg(long)]
        start_at_us: Option<u64>,
        /// Where to write the results (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// Render the report from the results files (JSON) in a directory, or again from a run's
    /// `data/raw.json`.
    Render {
        /// The directory of `measure` outputs.
        #[arg(long, required_unless_present = "raw", conflicts_with = "raw")]
        results: Option<PathBuf>,
        /// A previous run's `data/raw.json` (re-renders the same measurements).
        #[arg(long)]
        raw: Option<PathBuf>,
        /// When the measurement ran (free text for the report) [default: now].
        #[arg(long)]
        date: Option<String>,
    },
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("vkv-report: {message}");
    ExitCode::from(2)
}

fn now_rfc3339() -> String {
    let secs = measure::wall_us() / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("  {prefix:<28} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Runs one phase at every site at once and merges their results.
async fn at_every_site<F, Fut>(sites: &[Site], phase: F) -> Result<Results, String>
where
    F: Fn(Site) -> Fut,
    Fut: std::future::Future<Output = Result<Results, String>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for site in sites {
        tasks.spawn(phase(site.clone()));
    }
    let mut all = Results::default();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

/// One simulated deployment: the WAN, the five replicas behind it, and a site per region.
struct Deployment {
    cluster: LocalCluster,
    sites: Vec<Site>,
    echo: Vec<SocketAddr>,
    _wan: wan::Wan,
}

impl Deployment {
    async fn start(regions: &Regions, server: &Path, dir: &Path) -> Result<Deployment, String> {
        let n = regions.len();
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut wan = wan::Wan::new(regions.clone());
        let mut members = Vec::new();
        let mut echo = Vec::new();
        for i in 0..n {
            let ip = Regions::sim_ip(i);
            // The replica's private port: one the OS finds free on its region's address (ports
            // free on 127.0.0.1 may be held on 127.0.1.x by the peer connections of a previous
            // deployment). The proxies and echo servers bind port 0 themselves.
            let listen = std::net::TcpListener::bind(SocketAddr::new(ip, 0))
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("no free port on {ip}: {e}"))?;
            let advertised = wan.expose(i, listen).await.map_err(|e| format!("delay proxy on {ip}: {e}"))?;
            echo.push(wan.echo(i).await.map_err(|e| format!("echo on {ip}: {e}"))?);
            members.push(LocalMember {
                host: ip.to_string(),
                port: advertised.port(),
                listen: Some(listen),
                peer_source: Some(ip),
            });
        }
        let mut cluster = LocalCluster::with_members(server, members, dir, dir);
        cluster.start_all().map_err(|e| format!("cannot start the replicas: {e}"))?;
        cluster.wait_all_healthy(Duration::from_secs(60)).await?;
        let names = regions.names();
        let replicas: Vec<String> = (1..=n).map(|id| cluster.address(id)).collect();
        let sites = (0..n)
            .map(|i| Site {
                region: i,
                names: names.clone(),
                replicas: replicas.clone(),
                source: Some(Regions::sim_ip(i)),
                by_distance: regions.by_distance(i),
            })
            .collect();
        Ok(Deployment { cluster, sites, echo, _wan: wan })
    }

    /// Pings through the emulator between every pair of region addresses.
    async fn pings(&self, regions: &Regions) -> Result<Results, String> {
        let mut pings = tokio::task::JoinSet::new();
        for a in 0..regions.len() {
            for (b, &to) in self.echo.iter().enumerate() {
                let (from, to_name) = (regions.list[a].name.clone(), regions.list[b].name.clone());
                pings.spawn(async move {
                    let rtts = wan::ping(Regions::sim_ip(a), to, 20)
                        .await
                        .map_err(|e| format!("ping {from}→{to_name}: {e}"))?;
                    Ok::<_, String>(measure::Ping {
                        from,
                        to: to_name,
                        median_ms: measure::median_ms(&rtts),
                        samples: rtts.len(),
                    })
                });
            }
        }
        let mut results = Results::default();
        while let Some(done) = pings.join_next().await {
            results.pings.push(done.map_err(|e| e.to_string())??);
        }
        Ok(results)
    }

    /// Every phase, in order.
    async fn measure(&mut self, regions: &Regions, plan: Plan, down: usize, label: &str) -> Result<Results, String> {
        let n = regions.len();
        let mut all = self.pings(regions).await?;
        // 1. Latency.
        let streams_per_site = 8;
        let progress =
            Arc::new(bar((n * streams_per_site * (plan.samples + plan.warmup)) as u64, &format!("{label}: latency")));
        let tick = {
            let p = progress.clone();
            move || p.inc(1)
        };
        all.extend(
            at_every_site(&self.sites, |site| {
                let tick = tick.clone();
                async move { measure::latency(&site, plan, tick).await }
            })
            .await?,
        );
        progress.finish();
        // 2. Replication lag.
        let spinner = bar(1, &format!("{label}: replication lag"));
        let start = measure::wall_us() + 500_000;
        all.extend(
            at_every_site(&self.sites, |site| async move { measure::replication_lag(&site, plan, start).await })
                .await?,
        );
        spinner.finish();
        // 3. Conflicts.
        let spinner = bar(1, &format!("{label}: conflicts"));
        let max_rtt =
            (0..n).flat_map(|a| (0..n).map(move |b| (a, b))).map(|(a, b)| regions.rtt_ms(a, b)).fold(0.0, f64::max);
        let settle = Duration::from_secs(2) + Duration::from_secs_f64(max_rtt / 1000.0);
        let start = measure::wall_us() + 500_000;
        all.extend(
            at_every_site(&self.sites, |site| async move { measure::conflicts(&site, plan, start, settle).await })
                .await?,
        );
        spinner.finish();
        // 4. One region down, then back.
        let spinner = bar(1, &format!("{label}: region down"));
        self.cluster.stop(down + 1, Stop::Clean).map_err(|e| format!("stopping the {down} replica: {e}"))?;
        let others: Vec<Site> = self.sites.iter().filter(|s| s.region != down).cloned().collect();
        let mut tasks = tokio::task::JoinSet::new();
        for site in others {
            tasks.spawn(async move { measure::down_latency(&site, plan).await });
        }
        let mut keys = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (results, written) = done.map_err(|e| e.to_string())??;
            all.extend(results);
            keys.extend(written);
        }
        self.cluster.start(down + 1).map_err(|e| format!("restarting replica {}: {e}", down + 1))?;
        self.cluster.wait_healthy(down + 1, Duration::from_secs(60)).await?;
        let since = Instant::now();
        all.extend(measure::catch_up(&self.sites[down], keys, since, Duration::from_secs(60)).await?);
        spinner.finish();
        Ok(all)
    }
}

fn matrix(results: &Results, regions: &Regions) -> Option<Vec<Vec<f64>>> {
    let n = regions.len();
    let mut m = vec![vec![f64::NAN; n]; n];
    for p in &results.pings {
        if let (Some(a), Some(b)) = (regions.index(&p.from), regions.index(&p.to)) {
            m[a][b] = p.median_ms;
        }
    }
    // A matrix needs every pair; symmetric pairs are averaged.
    if m.iter().flatten().any(|x| x.is_nan()) {
        return None;
    }
    Some((0..n).map(|a| (0..n).map(|b| (m[a][b] + m[b][a]) / 2.0).collect()).collect())
}

fn plan(args: &Args) -> Plan {
    if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    }
}

fn base_run(regions: &Regions, args: &Args, simulated: bool) -> Run {
    let n = regions.len();
    Run {
        simulated,
        quick: args.quick,
        date: now_rfc3339(),
        duration_s: 0.0,
        regions: regions.list.clone(),
        rtt_source: regions.source.clone(),
        rtt_date: regions.date.clone(),
        rtt_ms: (0..n).map(|a| (0..n).map(|b| regions.rtt_ms(a, b)).collect()).collect(),
        rtt_measured_ms: None,
        down_region: args.down_region.clone(),
        conflict_rate: plan(args).conflict_rate,
        lag_interval_ms: plan(args).lag_interval.as_secs_f64() * 1000.0,
        wan: Results::default(),
        baseline: None,
    }
}

async fn simulate(args: &Args, regions: Regions, down: usize) -> Result<(), String> {
    let started = Instant::now();
    let plan = plan(args);
    let server = match &args.server_bin {
        Some(p) => p.clone(),
        None => vkv_testkit::server_binary()?,
    };
    let work = PathBuf::from("vkv-data/report");
    println!(
        "vkv-report: {} study on the simulated WAN; replicas' data and logs in {}",
        if args.quick { "quick" } else { "full" },
        work.display()
    );
    let mut run = base_run(&regions, args, true);

    let mut deployment = Deployment::start(&regions, &server, &work.join("wan")).await?;
    run.wan = deployment.measure(&regions, plan, down, "WAN").await?;
    run.rtt_measured_ms = matrix(&run.wan, &regions);
    drop(deployment);
    if !args.no_baseline {
        let flat = regions.without_delay();
        let mut deployment = Deployment::start(&flat, &server, &work.join("baseline")).await?;
        run.baseline = Some(deployment.measure(&flat, plan, down, "no delay").await?);
        drop(deployment);
    }
    run.duration_s = started.elapsed().as_secs_f64();
    render::render(&run, &args.out)?;
    println!("vkv-report: {} written in {:.0} s", args.out.join("REPORT.md").display(), run.duration_s);
    Ok(())
}

fn site_from_flags(regions: &Regions, region: &str, replicas: &[String]) -> Result<Site, String> {
    let me =
        regions.index(region).ok_or_else(|| format!("--region {region}: not in {}", regions.names().join(", ")))?;
    let mut addresses = vec![String::new(); regions.len()];
    for entry in replicas {
        let (name, address) =
            entry.split_once('=').ok_or_else(|| format!("--replicas: {entry:?} is not region=host:port"))?;
        let i = regions.index(name).ok_or_else(|| format!("--replicas: unknown region {name:?}"))?;
        addresses[i] = address.to_string();
    }
    if let Some(i) = addresses.iter().position(String::is_empty) {
        return Err(format!("--replicas: no address for {}", regions.list[i].name));
    }
    Ok(Site {
        region: me,
        names: regions.names(),
        replicas: addresses,
        source: None,
        by_distance: regions.by_distance(me),
    })
}

async fn measure_one(
    args: &Args,
    regions: &Regions,
    phase: Phase,
    site: Site,
    start: Option<u64>,
    out: &Path,
) -> Result<(), String> {
    let plan = plan(args);
    let start = start.unwrap_or_else(|| measure::wall_us() + 1_000_000);
    let max_rtt = (0..regions.len()).map(|b| regions.rtt_ms(site.region, b)).fold(0.0, f64::max);
    let results = match phase {
        Phase::Ping => measure::ping_replicas(&site, 20).await?,
        Phase::Latency => measure::latency(&site, plan, || {}).await?,
        Phase::Lag => measure::replication_lag(&site, plan, start).await?,
        Phase::Conflicts => {
            measure::conflicts(&site, plan, start, Duration::from_secs(2) + Duration::from_secs_f64(max_rtt / 500.0))
                .await?
        }
        Phase::Down => measure::down_latency(&site, plan).await?.0,
        Phase::CatchUp => {
            // The keys every other region wrote while this one was down (down_latency's names).
            let keys = regions
                .names()
                .iter()
                .filter(|r| **r != regions.names()[site.region])
                .flat_map(|r| (0..plan.down_samples).map(move |i| format!("down/{r}/{i}")))
                .collect();
            // Started right after its replica: time the catch-up from when it answers /health.
            let client = vkv::client::Client::new(&site.replicas[site.region]).map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !client.healthy().await {
                if Instant::now() > deadline {
                    return Err(format!("the {} replica is not healthy after 120 s", regions.names()[site.region]));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            measure::catch_up(&site, keys, Instant::now(), Duration::from_secs(120)).await?
        }
    };
    let text = serde_json::to_string(&results).map_err(|e| e.to_string())?;
    std::fs::write(out, text).map_err(|e| format!("cannot write {}: {e}", out.display()))
}

fn render_from(args: &Args, regions: &Regions, dir: &Path, date: Option<String>) -> Result<(), String> {
    let mut run = base_run(regions, args, false);
    if let Some(date) = date {
        run.date = date;
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut files = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let results: Results = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            run.wan.extend(results);
            files += 1;
        }
    }
    if files == 0 {
        return Err(format!("no results (*.json) in {}", dir.display()));
    }
    run.rtt_measured_ms = matrix(&run.wan, regions);
    render::render(&run, &args.out)?;
    println!("vkv-report: {} written from {files} result files", args.out.join("REPORT.md").display());
    Ok(())
}

fn rerender(raw: &Path, out: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(raw).map_err(|e| format!("cannot read {}: {e}", raw.display()))?;
    let run: Run = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", raw.display()))?;
    render::render(&run, out)?;
    println!("vkv-report: {} rendered again from {}", out.join("REPORT.md").display(), raw.display());
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let regions = match Regions::load(&args.regions) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let Some(down) = regions.index(&args.down_region) else {
        return fail(format!("--down-region {}: not in {}", args.down_region, regions.names().join(", ")));
    };
    let outcome = match &args.command {
        None => {
            if let Err(e) = plots::load_font() {
                return fail(e);
            }
            // On ctrl-c or SIGTERM the study is dropped, and with it the replicas it started.
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => return fail(format!("cannot watch SIGTERM: {e}")),
            };
            tokio::select! {
                r = simulate(&args, regions, down) => r,
                _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
                _ = term.recv() => Err("terminated".into()),
            }
        }
        Some(Command::Measure { phase, region, replicas, start_at_us, out }) => {
            match site_from_flags(&regions, region, replicas) {
                Ok(site) => measure_one(&args, &regions, *phase, site, *start_at_us, out).await,
                Err(e) => return fail(e),
            }
        }
        Some(Command::Render { raw: Some(raw), .. }) => rerender(raw, &args.out),
        Some(Command::Render { results: Some(results), date, .. }) => {
            render_from(&args, &regions, results, date.clone())
        }
        Some(Command::Render { .. }) => Err("render needs --results DIR or --raw FILE".into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vkv-report: {e}");
            ExitCode::from(1)
        }
    }
}
