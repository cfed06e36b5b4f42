//! Scenario 6: concurrent clients against replicas that crash, pause and restart at random, then
//! a checker that every acknowledged update survived and every replica converged.
//!
//! Size: the workload, the fault injector and the strict checker of one scenario, which share its
//! state.
//!
//! The load is Jepsen's set workload: each write adds one unique element to a key by
//! read-modify-write with the context read (merge the siblings' JSON lists, add, write back; on
//! a 409, merge what the replica returned and try again, a bounded number of times).
//!
//! The checker is Jepsen's set criterion, strictly: an acknowledged element is kept only if it
//! is **present in the final merged value of its key at every replica**. A later clock that
//! dominates the write does not count — that is exactly how a silently overwritten update hides.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vkv::client::{Client, ClientError};
use vkv::versions::Version;
use vkv_testkit::Stop;

use crate::scenarios::Ctx;
use crate::{say, sets};

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
/// Share of operations that are plain reads; the rest add an element.
const READ_SHARE: f64 = 0.2;
/// Writes one element may take: the first, plus retries after a 409.
pub const MAX_TRIES: usize = 10;

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
    conflicts: AtomicU64,
    gave_up: AtomicU64,
}

/// An acknowledged addition: `element` is in `key`'s set.
struct Acked {
    key: String,
    element: String,
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
        if rng.random_bool(READ_SHARE) {
            match client.get(&key).await {
                Ok(_) => counters.reads.fetch_add(1, Ordering::Relaxed),
                Err(_) => counters.failed.fetch_add(1, Ordering::Relaxed),
            };
            continue;
        }
        let element = format!("c{me}-{i}");
        let mut tries = 0u64;
        let outcome = client
            .update(&key, MAX_TRIES, |read| {
                tries += 1;
                sets::with_element(read, &element)
            })
            .await;
        match outcome {
            Ok(_) => {
                counters.conflicts.fetch_add(tries - 1, Ordering::Relaxed);
                counters.acked_writes.fetch_add(1, Ordering::Relaxed);
                acked.push(Acked { key, element });
            }
            Err(ClientError::Conflict { .. }) => {
                counters.conflicts.fetch_add(tries, Ordering::Relaxed);
                counters.gave_up.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                // Unreachable, timed out or refused: not acknowledged (it may or may not have
                // been applied; the checker only holds the store to what it acknowledged).
                counters.conflicts.fetch_add(tries.saturating_sub(1), Ordering::Relaxed);
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
            ctx.bring_up(id).await?;
        }
        Some(Fault::Paused) => ctx.backend.resume(id).await?,
        None => {}
    }
    Ok(())
}

/// Runs scenario 6.
pub async fn chaos(ctx: &mut Ctx, cfg: &ChaosConfig) -> Result<(), String> {
    let n = ctx.backend.n();
    ctx.report.scenario(
        "6 chaos",
        &format!(
            "{} clients add unique elements to {} shared set keys at random replicas for {:?}, by
             read-modify-write with the context read (a 409 means merge and retry), while replicas are
             killed (SIGKILL) or paused (SIGSTOP) and healed at random (at most two at once). Every
             acknowledged element is recorded. After the faults stop and the cluster settles, expect:
             every acknowledged element present at every replica (0 lost), 0 replicas whose state
             differs. Seed {}.",
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
                    "ops {} · acked additions {} · 409s {} · failed {}",
                    counters.attempted.load(Ordering::Relaxed),
                    counters.acked_writes.load(Ordering::Relaxed),
                    counters.conflicts.load(Ordering::Relaxed),
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
                ctx.take_down(id, Stop::Crash).await?;
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

    // Jepsen's set criterion, at every replica: each acknowledged element is in the union of
    // the final versions of its key there. A replica whose state could not be read keeps nothing.
    let present: Vec<BTreeMap<&String, BTreeSet<String>>> = states
        .iter()
        .map(|state| state.iter().flatten().map(|(key, versions)| (key, sets::elements(versions))).collect())
        .collect();
    let mut lost = Vec::new();
    for a in &acked {
        let missing: Vec<usize> =
            (1..=n).filter(|&id| !present[id - 1].get(&a.key).is_some_and(|p| p.contains(&a.element))).collect();
        if !missing.is_empty() {
            lost.push(format!("{} lacks {:?} at replicas {missing:?}", a.key, a.element));
        }
    }
    let siblings: usize = reference.values().map(|v| v.len()).sum();
    let attempted = counters.attempted.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    say!(
        "   figures: operations attempted {attempted} · acknowledged additions {} · conflicts detected (409) {} \
         · gave up after {MAX_TRIES} tries {} · reads {} · failed {failed} · kills {kills} · pauses {pauses} · heals {heals}",
        acked.len(),
        counters.conflicts.load(Ordering::Relaxed),
        counters.gave_up.load(Ordering::Relaxed),
        counters.reads.load(Ordering::Relaxed)
    );
    say!("   figures: elements lost {} (acknowledged elements missing at some replica)", lost.len());
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
            format!("at least {} acknowledged additions under faults", cfg.min_acked),
            format!("{} acknowledged", acked.len()),
        );
    }
    ctx.report.check(
        !acked.is_empty() && kills > 0,
        "the load acknowledged additions while replicas crashed",
        format!("{} acknowledged additions, {kills} kills", acked.len()),
    );
    ctx.report.check(
        lost.is_empty(),
        "acknowledged elements lost: 0 (each present in its key's final merged value at every replica)",
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
