//! The bench's measurements beyond plain throughput, all on the vkv cluster: replication lag
//! under a steady write rate, catch-up of a replica that missed many keys, and growth.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use vkv::client::Client;
use vkv_testkit::{LocalCluster, Stop};

use super::load::{self, histogram, Outcome, Settings};
use super::targets::Kind;

/// Key number `i` of a series.
pub fn key(prefix: &str, i: u64) -> String {
    format!("{prefix}{i}")
}

/// A value of `bytes` bytes that also names its key number (so a reader can tell versions apart).
pub fn value(i: u64, bytes: usize) -> String {
    let mut v = format!("v{i}-");
    v.extend(std::iter::repeat_n('x', bytes.saturating_sub(v.len())));
    v
}

/// Writes `count` keys `prefix{first}`, `prefix{first + 1}`, … through `connections`
/// connections, as fast as the target takes them. Errors are returned, not hidden.
pub async fn fill(
    kind: Kind,
    addr: SocketAddr,
    (prefix, first, count): (&str, u64, u64),
    bytes: usize,
    connections: usize,
) -> Outcome {
    let prefix: Arc<str> = prefix.into();
    let settings = Settings {
        connections,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(3600),
        max_requests: Some(count),
        rate: None,
    };
    load::run(addr, settings, Arc::new(move |i| kind.put(addr, &key(&prefix, first + i), &value(first + i, bytes))))
        .await
}

/// Sum of outbox depths at replica `id`, and its key count.
pub async fn backlog(client: &Client) -> Result<(u64, u64), String> {
    let status = client.status().await.map_err(|e| e.to_string())?;
    Ok((status.peers.iter().map(|p| p.outbox_depth).sum(), status.keys))
}

/// Waits until no replica owes its peers anything (every outbox empty; all must be running);
/// returns how long it took.
pub async fn drain(cluster: &LocalCluster, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let mut owed = 0;
        for id in 1..=cluster.n() {
            owed += backlog(&cluster.client(id)).await?.0;
        }
        if owed == 0 {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(format!("outboxes still hold {owed} key(s) after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A counter's value in a replica's `GET /metrics` (0 if absent).
pub async fn counter(address: &str, name: &str) -> Result<f64, String> {
    let text = reqwest::get(format!("http://{address}/metrics"))
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("cannot scrape {address}: {e}"))?
        .text()
        .await
        .map_err(|e| format!("cannot scrape {address}: {e}"))?;
    Ok(text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0))
}

/// Waits, up to `limit`, for the replica at `address` to compact its store once more than the
/// `compactions` it had (it does after `--compact-idle-secs` without a commit, if its file is
/// worth it); true if it did.
pub async fn compacted(address: &str, compactions: f64, limit: Duration) -> Result<bool, String> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if counter(address, "vkv_compactions_total").await? > compactions {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(false)
}

/// How late a thread that sleeps 1 ms at a time wakes up, measured while something else runs:
/// the machine's own stalls (a hypervisor that holds the virtual CPUs, say), which delay every
/// process on it — the replicas' commits and the bench's reads alike. An OS thread, not a tokio
/// task, so the bench's own runtime does not add to it.
pub struct StallProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Histogram<u64>>,
}

impl StallProbe {
    pub fn start() -> StallProbe {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut late = histogram();
            let tick = Duration::from_millis(1);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let asleep = Instant::now();
                std::thread::sleep(tick);
                let over = asleep.elapsed().saturating_sub(tick);
                late.saturating_record((over.as_micros() as u64).max(1));
            }
            late
        });
        StallProbe { stop, thread }
    }

    pub fn finish(self) -> Histogram<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_else(|_| histogram())
    }
}

/// Replication lag: writes at replica 1 at `rate` per second for `duration`; for every
/// `sample_every`-th write, polls replicas 2..=n, all at once, each every millisecond until it
/// returns the written value. Lag = time from the write's 200 at replica 1 to the value readable
/// at the last of the others. Returns the histogram (µs) and the number of writes that failed.
pub async fn replication_lag(
    cluster: &LocalCluster,
    rate: f64,
    duration: Duration,
    sample_every: u64,
    bytes: usize,
) -> Result<(Histogram<u64>, u64), String> {
    let origin = cluster.client(1);
    let others: Vec<Client> = (2..=cluster.n()).map(|id| cluster.client(id)).collect();
    let others = Arc::new(others);
    let total = (rate * duration.as_secs_f64()) as u64;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..total {
        ticker.tick().await;
        let (origin, others) = (origin.clone(), others.clone());
        writes.spawn(async move {
            let (k, v) = (key("lag", i), value(i, bytes));
            origin.put(&k, &v, None).await.map_err(|e| format!("write {k}: {e}"))?;
            let acked = Instant::now();
            if i % sample_every != 0 {
                return Ok(None);
            }
            // Every other replica is polled at once, each on its own: a replica's lag is the
            // time until a read of it first finds the value, not counting reads of the others.
            let mut polls = tokio::task::JoinSet::new();
            for r in 0..others.len() {
                let (others, k, v) = (others.clone(), k.clone(), v.clone());
                polls.spawn(async move {
                    let deadline = acked + Duration::from_secs(30);
                    loop {
                        if let Ok(Some(set)) = others[r].get(&k).await {
                            if set.versions.iter().any(|x| x.value.as_deref() == Some(v.as_str())) {
                                return Ok(acked.elapsed());
                            }
                        }
                        if Instant::now() > deadline {
                            return Err(format!("{k} not replicated after 30 s"));
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
            }
            let mut lag = Duration::ZERO;
            while let Some(seen) = polls.join_next().await {
                lag = lag.max(seen.map_err(|e| e.to_string())??);
            }
            Ok(Some(lag))
        });
    }
    let mut lags = histogram();
    let mut failed = 0;
    let mut first_error = None;
    while let Some(joined) = writes.join_next().await {
        match joined.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(Some(lag)) => lags.saturating_record((lag.as_micros() as u64).max(1)),
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if lags.is_empty() {
        return Err(first_error.unwrap_or_else(|| "no lag sample".into()));
    }
    Ok((lags, failed))
}

/// What the catch-up measurement found.
#[derive(Debug, Serialize)]
pub struct CatchUp {
    pub keys: u64,
    /// From the returning replica's start to every missed key delivered (it owes nothing, is owed nothing).
    pub seconds: f64,
    pub keys_per_s: f64,
    /// Part of `seconds` spent before the replica answered `/health`.
    pub startup_seconds: f64,
}

/// Stops replica `n`, writes `count` keys at replica 1, starts replica `n` again and times until
/// it holds them all and replica 1's outbox toward it is empty.
pub async fn catch_up(
    cluster: &mut LocalCluster,
    count: u64,
    bytes: usize,
    connections: usize,
) -> Result<CatchUp, String> {
    let away = cluster.n();
    let (_, before) = backlog(&cluster.client(away)).await?;
    cluster.stop(away, Stop::Clean).map_err(|e| e.to_string())?;
    let addr: SocketAddr = cluster.address(1).parse().map_err(|e| format!("{e}"))?;
    let written = fill(Kind::Vkv, addr, ("cu", 0, count), bytes, connections).await;
    if written.errors > 0 {
        return Err(format!("{} catch-up writes failed: {:?}", written.errors, written.first_error));
    }
    let start = Instant::now();
    cluster.start(away).map_err(|e| e.to_string())?;
    cluster.wait_healthy(away, Duration::from_secs(30)).await?;
    let startup = start.elapsed();
    let (origin, returning) = (cluster.client(1), cluster.client(away));
    loop {
        let owed = origin.status().await.map_err(|e| e.to_string())?;
        let owed = owed.peers.iter().find(|p| p.id as usize == away).map_or(0, |p| p.outbox_depth);
        let (_, keys) = backlog(&returning).await?;
        if owed == 0 && keys >= before + count {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            return Err(format!("replica {away} holds {keys} keys, {owed} still owed, after 600 s"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(CatchUp { keys: count, seconds, keys_per_s: count as f64 / seconds, startup_seconds: startup.as_secs_f64() })
}

/// Bytes the files under `dir` take on disk (allocated blocks, what `du` counts) and their
/// lengths (what `ls` shows). They differ: redb extends its file ahead of use, and the part not
/// yet written takes no disk space.
pub fn disk_bytes(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return (0, 0) };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => (m.blocks() * 512, m.len()),
            Err(_) => (0, 0),
        })
        .fold((0, 0), |(d, l), (dd, ll)| (d + dd, l + ll))
}
