//! Tests of the sibling sets: the seed's table, Dynamo's D1–D5 history, the write rule case by
//! case, and property tests of the merge laws and of Jepsen's set workload.
//!
//! Size: one test per rule of the module and its property tests; they read best next to each other.

use std::collections::BTreeSet;

use super::*;
use crate::core::show::Clocks;
use proptest::prelude::*;

fn vc(c: &[u64]) -> VectorClock {
    VectorClock::from(c.to_vec())
}

fn val(v: &str, c: &[u64]) -> Version {
    Version::value(v, vc(c))
}

#[test]
fn incoming_versions_that_reuse_a_counter_are_suspect() {
    let set = SiblingSet::from_versions([val("mine", &[0, 2, 0]), val("theirs", &[1, 0, 0])]);
    assert_eq!(set.check_incoming(&val("mine", &[0, 2, 0]), Some(1)), Ok(()), "a duplicate is fine");
    assert_eq!(set.check_incoming(&val("other", &[0, 2, 0]), Some(1)), Err(Suspect::ClockReused));
    assert_eq!(set.check_incoming(&val("other", &[1, 0, 0]), None), Err(Suspect::ClockReused));
    assert_eq!(set.check_incoming(&val("x", &[1, 2, 5]), Some(1)), Ok(()), "others' counters are theirs");
    assert_eq!(
        set.check_incoming(&val("x", &[0, 3, 0]), Some(1)),
        Err(Suspect::NotIssued { counter: 3, issued: 2 }),
        "position 1 issued at most 2 here"
    );
    assert_eq!(set.check_incoming(&val("x", &[0, 3, 0]), None), Ok(()), "recovering: no claim on counters");
    let empty = SiblingSet::new();
    assert_eq!(empty.check_incoming(&val("x", &[0, 0, 1]), Some(2)), Err(Suspect::NotIssued { counter: 1, issued: 0 }));
    assert_eq!(empty.check_incoming(&val("x", &[0, 0, 1]), Some(1)), Ok(()));
    let deleted = SiblingSet::single(Version::tombstone(vc(&[0, 4, 0])));
    assert_eq!(deleted.check_incoming(&val("x", &[0, 4, 1]), Some(1)), Ok(()), "tombstones count as issued");
}

#[test]
fn newer_version_replaces_older_no_conflict() {
    let mut set = SiblingSet::single(val("old", &[1, 0, 3]));
    assert_eq!(set.merge(val("new", &[3, 1, 3])), MergeOutcome::Updated);
    assert_eq!(set.versions(), &[val("new", &[3, 1, 3])]);
}

#[test]
fn older_version_is_ignored() {
    // Seed table, row one: local [3,1,3] vs received [1,0,3] → no conflict, keep local.
    let mut set = SiblingSet::single(val("local", &[3, 1, 3]));
    assert_eq!(set.merge(val("received", &[1, 0, 3])), MergeOutcome::Stale);
    assert_eq!(set.versions(), &[val("local", &[3, 1, 3])]);
}

#[test]
fn concurrent_version_becomes_a_sibling() {
    // Seed table, row two: local [1,0,3] vs received [1,1,1] → conflict, keep both.
    let mut set = SiblingSet::single(val("local", &[1, 0, 3]));
    assert_eq!(set.merge(val("received", &[1, 1, 1])), MergeOutcome::Conflict { siblings: 2 });
    assert_eq!(set.len(), 2);
    assert!(set.is_conflict());
    assert_eq!(set.context(3), vc(&[1, 1, 3]));
}

#[test]
fn duplicate_is_stale() {
    let mut set = SiblingSet::single(val("x", &[1, 0]));
    assert_eq!(set.merge(val("x", &[1, 0])), MergeOutcome::Stale);
    assert_eq!(set.len(), 1);
}

#[test]
fn dominating_version_resolves_siblings() {
    let mut set = SiblingSet::from_versions([val("a", &[1, 0, 0]), val("b", &[0, 1, 0])]);
    assert_eq!(set.len(), 2);
    assert_eq!(set.merge(val("ab", &[1, 1, 1])), MergeOutcome::Updated);
    assert_eq!(set.versions(), &[val("ab", &[1, 1, 1])]);
}

#[test]
fn tombstones_merge_like_values() {
    let mut set = SiblingSet::single(val("a", &[1, 0]));
    assert_eq!(set.merge(Version::tombstone(vc(&[2, 0]))), MergeOutcome::Updated);
    assert!(set.is_deleted());
    assert_eq!(set.merge(val("b", &[1, 1])), MergeOutcome::Conflict { siblings: 2 });
    assert!(!set.is_deleted());
}

#[test]
fn blind_write_dominates_everything_local() {
    let set = SiblingSet::from_versions([val("a", &[1, 0, 0]), val("b", &[0, 1, 0])]);
    assert_eq!(set.client_write(3, None, 2), Ok(vc(&[1, 1, 1])));
    assert_eq!(SiblingSet::new().client_write(3, None, 1), Ok(vc(&[0, 1, 0])));
}

// The covers rule, case by case: the context C covers the local set L iff every clock in L ≤ C.

#[test]
fn covered_context_supersedes_and_joins() {
    // C strictly after every version in L, and ahead at other replicas' positions.
    let set = SiblingSet::from_versions([val("a", &[1, 0, 0]), val("b", &[0, 1, 0])]);
    assert!(set.covered_by(&vc(&[1, 2, 5])));
    assert_eq!(set.client_write(3, Some(&vc(&[1, 2, 5])), 0), Ok(vc(&[2, 2, 5])));
}

#[test]
fn context_equal_to_the_set_is_covered() {
    let set = SiblingSet::from_versions([val("a", &[1, 0, 0]), val("b", &[0, 1, 0])]);
    let ctx = set.context(3);
    assert_eq!(ctx, vc(&[1, 1, 0]));
    assert_eq!(set.client_write(3, Some(&ctx), 2), Ok(vc(&[1, 1, 1])));
    let one = SiblingSet::single(val("a", &[2, 0, 0]));
    assert_eq!(one.client_write(3, Some(&vc(&[2, 0, 0])), 0), Ok(vc(&[3, 0, 0])));
}

#[test]
fn context_that_misses_a_sibling_is_refused() {
    // The client read [1, 0, 0]; [0, 1, 0] arrived from a peer afterwards.
    let set = SiblingSet::from_versions([val("a", &[1, 0, 0]), val("b", &[0, 1, 0])]);
    assert!(!set.covered_by(&vc(&[1, 0, 0])));
    assert_eq!(set.client_write(3, Some(&vc(&[1, 0, 0])), 0), Err(WriteRefusal::NotCovered));
    let read = vc(&[1, 0, 0]);
    let missed: Vec<&Version> = set.not_covered_by(&read).collect();
    assert_eq!(missed, vec![&val("b", &[0, 1, 0])]);
}

#[test]
fn context_older_than_a_newer_local_version_is_refused() {
    // Two clients read [1, 0, 0]; the first wrote [2, 0, 0]; the second must not erase it.
    let set = SiblingSet::single(val("first", &[2, 0, 0]));
    assert_eq!(set.client_write(3, Some(&vc(&[1, 0, 0])), 0), Err(WriteRefusal::NotCovered));
    // The same, with the newer version minted elsewhere (concurrent to the context).
    let set = SiblingSet::single(val("first", &[1, 1, 0]));
    assert_eq!(set.client_write(3, Some(&vc(&[1, 0, 1])), 0), Err(WriteRefusal::NotCovered));
}

#[test]
fn zero_context_means_i_saw_nothing() {
    let zero = VectorClock::zero(3);
    assert!(SiblingSet::new().covered_by(&zero));
    assert_eq!(SiblingSet::new().client_write(3, Some(&zero), 1), Ok(vc(&[0, 1, 0])));
    let set = SiblingSet::single(val("a", &[0, 0, 1]));
    assert_eq!(set.client_write(3, Some(&zero), 1), Err(WriteRefusal::NotCovered));
}

#[test]
fn tombstones_count_as_versions_the_client_must_have_seen() {
    let deleted = SiblingSet::single(Version::tombstone(vc(&[0, 2, 0])));
    assert_eq!(deleted.client_write(3, Some(&VectorClock::zero(3)), 0), Err(WriteRefusal::NotCovered));
    assert_eq!(deleted.client_write(3, Some(&vc(&[0, 2, 0])), 0), Ok(vc(&[1, 2, 0])));
    let mixed = SiblingSet::from_versions([val("a", &[1, 0, 0]), Version::tombstone(vc(&[0, 1, 0]))]);
    assert_eq!(mixed.client_write(3, Some(&vc(&[1, 0, 0])), 2), Err(WriteRefusal::NotCovered));
    assert_eq!(mixed.client_write(3, Some(&vc(&[1, 1, 0])), 2), Ok(vc(&[1, 1, 1])));
}

#[test]
fn context_ahead_of_this_replica_is_refused_as_forged() {
    // Position 0 has issued counter 1 for this key; a context claiming 2 cannot come from a GET.
    let set = SiblingSet::single(val("a", &[1, 0, 0]));
    assert_eq!(set.client_write(3, Some(&vc(&[2, 0, 0])), 0), Err(WriteRefusal::ContextAhead));
    assert_eq!(SiblingSet::new().client_write(3, Some(&vc(&[1, 0, 0])), 0), Err(WriteRefusal::ContextAhead));
    // Ahead at another replica's position is fine: the client read a newer version there.
    assert_eq!(set.client_write(3, Some(&vc(&[1, 3, 0])), 0), Ok(vc(&[2, 3, 0])));
}

#[test]
fn counter_limit_is_refused() {
    let set = SiblingSet::single(val("a", &[MAX_COUNTER, 0]));
    assert_eq!(set.client_write(2, None, 0), Err(WriteRefusal::CounterLimit));
    assert_eq!(set.client_write(2, Some(&vc(&[MAX_COUNTER, 0])), 1), Ok(vc(&[MAX_COUNTER, 1])));
}

#[test]
fn wire_format_round_trips_and_rejects_ambiguity() {
    let json =
        serde_json::to_string(&SiblingSet::from_versions([val("milk", &[1, 0]), Version::tombstone(vc(&[0, 1]))]))
            .unwrap();
    assert_eq!(json, r#"[{"deleted":true,"clock":[0,1]},{"value":"milk","clock":[1,0]}]"#);
    let back: SiblingSet = serde_json::from_str(&json).unwrap();
    assert_eq!(back.len(), 2);
    assert!(serde_json::from_str::<Version>(r#"{"value":"x","deleted":true,"clock":[1]}"#).is_err());
    assert!(serde_json::from_str::<Version>(r#"{"clock":[1]}"#).is_err());
}

/// Dynamo's Figure 3, replayed at three replicas. Sx, Sy, Sz are clock positions 0, 1, 2;
/// each replica is a sibling set, each write uses `client_write` exactly as the server does.
#[test]
fn dynamo_shopping_cart() {
    let (sx, sy, sz) = (0, 1, 2);
    let mut at = [SiblingSet::new(), SiblingSet::new(), SiblingSet::new()];
    let write = |set: &mut SiblingSet, pos: usize, ctx: Option<&VectorClock>, v: &str| {
        let clock = set.client_write(3, ctx, pos).unwrap();
        *set = SiblingSet::single(val(v, clock.counters()));
        clock
    };
    let d1 = write(&mut at[sx], sx, None, "D1");
    assert_eq!(d1, vc(&[1, 0, 0]));
    let d2 = write(&mut at[sx], sx, Some(&d1), "D2");
    assert_eq!(d2, vc(&[2, 0, 0]));
    // D2 reaches Sy and Sz.
    let d2_set = at[sx].clone();
    at[sy].merge_set(&d2_set);
    at[sz].merge_set(&d2_set);
    let d3 = write(&mut at[sy], sy, Some(&d2), "D3");
    let d4 = write(&mut at[sz], sz, Some(&d2), "D4");
    assert_eq!(d3, vc(&[2, 1, 0]));
    assert_eq!(d4, vc(&[2, 0, 1]));
    assert_eq!(d3.compare(&d4), Causality::Concurrent);
    // Sx learns of both: two siblings, context [2, 1, 1].
    let (s3, s4) = (at[sy].clone(), at[sz].clone());
    at[sx].merge_set(&s3);
    at[sx].merge_set(&s4);
    assert_eq!(at[sx].len(), 2);
    let ctx = at[sx].context(3);
    assert_eq!(ctx, vc(&[2, 1, 1]));
    let d5 = write(&mut at[sx], sx, Some(&ctx), "D5");
    assert_eq!(d5, vc(&[3, 1, 1]));
    assert_eq!(d5.compare(&d3), Causality::After);
    assert_eq!(d5.compare(&d4), Causality::After);
    // D5 reaches everyone; all three converge to it alone.
    let d5_set = at[sx].clone();
    for set in at.iter_mut() {
        set.merge_set(&d5_set);
        assert_eq!(set, &d5_set);
    }
}

fn version() -> impl Strategy<Value = Version> {
    (proptest::collection::vec(0u64..3, 3), prop_oneof![Just(None), "[ab]".prop_map(Some)])
        .prop_map(|(c, value)| Version { clock: VectorClock::from(c), value })
}

fn history() -> impl Strategy<Value = Vec<Version>> {
    proptest::collection::vec(version(), 0..8)
}

fn is_antichain(set: &SiblingSet) -> bool {
    let vs = set.versions();
    vs.iter()
        .enumerate()
        .all(|(i, a)| vs.iter().enumerate().all(|(j, b)| i == j || a.clock.compare(&b.clock) == Causality::Concurrent))
}

proptest! {
    #[test]
    fn merge_leaves_an_antichain(h in history()) {
        prop_assert!(is_antichain(&SiblingSet::from_versions(h)));
    }

    #[test]
    fn merge_is_idempotent(h in history()) {
        let once = SiblingSet::from_versions(h.clone());
        let mut twice = once.clone();
        for v in h {
            prop_assert!(!twice.merge(v).changed());
        }
        prop_assert_eq!(once, twice);
    }

    #[test]
    fn merge_is_commutative(a in history(), b in history()) {
        let (sa, sb) = (SiblingSet::from_versions(a), SiblingSet::from_versions(b));
        let mut ab = sa.clone();
        ab.merge_set(&sb);
        let mut ba = sb.clone();
        ba.merge_set(&sa);
        prop_assert_eq!(ab, ba);
    }

    #[test]
    fn merge_is_associative(a in history(), b in history(), c in history()) {
        let (sa, sb, sc) = (
            SiblingSet::from_versions(a),
            SiblingSet::from_versions(b),
            SiblingSet::from_versions(c),
        );
        let mut left = sa.clone();
        left.merge_set(&sb);
        left.merge_set(&sc);
        let mut bc = sb.clone();
        bc.merge_set(&sc);
        let mut right = sa.clone();
        right.merge_set(&bc);
        prop_assert_eq!(left, right);
    }

    #[test]
    fn arrival_order_does_not_matter(h in history(), seed in any::<u64>()) {
        let mut shuffled = h.clone();
        // Deterministic permutation from the seed.
        let len = shuffled.len();
        if len > 1 {
            for i in (1..len).rev() {
                let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
                shuffled.swap(i, j);
            }
        }
        prop_assert_eq!(SiblingSet::from_versions(h), SiblingSet::from_versions(shuffled));
    }

    #[test]
    fn a_blind_write_supersedes_everything_local(h in history(), pos in 0usize..3) {
        let set = SiblingSet::from_versions(h);
        let clock = set.client_write(3, None, pos).unwrap();
        for v in set.versions() {
            prop_assert_eq!(clock.compare(&v.clock), Causality::After);
        }
    }

    #[test]
    fn a_conditional_write_succeeds_exactly_when_covered(
        h in history(),
        ctx in proptest::collection::vec(0u64..3, 3),
        pos in 0usize..3,
    ) {
        let (set, ctx) = (SiblingSet::from_versions(h), VectorClock::from(ctx));
        let ahead = ctx.counters()[pos] > set.context(3).counters()[pos];
        match set.client_write(3, Some(&ctx), pos) {
            Ok(clock) => {
                prop_assert!(!ahead && set.covered_by(&ctx));
                prop_assert_eq!(clock.compare(&ctx), Causality::After);
                for v in set.versions() {
                    prop_assert_eq!(clock.compare(&v.clock), Causality::After);
                }
            }
            Err(WriteRefusal::ContextAhead) => prop_assert!(ahead),
            Err(WriteRefusal::NotCovered) => {
                prop_assert!(!ahead && !set.covered_by(&ctx));
                prop_assert!(set.not_covered_by(&ctx).count() > 0);
            }
            Err(WriteRefusal::CounterLimit) => prop_assert!(false, "counters here are tiny"),
        }
    }

    /// Jepsen's set workload on the pure core: clients read a replica, merge the siblings'
    /// elements, add one, and write back with the context read, at any replica; replicas
    /// merge each other's sets in any order. Whatever the interleaving, (1) a write removes
    /// only versions its context covered, (2) a merge removes only versions the incoming one
    /// dominates, and (3) once everything is exchanged, every acknowledged element is in the
    /// value at every replica.
    #[test]
    fn set_workload_never_loses_an_acknowledged_element(steps in workload()) {
        const N: usize = 3;
        let mut replicas = vec![SiblingSet::new(); N];
        // Per client: what it last read (elements, context).
        let mut reads: Vec<Option<(BTreeSet<u32>, VectorClock)>> = vec![None; 3];
        let mut acked = Vec::new();
        for (element, step) in (0u32..).zip(steps) {
            match step {
                Step::Read { client, replica } => {
                    let set = &replicas[replica];
                    reads[client] = Some((elements_of(set), set.context(N)));
                }
                Step::Write { client, replica } => {
                    let Some((seen, ctx)) = reads[client].clone() else { continue };
                    let before = replicas[replica].clone();
                    match before.client_write(N, Some(&ctx), replica) {
                        Ok(clock) => {
                            for v in before.versions() {
                                prop_assert!(ctx.descends(&v.clock), "removed {v:?}, not covered by {ctx}");
                            }
                            let mut next = seen.clone();
                            next.insert(element);
                            replicas[replica] = SiblingSet::single(Version::value(encode(&next), clock));
                            acked.push(element);
                            // The client's next write must read again.
                            reads[client] = None;
                        }
                        Err(WriteRefusal::NotCovered) => reads[client] = None,
                        Err(other) => prop_assert!(false, "a real context was refused: {other:?}"),
                    }
                }
                Step::Sync { from, to } => {
                    let incoming = replicas[from].clone();
                    let before = replicas[to].clone();
                    replicas[to].merge_set(&incoming);
                    for v in before.versions() {
                        let kept = replicas[to].versions().contains(v);
                        let dominated = incoming.versions().iter().any(|i| i.clock.compare(&v.clock) == Causality::After);
                        prop_assert!(kept || dominated, "merge dropped {v:?}");
                    }
                }
            }
        }
        let mut all = SiblingSet::new();
        for r in &replicas {
            all.merge_set(r);
        }
        let present = elements_of(&all);
        for e in &acked {
            prop_assert!(present.contains(e), "acknowledged element {e} lost; final {all:?}");
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Read { client: usize, replica: usize },
    Write { client: usize, replica: usize },
    Sync { from: usize, to: usize },
}

fn workload() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        (0usize..3, 0usize..3).prop_map(|(client, replica)| Step::Read { client, replica }),
        (0usize..3, 0usize..3).prop_map(|(client, replica)| Step::Write { client, replica }),
        (0usize..3, 0usize..3).prop_map(|(from, to)| Step::Sync { from, to }),
    ];
    proptest::collection::vec(step, 0..60)
}

fn encode(elements: &BTreeSet<u32>) -> String {
    elements.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// The union of every live sibling's elements.
fn elements_of(set: &SiblingSet) -> BTreeSet<u32> {
    set.versions()
        .iter()
        .filter_map(|v| v.value.as_deref())
        .flat_map(|s| s.split(',').filter(|e| !e.is_empty()).map(|e| e.parse::<u32>().unwrap()))
        .collect()
}

#[test]
fn versions_and_sets_display_in_the_seeds_notation() {
    let v = val("milk\nforged", &[1, 0, 0]);
    assert_eq!(v.to_string(), r#""milk\nforged" [1, 0, 0]"#);
    assert_eq!(format!("{v:.4}"), r#""milk"… [1, 0, 0]"#);
    assert_eq!(Version::tombstone(vc(&[2, 0, 0])).to_string(), "(deleted) [2, 0, 0]");
    assert_eq!(SiblingSet::new().to_string(), "(none)");
    let set = SiblingSet::from_versions([val("a", &[1, 0, 0]), val("b", &[0, 1, 0])]);
    assert_eq!(set.to_string(), format!("{{{} ∥ {}}}", set.versions()[0], set.versions()[1]));
    assert!(set.to_string().contains(r#""a" [1, 0, 0]"#) && set.to_string().contains(r#""b" [0, 1, 0]"#));
    assert_eq!(
        Clocks(&set.clocks()).to_string(),
        format!("{{{} ∥ {}}}", set.versions()[0].clock, set.versions()[1].clock)
    );
    assert_eq!(Clocks(&[]).to_string(), "(none)");
    assert_eq!(Clocks(&[vc(&[1, 2, 3])]).to_string(), "[1, 2, 3]");
}
