//! The measuring client, one per region: the same code runs in the simulation (five sites in
//! one process, on the simulated WAN) and on real GCP VMs (`vkv-report measure …` on each VM).
//!
//! Size: one measuring client, five phases (ping, latency, lag, conflicts, down/catch-up), shared
//! by the simulation and the GCP run; the phases share its connection and clock handling.
//!
//! Every phase is a function of one [`Site`] — a region, the address of every replica, and the
//! local address to send from — and returns plain data ([`Results`]) with raw samples and wall
//! clock timestamps; [`crate::render`] turns the data of all sites into the report. Phases that
//! involve several regions at once (replication lag, conflicts) run on a shared schedule: every
//! site starts at the same wall-clock instant, given by the orchestrator.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vkv::client::{Client, ClientError};
use vkv::protocol::ReadResponse;

/// Time any one client request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a measuring client stands.
#[derive(Debug, Clone)]
pub struct Site {
    /// This site's region (index into `names`, which is also the replica order).
    pub region: usize,
    /// Region names, in replica order: replica `i + 1` is in region `names[i]`.
    pub names: Vec<String>,
    /// `host:port` of the replica in each region.
    pub replicas: Vec<String>,
    /// Local address requests leave from (the simulation's region address), if any.
    pub source: Option<IpAddr>,
    /// The other regions, nearest first (by the configured RTT).
    pub by_distance: Vec<usize>,
}

impl Site {
    fn name(&self) -> &str {
        &self.names[self.region]
    }

    fn client(&self, replica: usize) -> Result<Client, String> {
        Client::with_source(&self.replicas[replica], REQUEST_TIMEOUT, self.source).map_err(|e| e.to_string())
    }

    fn farthest(&self) -> usize {
        *self.by_distance.last().unwrap_or(&self.region)
    }
}

/// Microseconds since the Unix epoch, now.
pub fn wall_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Sleeps until the wall-clock instant `at_us`.
async fn sleep_until_wall(at_us: u64) {
    let now = wall_us();
    if at_us > now {
        tokio::time::sleep(Duration::from_micros(at_us - now)).await;
    }
}

/// Latencies of one kind of operation from one region.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpSamples {
    /// Where the client was.
    pub region: String,
    /// The region of the replica it talked to.
    pub replica: String,
    /// `put` or `get`.
    pub op: String,
    /// `w` for a put, `r` for a get.
    pub level: usize,
    /// Latency of each operation after warm-up, in microseconds.
    pub samples_us: Vec<u64>,
    /// Operations that failed (not in the samples).
    pub failures: usize,
}

/// A write of the replication-lag phase, as acknowledged at its origin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LagWrite {
    /// The region that wrote it.
    pub origin: String,
    /// Its number in the schedule.
    pub index: usize,
    /// When the origin's client got the 200 (µs since the epoch).
    pub acked_at_us: u64,
}

/// When a lag-phase write became visible in another region.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LagSeen {
    /// The region that wrote it.
    pub origin: String,
    /// The region whose replica was polled.
    pub at: String,
    /// Its number in the schedule.
    pub index: usize,
    /// When a poll first returned it (µs since the epoch).
    pub seen_at_us: u64,
}

/// One region's side of the conflict phase with one other region.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConflictSide {
    /// This side's region.
    pub region: String,
    /// The other side's region.
    pub peer: String,
    /// Read-modify-write updates attempted (each adds one element).
    pub updates: usize,
    /// Updates acknowledged.
    pub acked: usize,
    /// 409s met on the way (each answered by merging and writing again).
    pub conflicts_409: usize,
    /// Reads (including 409 bodies) that showed concurrent siblings.
    pub sibling_reads: usize,
    /// Reads (including 409 bodies) in all.
    pub reads: usize,
    /// Acknowledged elements missing from the final value at this region's replica.
    pub lost: usize,
}

/// How long the returning replica took to hold every write made while it was down.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatchUp {
    /// The region that was down.
    pub region: String,
    /// Writes made elsewhere while it was down.
    pub keys: usize,
    /// From its restart answering /health to holding all of them, in ms.
    pub ms: f64,
    /// Keys still missing when the measurement gave up (0 when it caught up).
    pub missing: usize,
}

/// A measured round trip between two regions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ping {
    /// Where the ping left from.
    pub from: String,
    /// The region pinged.
    pub to: String,
    /// Median round trip, in ms.
    pub median_ms: f64,
    /// Round trips measured.
    pub samples: usize,
}

/// Everything measured in one run (one WAN or the baseline), from every site.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    /// Round trips to every region (through the emulator, or `GET /health` on real VMs).
    #[serde(default)]
    pub pings: Vec<Ping>,
    /// Phase 1: client latency by operation, level and replica.
    pub latency: Vec<OpSamples>,
    /// Phase 2: lag writes at their origin.
    pub lag_writes: Vec<LagWrite>,
    /// Phase 2: when each lag write was first seen elsewhere.
    pub lag_seen: Vec<LagSeen>,
    /// Phase 3: read-modify-write conflicts by region pair.
    pub conflicts: Vec<ConflictSide>,
    /// Phase 4: `w=3` puts while one region is down.
    pub down: Vec<OpSamples>,
    /// Phase 4: the returning region's catch-up.
    pub catch_up: Vec<CatchUp>,
}

impl Results {
    /// Adds another site's (or phase's) results.
    pub fn extend(&mut self, other: Results) {
        self.pings.extend(other.pings);
        self.latency.extend(other.latency);
        self.lag_writes.extend(other.lag_writes);
        self.lag_seen.extend(other.lag_seen);
        self.conflicts.extend(other.conflicts);
        self.down.extend(other.down);
        self.catch_up.extend(other.catch_up);
    }
}

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Samples per operation, level and region (after warm-up).
    pub samples: usize,
    /// Operations discarded first (connections, caches).
    pub warmup: usize,
    /// Writes per origin in the lag phase.
    pub lag_writes: usize,
    /// Time between two lag writes of one origin.
    pub lag_interval: Duration,
    /// Length of the conflict phase.
    pub conflict_secs: f64,
    /// Updates per second per client in the conflict phase.
    pub conflict_rate: f64,
    /// Samples of `w=3` puts per region while a region is down.
    pub down_samples: usize,
}

impl Plan {
    /// The full study: ≥ 300 samples per operation and region (and per lag pair, and per region
    /// while one is down).
    pub fn full() -> Plan {
        Plan {
            samples: 300,
            warmup: 20,
            lag_writes: 300,
            lag_interval: Duration::from_millis(200),
            conflict_secs: 20.0,
            conflict_rate: 5.0,
            down_samples: 300,
        }
    }

    /// The quick study: ≥ 100 of each.
    pub fn quick() -> Plan {
        Plan {
            samples: 100,
            warmup: 10,
            lag_writes: 100,
            lag_interval: Duration::from_millis(200),
            conflict_secs: 6.0,
            conflict_rate: 5.0,
            down_samples: 100,
        }
    }
}

/// Least time between the starts of two operations of one latency stream. The streams are
/// paced (open loop) rather than back to back, so that the offered load is the same on the WAN
/// and in the no-delay baseline — otherwise the baseline would measure a saturated machine.
pub const OP_PERIOD: Duration = Duration::from_millis(100);

/// Runs `count` operations after `warmup`, starting one at most every `OP_PERIOD`, timing each.
async fn timed<F, Fut>(count: usize, warmup: usize, mut op: F) -> (Vec<u64>, usize)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>>,
{
    let mut samples = Vec::with_capacity(count);
    let mut failures = 0;
    let begin = tokio::time::Instant::now();
    for i in 0..warmup + count {
        tokio::time::sleep_until(begin + OP_PERIOD * i as u32).await;
        let start = Instant::now();
        let ok = op(i).await.is_ok();
        if i >= warmup {
            if ok {
                samples.push(start.elapsed().as_micros() as u64);
            } else {
                failures += 1;
            }
        }
    }
    (samples, failures)
}

/// Keys a latency stream cycles through.
const STREAM_KEYS: usize = 16;

/// Phase 1: PUT and GET at the nearest replica with `w`/`r` = 1, majority and all, and at the
/// farthest replica with 1. The streams run side by side; each is one client doing one
/// operation after another.
pub async fn latency(
    site: &Site,
    plan: Plan,
    tick: impl Fn() + Clone + Send + Sync + 'static,
) -> Result<Results, String> {
    let n = site.names.len();
    let majority = n / 2 + 1;
    let mut levels = vec![1, majority, n];
    levels.dedup();
    let mut streams: Vec<(usize, &'static str, usize)> = Vec::new();
    for &level in &levels {
        streams.push((site.region, "put", level));
        streams.push((site.region, "get", level));
    }
    let far = site.farthest();
    if far != site.region {
        streams.push((far, "put", 1));
        streams.push((far, "get", 1));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (replica, op, level) in streams {
        let client = site.client(replica)?;
        let prefix = format!("lat/{}/{}/{op}{level}", site.name(), site.names[replica]);
        let (region, replica_name) = (site.name().to_string(), site.names[replica].clone());
        let tick = tick.clone();
        tasks.spawn(async move {
            if op == "get" {
                // Something to read, on every replica: write each key with w = all first.
                for k in 0..STREAM_KEYS {
                    client.put_quorum(&format!("{prefix}/{k}"), "v", None, Some(n)).await.map_err(|e| e.to_string())?;
                }
            }
            let value = "x".repeat(100);
            let (samples_us, failures) = timed(plan.samples, plan.warmup, |i| {
                let (client, key, value, tick) =
                    (client.clone(), format!("{prefix}/{}", i % STREAM_KEYS), value.clone(), tick.clone());
                async move {
                    let outcome = if op == "put" {
                        client.put_quorum(&key, &value, None, Some(level)).await.map(drop)
                    } else {
                        client.get_quorum(&key, Some(level)).await.map(drop)
                    };
                    tick();
                    outcome
                }
            })
            .await;
            Ok::<_, String>(OpSamples {
                region,
                replica: replica_name,
                op: op.to_string(),
                level,
                samples_us,
                failures,
            })
        });
    }
    let mut results = Results::default();
    while let Some(done) = tasks.join_next().await {
        results.latency.push(done.map_err(|e| e.to_string())??);
    }
    Ok(results)
}

/// Phase 2: replication lag. Every site writes `plan.lag_writes` keys on a schedule that starts
/// at `start_us` (its own slot in each interval) and, at the same time, polls its own replica
/// for every other origin's keys, noting when each first appears.
pub async fn replication_lag(site: &Site, plan: Plan, start_us: u64) -> Result<Results, String> {
    let n = site.names.len();
    let interval_us = plan.lag_interval.as_micros() as u64;
    let slot =
        move |origin: usize, i: usize| start_us + i as u64 * interval_us + origin as u64 * interval_us / n as u64;
    let local = site.client(site.region)?;
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (local, me, name) = (local.clone(), site.region, site.name().to_string());
        tasks.spawn(async move {
            let mut results = Results::default();
            for i in 0..plan.lag_writes {
                sleep_until_wall(slot(me, i)).await;
                if local.put(&format!("lag/{name}/{i}"), "x", None).await.is_ok() {
                    results.lag_writes.push(LagWrite { origin: name.clone(), index: i, acked_at_us: wall_us() });
                }
            }
            results
        });
    }
    for origin in (0..n).filter(|&o| o != site.region) {
        let (local, origin_name, at) = (local.clone(), site.names[origin].clone(), site.name().to_string());
        tasks.spawn(async move {
            let mut results = Results::default();
            for i in 0..plan.lag_writes {
                sleep_until_wall(slot(origin, i)).await;
                let key = format!("lag/{origin_name}/{i}");
                let give_up = Instant::now() + Duration::from_secs(3);
                while Instant::now() < give_up {
                    if let Ok(Some(_)) = local.get(&key).await {
                        results.lag_seen.push(LagSeen {
                            origin: origin_name.clone(),
                            at: at.clone(),
                            index: i,
                            seen_at_us: wall_us(),
                        });
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            results
        });
    }
    let mut results = Results::default();
    while let Some(done) = tasks.join_next().await {
        results.extend(done.map_err(|e| e.to_string())?);
    }
    Ok(results)
}

/// Keys each region pair shares in the conflict phase.
pub const CONFLICT_KEYS: usize = 3;

/// The elements of every live version (values are JSON lists of strings).
fn elements(read: &ReadResponse) -> BTreeSet<String> {
    read.versions
        .iter()
        .filter_map(|v| v.value.as_deref())
        .filter_map(|t| serde_json::from_str::<Vec<String>>(t).ok())
        .flatten()
        .collect()
}

/// Phase 3: for every other region, one client at this region's replica adds elements to the
/// keys this region shares with that one, by read-modify-write at `plan.conflict_rate` per
/// second from `start_us`; the other region does the same at its replica. Counts 409s and reads
/// that show siblings; at the end checks that every acknowledged element is still there.
pub async fn conflicts(site: &Site, plan: Plan, start_us: u64, settle: Duration) -> Result<Results, String> {
    let mut tasks = tokio::task::JoinSet::new();
    for peer in (0..site.names.len()).filter(|&p| p != site.region) {
        let client = site.client(site.region)?;
        let (me, other) = (site.name().to_string(), site.names[peer].clone());
        let pair = if site.region < peer { format!("{me}+{other}") } else { format!("{other}+{me}") };
        // Each side's own random stream: arrivals are a Poisson process (exponential gaps) and
        // keys are drawn at random, so the two sides' writes meet by chance, as independent
        // users' would, not in lockstep.
        let seed = (site.region * 1000 + peer) as u64;
        tasks.spawn(async move {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            sleep_until_wall(start_us).await;
            let updates = (plan.conflict_secs * plan.conflict_rate) as usize;
            let mut side = ConflictSide {
                region: me.clone(),
                peer: other,
                updates: 0,
                acked: 0,
                conflicts_409: 0,
                sibling_reads: 0,
                reads: 0,
                lost: 0,
            };
            let mut acked: Vec<(String, String)> = Vec::new();
            let mut next = tokio::time::Instant::now();
            for i in 0..updates {
                let gap: f64 = -(1.0 - rng.random::<f64>()).ln() / plan.conflict_rate;
                next += Duration::from_secs_f64(gap);
                tokio::time::sleep_until(next).await;
                let key = format!("cf/{pair}/{}", rng.random_range(0..CONFLICT_KEYS));
                let element = format!("{me}-{i}");
                let (mut reads, mut sibling_reads) = (0, 0);
                let outcome = client
                    .update(&key, 20, |read| {
                        reads += 1;
                        sibling_reads += usize::from(read.versions.len() > 1);
                        let mut all = elements(read);
                        all.insert(element.clone());
                        serde_json::to_string(&all).unwrap_or_default()
                    })
                    .await;
                side.updates += 1;
                side.reads += reads;
                side.sibling_reads += sibling_reads;
                // Every attempt but the acknowledged one met a 409; a run of 409s that ran out of
                // tries counts them all.
                let gave_up = matches!(outcome, Err(ClientError::Conflict { .. }));
                side.conflicts_409 += (reads + usize::from(gave_up)).saturating_sub(1);
                if outcome.is_ok() {
                    side.acked += 1;
                    acked.push((key, element));
                }
            }
            // After everything has had time to arrive: every acknowledged element is present.
            tokio::time::sleep(settle).await;
            for (key, element) in &acked {
                match client.read(key).await {
                    Ok(read) if elements(&read).contains(element) => {}
                    _ => side.lost += 1,
                }
            }
            side
        });
    }
    let mut results = Results::default();
    while let Some(done) = tasks.join_next().await {
        results.conflicts.push(done.map_err(|e| e.to_string())?);
    }
    Ok(results)
}

/// Phase 4a: `w = majority` puts at this region's replica while another region is down.
/// Returns the samples and the keys written (for the catch-up).
pub async fn down_latency(site: &Site, plan: Plan) -> Result<(Results, Vec<String>), String> {
    let n = site.names.len();
    let level = n / 2 + 1;
    let client = site.client(site.region)?;
    let name = site.name().to_string();
    let mut keys = Vec::new();
    let (samples_us, failures) = timed(plan.down_samples, 0, |i| {
        let (client, key) = (client.clone(), format!("down/{name}/{i}"));
        keys.push(key.clone());
        async move { client.put_quorum(&key, "while-down", None, Some(level)).await.map(drop) }
    })
    .await;
    let samples = OpSamples { region: name.clone(), replica: name, op: "put".into(), level, samples_us, failures };
    Ok((Results { down: vec![samples], ..Results::default() }, keys))
}

/// Phase 4b: at the region that returns, polls its replica until it holds every key in `keys`;
/// `since` is when it answered /health again.
pub async fn catch_up(site: &Site, keys: Vec<String>, since: Instant, give_up: Duration) -> Result<Results, String> {
    let client = site.client(site.region)?;
    let total = keys.len();
    let mut missing = keys;
    let deadline = since + give_up;
    while !missing.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for chunk in missing.chunks(32) {
            let mut probes = tokio::task::JoinSet::new();
            for key in chunk {
                let (client, key) = (client.clone(), key.clone());
                probes.spawn(async move { (matches!(client.get(&key).await, Ok(Some(_))), key) });
            }
            while let Some(Ok((found, key))) = probes.join_next().await {
                if !found {
                    still.push(key);
                }
            }
        }
        missing = still;
        if !missing.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let catch_up = CatchUp {
        region: site.name().to_string(),
        keys: total,
        ms: since.elapsed().as_secs_f64() * 1000.0,
        missing: missing.len(),
    };
    Ok(Results { catch_up: vec![catch_up], ..Results::default() })
}

/// Median of some durations, in ms.
pub fn median_ms(samples: &[Duration]) -> f64 {
    let mut s: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Round trips from this site to every replica, as `GET /health` on a warm connection: what a
/// client sees of the network (on real VMs, where there is no emulator to ping through).
pub async fn ping_replicas(site: &Site, count: usize) -> Result<Results, String> {
    let mut results = Results::default();
    for (i, to) in site.names.iter().enumerate() {
        let client = site.client(i)?;
        client.healthy().await; // opens the connection
        let mut rtts = Vec::with_capacity(count);
        for _ in 0..count {
            let start = Instant::now();
            if client.healthy().await {
                rtts.push(start.elapsed());
            }
        }
        results.pings.push(Ping {
            from: site.name().to_string(),
            to: to.clone(),
            median_ms: median_ms(&rtts),
            samples: rtts.len(),
        });
    }
    Ok(results)
}
