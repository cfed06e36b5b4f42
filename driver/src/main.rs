//! `vkv-driver`: spawns a vkv cluster, takes replicas offline and back, runs every scenario,
//! checks every claim it prints, and exits non-zero if any check failed.
//!
//! ```text
//! cargo run --release -p vkv-driver                       # local: 5 processes on 127.0.0.1:7000-7004
//! cargo run --release -p vkv-driver -- --docker           # the docker compose deployment
//! cargo run --release -p vkv-driver -- --logs logs/local  # regenerate the committed logs
//! ```

mod backend;
mod chaos;
mod report;
mod scenarios;
mod sets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use vkv_testkit::LocalCluster;

use backend::{Backend, Docker};
use report::Report;
use scenarios::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 1: the seed's no-conflict case (offline replica catches up).
    NoConflict,
    /// 2: the seed's conflict case (simultaneous writes, then resolution).
    Conflict,
    /// 3: a conflict made while a replica is offline.
    OfflineConflict,
    /// 4: Dynamo's D1–D5 shopping cart.
    Dynamo,
    /// 5: simultaneous read-modify-write at one replica: 409s, merges, nothing lost.
    ReadModifyWrite,
    /// 6: random crashes under a concurrent set workload, with Jepsen's set checker.
    Chaos,
    /// 7: a network partition (docker only).
    Partition,
    /// 8: keys no outbox remembers converge through anti-entropy (local only).
    AntiEntropy,
}

/// Runs the vkv scenarios against a local or docker cluster and checks every claim.
#[derive(Parser, Debug)]
#[command(name = "vkv-driver", version)]
struct Args {
    /// Number of replicas (at least 5).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(5..=64))]
    replicas: u16,
    /// Port of replica 1; replica i listens on base-port + i - 1.
    #[arg(long, default_value_t = 7000)]
    base_port: u16,
    /// Scenarios to run, comma-separated [default: all; partition only with --docker].
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Length of the chaos load phase, in seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    chaos_secs: u64,
    /// Concurrent clients in the chaos phase.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    chaos_clients: u64,
    /// Fail the chaos scenario unless at least this many writes were acknowledged.
    #[arg(long, default_value_t = 0)]
    min_acked_writes: u64,
    /// Keys the anti-entropy scenario makes replicas repair.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    ae_keys: u64,
    /// Seed for the chaos phase's random choices [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// Run against the docker compose deployment instead of local processes.
    #[arg(long)]
    docker: bool,
    /// The compose file for --docker.
    #[arg(long, default_value = "docker-compose.yml")]
    compose_file: PathBuf,
    /// Where to write the transcript and every replica's log [default: vkv-data/driver/MODE].
    #[arg(long)]
    logs: Option<PathBuf>,
    /// The vkv-server binary [default: next to this driver, built first when run through cargo].
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("vkv-driver: {message}");
    ExitCode::from(2)
}

async fn run_all(ctx: &mut Ctx, chosen: &[Scenario], args: &Args, seed: u64) -> Result<(), String> {
    for &s in chosen {
        let outcome = match s {
            Scenario::NoConflict => scenarios::no_conflict(ctx).await,
            Scenario::Conflict => scenarios::conflict(ctx).await,
            Scenario::OfflineConflict => scenarios::offline_conflict(ctx).await,
            Scenario::Dynamo => scenarios::dynamo(ctx).await,
            Scenario::ReadModifyWrite => scenarios::read_modify_write(ctx).await,
            Scenario::Chaos => {
                let cfg = chaos::ChaosConfig {
                    duration: Duration::from_secs(args.chaos_secs),
                    clients: args.chaos_clients as usize,
                    keys: 20,
                    seed,
                    min_acked: args.min_acked_writes as usize,
                };
                chaos::chaos(ctx, &cfg).await
            }
            Scenario::Partition => scenarios::partition(ctx).await,
            Scenario::AntiEntropy => scenarios::anti_entropy(ctx, args.ae_keys as usize).await,
        };
        if let Err(e) = outcome {
            ctx.report.check(false, format!("scenario {s:?} ran to the end"), e);
        }
        // Whatever a scenario left offline comes back before the next one.
        for id in 1..=ctx.up.len() {
            if !ctx.up[id - 1] {
                ctx.bring_up(id).await?;
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mode = if args.docker { "docker" } else { "local" };
    let logs = args.logs.clone().unwrap_or_else(|| PathBuf::from("vkv-data/driver").join(mode));
    if let Err(e) = std::fs::create_dir_all(&logs) {
        return fail(format!("cannot create {}: {e}", logs.display()));
    }
    for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|x| x == "log") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    match std::fs::File::create(logs.join("driver.log")) {
        Ok(f) => report::set_transcript(f),
        Err(e) => return fail(format!("cannot write {}: {e}", logs.join("driver.log").display())),
    }
    let n = args.replicas as usize;
    if args.base_port as usize + n - 1 > u16::MAX as usize {
        return fail("--base-port too high for that many replicas");
    }
    let mut chosen = args.scenarios.clone();
    if chosen.is_empty() {
        chosen = vec![
            Scenario::NoConflict,
            Scenario::Conflict,
            Scenario::OfflineConflict,
            Scenario::Dynamo,
            Scenario::ReadModifyWrite,
        ];
        if args.docker {
            chosen.push(Scenario::Partition);
        }
        chosen.push(Scenario::Chaos);
        if !args.docker {
            chosen.push(Scenario::AntiEntropy);
        }
    }
    if chosen.contains(&Scenario::Partition) && !args.docker {
        return fail("the partition scenario needs --docker");
    }
    if chosen.contains(&Scenario::AntiEntropy) && args.docker {
        return fail("the anti-entropy scenario opens a stopped replica's store: local mode only");
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    });

    let backend = if args.docker {
        if args.replicas != 5 || args.base_port != 7000 {
            return fail("--docker uses the compose file's 5 replicas on ports 7000-7004");
        }
        Backend::Docker(Docker::new(&args.compose_file, n, args.base_port))
    } else {
        let server = match args.server_bin.clone().map(Ok).unwrap_or_else(vkv_testkit::server_binary) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let data = logs.join("data");
        let _ = std::fs::remove_dir_all(&data);
        let ports: Vec<u16> = (0..n as u16).map(|i| args.base_port + i).collect();
        Backend::Local(
            LocalCluster::with_log_dir(server, ports, &data, &logs)
                .with_args(["--anti-entropy-secs", scenarios::DRIVER_AE_SECS]),
        )
    };
    let mut ctx = Ctx { backend, report: Report::default(), up: vec![true; n] };
    say!("vkv driver · {mode} mode · {n} replicas · logs in {}", logs.display());
    say!("scenarios: {chosen:?}");

    let outcome = tokio::select! {
        r = async {
            ctx.backend.start_all().await?;
            say!("all {n} replicas are healthy");
            run_all(&mut ctx, &chosen, &args, seed).await
        } => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted by ctrl-c".to_string()),
    };
    if let Err(e) = &outcome {
        ctx.report.check(false, "the cluster stayed operable", e);
    }
    if let Backend::Docker(_) = ctx.backend {
        for id in 1..=n {
            let text = ctx.backend.log_text(id).await;
            let _ = std::fs::write(logs.join(format!("replica-{id}.log")), text);
        }
    }
    ctx.backend.shutdown().await;
    if let Backend::Local(_) = ctx.backend {
        let _ = std::fs::remove_dir_all(logs.join("data"));
    }
    ctx.report.summary();
    say!("transcript and replica logs: {}", logs.display());
    if ctx.report.failures() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
