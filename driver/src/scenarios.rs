//! The scripted scenarios: each prints what it does, what it expects, what it saw, PASS/FAIL.
//!
//! Size: one function per scripted scenario (1–5, 7, 8) plus the checks they share; each scenario
//! reads top to bottom as the story it prints.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;
use vkv::client::ClientError;
use vkv::clock::{Causality, VectorClock};
use vkv::protocol::ReadResponse;
use vkv::store::Store;
use vkv::versions::Version;
use vkv_testkit::Stop;

use crate::backend::{describe, Backend};
use crate::report::Report;
use crate::{say, sets};

/// Time replicas get to converge after a step before a check fails.
pub const SETTLE: Duration = Duration::from_secs(15);

/// What a scenario works with.
pub struct Ctx {
    /// The replicas.
    pub backend: Backend,
    /// Every check so far.
    pub report: Report,
    /// Which replicas are up, as far as the driver did it.
    pub up: Vec<bool>,
}

/// A version as `"value" [1, 0, 0, 0, 0]` (or `(deleted) [...]`): its `Display`.
pub fn show_version(v: &vkv::versions::Version) -> String {
    v.to_string()
}

/// All versions of a read, siblings joined by ∥.
pub fn show_read(r: &Option<ReadResponse>) -> String {
    match r {
        None => "(absent)".into(),
        Some(r) => r.versions.iter().map(show_version).collect::<Vec<_>>().join("  ∥  "),
    }
}

type Versions = Vec<(Option<String>, VectorClock)>;

fn versions_of(r: &Option<ReadResponse>) -> Versions {
    r.as_ref().map(|r| r.versions.iter().map(|v| (v.value.clone(), v.clock.clone())).collect()).unwrap_or_default()
}

fn vc(c: &[u64], n: usize) -> VectorClock {
    let mut v = c.to_vec();
    v.resize(n, 0);
    VectorClock::from(v)
}

impl Ctx {
    fn n(&self) -> usize {
        self.backend.n()
    }

    fn up_ids(&self) -> Vec<usize> {
        (1..=self.n()).filter(|&id| self.up[id - 1]).collect()
    }

    /// Takes replica `id` offline, quietly: the one place (with [`Ctx::bring_up`]) that changes
    /// which replicas are up.
    pub async fn take_down(&mut self, id: usize, how: Stop) -> Result<(), String> {
        self.backend.stop(id, how).await?;
        self.up[id - 1] = false;
        Ok(())
    }

    /// Starts replica `id` again and waits until it is healthy, quietly.
    pub async fn bring_up(&mut self, id: usize) -> Result<(), String> {
        self.backend.start(id).await?;
        self.up[id - 1] = true;
        Ok(())
    }

    async fn stop(&mut self, id: usize, how: Stop) -> Result<(), String> {
        say!("   → replica {id} goes offline ({})", describe(how));
        self.take_down(id, how).await
    }

    async fn start(&mut self, id: usize) -> Result<(), String> {
        self.bring_up(id).await?;
        say!("   → replica {id} is back online (same data dir)");
        Ok(())
    }

    async fn put(
        &self,
        id: usize,
        key: &str,
        value: &str,
        context: Option<VectorClock>,
    ) -> Result<VectorClock, String> {
        let ctx_text = context.as_ref().map(|c| format!(" with context {c}")).unwrap_or_default();
        let w = self.backend.client(id).put(key, value, context).await.map_err(|e| e.to_string())?;
        say!("   client → replica {id}: put {key} = {value:?}{ctx_text} → clock {}", w.clock);
        Ok(w.clock)
    }

    async fn read(&self, id: usize, key: &str) -> Result<Option<ReadResponse>, String> {
        self.backend.client(id).get(key).await.map_err(|e| e.to_string())
    }

    /// Prints what every replica holds for `key`.
    async fn show(&self, key: &str, title: &str) {
        say!("   {title}:");
        for id in 1..=self.n() {
            let line = if !self.up[id - 1] {
                "(offline)".to_string()
            } else {
                match self.read(id, key).await {
                    Ok(r) => show_read(&r),
                    Err(e) => format!("(error: {e})"),
                }
            };
            say!("     replica {id}: {line}");
        }
    }

    /// Waits until every replica in `ids` holds exactly `expected` for `key`; returns what was
    /// last seen at the first replica that did not.
    async fn converge(&self, ids: &[usize], key: &str, expected: &Versions) -> Result<(), String> {
        let mut want = expected.clone();
        want.sort_by(|a, b| a.1.cmp(&b.1));
        let deadline = tokio::time::Instant::now() + SETTLE;
        for &id in ids {
            loop {
                let got = self.read(id, key).await;
                let seen = match &got {
                    Ok(r) if versions_of(r) == want => break,
                    Ok(r) => show_read(r),
                    Err(e) => e.clone(),
                };
                if tokio::time::Instant::now() > deadline {
                    return Err(format!("replica {id} holds {seen}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    async fn check_converged(&mut self, ids: &[usize], key: &str, expected: &Versions, claim: &str) {
        let result = self.converge(ids, key, expected).await;
        let shown: Vec<String> = expected
            .iter()
            .map(|(v, c)| show_version(&vkv::versions::Version { clock: c.clone(), value: v.clone() }))
            .collect();
        let seen = match &result {
            Ok(()) => format!("replicas {ids:?} all hold {}", shown.join("  ∥  ")),
            Err(e) => e.clone(),
        };
        self.report.check(result.is_ok(), claim, seen);
    }

    /// Checks that replica `id` logged a decision (the `decision` field, e.g. `updated`,
    /// `conflict`, `write`, `refused`) about `key` (the `key` field), on a line that also shows
    /// every value in `showing` (clocks, say). Fields, not wording: the message may change.
    async fn check_decision(&mut self, id: usize, decision: &str, key: &str, showing: &[String], claim: &str) {
        let mut needles = vec![format!("decision={decision:?}"), format!("key={key:?}")];
        needles.extend(showing.iter().cloned());
        // Log lines may lag the state by a moment; poll briefly.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let needle = needles.join(" … ");
        loop {
            let log = self.backend.log_text(id).await;
            if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n.as_str()))) {
                let line = line.split_once("  ").map(|(_, rest)| rest.trim()).unwrap_or(line.trim());
                self.report.check(true, claim, format!("replica {id} log: {line}"));
                return;
            }
            if tokio::time::Instant::now() > deadline {
                self.report.check(false, claim, format!("no line containing {needle:?} in replica {id}'s log"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Two clients write `key` at replicas `a` and `b` at the same moment (released by a
    /// barrier). Returns both clocks.
    async fn simultaneous(&self, a: usize, b: usize, key: &str) -> Result<(VectorClock, VectorClock), String> {
        let barrier = Arc::new(Barrier::new(2));
        let go = |id: usize, value: String| {
            let (client, barrier, key) = (self.backend.client(id), barrier.clone(), key.to_string());
            async move {
                barrier.wait().await;
                client.put(&key, &value, None).await.map_err(|e| e.to_string())
            }
        };
        let (va, vb) = (format!("from-replica-{a}"), format!("from-replica-{b}"));
        let (wa, wb) = tokio::join!(go(a, va.clone()), go(b, vb.clone()));
        let (ca, cb) = (wa?.clock, wb?.clock);
        say!("   client A → replica {a}: put {key} = {va:?} → clock {ca}");
        say!("   client B → replica {b}: put {key} = {vb:?} → clock {cb}   (same instant, via a barrier)");
        Ok((ca, cb))
    }

    /// Simultaneous writes until the two clocks are concurrent (a race may legally order them;
    /// each retry uses a fresh key). Returns the key, both values and clocks.
    async fn make_conflict(&self, a: usize, b: usize, base: &str) -> Result<(String, Versions), String> {
        for attempt in 1..=5 {
            let key = if attempt == 1 { base.to_string() } else { format!("{base}-{attempt}") };
            let (ca, cb) = self.simultaneous(a, b, &key).await?;
            if ca.compare(&cb) == Causality::Concurrent {
                say!("   {ca} vs {cb}: neither dominates → concurrent");
                let expected = vec![(Some(format!("from-replica-{a}")), ca), (Some(format!("from-replica-{b}")), cb)];
                return Ok((key, expected));
            }
            say!("   {ca} vs {cb}: one replica saw the other's write first; trying again on a fresh key");
        }
        Err("five simultaneous write pairs were all ordered".into())
    }
}

/// Scenario 1, the seed's no-conflict case.
pub async fn no_conflict(ctx: &mut Ctx) -> Result<(), String> {
    let n = ctx.n();
    let last = n;
    ctx.report.scenario(
        "1 no conflict",
        &format!(
            "A client writes k at replica 1; replica {last} goes offline; the client updates k at replica 1
             again (replica {last} misses it); replica {last} comes back and catches up from replica 1's
             queue; the client sends the update a second time. Expect: replica {last} merges by clock
             (local vs received → no conflict) and ends equal to the others."
        ),
    );
    let key = "s1-cart";
    let c1 = ctx.put(1, key, "milk", None).await?;
    let all: Vec<usize> = (1..=n).collect();
    ctx.check_converged(&all, key, &vec![(Some("milk".into()), c1.clone())], "every replica holds the first write")
        .await;
    ctx.stop(last, Stop::Clean).await?;
    let c2 = ctx.put(1, key, "milk,eggs", Some(c1.clone())).await?;
    let others: Vec<usize> = (1..n).collect();
    ctx.check_converged(&others, key, &vec![(Some("milk,eggs".into()), c2.clone())], "online replicas hold the update")
        .await;
    ctx.show(key, "before replica comes back").await;
    ctx.start(last).await?;
    ctx.check_converged(
        &[last],
        key,
        &vec![(Some("milk,eggs".into()), c2.clone())],
        &format!("replica {last} catches up to {c2} after restarting"),
    )
    .await;
    ctx.check_decision(
        last,
        "updated",
        key,
        &[format!("local {c1}"), format!("received \"milk,eggs\" {c2} from replica 1")],
        &format!("replica {last} merged by clock: local {c1} vs received {c2} → no conflict"),
    )
    .await;
    say!("   the client sends the update a second time, now that replica {last} is back:");
    let c3 = ctx.put(1, key, "milk,eggs", Some(c2.clone())).await?;
    ctx.check_converged(&all, key, &vec![(Some("milk,eggs".into()), c3.clone())], "every replica ends equal").await;
    ctx.check_decision(
        last,
        "updated",
        key,
        &[format!("local {c2}"), format!("received \"milk,eggs\" {c3} from replica 1")],
        &format!("replica {last} merged the second update: local {c2} vs received {c3} → no conflict"),
    )
    .await;
    ctx.show(key, "after").await;
    Ok(())
}

/// Scenario 2, the seed's conflict case.
pub async fn conflict(ctx: &mut Ctx) -> Result<(), String> {
    let n = ctx.n();
    ctx.report.scenario(
        "2 conflict",
        "Two clients write different values to k2 at replicas 2 and 3 at the same moment. Expect:
         every replica returns both values with concurrent clocks; a client then writes a resolution
         with the context it read, and every replica converges to that one value.",
    );
    let all: Vec<usize> = (1..=n).collect();
    let (key, siblings) = ctx.make_conflict(2, 3, "s2-k2").await?;
    ctx.check_converged(&all, &key, &siblings, "every replica returns both siblings").await;
    ctx.show(&key, "what each replica returns").await;
    let read = ctx.read(4, &key).await?.ok_or("key vanished")?;
    say!("   client reads at replica 4: {} siblings, context {}", read.versions.len(), read.context);
    let resolved = ctx.put(4, &key, "from-replica-2+from-replica-3", Some(read.context.clone())).await?;
    let dominates = siblings.iter().all(|(_, c)| resolved.compare(c) == Causality::After);
    ctx.report.check(
        dominates,
        "the resolution's clock dominates both siblings",
        format!("{resolved} > {} and > {}", siblings[0].1, siblings[1].1),
    );
    ctx.check_converged(
        &all,
        &key,
        &vec![(Some("from-replica-2+from-replica-3".into()), resolved)],
        "every replica converges to the resolution",
    )
    .await;
    ctx.check_decision(1, "conflict", &key, &[], "replica 1 logged the conflict for the key").await;
    ctx.show(&key, "after the resolution").await;
    Ok(())
}

/// Scenario 3: a conflict made while a replica is offline reaches it whole.
pub async fn offline_conflict(ctx: &mut Ctx) -> Result<(), String> {
    let n = ctx.n();
    ctx.report.scenario(
        "3 conflict while offline",
        "Replica 4 is down (crashed) while replicas 1 and 2 take concurrent writes to one key.
         Expect: when replica 4 returns it ends with the same two siblings as everyone else.",
    );
    ctx.stop(4, Stop::Crash).await?;
    let (key, siblings) = ctx.make_conflict(1, 2, "s3-k").await?;
    let up = ctx.up_ids();
    ctx.check_converged(&up, &key, &siblings, "online replicas hold both siblings").await;
    ctx.show(&key, "while replica 4 is offline").await;
    ctx.start(4).await?;
    let all: Vec<usize> = (1..=n).collect();
    ctx.check_converged(&all, &key, &siblings, "replica 4 ends with the same siblings as everyone").await;
    ctx.show(&key, "after replica 4 returns").await;
    Ok(())
}

/// Scenario 4: Dynamo's Figure 3, D1–D5, deterministic through stops and starts.
pub async fn dynamo(ctx: &mut Ctx) -> Result<(), String> {
    let n = ctx.n();
    let (sx, sy, sz) = (1, 2, 3);
    ctx.report.scenario(
        "4 dynamo D1-D5",
        "Dynamo's shopping cart (DeCandia et al. 2007, Figure 3) with Sx = replica 1, Sy = replica 2,
         Sz = replica 3. D1, D2 at Sx; D3 at Sy while Sz is offline; Sy goes offline and Sz comes back
         to write D4 without having seen D3; Sx reads both and writes D5 with their context.
         Expect: D3 ∥ D4, and D5 dominates both everywhere.",
    );
    let key = "s4-cart";
    let all: Vec<usize> = (1..=n).collect();
    let d1 = ctx.put(sx, key, "D1", None).await?;
    let d2 = ctx.put(sx, key, "D2", Some(d1.clone())).await?;
    ctx.check_converged(&all, key, &vec![(Some("D2".into()), d2.clone())], "D2 reached every replica").await;
    ctx.report.check(
        d1 == vc(&[1], n) && d2 == vc(&[2], n),
        "D1 = ([Sx,1]) and D2 = ([Sx,2])",
        format!("D1 {d1}, D2 {d2}"),
    );
    ctx.stop(sz, Stop::Clean).await?;
    let d3 = ctx.put(sy, key, "D3", Some(d2.clone())).await?;
    ctx.check_converged(&[sx], key, &vec![(Some("D3".into()), d3.clone())], "Sx received D3").await;
    ctx.stop(sy, Stop::Clean).await?;
    ctx.start(sz).await?;
    let d4 = ctx.put(sz, key, "D4", Some(d2.clone())).await?;
    ctx.start(sy).await?;
    ctx.report.check(
        d3 == vc(&[2, 1], n) && d4 == vc(&[2, 0, 1], n),
        "D3 = ([Sx,2],[Sy,1]) and D4 = ([Sx,2],[Sz,1])",
        format!("D3 {d3}, D4 {d4}"),
    );
    ctx.report.check(d3.compare(&d4) == Causality::Concurrent, "D3 ∥ D4 (concurrent)", format!("{d3} vs {d4}"));
    let both = vec![(Some("D3".into()), d3.clone()), (Some("D4".into()), d4.clone())];
    ctx.check_converged(&all, key, &both, "every replica holds D3 and D4 as siblings").await;
    let read = ctx.read(sx, key).await?.ok_or("key vanished")?;
    say!("   client reads at Sx: {}; context {}", show_read(&Some(read.clone())), read.context);
    let d5 = ctx.put(sx, key, "D5", Some(read.context)).await?;
    ctx.report.check(
        d5 == vc(&[3, 1, 1], n) && d5.compare(&d3) == Causality::After && d5.compare(&d4) == Causality::After,
        "D5 = ([Sx,3],[Sy,1],[Sz,1]) dominates D3 and D4",
        format!("D5 {d5}"),
    );
    ctx.check_converged(&all, key, &vec![(Some("D5".into()), d5)], "every replica converges to D5").await;
    ctx.show(key, "final").await;
    Ok(())
}

/// Docker only: a replica cut off the network takes a write on its side while the majority
/// takes one on theirs; after reconnecting both sides hold both siblings.
pub async fn partition(ctx: &mut Ctx) -> Result<(), String> {
    let n = ctx.n();
    ctx.report.scenario(
        "7 partition (docker)",
        "kv5 is disconnected from the network (docker network disconnect). A client writes k at kv1
         and another writes k at kv5 (through docker exec, as kv5 is unreachable from outside).
         Expect: after reconnecting, every replica holds both writes as siblings.",
    );
    let key = "s6-split";
    let network = ctx.backend.network_of(n).await?;
    ctx.backend.partition(n).await?;
    say!("   → kv{n} disconnected from network {network}");
    let majority = ctx.put(1, key, "majority-side", None).await?;
    let out = ctx.backend.exec_cli(n, &["--json", "put", key, "minority-side"]).await?;
    let minority: VectorClock = serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| serde_json::from_value(v["clock"].clone()).ok())
        .ok_or_else(|| format!("unexpected output from vkv in kv{n}: {out}"))?;
    say!("   client → kv{n} (inside its container): put {key} = \"minority-side\" → clock {minority}");
    let others: Vec<usize> = (1..n).collect();
    ctx.check_converged(
        &others,
        key,
        &vec![(Some("majority-side".into()), majority.clone())],
        "the majority side agrees",
    )
    .await;
    ctx.backend.heal(n, &network).await?;
    say!("   → kv{n} reconnected to {network}");
    let both = vec![(Some("majority-side".into()), majority), (Some("minority-side".into()), minority)];
    let all: Vec<usize> = (1..=n).collect();
    ctx.check_converged(&all, key, &both, "after healing, every replica holds both sides' writes").await;
    ctx.show(key, "after the partition heals").await;
    Ok(())
}

/// Anti-entropy period the driver gives local replicas (the server's default is 10 s).
pub const DRIVER_AE_SECS: &str = "1";

/// Scenario 8 (local): keys that no outbox remembers reach every replica through anti-entropy
/// alone; prints the time to converge and the repair rate.
pub async fn anti_entropy(ctx: &mut Ctx, keys: usize) -> Result<(), String> {
    let n = ctx.n();
    ctx.report.scenario(
        "8 anti-entropy",
        &format!(
            "Replica 1 is stopped and {keys} keys are put straight into its store, with no outbox marks
             (as if its queue had been lost). Replica 1 restarts; the other {} replicas can only learn
             the keys by comparing digests (every {DRIVER_AE_SECS} s, one peer per round). Expect: every
             replica converges; figures: time to converge and key repairs per second.",
            n - 1
        ),
    );
    ctx.stop(1, Stop::Clean).await?;
    let Backend::Local(cluster) = &ctx.backend else {
        return Err("the anti-entropy scenario opens a stopped replica's store: local mode only".into());
    };
    let store = Store::open(cluster.data_dir(1), &cluster.layout(1)).map_err(|e| e.to_string())?;
    let clock = vc(&[1], n);
    let entries: Vec<(String, Vec<Version>)> =
        (0..keys).map(|i| (format!("ae-{i}"), vec![Version::value(format!("value-{i}"), clock.clone())])).collect();
    store.merge_remote(&entries, |_, _, _| Ok(()), false).map_err(|e| e.to_string())?;
    drop(store);
    say!("   {keys} keys written into replica 1's store with clock {clock}, no outbox marks");
    ctx.start(1).await?;
    let start = tokio::time::Instant::now();
    let target = ctx.backend.client(1).status().await.map_err(|e| e.to_string())?.keys;
    let deadline = start + Duration::from_secs(120);
    let mut counts = vec![0u64; n];
    loop {
        for (id, count) in counts.iter_mut().enumerate() {
            *count = ctx.backend.client(id + 1).status().await.map(|s| s.keys).unwrap_or(0);
        }
        if counts.iter().all(|&c| c == target) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let converged = counts.iter().all(|&c| c == target);
    let repairs = keys * (n - 1);
    say!(
        "   figures: {keys} keys missing at {} replicas ({repairs} key repairs) converged in {elapsed:.2}s \
         → {:.0} key repairs/s (rounds every ~{DRIVER_AE_SECS} s, the first one included)",
        n - 1,
        repairs as f64 / elapsed
    );
    ctx.report.check(
        converged,
        format!("every replica holds all {keys} keys"),
        format!("key counts {counts:?}, target {target}"),
    );
    let mut sample_ok = true;
    for id in 2..=n {
        for i in [0, keys / 2, keys - 1] {
            let got = ctx.read(id, &format!("ae-{i}")).await?;
            sample_ok &=
                got.is_some_and(|r| r.versions.len() == 1 && r.versions[0].value == Some(format!("value-{i}")));
        }
    }
    ctx.report.check(sample_ok, "sampled keys carry the right value and clock everywhere", "");
    let depth: u64 =
        ctx.backend.client(1).status().await.map_err(|e| e.to_string())?.peers.iter().map(|p| p.outbox_depth).sum();
    ctx.report.check(depth == 0, "nothing travelled through replica 1's outbox", format!("outbox depth {depth}"));
    Ok(())
}

/// Scenario 5: several clients read-modify-write one key at one replica at the same moment.
/// Each round releases every client still pending through a barrier, all holding the same
/// context: the replica applies one write and refuses the others with 409 and the version they
/// missed; each loser merges it and tries again next round. No addition is lost.
pub async fn read_modify_write(ctx: &mut Ctx) -> Result<(), String> {
    const ITEMS: [&str; 4] = ["apples", "bread", "cheese", "dates"];
    const ROUNDS: usize = 10;
    let n = ctx.n();
    ctx.report.scenario(
        "5 read-modify-write",
        "Four clients each add one item to the shopping list s5-list at replica 1, by read-modify-write
         with the context they read, all at the same instant (a barrier). Expect: the replica applies one
         write per round and answers the others 409 with the version they did not see; each of them
         merges it (set union) and writes again with the new context. Every item ends in the list at
         every replica: 0 lost.",
    );
    let key = "s5-list";
    let client = ctx.backend.client(1);
    let first = client.read(key).await.map_err(|e| e.to_string())?;
    say!("   all four clients read {key} at replica 1: (absent), context {}", first.context);
    // Per client: its item and what it last knew of the key.
    let mut pending: Vec<(&str, ReadResponse)> = ITEMS.iter().map(|&item| (item, first.clone())).collect();
    let mut conflicts = 0;
    for round in 1..=ROUNDS {
        if pending.is_empty() {
            break;
        }
        let barrier = Arc::new(Barrier::new(pending.len()));
        let writes: Vec<_> = pending
            .iter()
            .map(|(item, read)| {
                let (client, barrier) = (client.clone(), barrier.clone());
                let value = sets::with_element(read, item);
                let context = read.context.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    let outcome = client.put(key, &value, Some(context.clone())).await;
                    (value, context, outcome)
                })
            })
            .collect();
        let mut still = Vec::new();
        for ((item, _), write) in pending.into_iter().zip(writes) {
            let (value, context, outcome) = write.await.map_err(|e| format!("client {item}: {e}"))?;
            match outcome {
                Ok(w) => say!(
                    "   round {round} · client {item}: put {value} with context {context} → 200, clock {}",
                    w.clock
                ),
                Err(ClientError::Conflict { current, .. }) => {
                    conflicts += 1;
                    say!(
                        "   round {round} · client {item}: put {value} with context {context} → 409 CONFLICT, replica 1 holds {}",
                        show_read(&Some(current.clone()))
                    );
                    say!(
                        "      client {item} merges → {} with context {}",
                        sets::with_element(&current, item),
                        current.context
                    );
                    still.push((item, current));
                }
                Err(e) => return Err(format!("client {item}: {e}")),
            }
        }
        pending = still;
    }
    ctx.report.check(
        pending.is_empty(),
        format!("every client's addition was acknowledged within {ROUNDS} rounds"),
        format!("{} still pending", pending.len()),
    );
    ctx.report.check(
        conflicts > 0,
        "simultaneous writes with the same context were refused (409), not silently overwritten",
        format!("{conflicts} conflicts detected"),
    );
    ctx.check_decision(1, "write", key, &[], "replica 1 logged each write it applied").await;
    ctx.check_decision(1, "refused", key, &[], "replica 1 logged each refusal").await;
    // Converge: every replica holds the last write alone; every item is in it.
    let last = client.read(key).await.map_err(|e| e.to_string())?;
    let expected: Versions = last.versions.iter().map(|v| (v.value.clone(), v.clock.clone())).collect();
    let all: Vec<usize> = (1..=n).collect();
    ctx.check_converged(&all, key, &expected, "every replica holds the final list").await;
    let mut missing: Vec<(&str, Vec<usize>)> = ITEMS.iter().map(|&item| (item, Vec::new())).collect();
    for id in 1..=n {
        let read = ctx.read(id, key).await?;
        let present = sets::elements(read.iter().flat_map(|r| r.versions.iter()));
        for (item, at) in missing.iter_mut() {
            if !present.contains(*item) {
                at.push(id);
            }
        }
    }
    let lost: Vec<String> =
        missing.iter().filter(|(_, at)| !at.is_empty()).map(|(item, at)| format!("{item} missing at {at:?}")).collect();
    say!(
        "   figures: {} additions acknowledged · {conflicts} conflicts detected (409) · {} elements lost",
        ITEMS.len() - pending.len(),
        lost.len()
    );
    ctx.report.check(lost.is_empty(), "elements lost: 0 (every item present at every replica)", lost.join("; "));
    ctx.show(key, "final").await;
    Ok(())
}
