//! Scenario 5: concurrent clients against replicas that crash and restart at random, then a
//! checker that every acknowledged write survived and every replica converged.
//!
//! The checker's rule for "not lost": an acknowledged write (key, value, clock) is safe when the
//! final state of its key holds that exact version, or a version whose clock is *after* it (it was
//! causally superseded by a later write that had seen it). Anything else — missing, or only
//! concurrent versions left — is a lost acknowledged write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vkv::client::Client;
use vkv::clock::{Causality, VectorClock};
use vkv::local::Stop;
use vkv::versions::Version;

use crate::say;
use crate::scenarios::Ctx;

/// Settings of the chaos phase.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Length of the load-and-faults phase.
    pub duration: Duration,
    /// Concurrent client tasks.
    pub clients: usize,
    /// Keys the clients share (few keys → many conflicts).
    pub keys: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// The run must acknowledge at least this many writes (0: any number).
    pub min_acked: usize,
}

/// Upper bound on operations per client, whatever the duration.
const MAX_OPS_PER_CLIENT: u64 = 200_000;
/// Request timeout of the chaos clients (a paused replica answers nothing until resumed).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Share of faults that pause a replica (SIGSTOP) instead of crashing it (SIGKILL).
const PAUSE_SHARE: f64 = 0.25;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Crashed,
    Paused,
}

/// Time the cluster gets to converge after the faults stop.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Counters {
    attempted: AtomicU64,
    acked_writes: AtomicU64,
    reads: AtomicU64,
    failed: AtomicU64,
}

struct Acked {
    key: String,
    value: String,
    clock: VectorClock,
}

async fn client_task(
    me: usize,
    clients: Arc<Vec<Client>>,
    keys: usize,
    seed: u64,
    deadline: Instant,
    counters: Arc<Counters>,
) -> Vec<Acked> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut acked = Vec::new();
    for i in 0..MAX_OPS_PER_CLIENT {
        if Instant::now() >= deadline {
            break;
        }
        let replica = rng.random_range(0..clients.len());
        let client = &clients[replica];
        let key = format!("chaos-{}", rng.random_range(0..keys));
        counters.attempted.fetch_add(1, Ordering::Relaxed);
        let roll: f64 = rng.random();
        if roll < 0.3 {
            match client.get(&key).await {
                Ok(_) => counters.reads.fetch_add(1, Ordering::Relaxed),
                Err(_) => counters.failed.fetch_add(1, Ordering::Relaxed),
            };
            continue;
        }
        // Half the writes are read-modify-write with the context read; half are blind.
        let context = if roll < 0.65 {
            match client.get(&key).await {
                Ok(r) => r.map(|r| r.context),
                Err(_) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        } else {
            None
        };
        let value = format!("c{me}-{i}");
        match client.put(&key, &value, context).await {
            Ok(w) => {
                counters.acked_writes.fetch_add(1, Ordering::Relaxed);
                acked.push(Acked { key, value, clock: w.clock });
            }
            Err(_) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    acked
}

type State = BTreeMap<String, Vec<Version>>;

async fn snapshot(client: &Client, keys: usize) -> Result<State, String> {
    let mut state = State::new();
    for k in 0..keys {
        let key = format!("chaos-{k}");
        if let Some(r) = client.get(&key).await.map_err(|e| e.to_string())? {
            state.insert(key, r.versions);
        }
    }
    Ok(state)
}

async fn outboxes_empty(clients: &[Client]) -> bool {
    for c in clients {
        match c.status().await {
            Ok(s) if s.peers.iter().all(|p| p.outbox_depth == 0) => {}
            _ => return false,
        }
    }
    true
}

/// Restarts a crashed replica or resumes a paused one.
async fn heal(ctx: &mut Ctx, faults: &mut [Option<Fault>], id: usize) -> Result<(), String> {
    match faults[id - 1].take() {
        Some(Fault::Crashed) => {
            ctx.backend.start(id).await?;
            ctx.up[id - 1] = true;
        }
        Some(Fault::Paused) => ctx.backend.resume(id).await?,
        None => {}
    }
    Ok(())
}

/// Runs scenario 5.
pub async fn chaos(ctx: &mut Ctx, cfg: &ChaosConfig) -> Result<(), String> {
    let n = ctx.backend.n();
    ctx.report.scenario(
        "5 chaos",
        &format!(
            "{} clients read and write {} shared keys at random replicas for {:?} while replicas are
             killed (SIGKILL) or paused (SIGSTOP) and healed at random (at most two at once). Every acknowledged
             write is recorded. After the faults stop and the cluster settles, expect: 0 acknowledged
             writes lost, 0 replicas whose state differs. Seed {}.",
            cfg.clients, cfg.keys, cfg.duration, cfg.seed
        ),
    );
    // Short timeouts: a paused replica holds requests until they time out.
    let clients: Arc<Vec<Client>> = Arc::new(
        (1..=n)
            .map(|id| Client::with_timeout(&ctx.backend.address(id), CLIENT_TIMEOUT).expect("valid address"))
            .collect(),
    );
    let counters = Arc::new(Counters::default());
    let deadline = Instant::now() + cfg.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for me in 0..cfg.clients {
        tasks.spawn(client_task(
            me,
            clients.clone(),
            cfg.keys,
            cfg.seed.wrapping_add(me as u64 + 1),
            deadline,
            counters.clone(),
        ));
    }

    let bar = ProgressBar::new(cfg.duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("   chaos [{bar:30}] {elapsed}/{duration} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let ticking = Arc::new(AtomicBool::new(true));
    let ticker = {
        let (bar, counters, ticking) = (bar.clone(), counters.clone(), ticking.clone());
        let start = Instant::now();
        tokio::spawn(async move {
            while ticking.load(Ordering::Relaxed) {
                bar.set_position(start.elapsed().as_millis() as u64);
                bar.set_message(format!(
                    "ops {} · acked writes {} · failed {}",
                    counters.attempted.load(Ordering::Relaxed),
                    counters.acked_writes.load(Ordering::Relaxed),
                    counters.failed.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Faults: every 0.3–1 s, crash (SIGKILL) or pause (SIGSTOP) a replica while fewer than two
    // are faulted, or heal one (restart / SIGCONT).
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let (mut kills, mut pauses, mut heals) = (0u32, 0u32, 0u32);
    let mut faults: Vec<Option<Fault>> = vec![None; n];
    let mut fault_log = Vec::new();
    while Instant::now() + Duration::from_millis(300) < deadline {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1000))).await;
        let faulted: Vec<usize> = (1..=n).filter(|&id| faults[id - 1].is_some()).collect();
        let healthy: Vec<usize> = (1..=n).filter(|&id| faults[id - 1].is_none()).collect();
        if faulted.len() < 2 && (faulted.is_empty() || rng.random_bool(0.5)) {
            let id = healthy[rng.random_range(0..healthy.len())];
            // The first fault is always a crash, so every run exercises crash recovery however
            // short it is; pauses come after.
            if kills > 0 && rng.random_bool(PAUSE_SHARE) {
                ctx.backend.pause(id).await?;
                faults[id - 1] = Some(Fault::Paused);
                pauses += 1;
                fault_log.push(format!("pause {id}"));
            } else {
                ctx.backend.stop(id, Stop::Crash).await?;
                ctx.up[id - 1] = false;
                faults[id - 1] = Some(Fault::Crashed);
                kills += 1;
                fault_log.push(format!("kill {id}"));
            }
        } else {
            let id = faulted[rng.random_range(0..faulted.len())];
            heal(ctx, &mut faults, id).await?;
            heals += 1;
            fault_log.push(format!("heal {id}"));
        }
    }
    let mut acked = Vec::new();
    while let Some(done) = tasks.join_next().await {
        acked.extend(done.map_err(|e| format!("client task failed: {e}"))?);
    }
    ticking.store(false, Ordering::Relaxed);
    let _ = ticker.await;
    bar.finish_and_clear();
    say!("   faults: {}", fault_log.join(", "));
    for id in 1..=n {
        if faults[id - 1].is_some() {
            heal(ctx, &mut faults, id).await?;
            say!("   → replica {id} healed after the fault phase");
        }
    }

    // Settle: every outbox empty and every replica holding the same state.
    let settle_start = Instant::now();
    let mut states;
    loop {
        states = Vec::new();
        for c in clients.iter() {
            states.push(snapshot(c, cfg.keys).await);
        }
        let equal = states.iter().all(|s| s.is_ok() && s.as_ref().ok() == states[0].as_ref().ok());
        if equal && outboxes_empty(&clients).await || settle_start.elapsed() > CONVERGE_TIMEOUT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let converge_time = settle_start.elapsed();
    let reference = states[0].clone().unwrap_or_default();
    let differing = states.iter().filter(|s| s.as_ref().ok() != Some(&reference)).count();

    let mut lost = Vec::new();
    for a in &acked {
        let safe = reference.get(&a.key).is_some_and(|versions| {
            versions.iter().any(|v| match v.clock.compare(&a.clock) {
                Causality::Equal => v.value.as_deref() == Some(a.value.as_str()),
                Causality::After => true,
                _ => false,
            })
        });
        if !safe {
            lost.push(format!("{} = {:?} {}", a.key, a.value, a.clock));
        }
    }
    let siblings: usize = reference.values().map(|v| v.len()).sum();
    let attempted = counters.attempted.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    say!(
        "   figures: operations attempted {attempted} · acknowledged writes {} · reads {} · failed {failed} \
         · kills {kills} · pauses {pauses} · heals {heals}",
        acked.len(),
        counters.reads.load(Ordering::Relaxed)
    );
    say!(
        "   figures: time to converge {:.2}s · final state {} keys, {} versions ({} conflicted keys)",
        converge_time.as_secs_f64(),
        reference.len(),
        siblings,
        reference.values().filter(|v| v.len() > 1).count()
    );
    if cfg.min_acked > 0 {
        ctx.report.check(
            acked.len() >= cfg.min_acked,
            format!("at least {} acknowledged writes under faults", cfg.min_acked),
            format!("{} acknowledged", acked.len()),
        );
    }
    ctx.report.check(
        !acked.is_empty() && kills > 0,
        "the load acknowledged writes while replicas crashed",
        format!("{} acknowledged writes, {kills} kills", acked.len()),
    );
    ctx.report.check(
        lost.is_empty(),
        "acknowledged writes lost: 0 (each present in, or dominated by, the final state)",
        format!(
            "{} lost of {}{}",
            lost.len(),
            acked.len(),
            lost.first().map(|l| format!("; e.g. {l}")).unwrap_or_default()
        ),
    );
    ctx.report.check(
        differing == 0,
        "replicas whose state differs: 0",
        format!("{differing} of {n} differ from replica 1 after {:.2}s", converge_time.as_secs_f64()),
    );
    Ok(())
}
