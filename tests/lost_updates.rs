//! No lost updates: Jepsen's set workload (the one Jepsen ran against Riak) on five real replicas.
//!
//! Each client adds its own unique elements to one key, `set`, by read-modify-write: read every
//! sibling, merge them (set union of JSON lists), add one element, write back **with the context
//! it read**. A write the replica answers with `409 Conflict` was not applied: the client merges
//! what it missed and tries again (a bounded number of times). At the end, every replica must
//! hold the same state, and **every acknowledged element must be present in the merged value at
//! every replica** — Jepsen's set criterion, where "dominated by a later clock" does not count as
//! kept.
//!
//! The test speaks raw HTTP (reqwest + JSON), not the typed client: it checks the wire contract
//! the way any other client would meet it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vkv_testkit::{free_ports, LocalCluster};

const N: usize = 5;
const CLIENTS: usize = 6;
const ELEMENTS: usize = 15;
/// Tries per element before the workload gives up on it (a test failure).
const MAX_TRIES: usize = 200;
const SETTLE: Duration = Duration::from_secs(20);
/// Upper bound on the whole workload, whatever happens.
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(120);

struct Cluster {
    cluster: LocalCluster,
    _root: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let mut cluster = LocalCluster::new(env!("CARGO_BIN_EXE_vkv-server"), free_ports(N).unwrap(), root.path());
        cluster.start_all().unwrap();
        let c = Cluster { cluster, _root: root };
        let ready = c.cluster_wait().await;
        c.check(ready);
        c
    }

    async fn cluster_wait(&self) -> Result<(), String> {
        // wait_all_healthy needs &mut; healthy() polling is enough here.
        let deadline = Instant::now() + Duration::from_secs(10);
        for id in 1..=N {
            while !self.cluster.client(id).healthy().await {
                if Instant::now() > deadline {
                    return Err(format!("replica {id} not healthy"));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        Ok(())
    }

    fn url(&self, id: usize, key: &str) -> String {
        format!("http://{}/kv/{key}", self.cluster.address(id))
    }

    fn check<T>(&self, r: Result<T, String>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                for id in 1..=N {
                    let log = std::fs::read_to_string(self.cluster.log_path(id)).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    eprintln!("===== replica {id} log (last 40 lines) =====");
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
                panic!("{e}");
            }
        }
    }
}

/// The elements held by a GET or 409 body: the union of every live sibling's JSON list.
fn elements(body: &Value) -> Result<BTreeSet<String>, String> {
    let mut all = BTreeSet::new();
    for v in body["versions"].as_array().ok_or_else(|| format!("no versions in {body}"))? {
        let Some(text) = v["value"].as_str() else { continue }; // a tombstone
        let list: Vec<String> = serde_json::from_str(text).map_err(|e| format!("value {text:?}: {e}"))?;
        all.extend(list);
    }
    Ok(all)
}

/// What a read gave the client: the merged elements and the context to write back with.
fn read_state(status: u16, body: &Value) -> Result<(BTreeSet<String>, Value), String> {
    match status {
        200 | 404 => {
            let context = body.get("context").cloned().ok_or_else(|| format!("{status} without a context: {body}"))?;
            let found = if status == 404 { BTreeSet::new() } else { elements(body)? };
            Ok((found, context))
        }
        _ => Err(format!("GET answered {status}: {body}")),
    }
}

#[derive(Default)]
struct Tally {
    acked: Vec<String>,
    conflicts: usize,
}

/// One client: adds `ELEMENTS` unique elements to `key` at replica `id` by read-modify-write.
async fn set_adder(http: reqwest::Client, url: String, me: usize) -> Result<Tally, String> {
    let mut tally = Tally::default();
    for e in 0..ELEMENTS {
        let element = format!("c{me}-e{e}");
        let mut acked = false;
        for _ in 0..MAX_TRIES {
            let r = http.get(&url).send().await.map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            let body: Value = r.json().await.map_err(|e| e.to_string())?;
            let (mut set, context) = read_state(status, &body)?;
            set.insert(element.clone());
            let value = serde_json::to_string(&set).unwrap();
            let w = http.put(&url).json(&json!({"value": value, "context": context})).send().await;
            let w = w.map_err(|e| e.to_string())?;
            match w.status().as_u16() {
                200 => {
                    acked = true;
                    break;
                }
                409 => {
                    // The replica holds a version this read did not see: nothing was written.
                    let body: Value = w.json().await.map_err(|e| e.to_string())?;
                    if body.get("versions").is_none() || body.get("context").is_none() {
                        return Err(format!("409 without the conflicting versions: {body}"));
                    }
                    tally.conflicts += 1;
                    // Back off a little so that the contenders spread out.
                    let pause = (me as u64 * 7 + tally.conflicts as u64 * 3) % 10;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                s => return Err(format!("PUT answered {s}: {}", w.text().await.unwrap_or_default())),
            }
        }
        if !acked {
            return Err(format!("client {me}: element {element} not acknowledged in {MAX_TRIES} tries"));
        }
        tally.acked.push(element);
    }
    Ok(tally)
}

/// Runs the workload with client `c` at replica `replica_of(c)`, then checks the set criterion.
async fn set_workload(replica_of: fn(usize) -> usize) {
    let c = Cluster::start().await;
    let key = "set";
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for me in 0..CLIENTS {
        tasks.spawn(set_adder(http.clone(), c.url(replica_of(me), key), me));
    }
    let mut acked = Vec::new();
    let mut conflicts = 0;
    let outcome = tokio::time::timeout(WORKLOAD_TIMEOUT, async {
        while let Some(done) = tasks.join_next().await {
            let tally = done.map_err(|e| e.to_string())??;
            acked.extend(tally.acked);
            conflicts += tally.conflicts;
        }
        Ok::<(), String>(())
    })
    .await
    .map_err(|_| "the workload did not finish in time".to_string())
    .and_then(|r| r);
    c.check(outcome);
    assert_eq!(acked.len(), CLIENTS * ELEMENTS, "every element acknowledged");
    eprintln!("{} elements acknowledged, {conflicts} conflicts (409) along the way", acked.len());

    // Converge: every replica returns the same versions.
    let deadline = Instant::now() + SETTLE;
    let finals = loop {
        let mut bodies = Vec::new();
        for id in 1..=N {
            let body: Value = http.get(c.url(id, key)).send().await.unwrap().json().await.unwrap();
            bodies.push(body);
        }
        if bodies.iter().all(|b| b["versions"] == bodies[0]["versions"]) {
            break bodies;
        }
        if Instant::now() > deadline {
            c.check::<()>(Err(format!("replicas did not converge: {bodies:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    for (i, body) in finals.iter().enumerate() {
        let present = c.check(elements(body));
        let lost: Vec<&String> = acked.iter().filter(|e| !present.contains(*e)).collect();
        c.check(if lost.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "replica {}: {} of {} acknowledged elements lost, e.g. {:?}",
                i + 1,
                lost.len(),
                acked.len(),
                &lost[..lost.len().min(5)]
            ))
        });
        let siblings = body["versions"].as_array().map_or(0, Vec::len);
        assert!(siblings <= CLIENTS, "replica {}: {siblings} siblings for {CLIENTS} writers", i + 1);
    }
}

/// Six clients, all at replica 1, race to add 15 elements each: every write either supersedes
/// exactly what its client read or is refused with 409; none of the 90 elements is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn set_workload_all_clients_at_one_replica_loses_nothing() {
    set_workload(|_| 1).await;
}

/// The same six clients spread over the five replicas (client c at replica c mod 5 + 1):
/// concurrent writes become siblings, replication brings versions a client did not read (409),
/// and still every acknowledged element is in the converged value at every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn set_workload_clients_spread_over_replicas_loses_nothing() {
    set_workload(|me| me % N + 1).await;
}

/// The typed client makes read-modify-write the easy path: a stale context comes back as
/// `ClientError::Conflict` carrying what the replica holds, and `Client::update` merges from it
/// and retries, so a concurrent writer's value is kept rather than overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_client_reports_conflicts_and_update_merges() {
    use vkv::client::ClientError;
    let c = Cluster::start().await;
    let (alice, bob) = (c.cluster.client(1), c.cluster.client(1));
    let seen = alice.read("cart").await.unwrap();
    assert!(seen.versions.is_empty());
    bob.put("cart", "bread", Some(seen.context.clone())).await.unwrap();
    let refused = alice.put("cart", "milk", Some(seen.context.clone())).await;
    let Err(ClientError::Conflict { current, .. }) = refused else { panic!("expected a conflict, got {refused:?}") };
    assert_eq!(current.versions.len(), 1);
    assert_eq!(current.versions[0].value.as_deref(), Some("bread"));

    // update: between alice's read and her write, bob adds "eggs" (blindly, over "bread"),
    // so her first try is refused; update merges what the 409 returned and tries again.
    let mut calls = 0;
    let written = alice
        .update("cart", 3, |read| {
            calls += 1;
            if calls == 1 {
                let handle = tokio::runtime::Handle::current();
                tokio::task::block_in_place(|| handle.block_on(bob.put("cart", "bread,eggs", None))).unwrap();
            }
            let mut items: Vec<&str> =
                read.versions.iter().filter_map(|v| v.value.as_deref()).flat_map(|v| v.split(',')).collect();
            items.push("milk");
            items.sort();
            items.dedup();
            items.join(",")
        })
        .await
        .unwrap();
    assert_eq!(calls, 2, "one conflict, one retry");
    let now = alice.read("cart").await.unwrap();
    assert_eq!(now.versions.len(), 1);
    assert_eq!(now.versions[0].value.as_deref(), Some("bread,eggs,milk"));
    assert_eq!(now.context, written.clock);

    // A write with a context older than what the replica holds never overwrites it.
    let stale = alice.read("cart").await.unwrap();
    bob.put("cart", "bread,eggs,milk,tea", Some(stale.context.clone())).await.unwrap();
    let refused = alice.put("cart", "overwrite", Some(stale.context)).await;
    assert!(matches!(refused, Err(ClientError::Conflict { .. })), "{refused:?}");
    let now = alice.read("cart").await.unwrap();
    assert_eq!(now.versions[0].value.as_deref(), Some("bread,eggs,milk,tea"));
}
